"""PNG plots of an experiment (matplotlib, Agg backend: no display needed).

Each function draws from the results table (one row per finished trial; metric columns such as 'cvr.auc',
parameter columns 'param:<axis>') and returns the written path, or None when there is nothing to draw.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cvr.experiments.tracking import flatten  # noqa: E402

PARAM_PREFIX = "param:"
LINE_STYLES = ("-", "--", ":")  # one per data variant


def group_label(model: str, variant: str) -> str:
    return f"{model} ({variant})" if variant else model


def _panels_per_data(results: pd.DataFrame, panel_height: float):
    """One axis per data variant; yields (axis, data label, its rows, its (model, variant) groups)."""
    data_labels = list(dict.fromkeys(results["data"]))
    fig, axes = plt.subplots(
        len(data_labels),
        1,
        figsize=(max(6, 1.2 * results["group_id"].nunique() + 3), panel_height * len(data_labels)),
        squeeze=False,
    )
    panels = []
    for ax, data_label in zip(axes[:, 0], data_labels, strict=True):
        rows = results[results["data"] == data_label]
        panels.append((ax, data_label, rows, list(dict.fromkeys(zip(rows["model"], rows["variant"], strict=True)))))
    return fig, panels


def plot_auc_per_model(results: pd.DataFrame, path: Path, metrics: list[str]) -> Path | None:
    """Grouped bars: per data variant one panel, per group the mean of each AUC metric with a ±1 std error bar."""
    metrics = [m for m in metrics if m in results and results[m].notna().any()]
    if results.empty or not metrics:
        return None
    fig, panels = _panels_per_data(results, panel_height=3.6)
    for ax, data_label, rows, groups in panels:
        x, lowest = _grouped_bars(ax, rows, groups, metrics)
        lowest = min(1.0, lowest)
        ax.set_xticks(x, [group_label(m, v) for m, v in groups], rotation=30, ha="right", fontsize=8)
        ax.set_ylim(max(0.0, math.floor(lowest * 20) / 20 - 0.05) if np.isfinite(lowest) else 0.0, 1.0)
        ax.set_ylabel("AUC (mean ± std over seeds)")
        ax.set_title(f"data: {data_label}")
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_training_curves(results: pd.DataFrame, histories: dict[str, list[dict[str, Any]]], path: Path) -> Path | None:
    """Per-epoch curves (mean over seeds): training loss, validation CVR AUC and CVR oracle AUC when logged."""
    frames = []
    for trial_id, history in histories.items():
        for epoch, entry in enumerate(history or []):
            flat = {k: v for k, v in flatten(entry).items() if _is_number(v)}
            frames.append({"trial_id": trial_id, "epoch_index": epoch + 1, **flat})
    if not frames:
        return None
    curves = pd.DataFrame(frames).merge(results[["trial_id", "data", "model", "variant"]], on="trial_id")
    keys = [
        _first_key(curves, lambda k: k.split(".")[-1] in ("train_loss", "loss"))
        or _first_key(curves, lambda k: "loss" in k),
        _first_key(curves, lambda k: _metric_path(k) == ["cvr", "auc"]),
        _first_key(curves, lambda k: _metric_path(k) == ["cvr", "oracle", "auc"]),
    ]
    keys = [k for k in keys if k]
    if curves.empty or not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        styles = {label: LINE_STYLES[i % len(LINE_STYLES)] for i, label in enumerate(dict.fromkeys(curves["data"]))}
        for (data_label, model, variant), rows in curves.groupby(["data", "model", "variant"], sort=False):
            mean = rows.groupby("epoch_index")[key].mean()
            label = f"{group_label(model, variant)} [{data_label}]"
            ax.plot(mean.index, mean.values, marker="o", linestyle=styles[data_label], label=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.set_title(f"{key} per epoch (mean over seeds)")
        ax.legend(fontsize=7)
    return _save(fig, path)


def sensitivity_axes(results: pd.DataFrame) -> list[str]:
    """Parameter columns with at least two distinct numeric values: the axes a sensitivity plot can show."""
    axes = []
    for column in results.columns:
        if column.startswith(PARAM_PREFIX):
            values = pd.to_numeric(results[column], errors="coerce").dropna().unique()
            if len(values) >= 2:
                axes.append(column)
    return axes


def plot_sensitivity(results: pd.DataFrame, path: Path, metric: str, baseline_model: str) -> Path | None:
    """One panel per swept numeric axis: metric mean ± std vs the axis value, one line per (data, model)."""
    axes_names = sensitivity_axes(results)
    if not axes_names or metric not in results:
        return None
    fig, axes = plt.subplots(1, len(axes_names), figsize=(5.5 * len(axes_names), 4), squeeze=False)
    for ax, column in zip(axes[0], axes_names, strict=True):
        swept = results.assign(value=pd.to_numeric(results[column], errors="coerce")).dropna(subset=["value"])
        for (data_label, model), rows in swept.groupby(["data", "model"], sort=False):
            stats = rows.groupby("value")[metric].agg(["mean", "std"]).sort_index()
            ax.errorbar(
                stats.index,
                stats["mean"],
                yerr=stats["std"].fillna(0),
                marker="o",
                capsize=3,
                label=f"{model} [{data_label}]",
            )
        baselines = results[results["model"] == baseline_model].groupby("data", sort=False)
        for i, (data_label, rows) in enumerate(baselines):
            style = LINE_STYLES[i % len(LINE_STYLES)]
            ax.axhline(
                rows[metric].mean(),
                linestyle=style,
                linewidth=1,
                color="grey",
                label=f"{baseline_model} [{data_label}]",
            )
        positive = swept["value"][swept["value"] > 0]
        if len(positive) == len(swept) and positive.max() / positive.min() >= 20:
            ax.set_xscale("log")
        ax.set_xlabel(column.removeprefix(PARAM_PREFIX))
        ax.set_ylabel(f"{metric} (mean ± std)")
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_calibration(results: pd.DataFrame, path: Path, reliability: dict[str, dict] | None = None) -> Path | None:
    """Reliability curves from the trials' binned validation predictions; else the calibration metric per model."""
    if reliability:
        return _plot_reliability(results, reliability, path)
    metrics = [
        m
        for m in ("ctr.calibration", "cvr.calibration", "ctcvr.calibration")
        if m in results and results[m].notna().any()
    ]
    if results.empty or not metrics:
        return None
    fig, panels = _panels_per_data(results, panel_height=3.4)
    for ax, data_label, rows, groups in panels:
        x, _ = _grouped_bars(ax, rows, groups, metrics)
        ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
        ax.set_xticks(x, [group_label(m, v) for m, v in groups], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("mean prediction / observed rate")
        ax.set_title(f"calibration, data: {data_label} (1.0 = calibrated)")
        ax.legend(fontsize=8)
    return _save(fig, path)


def _plot_reliability(results: pd.DataFrame, reliability: dict[str, dict], path: Path) -> Path | None:
    """Panels (data variant x task): per group, observed rate vs mean prediction per bin, averaged over seeds."""
    records = []
    for trial_id, per_task in reliability.items():
        for task, bins in per_task.items():
            records += [{"trial_id": trial_id, "task": task, "bin": i, **b} for i, b in enumerate(bins)]
    if not records:
        return None
    frame = pd.DataFrame(records).merge(results[["trial_id", "data", "model", "variant"]], on="trial_id")
    data_labels, tasks = list(dict.fromkeys(frame["data"])), list(dict.fromkeys(frame["task"]))
    fig, axes = plt.subplots(
        len(data_labels), len(tasks), figsize=(5.5 * len(tasks), 4.5 * len(data_labels)), squeeze=False
    )
    for row, data_label in enumerate(data_labels):
        for col, task in enumerate(tasks):
            ax = axes[row, col]
            cell = frame[(frame["data"] == data_label) & (frame["task"] == task)]
            for (model, variant), rows in cell.groupby(["model", "variant"], sort=False):
                curve = rows.groupby("bin")[["pred", "observed"]].mean()
                ax.plot(curve["pred"], curve["observed"], marker="o", markersize=3, label=group_label(model, variant))
            positive = pd.concat([cell["pred"], cell["observed"]])
            positive = positive[positive > 0]
            if len(positive):
                low, top = positive.min(), positive.max()
                ax.plot([low, top], [low, top], linestyle="--", color="grey", linewidth=1)
                # Rates are small and models can be far off: log axes keep every model readable (empty bins hidden).
                ax.set_xscale("log", nonpositive="mask")
                ax.set_yscale("log", nonpositive="mask")
            ax.set_xlabel(f"mean predicted p_{task} (equal-count bins)")
            ax.set_ylabel("observed rate")
            ax.set_title(f"{task} reliability, data: {data_label}")
            ax.legend(fontsize=7)
    return _save(fig, path)


def _grouped_bars(ax, rows: pd.DataFrame, groups, metrics: list[str]) -> tuple[np.ndarray, float]:
    """One bar per metric in each group (mean over seeds, ±1 std error bar): (group positions, lowest mean - std)."""
    width = 0.8 / len(metrics)
    x = np.arange(len(groups))
    lowest = np.inf
    for i, metric in enumerate(metrics):
        means, stds = _mean_std_per_group(rows, groups, metric)
        ax.bar(x + i * width - 0.4 + width / 2, means, width, yerr=stds, capsize=3, label=metric)
        lowest = min(lowest, np.nanmin(np.asarray(means) - np.nan_to_num(stds)))
    return x, lowest


def _mean_std_per_group(rows: pd.DataFrame, groups, metric: str) -> tuple[list[float], list[float]]:
    means, stds = [], []
    for model, variant in groups:
        values = pd.to_numeric(
            rows[(rows["model"] == model) & (rows["variant"] == variant)][metric], errors="coerce"
        ).dropna()
        means.append(float(values.mean()) if len(values) else math.nan)
        stds.append(float(values.std(ddof=1)) if len(values) >= 2 else 0.0)
    return means, stds


def _first_key(frame: pd.DataFrame, wanted) -> str | None:
    for column in frame.columns:
        if column not in ("trial_id", "epoch_index", "epoch") and wanted(column) and frame[column].notna().any():
            return column
    return None


def _metric_path(key: str) -> list[str]:
    """'valid.cvr_oracle_auc' -> ['cvr', 'oracle', 'auc'] (last parts), so 'ctcvr_auc' never matches 'cvr_auc'."""
    parts = key.replace("_", ".").split(".")
    for size in (3, 2):
        if len(parts) >= size and parts[-size] in ("ctr", "cvr", "ctcvr"):
            return parts[-size:]
    return parts[-1:]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
