"""A small features table (+ truth) with a learnable signal, written as real Parquet, for training tests.

It follows the features/truth table contracts (schemas/) so the trainer reads it exactly like pipeline output.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FIELDS = [("user", 500), ("item", 300), ("category", 20), ("position", 10)]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def make_features_table(root: Path, days: int = 3, rows_per_day: int = 6000, row_group_rows: int = 1000,
                        seed: int = 0, files_per_day: int = 2, uneven: bool = False) -> dict:  # fmt: skip
    rng = np.random.default_rng(seed)
    user_w, item_w = rng.normal(0, 1.0, 500), rng.normal(0, 1.0, 300)
    cat_w, pos_w = rng.normal(0, 0.8, 20), -0.15 * np.arange(10)
    item_conv = rng.normal(0, 1.2, 300)
    spec = {"seed": 1, "user_column": "user", "fields": [{"name": n, "columns": [n], "buckets": b} for n, b in FIELDS],
            "dense": [{"name": "price", "column": "price", "transform": "log1p", "fill": 0.0}]}  # fmt: skip
    table_dir = Path(root) / "tables" / "features"
    truth_dir = Path(root) / "tables" / "truth"
    for day in range(days):
        ds = f"2026-01-{day + 1:02d}"
        n = rows_per_day
        ids = {"user": rng.integers(0, 500, n), "item": rng.integers(0, 300, n),
               "category": rng.integers(0, 20, n), "position": rng.integers(0, 10, n)}  # fmt: skip
        price = rng.lognormal(3, 1, n).astype(np.float32)
        p_click = _sigmoid(-1.6 + user_w[ids["user"]] + item_w[ids["item"]] + pos_w[ids["position"]])
        p_cvr = _sigmoid(-2.2 + item_conv[ids["item"]] + cat_w[ids["category"]] - 0.2 * np.log1p(price))
        click = (rng.random(n) < p_click).astype(np.int32)
        conversion = (click * (rng.random(n) < p_cvr)).astype(np.int32)
        micro = (click * (rng.random(n) < 0.5)).astype(np.int32)
        macro = (micro * (rng.random(n) < 0.3)).astype(np.int32)
        impression_id = np.array([f"{ds}-{i}" for i in range(n)], dtype=object)
        columns = {"impression_id": impression_id, "user_key": ids["user"].astype(np.int64),
                   "dup_key": (ids["user"] * 1000 + ids["item"]).astype(np.int64)}  # fmt: skip
        columns.update({f"f_{name}": ids[name].astype(np.int64) for name, _ in FIELDS})
        columns.update(
            {"x_price": np.log1p(price), "click": click, "micro": micro, "macro": macro, "conversion": conversion}
        )
        truth = {"impression_id": impression_id, "p_click": p_click, "p_micro": np.full(n, 0.5), "p_macro": np.full(n, 0.15),
                 "p_cvr": p_cvr, "p_ctcvr": p_click * p_cvr}  # fmt: skip
        for folder, data in ((table_dir, columns), (truth_dir, truth)):
            part = folder / f"ds={ds}"
            part.mkdir(parents=True, exist_ok=True)
            table = pa.table(data)
            # uneven=True puts 80% of a day in one file, so Horovod shards differ a lot in size
            cuts = [int(0.8 * n)] if uneven else np.linspace(0, n, files_per_day + 1)[1:-1].astype(int).tolist()
            for f, chunk in enumerate(np.split(np.arange(n), cuts)):
                # uneven: day 0's big file is one row group, so one rank's shard holds far more rows
                group_rows = len(chunk) if uneven and day == 0 and f == 0 else row_group_rows
                pq.write_table(table.take(chunk), part / f"part-{f:05d}.parquet", row_group_size=group_rows)
    (table_dir / "_hashing_spec.json").write_text(json.dumps(spec))
    return spec
