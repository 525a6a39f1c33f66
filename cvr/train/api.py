"""Training and evaluation entry points used by the CLI, jobs, nightly and experiments.

`run_training` runs the same `train_worker` as one process, as N local Gloo ranks under horovodrun, or
(`launcher="spark"`) as N ranks on Spark executors through horovod.spark.run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cvr.config import Config
from cvr.data.layout import FeatureLayout
from cvr.data.petastorm_reader import read_shard
from cvr.pipeline.hashing import table_spec_path
from cvr.storage import tables
from cvr.train.artifact import check_artifact, load_metrics, same_hashing_spec
from cvr.train.evaluation import collect_predictions, score_columns

log = logging.getLogger("cvr.train")


@dataclass
class TrainResult:
    artifact_dir: Path
    metrics: dict


def spec_for_table(root: str, table: str) -> dict:
    path = table_spec_path(root, table)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: hashing spec not found; run `cvr hash-features` for this table first")
    return json.loads(path.read_text())


def check_warm_start(warm_start: str, spec: dict, root: str, table: str) -> None:
    """A warm start's embeddings are indexed by the ids of its own hashing spec: starting from them on a table
    hashed with another spec (or hashing scheme) would train on the wrong rows silently, so it is refused."""
    saved = Path(warm_start) / "hashing_spec.json"
    if not saved.is_file():
        raise FileNotFoundError(f"warm start {warm_start}: no hashing_spec.json; is it a model artifact folder?")
    if not same_hashing_spec(warm_start, spec):
        raise ValueError(f"warm start {warm_start}: its hashing spec ({saved}) differs from the one features table '{table}' was hashed with ({table_spec_path(root, table)}); its embeddings index other ids. Train from scratch (nightly.warm_start: false) or hash the table with the model's spec")  # fmt: skip


def split_days(cfg: Config) -> tuple[list[str], list[str]]:
    """Train/validation days: from the config, else every day but the newest / the newest day."""
    root, table = cfg.storage.root, cfg.features.table
    if not tables.table_exists(root, table):
        raise FileNotFoundError(f"{tables.table_path(root, table)}: features table not found; run hash-features first")
    available = tables.list_partitions(root, table)
    train, valid = list(cfg.train.train_days), list(cfg.train.valid_days)
    if not train and not valid:
        if len(available) < 2:
            raise ValueError(f"features table has days {available}: need at least 2 (train + validation)")
        train, valid = available[:-1], available[-1:]
    elif not valid:
        valid = [d for d in available if d > max(train)][:1]
    missing = sorted(set(train + valid) - set(available))
    if missing:
        raise ValueError(f"features table {table}: days {missing} requested but not present (have {available})")
    return train, valid


def _job_hash(job: dict) -> str:
    keyed = {k: job[k] for k in ("model_cfg", "spec", "train_files", "valid_files")}
    keyed["train"] = {k: v for k, v in job["config"]["train"].items() if k not in ("output", "np")}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_job(cfg: Config, *, warm_start: str | None = None, output_dir: str | None = None,
                resume: bool = False) -> dict:  # fmt: skip
    from cvr.models import load_model_config

    root, table = cfg.storage.root, cfg.features.table
    train_days, valid_days = split_days(cfg)
    model_cfg = load_model_config(cfg.train.model, cfg.train.model_overrides or None)
    name = model_cfg.get("name", Path(cfg.train.model).stem)
    out = output_dir or cfg.train.output or str(Path(root) / "models" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    truth = tables.table_files(root, "truth", ds=valid_days) if tables.table_exists(root, "truth") else None
    spec = spec_for_table(root, table)
    if warm_start:
        check_warm_start(warm_start, spec, root, table)
    job = {
        "config": cfg.to_dict(),
        "model_cfg": model_cfg,
        "spec": spec,
        "train_files": tables.table_files(root, table, ds=train_days),
        "valid_files": tables.table_files(root, table, ds=valid_days),
        "truth": truth,
        "output_dir": str(Path(out).resolve()),
        "warm_start": str(Path(warm_start).resolve()) if warm_start else None,
        "resume": resume,
        "lineage": {
            "features_table": tables.table_snapshot(root, table, ds=train_days + valid_days),
            "train_days": train_days,
            "valid_days": valid_days,
            "truth_files": truth,
            "config_digest": cfg.digest(),
        },
    }
    job["config_hash"] = _job_hash(job)
    return job


def _under_horovod() -> bool:
    return "HOROVOD_RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ


def run_training(cfg: Config, *, warm_start: str | None = None, output_dir: str | None = None,
                 resume: bool = False, launcher: str = "auto", spark=None) -> TrainResult:  # fmt: skip
    """Train `cfg.train.model` on the features table and write an artifact; returns its folder and metrics."""
    job = prepare_job(cfg, warm_start=warm_start, output_dir=output_dir, resume=resume)
    out = Path(job["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    if launcher == "spark":
        _launch_spark(job, cfg.train.np, spark)
    elif cfg.train.np > 1 and not _under_horovod():
        _launch_horovodrun(job, cfg.train.np)
    else:
        from cvr.train.trainer import train_worker

        train_worker(job)
    return TrainResult(out, load_metrics(out))


def _launch_horovodrun(job: dict, np_ranks: int) -> None:
    out = Path(job["output_dir"])
    job_file = out / "job.json"
    job_file.write_text(json.dumps(job))
    horovodrun = str(Path(sys.executable).parent / "horovodrun")
    cmd = [horovodrun, "-np", str(np_ranks), "-H", f"localhost:{np_ranks}", "--gloo",
           sys.executable, "-m", "cvr.train.worker", str(job_file)]  # fmt: skip
    log.info("launching %d Gloo ranks: %s", np_ranks, " ".join(cmd))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise RuntimeError(
            f"horovodrun exited with {proc.returncode}; the last checkpoint is in {out / 'checkpoints'} (--resume continues)"
        )


def _launch_spark(job: dict, np_ranks: int, spark) -> None:
    """One rank per executor slot via horovod.spark.run (Gloo; GPUs are picked per rank when present)."""
    import horovod.spark

    from cvr.train.trainer import train_worker

    log.info("launching %d ranks on Spark executors with horovod.spark.run", np_ranks)
    horovod.spark.run(train_worker, args=(job,), num_proc=np_ranks, use_gloo=True, verbose=1,
                      stdout=sys.stdout, stderr=sys.stderr)  # fmt: skip


def score_files(artifact_dir: Path, files: list[str], workers: int = 2) -> dict[str, np.ndarray]:
    """Score every row of `files` with the artifact's TorchScript module (single process)."""
    artifact_dir = Path(artifact_dir)
    check_artifact(artifact_dir)
    layout = FeatureLayout.from_file(artifact_dir / "hashing_spec.json")
    module = torch.jit.load(str(artifact_dir / "scoring.pt"), map_location="cpu")
    columns = layout.columns(with_labels=True, extra=("impression_id",))
    row_groups = read_shard(tuple(files), columns, 0, 1, workers=workers)
    return collect_predictions(row_groups, layout, lambda batch: module(batch["sparse"], batch["dense"]))


def evaluate_artifact(cfg: Config, artifact_dir: str | Path, days: list[str] | None = None) -> dict:
    """Metrics of an artifact on `days` of the features table (default: the days it was validated on)."""
    artifact_dir = Path(artifact_dir)
    lineage = json.loads((artifact_dir / "lineage.json").read_text())
    days = days or lineage["valid_days"]
    root, table = cfg.storage.root, cfg.features.table
    files = tables.table_files(root, table, ds=days)
    if not files:
        raise ValueError(f"features table {table} has no files for days {days}")
    truth = tables.table_files(root, "truth", ds=days) if tables.table_exists(root, "truth") else None
    return score_columns(score_files(artifact_dir, files), truth)
