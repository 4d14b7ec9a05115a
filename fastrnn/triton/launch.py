"""Host-side drivers: allocate the row buffers, launch a family, finish with GEMMs.

forward(...)  -> y, h_n, c_n, hs_ext, cs_ext, saved
backward(...) -> dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr

The input projection (forward) and the weight / input gradients (backward) are
single large GEMMs over all N rows done by torch in fp32; only the recurrence
runs in the Triton kernels. All buffers the kernels touch are fp32 (layout in
stages.py) whatever the input dtype; y, h_n, c_n and the grads come back in the
dtype of the tensor they belong to. Both families fill identical buffers.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .persistent_kernels import backward_persistent_kernel, forward_persistent_kernel
from .plan import GATES, kernel_constants, row_maps, tiling
from .step_kernels import CELL, MATMUL, backward_step_kernel, forward_step_kernel


def _f32(*shape: int, device: torch.device) -> Tensor:
    return torch.empty(*shape, device=device, dtype=torch.float32)


def forward(
    mode: str, x: Tensor, batch_sizes: Tensor, h0: Tensor, c0: Optional[Tensor],
    w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
    w_hr: Optional[Tensor], reverse: bool, family: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    dev, dtype = x.device, x.dtype
    H, Hout = w_hh.shape[0] // GATES[mode], w_hh.shape[1]
    rows = row_maps(batch_sizes, reverse, dev)
    N, B = rows.N, rows.B
    lstm, proj = mode == "LSTM", w_hr is not None
    tile = tiling(family, mode, B, H, Hout, dtype)
    dummy = _f32(1, device=dev)  # stands in for pointers a mode never touches

    gx = x.float() @ w_ih.float().t()
    if b_ih is not None:
        gx += b_ih.float()
    y = torch.empty(N, Hout, device=dev, dtype=dtype)
    hs = _f32(N + B, Hout, device=dev)
    hs[N:] = h0
    cs = _f32(N + B if lstm else 0, H, device=dev)
    if lstm:
        cs[N:] = c0
    saved = _f32(N, 4 * H if mode in ("LSTM", "GRU") else 0, device=dev)
    args = (
        rows.sizes, rows.starts, rows.prev, gx, w_hh.contiguous(),
        dummy if b_hh is None else b_hh.contiguous(),
        dummy if w_hr is None else w_hr.contiguous(),
        hs, cs if lstm else dummy, saved if saved.numel() else dummy,
        _f32(N, H, device=dev) if proj else dummy, y, H, Hout,
    )
    consts = dict(kernel_constants(mode, dtype, tile, proj), HAS_BHH=b_hh is not None)
    if tile.family == "persistent":
        forward_persistent_kernel[tile.grid(B)](
            rows.T, N, *args, REVERSE=reverse, BLOCK_H=tile.block_h, BLOCK_O=tile.block_o,
            **consts)
    else:
        for t in rows.steps(reverse):
            forward_step_kernel[tile.grid(B, H)](
                t, *args, STAGE=CELL.value, BLOCK_N=tile.block_h, **consts)
            if proj:
                forward_step_kernel[tile.grid(B, Hout)](
                    t, *args, STAGE=MATMUL.value, BLOCK_N=tile.block_o, **consts)
    h_n = hs[rows.final].to(dtype)
    c_n = cs[rows.final].to(dtype) if lstm else x.new_empty(0)
    return y, h_n, c_n, hs, cs, saved


def backward(
    mode: str, grad_y: Tensor, grad_h_n: Tensor, grad_c_n: Tensor, x: Tensor,
    batch_sizes: Tensor, w_ih: Tensor, w_hh: Tensor, w_hr: Optional[Tensor],
    hs: Tensor, cs: Tensor, saved: Tensor, reverse: bool, has_bias: bool, family: str,
    output_mask: Optional[list[bool]] = None,
) -> tuple[Tensor, ...]:
    """grad_c_n may be empty (not LSTM); hs, cs, saved are forward()'s buffers;
    output_mask = [dx, (dh0, dc0), parameters'] (None: all): the others come back empty."""
    dev, dtype = x.device, x.dtype
    G = GATES[mode]
    H, Hout = w_hh.shape[0] // G, w_hh.shape[1]
    rows = row_maps(batch_sizes, reverse, dev)
    N, B = rows.N, rows.B
    lstm, proj = mode == "LSTM", w_hr is not None
    tile = tiling(family, mode, B, H, Hout, dtype)
    dummy = _f32(1, device=dev)

    # dht[n] = dy[n] + grad from the step that consumed row n (added in the loop);
    # a row's last step has no consumer and gets grad_h_n instead.
    dht = torch.zeros(N + B, Hout, device=dev, dtype=torch.float32)
    dht[:N] = grad_y
    dht[rows.final] += grad_h_n.float()
    dg_width = 4 * H if mode == "GRU" else G * H
    dg = _f32(N, dg_width, device=dev)
    w_args = (
        dht, w_hh.contiguous(), dummy if w_hr is None else w_hr.contiguous(),
        saved if saved.numel() else dummy, hs, cs if lstm else dummy,
    )
    consts = kernel_constants(mode, dtype, tile, proj)
    if tile.family == "persistent":
        dc0 = _f32(B, H, device=dev) if lstm else dummy
        backward_persistent_kernel[tile.grid(B)](
            rows.T, N, rows.sizes, rows.starts, rows.prev, *w_args, dg, dg_width,
            grad_c_n.float().contiguous() if lstm else dummy, dc0, H, Hout,
            REVERSE=reverse, BLOCK_H=tile.block_h, BLOCK_O=tile.block_o, **consts)
    else:
        # dct[n] = grad of row n's c; each consumer overwrites its prev row once.
        dct = torch.zeros(N + B if lstm else 0, H, device=dev, dtype=torch.float32)
        if lstm:
            dct[rows.final] = grad_c_n.float()
        args = (rows.sizes, rows.starts, rows.prev, *w_args, dct if lstm else dummy,
                dg, dg_width, H, Hout)
        for t in reversed(rows.steps(reverse)):
            backward_step_kernel[tile.grid(B, H)](
                t, *args, STAGE=CELL.value, BLOCK_N=tile.block_h, **consts)
            backward_step_kernel[tile.grid(B, Hout)](
                t, *args, STAGE=MATMUL.value, BLOCK_N=tile.block_o, **consts)
        dc0 = dct[N:]

    # Everything left is one GEMM or reduction over all N rows, for the
    # gradients asked for. Outputs that do not apply, or are not asked for,
    # are empty; each its own tensor (custom ops may not return aliases), and
    # dh0 / dc0 copied out of their work buffers.
    want_dx, want_state, want_params = output_mask or (True, True, True)
    dgx = dg[:, : G * H]
    dx = (dgx @ w_ih.float()).to(dtype) if want_dx else x.new_empty(0)
    dh0 = dht[N:].to(dtype, copy=True) if want_state else x.new_empty(0)
    dc0 = dc0.to(dtype, copy=True) if lstm and want_state else x.new_empty(0)
    if not want_params:
        return (dx, dh0, dc0, *(x.new_empty(0) for _ in range(5)))
    dgh = torch.cat((dg[:, : 2 * H], dg[:, 3 * H :]), 1) if mode == "GRU" else dg
    dw_ih = (dgx.t() @ x.float()).to(w_ih.dtype)
    dw_hh = (dgh.t() @ hs[rows.prev]).to(w_hh.dtype)
    db_ih = dgx.sum(0).to(w_ih.dtype) if has_bias else x.new_empty(0)
    db_hh = dgh.sum(0).to(w_hh.dtype) if has_bias else x.new_empty(0)
    if proj:
        m = saved[:, 3 * H :] * torch.tanh(cs[:N])  # o * tanh(c), the input of W_hr
        dw_hr = (dht[:N].t() @ m).to(w_hr.dtype)
    else:
        dw_hr = x.new_empty(0)
    return dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr
