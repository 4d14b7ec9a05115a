"""The `triton` backend: fastrnn's Triton kernels behind two custom ops.

    fastrnn::triton_layer_fwd(mode, x, batch_sizes, h0, c0?, w_ih, w_hh, b_ih?, b_hh?,
                              w_hr?, reverse, family)
        -> (y, h_n, c_n, hs, cs, saved)
    fastrnn::triton_layer_bwd(mode, grad_y, grad_h_n, grad_c_n, x, batch_sizes, w_ih,
                              w_hh, w_hr?, hs, cs, saved, reverse, has_bias, family,
                              output_mask)
        -> (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr)

hs, cs and saved are the fp32 buffers the backward pass reads (layout in
fastrnn/triton/stages.py); outputs that do not apply are empty tensors, and so
are those output_mask does not ask for ([dx, (dh0, dc0), parameters'], as the
native fastrnn::layer_bwd takes it: autograd passes needs_input_grad; None, the
default, asks for all, so that a caller from before it, such as a graph compiled
and cached by an older fastrnn, still gets every gradient). family
is "auto", "step" or "persistent"; both families write identical buffers, so
either backward can follow either forward. The fake kernels let
torch.compile(fullgraph=True) trace through the ops; register_autograd makes
them differentiable once (no double backward).

Triton decides at @triton.jit time whether a kernel is compiled for the GPU or
run by its CPU interpreter (TRITON_INTERPRET=1), so the kernels are imported on
first use and CPU tensors are accepted only if they were built interpreted.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Optional

import torch
from torch import Tensor

from . import register
from .base import GATES, Backend, output_mask

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _launch():
    """fastrnn.triton.launch, imported on first use (see module docstring)."""
    from ..triton import launch

    return launch


def _built_for_gpu() -> bool:
    """Whether the kernels, if already imported, were compiled rather than interpreted."""
    step_kernels = sys.modules.get("fastrnn.triton.step_kernels")
    if step_kernels is None:
        return False
    from triton.runtime import JITFunction

    return isinstance(step_kernels.forward_step_kernel, JITFunction)


def _none_if_empty(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None or t.numel() == 0 else t


@torch.library.custom_op("fastrnn::triton_layer_fwd", mutates_args=())
def layer_fwd(
    mode: str, x: Tensor, batch_sizes: Tensor, h0: Tensor, c0: Optional[Tensor],
    w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
    w_hr: Optional[Tensor], reverse: bool, family: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _launch().forward(
        mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, family
    )


@layer_fwd.register_fake
def _(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, family):
    N, B = x.shape[0], h0.shape[0]
    H, Hout = w_hh.shape[0] // GATES[mode], w_hh.shape[1]
    lstm = mode == "LSTM"
    f32 = torch.float32
    return (
        x.new_empty(N, Hout),
        x.new_empty(B, Hout),
        x.new_empty(B, H) if lstm else x.new_empty(0),
        x.new_empty(N + B, Hout, dtype=f32),
        x.new_empty(N + B if lstm else 0, H, dtype=f32),
        x.new_empty(N, 4 * H if mode in ("LSTM", "GRU") else 0, dtype=f32),
    )


@torch.library.custom_op("fastrnn::triton_layer_bwd", mutates_args=())
def layer_bwd(
    mode: str, grad_y: Tensor, grad_h_n: Tensor, grad_c_n: Tensor, x: Tensor,
    batch_sizes: Tensor, w_ih: Tensor, w_hh: Tensor, w_hr: Optional[Tensor],
    hs: Tensor, cs: Tensor, saved: Tensor, reverse: bool, has_bias: bool, family: str,
    output_mask: Optional[list[bool]] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _launch().backward(
        mode, grad_y.contiguous(), grad_h_n.contiguous(), grad_c_n.contiguous(), x,
        batch_sizes, w_ih, w_hh, w_hr, hs, cs, saved, reverse, has_bias, family, output_mask,
    )


@layer_bwd.register_fake
def _(mode, grad_y, grad_h_n, grad_c_n, x, batch_sizes, w_ih, w_hh, w_hr, hs, cs, saved,
      reverse, has_bias, family, output_mask=None):
    N = x.shape[0]
    B = hs.shape[0] - N
    H, Hout = w_hh.shape[0] // GATES[mode], w_hh.shape[1]
    want_dx, want_state, want_params = output_mask or (True, True, True)

    def out(wanted: bool, like: Tensor, *shape: int) -> Tensor:
        return like.new_empty(shape) if wanted else x.new_empty(0)

    return (
        out(want_dx, x, *x.shape),
        out(want_state, x, B, Hout),
        out(want_state and mode == "LSTM", x, B, H),
        out(want_params, w_ih, *w_ih.shape),
        out(want_params, w_hh, *w_hh.shape),
        out(want_params and has_bias, w_ih, w_ih.shape[0]),
        out(want_params and has_bias, w_hh, w_hh.shape[0]),
        out(w_hr is not None and want_params, w_hr, *(() if w_hr is None else w_hr.shape)),
    )


def _setup_context(ctx, inputs, output):
    mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, family = inputs
    _, _, _, hs, cs, saved = output
    ctx.save_for_backward(x, batch_sizes, w_ih, w_hh, w_hr, hs, cs, saved)
    ctx.mode, ctx.reverse, ctx.family = mode, reverse, family
    ctx.has_bias = b_ih is not None
    ctx.mark_non_differentiable(hs, cs, saved)


def _backward(ctx, grad_y, grad_h_n, grad_c_n, *_buffers):
    x, batch_sizes, w_ih, w_hh, w_hr, hs, cs, saved = ctx.saved_tensors
    mask = output_mask(ctx.needs_input_grad)
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = layer_bwd(
        ctx.mode, grad_y, grad_h_n, grad_c_n, x, batch_sizes, w_ih, w_hh, w_hr,
        hs, cs, saved, ctx.reverse, ctx.has_bias, ctx.family, mask,
    )
    return (
        None, _none_if_empty(dx), None, _none_if_empty(dh0), _none_if_empty(dc0),
        _none_if_empty(dw_ih), _none_if_empty(dw_hh), _none_if_empty(db_ih),
        _none_if_empty(db_hh), _none_if_empty(dw_hr), None, None,
    )


layer_fwd.register_autograd(_backward, setup_context=_setup_context)
# torch.autocast on CUDA, as torch's Autocast kernel for _cudnn_rnn: every
# floating input to float16, whatever the autocast dtype (a cell's result dtype
# is then set by fastrnn/autocast.py). Unlike the native ops' autocast kernels
# (csrc/autocast.cpp) these casts are not cached across the calls of an
# autocast region: torch offers no Python entry to its autocast cache.
torch.library.register_autocast("fastrnn::triton_layer_fwd", "cuda", torch.float16)


class TritonBackend(Backend):
    name = "triton"

    def available(self) -> Optional[str]:
        if importlib.util.find_spec("triton") is None:
            return "the triton package is not installed"
        return None

    def supports(self, spec, x) -> Optional[str]:
        if x.dtype not in DTYPES:
            return f"triton kernels take float32, bfloat16 or float16, not {x.dtype}"
        if x.device.type == "cuda":
            return None
        if x.device.type != "cpu":
            return f"triton kernels run on CUDA devices, not {x.device.type}"
        if os.environ.get("TRITON_INTERPRET") != "1":
            return "CPU tensors need Triton's interpreter (TRITON_INTERPRET=1)"
        if _built_for_gpu():
            return "the triton kernels were built for the GPU before TRITON_INTERPRET=1 was set"
        return None

    def layer(self, spec, x, batch_sizes, h0, c0, weights, reverse):
        y, h_n, c_n, _, _, _ = layer_fwd(
            spec.mode, x, batch_sizes, h0, c0, *weights, reverse, "auto"
        )
        return y, h_n, (c_n if spec.mode == "LSTM" else None)


register(TritonBackend())
