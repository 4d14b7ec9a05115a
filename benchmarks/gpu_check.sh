#!/usr/bin/env bash
# The GPU check: one command for the first GPU machine, about 8 minutes on one
# H100/H200 at most. It needs a CUDA torch (2.11 or newer), its Triton and nvcc
# already installed; it installs nothing and needs no network.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--dry-run]
#
# Phases, each under its own time limit so that a hang cannot eat the budget
# (the limits add up to 8 minutes):
#   build      fastrnn._C in place, for this GPU's architecture, on all cores
#   parity     the GPU parity tests against torch.nn / the reference, fail-fast,
#              once with FASTRNN_BACKEND=triton and once with =cuda
#   sanitizer  compute-sanitizer memcheck on one small case of every kernel
#              family (triton step/persistent, cuda step/persistent), racecheck
#              on the cuda families (the ones that use shared memory)
#   timing     torch.nn (cuDNN) against triton and cuda (benchmarks/gpu_check.py)
# Everything goes to DIR (default gpu-check-out): log.txt, environment.txt,
# parity-*.xml, phase-*.status, results.json, results.csv, table.md. The last
# screen is a summary; the exit status is 0 only if every phase passed.
#
# --dry-run runs the same phases on the CPU at toy sizes (no GPU, no sanitizer),
# so that CI keeps the script working.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
OUT=gpu-check-out
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT=$2; shift ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [--out DIR] [--dry-run]" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
rm -f "$OUT"/phase-*.status "$OUT"/parity-*.xml
exec > >(tee "$OUT/log.txt") 2>&1

# The in-place build wins over any installed fastrnn.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then export CUDA_HOME=/usr/local/cuda; fi
DRY_FLAG=()
[ "$DRY" = 1 ] && DRY_FLAG=(--dry-run)

N=0
FAILED=0
# phase NAME SECONDS COMMAND...: runs COMMAND under a time limit, records its status.
phase() {
  local name=$1 limit=$2 start rc status
  shift 2
  N=$((N + 1))
  echo "== phase $name (limit ${limit}s): $*"
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="timed out after ${limit}s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  [ "$rc" = 0 ] || FAILED=1
  status="$status in $(( $(date +%s) - start ))s"
  echo "$status" > "$OUT/phase-$(printf %02d $N)-$name.status"
  echo "== phase $name: $status"
}
skip() {
  N=$((N + 1))
  echo "skipped: $2" > "$OUT/phase-$(printf %02d $N)-$1.status"
  echo "== phase $1 skipped: $2"
}

"$PY" - > "$OUT/environment.txt" <<'EOF'
import os, torch
try:
    import triton
    tv = triton.__version__
except ImportError:
    tv = "not installed"
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {tv}, {gpu}, {os.cpu_count()} CPUs")
EOF
cat "$OUT/environment.txt"

if [ "$DRY" = 1 ]; then
  # A CUDA torch without a GPU cannot ask for the architecture: build for H100.
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
else
  ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") || {
    echo "no CUDA device visible to torch: run with --dry-run on a machine without a GPU" >&2; exit 2; }
  export TORCH_CUDA_ARCH_LIST=$ARCH
fi
phase build 90 env MAX_JOBS="$(nproc)" "$PY" setup.py -q build_ext --inplace

PYTEST=("$PY" -m pytest -x -q -p no:cacheprovider -p no:randomly)
if [ "$DRY" = 1 ]; then
  # The CPU kernels on a slice of the same parity files (the GPU-only tests skip).
  phase parity-cpu 120 env FASTRNN_BACKEND=cpu "${PYTEST[@]}" --junitxml="$OUT/parity-cpu.xml" \
    tests/test_cuda_gpu.py tests/test_parity.py -k "cuda or (LSTM and float32)"
else
  phase parity-triton 90 env FASTRNN_BACKEND=triton "${PYTEST[@]}" --junitxml="$OUT/parity-triton.xml" \
    tests/test_parity.py tests/test_triton_kernels.py tests/test_backends.py
  phase parity-cuda 60 env FASTRNN_BACKEND=cuda "${PYTEST[@]}" --junitxml="$OUT/parity-cuda.xml" \
    tests/test_cuda_gpu.py tests/test_parity.py -k "not speed"
fi

SANITIZER=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
if [ "$DRY" = 1 ]; then
  phase case-cpu 60 "$PY" benchmarks/gpu_check.py case cpu native --dry-run
  skip sanitizer "dry run (no GPU)"
elif [ ! -x "$SANITIZER" ]; then
  skip sanitizer "compute-sanitizer not found"
else
  for family in triton:step triton:persistent cuda:step cuda:persistent; do
    phase "memcheck-${family/:/-}" 15 "$SANITIZER" --tool memcheck --error-exitcode 1 \
      "$PY" benchmarks/gpu_check.py case "${family%%:*}" "${family##*:}"
  done
  for family in cuda:step cuda:persistent; do
    phase "racecheck-${family/:/-}" 15 "$SANITIZER" --tool racecheck --error-exitcode 1 \
      "$PY" benchmarks/gpu_check.py case "${family%%:*}" "${family##*:}"
  done
fi

phase timing 150 "$PY" benchmarks/gpu_check.py time "$OUT" "${DRY_FLAG[@]}"
"$PY" benchmarks/gpu_check.py summary "$OUT" || FAILED=1
exit $FAILED
