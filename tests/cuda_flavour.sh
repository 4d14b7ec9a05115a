#!/usr/bin/env bash
# The CUDA flavour of fastrnn on a machine without a GPU (CI runs it after
# tests/run.sh): what a GPU user installs must build, import and register.
#
# 1. A second virtual environment with the registry's CUDA build of torch 2.13.0
#    (`pip --isolated` skips this machine's pip configuration, which serves a
#    CPU wheel; about 3 GB with its nvidia packages, kept between runs in
#    $FASTRNN_CUDA_VENV and in pip's cache).
# 2. fastrnn built there for sm_80 and sm_90 with nvcc from the machine and the
#    cuBLAS headers of those nvidia packages, in a copy of this tree.
# 3. `import fastrnn` in a fresh process: the cuda and triton backends are
#    listed, and every fastrnn op has a CPU and a CUDA kernel in the
#    dispatcher's table.
# 4. A fast part of the CPU test suite passes in that environment (its GPU
#    tests skip), and so does the GPU check's dry run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${FASTRNN_CUDA_VENV:-$HOME/.cache/fastrnn/cuda-venv-torch-2.13.0}
PY=$VENV/bin/python

if ! "$PY" -c "import sys, torch; sys.exit(torch.version.cuda is None)" 2>/dev/null; then
  echo "creating $VENV with the CUDA build of torch 2.13.0"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$PY" -m pip --isolated install -q torch==2.13.0
fi
"$PY" -m pip install -q ninja pybind11 pytest pytest-benchmark numpy tqdm
"$PY" -c "import torch, triton; print('CUDA flavour: torch', torch.__version__, 'triton', triton.__version__)"

# torch looks for the toolkit next to the nvcc on PATH (here a wrapper script
# in /usr/local/bin); point it at the toolkit itself.
if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then export CUDA_HOME=/usr/local/cuda; fi
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$BUILD"
cd "$BUILD"
export TORCH_CUDA_ARCH_LIST="8.0;9.0"  # A100, H100/H200: there is no GPU to ask
MAX_JOBS=${MAX_JOBS:-2} "$PY" setup.py -q build_ext --inplace \
  > build.log 2>&1 || { tail -50 build.log; exit 1; }

"$PY" - <<'EOF'
import torch
import fastrnn

available = fastrnn.backends.available()
assert {"cpu", "triton", "cuda"} <= set(available), f"backends listed: {available}"
ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastrnn::"))
assert ops, "no fastrnn op is registered"
for op in ops:
    table = torch._C._dispatch_dump(op)
    # Every op serves both devices; those of fastrnn._C's schema block
    # (csrc/ops.cpp) through a kernel of their own per device, the Python
    # (Triton) ops through one device-generic kernel.
    native = "csrc/ops.cpp" in table.split("\n", 3)[2]
    has = (torch._C._dispatch_has_kernel_for_dispatch_key if native
           else torch._C._dispatch_has_computed_kernel_for_dispatch_key)
    missing = [key for key in ("CPU", "CUDA") if not has(op, key)]
    assert not missing, f"{op} has no {missing} kernel:\n{table}"
print(f"import fastrnn: backends {', '.join(available)}; CPU and CUDA kernels for {', '.join(ops)}")
EOF

OMP_NUM_THREADS=1 "$PY" -m pytest -q -p no:cacheprovider tests/test_kernel_signatures.py \
  tests/test_cuda_gpu.py tests/test_backends.py tests/test_bad_input.py tests/test_module_api.py \
  tests/test_cpu_kernels.py tests/test_cpu_bfloat16.py tests/test_cpu_aten_lstm.py \
  tests/test_cpu_onednn_training.py tests/test_cpu_deterministic.py \
  tests/test_cpu_op_contract.py tests/test_autocast.py -k "not large"
PYTHON=$PY bash benchmarks/gpu_check.sh --dry-run --out "$BUILD/gpu-check-out" > gpu-check.log 2>&1 \
  || { tail -40 gpu-check.log; exit 1; }
tail -3 gpu-check.log
