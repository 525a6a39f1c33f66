"""Optimizers: dense parameters with Adam/Adagrad; sparse embedding tables (when enabled) with a sparse-capable one.

Each group is wrapped by Horovod separately, so sparse gradients travel as sparse allgathers.
"""

from __future__ import annotations

import torch


def _sparse_params(model) -> list[torch.nn.Parameter]:
    """Embedding tables that produce sparse gradients (only when the model config asks for them)."""
    if not getattr(model, "uses_sparse_gradients", False):
        return []
    return list(model.sparse_embedding_parameters())


class OptimizerSet:
    def __init__(self, model, tcfg: dict, lr: float, dist):
        sparse = _sparse_params(model)
        sparse_ids = {id(p) for p in sparse}
        dense_named = [(n, p) for n, p in model.named_parameters() if id(p) not in sparse_ids and p.requires_grad]
        sparse_named = [(n, p) for n, p in model.named_parameters() if id(p) in sparse_ids]
        self.dist = dist
        self.groups = []
        dense_opt = self._make(tcfg["optimizer"], [p for _, p in dense_named], lr, tcfg["weight_decay"], sparse=False)
        self.groups.append(dist.distributed_optimizer(dense_opt, _Named(dense_named), sparse_as_dense=True))
        if sparse_named:
            sparse_opt = self._make(tcfg["optimizer"], [p for _, p in sparse_named], lr, 0.0, sparse=True)
            self.groups.append(dist.distributed_optimizer(sparse_opt, _Named(sparse_named), sparse_as_dense=False))

    @staticmethod
    def _make(name: str, params, lr: float, weight_decay: float, sparse: bool):
        if name == "adagrad":
            return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
        if sparse:
            return torch.optim.SparseAdam(params, lr=lr)
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)

    def step(self, loss: torch.Tensor, model, clip: float) -> None:
        for opt in self.groups:
            opt.zero_grad()
        loss.backward()
        distributed = self.dist.size > 1
        if distributed:
            for opt in self.groups:
                opt.synchronize()  # gradients are averaged before clipping, so every rank clips the same way
        if clip and clip > 0:
            dense = [p for p in model.parameters() if p.grad is not None and not p.grad.is_sparse]
            torch.nn.utils.clip_grad_norm_(dense, clip)
        for opt in self.groups:
            if distributed:
                with opt.skip_synchronize():
                    opt.step()
            else:
                opt.step()

    def broadcast(self, model) -> None:
        if self.dist.size > 1:
            for opt in self.groups:
                self.dist.broadcast_state(model, opt)

    def state_dict(self) -> dict:
        return {f"group{i}": opt.state_dict() for i, opt in enumerate(self.groups)}

    def load_state_dict(self, state: dict) -> None:
        for i, opt in enumerate(self.groups):
            opt.load_state_dict(state[f"group{i}"])


class _Named:
    """Adapter so Horovod sees only one group's named parameters."""

    def __init__(self, named):
        self._named = named

    def named_parameters(self):
        return iter(self._named)
