"""A model artifact: one folder holding everything needed to score, evaluate and retrain exactly."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch
import yaml

from cvr.data.layout import FeatureLayout
from cvr.storage.tables import write_json_atomic
from cvr.train.checkpoint import save_atomic

ARTIFACT_FILES = (
    "weights.pt",
    "scoring.pt",
    "hashing_spec.json",
    "model.yaml",
    "config.json",
    "metrics.json",
    "lineage.json",
)


def code_version() -> dict:
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                    capture_output=True, text=True, check=True).stdout.strip())  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", None
    from cvr import __version__

    return {"package_version": __version__, "git_commit": commit, "git_dirty": dirty}


def example_batch(layout: FeatureLayout, rows: int = 4) -> dict[str, torch.Tensor]:
    return {
        "sparse": torch.zeros((rows, len(layout.sparse_columns)), dtype=torch.int64),
        "dense": torch.zeros((rows, len(layout.dense_columns)), dtype=torch.float32),
    }


def write_artifact(folder: Path, *, model, layout: FeatureLayout, job: dict, result: dict) -> Path:
    """Write weights, TorchScript scoring module, spec, configs, metrics and lineage; metrics.json last."""
    from cvr.models import export_scoring_module

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    save_atomic(model.state_dict(), folder / "weights.pt")
    scripted = export_scoring_module(model, example_batch(layout))
    torch.jit.save(scripted, str(folder / "scoring.pt.tmp"))
    (folder / "scoring.pt.tmp").replace(folder / "scoring.pt")
    write_json_atomic(folder / "hashing_spec.json", job["spec"])
    (folder / "model.yaml").write_text(yaml.safe_dump(job["model_cfg"], sort_keys=False))
    write_json_atomic(folder / "config.json", job["config"])
    write_json_atomic(
        folder / "lineage.json", {**job["lineage"], "code": code_version(), "warm_start": job.get("warm_start")}
    )
    metrics = {**(result["metrics"] or {}), "history": result["history"], "best_epoch": result["best_epoch"],
               "world_size": result["world_size"], "steps": result["steps"],
               "samples_per_second": result["samples_per_second"], "model": job["model_cfg"].get("name")}  # fmt: skip
    write_json_atomic(folder / "metrics.json", metrics)
    return folder


def same_hashing_spec(folder: str | Path, table_spec: dict) -> bool:
    """True when the artifact in `folder` was trained on ids of `table_spec` (the spec saved beside a features
    table): embeddings of another spec or hashing scheme index other ids."""
    return json.loads((Path(folder) / "hashing_spec.json").read_text()) == table_spec


def load_metrics(folder: Path) -> dict:
    path = Path(folder) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics: the artifact is incomplete (training did not finish)")
    return json.loads(path.read_text())


def check_artifact(folder: Path) -> None:
    missing = [name for name in ARTIFACT_FILES if not (Path(folder) / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: not a complete model artifact, missing {', '.join(missing)}")
