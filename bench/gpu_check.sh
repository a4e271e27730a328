#!/usr/bin/env bash
# The GPU check in one call (≤ 8 minutes on one H100/H200): sampling (bench/gpu_check.py) and, where it
# exists, training (bench/gpu_train_check.py). Each prints a table and a JSON document; both are also saved
# under $GPU_CHECK_OUT (default $OUT, else /tmp/lungddpm-gpu-check). Pass --smoke to run everything small on any device (a CPU too).
#
#   bash bench/gpu_check.sh            # on the GPU machine
#   bash bench/gpu_check.sh --smoke    # anywhere: proves the check runs end to end
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DEST=${GPU_CHECK_OUT:-${OUT:-/tmp/lungddpm-gpu-check}}  # $OUT: the folder a device run hands back
mkdir -p "$DEST"
export PYTHONPATH="$PWD/engine${PYTHONPATH:+:$PYTHONPATH}"
"$PY" bench/gpu_check.py "$@" | tee "$DEST/sampling.txt"
if [ -f bench/gpu_train_check.py ]; then
  "$PY" bench/gpu_train_check.py "$@" | tee "$DEST/training.txt"
fi
