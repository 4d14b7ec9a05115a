"""`cpu` backend: fused C++ time loops of fastrnn._C (csrc/cpu/).

Serves float32, float64 and bfloat16 CPU tensors for every mode; anything else
is declined with a reason so the registry falls back to the next backend. Both
directions of a bidirectional layer go to the kernel in one call, which runs
them side by side when it has two threads.
"""
from __future__ import annotations

import torch

from . import register
from .native import NativeBackend, _ops


class CpuBackend(NativeBackend):
    name = "cpu"
    device_type = "cpu"
    dtypes = (torch.float32, torch.float64, torch.bfloat16)

    def bidirectional_layer(self, spec, x, batch_sizes, h0, c0, weights):
        return _ops.bidirectional_layer(spec, x, batch_sizes, h0, c0, weights)


register(CpuBackend())
