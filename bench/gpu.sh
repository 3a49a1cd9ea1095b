#!/usr/bin/env bash
# fedweave on a CUDA machine, in one go (issue #15). Not run in CI, which has no GPU.
#   1. the device-dependent tests with FEDWEAVE_TEST_DEVICE=cuda (tests/test_device.py, the
#      executor tests and the conv kernels' equality with serial take the device from the
#      `device` fixture of tests/conftest.py);
#   2. W1 (MLP) and W2 (CNN) at 10, 100 and 1,000 clients per round, serial and vectorized
#      (and the plain PyTorch loop at 10), printing seconds per round, clients per second
#      and, for W1, GFLOP/s as a share of the device's measured fp32 matmul rate.
# Usage, from the repository root:  bash bench/gpu.sh [OUT_DIR]      (default bench/out/gpu)
# Environment: PYTHON (default .venv/bin/python), DEVICE (default cuda), ROUNDS (default 20),
# SCALE (default 1.0: full-size data; 0.1 for a quick look).
set -euo pipefail
PYTHON=${PYTHON:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
ROUNDS=${ROUNDS:-20}
SCALE=${SCALE:-1.0}
OUT=${1:-bench/out/gpu}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}

"$PYTHON" - <<'PY'
import torch, sys
if not torch.cuda.is_available():
    sys.exit("bench/gpu.sh needs a CUDA device: torch.cuda.is_available() is False")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
      f"{torch.cuda.device_count()} device(s)")
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true

echo "== device-dependent tests on $DEVICE"
# a failing test is reported, not fatal: the benchmarks below still run (device time is scarce)
TESTS=0
FEDWEAVE_TEST_DEVICE=$DEVICE "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_device.py tests/test_executors.py \
  tests/test_conv_kernel.py \
  2>&1 | tee "$OUT/tests.txt" || TESTS=$?

# W2 runs both conv forms (clients as groups; clients in turn, channels-last): which one
# `auto` should pick on a GPU is what this measures (on the CPU: the grouped form unless GroupNorm)
for W in w1 w2; do
  VEC=vectorized
  [ "$W" = w2 ] && VEC=vectorized:conv,vectorized:conv-loop
  echo "== $W: plain vs serial vs vectorized at 10 clients per round"
  "$PYTHON" bench/devices.py --workload "$W" --device "$DEVICE" --rounds "$ROUNDS" --scale "$SCALE" \
    --per-round 10 --runners "plain,serial,$VEC" --json "$OUT/$W-10.json" | tee "$OUT/$W-10.txt"
  echo "== $W: serial vs vectorized at 100 and 1,000 clients per round"
  "$PYTHON" bench/devices.py --workload "$W" --device "$DEVICE" --rounds "$ROUNDS" --scale "$SCALE" \
    --per-round 100,1000 --runners "serial,$VEC" --json "$OUT/$W-100-1000.json" | tee "$OUT/$W-100-1000.txt"
done
echo "figures in $OUT; copy the tables into docs/results/gpu.md"
if [ "$TESTS" != 0 ]; then echo "the device tests failed (exit $TESTS): see $OUT/tests.txt"; exit "$TESTS"; fi
