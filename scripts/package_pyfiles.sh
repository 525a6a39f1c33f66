#!/usr/bin/env bash
# Build dist/cvr.zip: the cvr package for spark-submit --py-files (executors import it from there).
# Deterministic (sorted entries, fixed timestamps), so an unchanged tree gives a byte-identical zip.
# conf/ and schemas/ are NOT in it: they are read on the driver only, from the checkout (client deploy mode);
# executors receive resolved configs and specs inside the tasks. Prints the zip's path.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/dist/cvr.zip}"
PY="${CVR_VENV:-$ROOT/.venv}/bin/python"
[ -x "$PY" ] || PY=python3
mkdir -p "$(dirname "$OUT")"
"$PY" - "$ROOT" "$OUT" <<'PYEOF'
import os, sys, zipfile
root, out = sys.argv[1], sys.argv[2]
tmp = out + ".tmp"
files = []
for folder, dirs, names in os.walk(os.path.join(root, "cvr")):
    dirs[:] = sorted(d for d in dirs if d != "__pycache__")
    files += [os.path.join(folder, n) for n in names if n.endswith(".py")]
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
    for path in sorted(files):
        info = zipfile.ZipInfo(os.path.relpath(path, root), date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        with open(path, "rb") as handle:
            archive.writestr(info, handle.read())
os.replace(tmp, out)
print(out)
PYEOF
