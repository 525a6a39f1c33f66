"""Per-task evaluation: which labels, which rows, which prediction (models.md section 7)."""

from __future__ import annotations

import math

import numpy as np

from cvr.metrics.core import auc, calibration, gauc, logloss, mean_kl

# task -> (prediction column, label expression, rows evaluated, truth column)
TASKS = {
    "ctr": ("p_ctr", "click", "all", "p_click"),
    "cvr": ("p_cvr", "conversion", "clicked", "p_cvr"),
    "ctcvr": ("p_ctcvr", "ctcvr", "all", "p_ctcvr"),
}


def _labels(columns: dict[str, np.ndarray], name: str) -> np.ndarray:
    if name == "ctcvr":
        return columns["click"] * columns["conversion"]
    return columns[name]


def evaluate_predictions(columns: dict[str, np.ndarray], truth: dict[str, np.ndarray] | None = None) -> dict:
    """Metrics per task from aligned arrays: p_ctr, p_cvr, p_ctcvr, click, conversion, user_key (+ truth p_*).

    CVR is evaluated on clicked impressions (the standard protocol); `oracle_auc_all` for CVR uses every
    impression with the true P(purchase | click) as a soft label, which is where sample-selection bias shows.
    """
    clicked = columns["click"] > 0
    out: dict[str, dict[str, float]] = {}
    for task, (pred, label, rows, truth_col) in TASKS.items():
        mask = clicked if rows == "clicked" else np.ones_like(clicked)
        y, p = _labels(columns, label)[mask], columns[pred][mask]
        metrics = {
            "auc": auc(y, p),
            "gauc": gauc(y, p, columns["user_key"][mask]),
            "logloss": logloss(y, p),
            "calibration": calibration(y, p),
            "rows": int(mask.sum()),
            "positives": int(y.sum()),
        }
        if truth is not None:
            t = truth[truth_col]
            metrics["oracle_auc"] = auc(t[mask], p)
            metrics["oracle_kl"] = mean_kl(t[mask], p)
            if rows == "clicked":
                metrics["oracle_auc_all"] = auc(t, columns[pred])
        out[task] = metrics
    return out


def format_metrics_table(results: dict[str, dict], keys=("auc", "gauc", "logloss", "calibration", "oracle_auc")) -> str:
    """Markdown table: one row per (model, task)."""
    header = "| model | task | " + " | ".join(keys) + " |"
    lines = [header, "|" + "---|" * (len(keys) + 2)]
    for model, metrics in results.items():
        for task in TASKS:
            if task not in metrics:
                continue
            cells = [_fmt(metrics[task].get(k)) for k in keys]
            lines.append(f"| {model} | {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
