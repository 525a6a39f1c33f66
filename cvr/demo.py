"""The main job on embedded defaults: simulate -> build samples -> hash features -> train models -> compare."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
from pathlib import Path

from cvr.config import Config
from cvr.metrics import format_metrics_table

log = logging.getLogger("cvr.demo")


def simulated_days(cfg: Config) -> list[str]:
    start = dt.date.fromisoformat(cfg.simulate.start_date)
    return [(start + dt.timedelta(days=i)).isoformat() for i in range(cfg.simulate.days)]


def complete_days(cfg: Config) -> tuple[list[str], list[str]]:
    """Train/validation days whose attribution windows are fully simulated.

    The newest `attribution_window_days` days still miss conversions that would arrive after the simulated
    range (delayed feedback), so validating on them would understate every conversion rate.
    """
    days = simulated_days(cfg)
    complete = days[: len(days) - cfg.samples.attribution_window_days]
    if len(complete) < 2:
        raise ValueError(
            f"demo needs at least {cfg.samples.attribution_window_days + 2} simulated days "
            f"(2 complete days + an attribution window of {cfg.samples.attribution_window_days}), got {len(days)}"
        )
    return complete[:-1], complete[-1:]


def run_pipeline(spark, cfg: Config) -> dict:
    """Simulate events, then build samples and hash features for every simulated day."""
    from cvr.pipeline.simulate_stage import run_simulate
    from cvr.pipeline.stages import run_build_samples, run_hash_features

    reports = {"simulate": run_simulate(spark, cfg), "build_samples": {}, "hash_features": {}}
    for ds in simulated_days(cfg):
        reports["build_samples"][ds] = run_build_samples(spark, cfg, ds)
        reports["hash_features"][ds] = run_hash_features(spark, cfg, ds)
    return reports


def run_demo(cfg: Config, *, models: list[str], np_ranks: int, impressions_per_day: int, days: int) -> dict:
    from cvr.session import build_spark
    from cvr.train.api import run_training

    cfg = dataclasses.replace(
        cfg, simulate=dataclasses.replace(cfg.simulate, days=days, impressions_per_day=impressions_per_day)
    )
    train_days, valid_days = complete_days(cfg)
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, np=np_ranks, train_days=train_days, valid_days=valid_days)
    )
    timings: dict[str, float] = {}
    started = time.perf_counter()
    spark = build_spark(cfg.spark, app_name="cvr-demo")
    run_pipeline(spark, cfg)
    spark.stop()  # free the cores for the training ranks
    timings["pipeline_s"] = time.perf_counter() - started
    results, artifacts = {}, {}
    for model in models:
        t0 = time.perf_counter()
        model_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, model=model))
        result = run_training(model_cfg, output_dir=str(Path(cfg.storage.root) / "models" / f"demo-{model}"))
        results[model], artifacts[model] = result.metrics, str(result.artifact_dir)
        timings[f"train_{model}_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - started
    table = format_metrics_table(
        results, keys=("auc", "gauc", "logloss", "calibration", "oracle_auc", "oracle_auc_all")
    )
    summary = {"results": results, "artifacts": artifacts, "timings": timings, "config": cfg.to_dict()}
    out = Path(cfg.storage.root) / "reports" / "demo.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, default=str))
    print(f"\n{table}\n")
    print("timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    print(f"report: {out}")
    return summary
