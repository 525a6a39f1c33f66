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


LABEL_KEYS = ("click", "conversion", "user_key", "id_hash")


@torch.no_grad()
def collect_predictions(row_groups, layout: FeatureLayout, predict, batch_rows: int = 8192) -> dict[str, np.ndarray]:
    """Predictions and labels for every row of `row_groups` (column dicts of one shard).

    `predict(batch) -> FloatTensor [B, 3]` (p_ctr, p_cvr, p_ctcvr) is the eager model or the exported scoring
    module, so training-time validation and artifact evaluation share one path.
    """
    parts: dict[str, list[np.ndarray]] = {k: [] for k in (*PRED_KEYS, *LABEL_KEYS)}
    for arrays in row_groups:
        for start in range(0, len(arrays["click"]), batch_rows):
            chunk = {c: a[start : start + batch_rows] for c, a in arrays.items()}
            probs = predict(layout.to_tensors(chunk)).float().cpu().numpy()
            for i, key in enumerate(PRED_KEYS):
                parts[key].append(probs[:, i])
            parts["click"].append(chunk["click"].astype(np.float32))
            parts["conversion"].append(chunk["conversion"].astype(np.float32))
            parts["user_key"].append(chunk["user_key"].astype(np.int64))
            parts["id_hash"].append(id_hash(chunk["impression_id"]))
    return {k: _concat(v, k) for k, v in parts.items()}


def predict_files(model, files, layout: FeatureLayout, dist, device, workers: int = 2) -> dict:
    """Every rank predicts its shard of `files` with the eager model; results gathered (same on each rank)."""

    def predict(batch):
        probs = model({k: v.to(device) for k, v in batch.items()}).probs
        return torch.stack([probs["ctr"], probs["cvr"], probs["ctcvr"]], dim=1)

    was_training = model.training
    model.eval()
    columns = layout.columns(with_labels=True, extra=("impression_id",))
    local = collect_predictions(
        read_shard(tuple(files), columns, dist.rank, dist.size, workers=workers), layout, predict
    )
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
