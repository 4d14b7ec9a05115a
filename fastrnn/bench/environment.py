"""The machine and software a result was measured with, recorded next to every result."""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import sys

import torch

import fastrnn


def cpu_name() -> str:
    """/proc/cpuinfo's model name (what lscpu prints as Model name), else platform's guess."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


# The instruction sets that decide CPU kernel speed here (fp32 FMA width, bf16
# dot products, matrix tiles): what a reader comparing two machines needs.
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "asimd", "sve", "sve2")


def _cpuinfo_field(name: str) -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == name:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_features() -> list[str]:
    """The SIMD_FLAGS this CPU reports (x86 'flags', Arm 'Features'), in that order."""
    present = set((_cpuinfo_field("flags") or _cpuinfo_field("Features")).split())
    return [flag for flag in SIMD_FLAGS if flag in present]


def _version(package: str):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def metadata(device: str, argv: list[str]) -> dict:
    cuda = device.startswith("cuda")
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["fastrnn", "bench", *argv]),
        "machine": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_simd": cpu_features(),
        # The ATen kernels torch dispatches to on this CPU (DEFAULT, AVX2, AVX512).
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": device,
        "gpu": torch.cuda.get_device_name(torch.device(device)) if cuda else None,
        "threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "triton": _version("triton"),
        "fastrnn": fastrnn.__version__,
        "backends_available": fastrnn.backends.available(),
        # Other work on the machine inflates and scatters timings; say how busy it was.
        "load_avg_1min_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
