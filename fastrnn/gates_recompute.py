"""Gates of a layer whose backend keeps none (reference, or any backend without a
saved buffer), recomputed from the layer's inputs and its output y.

Row n (time-major packed, N = sum(batch_sizes)) read its state from prev[n]: the
same batch row one step earlier in processing order, or h0 / c0 when it is the
row's first step. With h_prev = [y; h0][prev], every gate is one GEMM over all
rows (math as fastrnn/backends/reference.py, in fp32 like the fused kernels):

    LSTM  i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of (W_ih x + b_ih + W_hh h_prev + b_hh)
          c = f * c_prev + i * g          (a scan over steps: c_prev is c of row prev[n])
    GRU   r, z = sigmoid(x_r + h_r), sigmoid(x_z + h_z);  n = tanh(x_n + r * h_n)
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .backends.base import LayerSpec, LayerWeights


def previous_rows(batch_sizes: Tensor, reverse: bool) -> Tensor:
    """(N,) int64: prev[n] < N is the packed row whose state row n reads; N + b means h0[b]."""
    sizes = batch_sizes.to(torch.int64)
    T, N = sizes.numel(), int(sizes.sum())
    starts = torch.cumsum(sizes, 0) - sizes
    t = torch.repeat_interleave(torch.arange(T), sizes)
    b = torch.arange(N) - starts[t]
    before = t + 1 if reverse else t - 1  # the step processed just before t
    inside = (before >= 0) & (before < T)
    before = before.clamp(0, T - 1)
    live = inside & (b < sizes[before])  # reverse: a row joins when its sequence starts
    return torch.where(live, starts[before] + b, N + b)


def _linear(v: Tensor, w: Tensor, bias: Optional[Tensor]) -> Tensor:
    out = v @ w.to(v.dtype).t()
    return out if bias is None else out + bias.to(v.dtype)


def recompute(spec: LayerSpec, x: Tensor, batch_sizes: Tensor, h0: Tensor, c0: Optional[Tensor],
              w: LayerWeights, reverse: bool, y: Tensor) -> dict[str, Tensor]:
    """LSTM i, f, g, o, c or GRU r, z, n, each (N, H) fp32 (fp64 for fp64 input)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        prev = previous_rows(batch_sizes, reverse).to(x.device)
        h_prev = torch.cat((y, h0)).to(dtype)[prev]
        gx = _linear(x.to(dtype), w.w_ih, w.b_ih)
        gh = _linear(h_prev, w.w_hh, w.b_hh)
        if spec.mode == "GRU":
            xr, xz, xn = gx.chunk(3, 1)
            hr, hz, hn = gh.chunk(3, 1)
            r = torch.sigmoid(xr + hr)
            return {"r": r, "z": torch.sigmoid(xz + hz), "n": torch.tanh(xn + r * hn)}
        i, f, g, o = (gx + gh).chunk(4, 1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = torch.cat((torch.empty_like(i), c0.to(dtype)))  # rows N.. hold c0
        sizes = batch_sizes.tolist()
        starts = [0]
        for s in sizes[:-1]:
            starts.append(starts[-1] + s)
        for step in (reversed(range(len(sizes))) if reverse else range(len(sizes))):
            rows = slice(starts[step], starts[step] + sizes[step])
            c[rows] = f[rows] * c[prev[rows]] + i[rows] * g[rows]
        return {"i": i, "f": f, "g": g, "o": o, "c": c[: x.shape[0]]}
