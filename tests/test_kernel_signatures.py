"""A device kernel with the wrong C++ signature must fail the build, not abort
`import fastrnn` on a user's machine.

The dispatcher compares the C++ signatures of an op's kernels only when the
second one registers, at import: a CUDA kernel taking std::string_view for the
schema's `str` once built cleanly and then aborted every CUDA user's interpreter
("Mismatch in kernel C++ signatures"). csrc/include/fastrnn/kernels.h declares
each op's function type once; devices register through fastrnn::impl<Op, &fn>,
whose template parameter has that type. These tests compile a kernel written
against the declared signature and one that differs only in how it takes the
mode string: the first must compile, the second must not.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from torch.utils.cpp_extension import include_paths

ROOT = Path(__file__).resolve().parents[1]
GXX = shutil.which("g++")

pytestmark = pytest.mark.skipif(GXX is None, reason="g++ not on PATH")

# A layer_fwd kernel whose mode parameter has the type MODE_TYPE.
KERNEL = """
#include "fastrnn/kernels.h"
namespace {
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_fwd(
    MODE_TYPE, const at::Tensor& x, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, bool, bool) {
  return {x, x, x, x};
}
}  // namespace
TORCH_LIBRARY_IMPL(fastrnn, CPU, m) { fastrnn::impl<fastrnn::LayerFwd, &layer_fwd>(m); }
"""


def _compile(mode_type: str, tmp_path: Path) -> subprocess.CompletedProcess:
    source = tmp_path / "kernel.cpp"
    source.write_text(KERNEL.replace("MODE_TYPE", mode_type))
    cmd = [GXX, "-std=c++17", "-fsyntax-only", "-I", str(ROOT / "csrc" / "include"), str(source)]
    cmd += [f"-I{p}" for p in include_paths()]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_declared_signature_compiles(tmp_path):
    done = _compile("const std::string&", tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.mark.parametrize("mode_type", ["std::string_view", "std::string", "const char*"])
def test_other_signature_fails_to_compile(mode_type, tmp_path):
    done = _compile(mode_type, tmp_path)
    assert done.returncode != 0, f"a kernel taking {mode_type} compiled against kernels.h"
    assert "could not convert" in done.stderr or "no matching function" in done.stderr, done.stderr[-4000:]
