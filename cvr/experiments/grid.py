"""Expand an experiment into trials: (data variant x grid point x seed), each with a stable id.

A trial id is a hash of the trial's parameters only (canonical JSON, sorted keys), so the same point of
a sweep keeps its id across runs, machines and key orders; that id is what makes sweeps resumable.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

from cvr.config import Config
from cvr.experiments.spec import ExperimentSpec, resolve_path

ID_LENGTH = 12
# Train fields that change how a trial runs, not what it computes; they stay out of trial ids.
EXECUTION_ONLY_TRAIN_FIELDS = ("np", "output", "reader_workers", "threads_per_rank", "checkpoint_every_steps")


@dataclass(frozen=True)
class Trial:
    trial_id: str
    group_id: str  # same for all seeds of one (data, model, overrides) point
    params: dict[str, Any]

    @property
    def model(self) -> str:
        return self.params["model"]

    @property
    def seed(self) -> int:
        return self.params["seed"]

    @property
    def data_label(self) -> str:
        return self.params["data"]["preset"]

    @property
    def variant(self) -> str:
        """Human label of the non-model axes, e.g. 'contrastive.alpha=0.01'; '' for the model's defaults."""
        settings = {**self.params["model_overrides"], **{f"train.{k}": v for k, v in self.params["train"].items()}}
        return ", ".join(f"{key}={value}" for key, value in sorted(settings.items()))


def stable_hash(obj: Any, length: int = ID_LENGTH) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def base_digest(spec: ExperimentSpec, base_cfg: Config | None = None) -> str:
    """Hash of the settings trials start from, so editing the base re-runs trials instead of reusing them.

    With the resolved base Config (what the runner passes: --config or base_config, profile, `base`), the
    hash covers its data and training sections minus execution-only fields; without it, the spec's own text.
    """
    if base_cfg is None:
        text = resolve_path(spec.base_config, spec.source).read_text() if spec.base_config else ""
        return stable_hash({"base_config_text": text, "base": spec.base})
    cfg = base_cfg.to_dict()
    train = {k: v for k, v in cfg["train"].items() if k not in EXECUTION_ONLY_TRAIN_FIELDS}
    return stable_hash(
        {"simulate": cfg["simulate"], "samples": cfg["samples"], "features": cfg["features"], "train": train}
    )


def data_params(spec: ExperimentSpec, preset: str) -> dict[str, Any]:
    data = spec.data
    if data.source == "existing":
        return {"source": "existing", "preset": "existing", "train_ds": data.train_ds, "valid_ds": data.valid_ds}
    return {
        "source": "simulate",
        "preset": preset,
        "days": data.days,
        "holdout_days": data.holdout_days,
        "impressions_per_day": data.impressions_per_day,
        "start_date": data.start_date,
        "seed": data.seed,
    }


def grid_points(spec: ExperimentSpec) -> list[dict[str, Any]]:
    """Every grid point (a mapping axis -> value) of the union of products, duplicates removed, order kept."""
    points: list[dict[str, Any]] = []
    seen: set[str] = set()
    for axes in spec.grid:
        keys = list(axes)
        for values in itertools.product(*(axes[k] for k in keys)):
            point = dict(zip(keys, values, strict=True))
            key = stable_hash(point)
            if key not in seen:
                seen.add(key)
                points.append(point)
    return points


def expand_trials(spec: ExperimentSpec, base_cfg: Config | None = None) -> list[Trial]:
    """All trials of the experiment in run order: data variant, then grid point, then seed."""
    digest = base_digest(spec, base_cfg)
    presets = spec.data.preset if spec.data.source == "simulate" else ["existing"]
    trials = []
    for preset in presets:
        for point in grid_points(spec):
            group = {
                "base": digest,
                "data": data_params(spec, preset),
                "model": point["model"],
                "model_overrides": {k: v for k, v in point.items() if k != "model" and not k.startswith("train.")},
                "train": {k.removeprefix("train."): v for k, v in point.items() if k.startswith("train.")},
            }
            group_id = stable_hash(group)
            for seed in spec.seeds:
                params = {**group, "seed": seed}
                trials.append(Trial(trial_id=stable_hash(params), group_id=group_id, params=params))
    return trials


def nest_dotted(flat: dict[str, Any]) -> dict[str, Any]:
    """{'contrastive.alpha': 0.1} -> {'contrastive': {'alpha': 0.1}} (the model_overrides layout)."""
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override '{dotted}' conflicts with the scalar override '{part}'")
            node = child
        if isinstance(node.get(leaf), dict):
            raise ValueError(f"override '{dotted}' conflicts with nested overrides below it")
        node[leaf] = value
    return nested
