"""Checkpoints: written atomically by rank 0, loaded without unpickling arbitrary objects."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable or belongs to a different configuration."""


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(int(x) for x in state["python"].tolist()), None))


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(folder: Path, *, model, optimizer, step: int, epoch: int, step_in_epoch: int, config_hash: str,
                    best: dict) -> Path:  # fmt: skip
    state = {
        "format": FORMAT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "config_hash": config_hash,
        "rng": _rng_state(),
        "best": best,
    }
    path = Path(folder) / f"ckpt-{step:09d}.pt"
    save_atomic(state, path)
    (Path(folder) / "latest").write_text(path.name)
    _prune(Path(folder), keep=2)
    return path


def _prune(folder: Path, keep: int) -> None:
    for old in sorted(folder.glob("ckpt-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)


def latest_checkpoint(folder: Path) -> Path | None:
    pointer = Path(folder) / "latest"
    if not pointer.is_file():
        return None
    path = Path(folder) / pointer.read_text().strip()
    return path if path.is_file() else None


def load_checkpoint(path: Path, config_hash: str | None) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/corrupt files
        raise CheckpointError(
            f"{path}: checkpoint is corrupted or not a cvr checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unknown checkpoint format {state.get('format') if isinstance(state, dict) else type(state)}"
        )
    if config_hash is not None and state["config_hash"] != config_hash:
        raise CheckpointError(
            f"{path}: checkpoint was written by a different configuration (hash {state['config_hash']}, "
            f"this run {config_hash}); use a fresh output folder or the original configuration"
        )
    return state


def restore_rng(state: dict) -> None:
    _restore_rng(state["rng"])
