"""Every Petastorm call of the project lives here (design.md: one seam per distributed-runtime dependency).

Petastorm plans the reading: which row groups belong to a rank's shard, and the worker threads that read
them ahead; `_Reader` draws their order per epoch from the seed. Our worker class (`_ArraysWorker`, given to Petastorm's `Reader`
as `make_batch_reader` gives its own) reads a row group and converts it to the model's arrays in that
worker thread, so the consumer - the training loop - only slices batches. Petastorm's own worker turns a
row group into pandas first, opens the file twice per row group and reads through a Python file object
(holding the GIL); converting on the consumer thread made the reader 0.42 of a raw pyarrow read.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from petastorm.arrow_reader_worker import ArrowReaderWorker
from petastorm.reader import Reader

from cvr.data.sharding import ShardPlan

# pyarrow 14's legacy-dataset FutureWarnings, raised from Petastorm's reader threads: harmless (stack.md).
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\..*")
# Our tables are plain Parquet (no Petastorm metadata), so every reader would log two INFO lines saying so.
logging.getLogger("petastorm.etl.dataset_metadata").setLevel(logging.WARNING)

_READ_AHEAD_PER_WORKER = 3  # converted row groups waiting for the consumer
# Row groups handed out but not yet consumed. Petastorm allows workers + 2 and tops the queue up every 10 ms,
# so a fast consumer drains it and the worker threads sit idle until the next top-up (busy 74% of the time).
_IN_FLIGHT_PER_WORKER = 6
_OPEN_FILES_PER_WORKER = 8

# (arrays of one row group, its index among the dataset's row groups, how many times this reader handed that
# row group out before) -> what the reader yields
RowGroupConverter = Callable[[dict[str, np.ndarray], int, int], dict[str, np.ndarray]]


@contextlib.contextmanager
def _batch_reader(files, columns, *, shard, shard_count, seed, shuffle, epochs, workers, convert: RowGroupConverter):
    from petastorm.fs_utils import get_filesystem_and_path_or_paths
    from petastorm.reader import normalize_dataset_url_or_urls
    from petastorm.workers_pool.thread_pool import ThreadPool

    filesystem, paths = get_filesystem_and_path_or_paths(normalize_dataset_url_or_urls(list(files)))
    worker_class = type("_BoundArraysWorker", (_ArraysWorker,), {"columns": tuple(columns), "convert": convert})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        reader = _Reader(
            filesystem,
            paths,
            schema_fields=list(columns),
            worker_class=worker_class,
            # Read ahead a few row groups per worker, not Petastorm's 50: with an endless stream the
            # default decodes ~50 row groups at every epoch start, competing with training for the cores.
            reader_pool=ThreadPool(workers, _READ_AHEAD_PER_WORKER * workers),
            seed=seed,
            shuffle_row_groups=shuffle,
            num_epochs=epochs,
            cur_shard=shard,
            shard_count=shard_count,
            is_batched_reader=True,
        )
    try:
        yield reader
    finally:
        reader.stop()
        reader.join()


class _Reader(Reader):
    """Petastorm's Reader with more row groups in flight per worker (see _IN_FLIGHT_PER_WORKER), whose stream
    does not depend on thread timing: row groups are handed out in an order drawn from the seed per epoch,
    numbered, and given back to the consumer in that order (_PublishedResults).

    Petastorm's ventilator reshuffles its row groups each time it has to wait at the start of an epoch, so its
    own order depends on how fast the consumer is: it hands them out unshuffled here and `_numbering` draws the
    order instead.
    """

    def _create_ventilator(self, row_group_indexes, shuffle_row_groups, shuffle_row_drop_partitions, num_epochs,
                           worker_predicate, max_ventilation_queue_size, seed):  # fmt: skip
        in_flight = max(max_ventilation_queue_size, _IN_FLIGHT_PER_WORKER * self._workers_pool.workers_count)
        epoch_order = _seeded_epoch_order(list(row_group_indexes), seed) if shuffle_row_groups else None
        self._workers_pool.ventilate = _numbering(self._workers_pool.ventilate, epoch_order)
        return super()._create_ventilator(row_group_indexes, False, shuffle_row_drop_partitions, num_epochs,
                                          worker_predicate, in_flight, seed)  # fmt: skip


def _seeded_epoch_order(row_groups: list[int], seed) -> Callable[[int], int]:
    """n -> the row group handed out n-th: each epoch visits every row group once, in an order drawn from
    (seed, epoch)."""
    orders: dict[int, np.ndarray] = {}

    def row_group(n: int) -> int:
        epoch, position = divmod(n, len(row_groups))
        if epoch not in orders:
            orders.clear()  # epochs are handed out in turn: only the current one is needed
            orders[epoch] = np.random.default_rng([(seed or 0) % 2**63, epoch]).permutation(row_groups)
        return int(orders[epoch][position])

    return row_group


def _numbering(ventilate, epoch_order: Callable[[int], int] | None):
    """Petastorm's ventilate (called by its one ventilator thread) with the row group replaced by the seeded
    order's (when shuffling) and `sequence` and `visit` added."""
    sequence, visits = itertools.count(), collections.Counter()

    def numbered(*args, piece_index, **kwargs):
        n = next(sequence)
        piece_index = piece_index if epoch_order is None else epoch_order(n)
        visit = visits[piece_index]
        visits[piece_index] += 1
        ventilate(*args, piece_index=piece_index, sequence=n, visit=visit, **kwargs)

    return numbered


class _ArraysWorker(ArrowReaderWorker):
    """Reads one row group per call and publishes (sequence, convert(arrays, row_group_index, visit)).

    Numeric columns come through Arrow's to_numpy (nulls as NaN), other types through pandas as
    Petastorm does. Local files are opened natively by path (Arrow reads them without the GIL) and
    stay open for the worker's next row groups.
    """

    columns: tuple[str, ...] = ()
    convert: RowGroupConverter

    @staticmethod
    def new_results_queue_reader():
        return _PublishedResults()

    def process(self, piece_index, worker_predicate, shuffle_row_drop_partition, sequence=0, visit=0):
        if worker_predicate is not None or shuffle_row_drop_partition[1] != 1:
            raise NotImplementedError("cvr's reader supports neither predicates nor row-drop partitions")
        piece = self._split_pieces[piece_index]
        # one thread per row group: the reader's threads already read row groups in parallel
        file = self._parquet_file(piece.path)
        table = file.read_row_group(piece.row_group, columns=list(self.columns), use_threads=False)
        try:
            converted = type(self).convert(_column_arrays(table), piece_index, visit)
        except ValueError as exc:  # bad values: say which file and row group they are in
            raise ValueError(f"{piece.path} (row group {piece.row_group}): {exc}") from exc
        self.publish_func((sequence, converted))

    def _parquet_file(self, path: str):
        import pyarrow.filesystem
        import pyarrow.parquet as pq

        open_files = self.__dict__.setdefault("_open_files", {})
        if path not in open_files:
            if len(open_files) >= _OPEN_FILES_PER_WORKER:
                open_files.pop(next(iter(open_files))).close()
            local = isinstance(self._filesystem, pyarrow.filesystem.LocalFileSystem)
            open_files[path] = pq.ParquetFile(path if local else self._filesystem.open(path, "rb"))
        return open_files[path]


class _PublishedResults:
    """Hands the consumer the workers' row groups in the order they were handed out (Petastorm's version returns
    them as they finish, which depends on thread timing), as they are (it would rebuild a namedtuple)."""

    batched_output = True

    def __init__(self):
        self._early: dict[int, dict] = {}  # finished before the row groups handed out ahead of them
        self._next = 0

    def read_next(self, workers_pool, schema, ngram):
        from petastorm.workers_pool import EmptyResultError

        while self._next not in self._early:
            try:
                sequence, arrays = workers_pool.get_results()
            except EmptyResultError:
                raise StopIteration from None
            self._early[sequence] = arrays
        self._next += 1
        return self._early.pop(self._next - 1)


def _column_arrays(table) -> dict[str, np.ndarray]:
    import pyarrow as pa

    arrays = {}
    for name in table.column_names:
        column = table.column(name)
        numeric = pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
        arrays[name] = column.to_numpy() if numeric else np.asarray(column.to_pandas())
    return arrays


def _as_read(arrays: dict[str, np.ndarray], row_group: int, visit: int) -> dict[str, np.ndarray]:
    return arrays


def _shuffling(convert: Callable[..., dict[str, np.ndarray]], seed: int, rank: int) -> RowGroupConverter:
    """A converter that permutes each row group's rows with a generator seeded by (seed, rank, row group, visit)."""

    def convert_shuffled(arrays: dict[str, np.ndarray], row_group: int, visit: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([seed % 2**63, rank, row_group, visit])
        return convert(arrays, rng.permutation(_rows(arrays)))

    return convert_shuffled


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

    With `shuffle`, the row groups come in an order drawn from the seed per epoch (see `_Reader`) and the
    rows inside each row group are permuted (see `_shuffling`). `convert(arrays, order)` (e.g. FeatureLayout.to_arrays)
    runs once per row group, in a reader thread, and returns its rows in `order` (None: as read), so the
    shuffle is part of the one copy conversion makes anyway; a batch is then a contiguous slice of each
    array (only the batch that straddles two row groups is copied). The stream wraps around its shard, so
    a rank can never run dry before the agreed step count.
    """
    convert = convert or _take_rows
    per_row_group = _shuffling(convert, seed, rank) if shuffle else (lambda arrays, *_: convert(arrays, None))
    with _batch_reader(
        plan.files,
        columns,
        shard=rank,
        shard_count=size,
        seed=seed,
        shuffle=shuffle,
        epochs=None,
        workers=workers,
        convert=per_row_group,
    ) as reader:
        yield from fixed_size_batches(reader, plan.batch_size)


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
        convert=_as_read,
    ) as reader:
        yield from reader
