"""Optional MLflow tracking of trials.

Enabled when the experiment file sets `tracking_uri` or the environment sets MLFLOW_TRACKING_URI.
`tracking_uri: local` means the embedded default: an MLflow file store under <root>/mlruns.
mlflow is imported only when tracking is enabled, so nothing is required otherwise.
"""

from __future__ import annotations

import importlib
import math
import os
from pathlib import Path
from typing import Any

LOCAL_STORE = "local"


class TrackingError(RuntimeError):
    """Tracking is configured but cannot work (for example mlflow is not installed)."""


def resolve_tracking_uri(configured: str, root: str | Path) -> str:
    """The URI to log to, or '' when tracking is off. The experiment file wins over the environment."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri == LOCAL_STORE:
        return (Path(root).resolve() / "mlruns").as_uri()
    return uri


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'cvr': {'auc': 0.7}} -> {'cvr.auc': 0.7}; lists are left out."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif not isinstance(value, list):
            flat[name] = value
    return flat


class Tracker:
    """Logs each finished trial as one MLflow run in the MLflow experiment named after the sweep."""

    def __init__(self, uri: str, experiment_name: str):
        self.uri = uri
        self.experiment_name = experiment_name
        self._mlflow = _import_mlflow(uri) if uri else None

    @property
    def enabled(self) -> bool:
        return self._mlflow is not None

    def log_trial(self, trial_id: str, params: dict[str, Any], metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        mlflow = self._mlflow
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(self.experiment_name)
        with mlflow.start_run(run_name=trial_id):
            mlflow.set_tag("trial_id", trial_id)
            mlflow.log_params({k: str(v) for k, v in flatten(params).items()})
            mlflow.log_metrics(_numeric(flatten({k: v for k, v in metrics.items() if k != "history"})))
            for step, epoch in enumerate(metrics.get("history") or []):
                mlflow.log_metrics(_numeric(flatten({"history": epoch})), step=step)


def _import_mlflow(uri: str):
    try:
        return importlib.import_module("mlflow")
    except ModuleNotFoundError as exc:
        raise TrackingError(
            f"tracking URI {uri!r} is configured (experiment 'tracking_uri' or MLFLOW_TRACKING_URI) but mlflow "
            "is not installed: run `pip install mlflow`, or unset the tracking URI"
        ) from exc


def _numeric(flat: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in flat.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[key.replace("@", "_at_")] = float(value)
    return out
