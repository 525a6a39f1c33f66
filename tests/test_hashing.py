"""Feature hashing: XXH64 parity with Spark, Spark/Python twin parity on whole rows, spec checks, leakage guard."""

from __future__ import annotations

import json
import random
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cvr.pipeline.hashing import (
    HashingSpecError,
    hash_features,
    hash_row,
    hash_values,
    load_spec,
    spec_from_dict,
    spec_from_json_text,
    spec_to_json,
    xxh64,
)

SAMPLES_SCHEMA = (
    "impression_id string, ts timestamp, user_id string, user_segment string, user_city string, item_id string, "
    "category_id string, shop_id string, brand_id string, price double, position int, device string"
    ", hour int, click int, micro int, macro int, conversion int, n_micro int, n_macro int, n_conversions int, ds string"
)


def random_strings(n: int, seed: int = 5) -> list[str]:
    rng = random.Random(seed)
    alphabet = [chr(c) for c in range(32, 127)] + ["é", "ß", "日", "本", "😀", "\u0301", "\x00"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 70))) for _ in range(n)]


def test_xxh64_reference_vectors():
    # Published XXH64 test values (seed 0); Spark parity (seed 42) is checked below.
    assert xxh64(b"", 0) == 0xEF46DB3751D8E999 - (1 << 64)
    assert xxh64(b"a", 0) == 0xD24EC4F1A98C6E5B - (1 << 64)


def test_xxh64_matches_spark_on_many_strings(spark):
    from pyspark.sql import functions as F

    values = ["", " ", "Spark", "é", "日本語", "😀" * 9, "x" * 31, "y" * 32, "z" * 33, "q" * 1000, *random_strings(400)]
    rows = spark.createDataFrame([(v,) for v in values], "s string").select("s", F.xxhash64("s").alias("h")).collect()
    mismatches = [(r["s"], r["h"], xxh64(r["s"].encode())) for r in rows if r["h"] != xxh64(r["s"].encode())]
    assert len(rows) == len(values) and mismatches == []


@pytest.fixture(scope="module")
def spec():
    return load_spec(Path(__file__).resolve().parent.parent / "conf" / "features" / "default.yaml")


def sample_rows(n: int) -> list[tuple]:
    rng = random.Random(11)
    strings = random_strings(60, seed=9) + ["", None, None, "u" * 300]
    rows = []
    for i in range(n):
        pick = lambda: rng.choice(strings)  # noqa: E731
        price = rng.choice([None, 0.0, -0.0, -3.0, 9.99, 1e6, 123.456, float(i), 1 / 3, -1e-7, 0.0000005, 2.5e15, float("nan"), float("inf")])  # fmt: skip
        rows.append((
            f"imp{i}", datetime(2026, 1, 1, i % 24), f"user{i % 7}", pick(), pick(), f"item{i % 5}", pick(), pick(),
            pick(), price, rng.choice([None, 0, 1, 17, -2]), pick(), i % 24,
            i % 2, 0, 0, int(i % 6 == 0), 0, 0, 0, "2026-01-01",
        ))  # fmt: skip
    return rows


def test_spark_and_python_twin_agree_on_every_row(spark, spec):
    rows = sample_rows(300)
    df = spark.createDataFrame(rows, SAMPLES_SCHEMA)
    features = {r["impression_id"]: r.asDict() for r in hash_features(df, spec).collect()}
    assert len(features) == len(rows)
    columns = df.columns
    for raw in rows:
        row = dict(zip(columns, raw, strict=True))
        expected = hash_row(spec, row)
        got = features[row["impression_id"]]
        assert {k: got[k] for k in expected} == expected, row
        assert got["click"] == row["click"] and got["ds"] == "2026-01-01"


def test_features_table_columns_and_bucket_ranges(spark, spec):
    df = spark.createDataFrame(sample_rows(50), SAMPLES_SCHEMA)
    features = hash_features(df, spec)
    assert features.columns == [
        "impression_id", "user_key", "dup_key", *spec.sparse_columns, *spec.dense_columns,
        "click", "micro", "macro", "conversion", "ds",
    ]  # fmt: skip
    types = dict(features.dtypes)
    assert all(types[c] == "bigint" for c in spec.sparse_columns) and types["x_log_price"] == "float"
    rows = features.collect()
    for sparse in spec.fields:
        assert all(0 <= r[f"f_{sparse.name}"] < sparse.buckets for r in rows)


def test_null_empty_and_cross_tokens_differ(spec):
    assert hash_values("user_city", 1, [None]) != hash_values("user_city", 1, [""])
    assert hash_values("x", 1, ["a", "bc"]) != hash_values("x", 1, ["ab", "c"])
    assert hash_values("x", 1, [None, "a"]) != hash_values("x", 1, ["a", None])  # the null mask tells them apart
    assert hash_values("x", 1, [3]) != hash_values("x", 1, ["3"])  # typed: a column's type is part of its ids
    with pytest.raises(TypeError, match=r"float value 1.5 cannot be hashed consistently"):
        hash_values("x", 1, [1.5])
    assert hash_values("x", 1, ["a"]) != hash_values("x", 2, ["a"])  # the spec seed matters
    base = {c: "v" for c in spec.raw_columns} | {"price": 1.0, "position": 1}
    assert hash_row(spec, base)["dup_key"] == hash_row(spec, dict(base))["dup_key"]
    assert hash_row(spec, base)["dup_key"] != hash_row(spec, base | {"price": 1.5})["dup_key"]


def test_identical_feature_tuples_share_dup_key(spark, spec):
    rows = sample_rows(3)
    twin = (rows[0][0] + "_again", *rows[0][1:])
    df = spark.createDataFrame([*rows, twin], SAMPLES_SCHEMA)
    keys = {r["impression_id"]: r["dup_key"] for r in hash_features(df, spec).collect()}
    assert keys["imp0"] == keys["imp0_again"] and keys["imp0"] != keys["imp1"]


def test_chained_hash_matches_spark_over_many_columns_and_types(spark):
    """Nulls past the first 31 positions go to a second mask; ints, longs and booleans hash as longs."""

    from cvr.pipeline.hashing import _chained_hash, _spark_hash, _spark_value

    width = 40
    schema = ", ".join(f"c{i} {['string', 'int', 'bigint', 'boolean'][i % 4]}" for i in range(width))
    samples = [["s", 7, -(2**40), True][i % 4] for i in range(width)]
    rows = [tuple(samples), tuple(None if i in (2, 35) else v for i, v in enumerate(samples)), tuple([None] * width)]
    df = spark.createDataFrame(rows, schema)
    got = df.select(_spark_hash("ns", 9, [_spark_value(df, f"c{i}") for i in range(width)]).alias("h")).collect()
    expected = [_chained_hash("ns", 9, list(row)) for row in rows]
    assert [r["h"] for r in got] == expected and len(set(expected)) == 3


def test_saved_spec_of_another_hash_scheme_is_refused(spec):
    old = json.loads(spec_to_json(spec))
    del old["hash_scheme"]  # a table saved before schemes were recorded was hashed with scheme 1
    with pytest.raises(HashingSpecError, match=r"saved.json: hash_scheme: ids were hashed with scheme 1, this code hashes with scheme 2; re-run hash-features"):  # fmt: skip
        spec_from_json_text(json.dumps(old), "saved.json")


def test_spec_json_round_trip(spec):
    again = spec_from_json_text(spec_to_json(spec), "saved.json")
    assert again == spec and again.digest() == spec.digest()


@pytest.mark.parametrize(
    ("entry", "column"),
    [
        ({"name": "leak", "column": "conversion", "buckets": 4}, "conversion"),
        ({"name": "leak", "column": "n_micro", "buckets": 4}, "n_micro"),
        ({"name": "leak", "column": "p_cvr", "buckets": 4}, "p_cvr"),
        ({"name": "leak", "column": "action", "buckets": 4}, "action"),
    ],
)
def test_leakage_guard_names_file_field_and_column(tmp_path, entry, column):
    path = tmp_path / "leaky.yaml"
    path.write_text(f"seed: 1\nuser_column: user_id\nfields:\n  - {{name: user_id, buckets: 16}}\n  - {entry}\n".replace("'", ""))  # fmt: skip
    with pytest.raises(HashingSpecError, match=rf"leaky.yaml: field 'leak' uses column '{column}'"):
        load_spec(path)


def test_leakage_guard_covers_crosses_and_dense():
    with pytest.raises(HashingSpecError, match=r"field 'c' uses column 'click'"):
        spec_from_dict({"seed": 1, "user_column": "u", "fields": [{"name": "u", "buckets": 8}], "crosses": [{"name": "c", "columns": ["u", "click"], "buckets": 8}]}, "s.yaml")  # fmt: skip
    with pytest.raises(HashingSpecError, match=r"dense 'm' uses column 'macro'"):
        spec_from_dict({"seed": 1, "user_column": "u", "fields": [{"name": "u", "buckets": 8}], "dense": [{"name": "m", "column": "macro"}]}, "s.yaml")  # fmt: skip


def test_bad_spec_values_are_clear_errors():
    with pytest.raises(HashingSpecError, match=r"s.yaml: fields\[0\] \(u\): 'buckets' must be an integer"):
        spec_from_dict({"seed": 1, "user_column": "u", "fields": [{"name": "u", "buckets": "many"}]}, "s.yaml")
    with pytest.raises(HashingSpecError, match=r"unknown keys \['feilds'\]"):
        spec_from_dict({"seed": 1, "user_column": "u", "feilds": []}, "s.yaml")


def test_float_column_cannot_be_a_sparse_field(spark):
    spec = spec_from_dict({"seed": 1, "user_column": "user_id", "fields": [{"name": "price", "buckets": 8}]}, "s.yaml")
    df = spark.createDataFrame(sample_rows(2), SAMPLES_SCHEMA)
    with pytest.raises(HashingSpecError, match=r"field 'price' column 'price' has type double"):
        hash_features(df, spec)


def test_stage_writes_delta_features_and_saves_spec(spark, tmp_path, spec, capsys):
    from cvr.cli.main import main
    from cvr.config import load_config
    from cvr.pipeline.stages import run_hash_features, saved_spec_path
    from cvr.storage import read_table, table_version, write_partitions

    rows = sample_rows(40)
    write_partitions(spark.createDataFrame(rows, SAMPLES_SCHEMA), str(tmp_path), "samples")
    cfg = load_config(root=str(tmp_path), overrides={"storage": {"format": "delta"}})
    report = run_hash_features(spark, cfg, "2026-01-01")
    assert report["output"]["rows"] == 40 and report["spec_digest"] == spec.digest()
    saved = spec_from_json_text(saved_spec_path(cfg).read_text(), "saved")
    assert saved == spec
    first_version = table_version(str(tmp_path), "features")
    got = {r["impression_id"]: r.asDict() for r in read_table(spark, str(tmp_path), "features", ds="2026-01-01").collect()}  # fmt: skip
    columns = SAMPLES_SCHEMA_COLUMNS
    for raw in rows[:10]:
        row = dict(zip(columns, raw, strict=True))
        assert {k: got[row["impression_id"]][k] for k in spec.sparse_columns} == {k: v for k, v in hash_row(spec, row).items() if k.startswith("f_")}  # fmt: skip

    # Re-running through the CLI replaces the partition: a new Delta version, the same rows.
    assert main(["hash-features", "--root", str(tmp_path), "--config", str(delta_config(tmp_path)), "--ds", "2026-01-01"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["output"]["rows"] == 40
    assert table_version(str(tmp_path), "features") > first_version
    again = {r["impression_id"]: r.asDict() for r in read_table(spark, str(tmp_path), "features", ds="2026-01-01").collect()}  # fmt: skip
    assert again == got

    # A different spec may not be mixed into the same table.
    other = tmp_path / "other.yaml"
    other.write_text("seed: 2\nuser_column: user_id\nfields:\n  - {name: user_id, buckets: 16}\n")
    cfg_other = load_config(root=str(tmp_path), overrides={"storage": {"format": "delta"}, "features": {"spec": str(other)}})  # fmt: skip
    with pytest.raises(HashingSpecError, match=r"other.yaml: spec digest .* differs from the spec the table was hashed with"):  # fmt: skip
        run_hash_features(spark, cfg_other, "2026-01-01")


def test_training_file_count_merges_only_files_too_small_for_full_row_groups():
    from cvr.config import load_config
    from cvr.pipeline.stages import _training_file_count

    cfg = load_config(overrides={"storage": {"row_group_rows": 20000, "max_rows_per_file": 200000}})
    assert _training_file_count(cfg, 2, 1_000_000, 8) == 8  # 125k rows a file: kept, no merging
    assert _training_file_count(cfg, 2, 200_000, 8) == 2  # 25k a file -> one per core, 5 full groups each
    assert _training_file_count(cfg, 8, 50_000, 8) == 1  # two full groups in one file, not one in each of two
    assert _training_file_count(cfg, 2, 20_000, 8) == 8  # too small to merge: a rank may not get only a remainder
    assert _training_file_count(cfg, 2, 0, 0) == 0


def test_stage_writes_the_features_day_as_few_files(spark, tmp_path, spec):
    from cvr.config import load_config
    from cvr.pipeline.stages import _training_file_count, run_hash_features
    from cvr.storage import table_files, write_partitions

    samples = spark.createDataFrame(sample_rows(3000), SAMPLES_SCHEMA).repartition(7)
    write_partitions(samples, str(tmp_path), "samples")
    cfg = load_config(root=str(tmp_path), overrides={"storage": {"row_group_rows": 400, "max_rows_per_file": 1000}})
    assert run_hash_features(spark, cfg, "2026-01-01")["output"]["rows"] == 3000
    files = [pq.ParquetFile(f[len("file://") :]).metadata.num_rows for f in table_files(str(tmp_path), "features")]
    merged = _training_file_count(cfg, spark.sparkContext.defaultParallelism, 3000, 7)
    # one file per merged task; a task over max_rows_per_file rows spills into one more file
    assert merged == 3 and len(files) <= merged + 1 and max(files) <= 1000 and sum(files) == 3000, files


SAMPLES_SCHEMA_COLUMNS = [part.strip().split(" ")[0] for part in SAMPLES_SCHEMA.split(",")]


def delta_config(folder: Path) -> Path:
    path = folder / "delta.yaml"
    path.write_text("storage:\n  format: delta\n")
    return path
