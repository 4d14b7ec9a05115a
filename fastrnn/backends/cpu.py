"""`cpu` backend: fused C++ time loops of fastrnn._C (csrc/cpu/).

Serves float32, float64 and bfloat16 CPU tensors for every mode; anything else
is declined with a reason so the registry falls back to the next backend.
"""
from __future__ import annotations

import torch

from . import register
from .base import Backend
from .native import LOAD_ERROR, _ops

DTYPES = (torch.float32, torch.float64, torch.bfloat16)


class CpuBackend(Backend):
    name = "cpu"

    def available(self):
        return LOAD_ERROR

    def supports(self, spec, x):
        if x.device.type != "cpu":
            return f"cpu backend runs on CPU tensors, got {x.device.type}"
        if x.dtype not in DTYPES:
            return f"cpu backend supports float32, float64 and bfloat16, got {x.dtype}"
        return None

    def layer(self, spec, x, batch_sizes, h0, c0, weights, reverse):
        return _ops.layer(spec, x, batch_sizes, h0, c0, weights, reverse)

    def bidirectional_layer(self, spec, x, batch_sizes, h0, c0, weights):
        return _ops.bidirectional_layer(spec, x, batch_sizes, h0, c0, weights)


register(CpuBackend())
