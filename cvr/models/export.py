"""Export a trained model to a TorchScript scoring module: forward(sparse, dense) -> [B, 3].

The module is traced from the eager model in eval mode, so it contains only the embeddings, the
heads and the parameter-free composition (no contrastive encoder, no losses, no input checks).
Columns: p_ctr, p_cvr, p_ctcvr.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

SCORING_COLUMNS = ("ctr", "cvr", "ctcvr")


class ScoringModule(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, sparse: Tensor, dense: Tensor) -> Tensor:
        probs = self.model.score(sparse, dense)
        return torch.stack([probs[name] for name in SCORING_COLUMNS], dim=1)


def export_scoring_module(model: nn.Module, example_batch: dict[str, Tensor]) -> torch.jit.ScriptModule:
    """Trace `model` (switched to eval mode and restored after) on the example batch's sparse/dense."""
    sparse = example_batch["sparse"]
    dense = example_batch.get("dense")
    if dense is None:
        dense = torch.zeros(sparse.shape[0], 0, device=sparse.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            scripted = torch.jit.trace(ScoringModule(model), (sparse, dense), check_trace=True)
    finally:
        model.train(was_training)
    return scripted
