"""Every Petastorm call of the project lives here (design.md: one seam per distributed-runtime dependency)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np

from cvr.data.sharding import ShardPlan

# pyarrow 14's legacy-dataset FutureWarnings, raised from Petastorm's reader threads: harmless (stack.md).
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\..*")


@contextlib.contextmanager
def _batch_reader(files, columns, *, shard: int | None, shard_count: int | None, seed, shuffle, epochs, workers):
    from petastorm import make_batch_reader

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        reader = make_batch_reader(
            list(files),
            schema_fields=list(columns),
            cur_shard=shard,
            shard_count=shard_count,
            shuffle_row_groups=shuffle,
            seed=seed,
            num_epochs=epochs,
            workers_count=workers,
            reader_pool_type="thread",
        )
    try:
        yield reader
    finally:
        reader.stop()
        reader.join()


def _as_arrays(row_group, columns) -> dict[str, np.ndarray]:
    return {c: np.asarray(getattr(row_group, c)) for c in columns}


def training_batches(
    plan: ShardPlan, columns: list[str], rank: int, size: int, *, seed: int, shuffle: bool = True, workers: int = 2
) -> Iterator[dict[str, np.ndarray]]:
    """Endless fixed-size batches from this rank's shard: the caller takes exactly plan.steps_per_epoch.

    Row groups are shuffled by Petastorm (seeded); rows are shuffled inside a buffer of a few row groups.
    The stream wraps around its shard, so a rank can never run dry before the agreed step count.
    """
    rng = np.random.default_rng(seed * 1_000_003 + rank)
    batch = plan.batch_size
    buffer: dict[str, np.ndarray] | None = None
    with _batch_reader(
        plan.files, columns, shard=rank, shard_count=size, seed=seed, shuffle=shuffle, epochs=None, workers=workers
    ) as reader:
        for row_group in reader:
            arrays = _as_arrays(row_group, columns)
            buffer = arrays if buffer is None else {c: np.concatenate([buffer[c], arrays[c]]) for c in columns}
            n = len(buffer[columns[0]])
            if n < 2 * batch:
                continue
            order = rng.permutation(n) if shuffle else np.arange(n)
            usable = (n // batch) * batch
            for start in range(0, usable - batch + 1, batch):
                idx = order[start : start + batch]
                yield {c: buffer[c][idx] for c in columns}
            buffer = {c: buffer[c][order[usable:]] for c in columns}


def read_shard(files: tuple[str, ...], columns: list[str], rank: int, size: int, workers: int = 2):
    """One exact pass over this rank's shard (for evaluation); yields column dicts of varying length.

    With fewer row groups than ranks, rank 0 reads everything and the others read nothing.
    """
    from cvr.data.sharding import row_group_sizes

    n_groups = len(row_group_sizes(list(files)))
    if n_groups < size:
        if rank != 0:
            return
        rank, size = 0, 1
    sharded = size > 1
    with _batch_reader(
        files,
        columns,
        shard=rank if sharded else None,
        shard_count=size if sharded else None,
        seed=0,
        shuffle=False,
        epochs=1,
        workers=workers,
    ) as reader:
        for row_group in reader:
            yield _as_arrays(row_group, columns)
