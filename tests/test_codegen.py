"""The built CPU kernels keep their accumulators in registers.

A register-blocked kernel (gemv_bf16.cpp, small_gemm.cpp) holds R x V
accumulators over its whole sum. Where the compiler gives the accumulator array
an address (GCC 12 at -O3 left a constant-trip loop after the sum rolled), it
stores every accumulator to the stack on every step of the sum, alongside the
FMAs: rows_times_wt_f32 ran at half speed that way for months, unnoticed,
because its results stay exact. This test reads the extension's machine code
(objdump) and fails on any loop that multiplies (an FMA or bf16 dot product) and
also stores two or more 512-bit registers to the stack.
"""
from __future__ import annotations

import bisect
import platform
import re
import shutil
import subprocess
from collections import defaultdict

import pytest

import fastrnn._C

FUNCTION = re.compile(r"^[0-9a-f]+ <(.*)>:$")
INSTRUCTION = re.compile(r"^\s+([0-9a-f]+):\s+(.*)$")
BACK_JUMP = re.compile(r"^j\w+\s+([0-9a-f]+) <")
STACK_STORE = re.compile(r"^vmov\w*\s+%zmm\d+,-?(0x[0-9a-f]+)?\(%rsp\)")
MULTIPLY = re.compile(r"^(vfmadd|vfnmadd|vdpbf16ps)")


def functions(path: str) -> dict[str, list[tuple[int, str]]]:
    """Each function's (address, instruction) list, names demangled."""
    text = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", path],
                          capture_output=True, text=True, check=True).stdout
    found: dict[str, list[tuple[int, str]]] = defaultdict(list)
    name = None
    for line in text.splitlines():
        if (m := FUNCTION.match(line)) is not None:
            name = m.group(1)
        elif name is not None and (m := INSTRUCTION.match(line)) is not None:
            found[name].append((int(m.group(1), 16), m.group(2)))
    return found


def spilling_loops(instructions: list[tuple[int, str]]) -> list[tuple[int, int]]:
    """(loop start, stack stores) of each loop (a backward jump's range) that
    multiplies and stores two or more zmm registers to the stack."""
    addresses = [a for a, _ in instructions]
    out = []
    for end, (address, text) in enumerate(instructions):
        if (m := BACK_JUMP.match(text)) is None:
            continue
        start = int(m.group(1), 16)
        if not addresses[0] <= start < address:
            continue
        body = [t for _, t in instructions[bisect.bisect_left(addresses, start):end + 1]]
        stores = sum(1 for t in body if STACK_STORE.match(t))
        if stores >= 2 and any(MULTIPLY.match(t) for t in body):
            out.append((start, stores))
    return out


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="reads x86-64 code")
@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is not installed")
@pytest.mark.skipif(not fastrnn._C.cpu_bf16_rows_kernels,
                    reason="built without AVX-512 (FASTRNN_NATIVE=0 or a CPU without it): no zmm code")
def test_kernel_loops_keep_accumulators_in_registers():
    code = functions(fastrnn._C.__file__)
    spilled = {name[:160]: loops for name, ins in code.items()
               if "fastrnn::" in name and (loops := spilling_loops(ins))}
    assert not spilled, f"FMA loops storing accumulators to the stack each step: {spilled}"
