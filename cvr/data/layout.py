"""Which columns of a features table a model reads, derived from the table's hashing spec."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

LABELS = ("click", "micro", "macro", "conversion")
KEYS = ("dup_key", "user_key")


@dataclass(frozen=True)
class FeatureLayout:
    sparse_columns: tuple[str, ...]
    buckets: tuple[int, ...]
    dense_columns: tuple[str, ...] = ()
    spec: dict = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_spec(cls, spec: dict) -> FeatureLayout:
        """Build from a hashing-spec dict: {'fields': [{'name', 'buckets', ...}], 'dense': [{'name', ...}]}."""
        try:
            fields = spec["fields"]
            sparse = tuple(f"f_{f['name']}" for f in fields)
            buckets = tuple(int(f["buckets"]) for f in fields)
            dense = tuple(f"x_{d['name']}" for d in spec.get("dense", []))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"hashing spec: missing or malformed key {exc} (expected fields[].name/buckets)") from exc
        return cls(sparse, buckets, dense, spec)

    @classmethod
    def from_file(cls, path: str | Path) -> FeatureLayout:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: hashing spec not found (hash-features writes it beside the table)")
        return cls.from_spec(json.loads(path.read_text()))

    def columns(self, with_labels: bool = True, extra: tuple[str, ...] = ()) -> list[str]:
        cols = [*self.sparse_columns, *self.dense_columns, *KEYS]
        if with_labels:
            cols += list(LABELS)
        return cols + [c for c in extra if c not in cols]

    def to_arrays(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Column arrays -> the model's batch arrays (sparse [n, F] int64, dense [n, D] float32, keys
        int64, labels float32), vectorised over all n rows: the reader converts whole row groups."""
        out = {"sparse": np.stack([arrays[c] for c in self.sparse_columns], axis=1).astype(np.int64, copy=False)}
        n = out["sparse"].shape[0]
        if self.dense_columns:
            dense = np.stack([arrays[c] for c in self.dense_columns], axis=1).astype(np.float32, copy=False)
            dense[~np.isfinite(dense)] = 0.0  # a missing (NaN) or infinite value reads as 0
            out["dense"] = dense
        else:
            out["dense"] = np.zeros((n, 0), dtype=np.float32)
        for key in KEYS:
            if key in arrays:
                out[key] = np.array(arrays[key], dtype=np.int64)  # a copy: Arrow's buffers are read-only
        for label in LABELS:
            if label in arrays:
                out[label] = np.array(arrays[label], dtype=np.float32)
        return out

    def to_tensors(self, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Column arrays of one batch -> the model's batch dict, with no per-row Python work."""
        return as_tensors(self.to_arrays(arrays))


def as_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Batch arrays (as FeatureLayout.to_arrays returns them) -> tensors sharing their memory."""
    return {k: torch.from_numpy(v) for k, v in arrays.items()}
