"""The experiment file: a typed, validated description of a sweep (see conf/experiments/*.yaml).

Every error names the experiment file, the key and the bad value (ConfigError, as for --config files).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvr.config import CONF_DIR, ConfigError, TrainConfig, from_dict, read_yaml

REPO_DIR = CONF_DIR.parent
DATA_SOURCES = ("simulate", "existing")
PRESETS = ("default", "sparse")
LAUNCHERS = ("auto", "spark")
# Train fields the runner sets itself; a grid may not sweep them.
RUNNER_OWNED_TRAIN_FIELDS = ("model", "seed", "np", "model_overrides", "train_days", "valid_days", "output")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class DataSpec:
    source: str = "simulate"  # simulate: run the pipeline stages once per preset | existing: tables under --root
    preset: list[str] = field(default_factory=lambda: ["default"])  # one data variant per preset
    days: int = 3
    holdout_days: int = 1  # the last N simulated days are the validation days
    impressions_per_day: int = 20000
    start_date: str = "2026-01-01"
    seed: int = 7
    train_ds: list[str] = field(default_factory=list)  # source: existing
    valid_ds: list[str] = field(default_factory=list)  # source: existing


@dataclass
class ExperimentSpec:
    name: str = ""
    description: str = ""
    base_config: str = ""  # a --config style YAML; relative paths are tried from the cwd, then the repository
    base: dict[str, Any] = field(default_factory=dict)  # config overrides on top (same layout as a --config file)
    data: DataSpec = field(default_factory=DataSpec)
    grid: list[dict[str, Any]] = field(default_factory=list)  # union of cartesian products, one per mapping
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    paired_baseline: str = "esmm"
    np: int = 1  # Horovod ranks per trial
    launcher: str = "auto"  # auto: one process, or horovodrun when np > 1 | spark: horovod.spark.run on executors
    tracking_uri: str = ""  # MLflow; "local" = file store under <root>/mlruns; env MLFLOW_TRACKING_URI also works
    source: str = ""  # the file it was read from (set by the loader)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_experiment(path: str | Path) -> ExperimentSpec:
    """Read and validate an experiment YAML file."""
    data = read_yaml(path)
    return experiment_from_dict(data, str(path))


def experiment_from_dict(data: dict[str, Any], source: str = "<experiment>") -> ExperimentSpec:
    data = dict(data)
    where = f"{source}:"
    if "source" in data:
        raise ConfigError(f"{where} key 'source' is reserved")
    if isinstance(data.get("seeds"), int) and not isinstance(data.get("seeds"), bool):
        count = data["seeds"]
        if count < 1:
            raise ConfigError(f"{where} key 'seeds' expected a count >= 1 or a list of ints, got {count!r}")
        data["seeds"] = list(range(1, count + 1))
    if isinstance(data.get("grid"), dict):
        data["grid"] = [data["grid"]]
    if isinstance(data.get("data"), dict) and isinstance(data["data"].get("preset"), str):
        data["data"] = {**data["data"], "preset": [data["data"]["preset"]]}
    spec = from_dict(ExperimentSpec, data, where)
    spec.source = source
    _validate(spec, where)
    spec.grid = [_normalise_axes(axes, f"{where} grid[{i}]") for i, axes in enumerate(spec.grid)]
    return spec


def _validate(spec: ExperimentSpec, where: str) -> None:
    if not NAME_PATTERN.match(spec.name):
        raise ConfigError(f"{where} key 'name' expected letters, digits, '_', '-' or '.', got {spec.name!r}")
    data = spec.data
    checks = [
        (data.source in DATA_SOURCES, "data.source", f"one of {DATA_SOURCES}", data.source),
        (bool(data.preset) and all(p in PRESETS for p in data.preset), "data.preset", f"a list of {PRESETS}", data.preset),
        (data.days >= 2, "data.days", "an integer >= 2 (train and holdout days)", data.days),
        (1 <= data.holdout_days < data.days, "data.holdout_days", "an integer in [1, data.days)", data.holdout_days),
        (data.impressions_per_day >= 100, "data.impressions_per_day", "an integer >= 100", data.impressions_per_day),
        (bool(spec.seeds) and len(set(spec.seeds)) == len(spec.seeds), "seeds", "a count or a list of distinct ints", spec.seeds),
        (spec.np >= 1, "np", "an integer >= 1", spec.np),
        (spec.launcher in LAUNCHERS, "launcher", f"one of {LAUNCHERS}", spec.launcher),
        (bool(spec.grid), "grid", "a mapping (or list of mappings) of axes, e.g. {model: [esmm, cl4cvr]}", spec.grid),
        (bool(spec.paired_baseline), "paired_baseline", "a model name", spec.paired_baseline),
    ]  # fmt: skip
    if data.source == "existing":
        checks.append(
            (bool(data.train_ds), "data.train_ds", "a non-empty list of ds for source 'existing'", data.train_ds)
        )
        checks.append(
            (bool(data.valid_ds), "data.valid_ds", "a non-empty list of ds for source 'existing'", data.valid_ds)
        )
    for ok, key, expected, value in checks:
        if not ok:
            raise ConfigError(f"{where} key '{key}' expected {expected}, got {value!r}")


def _normalise_axes(axes: Any, where: str) -> dict[str, list[Any]]:
    """Check one grid mapping: `model` is required, every value becomes a non-empty list."""
    if not isinstance(axes, dict):
        raise ConfigError(f"{where}: expected a mapping of axis -> values, got {type(axes).__name__} {axes!r}")
    if "model" not in axes:
        raise ConfigError(f"{where}: key 'model' is required (a model name or a list of conf/models names)")
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    out: dict[str, list[Any]] = {}
    for key, values in axes.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{where}: axis names must be strings, got {key!r}")
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ConfigError(f"{where}.{key}: expected at least one value, got []")
        if key.startswith("train."):
            name = key.removeprefix("train.")
            if name not in train_fields or name in RUNNER_OWNED_TRAIN_FIELDS:
                allowed = sorted(train_fields - set(RUNNER_OWNED_TRAIN_FIELDS))
                raise ConfigError(
                    f"{where}: axis '{key}' is not a sweepable train field (one of: {', '.join(allowed)})"
                )
        if key == "model" and not all(isinstance(v, str) and v for v in values):
            raise ConfigError(f"{where}.model: expected model names, got {values!r}")
        for value in values:
            if isinstance(value, dict | list):
                raise ConfigError(f"{where}.{key}: axis values must be scalars (use dotted keys), got {value!r}")
        out[key] = values
    return out


def resolve_path(path: str, source: str = "") -> Path:
    """Find a file named in an experiment: absolute, else from the cwd, else from the repository root."""
    candidate = Path(path)
    for option in (candidate, REPO_DIR / candidate):
        if option.is_file():
            return option
    raise ConfigError(f"{source or '<experiment>'}: key 'base_config' file not found: {path!r}")
