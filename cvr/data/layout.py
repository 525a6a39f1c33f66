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

    @property
    def sparse_dtype(self) -> type:
        """int32 ids when every field's ids fit (half the bytes to convert and to batch), else int64."""
        return np.int32 if max(self.buckets) <= 2**31 else np.int64

    def to_arrays(self, arrays: dict[str, np.ndarray], order: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Column arrays -> the model's batch arrays (sparse [n, F] of sparse_dtype, dense [n, D] float32,
        keys int64, labels float32), vectorised over all n rows: the reader converts whole row groups.

        With `order` (a permutation of the rows, or any row indices) the rows come out in that order: the
        shuffle is the take that turns each stacked block into the output (see _gathered_matrix). An id
        outside its field's buckets, or a null id, raises ValueError naming the column, row and value.
        """
        self.check_ids(arrays)
        out = {
            "sparse": _gathered_matrix(arrays, self.sparse_columns, self.sparse_dtype, order),
            "dense": _gathered_matrix(arrays, self.dense_columns, np.float32, order),
        }
        if self.dense_columns:
            out["dense"][~np.isfinite(out["dense"])] = 0.0  # a missing (NaN) or infinite value reads as 0
        for name, dtype in [(k, np.int64) for k in KEYS] + [(label, np.float32) for label in LABELS]:
            if name in arrays:  # always a fresh array: Arrow's buffers are read-only
                out[name] = _gathered_matrix(arrays, (name,), dtype, order)[:, 0]
        return out

    def check_ids(self, arrays: dict[str, np.ndarray]) -> None:
        """Every sparse column holds ids in [0, buckets): checked before the ids are narrowed to sparse_dtype."""
        for name, buckets in zip(self.sparse_columns, self.buckets, strict=True):
            ids = arrays[name]
            if len(ids) == 0:
                continue
            if ids.dtype.kind == "f" and np.isnan(ids).any():  # Arrow reads a null in an integer column as NaN
                raise ValueError(f"column {name}: null id at row {int(np.flatnonzero(np.isnan(ids))[0])}")
            if ids.min() < 0 or ids.max() >= buckets:
                row = int(np.flatnonzero((ids < 0) | (ids >= buckets))[0])
                raise ValueError(f"column {name} has id {ids[row]} at row {row}, expected 0 <= id < {buckets}")

    def to_tensors(self, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Column arrays of one batch -> the model's batch dict, with no per-row Python work."""
        return as_tensors(self.to_arrays(arrays))


def as_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Batch arrays (as FeatureLayout.to_arrays returns them) -> tensors sharing their memory."""
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def _gathered_matrix(arrays, names, dtype, order) -> np.ndarray:
    """[rows, len(names)] of `dtype`: column j is arrays[names[j]] (taken at `order` when given).

    The columns are first copied side by side in read order (sequential reads), and then whole rows are
    taken: a quarter less time than gathering each column at random positions of its read buffer.
    """
    stacked = np.empty((len(next(iter(arrays.values()))), len(names)), dtype=dtype)
    for j, name in enumerate(names):
        stacked[:, j] = arrays[name]
    return stacked if order is None else np.take(stacked, order, axis=0)
