"""The whole path under spark-submit on a real standalone cluster (master + 2 workers on 127.0.0.1):
simulate -> build-samples -> hash-features -> train (horovod.spark.run, 2 ranks) -> score.

Slow (several minutes on 2 cores) and needs free ports 7977/8980-8982; run with `pytest -m cluster`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

REPO = Path(__file__).resolve().parent.parent
PORTS = {"CVR_MASTER_PORT": "7977", "CVR_MASTER_UI_PORT": "8980", "CVR_WORKER_UI_PORT": "8981"}
DAYS = ["2026-05-01", "2026-05-02", "2026-05-03"]


def run(cmd: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
                             f"--- stderr\n{proc.stderr[-8000:]}")  # fmt: skip
    return proc


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("cluster")
    env = {**os.environ, **PORTS, "CVR_CLUSTER_DIR": str(state)}
    script = str(REPO / "scripts" / "standalone_cluster.sh")
    try:
        started = run([script, "start", "--workers", "2"], env, timeout=400)
        assert started.stdout.strip() == f"spark://127.0.0.1:{PORTS['CVR_MASTER_PORT']}"
        assert "registered workers: 2" in run([script, "status"], env).stdout
        yield {"url": started.stdout.strip(), "state": state, "env": env}
    finally:
        subprocess.run([script, "stop"], cwd=REPO, env=env, capture_output=True, timeout=120)
        for name in ("master", "worker-1", "worker-2"):
            assert not (state / f"{name}.pid").exists(), f"{name} was not stopped"


def write_config(path: Path, root: Path, master: str) -> Path:
    config = {
        "profile": "standalone",
        "spark": {"master": master, "shuffle_partitions": 4, "driver_memory": "1g",
                  "extra_conf": {"spark.executor.memory": "1g", "spark.executor.cores": "1", "spark.cores.max": "2"}},
        "storage": {"root": str(root), "row_group_rows": 500},
        "simulate": {"days": len(DAYS), "start_date": DAYS[0], "impressions_per_day": 3000, "users": 400,
                     "items": 150, "partitions": 2},
        "train": {"epochs": 1, "batch_size": 256, "reader_workers": 1},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    return path


def test_jobs_run_under_spark_submit_on_the_standalone_cluster(cluster, tmp_path):
    from cvr.storage.tables import list_partitions

    root = tmp_path / "root"
    config = str(write_config(tmp_path / "cluster.yaml", root, cluster["url"]))
    env = {**cluster["env"], "CVR_SPARK_MASTER": cluster["url"]}
    submit = str(REPO / "scripts" / "spark_submit.sh")
    common = ["--config", config]
    ds_args = [arg for ds in DAYS for arg in ("--ds", ds)]

    run([submit, "jobs/simulate_events.py", *common], env)
    run([submit, "jobs/build_samples.py", *common, *ds_args], env)
    run([submit, "jobs/hash_features.py", *common, *ds_args], env)
    artifact = tmp_path / "model"
    run([submit, "jobs/train.py", *common, "--np", "2", "--train-days", *DAYS[:2], "--valid-days", DAYS[2],
         "--output", str(artifact)], env)  # fmt: skip
    run([submit, "jobs/score.py", *common, "--ds", DAYS[2], "--model", str(artifact)], env)

    metrics = json.loads((artifact / "metrics.json").read_text())
    assert metrics["world_size"] == 2, "training must run as two Horovod ranks on the executors"
    assert list_partitions(str(root), "predictions") == [DAYS[2]]
    import pyarrow.parquet as pq

    predictions = pq.read_table(root / "tables" / "predictions" / f"ds={DAYS[2]}").to_pandas()
    features = pq.read_table(root / "tables" / "features" / f"ds={DAYS[2]}").to_pandas()
    assert len(predictions) == len(features) > 0
    assert set(predictions["impression_id"]) == set(features["impression_id"])
    assert predictions[["p_ctr", "p_cvr", "p_ctcvr"]].stack().between(0, 1).all()
    assert (predictions["model_version"] == "model").all()
    shipped = list(Path(cluster["state"]).glob("work-*/app-*/*/cvr.zip"))
    assert shipped, "executors must receive the package through --py-files"
