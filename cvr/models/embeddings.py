"""Input layer: per-field embeddings of hashed ids (one offset-indexed table) plus dense features.

One table with per-field offsets gives one lookup per batch instead of F; field f owns rows
[offset_f, offset_f + buckets_f), so fields never collide. With sparse=True the table produces
sparse gradients (for a sparse optimizer on large hash spaces).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FieldEmbedding(nn.Module):
    def __init__(self, field_buckets: list[int], dim: int, *, sparse: bool = False, init_std: float = 0.01,
                 field_names: list[str] | None = None):  # fmt: skip
        super().__init__()
        if not field_buckets or any(b < 1 for b in field_buckets):
            raise ValueError(
                f"field_buckets: expected a non-empty list of positive bucket counts, got {field_buckets!r}"
            )
        if field_names is not None and len(field_names) != len(field_buckets):
            raise ValueError(f"field_names: {len(field_names)} names for {len(field_buckets)} fields")
        self.field_names = list(field_names or [f"field {i}" for i in range(len(field_buckets))])
        self.num_fields = len(field_buckets)
        self.dim = dim
        offsets = torch.tensor([0] + list(field_buckets[:-1]), dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.register_buffer("buckets", torch.tensor(field_buckets, dtype=torch.long), persistent=False)
        self.table = nn.Embedding(int(sum(field_buckets)), dim, sparse=sparse)
        nn.init.normal_(self.table.weight, std=init_std)

    def check_ids(self, ids: Tensor) -> None:
        """Raise ValueError naming the field and value of the first id outside [0, buckets)."""
        if ids.dim() != 2 or ids.shape[1] != self.num_fields:
            raise ValueError(f"batch 'sparse': expected shape [B, {self.num_fields}], got {list(ids.shape)}")
        bad = (ids < 0) | (ids >= self.buckets)
        if bool(bad.any()):
            row, col = (int(v) for v in bad.nonzero()[0])
            raise ValueError(
                f"batch 'sparse': {self.field_names[col]} has id {int(ids[row, col])} at row {row}, "
                f"expected 0 <= id < {int(self.buckets[col])}"
            )

    def forward(self, ids: Tensor) -> Tensor:
        """ids [B, F] -> embeddings [B, F, K]."""
        return self.table(ids + self.offsets)


class DenseEncoder(nn.Module):
    """Dense features [B, D] -> [B, dim]: a linear projection, or tanh of it (ESM2's tanh embedding)."""

    def __init__(self, num_dense: int, dim: int, mode: str):
        super().__init__()
        self.proj = nn.Linear(num_dense, dim)
        self.use_tanh = mode == "tanh"

    def forward(self, dense: Tensor) -> Tensor:
        out = self.proj(dense)
        return torch.tanh(out) if self.use_tanh else out


class InputLayer(nn.Module):
    """Sparse ids + dense features -> the concatenated representation e [B, F*K (+ dense dim)]."""

    def __init__(self, field_buckets: list[int], num_dense: int, embedding_cfg: dict, dense_cfg: dict,
                 field_names: list[str] | None = None):  # fmt: skip
        super().__init__()
        self.embedding = FieldEmbedding(
            field_buckets,
            embedding_cfg["dim"],
            sparse=embedding_cfg["sparse"],
            init_std=embedding_cfg["init_std"],
            field_names=field_names,
        )
        self.num_dense = num_dense
        use_dense = num_dense > 0 and dense_cfg["mode"] != "none"
        self.dense = DenseEncoder(num_dense, dense_cfg["dim"], dense_cfg["mode"]) if use_dense else None
        self.dense_width = dense_cfg["dim"] if use_dense else 0
        self.width = len(field_buckets) * embedding_cfg["dim"] + self.dense_width

    def column_groups(self) -> list[tuple[int, int]]:
        """[start, end) columns of e per field, with the dense block as one extra group."""
        k = self.embedding.dim
        groups = [(f * k, (f + 1) * k) for f in range(self.embedding.num_fields)]
        if self.dense_width:
            groups.append((self.width - self.dense_width, self.width))
        return groups

    def forward(self, sparse: Tensor, dense: Tensor, field_dropout: float = 0.0) -> Tensor:
        emb = self.embedding(sparse)
        if field_dropout > 0:
            keep = torch.rand(emb.shape[0], emb.shape[1], 1, device=emb.device) >= field_dropout
            emb = emb * keep.to(emb.dtype) / (1.0 - field_dropout)
        parts = [emb.flatten(1)]
        if self.dense is not None:
            parts.append(self.dense(dense))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
