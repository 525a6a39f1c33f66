"""The one SparkSession builder used by every job and test."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from cvr.config import SparkConfig

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
CODEGEN_CACHE_ENTRIES = 512


def delta_jars_available(extra_conf: dict[str, str] | None = None) -> bool:
    """True when Delta's JVM classes are reachable: jars in pyspark's jars dir, SPARK_HOME, or spark.jars."""
    import pyspark

    dirs = [Path(pyspark.__file__).parent / "jars"]
    if os.environ.get("SPARK_HOME"):
        dirs.append(Path(os.environ["SPARK_HOME"]) / "jars")
    if any(glob.glob(str(d / "delta-spark_*.jar")) for d in dirs):
        return True
    conf = extra_conf or {}
    listed = ",".join(conf.get(k, "") for k in ("spark.jars", "spark.jars.packages", "spark.driver.extraClassPath"))
    return "delta-spark" in listed or "delta-core" in listed or "io.delta:" in listed


def build_spark(cfg: SparkConfig | None = None, app_name: str | None = None):
    """Create (or reuse) the SparkSession for `cfg`, with quiet logs and Delta when its jars are present."""
    from pyspark.sql import SparkSession

    cfg = cfg or SparkConfig()
    os.environ.setdefault("PYSPARK_PYTHON", os.environ.get("PYSPARK_PYTHON", _python()))
    builder = (
        SparkSession.builder.master(cfg.master)
        .appName(app_name or cfg.app_name)
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.driver.memory", cfg.driver_memory)
        .config("spark.ui.enabled", str(cfg.ui_enabled).lower())
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.driver.extraJavaOptions", "-Dlog4j2.level=warn")
        # Spark keeps 100 compiled query classes; one build-samples run generates more, so a session that runs
        # stages again (nightly over several days, experiments, tests) recompiled and re-JITted them each time.
        .config("spark.sql.codegen.cache.maxEntries", str(CODEGEN_CACHE_ENTRIES))
    )
    for key, value in cfg.extra_conf.items():
        builder = builder.config(key, value)
    if delta_jars_available(cfg.extra_conf):
        builder = builder.config("spark.sql.extensions", DELTA_EXTENSION).config(
            "spark.sql.catalog.spark_catalog", DELTA_CATALOG
        )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    return spark


def spark_has_delta(spark) -> bool:
    return DELTA_EXTENSION in (spark.conf.get("spark.sql.extensions", "") or "")


def _python() -> str:
    import sys

    return sys.executable
