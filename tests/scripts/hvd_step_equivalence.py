"""A few training steps of the trainer's OptimizerSet, saved for comparison (tests/test_train.py).

    python hvd_step_equivalence.py OUT.pt                       # one process: every step on both halves at once
    horovodrun -np 2 ... python hvd_step_equivalence.py OUT.pt  # rank r: every step on half r only

Data-parallel training must make the same update as one process on the union of the ranks' batches: the
gradients are averaged across ranks (dense by allreduce, sparse embedding rows by allgather, rows shared by
both halves summed), clipped after the average, then applied. Both halves draw ids from a small range, so
many embedding rows occur in both. Rank 0 (or the one process) saves each variant's parameters before and
after the steps.
"""

import sys

import torch

from cvr.models import build_model, load_model_config
from cvr.train.distributed import Horovod
from cvr.train.optim import OptimizerSet

FIELDS, BUCKETS, DENSE, HALF, STEPS = 4, 50, 3, 64, 3
VARIANTS = {  # name -> (optimizer, sparse embedding gradients, weight decay)
    "adam_sparse": ("adam", True, 0.0),
    "adagrad_sparse": ("adagrad", True, 0.0),
    "adam_dense": ("adam", False, 0.0),
    "adam_sparse_weight_decay": ("adam", True, 0.01),
}


def half_batch(step: int, half: int) -> dict:
    g = torch.Generator().manual_seed(1000 * step + half)
    click = (torch.rand(HALF, generator=g) < 0.4).float()
    return {
        "sparse": torch.randint(0, BUCKETS, (HALF, FIELDS), generator=g),
        "dense": torch.randn(HALF, DENSE, generator=g),
        "click": click,
        "conversion": click * (torch.rand(HALF, generator=g) < 0.3).float(),
    }


def batch_for(step: int, dist: Horovod) -> dict:
    if dist.size == 2:
        return half_batch(step, dist.rank)
    halves = [half_batch(step, h) for h in (0, 1)]
    return {key: torch.cat([h[key] for h in halves]) for key in halves[0]}


def train(dist: Horovod, optimizer: str, sparse: bool, weight_decay: float) -> dict:
    torch.manual_seed(0)
    cfg = load_model_config("esmm", {"embedding": {"sparse": sparse}})
    model = build_model(cfg, [BUCKETS] * FIELDS, DENSE).train()
    optimizers = OptimizerSet(model, {"optimizer": optimizer, "weight_decay": weight_decay}, 0.01, dist)
    optimizers.broadcast(model)
    before = _copy(model.state_dict())
    for step in range(STEPS):
        out = model(batch_for(step, dist))
        optimizers.step(out.loss, model, clip=0.5)  # small enough to clip: clipping must follow the average
    return {"before": before, "after": _copy(model.state_dict())}


def _copy(state: dict) -> dict:
    return {name: value.detach().clone() for name, value in state.items()}


def main(out: str) -> None:
    dist = Horovod()
    if dist.size not in (1, 2):
        raise SystemExit(f"run with 1 or 2 processes, not {dist.size}")
    torch.set_num_threads(1)
    results = {name: train(dist, *variant) for name, variant in VARIANTS.items()}
    if dist.is_chief:
        torch.save(results, out)


if __name__ == "__main__":
    main(sys.argv[1])
