#!/usr/bin/env bash
# Creates or reuses .venv with the pinned stack and a cached Horovod wheel. Idempotent and quiet on reuse.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CVR_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
HOROVOD_VERSION=0.28.1
TORCH_VERSION=2.13.0

if ! command -v java >/dev/null 2>&1; then
  echo "error: Spark needs Java 17 but 'java' is not on PATH." >&2
  echo "  Debian/Ubuntu: sudo apt-get update && sudo apt-get install -y openjdk-17-jre-headless" >&2
  echo "  macOS: brew install openjdk@17   (then put it on PATH or set JAVA_HOME)" >&2
  exit 3
fi
JAVA_MAJOR="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)"
if [ "${JAVA_MAJOR:-0}" -lt 17 ]; then
  echo "error: Spark 4 needs Java 17 or newer, found Java ${JAVA_MAJOR:-unknown}. Install openjdk-17-jre-headless." >&2
  exit 3
fi

STAMP="$VENV/.cvr-stamp"
WANT="$(cat "$ROOT/requirements.txt" "$ROOT/setup.py" "$ROOT/scripts/build_horovod.sh" | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi

echo "[bootstrap] preparing $VENV (first run takes several minutes)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
# torch first: Horovod compiles against it, and pinning it alone keeps pip on the local CPU wheel.
"${PIP[@]}" install "torch==$TORCH_VERSION" "setuptools>=77" wheel
"${PIP[@]}" install -r "$ROOT/requirements.txt"
WHEEL="$("$ROOT/scripts/build_horovod.sh" "$VENV" "$HOROVOD_VERSION")"
"${PIP[@]}" install "$WHEEL"
"${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT"
echo "$WANT" > "$STAMP"
echo "[bootstrap] ready" >&2
