"""The event simulator: pure generator checks (rates, funnel, truth) and the Spark stage on ~20k impressions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from cvr.config import ConfigError, SimulateConfig, load_config
from cvr.pipeline.simulate import (
    REC_BEHAVIOUR,
    REC_CLICK,
    REC_CONVERSION,
    REC_IMPRESSION,
    generate_task,
    resolve_params,
    simulate_events,
)
from cvr.pipeline.simulate_stage import run_simulate
from cvr.storage import list_partitions, read_table

MALFORMED_RATE = 0.05
DAYS = ["2026-03-01", "2026-03-02"]


def _task_frame(preset: str, n: int, day: int = 0, **overrides):
    params = resolve_params(SimulateConfig(preset=preset, impressions_per_day=n, partitions=1, **overrides))
    return params, generate_task(params, day, 0).to_pandas()


def _funnel(table):
    """Per impression row of one task: clean impression features/truth plus click and purchase flags."""
    impressions = table[(table.rec == REC_IMPRESSION) & ~table.duplicate].set_index("row")
    impressions["click"] = impressions.index.isin(table[table.rec == REC_CLICK].row)
    impressions["buy"] = impressions.index.isin(table[table.rec == REC_CONVERSION].row)
    behaviours = table[table.rec == REC_BEHAVIOUR]
    impressions["macro"] = impressions.index.isin(behaviours[behaviours.action >= 3].row)
    impressions["micro"] = impressions.index.isin(behaviours[behaviours.action < 3].row)
    return impressions


@pytest.mark.parametrize(
    ("preset", "ctr", "cvr"), [("default", (0.04, 0.05), (0.015, 0.025)), ("sparse", (0.034, 0.044), (0.003, 0.007))]
)
def test_preset_rates_and_truth_calibration(preset, ctr, cvr):
    params, table = _task_frame(preset, 200_000)
    imp = _funnel(table)
    clicked = imp[imp.click]
    observed_ctr, observed_cvr = imp.click.mean(), clicked.buy.mean()
    assert ctr[0] < observed_ctr < ctr[1] and cvr[0] < observed_cvr < cvr[1], (observed_ctr, observed_cvr)
    # The truth is the sampler's own probability: its mean matches the observed rate.
    assert imp.p_click.mean() == pytest.approx(observed_ctr, rel=0.03)
    assert clicked.p_cvr.mean() == pytest.approx(observed_cvr, rel=0.15)
    assert clicked.p_macro.mean() == pytest.approx(clicked.macro.mean(), rel=0.1)
    assert clicked.p_micro.mean() == pytest.approx(clicked.micro.mean(), rel=0.05)
    for column in ("p_click", "p_micro", "p_macro", "p_cvr", "p_ctcvr"):
        assert ((imp[column] > 0) & (imp[column] < 1)).all(), column
    np.testing.assert_allclose(imp.p_ctcvr, imp.p_click * imp.p_cvr, rtol=1e-12)


def test_funnel_steps_depend_on_earlier_steps():
    _, table = _task_frame("default", 300_000)
    clicked = _funnel(table)
    clicked = clicked[clicked.click]
    buy_given_macro = clicked[clicked.macro].buy.mean()
    buy_without_macro = clicked[~clicked.macro].buy.mean()
    assert buy_given_macro > 8 * buy_without_macro > 0  # likelier with a macro behaviour, possible without
    assert clicked[clicked.micro].macro.mean() > 2 * clicked[~clicked.micro].macro.mean()


def test_only_clicked_impressions_have_post_click_events():
    _, table = _task_frame("default", 50_000, malformed_rate=0.0)
    clicked_rows = set(table[table.rec == REC_CLICK].row)
    later = table[table.rec.isin([REC_BEHAVIOUR, REC_CONVERSION])]
    assert len(later) > 100 and set(later.row) <= clicked_rows
    impression_ts = table[table.rec == REC_IMPRESSION].set_index("row").ts_us
    assert (later.ts_us.to_numpy() > impression_ts.loc[later.row].to_numpy()).all()


def test_purchase_is_learnable_from_features():
    """A plain logistic regression on raw ids/price beats random clearly on another day (oracle is higher still)."""
    from scipy.sparse import csr_matrix, hstack
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import OneHotEncoder

    params = resolve_params(SimulateConfig(impressions_per_day=300_000, partitions=1))
    train, test = (_funnel(generate_task(params, day, 0).to_pandas()) for day in (0, 1))
    train, test = train[train.click], test[test.click]
    columns = ["category", "segment", "device", "item", "user"]
    encoder = OneHotEncoder(handle_unknown="ignore").fit(train[columns])

    def features(frame):
        return hstack([encoder.transform(frame[columns]), csr_matrix(np.log(frame[["price"]].to_numpy()))]).tocsr()

    model = LogisticRegression(C=0.5, max_iter=500).fit(features(train), train.buy)
    learned_auc = roc_auc_score(test.buy, model.predict_proba(features(test))[:, 1])
    oracle_auc = roc_auc_score(test.buy, test.p_cvr)
    assert learned_auc > 0.6 and oracle_auc > learned_auc + 0.05, (learned_auc, oracle_auc)


def test_repeated_exposures_give_identical_user_item_pairs():
    _, table = _task_frame("default", 50_000)
    imp = _funnel(table)
    assert imp.duplicated(["user", "item"]).mean() > 0.05
    assert imp.duplicated(["user", "item", "position", "device"]).sum() > 100


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match=r"simulate.target_cvr: expected a rate in \(0, 1\), got 1.5"):
        resolve_params(SimulateConfig(target_cvr=1.5), calibrate=False)
    with pytest.raises(ConfigError, match=r"simulate.start_date: expected YYYY-MM-DD, got 'tomorrow'"):
        resolve_params(SimulateConfig(start_date="tomorrow"), calibrate=False)
    with pytest.raises(ConfigError, match=r"simulate.preset"):
        resolve_params(SimulateConfig(preset="dense"), calibrate=False)


# ------------------------------------------------------------------------------------------- Spark stage


def test_generation_is_deterministic_for_a_seed(spark):
    params = resolve_params(SimulateConfig(days=2, impressions_per_day=2000, partitions=2, seed=11))
    first = sorted(tuple(r) for r in simulate_events(spark, params).collect())
    assert first == sorted(tuple(r) for r in simulate_events(spark, params).collect())
    assert len(first) > 4000
    other_seed = resolve_params(SimulateConfig(days=2, impressions_per_day=2000, partitions=2, seed=12))
    assert not generate_task(params, 1, 1).equals(generate_task(other_seed, 1, 1))
    assert generate_task(params, 1, 1).equals(generate_task(params, 1, 1))


@pytest.fixture(scope="module")
def simulated(spark, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sim"))
    cfg = load_config(
        root=root,
        overrides={
            "simulate": {
                "start_date": DAYS[0],
                "days": len(DAYS),
                "impressions_per_day": 10_000,
                "partitions": 2,
                "malformed_rate": MALFORMED_RATE,
                "target_cvr": 0.1,  # enough purchases in 20k impressions to see delays
            }
        },
    )
    report = run_simulate(spark, cfg)
    tables = {name: read_table(spark, root, name) for name in report["tables"]}
    return root, report, tables


def test_stage_writes_all_tables_with_report(simulated):
    root, report, tables = simulated
    assert set(report["tables"]) == {"impressions", "clicks", "behaviours", "conversions", "truth"}
    for name, df in tables.items():
        assert df.count() == report["tables"][name]["rows"] > 0, name
    assert list_partitions(root, "impressions") == DAYS
    saved = json.loads((Path(root) / "reports" / f"simulate-{DAYS[0]}-2d.json").read_text())
    assert saved["tables"]["truth"]["rows"] == 20_000 == tables["truth"].select("impression_id").distinct().count()


def test_conversion_delays_cross_day_boundaries(simulated):
    root, _, tables = simulated
    imp = tables["impressions"].select("impression_id", F.col("ds").alias("imp_ds")).distinct()
    joined = tables["conversions"].join(imp, "impression_id")
    later_day = joined.filter(F.col("ds") > F.col("imp_ds")).count()
    assert 0 < later_day < joined.count()
    assert list_partitions(root, "conversions")[-1] > DAYS[-1]


def test_malformed_share_near_configured(simulated):
    _, _, tables = simulated
    imp = tables["impressions"].select("impression_id", F.col("ts").alias("imp_ts")).distinct()
    events = [tables[name].select("impression_id", "ts", F.lit(name).alias("src"), F.col(id_col).alias("event_id"))
              for name, id_col in (("clicks", "click_id"), ("behaviours", "behaviour_id"), ("conversions", "conversion_id"))]  # fmt: skip
    all_events = events[0].unionByName(events[1]).unionByName(events[2])
    total = all_events.count()
    extra_duplicates = total - all_events.distinct().count()
    distinct = all_events.distinct().join(imp, "impression_id", "left")
    null_keys = distinct.filter(F.col("impression_id").isNull()).count()
    unknown = distinct.filter(F.col("impression_id").isNotNull() & F.col("imp_ts").isNull()).count()
    skewed = distinct.filter(F.col("ts") < F.col("imp_ts")).count()
    base_events = total - extra_duplicates
    for count in (null_keys, unknown, skewed, extra_duplicates):
        assert count > 0
    share = (null_keys + unknown + skewed + extra_duplicates) / base_events
    assert share == pytest.approx(MALFORMED_RATE, rel=0.35), (null_keys, unknown, skewed, extra_duplicates, base_events)


def test_clean_post_click_events_follow_clicks_and_truth_matches_ctr(simulated):
    _, _, tables = simulated
    imp = tables["impressions"].select("impression_id", F.col("ts").alias("imp_ts")).distinct()
    clicked = tables["clicks"].filter(F.col("impression_id").isNotNull()).select("impression_id").distinct()
    for name in ("behaviours", "conversions"):
        clean = tables[name].join(imp, "impression_id").filter(F.col("ts") >= F.col("imp_ts"))
        without_click = clean.join(clicked, "impression_id", "left_anti").count()
        # Only a malformed click row (its key nulled or replaced: rate/2) can hide the click.
        assert without_click <= 0.05 * clean.count() + 2, (name, without_click)
    truth = tables["truth"].agg(F.avg("p_click"), F.min("p_cvr"), F.max("p_ctcvr")).first()
    ctr = clicked.join(imp, "impression_id").count() / imp.count()
    assert truth[0] == pytest.approx(ctr, rel=0.12) and truth[1] > 0 and truth[2] < 1


def test_cli_simulate_writes_tables(tmp_path, spark):
    from cvr.cli.main import main

    config = tmp_path / "test.yaml"  # same Spark settings as the test session, which the command reuses
    config.write_text("spark: {master: 'local[2]', shuffle_partitions: 4}\n")
    code = main(["simulate", "--config", str(config), "--root", str(tmp_path), "--days", "1", "--impressions-per-day", "2000", "--partitions", "1",
                 "--preset", "sparse", "--seed", "3", "--format", "delta"])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "reports" / "simulate-2026-01-01-1d.json").read_text())
    assert report["preset"] == "sparse" and report["seed"] == 3 and report["format"] == "delta"
    assert report["target_rates"]["purchases_per_click"] == 0.005
    assert report["tables"]["impressions"]["version"] == 0
    assert read_table(spark, str(tmp_path), "truth").count() == 2000
