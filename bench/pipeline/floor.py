"""The floor of the pipeline ratio: what any build-samples + hash-features must take, whatever its classification.

Every build-samples writes the samples table (each impression's columns plus labels and counts), and every
hash-features reads it and writes the features table. The floor does just that and nothing else: the day's
impressions with constant labels (no event table read, no deduplication, attribution or quarantine) are written
as the samples table, with the stage's writer and layout, under <root>/floor; then the real hash-features runs
on them. The floor ratio (floor samples + floor hash-features) / copy bounds from below the ratio that
bench/pipeline/run.py measures: the gap between the two is what the classification costs.
"""

from __future__ import annotations

import os

FLOOR_DIR = "floor"
CONSTANT_LABELS = ("click", "micro", "macro", "conversion", "n_micro", "n_macro", "n_conversions")


def floor_config(cfg):
    """cfg with its tables under <root>/floor (the floor never touches the real samples and features)."""
    from dataclasses import replace

    return replace(cfg, storage=replace(cfg.storage, root=os.path.join(str(cfg.storage.root), FLOOR_DIR)))


def unclassified_samples(spark, cfg, ds: str):
    """Day `ds` of the impressions as samples rows (schemas/samples.yaml) with every label and count 0."""
    from pyspark.sql import functions as F

    from cvr.pipeline.samples import schema_columns
    from cvr.storage import enforce, read_table

    impressions = read_table(spark, cfg.storage.root, "impressions", ds=ds)
    derived = {"hour": F.hour("ts")} | {name: F.lit(0) for name in CONSTANT_LABELS}
    columns = [derived.get(c["name"], F.col(c["name"])).alias(c["name"]) for c in schema_columns("samples")]
    return enforce(impressions.select(*columns), "samples")


def write_floor_samples(spark, cfg, ds: str) -> dict:
    """Write unclassified_samples(ds) as the floor's samples table, with build-samples' own writer and splits."""
    from cvr.pipeline.stages import even_input_splits, write_table

    floor = floor_config(cfg)
    with even_input_splits(spark):
        written = write_table(floor, unclassified_samples(spark, cfg, ds), floor.samples.table, "samples")
    return {"output": written}


def hash_floor_features(spark, cfg, ds: str) -> dict:
    """The real hash-features stage on the floor's samples table."""
    from cvr.pipeline.stages import run_hash_features

    return run_hash_features(spark, floor_config(cfg), ds)
