"""Ranking and calibration metrics for CTR/CVR/CTCVR; pure numpy, exact, no sampling."""

from cvr.metrics.core import auc, calibration, gauc, logloss, mean_kl
from cvr.metrics.tasks import TASKS, evaluate_predictions, format_metrics_table

__all__ = ["TASKS", "auc", "calibration", "evaluate_predictions", "format_metrics_table", "gauc", "logloss", "mean_kl"]
