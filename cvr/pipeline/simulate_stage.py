"""The simulate stage: generate N days of event logs and write the five tables (impressions, clicks,
behaviours, conversions, truth) under the configured root."""

from __future__ import annotations

import dataclasses
import logging
import os
import time

from cvr.config import Config
from cvr.pipeline.simulate import TABLE_BUILDERS, expected_rates, resolve_params, simulate_events
from cvr.storage import enforce, write_json_atomic, write_partitions

log = logging.getLogger(__name__)


def run_simulate(spark, cfg: Config) -> dict:
    """Write the simulated tables for cfg.simulate; returns (and saves under <root>/reports/) a JSON-able report."""
    from pyspark import StorageLevel

    started = time.time()
    params = resolve_params(cfg.simulate)
    log.info("simulate: %d days x %d impressions from %s (preset %s, seed %d)", params.days,
             params.impressions_per_day, params.start_date, params.preset, params.seed)  # fmt: skip
    events = simulate_events(spark, params).persist(StorageLevel.MEMORY_AND_DISK)
    tables = {}
    try:
        for name, build in TABLE_BUILDERS.items():
            table_started = time.time()
            written = write_partitions(
                enforce(build(events), name),
                cfg.storage.root,
                name,
                fmt=cfg.storage.format,
                row_group_rows=cfg.storage.row_group_rows,
                max_rows_per_file=cfg.storage.max_rows_per_file,
            )
            tables[name] = _summary(written, time.time() - table_started)
    finally:
        events.unpersist()
    report = {
        "stage": "simulate",
        "root": os.path.abspath(cfg.storage.root),
        "format": cfg.storage.format,
        "days": params.ds_list(),
        "impressions_per_day": params.impressions_per_day,
        "preset": params.preset,
        "seed": params.seed,
        "malformed_rate": params.malformed_rate,
        "intercepts": dataclasses.asdict(params.intercepts),
        "target_rates": expected_rates(params),
        "observed_rates": _observed_rates(tables),
        "tables": tables,
        "seconds": round(time.time() - started, 3),
    }
    name = f"simulate-{params.start_date}-{params.days}d.json"
    write_json_atomic(os.path.join(cfg.storage.root, "reports", name), report)
    return report


def _summary(written: dict, seconds: float) -> dict:
    out = {k: written[k] for k in ("partitions", "rows") if k in written}
    if "version" in written:
        out["version"] = written["version"]
    if "files" in written:
        out["files"] = len(written["files"])
    out["seconds"] = round(seconds, 3)
    return out


def _observed_rates(tables: dict) -> dict:
    """Row-count rates (malformed rows included, so they differ slightly from the cleaned samples)."""
    impressions = max(tables["impressions"]["rows"], 1)
    clicks = max(tables["clicks"]["rows"], 1)
    return {
        "clicks_per_impression": tables["clicks"]["rows"] / impressions,
        "conversions_per_click": tables["conversions"]["rows"] / clicks,
        "behaviours_per_click": tables["behaviours"]["rows"] / clicks,
    }
