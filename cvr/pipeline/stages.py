"""Pipeline stages: read tables, run a pure transform, write the table, its quarantine rows and a JSON report.

Reports go to <root>/reports/<stage>/<ds>.json. Quarantine rows go to one table per job
(quarantine_build_samples, quarantine_ingest_aliccp; schema schemas/quarantine.yaml) so that re-running one
job's day replaces only that job's rows.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import time
from pathlib import Path

from pyspark import StorageLevel

from cvr.config import CONF_DIR, Config
from cvr.pipeline import aliccp, hashing, samples
from cvr.storage import (
    count_rows,
    delete_partitions,
    enforce,
    list_partitions,
    load_schema,
    read_table,
    spark_schema,
    sql_conf,
    table_exists,
    table_path,
    write_json_atomic,
)
from cvr.storage import write_partitions as _write_partitions

log = logging.getLogger(__name__)
EVENT_TABLES = ("clicks", "behaviours", "conversions")
EVENT_ROWS_PER_TASK = 1_000_000  # event rows one task reads and classifies (events are a few % of impressions)


class StageInputError(RuntimeError):
    """A stage's input table or partition is missing; the message names the table, path and ds."""


def report_path(cfg: Config, stage: str, ds: str) -> str:
    return os.path.join(str(cfg.root), "reports", stage, f"{ds}.json")


def _days(ds: str, first_offset: int, last_offset: int) -> list[str]:
    day = _parse_ds(ds)
    return [(day + dt.timedelta(days=k)).isoformat() for k in range(first_offset, last_offset + 1)]


def _parse_ds(ds: str) -> dt.date:
    try:
        return dt.date.fromisoformat(ds)
    except ValueError as exc:
        raise StageInputError(f"--ds: expected a date YYYY-MM-DD, got {ds!r}") from exc


def write_table(cfg: Config, df, name: str, schema: str | None = None, before_commit=None) -> dict:
    """Write table `name`; `schema` (the contract df follows) names the columns to write without a dictionary."""
    s = cfg.storage
    plain = load_schema(schema).plain_columns if schema else ()
    return _write_partitions(df, s.root, name, s.format, s.row_group_rows, s.max_rows_per_file, before_commit, plain)


def _write_day(cfg: Config, df, name: str, ds: str, schema: str | None = None, before_commit=None) -> dict:
    """write_table for one day's rows: a re-run that yields no rows for `ds` removes the earlier run's partition."""
    written = write_table(cfg, df, name, schema, before_commit)
    if ds not in written.get("partitions", []):
        written["deleted_partitions"] = delete_partitions(cfg.storage.root, name, ds)
    return written


def _read_days(spark, cfg: Config, name: str, days: list[str]):
    """Partitions `days` of table `name` that exist, enforced to its schema; empty when the table is absent."""
    root = cfg.storage.root
    if not table_exists(root, name):
        return spark.createDataFrame([], spark_schema(name)), []
    present = sorted(set(days) & set(list_partitions(root, name)))
    df = read_table(spark, root, name, ds=present) if present else spark.createDataFrame([], spark_schema(name))
    return enforce(df, name, extra="drop"), present


def _finish(cfg: Config, stage: str, ds: str, report: dict, started: float) -> dict:
    report["seconds"] = round(time.time() - started, 3)
    report["report_path"] = report_path(cfg, stage, ds)
    write_json_atomic(report["report_path"], report)
    log.info("%s ds=%s: %s", stage, ds, _brief(report))
    log.debug("%s ds=%s full report: %s", stage, ds, report)
    return report


def _brief(value):
    """The report with every file list replaced by its length (the lists stay in the JSON report and at DEBUG)."""
    if isinstance(value, dict):
        return {k: len(v) if k == "files" and isinstance(v, list) else _brief(v) for k, v in value.items()}
    return value


def _write_quarantine(cfg: Config, quarantine_df, job: str, ds: str) -> dict:
    """Replace day `ds` of the job's quarantine table; a clean re-run removes the earlier run's rows."""
    name = f"quarantine_{job.replace('-', '_')}"
    return _write_day(cfg, enforce(quarantine_df, "quarantine"), name, ds)


class UnbalancedCountsError(RuntimeError):
    """build-samples' row accounting does not balance; nothing of the day was published."""


def _input_rows(frames: dict, cfg: Config, read: dict) -> dict:
    """{table: input rows}: from the Parquet footers of the partitions read (no Spark job); Delta tables, whose
    files may carry deletion vectors, are counted by Spark in one job."""
    rows, by_spark = {}, {}
    for name, df in frames.items():
        footer = count_rows(cfg.storage.root, name, ds=read[name]) if read[name] else 0
        if footer is None:
            by_spark[name] = df
        else:
            rows[name] = footer
    return rows | (samples.input_counts(by_spark) if by_spark else {})


def even_input_splits(spark):
    """Input splits small enough that each core gets several: by default Spark packs a day's files into about one
    split per core, whole files first, which on few cores can leave one task with four times the other's rows."""
    if spark.conf.get("spark.sql.files.minPartitionNum", None):
        return sql_conf(spark, {})
    return sql_conf(spark, {"spark.sql.files.minPartitionNum": str(4 * spark.sparkContext.defaultParallelism)})


# build-samples' plans are large, and Spark renders the whole plan for its listeners at every query start and, with
# adaptive execution, again after every query stage: a simple, capped rendering saves that driver CPU.
SHORT_PLAN_STRINGS = {"spark.sql.ui.explainMode": "simple", "spark.sql.maxPlanStringLength": "8192"}


@contextlib.contextmanager
def eagerly_persisted():
    """Yields a `reuse` for samples.classify_parts that persists a frame and materialises it at once, so that the
    plans built on it know its real size; every frame it persisted is unpersisted on exit. Spark estimates an
    unmaterialised aggregate (the day's repeated impression ids) from its input's size, plans a sort-merge join
    against it, and so shuffles and sorts every impression of the day to find a few exceptional rows."""
    persisted = []

    def keep(df):
        persisted.append(df.persist(StorageLevel.MEMORY_AND_DISK))
        df.count()
        return df

    try:
        yield keep
    finally:
        for df in persisted:
            df.unpersist()


def run_build_samples(spark, cfg: Config, ds: str) -> dict:
    """Build the samples partition `ds` (see _build_samples), with input splits spread evenly over the cores."""
    with even_input_splits(spark), sql_conf(spark, SHORT_PLAN_STRINGS):
        return _build_samples(spark, cfg, ds)


def _build_samples(spark, cfg: Config, ds: str) -> dict:
    """Build the samples partition `ds` from impressions of ds (context: ds-W-1..ds+W) and events of ds..ds+W.

    The day is published only when every input table balances: input rows (counted from the input files, apart
    from the classification) = used + deduplicated + quarantined + outside. Used impressions are the sample rows
    actually written (counted from the staged files before they are swapped in); all other statuses come from one
    aggregation over the small classified frames, so the bulk of clean impressions is read once, by the write.
    """
    started = time.time()
    window = cfg.samples.attribution_window_days
    imp_days = _days(ds, -window - 1, window)
    impressions, imp_present = _read_days(spark, cfg, "impressions", imp_days)
    if ds not in imp_present:
        raise StageInputError(f"build-samples: table 'impressions' has no partition ds={ds} at {table_path(cfg.storage.root, 'impressions')}; run `cvr simulate` (or load the logs) first")  # fmt: skip
    event_days = _days(ds, 0, window)
    frames, read = {"impressions": impressions}, {"impressions": imp_present}
    for name in EVENT_TABLES:
        frames[name], read[name] = _read_days(spark, cfg, name, event_days)
    steps = {}
    with eagerly_persisted() as keep:
        tick = time.time()
        inputs = _input_rows(frames, cfg, read)
        event_tasks = -(-sum(inputs[name] for name in EVENT_TABLES) // EVENT_ROWS_PER_TASK)
        classified = samples.classify_parts(
            impressions, frames["clicks"], frames["behaviours"], frames["conversions"],
            ds=ds, window_days=window, max_skew_seconds=cfg.samples.max_clock_skew_seconds, reuse=keep,
            event_partitions=max(event_tasks, 1),
        )  # fmt: skip
        counts = samples.counts_by_status(classified.without_clean(), inputs)
        steps["classify_and_count"], tick = round(time.time() - tick, 3), time.time()

        def check(rows_by_ds: dict) -> None:
            counts["impressions"][samples.USED] = sum(rows_by_ds.values())  # one sample row per used impression
            unbalanced = samples.check_identity(counts)
            if unbalanced:
                raise UnbalancedCountsError(f"build-samples ds={ds}: row accounting does not balance, nothing written: {unbalanced}")  # fmt: skip

        tables = classified.tables()
        few_clicks = counts["clicks"][samples.USED] <= cfg.samples.broadcast_clicked_rows
        samples_df = enforce(samples.samples_from(tables, ds, broadcast_events=few_clicks), "samples")
        written = _write_day(cfg, samples_df, cfg.samples.table, ds, "samples", before_commit=check)
        steps["write_samples"], tick = round(time.time() - tick, 3), time.time()
        # The quarantine rows come from small cached frames: one file, not one per upstream partition.
        quarantine_df = samples.quarantine_from(classified.without_clean(), ds).coalesce(1)
        quarantine = _write_quarantine(cfg, quarantine_df, samples.JOB, ds)
        steps["write_quarantine"] = round(time.time() - tick, 3)
    report = {
        "stage": "build-samples",
        "ds": ds,
        "window_days": window,
        "partitions_read": read,
        "counts": counts,
        "output": written,
        "quarantine": quarantine,
        "step_seconds": steps,
    }
    return _finish(cfg, "build-samples", ds, report, started)


def resolve_spec_path(spec: str) -> Path:
    """A spec path as given, else relative to the repository (so `conf/features/...` works from anywhere)."""
    path = Path(spec)
    if path.is_file() or path.is_absolute():
        return path
    in_repo = CONF_DIR.parent / path
    return in_repo if in_repo.is_file() else path


def saved_spec_path(cfg: Config, table: str | None = None) -> Path:
    return hashing.table_spec_path(cfg.storage.root, table or cfg.features.table)


def _check_saved_spec(path: Path, spec: hashing.HashingSpec) -> None:
    """Refuse to mix two hashing specs in one table: ids of different specs are not comparable."""
    if not path.is_file():
        return
    saved = hashing.spec_from_json_text(path.read_text(), str(path))
    if saved.digest() != spec.digest():
        raise hashing.HashingSpecError(f"{spec.source}: spec digest {spec.digest()} differs from the spec the table was hashed with ({path}, digest {saved.digest()}); write to another table (features.table) or remove the old one")  # fmt: skip


def run_hash_features(spark, cfg: Config, ds: str) -> dict:
    """Hash samples partition `ds` into the features table and save the hashing spec beside it."""
    with even_input_splits(spark):
        return _hash_features(spark, cfg, ds)


def _training_file_count(cfg: Config, cores: int, rows: int, partitions: int) -> int:
    """Files for a day of the training table: one per input partition, unless that leaves files of under two
    row groups (each file ends in a partial row group, and Petastorm pays per row group); then one per core,
    as long as each file gets at least two full row groups (fewer groups would unbalance the rank shards)."""
    s = cfg.storage
    per_core = min(cores, rows // (2 * s.row_group_rows))
    if rows >= 2 * s.row_group_rows * partitions or per_core < 1:
        return partitions
    return min(partitions, max(per_core, -(-rows // s.max_rows_per_file)))


def _hash_features(spark, cfg: Config, ds: str) -> dict:
    started = time.time()
    _parse_ds(ds)
    spec = hashing.load_spec(resolve_spec_path(cfg.features.spec))
    source, target = cfg.features.samples_table, cfg.features.table
    root = cfg.storage.root
    spec_file = saved_spec_path(cfg, target)
    _check_saved_spec(spec_file, spec)
    if not table_exists(root, source) or ds not in list_partitions(root, source):
        if not _built_without_rows(cfg, source, ds):
            raise StageInputError(f"hash-features: table '{source}' has no partition ds={ds} at {table_path(root, source)}; run build-samples (or ingest-aliccp) first")  # fmt: skip
        return _finish(cfg, "hash-features", ds, _empty_day_report(cfg, spec, spec_file, source, ds), started)
    samples_df = read_table(spark, root, source, ds=ds)
    features = enforce(hashing.hash_features(samples_df, spec), "features")
    rows = count_rows(root, source, ds=ds)
    rows = rows if rows is not None else samples_df.count()
    partitions = features.rdd.getNumPartitions()
    files = _training_file_count(cfg, spark.sparkContext.defaultParallelism, rows, partitions)
    if files < partitions:  # coalesce merges input splits: no shuffle
        features = features.coalesce(files)
    written = write_table(cfg, features, target, "features")
    write_json_atomic(spec_file, json.loads(hashing.spec_to_json(spec)))
    return _finish(cfg, "hash-features", ds, _hash_report(spec, spec_file, source, ds, written), started)


def _hash_report(spec, spec_file: Path, source: str, ds: str, output: dict) -> dict:
    return {
        "stage": "hash-features",
        "ds": ds,
        "spec": spec.source,
        "spec_digest": spec.digest(),
        "spec_path": str(spec_file),
        "input_table": source,
        "output": output,
    }


def _built_without_rows(cfg: Config, source: str, ds: str) -> bool:
    """True when the stage that writes `source` ran for `ds` and wrote no partition (every row was quarantined):
    the day is known to be empty, not missing."""
    stage = {cfg.samples.table: "build-samples", cfg.samples.aliccp_table: "ingest-aliccp"}.get(source)
    path = report_path(cfg, stage, ds) if stage else None
    if not path or not os.path.isfile(path):
        return False
    return ds not in json.loads(Path(path).read_text()).get("output", {}).get("partitions", [ds])


def _empty_day_report(cfg: Config, spec, spec_file: Path, source: str, ds: str) -> dict:
    """A day whose samples came out empty has no features either: an earlier run's partition is removed (it
    was hashed from samples that no longer exist), so training never reads it."""
    deleted = delete_partitions(cfg.storage.root, cfg.features.table, ds)
    log.warning("hash-features ds=%s: '%s' wrote no rows for the day; features partition removed: %s", ds, source, deleted)  # fmt: skip
    output = {"table": cfg.features.table, "partitions": [], "rows": 0, "deleted_partitions": deleted}
    return _hash_report(spec, spec_file, source, ds, output)


def run_ingest_aliccp(spark, cfg: Config, skeleton: str, common: str, ds: str) -> dict:
    """Raw Ali-CCP files -> the aliccp samples table partition `ds` (+ quarantine rows and a report)."""
    started = time.time()
    _parse_ds(ds)
    for label, path in (("--skeleton", skeleton), ("--common", common)):
        if "://" not in path and not os.path.exists(path):
            raise StageInputError(f"ingest-aliccp {label}: file not found: {path}")
    samples_df, quarantine_df, counts = aliccp.ingest_aliccp(
        aliccp.read_lines(spark, skeleton), aliccp.read_lines(spark, common), ds
    )
    report = {
        "stage": "ingest-aliccp",
        "ds": ds,
        "inputs": {"skeleton": skeleton, "common": common},
        "counts": counts,
        "output": _write_day(
            cfg, enforce(samples_df, "aliccp_samples"), cfg.samples.aliccp_table, ds, "aliccp_samples"
        ),
        "quarantine": _write_quarantine(cfg, quarantine_df, aliccp.JOB, ds),
    }
    return _finish(cfg, "ingest-aliccp", ds, report, started)
