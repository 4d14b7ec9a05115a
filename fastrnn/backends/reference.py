"""The oracle: a plain PyTorch loop over time, differentiable through autograd.

It supports every mode, dtype, device and packing, and is written for reading,
not speed. Gate math follows torch.nn's documentation exactly:

  LSTM  i,f,g,o = split(W_ih x + b_ih + W_hh h + b_hh)
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g);  h' = sigmoid(o) * tanh(c')
        h' = W_hr h'                                   (proj_size > 0)
  GRU   r = sigmoid(x_r + h_r);  z = sigmoid(x_z + h_z)
        n = tanh(x_n + r * h_n)          (h_n = W_hn h + b_hn: b_hn inside r *)
        h' = n + z * (h - n)             (= (1 - z) n + z h, in torch.nn's
                                          order, so inf and NaN land where its do)
  RNN   h' = tanh(W_ih x + b_ih + W_hh h + b_hh)   (or relu)
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import register
from .base import Backend, LayerSpec, LayerWeights


def cell_step(
    mode: str,
    gx: Tensor,
    h: Tensor,
    c: Optional[Tensor],
    w: LayerWeights,
) -> tuple[Tensor, Optional[Tensor]]:
    """One step for rows that are live. gx = W_ih x + b_ih, shape (b, G*H)."""
    gh = h @ w.w_hh.t()
    if w.b_hh is not None:
        gh = gh + w.b_hh
    if mode == "LSTM":
        i, f, g, o = (gx + gh).chunk(4, dim=1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        if w.w_hr is not None:
            h_new = h_new @ w.w_hr.t()
        return h_new, c_new
    if mode == "GRU":
        xr, xz, xn = gx.chunk(3, dim=1)
        hr, hz, hn = gh.chunk(3, dim=1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return n + z * (h - n), None
    act = torch.tanh if mode == "RNN_TANH" else torch.relu
    return act(gx + gh), None


def run_layer(
    spec: LayerSpec,
    x: Tensor,
    batch_sizes: Tensor,
    h0: Tensor,
    c0: Optional[Tensor],
    w: LayerWeights,
    reverse: bool,
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    gx_all = x @ w.w_ih.t()
    if w.b_ih is not None:
        gx_all = gx_all + w.b_ih
    sizes = batch_sizes.tolist()
    starts = [0]
    for bs in sizes[:-1]:
        starts.append(starts[-1] + bs)

    # h, c always hold B rows. Step t updates rows [0, bs) only: rows past bs have
    # either finished (forward direction: they keep their final state) or not yet
    # started (reverse direction: they still hold h0/c0). One rule serves both.
    h, c = h0, c0
    outputs: list[Optional[Tensor]] = [None] * len(sizes)
    steps = range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))
    for t in steps:
        bs, start = sizes[t], starts[t]
        h_new, c_new = cell_step(
            spec.mode, gx_all[start : start + bs], h[:bs], None if c is None else c[:bs], w
        )
        outputs[t] = h_new
        h = torch.cat([h_new, h[bs:]]) if bs < h.shape[0] else h_new
        if c is not None:
            c = torch.cat([c_new, c[bs:]]) if bs < c.shape[0] else c_new
    return torch.cat(outputs), h, c


class ReferenceBackend(Backend):
    name = "reference"
    static_choice = True  # serves every call

    def supports(self, spec, x):
        return None

    def layer(self, spec, x, batch_sizes, h0, c0, weights, reverse):
        if x.dtype not in (torch.float16, torch.bfloat16):
            return run_layer(spec, x, batch_sizes, h0, c0, weights, reverse)
        # Half types: fp32 math and state, as the fused kernels do; round once at the end.
        up = lambda t: None if t is None else t.float()  # noqa: E731
        y, h, c = run_layer(
            spec, x.float(), batch_sizes, h0.float(), up(c0), LayerWeights(*map(up, weights)), reverse
        )
        return y.to(x.dtype), h.to(x.dtype), None if c is None else c.to(x.dtype)


register(ReferenceBackend())
