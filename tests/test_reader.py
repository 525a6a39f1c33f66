"""Petastorm reading: shard plans match what Petastorm delivers, fixed batches, clear errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cvr.data import FeatureLayout, plan_shards
from cvr.data.petastorm_reader import fixed_size_batches, read_shard, training_batches


@pytest.fixture
def uneven_files(tmp_path):
    files = []
    for i, n in enumerate([2500, 7000, 1200]):
        ids = np.arange(n, dtype=np.int64) + i * 100_000
        table = pa.table({"f_a": ids, "f_b": ids % 7, "click": (ids % 3 == 0).astype(np.int32)})
        path = tmp_path / f"part-{i}.parquet"
        pq.write_table(table, path, row_group_size=1000)
        files.append(str(path))
    return files


def test_plan_matches_rows_petastorm_reads_per_shard(uneven_files):
    plan = plan_shards(uneven_files, shard_count=2, batch_size=256)
    assert plan.row_groups == 3 + 7 + 2
    seen = set()
    for rank in range(2):
        ids = np.concatenate([a["f_a"] for a in read_shard(plan.files, ["f_a"], rank, 2)])
        assert len(ids) == plan.rows_per_shard[rank]
        assert not seen & set(ids.tolist())  # shards are disjoint
        seen |= set(ids.tolist())
    assert len(seen) == 2500 + 7000 + 1200
    assert plan.steps_per_epoch == min(plan.rows_per_shard) // 256


def test_training_batches_are_fixed_size_and_stay_in_the_shard(uneven_files):
    plan = plan_shards(uneven_files, shard_count=2, batch_size=256)
    shard = set(np.concatenate([a["f_a"] for a in read_shard(plan.files, ["f_a"], 1, 2)]).tolist())
    stream = training_batches(plan, ["f_a", "click"], rank=1, size=2, seed=3)
    batches = [next(stream) for _ in range(3 * plan.steps_per_epoch)]  # wraps around the shard
    stream.close()
    assert all(len(b["f_a"]) == 256 for b in batches)
    assert set(np.concatenate([b["f_a"] for b in batches]).tolist()) <= shard


def test_training_batches_shuffle_rows_and_cover_one_epoch_of_the_shard(uneven_files):
    plan = plan_shards(uneven_files, shard_count=1, batch_size=100)
    layout = FeatureLayout.from_spec({"fields": [{"name": "a", "buckets": 10**6}, {"name": "b", "buckets": 7}]})
    stream = training_batches(plan, ["f_a", "f_b", "click"], 0, 1, seed=5, convert=layout.to_arrays)
    batches = [next(stream) for _ in range(plan.steps_per_epoch)]
    stream.close()
    ids = np.concatenate([b["sparse"][:, 0] for b in batches])
    assert len(ids) == len(set(ids.tolist())) == plan.steps_per_epoch * 100  # no row twice within an epoch
    assert not np.all(np.diff(ids) > 0)  # rows are not in file order
    assert all(b["sparse"].shape == (100, 2) and b["click"].dtype == np.float32 for b in batches)


def test_fixed_size_batches_recut_chunks_in_order():
    chunks = [{"x": np.arange(a, b)} for a, b in ((0, 3), (3, 4), (4, 11), (11, 12), (12, 20))]
    batches = list(fixed_size_batches(chunks, 4))
    assert [b["x"].tolist() for b in batches] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9, 10, 11],
        [12, 13, 14, 15],
        [16, 17, 18, 19],
    ]
    assert list(fixed_size_batches(chunks, 30)) == []  # never a short batch


def test_fewer_row_groups_than_ranks_is_a_clear_error(tmp_path):
    path = tmp_path / "one.parquet"
    pq.write_table(pa.table({"f_a": np.arange(10)}), path)
    with pytest.raises(ValueError, match="1 row groups for 2 ranks"):
        plan_shards([str(path)], shard_count=2, batch_size=4)


def test_layout_from_spec_and_tensors():
    spec = {"fields": [{"name": "user", "buckets": 10}, {"name": "item", "buckets": 5}], "dense": [{"name": "price"}]}
    layout = FeatureLayout.from_spec(spec)
    arrays = {
        "f_user": np.array([1, 2]),
        "f_item": np.array([3, 4]),
        "x_price": np.array([0.5, np.nan]),
        "click": np.array([1, 0], dtype=np.int32),
        "user_key": np.array([7, 8]),
    }
    batch = layout.to_tensors(arrays)
    assert batch["sparse"].tolist() == [[1, 3], [2, 4]]
    assert batch["dense"].tolist() == [[0.5], [0.0]]
    assert batch["click"].dtype.is_floating_point
    with pytest.raises(ValueError, match="fields"):
        FeatureLayout.from_spec({"dense": []})


def test_layout_gathers_rows_in_the_given_order_while_converting():
    spec = {"fields": [{"name": "u", "buckets": 100}, {"name": "i", "buckets": 9}], "dense": [{"name": "p"}]}
    layout = FeatureLayout.from_spec(spec)
    rng = np.random.default_rng(0)
    arrays = {
        "f_u": rng.integers(0, 100, 40),
        "f_i": rng.integers(0, 9, 40).astype(np.int32),
        "x_p": np.where(np.arange(40) % 6 == 0, np.nan, rng.random(40)),
        "dup_key": rng.integers(0, 2**62, 40),
        "conversion": (np.arange(40) % 5 == 0).astype(np.int8),
    }
    order = rng.permutation(40)
    as_read, shuffled = layout.to_arrays(arrays), layout.to_arrays(arrays, order)
    assert shuffled.keys() == as_read.keys() == {"sparse", "dense", "dup_key", "conversion"}
    for name, values in as_read.items():
        np.testing.assert_array_equal(shuffled[name], values[order])
        assert shuffled[name].dtype == values.dtype and shuffled[name].flags.writeable
    assert shuffled["sparse"].dtype == np.int32 and not np.isnan(shuffled["dense"]).any()


def test_ids_are_int32_unless_a_field_has_more_buckets():
    arrays = {"f_u": np.array([0, 5, 2**31 - 1]), "f_i": np.array([3, 1, 0])}
    narrow = FeatureLayout.from_spec({"fields": [{"name": "u", "buckets": 2**31}, {"name": "i", "buckets": 4}]})
    assert narrow.to_arrays(arrays)["sparse"].dtype == np.int32
    assert narrow.to_arrays(arrays)["sparse"][:, 0].tolist() == [0, 5, 2**31 - 1]
    wide = FeatureLayout.from_spec({"fields": [{"name": "u", "buckets": 2**40}, {"name": "i", "buckets": 4}]})
    assert wide.to_arrays(arrays | {"f_u": np.array([0, 5, 2**35])})["sparse"].dtype == np.int64


def test_an_id_outside_its_buckets_names_the_file_column_row_and_value(tmp_path):
    path = tmp_path / "bad.parquet"
    ids = np.arange(3000) % 10
    ids[2345] = 2**32 + 3  # narrowed to int32 unchecked, it would wrap to 3: a valid-looking id
    pq.write_table(pa.table({"f_a": ids, "click": np.zeros(3000, np.int32)}), path, row_group_size=1000)
    plan = plan_shards([f"file://{path}"], shard_count=1, batch_size=100)
    layout = FeatureLayout.from_spec({"fields": [{"name": "a", "buckets": 10}]})
    stream = training_batches(plan, ["f_a", "click"], 0, 1, seed=1, shuffle=False, workers=1, convert=layout.to_arrays)
    with pytest.raises(ValueError, match=rf"bad.parquet \(row group 2\): column f_a has id {2**32 + 3} at row 345, expected 0 <= id < 10"):  # fmt: skip
        for _ in range(plan.steps_per_epoch):
            next(stream)
    stream.close()
    with pytest.raises(ValueError, match="column f_a: null id at row 1"):
        layout.to_arrays({"f_a": np.array([1.0, np.nan])})


def test_reader_columns_equal_pandas_conversion_including_nulls(tmp_path):
    table = pa.table(
        {
            "f_a": pa.array(np.arange(50, dtype=np.int64)),
            "click": pa.array(np.arange(50) % 2, type=pa.int32()),
            "x_price": pa.array([None if i % 7 == 0 else i / 3 for i in range(50)], type=pa.float32()),
            "x_count": pa.array([None if i % 5 == 0 else i for i in range(50)], type=pa.int64()),
        }
    )
    path = tmp_path / "nulls.parquet"
    pq.write_table(table, path, row_group_size=50)
    (got,) = list(read_shard((f"file://{path}",), list(table.column_names), 0, 1))
    for name in table.column_names:
        expected = table.column(name).to_pandas().to_numpy()
        np.testing.assert_array_equal(got[name], expected)  # nulls read as NaN, as Petastorm's own conversion
        assert got[name].dtype == expected.dtype


def test_the_stream_follows_the_seed_whatever_the_reader_threads_do(tmp_path):
    files = []
    for i in range(3):  # 1,000-row groups whose ids say which group they are: id // 1000
        path = tmp_path / f"part-{i}.parquet"
        pq.write_table(pa.table({"f_a": np.arange(i * 2000, (i + 1) * 2000)}), path, row_group_size=1000)
        files.append(f"file://{path}")
    plan = plan_shards(files, shard_count=1, batch_size=100)

    def stream_ids(seed: int, workers: int) -> np.ndarray:
        stream = training_batches(plan, ["f_a"], 0, 1, seed=seed, workers=workers)
        ids = np.concatenate([next(stream)["f_a"] for _ in range(3 * plan.steps_per_epoch)])  # wraps twice
        stream.close()
        return ids

    one_thread = stream_ids(7, workers=1)
    first_group = one_thread[one_thread // 1000 == 4][:1000]
    assert sorted(first_group) == list(range(4000, 5000)) and first_group.tolist() != sorted(first_group)
    for _ in range(3):  # threads finish row groups in any order; the stream must not show it
        np.testing.assert_array_equal(stream_ids(7, workers=3), one_thread)
    assert not np.array_equal(stream_ids(8, workers=1), one_thread)


def test_a_conversion_error_in_a_reader_thread_reaches_the_consumer(uneven_files):
    plan = plan_shards(uneven_files, shard_count=1, batch_size=100)

    def convert(arrays, order):
        raise ValueError("batch 'sparse': f_a has id -1 at row 0")

    stream = training_batches(plan, ["f_a"], 0, 1, seed=1, convert=convert)
    with pytest.raises(ValueError, match="f_a has id -1"):
        next(stream)
    stream.close()
