"""`cuda` backend: hand-written CUDA kernels of fastrnn._C (csrc/cuda/).

Serves CUDA tensors in float32, float16 and bfloat16 for every mode, through
the same native op as the cpu backend (fastrnn._ops.layer). It is opt-in
(FASTRNN_BACKEND=cuda or `fastrnn.use_backend("cuda")`) and stays out of the
automatic chain until its parity suite has passed on a GPU (docs/cuda_kernels.md).
"""
from __future__ import annotations

import torch

from . import register
from .native import LOAD_ERROR, NativeBackend


class CudaBackend(NativeBackend):
    name = "cuda"
    device_type = "cuda"
    dtypes = (torch.float32, torch.float16, torch.bfloat16)

    def available(self):
        if LOAD_ERROR is not None:
            return LOAD_ERROR
        if not torch._C._dispatch_has_kernel_for_dispatch_key("fastrnn::layer_fwd", "CUDA"):
            return "fastrnn._C was built without CUDA kernels (needs a CUDA torch and nvcc)"
        return None


register(CudaBackend())
