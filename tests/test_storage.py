"""Table storage on real Spark and real files: partition overwrite, atomicity, Delta via delta-rs, schemas."""

from __future__ import annotations

import datetime as dt
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from cvr.storage import (
    SchemaError,
    count_rows,
    enforce,
    list_partitions,
    read_table,
    table_exists,
    table_files,
    table_path,
    table_snapshot,
    table_version,
    to_quarantine,
    validate_rows,
    write_json_atomic,
    write_partitions,
)
from cvr.storage.schema import arrow_schema, load_schema, spark_schema


def _clicks(spark, days: dict[str, int], tag: str = "a"):
    """A small clicks table: `n` rows per ds, ids tagged so two writes are distinguishable."""
    rows = []
    for ds, n in days.items():
        base = dt.datetime.fromisoformat(ds).replace(tzinfo=dt.UTC)
        rows += [(f"{tag}-{ds}-{i}", f"imp-{i}", base + dt.timedelta(seconds=i), ds) for i in range(n)]
    return spark.createDataFrame(rows, spark_schema("clicks"))


def _sorted_rows(df):
    return sorted(tuple(r) for r in df.collect())


@pytest.mark.parametrize("fmt", ["parquet", "delta"])
def test_overwrite_replaces_only_the_partitions_in_the_frame(spark, tmp_path, fmt):
    root = str(tmp_path)
    write_partitions(_clicks(spark, {"2026-01-01": 5, "2026-01-02": 7}, tag="a"), root, "clicks", fmt=fmt)
    report = write_partitions(_clicks(spark, {"2026-01-02": 3}, tag="b"), root, "clicks", fmt=fmt)

    assert report["partitions"] == ["2026-01-02"] and report["rows"] == 3 and report["format"] == fmt
    assert list_partitions(root, "clicks") == ["2026-01-01", "2026-01-02"]
    day1 = read_table(spark, root, "clicks", ds="2026-01-01")
    day2 = read_table(spark, root, "clicks", ds="2026-01-02")
    assert {r.click_id.split("-")[0] for r in day1.collect()} == {"a"} and day1.count() == 5
    assert {r.click_id.split("-")[0] for r in day2.collect()} == {"b"} and day2.count() == 3
    assert dict(day2.dtypes)["ds"] == "string" and dict(day2.dtypes)["ts"] == "timestamp"
    assert not os.path.exists(os.path.join(table_path(root, "clicks"), "_staging"))


def test_rerun_gives_identical_data(spark, tmp_path):
    root = str(tmp_path)
    df = _clicks(spark, {"2026-01-01": 20, "2026-01-02": 10})
    write_partitions(df, root, "clicks")
    first = _sorted_rows(read_table(spark, root, "clicks"))
    write_partitions(df, root, "clicks")
    assert _sorted_rows(read_table(spark, root, "clicks")) == first
    assert len(first) == 30


@pytest.mark.parametrize("fmt", ["parquet", "delta"])
def test_failed_write_leaves_previous_partition_readable(spark, tmp_path, fmt):
    root = str(tmp_path)
    write_partitions(_clicks(spark, {"2026-01-01": 6}), root, "clicks", fmt=fmt)
    before = _sorted_rows(read_table(spark, root, "clicks"))
    version_before = table_version(root, "clicks")

    # The write job fails on the executors after it has started writing: raise_error fires on one row.
    failing = _clicks(spark, {"2026-01-01": 50}, tag="b").withColumn(
        "click_id",
        F.when(F.col("click_id") == "b-2026-01-01-40", F.raise_error(F.lit("boom"))).otherwise(F.col("click_id")),
    )
    with pytest.raises(Exception, match="boom"):
        write_partitions(failing, root, "clicks", fmt=fmt)

    assert _sorted_rows(read_table(spark, root, "clicks")) == before
    assert table_version(root, "clicks") == version_before
    leftovers = [d for d in os.listdir(table_path(root, "clicks")) if d in ("_staging", "_trash")]
    assert leftovers == []


@pytest.mark.parametrize("fmt", ["parquet", "delta"])
def test_before_commit_sees_staged_rows_and_can_refuse(spark, tmp_path, fmt):
    root = str(tmp_path)
    write_partitions(_clicks(spark, {"2026-01-01": 6}), root, "clicks", fmt=fmt)
    before = _sorted_rows(read_table(spark, root, "clicks"))
    seen = []

    def refuse(rows_by_ds):
        seen.append(rows_by_ds)
        raise RuntimeError("does not balance")

    with pytest.raises(RuntimeError, match="does not balance"):
        write_partitions(_clicks(spark, {"2026-01-01": 4, "2026-01-02": 3}, tag="b"), root, "clicks", fmt=fmt, before_commit=refuse)  # fmt: skip
    assert seen == [{"2026-01-01": 4, "2026-01-02": 3}]
    assert _sorted_rows(read_table(spark, root, "clicks")) == before
    assert [d for d in os.listdir(table_path(root, "clicks")) if d in ("_staging", "_trash")] == []
    report = write_partitions(_clicks(spark, {"2026-01-02": 3}), root, "clicks", fmt=fmt, before_commit=seen.append)
    assert seen[-1] == {"2026-01-02": 3} and report["rows"] == 3
    assert count_rows(root, "clicks", ["2026-01-01", "2026-01-02"]) == (9 if fmt == "parquet" else None)


def test_plain_columns_are_written_without_a_dictionary(spark, tmp_path):
    root = str(tmp_path)
    assert load_schema("features").plain_columns == ("impression_id", "dup_key")
    short = F.col("impression_id").substr(1, 5)  # imp-0 .. imp-9: few values, which Parquet would dictionary-encode
    repeats = _clicks(spark, {"2026-01-01": 200}).withColumn("click_id", short).withColumn("impression_id", short)
    write_partitions(repeats.coalesce(1), root, "clicks", plain_columns=("click_id",))
    meta = pq.ParquetFile(table_files(root, "clicks")[0][len("file://") :]).metadata
    encodings = {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i).encodings for i in range(meta.num_columns)}  # fmt: skip
    assert not any("DICTIONARY" in e for e in encodings["click_id"]), encodings
    assert any("DICTIONARY" in e for e in encodings["impression_id"]), encodings


def test_interrupted_swap_is_recovered_on_next_write(spark, tmp_path):
    """A writer killed between its two renames leaves the old partition parked in _trash: it is put back."""
    root = str(tmp_path)
    write_partitions(_clicks(spark, {"2026-01-01": 4, "2026-01-02": 2}), root, "clicks")
    path = table_path(root, "clicks")
    parked = os.path.join(path, "_trash", "deadbeef")
    os.makedirs(parked)
    os.rename(os.path.join(path, "ds=2026-01-01"), os.path.join(parked, "ds=2026-01-01"))
    os.utime(parked, (0, 0))  # parked long ago: its writer is gone

    write_partitions(_clicks(spark, {"2026-01-02": 3}, tag="b"), root, "clicks")
    assert read_table(spark, root, "clicks", ds="2026-01-01").count() == 4
    assert not os.path.exists(os.path.join(path, "_trash"))


def test_delta_versions_time_travel_and_file_lists(spark, tmp_path):
    from deltalake import DeltaTable

    root = str(tmp_path)
    v0 = write_partitions(_clicks(spark, {"2026-01-01": 8, "2026-01-02": 4}, tag="a"), root, "clicks", fmt="delta")
    v1 = write_partitions(_clicks(spark, {"2026-01-01": 3}, tag="b"), root, "clicks", fmt="delta")
    assert (v0["version"], v1["version"]) == (0, 1)

    old = read_table(spark, root, "clicks", ds="2026-01-01", version=0)
    new = read_table(spark, root, "clicks", ds="2026-01-01")
    assert old.count() == 8 and {r.click_id[0] for r in old.collect()} == {"a"}
    assert new.count() == 3 and {r.click_id[0] for r in new.collect()} == {"b"}
    assert read_table(spark, root, "clicks", version=1).count() == 3 + 4

    files_v0 = table_files(root, "clicks", ds="2026-01-01", version=0)
    files_v1 = table_files(root, "clicks", ds="2026-01-01", version=1)
    assert files_v0 and files_v1 and not set(files_v0) & set(files_v1)
    assert all(f.startswith("file:///") for f in files_v0 + files_v1)
    assert sum(pq.read_metadata(f[len("file://") :]).num_rows for f in files_v0) == 8
    # delta-rs itself reads the commit made from Spark's files, with the declared types.
    # (DeltaTable.to_pyarrow_table needs pyarrow >= 15, so count and schema are checked instead.)
    table = DeltaTable(table_path(root, "clicks"))
    assert table.count() == 7 and str(pa.schema(table.schema().to_arrow()).field("ts").type) == "timestamp[us, tz=UTC]"
    snapshot = table_snapshot(root, "clicks")
    assert snapshot["version"] == 1 and snapshot["partitions"] == ["2026-01-01", "2026-01-02"]
    assert all(f["size"] > 0 for f in snapshot["files"])


def test_row_groups_sized_for_petastorm(spark, tmp_path):
    root = str(tmp_path)
    df = spark.range(0, 40000, numPartitions=1).select(
        F.col("id").cast("string").alias("impression_id"),
        (F.col("id") * 7919 % 100003).alias("f_user"),
        F.rand(3).cast("float").alias("x_price"),
        F.lit("2026-01-01").alias("ds"),
    )
    for _ in range(2):  # the second write uses the row width measured on the first
        write_partitions(df, root, "features", row_group_rows=4000, max_rows_per_file=20000)
    files = [f[len("file://") :] for f in table_files(root, "features")]
    metas = [pq.read_metadata(f) for f in files]
    groups_per_file = [[m.row_group(i).num_rows for i in range(m.num_row_groups)] for m in metas]
    assert len(files) == 2 and sum(map(sum, groups_per_file)) == 40000
    closed_by_size = [g for groups in groups_per_file for g in groups[:-1]]
    assert len(closed_by_size) >= 6 and all(3000 <= g <= 5000 for g in closed_by_size), groups_per_file


def test_row_groups_of_a_hashed_features_table_converge_on_the_target(spark, tmp_path):
    """Dictionary-encoded id columns: the writer's size estimate is far from linear in rows unless pages are small."""
    root, target = str(tmp_path), 10000
    buckets = (7, 24, 300, 1000, 5000, 20000, 50000, 100003)
    df = spark.range(0, 80000, numPartitions=1).select(
        *[(F.xxhash64(F.col("id") % (b * 3), F.lit(b)) % b).alias(f"f_{i}") for i, b in enumerate(buckets)],
        F.xxhash64("id").alias("dup_key"),
        (F.col("id") % 2).cast("int").alias("click"),
        F.lit("2026-01-01").alias("ds"),
    )
    for _ in range(3):  # the first write sizes groups from column types, later ones from what earlier ones stored
        write_partitions(df, root, "features", row_group_rows=target, max_rows_per_file=200000)
    (file,) = [f[len("file://") :] for f in table_files(root, "features")]
    meta = pq.read_metadata(file)
    groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sum(groups) == 80000 and all(0.75 * target <= g <= 1.25 * target for g in groups[:-1]), groups


def test_parquet_read_of_missing_partition_is_empty_with_columns(spark, tmp_path):
    root = str(tmp_path)
    assert not table_exists(root, "clicks")
    with pytest.raises(FileNotFoundError, match="clicks"):
        read_table(spark, root, "clicks")
    write_partitions(_clicks(spark, {"2026-01-01": 2}), root, "clicks")
    empty = read_table(spark, root, "clicks", ds="2026-02-01")
    assert empty.count() == 0 and set(empty.columns) == {"click_id", "impression_id", "ts", "ds"}


def test_enforce_casts_and_names_table_and_column(spark):
    df = spark.createDataFrame(
        [("c1", "i1", "2026-01-01 10:00:00", "2026-01-01")],
        "click_id string, impression_id string, ts string, ds string",
    )
    out = enforce(df, "clicks")
    assert out.schema == spark_schema("clicks").__class__(out.schema.fields)
    assert dict(out.dtypes)["ts"] == "timestamp"

    with pytest.raises(SchemaError, match=r"table 'clicks': required column 'impression_id'"):
        enforce(df.drop("impression_id"), "clicks")
    bad_ts = spark.createDataFrame([("c1", "i1", "yesterday", "2026-01-01")], df.schema)
    with pytest.raises(SchemaError, match=r"table 'clicks': column 'ts' .*'yesterday'"):
        enforce(bad_ts, "clicks")
    with pytest.raises(SchemaError, match=r"table 'clicks': undeclared column\(s\) extra"):
        enforce(df.withColumn("extra", F.lit(1)), "clicks")
    assert enforce(df.withColumn("extra", F.lit(1)), "clicks", extra="drop").columns == [
        "click_id",
        "impression_id",
        "ts",
        "ds",
    ]
    arrays = spark.createDataFrame(
        [("c1", "i1", [1], "d")], "click_id string, impression_id string, ts array<int>, ds string"
    )
    with pytest.raises(SchemaError, match=r"column 'ts' has type array<int>, which cannot be cast to timestamp"):
        enforce(arrays, "clicks")


def test_enforce_dynamic_feature_columns(spark):
    df = spark.createDataFrame(
        [("i1", 1, 2, 0, 0, 0, 0, "d", 5, 0.5)],
        "impression_id string, user_key long, dup_key long, click int, micro int, macro int, conversion int, "
        "ds string, f_user int, x_price double",
    )
    types = dict(enforce(df, "features").dtypes)
    assert types["f_user"] == "bigint" and types["x_price"] == "float"


def test_validate_rows_splits_with_reasons_and_quarantine_shape(spark):
    rows = [("b1", "i1", "micro", "view_pictures"), ("b2", None, "micro", "read_reviews"), ("b3", "i3", "huge", "cart")]
    df = spark.createDataFrame(rows, "behaviour_id string, impression_id string, kind string, action string")
    df = df.withColumn("ts", F.current_timestamp()).withColumn("ds", F.lit("2026-01-01"))
    good, bad = validate_rows(df, "behaviours")
    assert [r.behaviour_id for r in good.collect()] == ["b1"]
    assert sorted((r.behaviour_id, r.reason) for r in bad.collect()) == [
        ("b2", "null:impression_id"),
        ("b3", "not_allowed:kind"),
    ]
    quarantined = enforce(to_quarantine(bad, source="behaviours", job="build-samples"), "quarantine")
    record = sorted(r.record for r in quarantined.collect())[0]
    assert '"behaviour_id":"b2"' in record and quarantined.count() == 2


def test_schema_files_load_for_every_table():
    for name in ("impressions", "clicks", "behaviours", "conversions", "samples", "features", "quarantine", "truth"):
        schema = load_schema(name)
        assert schema.partition_by == ("ds",) and len(arrow_schema(name)) == len(schema.columns)
    with pytest.raises(SchemaError, match="no schema file"):
        load_schema("nope")


def test_write_json_atomic(tmp_path):
    target = tmp_path / "sub" / "r.json"
    write_json_atomic(target, {"b": 1, "a": [1, 2]})
    write_json_atomic(target, {"c": 3})
    assert target.read_text().strip() == '{\n  "c": 3\n}' and os.listdir(target.parent) == ["r.json"]
