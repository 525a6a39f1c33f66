"""build-samples: attribute clicks, behaviours and conversions to impressions (pure DataFrame transforms).

Building day D takes impressions of D (plus neighbouring days, only to recognise events that belong to them)
and events of days D..D+W. Every input row gets exactly one status:

* ``used``: counted in a sample of day D;
* ``deduplicated``: an exact repeat (same id, or same impression + kind + ts) of a used or quarantined row;
* ``quarantined:<reason>``: refused, written to the quarantine table with the reason;
* ``outside``: belongs to another day's build (an impression of another day, or an event attributed to one).

so that, per input table, input rows = used + deduplicated + quarantined + outside (the report checks this).

Ownership rule, so that each event is judged by exactly one day's build: an event whose impression is known and
whose day lies within [impression day, impression day + W] belongs to the impression's day; any other event
(unknown impression, null key, out of window) belongs to the day of its own partition.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

import yaml

from cvr.config import CONF_DIR

SCHEMA_DIR = CONF_DIR.parent / "schemas"
JOB = "build-samples"
USED = "used"
DEDUPLICATED = "deduplicated"
OUTSIDE = "outside"
QUARANTINED = "quarantined:"

IMPRESSION_REQUIRED = ("impression_id", "ts", "user_id", "item_id")
MICRO_ACTIONS = ("view_pictures", "read_reviews", "ask_seller")
MACRO_ACTIONS = ("cart", "favourite")


class SamplesInputError(ValueError):
    """An input table lacks a column build-samples needs; the message names the table and column."""


@dataclass(frozen=True)
class EventSource:
    name: str  # table name, also the quarantine 'source'
    id_column: str
    identity_columns: tuple[str, ...]  # an exact repeat shares impression_id, these columns and ts


CLICKS = EventSource("clicks", "click_id", ())
BEHAVIOURS = EventSource("behaviours", "behaviour_id", ("kind", "action"))
CONVERSIONS = EventSource("conversions", "conversion_id", ())


def schema_columns(table: str) -> list[dict]:
    """The column list of schemas/<table>.yaml."""
    return yaml.safe_load((SCHEMA_DIR / f"{table}.yaml").read_text())["columns"]


def _require_columns(df, table: str) -> None:
    missing = [c["name"] for c in schema_columns(table) if c["name"] not in df.columns]
    if missing:
        raise SamplesInputError(f"build-samples input '{table}': missing column(s) {missing} (has {sorted(df.columns)})")  # fmt: skip


def _status_from(conditions: list[tuple], default: str):
    """First matching (condition, status) wins; conditions are Spark boolean columns."""
    from pyspark.sql import functions as F

    expr = None
    for cond, status in conditions:
        expr = F.when(cond, F.lit(status)) if expr is None else expr.when(cond, F.lit(status))
    return expr.otherwise(F.lit(default))


def classify_impressions(impressions, ds: str):
    """Impressions with a `_status` column; only impressions of `ds` can be used."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    cols = impressions.columns
    own = impressions.where(F.col("ds") == F.lit(ds))
    null_key = F.col("impression_id").isNull()
    null_required = reduce(lambda a, b: a | b, [F.col(c).isNull() for c in IMPRESSION_REQUIRED[1:]])
    good = ~null_key & ~null_required
    rank = F.row_number().over(Window.partitionBy(good, "impression_id").orderBy(*[F.col(c).asc_nulls_first() for c in cols]))  # fmt: skip
    status = _status_from(
        [
            (null_key, QUARANTINED + "null_key"),
            (null_required, QUARANTINED + "null_required_field"),
            (rank > 1, DEDUPLICATED),
        ],
        USED,
    )
    # Other days' impressions are only context for matching events: they are counted as outside and never
    # quarantined, so their values are not carried (the scan then reads only ds, and caching them is cheap).
    types = dict(impressions.dtypes)
    context = impressions.where(F.col("ds") != F.lit(ds)).select(
        *[F.lit(None).cast(types[c]).alias(c) if c != "ds" else F.col("ds") for c in cols],
        F.lit(OUTSIDE).alias("_status"),
    )
    return own.withColumn("_status", status).unionByName(context)


def impression_lookup(impressions, referenced_ids=None):
    """One row per known impression id (any day): its ts, day and whether it has all required fields.

    `referenced_ids` (a DataFrame of impression_id): keep only those, so the aggregation stays event-sized.
    """
    from pyspark.sql import functions as F

    valid = reduce(lambda a, b: a & b, [F.col(c).isNotNull() for c in IMPRESSION_REQUIRED])
    known = impressions.where(F.col("impression_id").isNotNull()).select("ds", *IMPRESSION_REQUIRED)
    if referenced_ids is not None:
        known = known.join(F.broadcast(referenced_ids), "impression_id", "left_semi")
    return known.groupBy("impression_id").agg(
        F.min("ts").alias("_imp_ts"),
        F.min(F.to_date("ds")).alias("_imp_day"),
        F.max(valid.cast("int")).alias("_imp_valid"),
    )


def classify_events(
    events, source: EventSource, lookup, ds: str, window_days: int, max_skew_seconds: int, clicked=None
):
    """Events with a `_status` column. `clicked` (impression ids with a used click) enforces the funnel."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    cols = events.columns
    day = F.lit(ds).cast("date")
    df = events.withColumn("_event_day", F.to_date("ds")).join(lookup, "impression_id", "left")
    if clicked is not None:
        df = df.join(clicked, "impression_id", "left")
    found = F.col("_imp_day").isNotNull()
    offset = F.datediff("_event_day", "_imp_day")
    in_window = found & (offset >= 0) & (offset <= window_days)
    home = F.when(in_window, F.col("_imp_day") == day).otherwise(F.col("_event_day") == day)

    key_columns = [source.id_column, "impression_id", "ts", *source.identity_columns]
    null_key = reduce(lambda a, b: a | b, [F.col(c).isNull() for c in key_columns])
    invalid = F.lit(False)
    if source is BEHAVIOURS:
        ok_pair = ((F.col("kind") == "micro") & F.col("action").isin(*MICRO_ACTIONS)) | (
            (F.col("kind") == "macro") & F.col("action").isin(*MACRO_ACTIONS)
        )
        invalid = ~ok_pair
    candidate = home & ~null_key & ~invalid
    order = [F.col(c).asc_nulls_first() for c in cols]
    df = df.withColumn("_rank_id", F.row_number().over(Window.partitionBy(candidate, source.id_column).orderBy(*order)))
    first_of_id = candidate & (F.col("_rank_id") == 1)
    same_event = Window.partitionBy(first_of_id, "impression_id", "ts", *source.identity_columns).orderBy(*order)
    df = df.withColumn("_rank_event", F.row_number().over(same_event))
    skew = F.expr(f"INTERVAL {int(max_skew_seconds)} SECONDS")
    conditions = [
        (~home, OUTSIDE),
        (null_key, QUARANTINED + "null_key"),
        (invalid, QUARANTINED + "invalid_kind_action"),
        ((F.col("_rank_id") > 1) | (F.col("_rank_event") > 1), DEDUPLICATED),
        (~found, QUARANTINED + "unknown_impression"),
        (~in_window, QUARANTINED + "outside_attribution_window"),
        (F.col("_imp_valid") == 0, QUARANTINED + "impression_quarantined"),
        (F.col("ts") < F.col("_imp_ts") - skew, QUARANTINED + "before_impression"),
    ]
    if clicked is not None:
        conditions.append((F.col("_clicked").isNull(), QUARANTINED + "no_click"))
    return df.withColumn("_status", _status_from(conditions, USED)).select(*cols, "_status")


def _quarantine_rows(classified, source: str, ds: str):
    from pyspark.sql import functions as F

    record_cols = [c for c in classified.columns if c != "_status"]
    return classified.where(F.col("_status").startswith(QUARANTINED)).select(
        F.lit(source).alias("source"),
        F.substring_index(F.col("_status"), ":", -1).alias("reason"),
        F.to_json(F.struct(*record_cols)).alias("record"),
        F.lit(JOB).alias("job"),
        F.lit(ds).alias("ds"),
    )


def counts_by_status(classified: dict) -> dict:
    """{table: {input, used, deduplicated, outside, quarantined: {reason: n}}} from one Spark job."""
    from pyspark.sql import functions as F

    tagged = [df.select(F.lit(name).alias("source"), "_status") for name, df in classified.items()]
    rows = reduce(lambda a, b: a.unionByName(b), tagged).groupBy("source", "_status").count().collect()
    counts = {name: {"input": 0, USED: 0, DEDUPLICATED: 0, OUTSIDE: 0, "quarantined": {}} for name in classified}
    for row in rows:
        entry = counts[row["source"]]
        entry["input"] += row["count"]
        if row["_status"].startswith(QUARANTINED):
            reason = row["_status"][len(QUARANTINED) :]
            entry["quarantined"][reason] = entry["quarantined"].get(reason, 0) + row["count"]
        else:
            entry[row["_status"]] += row["count"]
    return counts


def _labelled_samples(impressions, clicks, behaviours, conversions, ds: str):
    from pyspark.sql import functions as F

    used = F.col("_status") == USED
    n_clicks = clicks.where(used).groupBy("impression_id").agg(F.count("*").alias("_n_clicks"))
    n_behaviours = (
        behaviours.where(used)
        .groupBy("impression_id")
        .agg(
            F.sum((F.col("kind") == "micro").cast("int")).alias("n_micro"),
            F.sum((F.col("kind") == "macro").cast("int")).alias("n_macro"),
        )
    )
    n_conversions = conversions.where(used).groupBy("impression_id").agg(F.count("*").alias("n_conversions"))
    joined = (
        impressions.where(used)
        .join(n_clicks, "impression_id", "left")
        .join(n_behaviours, "impression_id", "left")
        .join(n_conversions, "impression_id", "left")
        .withColumn("hour", F.hour("ts"))
        .fillna(0, subset=["_n_clicks", "n_micro", "n_macro", "n_conversions"])
        .withColumn("click", (F.col("_n_clicks") > 0).cast("int"))
        .withColumn("micro", (F.col("n_micro") > 0).cast("int"))
        .withColumn("macro", (F.col("n_macro") > 0).cast("int"))
        .withColumn("conversion", (F.col("n_conversions") > 0).cast("int"))
        .withColumn("ds", F.lit(ds))
    )
    return joined.select(*[F.col(c["name"]).cast(_spark_type(c["type"])).alias(c["name"]) for c in schema_columns("samples")])  # fmt: skip


def _spark_type(name: str) -> str:
    return {"long": "bigint", "int": "int", "double": "double", "float": "float"}.get(name, name)


def classify_all(impressions, clicks, behaviours, conversions, ds: str, window_days: int, max_skew_seconds: int, reuse=None) -> dict:  # fmt: skip
    """{table: input rows with a `_status` column}; the three outputs below are all derived from these.

    `reuse`: optional DataFrame -> DataFrame (e.g. persist) applied to the intermediate frames used more than
    once (the impression lookup, the clicked impressions), so a caller that owns their lifetime avoids recomputing.
    """
    from pyspark.sql import functions as F

    for df, table in ((impressions, "impressions"), (clicks, "clicks"), (behaviours, "behaviours"), (conversions, "conversions")):  # fmt: skip
        _require_columns(df, table)
    referenced = reduce(lambda a, b: a.unionByName(b), [df.select("impression_id") for df in (clicks, behaviours, conversions)])  # fmt: skip
    reuse = reuse or (lambda df: df)
    lookup = reuse(impression_lookup(impressions, referenced.where(F.col("impression_id").isNotNull()).distinct()))
    args = (lookup, ds, window_days, max_skew_seconds)
    clicks_c = reuse(classify_events(clicks, CLICKS, *args))
    clicked = clicks_c.where(clicks_c["_status"] == USED).select("impression_id").distinct().withColumn("_clicked", _one())  # fmt: skip
    clicked = reuse(clicked)
    return {
        "impressions": classify_impressions(impressions, ds),
        "clicks": clicks_c,
        "behaviours": classify_events(behaviours, BEHAVIOURS, *args, clicked=clicked),
        "conversions": classify_events(conversions, CONVERSIONS, *args, clicked=clicked),
    }


def samples_from(classified: dict, ds: str):
    """The samples rows (schemas/samples.yaml) of day `ds` from classified inputs."""
    c = classified
    return _labelled_samples(c["impressions"], c["clicks"], c["behaviours"], c["conversions"], ds)


def quarantine_from(classified: dict, ds: str):
    """Quarantine rows (schemas/quarantine.yaml) of every refused input row."""
    return reduce(lambda a, b: a.unionByName(b), [_quarantine_rows(df, name, ds) for name, df in classified.items()])


def build_samples(impressions, clicks, behaviours, conversions, ds: str, window_days: int, max_skew_seconds: int):
    """-> (samples_df, quarantine_df, counts). See the module doc for which rows each day's build owns."""
    classified = classify_all(impressions, clicks, behaviours, conversions, ds, window_days, max_skew_seconds)
    return samples_from(classified, ds), quarantine_from(classified, ds), counts_by_status(classified)


def _one():
    from pyspark.sql import functions as F

    return F.lit(1)


def check_identity(counts: dict) -> list[str]:
    """Tables whose input rows != used + deduplicated + quarantined + outside (empty when all balance)."""
    bad = []
    for name, c in counts.items():
        total = c[USED] + c[DEDUPLICATED] + c[OUTSIDE] + sum(c["quarantined"].values())
        if total != c["input"]:
            bad.append(f"{name}: input {c['input']} != accounted {total}")
    return bad
