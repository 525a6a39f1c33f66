"""The pinned stack is importable and Horovod/Spark actually work on this machine."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "module", ["pyspark", "torch", "petastorm", "horovod.torch", "pyarrow", "delta", "deltalake", "cvr"]
)
def test_requested_packages_import(module):
    importlib.import_module(module)


def test_pins_match_the_stack():
    import numpy
    import pyarrow
    import pyspark
    import torch

    assert pyarrow.__version__.startswith("14."), "petastorm needs pyarrow < 15"
    assert pyspark.__version__.startswith("4.0."), "pyspark 4.1+ needs pyarrow >= 18"
    assert numpy.__version__.startswith("1."), "pyarrow 14 is built against numpy 1.x"
    assert torch.__version__.startswith("2.13")


def test_horovod_build_has_pytorch_and_gloo():
    out = subprocess.run([str(BIN / "horovodrun"), "--check-build"], capture_output=True, text=True, check=True).stdout
    assert "[X] PyTorch" in out
    assert "[X] Gloo" in out


def test_two_process_horovodrun_allreduce(repo_root):
    script = repo_root / "tests" / "scripts" / "hvd_allreduce.py"
    cmd = [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = [json.loads(line.split(">:", 1)[-1]) for line in proc.stdout.splitlines() if '"sum"' in line]
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert all(r["size"] == 2 and r["sum"] == 3.0 for r in results)


def test_local_spark_job_roundtrips_parquet(spark, tmp_path):
    from pyspark.sql import functions as F

    df = spark.range(0, 10_000, numPartitions=4).withColumn("bucket", F.col("id") % 7)
    df.write.parquet(str(tmp_path / "t"))
    back = spark.read.parquet(str(tmp_path / "t"))
    counts = {r["bucket"]: r["count"] for r in back.groupBy("bucket").count().collect()}
    assert sum(counts.values()) == 10_000
    assert counts[0] == len(range(0, 10_000, 7))


def test_delta_is_enabled_only_with_jars(spark):
    from cvr.session import delta_jars_available, spark_has_delta

    assert spark_has_delta(spark) == delta_jars_available()


def test_session_keeps_more_compiled_query_classes_than_sparks_default(spark):
    from cvr.session import CODEGEN_CACHE_ENTRIES

    # A static conf: it only takes effect when set before the session starts, as build_spark does.
    assert spark.conf.get("spark.sql.codegen.cache.maxEntries") == str(CODEGEN_CACHE_ENTRIES) != "100"


def test_cli_help_lists_subcommands():
    proc = subprocess.run([str(BIN / "cvr"), "--help"], capture_output=True, text=True, check=True)
    assert "show-config" in proc.stdout
