"""Compiles the CUDA backend's C++ with no GPU and no CUDA build of torch.

* Each csrc/cuda/*.cu is built with the nvcc on PATH for sm_80 (A100) and sm_90
  (H100) with warnings as errors and `-Xptxas -v`, so a kernel that stops
  compiling, starts warning, or spills registers fails here long before anyone
  reaches a GPU. The register report is printed (`pytest -s`, and on failure).
* Each torch binding csrc/cuda/*.cpp gets a g++ -fsyntax-only check against this
  torch's headers and the CUDA toolkit's. A CPU wheel ships the c10/cuda headers
  but not the one its CMake generates (c10/cuda/impl/cuda_cmake_macros.h); a
  stand-in defining what a shared-library build defines is supplied for it.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from torch.utils.cpp_extension import include_paths

ROOT = Path(__file__).resolve().parents[1]
KERNELS = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
BINDINGS = sorted((ROOT / "csrc" / "cuda").glob("*.cpp"))
ARCHS = ("80", "90")
# What torch.utils.cpp_extension adds to every nvcc call of the real build: the
# kernels must not rely on implicit half/bfloat16 conversions or operators.
TORCH_NVCC_FLAGS = (
    "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
    "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC",
)
NVCC = shutil.which("nvcc")
GXX = shutil.which("g++")

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")


def _compile(source: Path, out_dir: Path) -> subprocess.CompletedProcess:
    cmd = [
        NVCC, "-c", str(source), "-o", str(out_dir / (source.stem + ".o")),
        "-std=c++17", "-O3", "-I", str(ROOT / "csrc" / "include"),
        "-Xptxas", "-v", "-Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra",
        *TORCH_NVCC_FLAGS,
    ]
    for arch in ARCHS:
        cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return subprocess.run(cmd, capture_output=True, text=True)


def _cuda_include() -> str:
    """The toolkit's include directory, as this nvcc passes it to its own compiles."""
    dry = subprocess.run([NVCC, "-v", "-E", "-x", "cu", os.devnull, "-o", os.devnull],
                         capture_output=True, text=True)
    found = re.search(r'INCLUDES="-I([^"]+)"', dry.stderr)
    assert found, f"cannot find the CUDA include directory in nvcc -v output:\n{dry.stderr}"
    return found.group(1)


def _syntax_check(source: Path, stub_dir: Path, cuda_include: str) -> subprocess.CompletedProcess:
    cmd = [GXX, "-fsyntax-only", "-std=c++17", "-Wall", "-Wextra", "-Werror",
           "-I", str(ROOT / "csrc" / "include")]
    for path in (*include_paths(), str(stub_dir), cuda_include, sysconfig.get_paths()["include"]):
        cmd += ["-isystem", path]
    return subprocess.run(cmd + [str(source)], capture_output=True, text=True)


def _cmake_stub(root: Path) -> Path:
    header = root / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    header.parent.mkdir(parents=True)
    header.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    return root


def _demangle(names: list[str]) -> dict[str, str]:
    """Readable kernel names, e.g. `persistent_forward_kernel<__half, GRU>`."""
    filt = shutil.which("c++filt")
    if filt is None or not names:
        return {n: n for n in names}
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout
    modes = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")  # enum order of fastrnn::Mode
    short = [
        re.sub(r"\(fastrnn::Mode\)(\d)", lambda m: modes[int(m.group(1))],
               re.sub(r"^void |\(anonymous namespace\)::|fastrnn::cuda::|(?<=>)\(.*\)$", "", d))
        for d in out.splitlines()
    ]
    return dict(zip(names, short)) if len(short) == len(names) else {n: n for n in names}


def _report(log: str) -> tuple[str, list[str]]:
    """A compact per-kernel report, and the kernels that spill registers."""
    mangled = re.findall(r"Compiling entry function '(\S+)'", log)
    readable = _demangle(sorted(set(mangled)))
    lines, spills, kernel, arch = [], [], "?", "?"
    for line in log.splitlines():
        if m := re.search(r"Compiling entry function '(\S+)' for '(sm_\d+)'", line):
            kernel, arch = readable[m.group(1)], m.group(2)
        elif m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line):
            if m.group(1) != "0" or m.group(2) != "0":
                spills.append(f"{arch} {kernel}: {line.strip()}")
        elif "Used" in line and "registers" in line:
            lines.append(f"  {arch} {kernel}: {line.split(':', 1)[1].strip()}")
    return "\n".join(lines), spills


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """nvcc results per kernel file and g++ results per binding, built in parallel."""
    out_dir = tmp_path_factory.mktemp("nvcc")
    jobs = [(src, lambda src=src: _compile(src, out_dir)) for src in KERNELS]
    if GXX is not None:
        stub, cuda_include = _cmake_stub(tmp_path_factory.mktemp("stub")), _cuda_include()
        jobs += [(src, lambda src=src: _syntax_check(src, stub, cuda_include)) for src in BINDINGS]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(lambda job: job[1](), jobs))
    return {src: result for (src, _), result in zip(jobs, results)}


def test_there_are_kernels():
    assert KERNELS, "csrc/cuda/*.cu: no kernel sources found"


@pytest.mark.parametrize("source", KERNELS, ids=[k.name for k in KERNELS])
def test_compiles_clean_without_spills(builds, source):
    result = builds[source]
    log = result.stdout + result.stderr
    report, spills = _report(log)
    print(f"\n{source.name}:\n{report}")
    assert result.returncode == 0, f"nvcc failed for {source.name}:\n{log}"
    noise = [
        line for line in log.splitlines()
        if re.search(r"warning|error", line, re.IGNORECASE)
    ]
    assert not noise, f"{source.name} warns:\n" + "\n".join(noise) + f"\n{report}"
    assert not spills, f"{source.name} spills registers:\n" + "\n".join(spills) + f"\n{report}"


@pytest.mark.skipif(GXX is None, reason="g++ not on PATH")
@pytest.mark.parametrize("source", BINDINGS, ids=[b.name for b in BINDINGS])
def test_binding_syntax(builds, source):
    result = builds[source]
    assert result.returncode == 0, f"g++ -fsyntax-only {source.name}:\n{result.stderr}"
    assert not result.stderr.strip(), f"{source.name} warns:\n{result.stderr}"
