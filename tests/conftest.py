"""Shared fixtures: one real local SparkSession for the whole test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


@pytest.fixture(scope="session")
def spark():
    from cvr.config import SparkConfig
    from cvr.session import build_spark

    session = build_spark(
        SparkConfig(master="local[2]", shuffle_partitions=4, driver_memory="2g"), app_name="cvr-tests"
    )
    yield session
    session.stop()


@pytest.fixture
def repo_root() -> Path:
    return REPO
