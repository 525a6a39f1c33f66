"""Batch scoring on Spark executors: predictions equal the artifact's scoring module run directly in torch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cvr.config import load_config
from cvr.data.layout import FeatureLayout
from cvr.ops.registry import ModelRegistry
from cvr.ops.score import ScoreError, load_scoring_module, run_score
from cvr.storage.tables import read_table, table_files, write_partitions

SPEC = {
    "seed": 42,
    "fields": [
        {"name": "user_id", "buckets": 64},
        {"name": "item_id", "buckets": 32},
        {"name": "device", "buckets": 4},
    ],
    "dense": [{"name": "log_price"}],
}
DAYS = ("2026-01-01", "2026-01-02")


def features_frame(rows_per_day: int = 150) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    parts = []
    for day in DAYS:
        n = rows_per_day
        parts.append(
            pd.DataFrame(
                {
                    "impression_id": [f"{day}-imp-{i}" for i in range(n)],
                    "user_key": rng.integers(0, 1 << 40, n),
                    "dup_key": rng.integers(0, 1 << 40, n),
                    "f_user_id": rng.integers(0, 64, n),
                    "f_item_id": rng.integers(0, 32, n),
                    "f_device": rng.integers(0, 4, n),
                    "x_log_price": rng.normal(2.0, 1.0, n).astype(np.float32),
                    "click": rng.integers(0, 2, n).astype(np.int32),
                    "micro": np.zeros(n, np.int32),
                    "macro": np.zeros(n, np.int32),
                    "conversion": np.zeros(n, np.int32),
                    "ds": day,
                }
            )
        )
    frame = pd.concat(parts, ignore_index=True)
    frame.loc[3, "x_log_price"] = np.nan  # the layout maps NaN dense values to 0 in both paths
    return frame


def write_real_artifact(folder, cfg) -> None:
    """A randomly initialised ESMM written by the trainer's own artifact writer."""
    from cvr.models import build_model, load_model_config
    from cvr.train.artifact import write_artifact

    torch.manual_seed(0)
    layout = FeatureLayout.from_spec(SPEC)
    model_cfg = load_model_config("esmm")
    model = build_model(model_cfg, list(layout.buckets), len(layout.dense_columns))
    job = {"spec": SPEC, "model_cfg": model_cfg, "config": cfg.to_dict(), "lineage": {"test": True}}
    result = {"metrics": {"cvr": {"auc": 0.5}}, "history": [], "best_epoch": 0, "world_size": 1, "steps": 0,
              "samples_per_second": 0.0}  # fmt: skip
    write_artifact(folder, model=model, layout=layout, job=job, result=result)


@pytest.fixture(scope="module")
def scoring_setup(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    cfg = load_config(root=str(root))
    frame = features_frame()
    write_partitions(spark.createDataFrame(frame), str(root), "features", row_group_rows=64)
    artifact = root / "artifact-esmm"
    write_real_artifact(artifact, cfg)
    return cfg, frame, artifact


def direct_torch_scores(artifact, frame: pd.DataFrame) -> np.ndarray:
    module = torch.jit.load(str(artifact / "scoring.pt"))
    layout = FeatureLayout.from_file(artifact / "hashing_spec.json")
    batch = layout.to_tensors({c: frame[c].to_numpy() for c in frame.columns})
    with torch.no_grad():
        return module(batch["sparse"], batch["dense"]).numpy()


def test_spark_scores_equal_direct_torch_and_evaluation_path(spark, scoring_setup):
    from cvr.train.api import score_files
    from cvr.train.evaluation import id_hash

    cfg, frame, artifact = scoring_setup
    report = run_score(spark, cfg, list(DAYS), model=str(artifact))
    assert report["model_version"] == "artifact-esmm"
    got = read_table(spark, cfg.storage.root, "predictions").toPandas().set_index("impression_id")
    assert len(got) == len(frame) and set(got.index) == set(frame["impression_id"])
    assert list(got.columns) == ["p_ctr", "p_cvr", "p_ctcvr", "model_version", "ds"]
    assert (got["model_version"] == "artifact-esmm").all()
    got = got.loc[frame["impression_id"]]
    assert (got["ds"].to_numpy() == frame["ds"].to_numpy()).all()
    predicted = got[["p_ctr", "p_cvr", "p_ctcvr"]].to_numpy()

    expected = direct_torch_scores(artifact, frame).astype(np.float64)
    np.testing.assert_allclose(predicted, expected, rtol=1e-6, atol=1e-7)
    assert np.ptp(predicted[:, 1]) > 1e-4, "scores must vary across rows, or the parity check proves little"

    evaluation = score_files(artifact, table_files(cfg.storage.root, "features"))
    order = pd.Series(np.arange(len(frame)), index=id_hash(frame["impression_id"].to_numpy()))
    rows = order.loc[evaluation["id_hash"]].to_numpy()
    for i, task in enumerate(("p_ctr", "p_cvr", "p_ctcvr")):
        np.testing.assert_allclose(predicted[rows, i], evaluation[task], rtol=1e-6, atol=1e-7)


def test_rescoring_a_day_replaces_only_that_partition_with_the_production_version(spark, scoring_setup, tmp_path):
    cfg, frame, artifact = scoring_setup
    registry = ModelRegistry(f"{cfg.storage.root}/registry")
    version = registry.register(artifact)
    registry.promote(version, "test")
    run_score(spark, cfg, list(DAYS), model=str(artifact))
    report = run_score(spark, cfg, DAYS[1])
    assert report["model_version"] == f"v{version:04d}"
    got = read_table(spark, cfg.storage.root, "predictions").toPandas()
    by_day = got.groupby("ds")["model_version"].unique().to_dict()
    assert list(by_day[DAYS[0]]) == ["artifact-esmm"]
    assert list(by_day[DAYS[1]]) == [f"v{version:04d}"]
    assert len(got) == len(frame)


def test_missing_partition_and_missing_model_give_clear_errors(spark, scoring_setup, tmp_path):
    cfg, _, artifact = scoring_setup
    with pytest.raises(ScoreError, match="no partition ds=2030-01-01"):
        run_score(spark, cfg, "2030-01-01", model=str(artifact))
    with pytest.raises(ScoreError, match="no scoring.pt"):
        run_score(spark, cfg, DAYS[0], model=str(tmp_path))
    empty_registry_cfg = load_config(root=str(tmp_path))
    write_partitions(spark.createDataFrame(features_frame(5)), str(tmp_path), "features")
    with pytest.raises(ScoreError, match="no production model"):
        run_score(spark, empty_registry_cfg, DAYS[0])


def test_features_missing_a_spec_column_are_refused_naming_it(spark, scoring_setup):
    from cvr.ops.score import predict

    cfg, frame, artifact = scoring_setup
    df = spark.createDataFrame(frame.drop(columns=["f_item_id"]))
    with pytest.raises(ScoreError, match="f_item_id"):
        predict(spark, cfg, df, artifact)


def test_scoring_module_is_loaded_once_per_process(scoring_setup):
    _, _, artifact = scoring_setup
    payload = (artifact / "scoring.pt").read_bytes()
    first = load_scoring_module(str(artifact / "scoring.pt"), payload)
    assert load_scoring_module(str(artifact / "scoring.pt"), payload) is first


def test_a_table_hashed_with_another_spec_is_refused(spark, scoring_setup, tmp_path):
    import json

    cfg, frame, artifact = scoring_setup
    other_cfg = load_config(root=str(tmp_path))
    write_partitions(spark.createDataFrame(frame), str(tmp_path), "features")
    other_spec = {**SPEC, "fields": [{**SPEC["fields"][0], "buckets": 128}, *SPEC["fields"][1:]]}
    (tmp_path / "tables" / "features" / "_hashing_spec.json").write_text(json.dumps(other_spec))
    with pytest.raises(ScoreError, match="hashing spec of the features table .* differs"):
        run_score(spark, other_cfg, DAYS[0], model=str(artifact))
    (tmp_path / "tables" / "features" / "_hashing_spec.json").write_text(json.dumps(SPEC))
    assert run_score(spark, other_cfg, DAYS[0], model=str(artifact))["output"]["rows"] == len(frame) // 2


def test_delta_tables_score_through_delta_rs(spark, scoring_setup, tmp_path):
    from cvr.storage.tables import table_format, table_version

    _, frame, artifact = scoring_setup
    cfg = load_config(root=str(tmp_path), overrides={"storage": {"format": "delta"}})
    write_partitions(spark.createDataFrame(frame), str(tmp_path), "features", fmt="delta")
    run_score(spark, cfg, list(DAYS), model=str(artifact))
    run_score(spark, cfg, DAYS[0], model=str(artifact))  # re-scoring one day is a new Delta version
    assert table_format(str(tmp_path), "predictions") == "delta"
    assert table_version(str(tmp_path), "predictions") == 1
    got = (
        read_table(spark, str(tmp_path), "predictions")
        .toPandas()
        .set_index("impression_id")
        .loc[frame["impression_id"]]
    )
    expected = direct_torch_scores(artifact, frame)
    np.testing.assert_allclose(got[["p_ctr", "p_cvr", "p_ctcvr"]].to_numpy(), expected, rtol=1e-6, atol=1e-7)
