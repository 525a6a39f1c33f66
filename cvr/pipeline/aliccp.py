"""Ali-CCP ingestion: the public raw layout -> a samples-style table (one row per sample).

Raw layout (models.md 6.1), one record per line, comma separated:
  sample_skeleton_*.csv : sample_id, click, conversion, common_feature_key, feature_count, feature_list
  common_features_*.csv : common_feature_key, feature_count, feature_list
A feature list is entries joined by \\x01, each entry ``field_id \\x02 feature_id \\x03 value``.

Output columns: impression_id (the sample id), one raw string column ``field_<field id>`` per Ali-CCP field
(FIELDS), click, micro = macro = 0 (Ali-CCP has no behaviour labels), conversion, ds.

Multi-valued fields (the user histories 109_14, 110_14, 127_14, 150_14 carry several weighted ids): we keep the
single id with the highest value (weight); ties go to the largest id string. This keeps one id per field (what
the hashed table and the models expect) and picks the user's strongest interest. Entries of fields not in FIELDS
are ignored. When skeleton and common features both carry a field, the same rule picks across both.

Every input line is used, deduplicated (a later repeat of a sample id / common key, in file order) or quarantined with a reason:
bad_encoding, wrong_column_count, null_key, bad_label, bad_feature_count, malformed_feature,
conversion_without_click, unknown_common_key.
"""

from __future__ import annotations

from functools import reduce

JOB = "ingest-aliccp"
FIELDS = (
    "101", "109_14", "110_14", "127_14", "150_14", "121", "122", "124", "125", "126", "127", "128", "129",
    "205", "206", "207", "210", "216", "508", "509", "702", "853", "301",
)  # fmt: skip
ENTRY_SEP, FIELD_SEP, VALUE_SEP = "\x01", "\x02", "\x03"
SKELETON_COLUMNS = ("sample_id", "click", "conversion", "common_key", "feature_count", "feature_list")
COMMON_COLUMNS = ("common_key", "feature_count", "feature_list")
USED, DEDUPLICATED, QUARANTINED = "used", "deduplicated", "quarantined:"
_ENTRY_PATTERN = (
    f"^[^{FIELD_SEP}{VALUE_SEP}]+{FIELD_SEP}[^{FIELD_SEP}{VALUE_SEP}]+{VALUE_SEP}[^{FIELD_SEP}{VALUE_SEP}]+$"
)


def field_column(field_id: str) -> str:
    return f"field_{field_id}"


def _split_line(lines, names: tuple[str, ...]):
    """Text lines -> named string columns plus `_n_parts` and `_valid_utf8`; the raw line is kept as `line`."""
    from pyspark.sql import functions as F

    parts = F.split(F.col("value"), ",", -1)
    return lines.select(
        F.monotonically_increasing_id().alias("_line_order"),  # file order: the first copy of a key wins
        F.col("value").alias("line"),
        F.is_valid_utf8("value").alias("_valid_utf8"),
        F.size(parts).alias("_n_parts"),
        *[F.get(parts, i).alias(name) for i, name in enumerate(names)],  # get: NULL when short (ANSI-safe),
    )


def _entries(feature_list):
    """feature list -> array<struct<field, id, value>> (value null when not a number)."""
    from pyspark.sql import functions as F

    raw = F.when(feature_list == "", F.array().cast("array<string>")).otherwise(F.split(feature_list, ENTRY_SEP, -1))

    def to_struct(entry):
        head = F.split(entry, VALUE_SEP, 2)
        field_and_id = F.split(F.get(head, 0), FIELD_SEP, 2)
        return F.struct(
            F.get(field_and_id, 0).alias("field"),
            F.get(field_and_id, 1).alias("id"),
            F.get(head, 1).try_cast("double").alias("value"),
        )

    return raw, F.transform(raw, to_struct)


def _list_problem(count_col, feature_list):
    """Status for a feature-list column pair: bad_feature_count, malformed_feature or None."""
    from pyspark.sql import functions as F

    raw, parsed = _entries(feature_list)
    count = count_col.try_cast("int")
    well_formed = F.forall(raw, lambda e: e.rlike(_ENTRY_PATTERN)) & F.forall(parsed, lambda s: s["value"].isNotNull())
    return [
        (count.isNull() | (count != F.size(raw)), QUARANTINED + "bad_feature_count"),
        (~well_formed, QUARANTINED + "malformed_feature"),
    ]


def _status(conditions, default: str = USED):
    from pyspark.sql import functions as F

    expr = None
    for cond, status in conditions:
        expr = F.when(cond, F.lit(status)) if expr is None else expr.when(cond, F.lit(status))
    return expr.otherwise(F.lit(default))


def _dedup_rank(key: str, ok):
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    return F.row_number().over(Window.partitionBy(ok, key).orderBy("_line_order"))


def classify_common(common_lines):
    """Common-features lines with `_status`."""
    from pyspark.sql import functions as F

    df = _split_line(common_lines, COMMON_COLUMNS)
    basic = [
        (~F.col("_valid_utf8"), QUARANTINED + "bad_encoding"),
        (F.col("_n_parts") != len(COMMON_COLUMNS), QUARANTINED + "wrong_column_count"),
        (F.col("common_key").isNull() | (F.col("common_key") == ""), QUARANTINED + "null_key"),
        *_list_problem(F.col("feature_count"), F.col("feature_list")),
    ]
    df = df.withColumn("_problem", _status(basic, ""))
    rank = _dedup_rank("common_key", F.col("_problem") == "")
    return df.withColumn("_status", F.when(F.col("_problem") != "", F.col("_problem")).when(rank > 1, DEDUPLICATED).otherwise(USED))  # fmt: skip


def classify_skeleton(skeleton_lines, common_classified):
    """Skeleton lines with `_status`, joined with their common features' list (`_common_list`)."""
    from pyspark.sql import functions as F

    df = _split_line(skeleton_lines, SKELETON_COLUMNS)
    good_common = common_classified.where(F.col("_status") == USED).select(
        F.col("common_key"), F.col("feature_list").alias("_common_list")
    )
    df = df.join(good_common, "common_key", "left")
    labels_ok = F.col("click").isin("0", "1") & F.col("conversion").isin("0", "1")
    basic = [
        (~F.col("_valid_utf8"), QUARANTINED + "bad_encoding"),
        (F.col("_n_parts") != len(SKELETON_COLUMNS), QUARANTINED + "wrong_column_count"),
        (F.col("sample_id").isNull() | (F.col("sample_id") == ""), QUARANTINED + "null_key"),
        (~labels_ok, QUARANTINED + "bad_label"),
        *_list_problem(F.col("feature_count"), F.col("feature_list")),
        ((F.col("conversion") == "1") & (F.col("click") == "0"), QUARANTINED + "conversion_without_click"),
        (F.col("_common_list").isNull(), QUARANTINED + "unknown_common_key"),
    ]
    df = df.withColumn("_problem", _status(basic, ""))
    rank = _dedup_rank("sample_id", F.col("_problem") == "")
    return df.withColumn("_status", F.when(F.col("_problem") != "", F.col("_problem")).when(rank > 1, DEDUPLICATED).otherwise(USED))  # fmt: skip


def _field_value(entries, field_id: str):
    from pyspark.sql import functions as F

    candidates = F.filter(entries, lambda s: s["field"] == F.lit(field_id))
    best = F.array_max(F.transform(candidates, lambda s: F.struct(s["value"].alias("w"), s["id"].alias("id"))))
    return best["id"]


def samples_from_skeleton(skeleton_classified, ds: str):
    from pyspark.sql import functions as F

    used = skeleton_classified.where(F.col("_status") == USED)
    _, own = _entries(F.col("feature_list"))
    _, shared = _entries(F.col("_common_list"))
    with_entries = used.select("sample_id", "click", "conversion", F.concat(own, shared).alias("_entries"))
    return with_entries.select(
        F.col("sample_id").alias("impression_id"),
        *[_field_value(F.col("_entries"), f).alias(field_column(f)) for f in FIELDS],
        F.col("click").cast("int").alias("click"),
        F.lit(0).alias("micro"),
        F.lit(0).alias("macro"),
        F.col("conversion").cast("int").alias("conversion"),
        F.lit(ds).alias("ds"),
    )


def _quarantine(classified, source: str, ds: str):
    from pyspark.sql import functions as F

    return classified.where(F.col("_status").startswith(QUARANTINED)).select(
        F.lit(source).alias("source"),
        F.substring_index("_status", ":", -1).alias("reason"),
        F.to_json(F.struct(F.col("line"))).alias("record"),
        F.lit(JOB).alias("job"),
        F.lit(ds).alias("ds"),
    )


def _counts(classified: dict) -> dict:
    from pyspark.sql import functions as F

    tagged = [df.select(F.lit(name).alias("source"), "_status") for name, df in classified.items()]
    rows = reduce(lambda a, b: a.unionByName(b), tagged).groupBy("source", "_status").count().collect()
    counts = {name: {"input": 0, USED: 0, DEDUPLICATED: 0, "quarantined": {}} for name in classified}
    for row in rows:
        entry = counts[row["source"]]
        entry["input"] += row["count"]
        status = row["_status"]
        if status.startswith(QUARANTINED):
            entry["quarantined"][status[len(QUARANTINED) :]] = row["count"]
        else:
            entry[status] += row["count"]
    return counts


def ingest_aliccp(skeleton_lines, common_lines, ds: str):
    """Text DataFrames (one `value` column per line, e.g. spark.read.text) -> (samples, quarantine, counts)."""
    common = classify_common(common_lines)
    skeleton = classify_skeleton(skeleton_lines, common)
    samples = samples_from_skeleton(skeleton, ds)
    quarantine = _quarantine(skeleton, "sample_skeleton", ds).unionByName(_quarantine(common, "common_features", ds))
    counts = _counts({"sample_skeleton": skeleton, "common_features": common})
    return samples, quarantine, counts


def read_lines(spark, path: str):
    """Raw lines of a file (bytes kept as they are, so bad UTF-8 can be detected and quarantined)."""
    return spark.read.text(path)
