"""Builds fastrnn and its one native extension, fastrnn._C.

Install with the user's own torch (no isolated build env, which would pull a
different torch):  pip install --no-build-isolation -e .

- csrc/*.cpp and csrc/cpu/*.cpp always build (schemas + CPU kernels).
- csrc/cuda/*.cu and csrc/cuda/*.cpp build only when this torch is a CUDA build
  and nvcc exists (CUDA_HOME); torch.cuda.is_available() is not consulted, so a
  GPU-less build box with CUDA torch still builds them. TORCH_CUDA_ARCH_LIST is
  honoured by torch's build helper.
- The CUDA headers torch's own headers include (cuBLAS, cuSPARSE, ...) are
  taken from the toolkit, and else from the nvidia-* wheels a pip-installed CUDA
  torch brings (site-packages/nvidia/cu13/include): a machine with only nvcc
  and a CUDA torch from the registry builds as it is.
- FASTRNN_NATIVE=0 drops -march=native (for wheels meant for other CPUs) and
  compiles without fused multiply-add contraction (extension(), below).
"""
import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def simd_flags():
    """Selects ATen's at::vec implementation for this machine's SIMD width.

    ATen's vector headers pick AVX2 / AVX-512 code only under CPU_CAPABILITY_*
    (ATen defines it per dispatch build); without it at::vec::Vectorized is a
    plain array. Only meaningful together with -march=native.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        return []
    return [f"-DCPU_CAPABILITY={capability}", f"-DCPU_CAPABILITY_{capability}"]


def wheel_cuda_includes():
    """Include folders of the nvidia-* wheels installed beside torch (cuBLAS,
    cuSPARSE, ... headers), for toolkits that ship nvcc without them."""
    if os.path.exists(os.path.join(CUDA_HOME, "include", "cublas_v2.h")):
        return []
    try:
        import nvidia
    except ImportError:
        return []
    roots = [p for base in nvidia.__path__ for p in glob.glob(os.path.join(base, "*", "include"))]
    return sorted(roots)


def extension():
    with_cuda = CUDA_HOME is not None and torch.version.cuda is not None
    # -fopenmp at compile time only: ATen's at::parallel_for is an inline
    # `#pragma omp parallel` that silently runs serially without it. Not linked
    # with -fopenmp, so the GOMP symbols bind to the OpenMP runtime libtorch
    # already loaded (one thread pool, torch.set_num_threads applies).
    cxx = ["-O3", "-std=c++17", "-fopenmp"]
    if os.environ.get("FASTRNN_NATIVE", "1") != "0":
        cxx.append("-march=native")
        cxx += simd_flags()
    else:
        # Without CPU_CAPABILITY_*, at::vec's fmadd is a plain a * b + c that
        # GCC fuses in some block shapes and not in others when CFLAGS name an
        # FMA target (-march=x86-64-v3 wheels): results then depend on how
        # threads split the rows, by an ulp. Unfused, they do not.
        cxx.append("-ffp-contract=off")
    srcs = sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp")
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    if not with_cuda:
        return CppExtension(
            "fastrnn._C", srcs, include_dirs=include_dirs, extra_compile_args={"cxx": cxx}
        )
    srcs += sources("csrc/cuda/*.cu") + sources("csrc/cuda/*.cpp")
    return CUDAExtension(
        "fastrnn._C",
        srcs,
        include_dirs=include_dirs + wheel_cuda_includes(),
        define_macros=[("FASTRNN_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17"]},
    )


setup(
    name="fastrnn",
    version="0.1.0",
    description="Fused recurrent kernels (LSTM, GRU, RNN) as drop-in torch.nn replacements",
    packages=find_packages(include=["fastrnn", "fastrnn.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.10",
    install_requires=[],  # torch is the user's own; see README for the pinned install
    entry_points={"console_scripts": ["fastrnn=fastrnn.cli:main"]},
)
