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

    def to_tensors(self, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Column arrays of one batch -> the model's batch dict, with no per-row Python work."""
        batch = {
            "sparse": torch.from_numpy(np.stack([arrays[c] for c in self.sparse_columns], axis=1).astype(np.int64))
        }
        n = batch["sparse"].shape[0]
        if self.dense_columns:
            dense = np.stack([arrays[c] for c in self.dense_columns], axis=1).astype(np.float32)
            batch["dense"] = torch.from_numpy(np.nan_to_num(dense))
        else:
            batch["dense"] = torch.zeros((n, 0), dtype=torch.float32)
        for key in KEYS:
            if key in arrays:
                batch[key] = torch.from_numpy(np.asarray(arrays[key]).astype(np.int64))
        for label in LABELS:
            if label in arrays:
                batch[label] = torch.from_numpy(np.asarray(arrays[label]).astype(np.float32))
        return batch
