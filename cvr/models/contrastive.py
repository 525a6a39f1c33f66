"""The contrastive branch (CL4CVR), attachable to any base model with a shared embedding.

Training only: two augmented views of the shared representation e -> a shared encoder MLP (last
layer linear) -> a contrastive loss. The trainer never sees it at scoring time (eval mode skips it,
and the TorchScript export leaves the encoder out). Conventions:
- alpha weighs the loss averaged over the 2N anchors (paper). The authors' code sums the two
  directions (= 2x); `direction_reduction: sum` reproduces that, and code alpha 0.01 = paper alpha 0.02.
- group_size g > 0 splits the batch into consecutive groups of g samples and contrasts views only
  within a group (the paper's CL batch was 64), so the cost is O(N g) instead of O(N^2); the loss is
  the anchor-weighted mean over groups. 0 = the whole batch.
- augmentation dropout = the CL-dropout baseline: two independent inverted-dropout views of e.
  The FD baseline (feature dropout in the supervised task) is the model key `feature_dropout` instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvr.losses.contrastive import (
    cosine_duplicates,
    exact_duplicates,
    info_nce_of_views,
    supcon_of_views,
    triplet_of_views,
)
from cvr.losses.masks import complementary_masks, field_split_masks, independent_masks
from cvr.models.towers import mlp


class ContrastiveBranch(nn.Module):
    def __init__(self, cfg: dict, input_width: int, column_groups: list[tuple[int, int]]):
        super().__init__()
        self.cfg = dict(cfg)
        sizes = cfg["encoder"]
        self.encoder = mlp(input_width, sizes[:-1], sizes[-1], "relu")
        self.column_groups = column_groups

    def labels_needed(self) -> set[str]:
        uses_labels = self.cfg["spi"] or self.cfg["loss"] == "supcon"
        return {"click", "conversion"} if uses_labels else set()

    def views(self, e: Tensor) -> tuple[Tensor, Tensor]:
        """Two augmented views of e [N, W]."""
        cfg = self.cfg
        n, width = e.shape
        if cfg["augmentation"] == "dropout":
            return F.dropout(e, cfg["dropout_rate"], True), F.dropout(e, cfg["dropout_rate"], True)
        if cfg["augmentation"] == "feature_mask":
            m1, m2 = field_split_masks(self.column_groups, width, device=e.device)
        elif cfg["mask_scheme"] == "complementary":
            m1, m2 = complementary_masks(width, device=e.device)
        else:
            m1, m2 = independent_masks(n, width, cfg["mask_rate"], device=e.device)
        return e * m1.to(e.dtype), e * m2.to(e.dtype)

    def encode(self, v1: Tensor, v2: Tensor) -> Tensor:
        """[2N, d]: the encoded views stacked by rows (view 1 of every sample, then view 2)."""
        return self.encoder(torch.cat([v1, v2]))

    def encode_complementary(self, e: Tensor, keep: Tensor) -> Tensor:
        """[encoder(keep * e); encoder(~keep * e)] [2N, d] for one per-batch column mask `keep` [W] (bool).

        The first layer only needs the kept columns of each view, so both views together cost one
        full-width first layer instead of two (same result up to float summation order).
        """
        first, rest = self.encoder[0], self.encoder[1:]
        cols1, cols2 = keep.nonzero().flatten(), (~keep).nonzero().flatten()
        return rest(_ColumnSplitLinear.apply(e, first.weight, first.bias, cols1, cols2))

    def duplicates(self, e: Tensor, dup_keys: Tensor | None) -> Tensor | None:
        if self.cfg["fne"] == "exact":
            return exact_duplicates(dup_keys)
        if self.cfg["fne"] == "cosine":
            return cosine_duplicates(e, self.cfg["fne_threshold"])
        return None

    def group_loss(self, views: Tensor, dup: Tensor | None, converted: Tensor | None) -> Tensor:
        """The configured loss of views [G, 2S, d] (per group: view 1 of its S samples, then view 2)."""
        cfg = self.cfg
        if cfg["loss"] == "triplet":
            return triplet_of_views(views, cfg["triplet_margin"], dup)
        if cfg["loss"] == "supcon":
            return supcon_of_views(views, converted.long(), cfg["temperature"], dup)
        return info_nce_of_views(views, cfg["temperature"], dup, converted if cfg["spi"] else None)

    def forward(self, e: Tensor, batch: dict[str, Tensor]) -> Tensor:
        cfg = self.cfg
        if cfg["augmentation"] == "embedding_mask" and cfg["mask_scheme"] == "complementary":
            m1, _ = complementary_masks(e.shape[1], device=e.device)
            h = self.encode_complementary(e, m1[0] > 0.5)
        else:
            h = self.encode(*self.views(e))
        if cfg["fne"] == "exact" and "dup_key" not in batch:
            raise ValueError("batch: missing key 'dup_key' needed by contrastive.fne: exact")
        keys = batch.get("dup_key")
        converted = None
        if self.labels_needed():
            converted = (batch["click"] * batch["conversion"]) > 0.5
        n = e.shape[0]
        pairs = h.view(2, n, h.shape[1])  # [view, sample, d]
        group = min(cfg["group_size"] or n, n)
        whole = n - n % group
        loss = h.new_zeros((), dtype=torch.float32)
        # Views only meet views of their own group: the whole groups as one batched call, then the rest.
        for start, stop, size in ((0, whole, group), (whole, n, n - whole)):
            if stop == start:
                continue

            def grouped(t: Tensor | None, start=start, stop=stop, size=size) -> Tensor | None:
                return None if t is None else t[start:stop].reshape(-1, size, *t.shape[1:])

            # [G, 2S, d] with one copy: each group's view-1 rows, then its view-2 rows
            views = pairs[:, start:stop].reshape(2, -1, size, h.shape[1]).transpose(0, 1).flatten(1, 2)
            dup = self.duplicates(grouped(e), grouped(keys))
            part = self.group_loss(views, dup, grouped(converted))
            loss = loss + part * ((stop - start) / n)
        return loss * 2.0 if cfg["direction_reduction"] == "sum" else loss


class _ColumnSplitLinear(torch.autograd.Function):
    """[x[:, c1] W[:, c1]^T + b; x[:, c2] W[:, c2]^T + b] [2N, out] for a partition (c1, c2) of x's columns.

    Autograd through column indexing zero-fills and scatter-adds full-size gradients four times;
    here each gradient is computed in block order [c1 | c2] and put back in column order with one
    gather, since c1 and c2 cover every column exactly once.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, cols1, cols2):
        n = x.shape[0]
        x1, x2 = x.index_select(1, cols1), x.index_select(1, cols2)
        w1, w2 = weight.index_select(1, cols1), weight.index_select(1, cols2)
        out = x.new_empty(2 * n, weight.shape[0])
        torch.addmm(bias, x1, w1.T, out=out[:n])
        torch.addmm(bias, x2, w2.T, out=out[n:])
        # column j of [.., c1 block, c2 block] goes back to column order via index_select(inverse)
        inverse = torch.empty(x.shape[1], dtype=torch.long, device=x.device)
        inverse[torch.cat([cols1, cols2])] = torch.arange(x.shape[1], device=x.device)
        ctx.save_for_backward(x1, x2, w1, w2, inverse)
        return out

    @staticmethod
    def backward(ctx, grad):
        x1, x2, w1, w2, inverse = ctx.saved_tensors
        g1, g2 = grad[: x1.shape[0]], grad[x1.shape[0] :]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.cat([g1 @ w1, g2 @ w2], dim=1).index_select(1, inverse)
        if ctx.needs_input_grad[1]:
            grad_w = torch.cat([g1.T @ x1, g2.T @ x2], dim=1).index_select(1, inverse)
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b, None, None
