"""Training end to end on a real Parquet features table: one process, two Horovod ranks, checkpoints, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from train_fixtures import make_features_table

from cvr.config import load_config
from cvr.train import checkpoint as ckpt
from cvr.train.api import evaluate_artifact, prepare_job, run_training
from cvr.train.artifact import ARTIFACT_FILES

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def table_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    make_features_table(root, days=3, rows_per_day=8000, row_group_rows=500, uneven=True)
    return root


def cfg_for(root, **train):
    base = {"model": "esmm", "epochs": 2, "batch_size": 256, "lr": 0.003, "checkpoint_every_steps": 20}
    return load_config(root=str(root), overrides={"train": {**base, **train}})


def test_one_process_training_writes_an_artifact_that_reproduces_its_metrics(table_root, tmp_path):
    result = run_training(cfg_for(table_root), output_dir=str(tmp_path / "esmm"))
    for name in ARTIFACT_FILES:
        assert (result.artifact_dir / name).is_file(), name
    m = result.metrics
    assert m["world_size"] == 1 and len(m["history"]) >= 1
    assert m["ctr"]["auc"] > 0.65  # the fixture's click signal is strong
    assert m["cvr"]["oracle_auc"] > 0.5 and "oracle_auc_all" in m["cvr"]
    lineage = json.loads((result.artifact_dir / "lineage.json").read_text())
    assert lineage["valid_days"] == ["2026-01-03"] and lineage["train_days"] == ["2026-01-01", "2026-01-02"]
    assert lineage["features_table"]["files"] and lineage["code"]["git_commit"]
    again = evaluate_artifact(cfg_for(table_root), result.artifact_dir)
    for task in ("ctr", "cvr", "ctcvr"):
        assert again[task]["auc"] == pytest.approx(m[task]["auc"], abs=1e-6)
        assert again[task]["logloss"] == pytest.approx(m[task]["logloss"], rel=1e-5)


@pytest.mark.parametrize("selector, pick", [("ctcvr.logloss", min), ("cvr.auc", max)])
def test_the_best_epoch_is_chosen_by_train_select_metric(table_root, tmp_path, selector, pick):
    cfg = cfg_for(table_root, epochs=3, early_stopping_patience=3, select_metric=selector, checkpoint_every_steps=0)
    m = run_training(cfg, output_dir=str(tmp_path / "run")).metrics
    column = selector.replace(".", "_")
    values = [h[column] for h in m["history"]]
    assert len(values) == 3 and m["best_epoch"] == values.index(pick(values))
    task, metric = selector.split(".")
    assert m[task][metric] == pytest.approx(values[m["best_epoch"]])  # the returned model is that epoch's


def test_an_oracle_select_metric_without_a_truth_table_is_refused_before_training(table_root, tmp_path):
    job = prepare_job(cfg_for(table_root, select_metric="cvr.oracle_kl"), output_dir=str(tmp_path / "run"))
    job["truth"] = None  # as for real logs, which have no true probabilities
    from cvr.train.trainer import train_worker

    with pytest.raises(ValueError, match=r"train.select_metric cvr.oracle_kl needs a truth table"):
        train_worker(job)


def test_a_warm_start_hashed_with_another_spec_is_refused(table_root, tmp_path):
    from cvr.pipeline.hashing import table_spec_path

    table_spec = json.loads(table_spec_path(str(table_root), "features").read_text())
    artifact = tmp_path / "production"
    artifact.mkdir()
    (artifact / "hashing_spec.json").write_text(json.dumps(table_spec))
    assert prepare_job(cfg_for(table_root), warm_start=str(artifact))["warm_start"] == str(artifact.resolve())
    (artifact / "hashing_spec.json").write_text(json.dumps(table_spec | {"seed": table_spec["seed"] + 1}))
    with pytest.raises(ValueError, match=r"warm start .*production: its hashing spec .* differs from the one features table 'features' was hashed with"):  # fmt: skip
        prepare_job(cfg_for(table_root), warm_start=str(artifact))


def test_two_horovod_ranks_with_uneven_shards_finish_and_agree(table_root, tmp_path):
    cfg = cfg_for(table_root, np=2, model="cl4cvr", epochs=1)
    job = prepare_job(cfg)
    from cvr.data import plan_shards

    plan = plan_shards(job["train_files"], 2, 256)
    assert max(plan.rows_per_shard) > 1.2 * min(plan.rows_per_shard)  # really uneven
    result = run_training(cfg, output_dir=str(tmp_path / "cl"))
    assert result.metrics["world_size"] == 2
    assert result.metrics["steps"] == plan.steps_per_epoch
    assert result.metrics["ctr"]["rows"] == 8000  # evaluation covered every validation row across ranks
    one_process = evaluate_artifact(cfg_for(table_root), result.artifact_dir)
    for task in ("ctr", "cvr", "ctcvr"):  # the ranks' gathered predictions score as one process's do
        for metric in ("auc", "gauc", "logloss", "calibration"):
            assert result.metrics[task][metric] == pytest.approx(one_process[task][metric], rel=1e-6), (task, metric)


def test_two_ranks_make_the_same_update_as_one_process_on_both_batches(tmp_path):
    """Averaged dense and sparse gradients, clipping after the average, and a fresh optimizer state that Horovod
    does not initialise with a step of its own (that step made 2-rank Adam differ by up to 0.03 per weight)."""
    script = Path(__file__).parent / "scripts" / "hvd_step_equivalence.py"
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    subprocess.run([sys.executable, str(script), str(one)], check=True, capture_output=True, timeout=120)
    ranks = [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, str(script), str(two)]
    done = subprocess.run(ranks, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    single, distributed = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
    assert set(distributed) == {"adam_sparse", "adagrad_sparse", "adam_dense", "adam_sparse_weight_decay"}
    for variant, runs in single.items():
        for name, value in runs["after"].items():
            moved = (value - runs["before"][name]).abs().max().item()
            assert moved > 1e-3, f"{variant} {name}: training did not move it ({moved})"
            diff = (value - distributed[variant]["after"][name]).abs().max().item()
            assert diff < 1e-5, f"{variant} {name}: 2 ranks differ from one process by {diff}"


def test_corrupted_and_mismatched_checkpoints_are_clear_errors(tmp_path):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam(model.parameters())
    path = ckpt.save_checkpoint(tmp_path, model=model, optimizer=opt, step=5, epoch=0, step_in_epoch=5,
                                config_hash="aaa", best={})  # fmt: skip
    assert ckpt.latest_checkpoint(tmp_path) == path
    assert ckpt.load_checkpoint(path, "aaa")["step"] == 5
    with pytest.raises(ckpt.CheckpointError, match="different configuration"):
        ckpt.load_checkpoint(path, "bbb")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ckpt.CheckpointError, match="corrupted"):
        ckpt.load_checkpoint(path, "aaa")


def _train_cmd(root, out, *extra):
    return [str(BIN / "cvr"), "train", "--root", str(root), "--np", "2", "--model", "cl4cvr", "--epochs", "3", "--batch-size", "128",
            "--output", str(out), *extra]  # fmt: skip


def _worker_pids(out: Path) -> list[int]:
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "cvr.train.worker" in cmd and str(out) in cmd:
            pids.append(proc.info["pid"])
    return pids


def test_sigkill_of_one_rank_then_resume_matches_an_uninterrupted_run(table_root, tmp_path):
    # CL4CVR: its random embedding masks must be replayed too
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  checkpoint_every_steps: 15\n  lr: 0.003\n")
    baseline = subprocess.run([*_train_cmd(table_root, tmp_path / "full"), "--config", str(config)],
                              capture_output=True, text=True, timeout=400)  # fmt: skip
    assert baseline.returncode == 0, baseline.stderr[-3000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen([*_train_cmd(table_root, out), "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 300
    while not (out / "checkpoints" / "latest").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    pids = _worker_pids(out)
    assert pids, "no training rank found to kill"
    os.kill(pids[-1], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0, "horovodrun must fail when a rank is killed"
    assert not (out / "metrics.json").exists()
    resumed = subprocess.run([*_train_cmd(table_root, out, "--resume"), "--config", str(config)],
                             capture_output=True, text=True, timeout=400)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from ckpt-" in resumed.stderr
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    after = json.loads((out / "metrics.json").read_text())
    assert after["steps"] == full["steps"] and after["best_epoch"] == full["best_epoch"]
    # The resumed run replays the same batches, optimizer state and random numbers: the same model, not a close one.
    assert abs(after["ctr"]["auc"] - full["ctr"]["auc"]) < 1e-6
    assert abs(after["cvr"]["auc"] - full["cvr"]["auc"]) < 1e-6
    weights = [torch.load(folder / "weights.pt", weights_only=True) for folder in (tmp_path / "full", out)]
    assert max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[0]) < 1e-6


def test_each_rank_and_step_draws_its_own_random_numbers_and_a_repeat_draws_the_same():
    from cvr.train.trainer import seed_step, step_seed

    triples = [(seed, rank, step) for seed in (0, 1, 2) for rank in range(4) for step in range(200)]
    assert len({step_seed(*t) for t in triples}) == len(triples)
    assert all(0 <= step_seed(*t) < 2**63 for t in triples)

    def draw(rank: int, step: int) -> torch.Tensor:
        seed_step(7, rank, step, torch.device("cpu"))
        return torch.rand(64)

    assert torch.equal(draw(0, 5), draw(0, 5))  # a resumed step draws what the interrupted one drew
    assert not torch.equal(draw(0, 5), draw(1, 5))  # ranks mask their samples independently
    assert not torch.equal(draw(0, 5), draw(0, 6))


def test_rank_cores_split_the_available_cores_or_leave_ranks_unpinned():
    from cvr.train.distributed import rank_cores

    assert rank_cores([0, 1, 2, 3], local_rank=1, local_size=2, threads_per_rank=2) == [2, 3]
    assert rank_cores([4, 6], local_rank=1, local_size=2, threads_per_rank=1) == [6]  # a cpuset, not 0..n-1
    assert rank_cores([0, 1], local_rank=0, local_size=2, threads_per_rank=2) == []  # too few cores: unpinned
    assert rank_cores([0, 1, 2], local_rank=2, local_size=3, threads_per_rank=0) == []


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_second_local_rank_pins_every_thread_of_its_process_to_its_core():
    code = """
import os, threading
from cvr.train.distributed import Horovod
started = threading.Event()
worker = threading.Thread(target=lambda: started.wait(30), daemon=True)
worker.start()  # a thread that exists before binding, as Horovod's background thread does
dist = Horovod.__new__(Horovod)
dist.local_rank, dist.local_size = 1, 2
cores = dist.bind_cores(1)
print(cores, sorted(os.sched_getaffinity(0)), sorted(os.sched_getaffinity(worker.native_id)))
started.set()
"""
    second = sorted(os.sched_getaffinity(0))[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")[0]
    assert out == f"[{second}] [{second}] [{second}]"
