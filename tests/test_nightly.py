"""Nightly retraining: per-day lock, resumable stage state, promotion gate, and real multi-night runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from cvr.config import ConfigError, load_config
from cvr.ops.locks import FileLock, LockHeldError
from cvr.ops.nightly import STAGES, NightlyError, gate_decision, run_nightly, validate_nightly_config
from cvr.ops.state import StageState

HOLD_LOCK = """
import sys, time
from cvr.ops.locks import FileLock
FileLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def lock_holder():
    """Start a real process that takes a lock and keeps it; yields a function path -> process."""
    procs = []

    def start(path):
        proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "locked"
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---- locks -------------------------------------------------------------------------------------------------
def test_second_holder_is_refused_while_the_first_lives(tmp_path, lock_holder):
    path = tmp_path / "lock"
    holder = lock_holder(path)
    with pytest.raises(LockHeldError, match=f"pid {holder.pid} on host"):
        FileLock(path).acquire()
    holder.kill()
    holder.wait()
    with FileLock(path) as lock:  # the dead holder's lock is reclaimed
        assert lock.reclaimed["pid"] == holder.pid
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_stale_lock_of_dead_pid_is_reclaimed_and_fresh_foreign_host_lock_is_not(tmp_path):
    path = tmp_path / "lock"
    path.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "time": time.time()}))
    with FileLock(path) as lock:
        assert lock.reclaimed is not None
    path.write_text(json.dumps({"pid": 1, "host": "another-host", "time": time.time()}))
    with pytest.raises(LockHeldError, match="another-host"):
        FileLock(path).acquire()
    path.write_text(json.dumps({"pid": 1, "host": "another-host", "time": time.time() - 7200}))
    with FileLock(path, max_age_seconds=3600) as lock:
        assert lock.reclaimed["host"] == "another-host"


def test_concurrent_nightly_of_the_same_day_is_refused(tmp_path, lock_holder):
    cfg = load_config(root=str(tmp_path))
    lock_holder(tmp_path / "nightly" / "2026-01-02" / "lock")
    with pytest.raises(LockHeldError, match="another run is in progress"):
        run_nightly(None, cfg, "2026-01-02")
    assert not (tmp_path / "nightly" / "2026-01-02" / "state.json").exists()


# ---- state, gate, config -----------------------------------------------------------------------------------
def test_stage_state_survives_reload_and_refuses_a_foreign_file(tmp_path):
    state = StageState(tmp_path / "state.json", {"ds": "2026-01-02"})
    state.mark_started("check_events")
    state.mark_done("check_events", {"ok": True}, 1.5)
    state.mark_started("build_samples")
    state.mark_failed("build_samples", "boom", 0.1)
    again = StageState(tmp_path / "state.json", {"ds": "2026-01-02"})
    assert again.is_done("check_events") and not again.is_done("build_samples")
    assert again.result("check_events") == {"ok": True}
    assert again.data["stages"]["build_samples"]["error"] == "boom"
    with pytest.raises(ValueError, match="field 'ds' is '2026-01-02', expected '2026-01-03'"):
        StageState(tmp_path / "state.json", {"ds": "2026-01-03"})


@pytest.mark.parametrize(
    ("new", "prod", "metric", "promote"),
    [
        (0.70, 0.70, "auc", True),
        (0.695, 0.70, "auc", True),  # within tolerance 0.01
        (0.68, 0.70, "auc", False),
        (0.30, 0.31, "logloss", True),  # lower is better
        (0.33, 0.31, "logloss", False),
        (1.03, 0.99, "calibration", False),  # |1.03-1| vs |0.99-1|: worse by 0.02
        (float("nan"), 0.7, "auc", False),
    ],
)
def test_gate_decision(new, prod, metric, promote):
    ok, reason = gate_decision({"cvr": {metric: new}}, {"cvr": {metric: prod}}, "cvr", metric, 0.01)
    assert ok is promote
    assert "cvr" in reason


def test_gate_promotes_when_there_is_no_production():
    assert gate_decision({"cvr": {"auc": 0.5}}, None, "cvr", "auc", 0.0) == (True, "no production model yet")


def test_bad_nightly_config_and_ds_are_named(tmp_path):
    cfg = load_config(overrides={"nightly": {"gate_metric": "accuracy"}})
    with pytest.raises(ConfigError, match="nightly.gate_metric.*'accuracy'"):
        validate_nightly_config(cfg)
    with pytest.raises(NightlyError, match="--ds: expected a date"):
        run_nightly(None, load_config(root=str(tmp_path)), "20260102")
    assert not (tmp_path / "nightly").exists()


def test_stage_order_is_the_documented_one():
    assert STAGES == ("check_events", "build_samples", "hash_features", "train", "evaluate", "promote")


# ---- real nights: simulated events -> samples -> features -> training -> gate ---------------------------------
TINY = {
    "simulate": {"impressions_per_day": 3000, "users": 400, "items": 150, "partitions": 2, "start_date": "2026-03-01"},
    "storage": {"row_group_rows": 500},
    "train": {"epochs": 1, "batch_size": 256, "reader_workers": 1},
    # logloss separates a trained model from a crippled one reliably on tiny data; AUC on a few
    # hundred clicks does not (a random model's AUC can land within noise of a trained one).
    "nightly": {"train_days": 2, "gate_task": "cvr", "gate_metric": "logloss", "tolerance": 0.05},
}


def tiny_config(root, days: int, impressions_per_day: int = 3000, **sections):
    overrides = {key: dict(value) for key, value in TINY.items()}
    overrides["simulate"].update(days=days, impressions_per_day=impressions_per_day)
    for key, value in sections.items():
        overrides[key] = {**overrides.get(key, {}), **value}
    return load_config(root=str(root), overrides=overrides)


def simulated(spark, root, days: int, impressions_per_day: int = 3000):
    from cvr.pipeline.simulate_stage import run_simulate

    cfg = tiny_config(root, days, impressions_per_day)
    return cfg, run_simulate(spark, cfg)["days"]


def stage_starts(log_text: str, stage: str) -> int:
    return log_text.count(f"stage {stage} start")


def test_crash_mid_stage_resumes_there_and_a_finished_night_does_nothing(spark, tmp_path, monkeypatch):
    from cvr.ops.nightly import InjectedFailure
    from cvr.ops.registry import registry_for
    from cvr.storage.tables import list_partitions

    cfg, days = simulated(spark, tmp_path, days=2, impressions_per_day=1200)
    ds = days[1]
    night = tmp_path / "nightly" / ds

    monkeypatch.setenv("CVR_NIGHTLY_FAIL_STAGE", "hash_features")
    with pytest.raises(InjectedFailure, match="after features hashed for ds=" + days[0]):
        run_nightly(spark, cfg, ds)
    state = json.loads((night / "state.json").read_text())
    assert state["status"] == "failed"
    assert [s for s in STAGES if state["stages"].get(s, {}).get("status") == "done"] == [
        "check_events",
        "build_samples",
    ]
    assert state["stages"]["hash_features"]["status"] == "failed"
    assert state["stages"]["build_samples"]["result"]["days"] == days  # D and the open-window day before it
    assert list_partitions(cfg.storage.root, "features") == [days[0]]  # crashed midway: one day hashed
    assert not (night / "lock").exists(), "a crashed run must release its lock"
    samples_report = tmp_path / "reports" / "build-samples" / f"{ds}.json"
    built_at = samples_report.stat().st_mtime_ns

    monkeypatch.delenv("CVR_NIGHTLY_FAIL_STAGE")
    state = run_nightly(spark, cfg, ds)
    assert state["status"] == "succeeded" and state["already_done"] is False
    assert state["stages"]["build_samples"]["attempts"] == 1, "finished stages are not re-run"
    assert state["stages"]["hash_features"]["attempts"] == 2
    assert samples_report.stat().st_mtime_ns == built_at
    assert list_partitions(cfg.storage.root, "features") == days
    assert state["stages"]["train"]["result"]["train_days"] == [days[0]]
    assert state["stages"]["train"]["result"]["warm_start_version"] is None
    promote = state["stages"]["promote"]["result"]
    assert promote == {**promote, "version": 1, "promoted": True, "reason": "no production model yet"}
    registry = registry_for(cfg)
    assert registry.production_version() == 1

    log_text = (night / "nightly.log").read_text()
    assert stage_starts(log_text, "build_samples") == 1 and stage_starts(log_text, "hash_features") == 2
    assert "stage hash_features failed" in log_text and "stage promote end seconds=" in log_text

    again = run_nightly(spark, cfg, ds)
    assert again["already_done"] is True
    assert registry.versions() == [1] and len(registry.history()) == 1
    assert "nothing to do" in (night / "nightly.log").read_text()


def test_missing_day_is_reported_with_table_and_partition(spark, tmp_path):
    from cvr.ops.nightly import NightlyError
    from cvr.storage.tables import write_partitions

    cfg = load_config(root=str(tmp_path))
    with pytest.raises(NightlyError, match=r"table 'impressions' not found at .*tables/impressions"):
        run_nightly(spark, cfg, "2026-03-01")
    # only the presence of the impressions partition matters to check_events
    write_partitions(spark.createDataFrame([("x", "2026-03-01")], "id string, ds string"), str(tmp_path), "impressions")
    with pytest.raises(
        NightlyError, match=r"table 'impressions' has no partition ds=2026-03-05 at .*tables/impressions"
    ):
        run_nightly(spark, cfg, "2026-03-05")
    state = json.loads((tmp_path / "nightly" / "2026-03-05" / "state.json").read_text())
    assert state["stages"]["check_events"]["status"] == "failed"
    assert "no partition ds=2026-03-05" in state["stages"]["check_events"]["error"]


def test_three_nights_with_a_crash_and_a_worse_model(spark, tmp_path, monkeypatch):
    from cvr.ops.nightly import InjectedFailure
    from cvr.ops.registry import registry_for

    cfg, days = simulated(spark, tmp_path, days=4)
    registry = registry_for(cfg)

    first = run_nightly(spark, cfg, days[1])
    assert first["stages"]["promote"]["result"]["promoted"] is True
    assert registry.production_version() == 1

    monkeypatch.setenv("CVR_NIGHTLY_FAIL_STAGE", "train")
    with pytest.raises(InjectedFailure):
        run_nightly(spark, cfg, days[2])
    monkeypatch.delenv("CVR_NIGHTLY_FAIL_STAGE")
    second = run_nightly(spark, cfg, days[2])
    assert second["stages"]["train"]["attempts"] == 2
    assert second["stages"]["train"]["result"]["resumed"] is True  # the retry resumes from checkpoints
    assert second["stages"]["train"]["result"]["warm_start_version"] == 1
    assert second["stages"]["train"]["result"]["train_days"] == days[:2]
    assert second["stages"]["evaluate"]["result"]["production_version"] == 1
    assert second["stages"]["promote"]["result"]["promoted"] is True, second["stages"]["promote"]["result"]["reason"]
    assert registry.production_version() == 2

    crippled = tiny_config(tmp_path, 4, train={"lr": 1e-9}, nightly={"warm_start": False})
    third = run_nightly(spark, crippled, days[3])
    decision = third["stages"]["promote"]["result"]
    assert decision["promoted"] is False and decision["version"] == 3
    assert "worse beyond tolerance" in decision["reason"]
    assert registry.production_version() == 2, "a worse model must not replace production"
    evaluation = third["stages"]["evaluate"]["result"]
    assert evaluation["new"]["cvr"]["logloss"] > evaluation["production"]["cvr"]["logloss"] + 0.05
    assert [h["version"] for h in registry.history()] == [1, 2]
    assert "KEPT PRODUCTION" in (tmp_path / "nightly" / days[3] / "nightly.log").read_text()
    assert run_nightly(spark, crippled, days[3])["already_done"] is True


def test_nightly_command_exits_3_when_the_day_is_locked(spark, tmp_path, lock_holder, capsys):
    from cvr.cli.main import main

    holder = lock_holder(tmp_path / "nightly" / "2026-01-02" / "lock")
    assert main(["nightly", "--root", str(tmp_path), "--ds", "2026-01-02"]) == 3
    assert f"pid {holder.pid}" in capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_run_leaves_a_stale_lock_that_the_next_run_reclaims_and_resumes(spark, tmp_path):
    import signal

    import yaml

    cfg, days = simulated(spark, tmp_path, days=2, impressions_per_day=1200)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "storage": {**TINY["storage"], "root": str(tmp_path)}}))
    night = tmp_path / "nightly" / days[1]
    cvr = os.path.join(os.path.dirname(sys.executable), "cvr")
    proc = subprocess.Popen([cvr, "nightly", "--config", str(config), "--ds", days[1]], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 300
        while not (tmp_path / "reports" / "build-samples" / f"{days[0]}.json").exists():  # midway through the stage
            assert proc.poll() is None and time.time() < deadline, "the nightly run ended before it could be killed"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its Spark JVM, as a crash or an OOM kill would
        proc.wait()
    assert json.loads((night / "lock").read_text())["pid"] == proc.pid
    assert json.loads((night / "state.json").read_text())["stages"]["build_samples"]["status"] == "running"

    state = run_nightly(spark, cfg, days[1])
    assert state["status"] == "succeeded"
    assert state["stages"]["check_events"]["attempts"] == 1
    assert state["stages"]["build_samples"]["attempts"] == 2
    assert f"reclaimed stale lock of pid {proc.pid}" in (night / "nightly.log").read_text()
