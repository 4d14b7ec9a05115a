"""`cuda` backend: hand-written CUDA kernels of fastrnn._C (csrc/cuda/).

Serves CUDA tensors in float32, float16 and bfloat16 for every mode, through
the same native op as the cpu backend (fastrnn._ops.layer). It is opt-in
(FASTRNN_BACKEND=cuda or `fastrnn.use_backend("cuda")`) and stays out of the
automatic chain until its parity suite has passed on a GPU (docs/cuda_kernels.md).
"""
from __future__ import annotations

import torch

from . import register
from .base import Backend
from .native import LOAD_ERROR, _ops

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class CudaBackend(Backend):
    name = "cuda"

    def available(self):
        if LOAD_ERROR is not None:
            return LOAD_ERROR
        if not torch._C._dispatch_has_kernel_for_dispatch_key("fastrnn::layer_fwd", "CUDA"):
            return "fastrnn._C was built without CUDA kernels (needs a CUDA torch and nvcc)"
        return None

    def supports(self, spec, x):
        if x.device.type != "cuda":
            return f"cuda backend runs on CUDA tensors, got {x.device.type}"
        if x.dtype not in DTYPES:
            return f"cuda backend supports float32, float16 and bfloat16, got {x.dtype}"
        return None

    def layer(self, spec, x, batch_sizes, h0, c0, weights, reverse):
        return _ops.layer(spec, x, batch_sizes, h0, c0, weights, reverse)


register(CudaBackend())
