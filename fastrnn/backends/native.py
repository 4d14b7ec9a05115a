"""What the backends built on fastrnn._C (cpu, cuda) share: the extension's
loader and the device/dtype gate in front of fastrnn::layer_fwd.

A missing or mismatched extension (not built, or built for another torch) is
not an import error of fastrnn: the native backends report it through
`available()` and the registry falls back to the next backend.
"""
from __future__ import annotations

from typing import Optional

import torch

from .base import Backend

try:
    from .. import _ops
except ImportError as err:
    _ops = None
    LOAD_ERROR: Optional[str] = f"fastrnn._C could not be loaded: {err}"
else:
    LOAD_ERROR = None


class NativeBackend(Backend):
    """Serves tensors of one device type and a set of dtypes through the native op."""

    device_type: str = "?"
    dtypes: tuple[torch.dtype, ...] = ()
    static_choice = True  # LOAD_ERROR is fixed at import; supports() reads device type and dtype

    def available(self) -> Optional[str]:
        return LOAD_ERROR

    def supports(self, spec, x) -> Optional[str]:
        if x.device.type != self.device_type:
            return f"{self.name} backend runs on {self.device_type} tensors, got {x.device.type}"
        if x.dtype not in self.dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in self.dtypes)
            return f"{self.name} backend supports {names}, got {x.dtype}"
        return None

    def layer(self, spec, x, batch_sizes, h0, c0, weights, reverse):
        return _ops.layer(spec, x, batch_sizes, h0, c0, weights, reverse)
