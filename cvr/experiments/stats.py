"""Statistics over seeds: mean and sample std per (data, model, variant), and paired tests vs a baseline.

Input is the results table (one row per finished trial) with columns data, model, variant, seed and one
column per metric such as 'cvr.auc'. Pairing is by seed within the same data variant: seed s of a model
and seed s of the baseline share the data and the seed, so their difference removes most of the noise.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

GROUP_COLUMNS = ["data", "model", "variant"]
NOT_COMPUTED_NOTE = "n<2: not computed"


def summarize(results: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """One row per group: n and, per metric, '<m>:mean' and '<m>:std' (sample std, ddof=1; NaN when n<2)."""
    rows = []
    for keys, group in results.groupby(GROUP_COLUMNS, sort=False, dropna=False):
        row = dict(zip(GROUP_COLUMNS, keys, strict=True))
        row["n"] = len(group)
        for metric in metrics:
            values = _finite(group[metric]) if metric in group else np.array([])
            row[f"{metric}:mean"] = float(values.mean()) if len(values) else math.nan
            row[f"{metric}:std"] = float(values.std(ddof=1)) if len(values) >= 2 else math.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=[*GROUP_COLUMNS, "n", *[f"{m}:{s}" for m in metrics for s in ("mean", "std")]])


def paired_differences(results: pd.DataFrame, baseline_model: str, metrics: list[str]) -> pd.DataFrame:
    """Per non-baseline group: differences to the baseline paired by seed, their mean/std and a paired t-test.

    The baseline group of a data variant is the baseline model with its default settings (variant '');
    if it only ran with overrides, its first variant is used. Columns per metric: '<m>:diff_mean',
    '<m>:diff_std', '<m>:p' (two-sided scipy.stats.ttest_rel), plus n_pairs and a note when n<2.
    """
    rows = []
    for data_label, per_data in results.groupby("data", sort=False):
        baseline = _baseline_rows(per_data, baseline_model)
        if baseline is None:
            continue
        for (model, variant), group in per_data.groupby(["model", "variant"], sort=False):
            if model == baseline_model and variant == baseline["variant"].iloc[0]:
                continue
            rows.append(_paired_row(data_label, model, variant, group, baseline, metrics))
    columns = ["data", "model", "variant", "baseline", "n_pairs", "note"]
    columns += [f"{m}:{s}" for m in metrics for s in ("diff_mean", "diff_std", "p")]
    return pd.DataFrame(rows, columns=columns)


def paired_t_test(values: np.ndarray, baseline: np.ndarray) -> tuple[float, float, float]:
    """(mean difference, sample std of differences, two-sided p); std and p are NaN when fewer than 2 pairs."""
    diffs = np.asarray(values, dtype=float) - np.asarray(baseline, dtype=float)
    if len(diffs) == 0:
        return math.nan, math.nan, math.nan
    if len(diffs) < 2:
        return float(diffs.mean()), math.nan, math.nan
    # Identical differences make the t statistic degenerate; scipy warns and returns 0 or NaN, which we keep.
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p_value = float(scipy_stats.ttest_rel(values, baseline).pvalue)
    return float(diffs.mean()), float(diffs.std(ddof=1)), p_value


def _baseline_rows(per_data: pd.DataFrame, baseline_model: str) -> pd.DataFrame | None:
    candidates = per_data[per_data["model"] == baseline_model]
    if candidates.empty:
        return None
    variants = list(dict.fromkeys(candidates["variant"]))
    chosen = "" if "" in variants else variants[0]
    return candidates[candidates["variant"] == chosen]


def _paired_row(data_label, model, variant, group, baseline, metrics) -> dict:
    row = {"data": data_label, "model": model, "variant": variant, "baseline": baseline["model"].iloc[0]}
    merged = group.merge(baseline, on="seed", suffixes=("", ":base"))
    row["n_pairs"] = len(merged)
    row["note"] = NOT_COMPUTED_NOTE if len(merged) < 2 else ""
    for metric in metrics:
        if metric not in merged or f"{metric}:base" not in merged:
            row.update({f"{metric}:diff_mean": math.nan, f"{metric}:diff_std": math.nan, f"{metric}:p": math.nan})
            continue
        pairs = merged[[metric, f"{metric}:base"]].astype(float).dropna()
        mean, std, p_value = paired_t_test(pairs[metric].to_numpy(), pairs[f"{metric}:base"].to_numpy())
        row.update({f"{metric}:diff_mean": mean, f"{metric}:diff_std": std, f"{metric}:p": p_value})
    return row


def _finite(column: pd.Series) -> np.ndarray:
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
    return values[np.isfinite(values)]


def reliability_bins(columns: dict[str, np.ndarray], bins: int = 10) -> dict[str, list[dict[str, float]]]:
    """Reliability table per task from scored rows: equal-count bins of the prediction, mean prediction vs rate.

    `columns` holds p_cvr, p_ctcvr, click, conversion (as returned by cvr.train.api.score_files). CVR uses
    clicked rows (its evaluation space), CTCVR all rows.
    """
    click = np.asarray(columns["click"], dtype=float)
    conversion = np.asarray(columns["conversion"], dtype=float)
    clicked = click > 0
    tasks = {
        "cvr": (np.asarray(columns["p_cvr"], dtype=float)[clicked], conversion[clicked]),
        "ctcvr": (np.asarray(columns["p_ctcvr"], dtype=float), click * conversion),
    }
    out = {}
    for task, (pred, label) in tasks.items():
        if len(pred) == 0:
            out[task] = []
            continue
        order = np.argsort(pred, kind="stable")
        out[task] = [
            {"pred": float(pred[part].mean()), "observed": float(label[part].mean()), "count": int(len(part))}
            for part in np.array_split(order, min(bins, len(pred)))
            if len(part)
        ]
    return out
