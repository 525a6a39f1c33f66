#!/usr/bin/env bash
# Builds horovod from the PyPI sdist with the C++17 fix torch>=2.1 needs; caches the wheel outside the repo.
# Usage: build_horovod.sh VENV VERSION   -> prints the wheel path on stdout.
set -euo pipefail
VENV="$1"; VERSION="$2"
PY="$VENV/bin/python"
TORCH="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
PYTAG="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
GPU="cpu"; command -v nvcc >/dev/null 2>&1 && "$PY" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' && GPU="nccl"
CACHE="${CVR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cvr}/wheels/horovod-$VERSION-torch$TORCH-$PYTAG-$GPU"
existing="$(ls "$CACHE"/horovod-*.whl 2>/dev/null | head -1 || true)"
if [ -n "$existing" ]; then echo "$existing"; exit 0; fi

echo "[horovod] building $VERSION against torch $TORCH ($GPU); takes ~6 minutes on 2 cores, once" >&2
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
"$PY" -m pip download -q --no-deps --no-binary :all: "horovod==$VERSION" -d "$WORK" >&2
tar -xzf "$WORK"/horovod-"$VERSION".tar.gz -C "$WORK"
SRC="$WORK/horovod-$VERSION"
sed -i 's/CMAKE_CXX_STANDARD 14/CMAKE_CXX_STANDARD 17/' "$SRC/CMakeLists.txt" "$SRC/horovod/torch/CMakeLists.txt"
grep -q "CMAKE_CXX_STANDARD 17" "$SRC/horovod/torch/CMakeLists.txt" || { echo "[horovod] C++17 patch did not apply" >&2; exit 1; }
export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
[ "$GPU" = "nccl" ] && export HOROVOD_GPU_OPERATIONS=NCCL
export MAKEFLAGS="-j$(nproc)"
mkdir -p "$CACHE"
"$PY" -m pip wheel -q --no-build-isolation --no-deps "$SRC" -w "$WORK/out" >&2
cp "$WORK"/out/horovod-*.whl "$CACHE/"
ls "$CACHE"/horovod-*.whl | head -1
