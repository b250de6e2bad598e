#!/usr/bin/env bash
# Every pending GPU figure in one command (bench/gpu_check.py says what and where):
#   bash bench/gpu_check.sh [OUT_DIR] [--quick]
# On a lent GPU machine (bare, offline) the wheels collected into .whl/ by
# /work/shared/tools/device_wheels.py are installed first, only where clipocr's imports are
# missing, so the same command runs unchanged on a machine that has them. $PYTHON picks the
# interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
NEEDS="open_clip zarr numcodecs distributed webdataset lmdb"
if ! "$PY" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))" $NEEDS; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "gpu_check: imports missing and no .whl/ to install" >&2; exit 1; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec "$PY" bench/gpu_check.py "$@"
