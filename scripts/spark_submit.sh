#!/usr/bin/env bash
# spark-submit a cvr job with the package shipped to executors:
#   scripts/spark_submit.sh [--master URL] jobs/<job>.py [job arguments...]
# Rebuilds dist/cvr.zip, passes it with --py-files, runs the driver against the checkout (client mode) and
# the executors with the venv's python. Default master: $CVR_SPARK_MASTER or local[*]. Extra spark-submit
# options go in $CVR_SUBMIT_OPTS (e.g. "--conf spark.executor.memory=2g").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CVR_VENV:-$ROOT/.venv}"
MASTER="${CVR_SPARK_MASTER:-local[*]}"
if [ "${1:-}" = "--master" ]; then
  MASTER="${2:?--master needs a URL}"
  shift 2
fi
JOB="${1:?usage: $0 [--master URL] jobs/<job>.py [args...]}"
shift
ZIP="$("$ROOT/scripts/package_pyfiles.sh")"
export PYSPARK_PYTHON="$VENV/bin/python"
export PYSPARK_DRIVER_PYTHON="$ROOT/scripts/driver_python.sh"
# shellcheck disable=SC2086  # CVR_SUBMIT_OPTS is a list of options
exec "$VENV/bin/spark-submit" --master "$MASTER" --py-files "$ZIP" \
  --conf spark.sql.session.timeZone=UTC ${CVR_SUBMIT_OPTS:-} "$JOB" "$@"
