"""bench/pipeline/floor.py: the pipeline ratio's floor writes every impression of the day as samples, apart from
the real tables, and hashes them exactly as the real hash-features hashes the real samples."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pyspark.sql import functions as F

from cvr.config import load_config
from cvr.pipeline.simulate_stage import run_simulate
from cvr.pipeline.stages import run_build_samples, run_hash_features
from cvr.storage import count_rows, read_table

REPO = Path(__file__).resolve().parent.parent
DAY = "2026-05-01"


def load_floor():
    spec = importlib.util.spec_from_file_location("bench_pipeline_floor", REPO / "bench" / "pipeline" / "floor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_floor_writes_every_impression_unlabelled_and_hashes_it_like_the_stage(spark, tmp_path):
    floor = load_floor()
    root = str(tmp_path)
    simulate = {"start_date": DAY, "days": 1, "impressions_per_day": 3000, "partitions": 2, "malformed_rate": 0.05}
    cfg = load_config(root=root, overrides={"simulate": simulate})
    run_simulate(spark, cfg)
    built = run_build_samples(spark, cfg, DAY)
    run_hash_features(spark, cfg, DAY)

    written = floor.write_floor_samples(spark, cfg, DAY)["output"]
    floor_features = floor.hash_floor_features(spark, cfg, DAY)["output"]

    impressions = count_rows(root, "impressions", ds=DAY)
    assert written["rows"] == floor_features["rows"] == impressions  # every row, the malformed ones included
    assert written["path"].startswith(str(tmp_path / floor.FLOOR_DIR))
    assert count_rows(root, "samples", ds=DAY) == built["output"]["rows"] < impressions  # real table untouched
    floor_samples = read_table(spark, floor.floor_config(cfg).storage.root, "samples", ds=DAY)
    labels = [F.max(F.col(c)).alias(c) for c in floor.CONSTANT_LABELS]
    assert floor_samples.agg(*labels).first().asDict() == dict.fromkeys(floor.CONSTANT_LABELS, 0)

    real = read_table(spark, root, "features", ds=DAY)
    hashed = [c for c in real.columns if c.startswith("f_")]
    assert hashed
    floor_ids = read_table(spark, floor.floor_config(cfg).storage.root, "features", ds=DAY)
    missing = real.select("impression_id", *hashed).subtract(floor_ids.select("impression_id", *hashed))
    assert real.count() > 0 and missing.count() == 0  # hashing reads the feature columns only, never a label
