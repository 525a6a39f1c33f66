"""Table IO: ds-partitioned Parquet and Delta tables under <root>/tables/<name>.

Writes replace exactly the ds partitions present in the DataFrame and are atomic per partition:
Spark writes into <table>/_staging/<uuid> (Spark and Petastorm ignore '_'-prefixed paths), then
  - Parquet: each partition folder is swapped in by rename (the old one parked in _trash until the swap is done);
  - Delta with Delta jars on Spark's classpath: Spark's Delta writer with replaceWhere;
  - Delta without jars: the staged Parquet files are moved under the table and committed to the Delta log
    through delta-rs add actions (one atomic commit), so nothing is rewritten and no JVM jar is needed.
A job killed before the swap or commit leaves the previous state readable. Local file systems only
(paths or file:// URIs) except for the Spark Delta path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cvr.storage.schema import SchemaError, spark_schema

log = logging.getLogger(__name__)

FORMATS = ("parquet", "delta")
PARTITION_COLUMN = "ds"
STAGING_DIR = "_staging"
TRASH_DIR = "_trash"
SWAP_GRACE_SECONDS = 60.0  # a parked partition older than this belongs to a dead writer
LAYOUT_FILE = "_layout.json"  # measured bytes per row, used to size row groups of later writes
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DEFAULT_BYTES_PER_ROW = 24.0


# ----------------------------------------------------------------------------------------------- paths


def _local_root(root: str | os.PathLike) -> str:
    root = str(root)
    if root.startswith("file://"):
        return root[len("file://") :]
    if "://" in root:
        raise NotImplementedError(f"table root {root!r}: only local paths and file:// URIs are supported here")
    return root


def table_path(root: str | os.PathLike, name: str) -> str:
    """<root>/tables/<name> as an absolute local path."""
    if not _NAME_RE.match(name):
        raise ValueError(f"table name {name!r}: expected letters, digits and underscores")
    return os.path.abspath(os.path.join(_local_root(root), "tables", name))


def _is_delta(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "_delta_log"))


def _partition_dir(path: str, ds: str) -> str:
    return os.path.join(path, f"{PARTITION_COLUMN}={ds}")


def _as_list(ds: str | list[str] | None) -> list[str] | None:
    if ds is None:
        return None
    return [ds] if isinstance(ds, str) else list(ds)


def _data_files(folder: str) -> list[str]:
    """Parquet files directly in `folder`, skipping Spark's '_'/'.' bookkeeping files."""
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if n.endswith(".parquet") and not n.startswith(("_", ".")))
    return [os.path.join(folder, n) for n in names]


def _uri(path: str) -> str:
    return path if "://" in path else "file://" + os.path.abspath(path)


# ----------------------------------------------------------------------------------------------- small helpers


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to a temporary file beside `path`, fsync it, then os.replace: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w") as handle:
            handle.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def sql_conf(spark, settings: dict[str, str]):
    """Set Spark SQL confs for the duration of a block, restoring the previous values."""
    previous = {k: spark.conf.get(k, None) for k in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def _table_exists_as(path: str) -> str | None:
    if _is_delta(path):
        return "delta"
    if os.path.isdir(path) and any(n.startswith(f"{PARTITION_COLUMN}=") for n in os.listdir(path)):
        return "parquet"
    return None


def delete_partitions(root, name: str, ds: str | list[str]) -> list[str]:
    """Remove whole ds partitions (a re-run that produced no rows for a day must not leave the old ones).

    Parquet: each folder is renamed into _trash first, so readers never see a half-deleted partition.
    Delta: one delete commit through delta-rs, so older versions stay readable by time travel.
    """
    path = table_path(root, name)
    fmt = _table_exists_as(path)
    days = [d for d in (_as_list(ds) or []) if fmt and d in list_partitions(root, name)]
    if not days:
        return []
    if fmt == "delta":
        from deltalake import DeltaTable

        quoted = ", ".join(f"'{d}'" for d in days)
        DeltaTable(path).delete(predicate=f"{PARTITION_COLUMN} IN ({quoted})")
        return days
    trash = os.path.join(path, TRASH_DIR, uuid.uuid4().hex)
    os.makedirs(trash, exist_ok=True)
    for day in days:
        os.rename(_partition_dir(path, day), _partition_dir(trash, day))
    shutil.rmtree(trash, ignore_errors=True)
    _remove_if_empty(os.path.join(path, TRASH_DIR))
    return days


def table_exists(root, name: str) -> bool:
    return _table_exists_as(table_path(root, name)) is not None


def table_format(root, name: str) -> str | None:
    """'delta', 'parquet', or None when the table does not exist."""
    return _table_exists_as(table_path(root, name))


# ----------------------------------------------------------------------------------------------- row groups


def _estimate_bytes_per_row(df) -> float:
    from cvr.storage.schema import _type_name_of

    # Stored (dictionary-encoded, compressed) bytes per value, as measured on the simulated tables; a table's
    # later writes use the bytes per row its earlier write actually produced.
    widths = {"string": 4.0, "timestamp": 4.0, "date": 1.0, "double": 4.0, "float": 2.0, "long": 2.0, "int": 1.0}
    return sum(widths.get(_type_name_of(f.dataType), 4.0) for f in df.schema.fields if f.name != PARTITION_COLUMN)


def _bytes_per_row(path: str, df) -> float:
    layout = os.path.join(path, LAYOUT_FILE)
    if os.path.isfile(layout):
        with contextlib.suppress(ValueError, KeyError, OSError):
            stored = json.loads(Path(layout).read_text())
            if stored.get("columns") == df.columns:
                return float(stored["bytes_per_row"])
    return _estimate_bytes_per_row(df) or _DEFAULT_BYTES_PER_ROW


def _calibrate_bytes_per_row(files: list[str], block_size: int) -> float | None:
    """Bytes per row the Parquet writer effectively counted, from row groups that were closed by the size limit."""
    import pyarrow.parquet as pq

    full_groups = []
    for file in files:
        meta = pq.read_metadata(file)
        full_groups += [meta.row_group(i).num_rows for i in range(meta.num_row_groups - 1)]  # the last is partial
    if not full_groups:
        return None
    full_groups.sort()
    return block_size / max(full_groups[len(full_groups) // 2], 1)


# ----------------------------------------------------------------------------------------------- writes


def write_partitions(
    df,
    root,
    name: str,
    fmt: str = "parquet",
    row_group_rows: int = 20000,
    max_rows_per_file: int = 200000,
    before_commit: Callable[[dict[str, int]], None] | None = None,
    plain_columns: tuple[str, ...] | list[str] = (),
) -> dict:
    """Replace exactly the ds partitions present in `df` in table `name`; returns a JSON-able report.

    Report: {table, format, path, partitions, rows, files (parquet) | version (delta)}.
    `before_commit({ds: rows written})` runs after the rows are written (staged, invisible to readers) and
    before they are swapped in or committed; when it raises, nothing is published and the staged files go.
    `plain_columns`: columns written without dictionary encoding (unique values such as ids or row hashes: the
    Parquet writer would build a dictionary per row group only to abandon it).
    """
    if fmt not in FORMATS:
        raise ValueError(f"table '{name}': format {fmt!r} is not one of {FORMATS}")
    if PARTITION_COLUMN not in df.columns:
        raise SchemaError(f"table '{name}': column '{PARTITION_COLUMN}' (the partition column) is missing")
    path = table_path(root, name)
    existing = _table_exists_as(path)
    if existing and existing != fmt:
        raise ValueError(f"table '{name}' at {path} is stored as {existing}, cannot write it as {fmt}")
    from cvr.session import spark_has_delta

    spark = df.sparkSession
    if fmt == "delta" and spark_has_delta(spark):
        return _write_delta_spark(df, path, name, before_commit)
    os.makedirs(path, exist_ok=True)
    _recover_interrupted_swaps(path)
    stage = os.path.join(path, STAGING_DIR, uuid.uuid4().hex)
    try:
        staged, block_size = _write_staging(df, path, stage, row_group_rows, max_rows_per_file, plain_columns)
        if before_commit is not None:
            before_commit({ds: _count_rows(files) for ds, files in staged.items()})
        if fmt == "parquet":
            report = _swap_parquet_partitions(path, stage, staged)
        else:
            report = _commit_delta_rs(path, name, staged)
        all_files = [f for files in staged.values() for f in files]
        report["rows"] = _count_rows(report.pop("_final_files", all_files))
        _save_layout(path, df.columns, report.get("_calibration_files", []), block_size, row_group_rows)
        report.pop("_calibration_files", None)
        return {"table": name, "format": fmt, "path": path, **report}
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_if_empty(os.path.join(path, STAGING_DIR))


def _write_staging(df, path: str, stage: str, row_group_rows: int, max_rows_per_file: int, plain_columns=()):
    block_size = int(max(row_group_rows * _bytes_per_row(path, df), 64 * 1024))
    spark = df.sparkSession
    settings = {
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",  # readable by delta-rs / petastorm
        "spark.sql.sources.partitionOverwriteMode": "static",
    }
    writer = (
        df.write.mode("overwrite")
        .partitionBy(PARTITION_COLUMN)
        .option("maxRecordsPerFile", int(max_rows_per_file))
        .option("parquet.block.size", block_size)
        # Small pages get compressed as the row group fills, so the writer's size estimate tracks the stored
        # size: with the default 20,000-row pages it counts raw values first, and rows per group jump with it.
        .option("parquet.page.row.count.limit", _page_rows(row_group_rows))
        .option("compression", "snappy")
    )
    for column in plain_columns:
        if column in df.columns:
            writer = writer.option(f"parquet.enable.dictionary#{column}", "false")
    with sql_conf(spark, settings):
        writer.parquet(_uri(stage))
    staged = {}
    for entry in sorted(os.listdir(stage)):
        if entry.startswith(f"{PARTITION_COLUMN}="):
            ds = entry.split("=", 1)[1]
            if ds == "__HIVE_DEFAULT_PARTITION__":
                raise SchemaError(f"table at {path}: rows with a null '{PARTITION_COLUMN}' cannot be written")
            staged[ds] = _data_files(os.path.join(stage, entry))
    return staged, block_size


def _page_rows(row_group_rows: int) -> int:
    return max(row_group_rows // 10, 1000)


def _save_layout(path: str, columns: list[str], files: list[str], block_size: int, target_rows: int) -> None:
    measured = _calibrate_bytes_per_row(files, block_size) if files else None
    if measured:
        # Halfway (geometrically) from the value this write used: bytes per row shrink as row groups grow, so
        # jumping straight to the measured value overshoots the other way on the next write.
        damped = math.sqrt(measured * block_size / target_rows)
        write_json_atomic(os.path.join(path, LAYOUT_FILE), {"columns": list(columns), "bytes_per_row": damped})


def _count_rows(files: list[str]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(f).num_rows for f in files)


def _remove_if_empty(folder: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(folder)


def _swap_parquet_partitions(path: str, stage: str, staged: dict[str, list[str]]) -> dict:
    """Swap each staged ds folder into place; the old folder is parked in _trash until the new one is in."""
    trash = os.path.join(path, TRASH_DIR, uuid.uuid4().hex)
    final_files = []
    for ds in sorted(staged):
        live = _partition_dir(path, ds)
        parked = _partition_dir(trash, ds)
        if os.path.exists(live):
            os.makedirs(trash, exist_ok=True)
            os.rename(live, parked)
        os.rename(_partition_dir(stage, ds), live)
        shutil.rmtree(parked, ignore_errors=True)
        final_files += _data_files(live)
    shutil.rmtree(trash, ignore_errors=True)
    _remove_if_empty(os.path.join(path, TRASH_DIR))
    return {
        "partitions": sorted(staged),
        "files": [_uri(f) for f in final_files],
        "_final_files": final_files,
        "_calibration_files": final_files,
    }


def _recover_interrupted_swaps(path: str) -> None:
    """Put back partitions parked in _trash by a writer that died between its two renames."""
    trash_root = os.path.join(path, TRASH_DIR)
    if not os.path.isdir(trash_root):
        return
    for run in os.listdir(trash_root):
        run_dir = os.path.join(trash_root, run)
        if time.time() - os.path.getmtime(run_dir) < SWAP_GRACE_SECONDS:
            continue  # a concurrent writer may be between its two renames right now
        for entry in os.listdir(run_dir):
            live = os.path.join(path, entry)
            if not os.path.exists(live):
                log.warning("restoring partition %s parked by an interrupted write", live)
                os.rename(os.path.join(run_dir, entry), live)
        shutil.rmtree(run_dir, ignore_errors=True)
    _remove_if_empty(trash_root)


def _commit_delta_rs(path: str, name: str, staged: dict[str, list[str]]) -> dict:
    """Move staged Parquet files under the table and commit them as one Delta transaction (delta-rs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import DeltaTable, Schema
    from deltalake.transaction import AddAction, create_table_with_add_actions

    if not staged:
        return {"partitions": [], "version": DeltaTable(path).version() if _is_delta(path) else None}
    first = next(f for files in staged.values() for f in files)
    file_schema = pq.read_schema(first).remove_metadata()
    arrow_schema = file_schema.append(pa.field(PARTITION_COLUMN, pa.string()))
    actions, final_files = [], []
    for ds in sorted(staged):
        os.makedirs(_partition_dir(path, ds), exist_ok=True)
        for staged_file in staged[ds]:
            relative = f"{PARTITION_COLUMN}={ds}/{os.path.basename(staged_file)}"
            target = os.path.join(path, relative)
            os.rename(staged_file, target)
            final_files.append(target)
            stat = os.stat(target)
            stats = json.dumps({"numRecords": pq.read_metadata(target).num_rows})
            actions.append(
                AddAction(relative, stat.st_size, {PARTITION_COLUMN: ds}, int(stat.st_mtime * 1000), True, stats)
            )
    try:
        if _is_delta(path):
            table = DeltaTable(path)
            table.create_write_transaction(
                actions,
                mode="overwrite",
                schema=arrow_schema,
                partition_by=[PARTITION_COLUMN],
                partition_filters=[(PARTITION_COLUMN, "in", sorted(staged))],
            )
        else:
            create_table_with_add_actions(
                path, Schema.from_arrow(arrow_schema), actions, mode="error", partition_by=[PARTITION_COLUMN], name=name
            )
    except Exception as exc:
        for f in final_files:  # uncommitted files would be invisible anyway; remove them to save space
            with contextlib.suppress(OSError):
                os.remove(f)
        raise SchemaError(f"table '{name}': Delta commit failed at {path}: {exc}") from exc
    version = DeltaTable(path).version()
    return {
        "partitions": sorted(staged),
        "version": version,
        "_final_files": final_files,
        "_calibration_files": final_files,
    }


def _write_delta_spark(df, path: str, name: str, before_commit=None) -> dict:
    """Spark's own Delta writer (Delta jars present): replaceWhere on the ds values in df.

    With `before_commit`, the rows per ds are counted first (one more pass over df: this writer has no staging).
    """
    from delta.tables import DeltaTable as SparkDeltaTable

    if before_commit is not None:
        rows_by_ds = {r[0]: int(r[1]) for r in df.groupBy(PARTITION_COLUMN).count().collect()}
        before_commit(rows_by_ds)
        partitions = sorted(rows_by_ds)
    else:
        partitions = sorted(r[0] for r in df.select(PARTITION_COLUMN).distinct().collect())
    if not partitions:
        return {"table": name, "format": "delta", "path": path, "partitions": [], "rows": 0}
    quoted = ", ".join("'" + p.replace("'", "''") + "'" for p in partitions)
    (
        df.write.format("delta")
        .mode("overwrite")
        .partitionBy(PARTITION_COLUMN)
        .option("replaceWhere", f"{PARTITION_COLUMN} IN ({quoted})")
        .save(path)
    )
    spark = df.sparkSession
    last = SparkDeltaTable.forPath(spark, path).history(1).collect()[0]
    metrics = last["operationMetrics"] or {}
    rows = int(metrics.get("numOutputRows", 0))
    return {
        "table": name,
        "format": "delta",
        "path": path,
        "partitions": partitions,
        "rows": rows,
        "version": int(last["version"]),
    }


# ----------------------------------------------------------------------------------------------- reads


def _delta_table(path: str, version: int | None):
    from deltalake import DeltaTable

    return DeltaTable(path, version=version) if version is not None else DeltaTable(path)


def _delta_filters(ds: list[str] | None):
    return [(PARTITION_COLUMN, "in", ds)] if ds else None


def _require_table(path: str, name: str) -> str:
    fmt = _table_exists_as(path)
    if fmt is None:
        raise FileNotFoundError(f"table '{name}' does not exist at {path}")
    return fmt


def table_files(root, name: str, ds: str | list[str] | None = None, version: int | None = None) -> list[str]:
    """Sorted file:// URIs of the table's data files (for Petastorm), optionally for some ds and a Delta version."""
    path = table_path(root, name)
    fmt = _require_table(path, name)
    days = _as_list(ds)
    if fmt == "delta":
        return sorted(_uri(u) for u in _delta_table(path, version).file_uris(partition_filters=_delta_filters(days)))
    if version is not None:
        raise ValueError(f"table '{name}' is Parquet: it has no versions (asked for version {version})")
    days = days if days is not None else list_partitions(root, name)
    return [_uri(f) for d in sorted(days) for f in _data_files(_partition_dir(path, d))]


def count_rows(root, name: str, ds: str | list[str] | None = None) -> int | None:
    """Rows in the table's partitions `ds` from the Parquet footers alone (no Spark job); None for Delta tables,
    whose files may carry deletion vectors (count those through Spark)."""
    path = table_path(root, name)
    if _require_table(path, name) != "parquet":
        return None
    return _count_rows([f[len("file://") :] for f in table_files(root, name, ds=ds)])


def list_partitions(root, name: str, version: int | None = None) -> list[str]:
    """Sorted ds values present in the table (at `version` for Delta)."""
    path = table_path(root, name)
    fmt = _require_table(path, name)
    if fmt == "delta":
        return sorted({p[PARTITION_COLUMN] for p in _delta_table(path, version).partitions()})
    return sorted(
        n.split("=", 1)[1]
        for n in os.listdir(path)
        if n.startswith(f"{PARTITION_COLUMN}=")
        and os.path.isdir(os.path.join(path, n))
        and _data_files(os.path.join(path, n))
    )


def table_version(root, name: str) -> int | None:
    """Latest Delta version, or None for Parquet tables."""
    path = table_path(root, name)
    return _delta_table(path, None).version() if _require_table(path, name) == "delta" else None


def read_table(spark, root, name: str, ds: str | list[str] | None = None, version: int | None = None):
    """The table (optionally some ds partitions; Delta: at `version`) as a DataFrame with ds as a string column."""
    from pyspark.sql import functions as F

    from cvr.session import spark_has_delta

    path = table_path(root, name)
    fmt = _require_table(path, name)
    days = _as_list(ds)
    if fmt == "delta" and spark_has_delta(spark):
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", int(version))
        df = reader.load(path)
        return df.filter(F.col(PARTITION_COLUMN).isin(days)) if days is not None else df
    files = table_files(root, name, ds=days, version=version)
    if not files:
        return _empty_frame(spark, path, name, fmt, version)
    # ds comes from the folder names; keep it a string (type inference would turn 2026-01-01 into a date).
    with sql_conf(spark, {"spark.sql.sources.partitionColumnTypeInference.enabled": "false"}):
        return spark.read.option("basePath", _uri(path)).parquet(*files)


def _empty_frame(spark, path: str, name: str, fmt: str, version: int | None):
    """An empty DataFrame with the table's columns (no partition matched)."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import from_arrow_schema

    if fmt == "delta":
        return spark.createDataFrame([], from_arrow_schema(pa.schema(_delta_table(path, version).schema().to_arrow())))
    any_file = next(iter(table_files(path_root(path), name)), None)
    if any_file is not None:
        import pyarrow.parquet as pq

        arrow = (
            pq.read_schema(any_file[len("file://") :]).remove_metadata().append(pa.field(PARTITION_COLUMN, pa.string()))
        )
        return spark.createDataFrame([], from_arrow_schema(arrow))
    return spark.createDataFrame([], spark_schema(name))


def path_root(table_dir: str) -> str:
    """The root a table folder <root>/tables/<name> belongs to."""
    return os.path.dirname(os.path.dirname(table_dir))


def table_snapshot(root, name: str, ds: str | list[str] | None = None) -> dict:
    """What a reader sees now, for lineage: format, Delta version or the sorted Parquet file list with sizes."""
    path = table_path(root, name)
    fmt = _require_table(path, name)
    days = _as_list(ds)
    snapshot = {"table": name, "path": path, "format": fmt, "ds": days, "taken_at": time.time()}
    if fmt == "delta":
        snapshot["version"] = _delta_table(path, None).version()
        files = table_files(root, name, ds=days, version=snapshot["version"])
    else:
        files = table_files(root, name, ds=days)
    snapshot["files"] = [{"uri": f, "size": os.path.getsize(f[len("file://") :])} for f in files]
    snapshot["partitions"] = sorted({_ds_of(f) for f in files})
    return snapshot


def _ds_of(file_uri: str) -> str:
    match = re.search(rf"/{PARTITION_COLUMN}=([^/]+)/", file_uri)
    return match.group(1) if match else ""
