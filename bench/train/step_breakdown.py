"""Where a training step's time goes, per phase, on random batches (no reader): forward, backward,
Horovod synchronize, gradient clipping, optimizer update (apply). Run it with 1 and with N ranks to see what
distribution adds:

    .venv/bin/python bench/train/step_breakdown.py esmm
    .venv/bin/horovodrun -np 2 --gloo -H localhost:2 .venv/bin/python bench/train/step_breakdown.py esmm

Prints one line from rank 0 with the median milliseconds of each phase (1 thread per rank).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench" / "models"))

import torch  # noqa: E402
from run import make_batch  # noqa: E402  (bench/models/run.py)

from cvr.models import build_model, load_model_config  # noqa: E402
from cvr.train.distributed import Horovod  # noqa: E402
from cvr.train.optim import OptimizerSet  # noqa: E402

FIELDS, BUCKETS, DENSE, BATCH, STEPS, WARMUP = 12, 2**14, 4, 1024, 50, 10


def main(model_name: str) -> None:
    dist = Horovod()
    dist.set_threads(1)
    dist.bind_cores(1)  # as the trainer does
    torch.manual_seed(0)
    model = build_model(load_model_config(model_name), [BUCKETS] * FIELDS, DENSE).train()
    optimizers = OptimizerSet(model, {"optimizer": "adam", "weight_decay": 0.0}, 1e-3, dist)
    optimizers.broadcast(model)
    batches = [make_batch(BATCH, FIELDS, BUCKETS, DENSE, 100 * dist.rank + i) for i in range(8)]
    phases: dict[str, list[float]] = {k: [] for k in ("forward", "backward", "synchronize", "clip", "apply")}
    for i in range(STEPS):
        marks = [time.perf_counter()]
        out = model(batches[i % len(batches)])
        marks.append(time.perf_counter())
        # the trainer's OptimizerSet.step, one phase at a time
        optimizers.backward(out.loss)
        marks.append(time.perf_counter())
        optimizers.synchronize()
        marks.append(time.perf_counter())
        optimizers.clip(model, 1.0)
        marks.append(time.perf_counter())
        optimizers.apply()
        marks.append(time.perf_counter())
        if i >= WARMUP:
            for name, (start, end) in zip(phases, zip(marks, marks[1:], strict=False), strict=True):
                phases[name].append(end - start)
    if dist.is_chief:
        parts = ", ".join(f"{k} {statistics.median(v) * 1e3:.2f}" for k, v in phases.items())
        print(f"{model_name}, {dist.size} rank(s), ms per step: {parts}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "esmm")
