#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs, then runs every backend
# that this machine can run (the Triton kernels through Triton's CPU interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash .ci/install
# One pytest worker per core (pytest-xdist); each test runs with one intra-op
# thread (tests/conftest.py) unless it asks for more. Counted before the
# export below: GNU nproc reports OMP_NUM_THREADS when it is set.
JOBS=${FASTRNN_TEST_JOBS:-$(nproc)}
export OMP_NUM_THREADS=1
"$PY" -m pytest tests -q -p no:cacheprovider -n "$JOBS" "$@"
# The same parity suite again on the Triton kernels, interpreted on the CPU.
TRITON_INTERPRET=1 FASTRNN_BACKEND=triton "$PY" -m pytest -q -p no:cacheprovider -n "$JOBS" \
  tests/test_triton_kernels.py tests/test_parity.py tests/test_backends.py tests/test_swap_and_training.py tests/test_compile.py \
  tests/test_gates.py tests/test_nonfinite.py tests/test_accuracy.py
