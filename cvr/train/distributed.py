"""Every Horovod call of the project lives here; the trainer only sees this small interface.

A torch.distributed backend can be added beside it with the same functions (design.md).
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch


class Horovod:
    """Thin wrapper over horovod.torch; works as a 1-rank world when not launched by horovodrun."""

    def __init__(self) -> None:
        import horovod.torch as hvd

        hvd.init()
        self.hvd = hvd
        self.rank = hvd.rank()
        self.size = hvd.size()
        self.local_rank = hvd.local_rank()
        self.local_size = hvd.local_size()

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def device(self) -> torch.device:
        """CUDA (one GPU per local rank) when present; else CPU with the cores split between local ranks."""
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank % torch.cuda.device_count())
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")

    def set_threads(self, threads_per_rank: int = 0) -> int:
        if threads_per_rank <= 0:
            threads_per_rank = max(1, (os.cpu_count() or 1) // self.local_size)
        torch.set_num_threads(threads_per_rank)
        return threads_per_rank

    def bind_cores(self, threads_per_rank: int) -> list[int]:
        """Pin this rank's threads, and those it starts later, to cores of its own, as MPI's --bind-to core.

        Only for CPU training with several ranks on the machine and a core for every thread. Unpinned, a
        rank's Horovod and Gloo threads wake on the other rank's core, one rank falls behind, and the other
        waits for it in every collective (2 ranks on 2 cores: 20 ms steps instead of 14). Returns the cores
        (empty when nothing was pinned).
        """
        if self.local_size < 2 or torch.cuda.is_available() or not hasattr(os, "sched_setaffinity"):
            return []
        cores = rank_cores(sorted(os.sched_getaffinity(0)), self.local_rank, self.local_size, threads_per_rank)
        for thread_id in os.listdir("/proc/self/task") if cores else []:
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                os.sched_setaffinity(int(thread_id), cores)
        return cores

    def distributed_optimizer(self, optimizer, model, sparse_as_dense: bool):
        if self.size == 1:
            return optimizer
        return self.hvd.DistributedOptimizer(
            optimizer, named_parameters=model.named_parameters(), sparse_as_dense=sparse_as_dense
        )

    def broadcast_parameters(self, model) -> None:
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)

    def broadcast_optimizer_state(self, optimizer) -> None:
        """Rank 0's optimizer state to every rank, when rank 0 has any (a resumed run).

        A fresh optimizer is the same on every rank, so there is nothing to send. Horovod would first fill an
        empty state by stepping the optimizer on zero gradients: for Adam that step counts, so the first real
        update's bias correction is one step off (26% smaller than one process's), and weight decay moves every
        parameter once. Training on N ranks would then differ from one process on the same global batch.
        """
        has_state = torch.tensor([int(bool(optimizer.state))])  # the live per-parameter state; no state_dict copy
        if int(self.hvd.broadcast(has_state, root_rank=0, name="optimizer_has_state").item()):
            self.hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    def mean(self, value: float, name: str) -> float:
        if self.size == 1:
            return float(value)
        return float(self.hvd.allreduce(torch.tensor([float(value)]), op=self.hvd.Average, name=name).item())

    def gather_columns(self, columns: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
        """Concatenate every rank's numeric columns on every rank (shards may differ in length)."""
        if self.size == 1:
            return columns
        out = {}
        for key in sorted(columns):
            gathered = self.hvd.allgather(torch.from_numpy(np.ascontiguousarray(columns[key])), name=f"{name}.{key}")
            out[key] = gathered.numpy()
        return out

    def barrier(self) -> None:
        if self.size > 1:
            self.hvd.allreduce(torch.zeros(1), name="barrier")


def rank_cores(available: list[int], local_rank: int, local_size: int, threads_per_rank: int) -> list[int]:
    """The cores of local rank `local_rank` when `available` has threads_per_rank for each rank, else []."""
    if threads_per_rank < 1 or len(available) < local_size * threads_per_rank:
        return []
    return available[local_rank * threads_per_rank : (local_rank + 1) * threads_per_rank]
