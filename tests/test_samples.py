"""build-samples on tiny hand-written event tables: exact rows, quarantine reasons, row accounting."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from cvr.pipeline.samples import SamplesInputError, build_samples, check_identity

D, D1, D2 = "2026-01-01", "2026-01-02", "2026-01-03"
IMP_SCHEMA = (
    "impression_id string, ts timestamp, user_id string, user_segment string, user_city string, item_id string, "
    "category_id string, shop_id string, brand_id string, price double, position int, device string, ds string"
)
CLICK_SCHEMA = "click_id string, impression_id string, ts timestamp, ds string"
BEHAVIOUR_SCHEMA = "behaviour_id string, impression_id string, ts timestamp, kind string, action string, ds string"
CONVERSION_SCHEMA = "conversion_id string, impression_id string, ts timestamp, amount double, ds string"


def t(day: str, hhmm: str) -> datetime:
    return datetime.fromisoformat(f"{day}T{hhmm}:00")


def imp(iid, ts, user="u1", ds=D, item="a"):
    return (iid, ts, user, "s1", "c1", item, "cat1", "shop1", "b1", 9.5, 1, "ios", ds)


IMPRESSIONS = [
    imp("i1", t(D, "10:00")),
    imp("i2", t(D, "11:00")),
    imp("i3", t(D, "12:00")),
    imp("i4", t(D, "13:00")),
    imp("i4", t(D, "13:00")),  # exact duplicate impression
    imp("i5", t(D, "14:00"), user=None),  # null required field
    imp("i6", t(D, "09:00")),
    imp("i7", t(D1, "09:00"), ds=D1),  # next day's impression: only context for this build
]
CLICKS = [
    ("c1", "i1", t(D, "10:01"), D),
    ("c1", "i1", t(D, "10:01"), D),  # same id
    ("c1b", "i1", t(D, "10:01"), D),  # same impression + ts, other id
    ("c2", "i2", t(D, "11:05"), D),
    ("c5", "i5", t(D, "14:01"), D),  # its impression is quarantined
    ("c7", "i6", t(D, "08:00"), D),  # an hour before its impression (skew allows 5 minutes)
    ("c9", "ghost", t(D, "10:00"), D),  # no such impression
    ("c10", None, t(D, "10:00"), D),  # null key
    ("c8", "i7", t(D1, "09:01"), D1),  # belongs to the build of D1
]
BEHAVIOURS = [
    ("b1", "i1", t(D, "10:02"), "micro", "view_pictures", D),
    ("b2", "i1", t(D, "10:03"), "macro", "cart", D),
    ("b2", "i1", t(D, "10:03"), "macro", "cart", D),  # duplicate
    ("b3", "i3", t(D, "12:01"), "micro", "read_reviews", D),  # no click on i3
    ("b4", "i1", t(D, "10:04"), "micro", "cart", D),  # action is not a micro behaviour
]
CONVERSIONS = [
    ("v1", "i1", t(D1, "20:00"), 30.0, D1),  # last day of the window (W = 1): counted
    ("v2", "i2", t(D2, "08:00"), 12.0, D2),  # a day later: outside the window, not this build's
    ("v3", "i3", t(D, "12:30"), 5.0, D),  # conversion without a click
]


def frames(spark, impressions=IMPRESSIONS, clicks=CLICKS, behaviours=BEHAVIOURS, conversions=CONVERSIONS):
    return (
        spark.createDataFrame(impressions, IMP_SCHEMA),
        spark.createDataFrame(clicks, CLICK_SCHEMA),
        spark.createDataFrame(behaviours, BEHAVIOUR_SCHEMA),
        spark.createDataFrame(conversions, CONVERSION_SCHEMA),
    )


def labels(samples_df) -> dict:
    cols = ["click", "micro", "macro", "conversion", "n_micro", "n_macro", "n_conversions", "hour"]
    return {r["impression_id"]: tuple(r[c] for c in cols) for r in samples_df.collect()}


@pytest.fixture(scope="module")
def built(spark):
    samples, quarantine, counts = build_samples(*frames(spark), ds=D, window_days=1, max_skew_seconds=300)
    return samples, quarantine.collect(), counts


def test_exact_sample_rows(built):
    samples, _, _ = built
    assert labels(samples) == {
        "i1": (1, 1, 1, 1, 1, 1, 1, 10),
        "i2": (1, 0, 0, 0, 0, 0, 0, 11),
        "i3": (0, 0, 0, 0, 0, 0, 0, 12),
        "i4": (0, 0, 0, 0, 0, 0, 0, 13),
        "i6": (0, 0, 0, 0, 0, 0, 0, 9),
    }
    assert samples.columns[:3] == ["impression_id", "ts", "user_id"] and samples.columns[-1] == "ds"
    assert {r["ds"] for r in samples.collect()} == {D}


def test_quarantine_reasons(built):
    _, quarantine, _ = built
    got = sorted((r["source"], r["reason"], json.loads(r["record"]).get("click_id") or json.loads(r["record"]).get("behaviour_id") or json.loads(r["record"]).get("conversion_id") or json.loads(r["record"])["impression_id"]) for r in quarantine)  # fmt: skip
    assert got == [
        ("behaviours", "invalid_kind_action", "b4"),
        ("behaviours", "no_click", "b3"),
        ("clicks", "before_impression", "c7"),
        ("clicks", "impression_quarantined", "c5"),
        ("clicks", "null_key", "c10"),
        ("clicks", "unknown_impression", "c9"),
        ("conversions", "no_click", "v3"),
        ("impressions", "null_required_field", "i5"),
    ]
    assert {r["job"] for r in quarantine} == {"build-samples"} and {r["ds"] for r in quarantine} == {D}


def test_counts_balance_per_table(built):
    _, _, counts = built
    assert check_identity(counts) == []
    assert counts["impressions"] == {"input": 8, "used": 5, "deduplicated": 1, "outside": 1, "quarantined": {"null_required_field": 1}}  # fmt: skip
    assert counts["clicks"] == {
        "input": 9,
        "used": 2,
        "deduplicated": 2,
        "outside": 1,
        "quarantined": {"impression_quarantined": 1, "before_impression": 1, "unknown_impression": 1, "null_key": 1},
    }
    assert counts["behaviours"]["deduplicated"] == 1 and counts["behaviours"]["used"] == 2
    assert counts["conversions"] == {"input": 3, "used": 1, "deduplicated": 0, "outside": 1, "quarantined": {"no_click": 1}}  # fmt: skip


def test_identity_check_detects_imbalance():
    counts = {"clicks": {"input": 3, "used": 1, "deduplicated": 0, "outside": 0, "quarantined": {"null_key": 1}}}
    assert check_identity(counts) == ["clicks: input 3 != accounted 2"]


def test_late_conversion_picked_up_on_rebuild(spark):
    early = [c for c in CONVERSIONS if c[0] != "v1"]
    first, _, _ = build_samples(*frames(spark, conversions=early), ds=D, window_days=1, max_skew_seconds=300)
    assert labels(first)["i1"][3] == 0
    late = [*early, ("v1", "i1", t(D1, "20:00"), 30.0, D1)]
    again, _, _ = build_samples(*frames(spark, conversions=late), ds=D, window_days=1, max_skew_seconds=300)
    assert labels(again)["i1"][3] == 1


def test_window_zero_excludes_next_day_conversion(spark):
    samples, _, counts = build_samples(*frames(spark), ds=D, window_days=0, max_skew_seconds=300)
    assert labels(samples)["i1"][3] == 0
    assert counts["conversions"]["outside"] == 2


def test_out_of_window_event_is_quarantined_by_its_own_day(spark):
    # Building D2 with W = 1: v2 (impression of D, conversion on D2) is D2's to judge, and it is too late.
    _, quarantine, counts = build_samples(*frames(spark), ds=D2, window_days=1, max_skew_seconds=300)
    reasons = {(r["source"], r["reason"]) for r in quarantine.collect()}
    assert reasons == {("conversions", "outside_attribution_window")}
    assert check_identity(counts) == []


def test_missing_column_is_a_clear_error(spark):
    imps, clicks, behaviours, conversions = frames(spark)
    with pytest.raises(SamplesInputError, match=r"'clicks': missing column\(s\) \['ts'\]"):
        build_samples(imps, clicks.drop("ts"), behaviours, conversions, ds=D, window_days=1, max_skew_seconds=300)


# --- the stage: real tables under a temporary root -------------------------------------------------------------


def write_events(spark, root, impressions=IMPRESSIONS, clicks=CLICKS, behaviours=BEHAVIOURS, conversions=CONVERSIONS):
    from cvr.storage import write_partitions

    for name, df in zip(("impressions", "clicks", "behaviours", "conversions"), frames(spark, impressions, clicks, behaviours, conversions), strict=True):  # fmt: skip
        write_partitions(df, str(root), name)


def stage_config(root, fmt="parquet"):
    from cvr.config import load_config

    return load_config(root=str(root), overrides={"storage": {"format": fmt}})


def read_sorted(spark, root, name, ds=None):
    from cvr.storage import read_table

    return sorted(tuple(r) for r in read_table(spark, str(root), name, ds=ds).collect())


@pytest.fixture(scope="module")
def staged(spark, tmp_path_factory):
    """Build D before v1 (a conversion on D1, within the window) arrives, then again after it arrived."""
    from cvr.pipeline.stages import run_build_samples
    from cvr.storage import read_table, write_partitions

    root = tmp_path_factory.mktemp("events")
    write_events(spark, root, conversions=[c for c in CONVERSIONS if c[0] != "v1"])
    cfg = stage_config(root)
    run_build_samples(spark, cfg, D)
    first = labels(read_table(spark, str(root), "samples", ds=D))
    late = spark.createDataFrame([("v1", "i1", t(D1, "20:00"), 30.0, D1)], CONVERSION_SCHEMA)
    write_partitions(late, str(root), "conversions")
    report = run_build_samples(spark, cfg, D)
    return {"root": root, "cfg": cfg, "first": first, "report": report, "rows": read_sorted(spark, root, "samples")}


def test_stage_rebuild_picks_up_late_conversion(spark, staged):
    from cvr.storage import read_table

    assert staged["first"]["i1"][3] == 0
    assert labels(read_table(spark, str(staged["root"]), "samples", ds=D))["i1"] == (1, 1, 1, 1, 1, 1, 1, 10)
    assert staged["report"]["counts"]["conversions"]["used"] == 1


def test_stage_report_and_quarantine_table(spark, staged):
    from cvr.pipeline.stages import report_path
    from cvr.storage import read_table

    saved = json.loads(Path(report_path(staged["cfg"], "build-samples", D)).read_text())
    assert saved["counts"] == staged["report"]["counts"] and check_identity(saved["counts"]) == []
    assert saved["partitions_read"]["conversions"] == [D, D1] and saved["output"]["rows"] == 5
    quarantine = read_table(spark, str(staged["root"]), "quarantine_build_samples", ds=D).collect()
    assert sorted(r["reason"] for r in quarantine) == sorted(["invalid_kind_action", "no_click", "before_impression", "impression_quarantined", "null_key", "unknown_impression", "no_click", "null_required_field"])  # fmt: skip


def test_stage_without_the_broadcast_writes_the_same_samples(spark, staged, tmp_path):
    from cvr.config import load_config
    from cvr.pipeline.stages import run_build_samples

    write_events(spark, tmp_path)
    cfg = load_config(root=str(tmp_path), overrides={"samples": {"broadcast_clicked_rows": 0}})
    run_build_samples(spark, cfg, D)
    assert read_sorted(spark, tmp_path, "samples") == staged["rows"]


def test_cli_rerun_is_idempotent(spark, staged, capsys):
    from cvr.cli.main import main

    root = str(staged["root"])
    assert main(["build-samples", "--root", root, "--ds", D]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == staged["report"]["counts"]
    assert read_sorted(spark, staged["root"], "samples") == staged["rows"]
    assert main(["build-samples", "--root", root, "--ds", "2026-13-01"]) == 2


def test_stage_rerun_without_usable_impressions_removes_the_days_samples(spark, tmp_path):
    from cvr.pipeline.stages import run_build_samples
    from cvr.storage import list_partitions, table_exists, write_partitions

    write_events(spark, tmp_path)
    cfg = stage_config(tmp_path)
    run_build_samples(spark, cfg, D)
    assert D in list_partitions(str(tmp_path), "samples")
    malformed = [imp(f"i{k}", t(D, "10:00"), user=None) for k in range(1, 6)]
    write_partitions(spark.createDataFrame(malformed, IMP_SCHEMA), str(tmp_path), "impressions")
    report = run_build_samples(spark, cfg, D)
    assert report["output"]["deleted_partitions"] == [D] and not table_exists(str(tmp_path), "samples")
    assert report["counts"]["impressions"]["used"] == 0 and check_identity(report["counts"]) == []


def test_hash_features_of_a_day_built_empty_removes_its_stale_features(spark, tmp_path):
    from cvr.pipeline.stages import StageInputError, run_build_samples, run_hash_features
    from cvr.storage import table_exists, write_partitions

    write_events(spark, tmp_path)
    cfg = stage_config(tmp_path)
    run_build_samples(spark, cfg, D)
    assert run_hash_features(spark, cfg, D)["output"]["rows"] > 0
    malformed = [imp(f"i{k}", t(D, "10:00"), user=None) for k in range(1, 6)]
    write_partitions(spark.createDataFrame(malformed, IMP_SCHEMA), str(tmp_path), "impressions")
    run_build_samples(spark, cfg, D)  # every impression quarantined: the day has no samples now
    report = run_hash_features(spark, cfg, D)
    assert report["output"]["rows"] == 0 and report["output"]["deleted_partitions"] == [D]
    assert not table_exists(str(tmp_path), "features")  # its only day is gone
    assert run_hash_features(spark, cfg, D)["output"]["deleted_partitions"] == []  # a re-run: nothing left to remove
    with pytest.raises(StageInputError, match=r"table 'samples' has no partition ds=2026-01-02"):
        run_hash_features(spark, cfg, D1)  # never built: missing, not empty


def test_stage_refuses_bad_input_schema_and_missing_day(spark, tmp_path):
    from cvr.pipeline.stages import StageInputError, run_build_samples
    from cvr.storage import SchemaError, write_partitions

    cfg = stage_config(tmp_path)
    with pytest.raises(StageInputError, match=r"'impressions' has no partition ds=2026-01-01"):
        run_build_samples(spark, cfg, D)
    write_partitions(spark.createDataFrame(IMPRESSIONS[:1], IMP_SCHEMA), str(tmp_path), "impressions")
    bad_clicks = spark.createDataFrame([("c1", "i1", "not a time", D)], "click_id string, impression_id string, ts string, ds string")  # fmt: skip
    write_partitions(bad_clicks, str(tmp_path), "clicks")
    with pytest.raises(SchemaError, match=r"table 'clicks': column 'ts'"):
        run_build_samples(spark, cfg, D)


@pytest.mark.parametrize("fmt", ["parquet", "delta"])
def test_clean_rerun_removes_the_earlier_quarantine_rows_of_that_day(spark, tmp_path, fmt):
    from cvr.pipeline.stages import run_build_samples
    from cvr.storage import delete_partitions, list_partitions, table_exists, write_partitions

    write_events(spark, tmp_path)
    cfg = stage_config(tmp_path, fmt)
    run_build_samples(spark, cfg, D)
    assert D in list_partitions(str(tmp_path), "quarantine_build_samples")
    for name in ("impressions", "clicks", "behaviours", "conversions"):  # the logs are corrected upstream
        delete_partitions(str(tmp_path), name, [D, D1])
    write_partitions(spark.createDataFrame(IMPRESSIONS[:1], IMP_SCHEMA), str(tmp_path), "impressions")
    report = run_build_samples(spark, cfg, D)
    assert report["quarantine"]["deleted_partitions"] == [D]
    left = (
        list_partitions(str(tmp_path), "quarantine_build_samples")
        if table_exists(str(tmp_path), "quarantine_build_samples")
        else []
    )
    assert D not in left
    assert [r["impression_id"] for r in read_table_rows(spark, tmp_path, "samples", D)] == ["i1"]


def read_table_rows(spark, root, name, ds):
    from cvr.storage import read_table

    return read_table(spark, str(root), name, ds=ds).collect()


def test_stage_publishes_nothing_when_the_accounting_does_not_balance(spark, tmp_path, monkeypatch):
    """Input rows come from the input files' footers, used impressions from the staged sample rows: a mismatch
    (here: one input impression too many) stops the day before the samples or the quarantine are published."""
    from cvr.pipeline import stages
    from cvr.storage import count_rows, table_exists

    write_events(spark, tmp_path)
    off_by_one = lambda root, name, ds=None: count_rows(root, name, ds) + (name == "impressions")  # noqa: E731
    monkeypatch.setattr(stages, "count_rows", off_by_one)
    with pytest.raises(stages.UnbalancedCountsError, match=r"impressions: input 9 != accounted 8"):
        stages.run_build_samples(spark, stage_config(tmp_path), D)
    assert not table_exists(str(tmp_path), "samples") and not table_exists(str(tmp_path), "quarantine_build_samples")


def test_small_frames_join_the_days_impressions_by_broadcast(spark, tmp_path):
    """The bulk of a day is never shuffled to join a small frame: the repeated ids are materialised before the
    joins are planned, and the per-impression event counts are broadcast. Spark's broadcast threshold is set
    between the repeated ids' real size and its estimate from the input, where it used to plan a sort-merge join."""
    from cvr.pipeline.samples import classify_parts, samples_from
    from cvr.pipeline.stages import eagerly_persisted
    from cvr.storage import read_table, sql_conf

    many = [imp(f"n{k}", t(D, "10:00")) for k in range(3000)]
    write_events(spark, tmp_path, impressions=IMPRESSIONS + many)
    imps, clicks, behaviours, conversions = (read_table(spark, str(tmp_path), name) for name in ("impressions", "clicks", "behaviours", "conversions"))  # fmt: skip
    with eagerly_persisted() as keep, sql_conf(spark, {"spark.sql.autoBroadcastJoinThreshold": "1000"}):
        parts = classify_parts(imps, clicks, behaviours, conversions, ds=D, window_days=1, max_skew_seconds=300, reuse=keep)  # fmt: skip
        samples_df = samples_from(parts.tables(), D, broadcast_events=True)
        plan = samples_df._jdf.queryExecution().executedPlan().toString()
        rows = labels(samples_df)
    assert "SortMergeJoin" not in plan and plan.count("BroadcastHashJoin") >= 3
    assert len(rows) == 5 + len(many) and rows["i1"] == (1, 1, 1, 1, 1, 1, 1, 10) and rows["i4"][0] == 0
