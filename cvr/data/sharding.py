"""Shard planning from Parquet footers, mirroring Petastorm's assignment of row groups to shards.

Petastorm (0.12) enumerates row groups file by file, in the order of the file list it is given, and gives
row group k to shard k % shard_count. Knowing every shard's row count up front lets all ranks agree on the
number of steps per epoch without communication, so uneven shards cannot deadlock an allreduce.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.parquet as pq


@dataclass(frozen=True)
class ShardPlan:
    files: tuple[str, ...]
    row_groups: int
    rows_per_shard: tuple[int, ...]
    batch_size: int

    @property
    def total_rows(self) -> int:
        return sum(self.rows_per_shard)

    @property
    def steps_per_epoch(self) -> int:
        """Steps every rank can take: set by the smallest shard (whole batches only)."""
        return min(self.rows_per_shard) // self.batch_size


def local_path(uri: str) -> str:
    parsed = urlparse(uri)
    return parsed.path if parsed.scheme in ("file", "") else uri


def as_uri(path: str) -> str:
    return path if "://" in path else f"file://{path}"


def row_group_sizes(files: list[str]) -> list[int]:
    sizes = []
    for uri in files:
        meta = pq.ParquetFile(local_path(uri)).metadata
        sizes.extend(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    return sizes


def plan_shards(files: list[str], shard_count: int, batch_size: int) -> ShardPlan:
    """Plan `shard_count` shards over `files` (the list is sorted so every rank sees the same order)."""
    if not files:
        raise ValueError("plan_shards: the table has no data files for the requested days")
    ordered = tuple(sorted(as_uri(f) for f in files))
    sizes = row_group_sizes(list(ordered))
    if len(sizes) < shard_count:
        raise ValueError(
            f"table has {len(sizes)} row groups for {shard_count} ranks: every rank needs at least one; "
            f"rewrite it with a smaller storage.row_group_rows or use fewer ranks"
        )
    rows = [0] * shard_count
    for index, n in enumerate(sizes):
        rows[index % shard_count] += n
    return ShardPlan(ordered, len(sizes), tuple(rows), batch_size)
