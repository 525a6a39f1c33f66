#!/usr/bin/env bash
# PYSPARK_DRIVER_PYTHON for spark-submit (scripts/spark_submit.sh sets it): spark-submit puts --py-files
# first on the driver's PYTHONPATH, where a zipped cvr cannot read conf/ and schemas/ beside it. Putting the
# checkout first makes the driver import the real package; executors still import the shipped zip.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "${CVR_VENV:-$ROOT/.venv}/bin/python" "$@"
