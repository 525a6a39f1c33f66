"""Which way each metric improves, for choosing between models: the trainer's best epoch and the nightly gate."""

from __future__ import annotations

import math

# metric -> whether a larger value is better; calibration is compared as |value - 1| (1 = calibrated)
HIGHER_IS_BETTER = {"auc": True, "gauc": True, "oracle_auc": True, "logloss": False, "oracle_kl": False, "calibration": False}  # fmt: skip


def comparable(metric: str, value: float) -> float:
    """The value on the scale `improvement` compares: |value - 1| for calibration, else the value."""
    return abs(value - 1.0) if metric == "calibration" else value


def improvement(metric: str, new: float, old: float) -> float:
    """How much better `new` is than `old` (> 0: better); -inf/inf and NaN never count as better."""
    if not math.isfinite(new):
        return -math.inf
    if not math.isfinite(old):
        return math.inf
    new, old = comparable(metric, new), comparable(metric, old)
    return new - old if HIGHER_IS_BETTER[metric] else old - new


def parse_selector(text: str, where: str) -> tuple[str, str]:
    """'task.metric' (e.g. 'ctcvr.logloss') -> (task, metric); ValueError naming `where` and the value."""
    from cvr.metrics.tasks import TASKS

    task, _, metric = text.partition(".")
    if task not in TASKS or metric not in HIGHER_IS_BETTER:
        raise ValueError(f"{where}: expected TASK.METRIC with TASK in {sorted(TASKS)} and METRIC in {sorted(HIGHER_IS_BETTER)}, got {text!r}")  # fmt: skip
    return task, metric
