"""Every Petastorm call of the project lives here (design.md: one seam per distributed-runtime dependency)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from cvr.data.sharding import ShardPlan

# pyarrow 14's legacy-dataset FutureWarnings, raised from Petastorm's reader threads: harmless (stack.md).
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\..*")
# Our tables are plain Parquet (no Petastorm metadata), so every reader would log two INFO lines saying so.
logging.getLogger("petastorm.etl.dataset_metadata").setLevel(logging.WARNING)

_READ_AHEAD_PER_WORKER = 3  # row groups


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
            # Read ahead a few row groups per worker, not Petastorm's 50: with an endless stream the
            # default decodes ~50 row groups at every epoch start, competing with training for the cores.
            results_queue_size=_READ_AHEAD_PER_WORKER * workers,
            reader_pool_type="thread",
        )
    if type(reader._results_queue_reader).__name__ == "ArrowReaderWorkerResultsQueueReader":
        reader._results_queue_reader = _NumpyResults()
    try:
        yield reader
    finally:
        reader.stop()
        reader.join()


class _NumpyResults:
    """Petastorm 0.12's results-queue reader for batch readers, with a cheaper column conversion.

    Petastorm turns every column of a row group into a pandas Series and then into numpy; for our
    numeric columns Arrow's to_numpy gives the same values (nulls as NaN) without pandas, which was
    most of the consumer thread's time. Other column types keep a pandas conversion, as Petastorm does.
    """

    batched_output = True

    def read_next(self, workers_pool, schema, ngram):
        import pyarrow as pa
        from petastorm.workers_pool import EmptyResultError

        try:
            table = workers_pool.get_results()
        except EmptyResultError:
            raise StopIteration from None
        columns = {}
        for name in table.column_names:
            column = table.column(name)
            numeric = pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
            columns[name] = column.to_numpy() if numeric else np.asarray(column.to_pandas())
        return schema.make_namedtuple(**columns)


def _as_arrays(row_group, columns) -> dict[str, np.ndarray]:
    return {c: np.asarray(getattr(row_group, c)) for c in columns}


def training_batches(
    plan: ShardPlan,
    columns: list[str],
    rank: int,
    size: int,
    *,
    seed: int,
    shuffle: bool = True,
    workers: int = 2,
    convert: Callable[..., dict[str, np.ndarray]] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless fixed-size batches from this rank's shard: the caller takes exactly plan.steps_per_epoch.

    With `shuffle`, Petastorm visits the row groups in a seeded random order and the rows inside each
    row group are permuted (seeded per rank). `convert(arrays, order)` (e.g. FeatureLayout.to_arrays)
    runs once per row group and returns its rows in `order` (None: as read), so the shuffle is part of the
    one copy conversion makes anyway; a batch is then a contiguous slice of each array (only the batch
    that straddles two row groups is copied). The stream wraps around its shard, so a rank can never run
    dry before the agreed step count.
    """
    convert = convert or _take_rows
    rng = np.random.default_rng(seed * 1_000_003 + rank)
    with _batch_reader(
        plan.files, columns, shard=rank, shard_count=size, seed=seed, shuffle=shuffle, epochs=None, workers=workers
    ) as reader:
        row_groups = (_as_arrays(row_group, columns) for row_group in reader)
        converted = (convert(arrays, rng.permutation(_rows(arrays)) if shuffle else None) for arrays in row_groups)
        yield from fixed_size_batches(converted, plan.batch_size)


def _take_rows(arrays: dict[str, np.ndarray], order: np.ndarray | None) -> dict[str, np.ndarray]:
    return arrays if order is None else {k: np.take(v, order, axis=0) for k, v in arrays.items()}


def _rows(arrays: dict[str, np.ndarray]) -> int:
    return len(next(iter(arrays.values())))


def fixed_size_batches(chunks: Iterable[dict[str, np.ndarray]], batch: int) -> Iterator[dict[str, np.ndarray]]:
    """Re-cut a stream of array dicts of any length into dicts of exactly `batch` rows, in order.

    Batches inside a chunk are slices (no copy); only a batch spanning chunks is concatenated.
    """
    pending: list[dict[str, np.ndarray]] = []  # pieces of the next batch, fewer than `batch` rows in all
    pending_rows = 0
    for arrays in chunks:
        n, start = _rows(arrays), 0
        if pending_rows:
            start = min(batch - pending_rows, n)
            pending.append({k: v[:start] for k, v in arrays.items()})
            pending_rows += start
            if pending_rows < batch:
                continue
            yield {k: np.concatenate([piece[k] for piece in pending]) for k in arrays}
            pending, pending_rows = [], 0
        while start + batch <= n:
            yield {k: v[start : start + batch] for k, v in arrays.items()}
            start += batch
        if start < n:
            pending, pending_rows = [{k: v[start:] for k, v in arrays.items()}], n - start


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
