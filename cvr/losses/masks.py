"""Masks that turn one representation e [N, W] into two views (view = mask * e).

All masks are float tensors broadcastable to [N, W]: shape [1, W] when drawn once per batch,
[N, W] when drawn per sample. Randomness comes from torch's RNG (or an explicit generator).
"""

from __future__ import annotations

import torch
from torch import Tensor


def complementary_masks(width: int, *, generator: torch.Generator | None = None,
                        device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:  # fmt: skip
    """One Bernoulli(0.5) mask per batch and its complement, as the CL4CVR authors' code: [1, W] each."""
    keep = torch.rand(1, width, generator=generator, device=device) < 0.5
    return keep.float(), (~keep).float()


def independent_masks(batch: int, width: int, rate: float, *, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:  # fmt: skip
    """Two independent per-sample masks, each element dropped with probability `rate`: [N, W] each."""
    draws = torch.rand(2, batch, width, generator=generator, device=device) >= rate
    return draws[0].float(), draws[1].float()


def field_split_masks(groups: list[tuple[int, int]], width: int, *, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:  # fmt: skip
    """Random feature masking (RFM): a random half of the column groups (fields) per view, disjoint: [1, W]."""
    order = torch.randperm(len(groups), generator=generator).tolist()
    first = torch.zeros(1, width, device=device)
    for g in order[: len(groups) // 2]:
        start, end = groups[g]
        first[:, start:end] = 1.0
    covered = torch.zeros(1, width, device=device)
    for start, end in groups:
        covered[:, start:end] = 1.0
    return first, covered - first
