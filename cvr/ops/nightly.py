"""`cvr nightly --ds D`: one day's retraining as resumable stages behind a per-day lock, ending in a promotion gate.

Stages, in order (each records completion in <root>/nightly/<ds>/state.json before the next starts):
  check_events   D's impressions partition exists (days without clicks or conversions are logged, not fatal)
  build_samples  D plus the earlier days whose attribution window is still open (and missing training days)
  hash_features  the same days
  train          warm-started from the production model, on the nightly.train_days days before D
  evaluate       new and production model on the same held-out day D
  promote        register the new model; make it production unless its gate metric is worse beyond tolerance
Set CVR_NIGHTLY_FAIL_STAGE=<stage> to make that stage fail midway (for testing the resume path).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from cvr.config import Config, ConfigError
from cvr.metrics.selection import HIGHER_IS_BETTER, comparable, improvement
from cvr.ops.locks import FileLock
from cvr.ops.registry import ModelRegistry, registry_for
from cvr.ops.state import StageState

STAGES = ("check_events", "build_samples", "hash_features", "train", "evaluate", "promote")
EVENT_TABLES = ("impressions", "clicks", "behaviours", "conversions")
FAIL_ENV = "CVR_NIGHTLY_FAIL_STAGE"
DS_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class NightlyError(RuntimeError):
    """The nightly run cannot continue; the message says which stage, table or day is the problem."""


class InjectedFailure(RuntimeError):
    """Raised by a stage named in CVR_NIGHTLY_FAIL_STAGE (tests of the crash-and-resume path)."""


def parse_ds(ds: str) -> dt.date:
    try:
        if not DS_PATTERN.match(ds):
            raise ValueError(ds)
        return dt.date.fromisoformat(ds)
    except ValueError as exc:
        raise NightlyError(f"--ds: expected a date YYYY-MM-DD, got {ds!r}") from exc


def shift(ds: str, days: int) -> str:
    return (parse_ds(ds) + dt.timedelta(days=days)).isoformat()


def validate_nightly_config(cfg: Config) -> None:
    n = cfg.nightly
    checks = [
        (n.train_days >= 1, "nightly.train_days", "an integer >= 1", n.train_days),
        (n.tolerance >= 0, "nightly.tolerance", "a number >= 0", n.tolerance),
        (n.gate_task in ("ctr", "cvr", "ctcvr"), "nightly.gate_task", "'ctr', 'cvr' or 'ctcvr'", n.gate_task),
        (n.gate_metric in HIGHER_IS_BETTER, "nightly.gate_metric", f"one of {sorted(HIGHER_IS_BETTER)}", n.gate_metric),
        (n.keep_versions >= 1, "nightly.keep_versions", "an integer >= 1", n.keep_versions),
        (n.launcher in ("auto", "spark"), "nightly.launcher", "'auto' or 'spark'", n.launcher),
    ]  # fmt: skip
    for ok, key, expected, value in checks:
        if not ok:
            raise ConfigError(f"key '{key}' expected {expected}, got {value!r}")


def gate_decision(new: dict, production: dict | None, task: str, metric: str, tolerance: float) -> tuple[bool, str]:
    """(promote?, why). Calibration counts as |value - 1| (1 = perfectly calibrated)."""
    if production is None:
        return True, "no production model yet"
    new_value, prod_value = _metric(new, task, metric), _metric(production, task, metric)
    name = f"{task} {metric}"
    if new_value is None:
        return False, f"new model has no finite {name} on the held-out day"
    if prod_value is None:
        return True, f"production model has no finite {name}; new {name} = {new_value:.5f}"
    delta = improvement(metric, new_value, prod_value)
    new_value, prod_value = comparable(metric, new_value), comparable(metric, prod_value)  # as delta compares them
    if metric == "calibration":
        name = f"{task} |calibration - 1|"
    detail = f"{name}: new {new_value:.5f} vs production {prod_value:.5f} (change {delta:+.5f}, tolerance {tolerance})"
    if delta < -tolerance:
        return False, f"new model worse beyond tolerance; {detail}"
    return True, f"new model not worse beyond tolerance; {detail}"


def _metric(metrics: dict, task: str, metric: str) -> float | None:
    value = metrics.get(task, {}).get(metric)
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


class NightlyRun:
    """The stages of one nightly day; `run()` executes those not yet done and returns the state."""

    def __init__(self, spark, cfg: Config, ds: str):
        validate_nightly_config(cfg)
        parse_ds(ds)
        self.spark, self.cfg, self.ds = spark, cfg, ds
        self.dir = Path(cfg.storage.root) / "nightly" / ds
        self.registry: ModelRegistry = registry_for(cfg)
        self.log = logging.getLogger(f"cvr.nightly.{ds}")
        self.state: StageState | None = None
        self._current_stage = ""

    # ---- driver ----------------------------------------------------------------------------------------------
    def run(self, until: str | None = None) -> dict[str, Any]:
        """Run the stages not yet done; `until` stops after that stage (status 'partial')."""
        if until is not None and until not in STAGES:
            raise NightlyError(f"--until: unknown stage {until!r}; stages are {', '.join(STAGES)}")
        self.dir.mkdir(parents=True, exist_ok=True)
        handlers = _attach_log_handlers(self.log, self.dir / "nightly.log", self.ds)
        try:
            lock = FileLock(self.dir / "lock", max_age_seconds=self.cfg.nightly.lock_stale_hours * 3600)
            with lock:
                if lock.reclaimed:
                    self.log.warning("reclaimed stale lock of pid %s on %s", lock.reclaimed.get("pid"),
                                     lock.reclaimed.get("host"))  # fmt: skip
                return self._run_locked(until)
        finally:
            _detach_log_handlers(self.log, handlers)

    def _run_locked(self, until: str | None) -> dict[str, Any]:
        self.state = StageState(self.dir / "state.json", {"ds": self.ds})
        if self.state.data["status"] == "succeeded":
            self.log.info("nightly already succeeded for ds=%s; nothing to do", self.ds)
            return {**self.state.data, "already_done": True}
        host = socket.gethostname()
        self.log.info("nightly start ds=%s pid=%s host=%s root=%s", self.ds, os.getpid(), host, self.cfg.storage.root)
        started = time.monotonic()
        for stage in STAGES:
            if self.state.is_done(stage):
                self.log.info("stage %s already done; skipping", stage)
                continue
            self._run_stage(stage)
            if stage == until:
                self.state.set_status("partial")
                self.log.info("stopping after stage %s as asked (--until)", stage)
                return {**self.state.data, "already_done": False}
        summary = self.state.result("promote")
        self.state.set_status("succeeded", finished=time.time())
        self.log.info("nightly end ds=%s seconds=%.1f promoted=%s version=%s reason=%s", self.ds,
                      time.monotonic() - started, summary.get("promoted"), summary.get("version"),
                      summary.get("reason"))  # fmt: skip
        return {**self.state.data, "already_done": False}

    def _run_stage(self, stage: str) -> None:
        self._current_stage = stage
        self.log.info("stage %s start", stage)
        self.state.mark_started(stage)
        started = time.monotonic()
        try:
            result = getattr(self, f"stage_{stage}")()
        except BaseException as exc:
            seconds = time.monotonic() - started
            self.state.mark_failed(stage, f"{type(exc).__name__}: {exc}", seconds)
            self.log.error("stage %s failed seconds=%.1f error=%s: %s", stage, seconds, type(exc).__name__, exc,
                           exc_info=not isinstance(exc, (NightlyError, InjectedFailure)))  # fmt: skip
            raise
        seconds = time.monotonic() - started
        self.state.mark_done(stage, result, seconds)
        self.log.info("stage %s end seconds=%.1f", stage, seconds)

    def checkpoint(self, what: str) -> None:
        """Called between units of work inside a stage; the fault injector fails here, i.e. midway."""
        self.log.info("stage %s progress: %s", self._current_stage, what)
        if os.environ.get(FAIL_ENV) == self._current_stage:
            raise InjectedFailure(f"{FAIL_ENV}={self._current_stage}: injected failure after {what}")

    # ---- stages ----------------------------------------------------------------------------------------------
    def stage_check_events(self) -> dict[str, Any]:
        from cvr.storage.tables import list_partitions, table_exists, table_path

        root = self.cfg.storage.root
        if not table_exists(root, "impressions"):
            raise NightlyError(f"check_events: table 'impressions' not found at {table_path(root, 'impressions')}")
        present = {t: table_exists(root, t) and self.ds in list_partitions(root, t) for t in EVENT_TABLES}
        if not present["impressions"]:
            raise NightlyError(
                f"check_events: table 'impressions' has no partition ds={self.ds} at "
                f"{table_path(root, 'impressions')}; the day's events have not landed"
            )
        for table, ok in present.items():
            if not ok:
                self.log.warning("table %s has no partition ds=%s (treated as no events)", table, self.ds)
        return {"partitions_present": present}

    def _days_to_build(self) -> list[str]:
        from cvr.storage.tables import list_partitions, table_exists

        root = self.cfg.storage.root
        window = self.cfg.samples.attribution_window_days
        open_days = {shift(self.ds, -k) for k in range(window + 1)}
        have_features = (
            set(list_partitions(root, self.features_table)) if table_exists(root, self.features_table) else set()
        )
        missing_train_days = {d for d in self.train_window() if d not in have_features}
        impressions = set(list_partitions(root, "impressions"))
        return sorted((open_days | missing_train_days) & impressions)

    def stage_build_samples(self) -> dict[str, Any]:
        from cvr.pipeline.stages import run_build_samples

        return self._per_day(run_build_samples, self._days_to_build(), "samples built")

    def stage_hash_features(self) -> dict[str, Any]:
        from cvr.pipeline.stages import run_hash_features

        return self._per_day(run_hash_features, self.state.result("build_samples")["days"], "features hashed")

    def _per_day(self, run_stage, days: list[str], done: str) -> dict[str, Any]:
        """run_stage(spark, cfg, day) for each day, with a checkpoint after each: {days, reports}."""
        reports = {}
        for day in days:
            reports[day] = _compact(run_stage(self.spark, self.cfg, day))
            self.checkpoint(f"{done} for ds={day}")
        return {"days": days, "reports": reports}

    def stage_train(self) -> dict[str, Any]:
        from cvr.storage.tables import list_partitions
        from cvr.train.api import run_training

        have = set(list_partitions(self.cfg.storage.root, self.features_table))
        train_days = [d for d in self.train_window() if d in have]
        if not train_days:
            raise NightlyError(
                f"train: no features partitions in the window {self.train_window()} of table "
                f"'{self.features_table}'; need at least one day of history before ds={self.ds}"
            )
        production = self.registry.production() if self.cfg.nightly.warm_start else None
        production_version = self.registry.production_version() if production else None
        output = self.dir / "model"
        # A retry continues from the crashed attempt's latest checkpoint in the same folder (same job hash).
        resume = self.state.data["stages"]["train"]["attempts"] > 1
        train_cfg = dataclasses.replace(
            self.cfg,
            train=dataclasses.replace(self.cfg.train, train_days=train_days, valid_days=[self.ds], output=str(output)),
        )
        self.log.info("training on %s, validating on %s, warm start from %s", train_days, self.ds,
                      f"v{production_version} {production}" if production else "scratch")  # fmt: skip
        self.checkpoint("training configured")
        launcher = self.cfg.nightly.launcher
        result = run_training(train_cfg, warm_start=str(production) if production else None, output_dir=str(output),
                              resume=resume, launcher=launcher,
                              spark=self.spark if launcher == "spark" else None)  # fmt: skip
        return {"artifact_dir": str(result.artifact_dir), "train_days": train_days, "warm_start_version":
                production_version, "resumed": resume, "train_metrics": result.metrics,
                "trained_at": time.time()}  # fmt: skip

    def stage_evaluate(self) -> dict[str, Any]:
        evaluate_artifact = _evaluate_artifact_fn()
        new_dir = self.state.result("train")["artifact_dir"]
        new_metrics = evaluate_artifact(self.cfg, new_dir, [self.ds])
        self.checkpoint("new model evaluated")
        production_version = self.registry.production_version()
        production_metrics = None
        if production_version is not None:
            production_metrics = evaluate_artifact(self.cfg, self.registry.path(production_version), [self.ds])
        return {"held_out_day": self.ds, "new": new_metrics, "production": production_metrics,
                "production_version": production_version}  # fmt: skip

    def stage_promote(self) -> dict[str, Any]:
        n = self.cfg.nightly
        train, evaluation = self.state.result("train"), self.state.result("evaluate")
        run_id = f"nightly-{self.ds}-{train['trained_at']:.3f}"
        version = self.registry.register(train["artifact_dir"], run_id=run_id, note=f"nightly ds={self.ds}")
        self.checkpoint(f"registered as version {version}")
        promote, reason = gate_decision(evaluation["new"], evaluation["production"], n.gate_task, n.gate_metric,
                                        n.tolerance)  # fmt: skip
        if promote and self.registry.production_version() != version:
            self.registry.promote(version, f"nightly ds={self.ds}: {reason}", metrics=evaluation["new"])
        level = logging.INFO if promote else logging.WARNING
        self.log.log(level, "gate: %s version %s; %s", "PROMOTED" if promote else "KEPT PRODUCTION, rejected", version,
                     reason)  # fmt: skip
        return {"version": version, "promoted": promote, "reason": reason,
                "production_version": self.registry.production_version()}  # fmt: skip

    # ---- helpers ---------------------------------------------------------------------------------------------
    @property
    def features_table(self) -> str:
        return self.cfg.features.table

    def train_window(self) -> list[str]:
        return [shift(self.ds, -k) for k in range(self.cfg.nightly.train_days, 0, -1)]


def run_nightly(spark, cfg: Config, ds: str, until: str | None = None) -> dict[str, Any]:
    """Run (or resume) the nightly stages for `ds`; returns the state dict (already_done=True if nothing to do)."""
    return NightlyRun(spark, cfg, ds).run(until=until)


def _evaluate_artifact_fn():
    """evaluate_artifact lives in cvr.train.evaluate per the contract; the trainer currently defines it in api."""
    try:
        from cvr.train.evaluate import evaluate_artifact
    except ModuleNotFoundError:
        from cvr.train.api import evaluate_artifact
    return evaluate_artifact


def _compact(report: Any) -> Any:
    """Stage reports go into state.json; keep them JSON-able and small."""
    if isinstance(report, dict):
        return {k: v for k, v in report.items() if isinstance(v, (str, int, float, bool, type(None), dict, list))}
    return report


class _UtcFormatter(logging.Formatter):
    converter = time.gmtime


def _attach_log_handlers(log: logging.Logger, path: Path, ds: str) -> list[logging.Handler]:
    fmt = _UtcFormatter(f"%(asctime)sZ %(levelname)s nightly ds={ds} %(message)s", "%Y-%m-%dT%H:%M:%S")
    handlers: list[logging.Handler] = [logging.FileHandler(path), logging.StreamHandler()]
    for handler in handlers:
        handler.setFormatter(fmt)
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # our own stderr handler already prints; avoid doubled lines via the root logger
    return handlers


def _detach_log_handlers(log: logging.Logger, handlers: list[logging.Handler]) -> None:
    for handler in handlers:
        log.removeHandler(handler)
        handler.close()
