"""Metrics against independent references: sklearn for AUC, brute-force pair loops for soft labels and GAUC."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from cvr.metrics import auc, calibration, evaluate_predictions, gauc, logloss, mean_kl


def brute_soft_auc(p, s):
    num = den = 0.0
    for i, j in itertools.permutations(range(len(p)), 2):
        w = p[i] * (1 - p[j])
        den += w
        num += w * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
    return num / den


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 2000)
    s = np.round(rng.random(2000), 2)  # many ties
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_soft_label_auc_matches_pairwise_definition():
    rng = np.random.default_rng(2)
    p = rng.random(40)
    s = np.round(rng.random(40), 1)
    assert auc(p, s) == pytest.approx(brute_soft_auc(p, s), abs=1e-12)


def test_auc_undefined_with_one_class():
    assert np.isnan(auc(np.ones(5), np.arange(5)))


def test_gauc_is_impression_weighted_mean_of_user_aucs():
    y = np.array([1, 0, 0, 1, 0, 1, 1, 1])
    s = np.array([0.9, 0.1, 0.5, 0.2, 0.4, 0.6, 0.7, 0.8])
    g = np.array([1, 1, 1, 2, 2, 2, 3, 3])  # user 3 has one class only: excluded
    a1 = roc_auc_score(y[:3], s[:3])
    a2 = roc_auc_score(y[3:6], s[3:6])
    assert gauc(y, s, g) == pytest.approx((3 * a1 + 3 * a2) / 6)


def test_logloss_calibration_kl():
    y = np.array([1, 0, 0, 1])
    p = np.array([0.8, 0.3, 0.1, 0.6])
    assert logloss(y, p) == pytest.approx(log_loss(y, p))
    assert calibration(y, p) == pytest.approx(p.mean() / 0.5)
    assert mean_kl(p, p) == pytest.approx(0.0, abs=1e-12)
    assert mean_kl(np.array([0.5]), np.array([0.25])) > 0


def test_task_protocol_cvr_on_clicked_rows_only():
    cols = {
        "click": np.array([1, 1, 1, 0, 0], dtype=float),
        "conversion": np.array([1, 0, 0, 0, 0], dtype=float),
        "p_ctr": np.array([0.9, 0.8, 0.7, 0.2, 0.1]),
        "p_cvr": np.array([0.5, 0.2, 0.3, 0.99, 0.99]),  # unclicked rows must not count for CVR
        "p_ctcvr": np.array([0.45, 0.16, 0.21, 0.2, 0.1]),
        "user_key": np.array([1, 1, 2, 2, 3]),
    }
    m = evaluate_predictions(cols)
    assert m["cvr"]["rows"] == 3 and m["cvr"]["auc"] == 1.0
    assert m["ctr"]["rows"] == 5 and m["ctr"]["auc"] == 1.0
    assert m["ctcvr"]["positives"] == 1 and m["ctcvr"]["auc"] == 1.0
    truth = {"p_click": cols["p_ctr"], "p_cvr": np.array([0.5, 0.2, 0.3, 0.01, 0.01]), "p_ctcvr": cols["p_ctcvr"]}
    m = evaluate_predictions(cols, truth)
    # Predicting the true probabilities attains the best soft-label AUC, which is below 1.
    assert m["ctr"]["oracle_auc"] == pytest.approx(auc(truth["p_click"], truth["p_click"]))
    assert m["ctr"]["oracle_kl"] == pytest.approx(0.0, abs=1e-12)
    assert m["cvr"]["oracle_auc_all"] < 1.0  # the model's pCVR ranks the unclicked rows wrongly


def test_improvement_knows_which_way_each_metric_improves():
    import math

    from cvr.metrics.selection import improvement, parse_selector

    assert improvement("auc", 0.70, 0.68) == pytest.approx(0.02)
    assert improvement("logloss", 0.090, 0.095) == pytest.approx(0.005)  # lower logloss is better
    assert improvement("oracle_kl", 0.02, 0.01) < 0
    assert improvement("calibration", 0.95, 1.20) == pytest.approx(0.15)  # |0.95 - 1| beats |1.2 - 1|
    assert improvement("logloss", 0.1, -math.inf) == math.inf and improvement("auc", math.nan, 0.5) == -math.inf
    assert parse_selector("ctcvr.logloss", "x") == ("ctcvr", "logloss")
    with pytest.raises(ValueError, match=r"train.select_metric: expected TASK.METRIC .* got 'cvr.accuracy'"):
        parse_selector("cvr.accuracy", "train.select_metric")


def test_a_bad_select_metric_is_a_config_error_naming_the_key():
    from cvr.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"key 'train.select_metric'.*'auc'"):
        load_config(overrides={"train": {"select_metric": "auc"}})
