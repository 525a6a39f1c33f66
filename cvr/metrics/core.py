"""Metric kernels. AUC accepts soft labels so the same code gives oracle AUCs against true probabilities."""

from __future__ import annotations

import numpy as np
import pandas as pd

EPS = 1e-7


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve with ties counted as 1/2.

    `labels` may be soft (in [0, 1]): each row is a positive with weight p and a negative with weight 1-p,
    and a row is never paired with itself. With 0/1 labels this is the ordinary AUC. NaN when undefined.
    """
    pos = np.asarray(labels, dtype=np.float64).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if pos.shape != scores.shape:
        raise ValueError(f"auc: labels {pos.shape} and scores {scores.shape} differ in shape")
    neg = 1.0 - pos
    if pos.size == 0:
        return float("nan")
    uniq, group = np.unique(scores, return_inverse=True)
    neg_per_group = np.bincount(group, weights=neg, minlength=uniq.size)
    neg_below = np.concatenate([[0.0], np.cumsum(neg_per_group)[:-1]])
    ties_other = neg_per_group[group] - neg  # negatives with the same score, excluding the row itself
    numerator = np.sum(pos * (neg_below[group] + 0.5 * ties_other))
    denominator = pos.sum() * neg.sum() - np.sum(pos * neg)
    return float(numerator / denominator) if denominator > 0 else float("nan")


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    if y.size == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def mean_kl(true_probs: np.ndarray, probs: np.ndarray) -> float:
    """Mean KL(Bernoulli(true) || Bernoulli(pred)): 0 for a perfect model, independent of label noise."""
    t = np.clip(np.asarray(true_probs, dtype=np.float64), EPS, 1 - EPS)
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    if t.size == 0:
        return float("nan")
    return float(np.mean(t * np.log(t / p) + (1 - t) * np.log((1 - t) / (1 - p))))


def calibration(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean prediction over observed rate (1.0 = calibrated on average)."""
    rate = float(np.mean(labels)) if len(labels) else float("nan")
    return float(np.mean(probs) / rate) if rate > 0 else float("nan")


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Impression-weighted mean of per-group AUCs over groups that have both classes."""
    frame = pd.DataFrame({"y": np.asarray(labels, dtype=np.float64), "s": scores, "g": groups})
    stats = frame.groupby("g")["y"].agg(["sum", "count"])
    valid = stats[(stats["sum"] > 0) & (stats["sum"] < stats["count"])]
    if valid.empty:
        return float("nan")
    frame = frame[frame["g"].isin(valid.index)]
    frame = frame.assign(rank=frame.groupby("g")["s"].rank(method="average"))
    pos_rank_sum = frame[frame["y"] > 0].groupby("g")["rank"].sum()
    n_pos = valid["sum"]
    n_neg = valid["count"] - n_pos
    per_group = (pos_rank_sum.reindex(valid.index) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return float(np.average(per_group, weights=valid["count"]))
