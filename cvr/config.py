"""Typed configuration: YAML files loaded into validated dataclasses.

Precedence (later wins): dataclass defaults < profile file (conf/profiles/<name>.yaml) < --config file
< explicit overrides (e.g. --root). Every error names the file, the dotted key and what was expected.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cvr.metrics.selection import parse_selector

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
PROFILES = ("local", "standalone", "cluster")


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message says where and what was expected."""


@dataclass
class SparkConfig:
    master: str = "local[*]"
    app_name: str = "cvr"
    shuffle_partitions: int = 8
    driver_memory: str = "4g"
    ui_enabled: bool = False
    log_level: str = "WARN"
    extra_conf: dict[str, str] = field(default_factory=dict)


@dataclass
class StorageConfig:
    root: str = "./data"
    format: str = "parquet"  # parquet | delta
    row_group_rows: int = 20000
    max_rows_per_file: int = 200000


@dataclass
class SimulateConfig:
    preset: str = "default"  # default | sparse
    start_date: str = "2026-01-01"
    days: int = 3
    impressions_per_day: int = 200000
    users: int = 20000
    items: int = 5000
    malformed_rate: float = 0.002
    seed: int = 7
    partitions: int = 8  # generator tasks per day
    # Funnel rates; None takes the preset's value (cvr.pipeline.simulate.PRESETS).
    target_ctr: float | None = None  # clicks per impression
    target_cvr: float | None = None  # purchases per click
    target_micro_rate: float | None = None  # P(any micro behaviour | click)
    target_macro_rate: float | None = None  # P(any macro behaviour | click)
    categories: int = 60
    shops: int = 800
    brands: int = 400
    latent_dim: int = 8
    repeat_exposure_rate: float = 0.15  # share of impressions drawn from the user's few favourite items
    late_conversion_share: float = 0.3  # purchases with a long (hours to days) delay
    late_conversion_mean_hours: float = 20.0


@dataclass
class SamplesConfig:
    attribution_window_days: int = 1
    max_clock_skew_seconds: int = 300
    table: str = "samples"  # output of build-samples
    # Up to this many used clicks, the day's per-impression event counts are broadcast into the samples join, so
    # the impressions are not shuffled (about 100 bytes a row on the driver and on every executor).
    broadcast_clicked_rows: int = 1_000_000
    aliccp_table: str = "aliccp_samples"  # output of ingest-aliccp


@dataclass
class FeaturesConfig:
    spec: str = "conf/features/default.yaml"  # relative paths: the working directory, then the repository
    samples_table: str = "samples"  # input of hash-features (aliccp_samples for Ali-CCP)
    table: str = "features"  # output of hash-features (the hashing spec is saved in it as _hashing_spec.json)


@dataclass
class TrainConfig:
    model: str = "esmm"  # name of conf/models/<model>.yaml or a path
    epochs: int = 2
    batch_size: int = 1024
    lr: float = 0.002
    optimizer: str = "adam"  # adam | adagrad
    weight_decay: float = 0.0
    grad_clip: float = 10.0
    np: int = 1
    seed: int = 123
    train_days: list[str] = field(default_factory=list)
    valid_days: list[str] = field(default_factory=list)
    early_stopping_patience: int = 2
    # validation metric that picks the best epoch and drives early stopping, TASK.METRIC. A proper scoring rule
    # by default: with a few hundred validation conversions the CVR AUC moves more by chance than by epoch.
    select_metric: str = "ctcvr.logloss"
    checkpoint_every_steps: int = 200
    shuffle_row_groups: bool = True
    reader_workers: int = 2
    sparse_gradients: bool = False
    threads_per_rank: int = 0  # 0 = cores / ranks
    bind_cores: bool = True  # CPU, several ranks per machine: pin each rank to cores of its own
    output: str = ""  # artifact folder; default <root>/models/<run>
    model_overrides: dict[str, Any] = field(default_factory=dict)  # deep-merged into the model YAML


@dataclass
class NightlyConfig:
    train_days: int = 3  # sliding training window: the days before the nightly ds
    tolerance: float = 0.005  # promote unless the new model's gate metric is worse by more than this
    gate_task: str = "cvr"  # ctr | cvr | ctcvr
    gate_metric: str = "auc"  # auc | gauc | oracle_auc (higher is better) | logloss | oracle_kl | calibration (|c - 1|, lower is better)
    keep_versions: int = 5  # registry versions kept (production is never deleted)
    warm_start: bool = True  # start from the production model's weights
    registry: str = ""  # default <root>/registry
    lock_stale_hours: float = 12.0  # a lock older than this is reclaimed even if its host cannot be checked
    launcher: str = "auto"  # auto: one process or local horovodrun ranks | spark: horovod.spark.run on executors


@dataclass
class ScoreConfig:
    table: str = "predictions"  # output table under the root
    arrow_batch_rows: int = 8192  # rows per Arrow batch handed to the model
    torch_threads: int = 1  # per Python worker; Spark already runs one worker per core


@dataclass
class Config:
    profile: str = "local"
    spark: SparkConfig = field(default_factory=SparkConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    nightly: NightlyConfig = field(default_factory=NightlyConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Stable short hash of the whole configuration (for checkpoints and lineage)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def root(self) -> Path:
        return Path(self.storage.root)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for section, got {type(value).__name__} {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[-1])
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return {_coerce(k, key_tp, where): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, datetime.date):  # YAML reads 2026-01-01 as a date
        return value.isoformat()
    if tp in (int, float, str, bool):
        if isinstance(value, bool) and tp is not bool:
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got bool {value!r}")
        if not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass `cls` from `data`; `where` is 'file: key' used in error messages."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key '{key}' (expected one of: {', '.join(sorted(known))})")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}" if not where.endswith(":") else f"{where} {key}")
    return cls(**kwargs)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "extra_conf":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _validate(cfg: Config, source: str) -> None:
    checks = [
        (cfg.profile in PROFILES, "profile", f"one of {PROFILES}", cfg.profile),
        (cfg.storage.format in ("parquet", "delta"), "storage.format", "'parquet' or 'delta'", cfg.storage.format),
        (cfg.simulate.preset in ("default", "sparse"), "simulate.preset", "'default' or 'sparse'", cfg.simulate.preset),
        (cfg.simulate.days >= 1, "simulate.days", "an integer >= 1", cfg.simulate.days),
        (0 <= cfg.simulate.malformed_rate < 0.5, "simulate.malformed_rate", "a rate in [0, 0.5)", cfg.simulate.malformed_rate),
        (cfg.train.np >= 1, "train.np", "an integer >= 1", cfg.train.np),
        (cfg.train.batch_size >= 2, "train.batch_size", "an integer >= 2", cfg.train.batch_size),
        (cfg.train.lr > 0, "train.lr", "a learning rate > 0", cfg.train.lr),
        (cfg.train.optimizer in ("adam", "adagrad"), "train.optimizer", "'adam' or 'adagrad'", cfg.train.optimizer),
        (cfg.samples.attribution_window_days >= 0, "samples.attribution_window_days", "an integer >= 0", cfg.samples.attribution_window_days),
        (cfg.samples.broadcast_clicked_rows >= 0, "samples.broadcast_clicked_rows", "an integer >= 0", cfg.samples.broadcast_clicked_rows),
    ]  # fmt: skip
    for ok, key, expected, value in checks:
        if not ok:
            raise ConfigError(f"{source}: key '{key}' expected {expected}, got {value!r}")
    try:
        parse_selector(cfg.train.select_metric, f"{source}: key 'train.select_metric'")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.profile == "standalone" and not cfg.spark.master.startswith("spark://"):
        raise ConfigError(
            f"{source}: key 'spark.master' expected a spark:// URL for profile standalone, got {cfg.spark.master!r}"
        )


def load_config(
    path: str | os.PathLike | None = None,
    profile: str | None = None,
    root: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Load defaults, then the profile, then the file at `path`, then `overrides` and `root`."""
    file_data = read_yaml(path) if path else {}
    profile = profile or os.environ.get("CVR_PROFILE") or file_data.get("profile") or "local"
    if profile not in PROFILES:
        raise ConfigError(f"--profile: expected one of {PROFILES}, got {profile!r}")
    profile_path = CONF_DIR / "profiles" / f"{profile}.yaml"
    merged: dict[str, Any] = {}
    sources = []
    if profile_path.is_file():
        merged = _merge(merged, read_yaml(profile_path))
        sources.append(str(profile_path))
    if path:
        merged = _merge(merged, file_data)
        sources.append(str(path))
    merged["profile"] = profile
    if overrides:
        merged = _merge(merged, overrides)
    if root:
        merged = _merge(merged, {"storage": {"root": root}})
    source = " + ".join(sources) or "<defaults>"
    # Validate each file on its own first so errors name the file that holds the bad key.
    for src in sources:
        from_dict(Config, {**read_yaml(src), "profile": profile}, f"{src}:")
    cfg = from_dict(Config, merged, f"{source}:")
    _validate(cfg, source)
    return cfg
