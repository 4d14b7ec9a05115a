"""Compile every kernel variant for a GPU without a GPU and report ptxas resource use.

    python -m fastrnn.triton.aot_check [--arch 90] [--modes LSTM,GRU,...] [--dtypes ...]

Runs Triton's whole pipeline (TTIR, TTGIR, LLVM IR, PTX, cubin) for sm_<arch>,
then `ptxas -v` on the PTX for registers and spill bytes, for the tilings
plan.tiling can pick: every step row-tile height, persistent kernels at the
smallest and largest hidden size they accept.
This checks what the interpreter cannot: that every construct lowers for the
GPU and that nothing spills. Prints one line per kernel; exit status 1 on a
spill. Must run with TRITON_INTERPRET unset (interpreted kernels cannot be
compiled).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource

from .persistent_kernels import backward_persistent_kernel, forward_persistent_kernel
from .plan import (
    GATES,
    PERSISTENT_MAX_HIDDEN,
    STEP_MAX_BLOCK_B,
    kernel_constants,
    precision,
    tiling,
)
from .step_kernels import CELL, MATMUL, backward_step_kernel, forward_step_kernel

INDEX_POINTERS = {"prev_ptr": "*i64", "sizes_ptr": "*i32", "starts_ptr": "*i32"}
# Pointers to tensors in the layer's dtype; every other pointer is an fp32 buffer.
DTYPE_POINTERS = ("w_hh_ptr", "w_hr_ptr", "b_hh_ptr", "y_ptr")
TRITON_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def signature(fn, constants: dict, dtype: torch.dtype) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in constants:
            sig[name] = "constexpr"
        elif name in INDEX_POINTERS:
            sig[name] = INDEX_POINTERS[name]
        elif name.endswith("_ptr"):
            sig[name] = "*" + TRITON_DTYPES[dtype] if name in DTYPE_POINTERS else "*fp32"
        else:
            sig[name] = "i32"
    return sig


def ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    """(registers, spill store bytes) of the one kernel in `ptx`."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        suffix = "a" if arch >= 90 else ""  # Triton targets sm_90a-style archs from Hopper on
        cmd = [get_ptxas(arch).path, f"-arch=sm_{arch}{suffix}", "-v", src, "-o", src + ".cubin"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    registers = int(re.search(r"Used (\d+) registers", out)[1])
    return registers, int(re.search(r"(\d+) bytes spill stores", out)[1])


def shapes(mode: str, dtype: torch.dtype):
    """(family, batch, hidden) at the edges of every tiling plan.tiling can pick:
    each step row-tile height, and the smallest and largest persistent hidden."""
    step_blocks = [16 << i for i in range(8) if 16 << i <= STEP_MAX_BLOCK_B[precision(dtype)]]
    for batch in step_blocks:
        yield "step", batch, 256
    for hidden in (16, PERSISTENT_MAX_HIDDEN[precision(dtype)][mode]):
        yield "persistent", 8, hidden


def variants(mode: str, dtype: torch.dtype):
    """(kernel, constexprs, num_warps) for every kernel a layer of this mode runs."""
    proj = mode == "LSTM"  # the projection adds code to both families' kernels
    for family, batch, hidden in shapes(mode, dtype):
        tile = tiling(family, mode, batch, hidden, hidden // 2 if proj else hidden, dtype)
        consts = kernel_constants(mode, dtype, tile, proj)
        warps = consts.pop("num_warps")
        if family == "persistent":
            loop = dict(consts, REVERSE=False, BLOCK_H=tile.block_h, BLOCK_O=tile.block_o)
            yield forward_persistent_kernel, dict(loop, HAS_BHH=True), warps
            yield backward_persistent_kernel, loop, warps
            continue
        for stage in (CELL.value, MATMUL.value):
            step = dict(consts, STAGE=stage, BLOCK_N=tile.block_h)
            if stage == CELL.value or proj:
                yield forward_step_kernel, dict(step, HAS_BHH=True), warps
            yield backward_step_kernel, step, warps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80, 90")
    parser.add_argument("--modes", default=",".join(GATES))
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="float32 checks IEEE dots, bfloat16 TF32 ones (as float16 would)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    target = GPUTarget("cuda", args.arch, 32)
    spilled = False
    for mode in args.modes.split(","):
        for dtype in (getattr(torch, d) for d in args.dtypes.split(",")):
            for fn, consts, warps in variants(mode, dtype):
                src = ASTSource(fn=fn, signature=signature(fn, consts, dtype), constexprs=consts)
                kernel = triton.compile(src, target=target, options={"num_warps": warps})
                regs, spill = ptxas_usage(kernel.asm["ptx"], args.arch)
                spilled |= spill > 0
                shown = {k: v for k, v in consts.items() if k.startswith(("BLOCK", "STAGE"))}
                print(f"{fn.__name__} {mode} {dtype} warps={warps} {shown}: "
                      f"{regs} registers, {spill} bytes spilled", flush=True)
    return 1 if spilled else 0


if __name__ == "__main__":
    sys.exit(main())
