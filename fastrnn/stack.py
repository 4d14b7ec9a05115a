"""Runs a stack of recurrent layers over time-major packed rows.

Both public input forms reach here as one form (see backends/base.py):
    x            (N, I)  rows of all time steps, time-major
    batch_sizes  (T,)    live rows per step; padded input is [B] * T

so that layers, directions and packing share one code path, and every backend
only implements a single layer in a single direction.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import backends
from .backends.base import LayerSpec, LayerWeights


def current_weights(module: torch.nn.Module, names: Sequence[str]) -> list[Optional[Tensor]]:
    """module's parameters `names`, as getattr returns them, but straight from
    _parameters: nn.Module.__getattr__ costs ~0.6 us a name, and torch.nn's
    _update_flat_weights ~5 us a call. A parametrized weight
    (torch.nn.utils.parametrize) is not in _parameters: getattr computes it."""
    params = module._parameters
    try:
        return [params[n] for n in names]
    except KeyError:
        return [getattr(module, n) for n in names]


_PADDED: dict[tuple[int, int], Tensor] = {}


def padded_batch_sizes(steps: int, batch: int) -> Tensor:
    """batch_sizes of padded input, [batch] * steps: int64 on the CPU whatever
    the default device. Eager calls share one read-only tensor per shape
    (creating it costs ~1.5 us a call); traced calls make their own, and so do
    calls under a dispatch mode (FakeTensorMode needs a fake tensor there) or a
    torch.func transform (there it comes out wrapped for the transform's level,
    which a later call at another level must not receive)."""
    if (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
            or torch._C._are_functorch_transforms_active()):
        return torch.full((steps,), batch, dtype=torch.int64, device="cpu")
    sizes = _PADDED.get((steps, batch))
    if sizes is None:
        if len(_PADDED) >= 256:
            _PADDED.clear()
        # Not an inference tensor, so that autograd may save it later.
        with torch.inference_mode(False):
            sizes = torch.full((steps,), batch, dtype=torch.int64, device="cpu")
        _PADDED[(steps, batch)] = sizes
    return sizes


def split_weights(ws: Sequence[Tensor], bias: bool, has_proj: bool) -> LayerWeights:
    """torch.nn's per-(layer, direction) order: w_ih, w_hh, [b_ih, b_hh], [w_hr]."""
    w_ih, w_hh = ws[0], ws[1]
    b_ih, b_hh = (ws[2], ws[3]) if bias else (None, None)
    w_hr = ws[-1] if has_proj else None
    return LayerWeights(w_ih, w_hh, b_ih, b_hh, w_hr)


def select_backend(spec: LayerSpec, x: Tensor, used: list[str]) -> backends.Backend:
    """The first backend that accepts the layer; its name is recorded in `used`."""
    backend = backends.select(spec, x)
    if backend.name not in used:
        used.append(backend.name)
    return backend


def run_layer(
    spec: LayerSpec,
    x: Tensor,
    batch_sizes: Tensor,
    h0: Tensor,
    c0: Optional[Tensor],
    weights: LayerWeights,
    reverse: bool,
    used: list[str],
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """One layer and direction on the first backend that accepts it."""
    return select_backend(spec, x, used).layer(spec, x, batch_sizes, h0, c0, weights, reverse)


def run_stack(
    mode: str,
    x: Tensor,
    batch_sizes: Tensor,
    h0s: Sequence[Tensor],
    c0s: Optional[Sequence[Tensor]],
    flat_weights: Sequence[Tensor],
    *,
    hidden_size: int,
    proj_size: int,
    num_layers: int,
    bidirectional: bool,
    bias: bool,
    dropout: float,
    training: bool,
    used: list[str],
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """
    x (N, I); h0s L*D states (B, Hout); c0s L*D states (B, H) for LSTM, else None.
    Returns out (N, D*Hout), h_n (L*D, B, Hout), c_n (L*D, B, H) or None.

    Dropout is applied to each layer's output except the last's, in training
    mode only, with the same call torch.nn makes, so a seeded run draws the same
    masks in the same order.
    """
    if num_layers == 1 and not bidirectional:  # the common case, without the loop's lists
        weights = split_weights(flat_weights, bias, proj_size > 0)
        spec = LayerSpec(mode, x.shape[1], hidden_size, proj_size, bias)
        c0 = None if c0s is None else c0s[0]
        y, h, c = run_layer(spec, x.contiguous(), batch_sizes, h0s[0], c0, weights, False, used)
        return y, h.unsqueeze(0), (None if c is None else c.unsqueeze(0))
    dirs = 2 if bidirectional else 1
    per = len(flat_weights) // (num_layers * dirs)
    has_proj = proj_size > 0
    layer_input = x.contiguous()
    h_n: list[Tensor] = []
    c_n: list[Tensor] = []
    for layer in range(num_layers):
        first = layer * dirs
        weights = [
            split_weights(flat_weights[i * per : (i + 1) * per], bias, has_proj)
            for i in range(first, first + dirs)
        ]
        h0 = h0s[first : first + dirs]
        c0 = c0s[first : first + dirs] if c0s is not None else (None,) * dirs
        spec = LayerSpec(mode, layer_input.shape[1], hidden_size, proj_size, bias)
        if dirs == 1:
            results = (run_layer(spec, layer_input, batch_sizes, h0[0], c0[0], weights[0], False, used),)
        else:  # one call, so a backend can run the directions together
            backend = select_backend(spec, layer_input, used)
            results = backend.bidirectional_layer(spec, layer_input, batch_sizes, h0, c0, tuple(weights))
        for y, h, c in results:
            h_n.append(h)
            if c is not None:
                c_n.append(c)
        layer_input = results[0][0] if dirs == 1 else torch.cat([r[0] for r in results], dim=1)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, dropout, training=True)
    return layer_input, torch.stack(h_n), (torch.stack(c_n) if c0s is not None else None)
