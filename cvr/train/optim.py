"""Optimizers: dense parameters with Adam/Adagrad; sparse embedding tables (when enabled) with a sparse-capable one.

Each group is wrapped by Horovod separately, so sparse gradients travel as sparse allgathers.
"""

from __future__ import annotations

import math

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
            for _, p in sparse_named:  # one row per id before the allgather: repeated ids (popular items,
                p.register_hook(_coalesce)  # small fields) would otherwise travel and be summed on every rank
            sparse_opt = self._make(tcfg["optimizer"], [p for _, p in sparse_named], lr, 0.0, sparse=True)
            self.groups.append(dist.distributed_optimizer(sparse_opt, _Named(sparse_named), sparse_as_dense=False))

    @staticmethod
    def _make(name: str, params, lr: float, weight_decay: float, sparse: bool):
        if name == "adagrad":
            return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
        if sparse:
            return RowSparseAdam(params, lr=lr)
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)

    def step(self, loss: torch.Tensor, model, clip: float) -> None:
        """One training update: backward, Horovod synchronize, clip, apply (the phases below, in order)."""
        self.backward(loss)
        self.synchronize()
        self.clip(model, clip)
        self.apply()

    def backward(self, loss: torch.Tensor) -> None:
        for opt in self.groups:
            opt.zero_grad()
        loss.backward()

    def synchronize(self) -> None:
        """Average gradients across ranks before clipping, so every rank clips the same way."""
        if self.dist.size > 1:
            for opt in self.groups:
                opt.synchronize()

    @staticmethod
    def clip(model, clip: float) -> None:
        if clip and clip > 0:
            dense = [p for p in model.parameters() if p.grad is not None and not p.grad.is_sparse]
            torch.nn.utils.clip_grad_norm_(dense, clip)

    def apply(self) -> None:
        for opt in self.groups:
            if self.dist.size > 1:
                with opt.skip_synchronize():  # synchronize() has already averaged the gradients
                    opt.step()
            else:
                opt.step()

    def broadcast(self, model) -> None:
        """Rank 0's parameters and optimizer state to every rank (after a resume, rank 0's checkpoint)."""
        if self.dist.size > 1:
            self.dist.broadcast_parameters(model)
            for opt in self.groups:
                self.dist.broadcast_optimizer_state(opt)

    def state_dict(self) -> dict:
        return {f"group{i}": opt.state_dict() for i, opt in enumerate(self.groups)}

    def load_state_dict(self, state: dict) -> None:
        for i, opt in enumerate(self.groups):
            opt.load_state_dict(state[f"group{i}"])


def _coalesce(grad: torch.Tensor) -> torch.Tensor:
    return grad.coalesce() if grad.is_sparse else grad


def _unique_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, values) of a sparse row gradient with one entry per row, summed over duplicate ids (and ranks).

    The coalescing hook's output reaches the optimizer with its coalesced flag dropped (autograd's gradient
    accumulation rebuilds the tensor), and a second coalesce would sort the rows again: rows already strictly
    increasing are used as they are (an O(n) check).
    """
    if not grad.is_coalesced():
        rows = grad._indices()[0]
        if rows.numel() < 2 or bool((rows[1:] > rows[:-1]).all()):
            return rows, grad._values()
        grad = grad.coalesce()
    return grad.indices()[0], grad.values()


class RowSparseAdam(torch.optim.Optimizer):
    """Adam for sparse (embedding-row) gradients: only the rows in the gradient move, as torch's SparseAdam
    (same update: m, v per row, denominator sqrt(v) + eps, step size lr * sqrt(1 - b2^t) / (1 - b1^t)).

    Rows are gathered with index_select and written back with index_copy_, which on CPU is faster
    than SparseAdam's sparse_mask / sparse add. State is allocated up front, so Horovod's
    broadcast_optimizer_state sends it without a warm-up step. A dense gradient is treated as sparse.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if lr <= 0:
            raise ValueError(f"RowSparseAdam: lr must be > 0, got {lr}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p] = {
                    "step": torch.zeros((), dtype=torch.float64),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                rows, values = _unique_rows(p.grad if p.grad.is_sparse else p.grad.to_sparse(1))
                state = self.state[p]
                state["step"] += 1
                if rows.numel() == 0:
                    continue
                t = float(state["step"])
                m = state["exp_avg"].index_select(0, rows).lerp_(values, 1.0 - beta1)
                v = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1.0 - beta2)
                state["exp_avg"].index_copy_(0, rows, m)
                state["exp_avg_sq"].index_copy_(0, rows, v)
                step_size = group["lr"] * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
                update = m.div_(v.sqrt_().add_(group["eps"]))
                # rows are unique after coalesce: gather, update, scatter (index_add_ with alpha is slow on CPU)
                p.index_copy_(0, rows, p.index_select(0, rows).sub_(update, alpha=step_size))
        return loss


class _Named:
    """Adapter so Horovod sees only one group's named parameters."""

    def __init__(self, named):
        self._named = named

    def named_parameters(self):
        return iter(self._named)
