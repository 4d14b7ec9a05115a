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
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
