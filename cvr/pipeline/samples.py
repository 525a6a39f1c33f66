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


def _impression_flags():
    """(null_key, null_required, good) Spark conditions of an impression row."""
    from pyspark.sql import functions as F

    null_key = F.col("impression_id").isNull()
    null_required = reduce(lambda a, b: a | b, [F.col(c).isNull() for c in IMPRESSION_REQUIRED[1:]])
    return null_key, null_required, ~null_key & ~null_required


def duplicated_impression_ids(own):
    """Ids held by more than one valid impression row of the day, with `_dup` = true (small: repeats are rare).

    Only the impression id and the required fields are read, so finding them costs a narrow scan and a shuffle of
    ids, not of whole rows.
    """
    from pyspark.sql import functions as F

    _, _, good = _impression_flags()
    counted = own.where(good).groupBy("impression_id").agg(F.count(F.lit(1)).alias("_n"))
    return counted.where(F.col("_n") > 1).select("impression_id", F.lit(True).alias("_dup"))


@dataclass
class ImpressionParts:
    """The impressions input with a `_status` column, in three parts that together hold every input row once.

    * ``clean``: valid impressions of the day whose id no other valid row holds: all ``used`` (the bulk, never
      shuffled);
    * ``exceptional``: the day's invalid impressions and the valid rows sharing an id, ranked by the same rule as
      always (small; ``used`` for the first row of each repeated id, else deduplicated or quarantined);
    * ``context``: other days' impressions, ``outside`` (values nulled: only counted).
    """

    clean: object
    exceptional: object
    context: object

    def all(self):
        return self.clean.unionByName(self.exceptional).unionByName(self.context)


def split_impressions(impressions, ds: str, reuse=None) -> ImpressionParts:
    """Classify the impressions; only impressions of `ds` can be used. `reuse` as in classify_all."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    reuse = reuse or (lambda df: df)
    cols = impressions.columns
    own = impressions.where(F.col("ds") == F.lit(ds))
    null_key, null_required, good = _impression_flags()
    dup_ids = reuse(duplicated_impression_ids(own))
    # No broadcast hint: dup_ids is small when repeats are rare (Spark then broadcasts it by its size, once `reuse`
    # has materialised it), and a day with many repeats still joins, by shuffle, instead of failing to broadcast.
    clean = own.where(good).join(dup_ids, "impression_id", "left_anti").select(*cols, F.lit(USED).alias("_status"))
    # Every row of a repeated id is in `exceptional`, so ranking within it equals ranking over the whole day.
    flagged = own.join(dup_ids, "impression_id", "left").where(~good | F.col("_dup").isNotNull()).select(*cols)
    rank = F.row_number().over(Window.partitionBy(good, "impression_id").orderBy(*[F.col(c).asc_nulls_first() for c in cols]))  # fmt: skip
    status = _status_from(
        [
            (null_key, QUARANTINED + "null_key"),
            (null_required, QUARANTINED + "null_required_field"),
            (rank > 1, DEDUPLICATED),
        ],
        USED,
    )
    # Few rows: one partition, so they land in one samples file and one quarantine file, not one per shuffle slot.
    exceptional = reuse(flagged.withColumn("_status", status).coalesce(1))
    # Other days' impressions are only context for matching events: they are counted as outside and never
    # quarantined, so their values are not carried (the scan then reads only ds, and caching them is cheap).
    types = dict(impressions.dtypes)
    context = impressions.where(F.col("ds") != F.lit(ds)).select(
        *[F.lit(None).cast(types[c]).alias(c) if c != "ds" else F.col("ds") for c in cols],
        F.lit(OUTSIDE).alias("_status"),
    )
    return ImpressionParts(clean=clean, exceptional=exceptional, context=context)


def classify_impressions(impressions, ds: str):
    """Impressions with a `_status` column; only impressions of `ds` can be used."""
    return split_impressions(impressions, ds).all()


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


EVENT_SOURCES = (CLICKS, BEHAVIOURS, CONVERSIONS)


def classify_events(events: dict, lookup, ds: str, window_days: int, max_skew_seconds: int, reuse=None, partitions=None) -> dict:  # fmt: skip
    """{table: its events with a `_status` column} for the clicks, behaviours and conversions in `events`.

    The three tables are classified together, as one union tagged with `_source`, so that each step is one Spark
    stage for all of them rather than one per table. Two exchanges serve every window: rows are hash-partitioned
    by (`_source`, `_id`) for the same-id ranking, then by `impression_id` for the same-event ranking and the funnel
    (a used click on the impression), whose window keys all contain that column. Every window orders by the row's
    own table's columns (the other tables' columns are null in its rows), so each row gets the status it would get
    with its table classified alone. `reuse` and `partitions` as in classify_parts.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    reuse = reuse or (lambda df: df)
    columns = {src.name: events[src.name].columns for src in EVENT_SOURCES}
    tagged = [
        events[src.name].select("*", F.lit(src.name).alias("_source"), F.col(src.id_column).alias("_id"))
        for src in EVENT_SOURCES
    ]
    fused = _narrowed(reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True), tagged), partitions)
    source = F.col("_source")
    is_behaviour = source == BEHAVIOURS.name
    identity = [c for src in EVENT_SOURCES for c in src.identity_columns]
    order = [F.when(source == name, F.col(c)).asc_nulls_first() for name, cols in columns.items() for c in cols]

    day = F.lit(ds).cast("date")
    event_day = F.to_date("ds")
    found = F.col("_imp_day").isNotNull()
    offset = F.datediff(event_day, "_imp_day")
    in_window = found & (offset >= 0) & (offset <= window_days)
    home = F.when(in_window, F.col("_imp_day") == day).otherwise(event_day == day)
    null_key = F.col("_id").isNull() | F.col("impression_id").isNull() | F.col("ts").isNull()
    null_key = null_key | (is_behaviour & reduce(lambda a, b: a | b, [F.col(c).isNull() for c in BEHAVIOURS.identity_columns]))  # fmt: skip
    ok_pair = ((F.col("kind") == "micro") & F.col("action").isin(*MICRO_ACTIONS)) | (
        (F.col("kind") == "macro") & F.col("action").isin(*MACRO_ACTIONS)
    )
    invalid = is_behaviour & ~ok_pair
    skew = F.expr(f"INTERVAL {int(max_skew_seconds)} SECONDS")
    # Flags as plain columns: the windows and the status below then read attributes, not repeated expressions.
    flagged = fused.join(lookup, "impression_id", "left").select(
        "*",
        found.alias("_found"),
        in_window.alias("_in_window"),
        home.alias("_home"),
        null_key.alias("_null_key"),
        invalid.alias("_invalid"),
        (F.col("ts") < F.col("_imp_ts") - skew).alias("_early"),
    )
    candidate = F.col("_home") & ~F.col("_null_key") & ~F.col("_invalid")
    by_id = flagged.repartition("_source", "_id").withColumn("_candidate", candidate)
    rank_id = F.row_number().over(Window.partitionBy("_candidate", "_source", "_id").orderBy(*order))
    first_of_id = F.col("_candidate") & (F.col("_rank_id") == 1)
    by_event = by_id.withColumn("_rank_id", rank_id).repartition("impression_id").withColumn("_first", first_of_id)
    same_event = Window.partitionBy("_first", "_source", "impression_id", "ts", *identity).orderBy(*order)
    conditions = [
        (~F.col("_home"), OUTSIDE),
        (F.col("_null_key"), QUARANTINED + "null_key"),
        (F.col("_invalid"), QUARANTINED + "invalid_kind_action"),
        ((F.col("_rank_id") > 1) | (F.row_number().over(same_event) > 1), DEDUPLICATED),
        (~F.col("_found"), QUARANTINED + "unknown_impression"),
        (~F.col("_in_window"), QUARANTINED + "outside_attribution_window"),
        (F.col("_imp_valid") == 0, QUARANTINED + "impression_quarantined"),
        (F.col("_early"), QUARANTINED + "before_impression"),
    ]
    keep = list(dict.fromkeys(c for cols in columns.values() for c in cols))
    ranked = by_event.select(*keep, "_source", _status_from(conditions, USED).alias("_status"))
    # The funnel: a behaviour or conversion that would be used needs a used click on its impression (last rule).
    used = F.col("_status") == USED
    clicked = F.max((source == CLICKS.name) & used).over(Window.partitionBy("impression_id"))
    funnel = (source != CLICKS.name) & used & ~clicked
    classified = reuse(
        ranked.select(
            *keep,
            "_source",
            F.when(funnel, F.lit(QUARANTINED + "no_click")).otherwise(F.col("_status")).alias("_status"),
        )
    )
    return {name: classified.where(source == name).select(*cols, "_status") for name, cols in columns.items()}


def _narrowed(df, partitions):
    """df read in at most `partitions` tasks: a few small event files per task instead of one task per split."""
    return df.coalesce(partitions) if partitions else df


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


def input_counts(frames: dict) -> dict:
    """{table: rows} of the unclassified inputs, counted in one Spark job (the identity's independent side)."""
    from pyspark.sql import functions as F

    tagged = [df.select(F.lit(name).alias("source")) for name, df in frames.items()]
    rows = reduce(lambda a, b: a.unionByName(b), tagged).groupBy("source").count().collect()
    return {name: 0 for name in frames} | {row["source"]: int(row["count"]) for row in rows}


def counts_by_status(classified: dict, inputs: dict) -> dict:
    """{table: {input, used, deduplicated, outside, quarantined: {reason: n}}}: statuses from one Spark job over the
    classified rows, `input` from `inputs` ({table: rows}, counted independently: see check_identity)."""
    from pyspark.sql import functions as F

    tagged = [df.select(F.lit(name).alias("source"), "_status") for name, df in classified.items()]
    rows = reduce(lambda a, b: a.unionByName(b), tagged).groupBy("source", "_status").count().collect()
    counts = {name: {"input": int(inputs[name]), USED: 0, DEDUPLICATED: 0, OUTSIDE: 0, "quarantined": {}} for name in classified}  # fmt: skip
    for row in rows:
        entry = counts[row["source"]]
        if row["_status"].startswith(QUARANTINED):
            reason = row["_status"][len(QUARANTINED) :]
            entry["quarantined"][reason] = entry["quarantined"].get(reason, 0) + row["count"]
        else:
            entry[row["_status"]] += row["count"]
    return counts


def _labelled_samples(impressions, clicks, behaviours, conversions, ds: str, broadcast_events: bool):
    from pyspark.sql import functions as F

    used = F.col("_status") == USED
    one, zero = F.lit(1), F.lit(0)

    def kind_is(kind: str):
        return (F.col("kind") == kind).cast("int")

    tagged = [
        clicks.where(used).select(
            "impression_id", one.alias("_c"), zero.alias("_mi"), zero.alias("_ma"), zero.alias("_cv")
        ),  # fmt: skip
        behaviours.where(used).select(
            "impression_id",
            zero.alias("_c"),
            kind_is("micro").alias("_mi"),
            kind_is("macro").alias("_ma"),
            zero.alias("_cv"),
        ),  # fmt: skip
        conversions.where(used).select(
            "impression_id", zero.alias("_c"), zero.alias("_mi"), zero.alias("_ma"), one.alias("_cv")
        ),  # fmt: skip
    ]
    # One aggregate of all used events per impression, joined once (small: one row per engaged impression).
    per_impression = (
        reduce(lambda a, b: a.unionByName(b), tagged)
        .groupBy("impression_id")
        .agg(
            F.sum("_c").alias("_n_clicks"),
            F.sum("_mi").alias("n_micro"),
            F.sum("_ma").alias("n_macro"),
            F.sum("_cv").alias("n_conversions"),
        )
    )
    counts = ["_n_clicks", "n_micro", "n_macro", "n_conversions"]
    # Spark cannot size the aggregate before running it, and above its broadcast threshold it shuffles and sorts
    # the whole day's impressions to join them: the caller, knowing the used clicks (a bound on its rows), can say.
    events = F.broadcast(per_impression) if broadcast_events else per_impression
    joined = impressions.where(used).join(events, "impression_id", "left")
    # One select (not a chain of withColumn, each re-analysing the whole plan): counts default to 0, labels are n > 0.
    n = {c: F.coalesce(F.col(c), F.lit(0)) for c in counts}
    derived = {
        "hour": F.hour("ts"),
        "n_micro": n["n_micro"],
        "n_macro": n["n_macro"],
        "n_conversions": n["n_conversions"],
        "click": (n["_n_clicks"] > 0).cast("int"),
        "micro": (n["n_micro"] > 0).cast("int"),
        "macro": (n["n_macro"] > 0).cast("int"),
        "conversion": (n["n_conversions"] > 0).cast("int"),
        "ds": F.lit(ds),
    }
    return joined.select(*[derived.get(c["name"], F.col(c["name"])).cast(_spark_type(c["type"])).alias(c["name"]) for c in schema_columns("samples")])  # fmt: skip


def _spark_type(name: str) -> str:
    return {"long": "bigint", "int": "int", "double": "double", "float": "float"}.get(name, name)


@dataclass
class Classified:
    """Every input row with a `_status` column: the impressions in parts (see ImpressionParts), the events whole."""

    impressions: ImpressionParts
    events: dict

    def tables(self) -> dict:
        """{table: all its input rows with `_status`}."""
        return {"impressions": self.impressions.all(), **self.events}

    def without_clean(self) -> dict:
        """As tables(), less the clean impressions (all used): what is left to count after writing the samples."""
        parts = self.impressions
        return {"impressions": parts.exceptional.unionByName(parts.context), **self.events}


def classify_parts(impressions, clicks, behaviours, conversions, ds: str, window_days: int, max_skew_seconds: int, reuse=None, event_partitions=None) -> Classified:  # fmt: skip
    """Classify every input row. `reuse`: optional DataFrame -> DataFrame (e.g. persist) applied to the small frames
    used more than once (impression lookup, repeated impression ids, exceptional impressions, classified events), so
    a caller that owns their lifetime avoids recomputing them. `event_partitions`: read the event tables in at most
    this many tasks (a caller that knows their size; they are small next to the impressions)."""
    from pyspark.sql import functions as F

    for df, table in ((impressions, "impressions"), (clicks, "clicks"), (behaviours, "behaviours"), (conversions, "conversions")):  # fmt: skip
        _require_columns(df, table)
    referenced = _narrowed(reduce(lambda a, b: a.unionByName(b), [df.select("impression_id") for df in (clicks, behaviours, conversions)]), event_partitions)  # fmt: skip
    reuse = reuse or (lambda df: df)
    # Not de-duplicated: a broadcast semi-join tolerates repeated keys, and a distinct would cost a shuffle stage.
    lookup = reuse(impression_lookup(impressions, referenced.where(F.col("impression_id").isNotNull())))
    frames = {"clicks": clicks, "behaviours": behaviours, "conversions": conversions}
    events = classify_events(frames, lookup, ds, window_days, max_skew_seconds, reuse, event_partitions)
    return Classified(impressions=split_impressions(impressions, ds, reuse), events=events)


def classify_all(impressions, clicks, behaviours, conversions, ds: str, window_days: int, max_skew_seconds: int, reuse=None) -> dict:  # fmt: skip
    """{table: input rows with a `_status` column}; the three outputs below are all derived from these."""
    return classify_parts(impressions, clicks, behaviours, conversions, ds, window_days, max_skew_seconds, reuse).tables()  # fmt: skip


def samples_from(classified: dict, ds: str, broadcast_events: bool = False):
    """The samples rows (schemas/samples.yaml) of day `ds` from classified inputs. `broadcast_events`: join the
    per-impression event counts (one row per impression with a used click) by broadcast, without a shuffle."""
    c = classified
    return _labelled_samples(c["impressions"], c["clicks"], c["behaviours"], c["conversions"], ds, broadcast_events)


def quarantine_from(classified: dict, ds: str):
    """Quarantine rows (schemas/quarantine.yaml) of every refused input row."""
    return reduce(lambda a, b: a.unionByName(b), [_quarantine_rows(df, name, ds) for name, df in classified.items()])


def build_samples(impressions, clicks, behaviours, conversions, ds: str, window_days: int, max_skew_seconds: int):
    """-> (samples_df, quarantine_df, counts). See the module doc for which rows each day's build owns."""
    classified = classify_all(impressions, clicks, behaviours, conversions, ds, window_days, max_skew_seconds)
    inputs = input_counts({"impressions": impressions, "clicks": clicks, "behaviours": behaviours, "conversions": conversions})  # fmt: skip
    return samples_from(classified, ds), quarantine_from(classified, ds), counts_by_status(classified, inputs)


def check_identity(counts: dict) -> list[str]:
    """Tables whose input rows != used + deduplicated + quarantined + outside (empty when all balance).

    `input` must be counted apart from the classification (input_counts, or the input files' footers), so that
    a row lost or repeated by the classification's joins shows up here.
    """
    bad = []
    for name, c in counts.items():
        total = c[USED] + c[DEDUPLICATED] + c[OUTSIDE] + sum(c["quarantined"].values())
        if total != c["input"]:
            bad.append(f"{name}: input {c['input']} != accounted {total}")
    return bad
