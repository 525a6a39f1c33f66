"""Experiment report: results.csv (one row per finished trial), summary.csv, paired.csv, report.md and plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from cvr.experiments import plots
from cvr.experiments.grid import Trial
from cvr.experiments.spec import ExperimentSpec
from cvr.experiments.stats import paired_differences, summarize
from cvr.experiments.tracking import flatten

# (column, header) in the order the tables show them.
SUMMARY_METRICS = [
    ("cvr.auc", "CVR AUC"),
    ("ctcvr.auc", "CTCVR AUC"),
    ("ctr.auc", "CTR AUC"),
    ("cvr.oracle_auc", "CVR oracle AUC"),
    ("ctcvr.oracle_auc", "CTCVR oracle AUC"),
    ("cvr.oracle_auc_all", "CVR oracle AUC (all impressions)"),
    ("cvr.gauc", "CVR GAUC"),
    ("cvr.logloss", "CVR logloss"),
    ("ctcvr.logloss", "CTCVR logloss"),
    ("cvr.calibration", "CVR calibration"),
    ("ctcvr.calibration", "CTCVR calibration"),
]
PAIRED_METRICS = [
    ("cvr.auc", "Δ CVR AUC"),
    ("cvr.oracle_auc", "Δ CVR oracle AUC"),
    ("cvr.oracle_auc_all", "Δ CVR oracle AUC (all)"),
    ("ctcvr.auc", "Δ CTCVR AUC"),
    ("ctcvr.oracle_auc", "Δ CTCVR oracle AUC"),
]
AUC_PLOT_METRICS = ["cvr.auc", "ctcvr.auc", "cvr.oracle_auc", "ctcvr.oracle_auc"]
SIGNIFICANCE_LEVEL = 0.05


def collect_results(exp_dir: Path, trials: list[Trial]) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """Read every finished trial under `exp_dir`: (results table, per trial {'history', 'reliability'})."""
    from cvr.experiments.runner import DONE_MARKER, is_trial_done

    rows, details = [], {}
    for trial in trials:
        path = exp_dir / trial.trial_id
        if not is_trial_done(path, trial):
            continue
        metrics = json.loads((path / "metrics.json").read_text())
        done = json.loads((path / DONE_MARKER).read_text())
        details[trial.trial_id] = {
            "history": metrics.get("history") or [],
            "reliability": metrics.get("reliability") or {},
        }
        rows.append(result_row(trial, metrics, seconds=done.get("seconds")))
    return pd.DataFrame(rows, columns=_ordered_columns(rows)), details


def result_row(trial: Trial, metrics: dict[str, Any], seconds: float | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "trial_id": trial.trial_id,
        "group_id": trial.group_id,
        "data": trial.data_label,
        "model": trial.model,
        "variant": trial.variant,
        "seed": trial.seed,
        "seconds": seconds,
    }
    row.update({f"{plots.PARAM_PREFIX}{k}": v for k, v in trial.params["model_overrides"].items()})
    row.update({f"{plots.PARAM_PREFIX}train.{k}": v for k, v in trial.params["train"].items()})
    for key, value in flatten({k: v for k, v in metrics.items() if k != "history"}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            row[key] = float(value)
    return row


def write_experiment_report(exp_dir: Path, spec: ExperimentSpec, trials: list[Trial]) -> Path:
    """Write results.csv, summary.csv, paired.csv, plots/*.png and report.md under `exp_dir`; return report.md."""
    results, details = collect_results(exp_dir, trials)
    return write_report_files(exp_dir, spec, results, details, total_trials=len(trials))


def write_report_files(
    exp_dir: Path, spec: ExperimentSpec, results: pd.DataFrame, details: dict, total_trials: int
) -> Path:
    """details: per trial id {'history': [per-epoch dicts], 'reliability': {task: [bins]}} (both optional)."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    metrics = [m for m, _ in SUMMARY_METRICS if m in results]
    summary = summarize(results, metrics) if not results.empty else pd.DataFrame()
    paired = paired_differences(results, spec.paired_baseline, metrics) if not results.empty else pd.DataFrame()
    results.to_csv(exp_dir / "results.csv", index=False)
    summary.to_csv(exp_dir / "summary.csv", index=False)
    paired.to_csv(exp_dir / "paired.csv", index=False)
    figures = _draw_plots(exp_dir / "plots", spec, results, details)
    text = render_markdown(spec, results, summary, paired, figures, total_trials)
    report = exp_dir / "report.md"
    report.write_text(text)
    return report


def _draw_plots(plot_dir: Path, spec: ExperimentSpec, results: pd.DataFrame, details: dict) -> dict[str, Path]:
    if results.empty:
        return {}
    histories = {trial_id: d.get("history") or [] for trial_id, d in details.items()}
    reliability = {trial_id: d["reliability"] for trial_id, d in details.items() if d.get("reliability")}
    drawn = {
        "AUC per model": plots.plot_auc_per_model(results, plot_dir / "auc_per_model.png", AUC_PLOT_METRICS),
        "Training curves": plots.plot_training_curves(results, histories, plot_dir / "training_curves.png"),
        "Sensitivity (CVR AUC)": plots.plot_sensitivity(
            results, plot_dir / "sensitivity_cvr_auc.png", "cvr.auc", spec.paired_baseline
        ),
        "Sensitivity (CVR oracle AUC)": plots.plot_sensitivity(
            results, plot_dir / "sensitivity_cvr_oracle_auc.png", "cvr.oracle_auc", spec.paired_baseline
        ),
        "Calibration": plots.plot_calibration(results, plot_dir / "calibration.png", reliability),
    }
    return {title: path for title, path in drawn.items() if path is not None}


def render_markdown(
    spec: ExperimentSpec,
    results: pd.DataFrame,
    summary: pd.DataFrame,
    paired: pd.DataFrame,
    figures: dict[str, Path],
    total_trials: int,
) -> str:
    lines = [f"# Experiment `{spec.name}`", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    lines += _settings_lines(spec, len(results), total_trials)
    if results.empty:
        return "\n".join([*lines, "No finished trials yet.", ""])
    for data_label in dict.fromkeys(results["data"]):
        lines += [f"## Data: {data_label}", "", "### Mean ± std over seeds", ""]
        lines += _summary_table(summary[summary["data"] == data_label])
        lines += ["", f"### Paired difference to `{spec.paired_baseline}` (same seeds; two-sided paired t-test)", ""]
        lines += _paired_table(
            paired[paired["data"] == data_label] if not paired.empty else paired, spec.paired_baseline
        )
        lines.append("")
    if figures:
        lines += ["## Plots", ""]
        lines += [f"![{title}](plots/{path.name})" for title, path in figures.items()]
        lines.append("")
    return "\n".join(lines)


def _settings_lines(spec: ExperimentSpec, finished: int, total: int) -> list[str]:
    data = spec.data
    data_text = (
        f"simulated, presets {', '.join(data.preset)}; {data.days} days x {data.impressions_per_day} impressions, last {data.holdout_days} held out"
        if data.source == "simulate"
        else f"existing tables; train {data.train_ds}, validation {data.valid_ds}"
    )
    return [
        f"- trials finished: {finished} of {total}; seeds {spec.seeds}; ranks per trial: {spec.np}",
        f"- data: {data_text}",
        f"- base config: {spec.base_config or '<defaults>'} + {json.dumps(spec.base, sort_keys=True) if spec.base else 'no overrides'}",
        "- metrics are on the validation days; CVR AUC is on clicked impressions, CTR/CTCVR on all impressions;",
        "  oracle AUC scores against the simulator's true probabilities (far less noisy than sampled labels);",
        "  'CVR oracle AUC (all impressions)' scores pCVR on every impression, where sample-selection bias shows.",
        f"- significance: p < {SIGNIFICANCE_LEVEL} marked *; with fewer than 2 paired seeds no test is computed.",
        "- settings '–' = the model's own configuration (no swept overrides).",
        "",
    ]


def _summary_table(summary: pd.DataFrame) -> list[str]:
    metrics = [(m, h) for m, h in SUMMARY_METRICS if f"{m}:mean" in summary and summary[f"{m}:mean"].notna().any()]
    lines = [
        "| model | settings | seeds | " + " | ".join(h for _, h in metrics) + " |",
        "|---" * (3 + len(metrics)) + "|",
    ]
    for _, row in summary.iterrows():
        cells = [_mean_std(row[f"{m}:mean"], row[f"{m}:std"]) for m, _ in metrics]
        lines.append(f"| {row['model']} | {row['variant'] or '–'} | {row['n']} | " + " | ".join(cells) + " |")
    return lines


def _paired_table(paired: pd.DataFrame, baseline: str) -> list[str]:
    if paired.empty:
        return [f"No paired comparison: no finished `{baseline}` trials on this data."]
    metrics = [
        (m, h) for m, h in PAIRED_METRICS if f"{m}:diff_mean" in paired and paired[f"{m}:diff_mean"].notna().any()
    ]
    header = "| model | settings | pairs | " + " | ".join(f"{h} | p" for _, h in metrics) + " | note |"
    lines = [header, "|---" * (4 + 2 * len(metrics)) + "|"]
    for _, row in paired.iterrows():
        cells = []
        for metric, _ in metrics:
            cells.append(_mean_std(row[f"{metric}:diff_mean"], row[f"{metric}:diff_std"], signed=True))
            cells.append(_p_value(row[f"{metric}:p"]))
        lines.append(
            f"| {row['model']} | {row['variant'] or '–'} | {row['n_pairs']} | "
            + " | ".join(cells)
            + f" | {row['note']} |"
        )
    return lines


def _mean_std(mean: float, std: float, signed: bool = False) -> str:
    if mean is None or not math.isfinite(mean):
        return "–"
    text = f"{mean:+.4f}" if signed else f"{mean:.4f}"
    return f"{text} ± {std:.4f}" if std is not None and math.isfinite(std) else text


def _p_value(p_value: float) -> str:
    if p_value is None or not math.isfinite(p_value):
        return "–"
    return f"{p_value:.3g}" + ("*" if p_value < SIGNIFICANCE_LEVEL else "")


def _ordered_columns(rows: list[dict[str, Any]]) -> list[str]:
    fixed = ["trial_id", "group_id", "data", "model", "variant", "seed", "seconds"]
    extra = list(dict.fromkeys(k for row in rows for k in row if k not in fixed))
    params = sorted(k for k in extra if k.startswith(plots.PARAM_PREFIX))
    return fixed + params + sorted(k for k in extra if k not in params)
