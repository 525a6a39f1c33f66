"""Exact distributed evaluation: every rank predicts its shard, predictions are gathered, metrics computed once."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from cvr.data.layout import FeatureLayout
from cvr.data.petastorm_reader import read_shard
from cvr.data.sharding import local_path
from cvr.metrics import evaluate_predictions

PRED_KEYS = ("p_ctr", "p_cvr", "p_ctcvr")


def id_hash(ids: np.ndarray) -> np.ndarray:
    """Stable int64 key for impression ids (strings cannot travel through Horovod collectives)."""
    return pd.util.hash_array(np.asarray(ids, dtype=object)).view(np.int64)


@torch.no_grad()
def predict_files(model, files, layout: FeatureLayout, dist, device, workers: int = 2, batch_rows: int = 8192) -> dict:
    """Predictions and labels for every row of `files`, gathered from all ranks (same result on each rank)."""
    was_training = model.training
    model.eval()
    columns = layout.columns(with_labels=True, extra=("impression_id",))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in (*PRED_KEYS, "click", "conversion", "user_key", "id_hash")}
    for arrays in read_shard(tuple(files), columns, dist.rank, dist.size, workers=workers):
        n = len(arrays["click"])
        for start in range(0, n, batch_rows):
            chunk = {c: a[start : start + batch_rows] for c, a in arrays.items()}
            batch = {k: v.to(device) for k, v in layout.to_tensors(chunk).items()}
            probs = model(batch).probs
            parts["p_ctr"].append(probs["ctr"].float().cpu().numpy())
            parts["p_cvr"].append(probs["cvr"].float().cpu().numpy())
            parts["p_ctcvr"].append(probs["ctcvr"].float().cpu().numpy())
            parts["click"].append(chunk["click"].astype(np.float32))
            parts["conversion"].append(chunk["conversion"].astype(np.float32))
            parts["user_key"].append(chunk["user_key"].astype(np.int64))
            parts["id_hash"].append(id_hash(chunk["impression_id"]))
    local = {k: _concat(v, k) for k, v in parts.items()}
    model.train(was_training)
    return dist.gather_columns(local, name="eval")


def _concat(chunks: list[np.ndarray], key: str) -> np.ndarray:
    if chunks:
        return np.concatenate(chunks)
    return np.zeros(0, dtype=np.int64 if key in ("user_key", "id_hash") else np.float32)


def load_truth(files: list[str] | None) -> pd.DataFrame | None:
    """Simulator truth for the evaluated days, keyed by id_hash; None when there is no truth table."""
    if not files:
        return None
    cols = ["impression_id", "p_click", "p_cvr", "p_ctcvr"]
    frames = [pq.read_table(local_path(f), columns=cols).to_pandas() for f in files]
    truth = pd.concat(frames, ignore_index=True)
    truth["id_hash"] = id_hash(truth["impression_id"].to_numpy())
    return truth.drop(columns="impression_id").drop_duplicates("id_hash").set_index("id_hash")


def score_columns(columns: dict[str, np.ndarray], truth_files: list[str] | None, dist=None) -> dict:
    """Metrics from gathered columns; oracle metrics when truth covers every evaluated row."""
    truth = None
    table = load_truth(truth_files)
    if table is not None:
        aligned = table.reindex(columns["id_hash"])
        if not aligned.isna().any().any():
            truth = {c: aligned[c].to_numpy() for c in ("p_click", "p_cvr", "p_ctcvr")}
    return evaluate_predictions(columns, truth)
