"""Run an experiment: make its data once, train every pending trial through the users' training path, report.

Layout under the table root (cfg.storage.root):
  experiments/_data/<preset>-<data id>/        tables made by the real pipeline stages, shared by experiments
  experiments/<name>/<trial id>/params.json    what the trial is (written first)
  experiments/<name>/<trial id>/artifact/      the model artifact from run_training
  experiments/<name>/<trial id>/metrics.json   its metrics (with the per-epoch 'history')
  experiments/<name>/<trial id>/DONE           written last: a trial with DONE is skipped on re-runs
  experiments/<name>/report.md, results.csv, summary.csv, paired.csv, plots/*.png
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvr.config import Config, ConfigError, load_config
from cvr.experiments.grid import Trial, expand_trials, nest_dotted, stable_hash
from cvr.experiments.spec import ExperimentSpec, resolve_path
from cvr.experiments.stats import reliability_bins
from cvr.experiments.tracking import Tracker, resolve_tracking_uri
from cvr.storage.tables import write_json_atomic

log = logging.getLogger("cvr.experiments")

EXPERIMENTS_DIR = "experiments"
SHARED_DATA_DIR = "_data"
DONE_MARKER = "DONE"
DATA_MARKER = "_experiment_data.json"

TrainFn = Callable[[Config, Path], dict[str, Any]]
DataFn = Callable[[Config, list[str]], dict[str, Any]]


@dataclass
class TrialOutcome:
    trial: Trial
    status: str  # done (this run) | skipped (done before) | failed | pending (not run: --max-trials)
    path: Path
    error: str = ""


@dataclass
class ExperimentRun:
    spec: ExperimentSpec
    directory: Path
    outcomes: list[TrialOutcome] = field(default_factory=list)
    report: Path | None = None

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def failed(self) -> list[TrialOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def base_config(
    spec: ExperimentSpec, *, config_path: str | None = None, profile: str | None = None, root: str | None = None
) -> Config:
    """The configuration every trial starts from: --config (or the experiment's base_config) + its `base` overrides."""
    path = config_path or (str(resolve_path(spec.base_config, spec.source)) if spec.base_config else None)
    return load_config(path, profile=profile, root=root, overrides=spec.base or None)


def data_days(spec: ExperimentSpec) -> tuple[list[str], list[str]]:
    """(train days, validation days) of the experiment's data."""
    data = spec.data
    if data.source == "existing":
        return list(data.train_ds), list(data.valid_ds)
    try:
        start = dt.date.fromisoformat(data.start_date)
    except ValueError as exc:
        raise ConfigError(f"{spec.source}: key 'data.start_date' expected YYYY-MM-DD, got {data.start_date!r}") from exc
    days = [(start + dt.timedelta(days=i)).isoformat() for i in range(data.days)]
    return days[: -data.holdout_days], days[-data.holdout_days :]


def trial_config(base: Config, spec: ExperimentSpec, trial: Trial) -> Config:
    """The full Config of one trial: data settings, its data root, model, overrides and seed on top of `base`."""
    cfg = base.to_dict()
    data = trial.params["data"]
    train_ds, valid_ds = data_days(spec)
    if data["source"] == "simulate":
        cfg["simulate"].update(
            preset=data["preset"],
            days=data["days"],
            impressions_per_day=data["impressions_per_day"],
            start_date=data["start_date"],
            seed=data["seed"],
        )
    model_overrides = _deep_merge(
        cfg["train"].get("model_overrides") or {}, nest_dotted(trial.params["model_overrides"])
    )
    cfg["train"].update(trial.params["train"])
    cfg["train"].update(
        model=trial.model,
        seed=trial.seed,
        np=spec.np,
        model_overrides=model_overrides,
        train_days=train_ds,
        valid_days=valid_ds,
        output="",
    )
    if data["source"] == "simulate":
        cfg["storage"]["root"] = str(shared_data_root(base, cfg))
    return load_config(profile=base.profile, overrides=cfg)


def shared_data_root(base: Config, cfg_dict: dict[str, Any]) -> Path:
    """Where a data variant lives: one folder per distinct (simulate, samples, features, format) settings."""
    key = {k: cfg_dict[k] for k in ("simulate", "samples", "features")}
    key["format"] = cfg_dict["storage"]["format"]
    label = f"{cfg_dict['simulate']['preset']}-{stable_hash(key, 10)}"
    return Path(base.storage.root) / EXPERIMENTS_DIR / SHARED_DATA_DIR / label


def experiment_dir(base: Config, spec: ExperimentSpec) -> Path:
    return Path(base.storage.root) / EXPERIMENTS_DIR / spec.name


def is_trial_done(path: Path, trial: Trial) -> bool:
    """Finished = DONE marker present and params.json names this very trial."""
    if not (path / DONE_MARKER).is_file() or not (path / "params.json").is_file():
        return False
    try:
        return json.loads((path / "params.json").read_text()).get("trial_id") == trial.trial_id
    except json.JSONDecodeError:
        return False


def run_experiment(
    spec: ExperimentSpec,
    *,
    config_path: str | None = None,
    profile: str | None = None,
    root: str | None = None,
    max_trials: int | None = None,
    dry_run: bool = False,
    spark=None,
    train_fn: TrainFn | None = None,
    data_fn: DataFn | None = None,
    write_report: bool = True,
) -> ExperimentRun:
    """Run the pending trials of `spec` (at most `max_trials`), skip finished ones, then write the report."""
    base = base_config(spec, config_path=config_path, profile=profile, root=root)
    trials = expand_trials(spec, base)
    configs = {t.trial_id: trial_config(base, spec, t) for t in trials}
    check_model_configs(spec, trials, configs)
    run = ExperimentRun(spec=spec, directory=experiment_dir(base, spec))
    tracker = Tracker(resolve_tracking_uri(spec.tracking_uri, base.storage.root), spec.name)
    if not dry_run:
        run.directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            run.directory / "experiment.json", {"spec": spec.to_dict(), "trials": [t.trial_id for t in trials]}
        )
    train_fn = train_fn or _api_trainer(spec.launcher, spark)
    data_fn = data_fn or (lambda cfg, days: ensure_data(cfg, days, source=spec.data.source, spark=spark))
    prepared: set[str] = set()
    budget = max_trials if max_trials is not None else len(trials)
    for trial in trials:
        path = run.directory / trial.trial_id
        if is_trial_done(path, trial):
            run.outcomes.append(TrialOutcome(trial, "skipped", path))
            continue
        if dry_run or budget <= 0:
            run.outcomes.append(TrialOutcome(trial, "pending", path))
            continue
        budget -= 1
        cfg = configs[trial.trial_id]
        if cfg.storage.root not in prepared:
            data_fn(cfg, cfg.train.train_days + cfg.train.valid_days)
            prepared.add(cfg.storage.root)
        run.outcomes.append(_run_one(trial, cfg, path, train_fn, tracker))
    if write_report and not dry_run:
        from cvr.experiments.report import write_experiment_report

        run.report = write_experiment_report(run.directory, spec, trials)
    return run


def _run_one(trial: Trial, cfg: Config, path: Path, train_fn: TrainFn, tracker: Tracker) -> TrialOutcome:
    log.info("trial %s: %s seed=%s %s on %s", trial.trial_id, trial.model, trial.seed, trial.variant, trial.data_label)
    path.mkdir(parents=True, exist_ok=True)
    for stale in (DONE_MARKER, "metrics.json", "error.txt"):
        (path / stale).unlink(missing_ok=True)
    record = {
        "trial_id": trial.trial_id,
        "group_id": trial.group_id,
        "params": trial.params,
        "config_digest": cfg.digest(),
    }
    write_json_atomic(path / "params.json", {**record, "config": cfg.to_dict()})
    started = time.time()
    try:
        metrics = train_fn(cfg, path / "artifact")
    except Exception:  # one failed trial must not stop the sweep; its traceback is kept beside it
        (path / "error.txt").write_text(traceback.format_exc())
        log.error("trial %s failed; traceback in %s", trial.trial_id, path / "error.txt")
        return TrialOutcome(trial, "failed", path, error=traceback.format_exc(limit=1).strip().splitlines()[-1])
    seconds = time.time() - started
    write_json_atomic(path / "metrics.json", metrics)
    tracker.log_trial(trial.trial_id, trial.params, metrics)
    write_json_atomic(
        path / DONE_MARKER, {"finished_at": dt.datetime.now(dt.UTC).isoformat(), "seconds": round(seconds, 3)}
    )
    log.info("trial %s done in %.1fs", trial.trial_id, seconds)
    return TrialOutcome(trial, "done", path)


def train_with_api(cfg: Config, output_dir: Path, *, launcher: str = "auto", spark=None) -> dict[str, Any]:
    """The users' training path: cvr.train.api.run_training (launches Horovod ranks itself when np > 1).

    A trial that crashed mid-training left checkpoints in its artifact folder; training resumes from them.
    """
    from cvr.train.api import run_training

    extra: dict[str, Any] = {"resume": (Path(output_dir) / "checkpoints").is_dir()}
    if launcher != "auto":
        extra.update(launcher=launcher, spark=spark or _spark_for(cfg))
    result = run_training(cfg, output_dir=str(output_dir), **extra)
    metrics = dict(result.metrics)
    artifact_metrics = Path(result.artifact_dir) / "metrics.json"
    if "history" not in metrics and artifact_metrics.is_file():
        metrics["history"] = json.loads(artifact_metrics.read_text()).get("history", [])
    metrics["reliability"] = validation_reliability(cfg, Path(result.artifact_dir))
    return metrics


def validation_reliability(cfg: Config, artifact_dir: Path) -> dict[str, Any]:
    """Score the validation days with the trained artifact and bin the predictions (for reliability plots)."""
    from cvr.storage import tables
    from cvr.train.api import score_files

    files = tables.table_files(cfg.storage.root, cfg.features.table, ds=cfg.train.valid_days)
    return reliability_bins(score_files(artifact_dir, files, workers=max(1, cfg.train.reader_workers)))


def _api_trainer(launcher: str, spark) -> TrainFn:
    return lambda cfg, output_dir: train_with_api(cfg, output_dir, launcher=launcher, spark=spark)


def _spark_for(cfg: Config):
    from cvr.session import build_spark

    return build_spark(cfg.spark, app_name="cvr-experiment")


def ensure_data(cfg: Config, days: list[str], *, source: str = "simulate", spark=None) -> dict[str, Any]:
    """Make the experiment's tables once with the real pipeline stages; later calls find the marker and return.

    source 'existing' makes nothing: it checks that the features table already holds `days`.
    """
    if source == "existing":
        return _check_existing_tables(cfg, days)
    root = Path(cfg.storage.root)
    marker = root / DATA_MARKER
    if marker.is_file():
        return json.loads(marker.read_text())
    from cvr.pipeline.simulate_stage import run_simulate
    from cvr.pipeline.stages import run_build_samples, run_hash_features

    spark = spark or _spark_for(cfg)
    log.info("making experiment data under %s (%s preset, %d days)", root, cfg.simulate.preset, len(days))
    reports: dict[str, Any] = {"simulate": run_simulate(spark, cfg), "build_samples": {}, "hash_features": {}}
    for ds in days:
        reports["build_samples"][ds] = run_build_samples(spark, cfg, ds)
    for ds in days:
        reports["hash_features"][ds] = run_hash_features(spark, cfg, ds)
    summary = {"days": days, "simulate": cfg.to_dict()["simulate"], "reports": reports}
    write_json_atomic(marker, summary)
    return summary


def _check_existing_tables(cfg: Config, days: list[str]) -> dict[str, Any]:
    """source: existing: the features table must already hold every day the experiment trains or validates on."""
    table = Path(cfg.storage.root) / "tables" / cfg.features.table
    missing = [ds for ds in days if not any(table.glob(f"ds={ds}*"))] if table.is_dir() else days
    if missing and not (table / "_delta_log").is_dir():
        raise ConfigError(
            f"data.source existing: table {table} has no partitions for ds {missing} (run the pipeline first)"
        )
    return {"days": days, "table": str(table)}


def check_model_configs(spec: ExperimentSpec, trials: list[Trial], configs: dict[str, Config]) -> None:
    """Fail before any training when a grid point names an unknown model or an override the model rejects."""
    try:
        from cvr.models import load_model_config
    except ModuleNotFoundError:
        log.warning("cvr.models is not available: model names and overrides were not checked")
        return
    checked: set[str] = set()
    for trial in trials:
        if trial.group_id in checked:
            continue
        checked.add(trial.group_id)
        cfg = configs[trial.trial_id]
        try:
            load_model_config(cfg.train.model, cfg.train.model_overrides or None)
        except (ValueError, FileNotFoundError, KeyError) as exc:
            raise ConfigError(f"{spec.source}: grid point model={trial.model} {trial.variant}: {exc}") from exc


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
