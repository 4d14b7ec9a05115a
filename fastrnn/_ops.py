"""Python side of the native ops fastrnn::layer_fwd / layer_bwd (csrc/ops.cpp).

Importing this module loads fastrnn._C, which registers the schemas, the
device kernels and the autograd kernels (csrc/autograd.cpp: the gradient of
layer_fwd is layer_bwd, that of bilayer_fwd is bilayer_bwd), and adds the fake
kernels of these ops, so that torch.compile / FakeTensor can trace them.
`layer` is the one-layer entry point shared by the cpu and cuda backends.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

import fastrnn._C  # noqa: F401  (registers torch.ops.fastrnn.*)

from .backends.base import GATES, MASK_ENTRY, LayerSpec, LayerWeights, output_mask

# Columns per token of the saved workspace, in units of hidden_size; mirrors
# workspace::columns() in csrc/include/fastrnn/workspace.h.
WORKSPACE_BLOCKS = {"LSTM": 5, "GRU": 4, "RNN_TANH": 0, "RNN_RELU": 0}


def workspace_dtype(dtype: torch.dtype) -> torch.dtype:
    """Reduced-precision inputs keep their saved states in fp32 (workspace.h)."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


@torch.library.register_fake("fastrnn::layer_fwd")
def _layer_fwd_fake(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, save):
    n = x.shape[0]
    hidden = w_hh.shape[0] // GATES[mode]
    y = x.new_empty((n, h0.shape[1]))
    h_n = h0.new_empty(h0.shape)
    c_n = c0.new_empty(c0.shape) if mode == "LSTM" else x.new_empty((0,))
    workspace = x.new_empty(
        (n if save else 0, WORKSPACE_BLOCKS[mode] * hidden), dtype=workspace_dtype(x.dtype)
    )
    return y, h_n, c_n, workspace


@torch.library.register_fake("fastrnn::layer_bwd")
def _layer_bwd_fake(mode, grad_y, grad_h_n, grad_c_n, x, batch_sizes, h0, c0, w_ih, w_hh,
                    b_ih, b_hh, w_hr, y, workspace, reverse, output_mask=(True, True, True)):
    want_dx, want_state, want_params = output_mask

    def like(t: Optional[Tensor], wanted: bool) -> Tensor:
        """An absent input's gradient, or one not asked for, is empty."""
        return x.new_empty((0,)) if t is None or not wanted else t.new_empty(t.shape)

    return (like(x, want_dx), like(h0, want_state), like(c0, want_state),
            *(like(t, want_params) for t in (w_ih, w_hh, b_ih, b_hh, w_hr)))


def _direction(d: int, *lists):
    """Direction d's entry of each per-direction list of the bilayer ops (None
    for an empty list: an absent optional argument)."""
    return tuple(lst[d] if lst else None for lst in lists)


def _as_lists(per_direction):
    """[(a_f, b_f, ...), (a_r, b_r, ...)] -> ([a_f, a_r], [b_f, b_r], ...)."""
    return tuple(list(pair) for pair in zip(*per_direction))


@torch.library.register_fake("fastrnn::bilayer_fwd")
def _bilayer_fwd_fake(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, save):
    return _as_lists(
        _layer_fwd_fake(mode, x, batch_sizes, *_direction(d, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr),
                        d == 1, save)
        for d in (0, 1)
    )


@torch.library.register_fake("fastrnn::bilayer_bwd")
def _bilayer_bwd_fake(mode, grad_y, grad_h_n, grad_c_n, x, batch_sizes, h0, c0, w_ih, w_hh,
                      b_ih, b_hh, w_hr, y, workspace, output_mask=(True, True, True)):
    dx, *per_direction = _as_lists(
        _layer_bwd_fake(mode, grad_y[d], grad_h_n[d], grad_c_n[d], x, batch_sizes,
                        *_direction(d, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr), y[d], workspace[d],
                        d == 1, output_mask)
        for d in (0, 1)
    )
    return (dx[0], *per_direction)


class _LayerForTransforms(torch.autograd.Function):
    """layer_fwd under torch.func transforms (grad, vjp, jacrev, ...), which
    cannot run the op's C++ autograd kernel (a torch::autograd::Function): the
    same gradient, layer_bwd, wired in Python. Inside forward, grad mode is off,
    so the op goes straight to its device kernel."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*args):
        return torch.ops.fastrnn.layer_fwd.default(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, save = inputs
        y, _, _, workspace = output
        ctx.mode, ctx.reverse, ctx.save = mode, reverse, save
        ctx.mark_non_differentiable(workspace)
        ctx.save_for_backward(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, workspace)

    @staticmethod
    def backward(ctx, grad_y, grad_h_n, grad_c_n, _grad_workspace):
        if not ctx.save:
            raise RuntimeError("fastrnn::layer_fwd ran with save=False (inference) and cannot be "
                               "differentiated")
        x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, workspace = ctx.saved_tensors

        def dense(g: Optional[Tensor], like: Tensor) -> Tensor:  # as csrc/autograd.cpp
            return torch.zeros_like(like) if g is None else g.contiguous()

        grad_c = dense(grad_c_n, c0) if ctx.mode == "LSTM" else x.new_empty((0,))
        mask = output_mask(ctx.needs_input_grad)
        grads = torch.ops.fastrnn.layer_bwd.default(
            ctx.mode, dense(grad_y, y), dense(grad_h_n, h0), grad_c, x, batch_sizes, h0, c0,
            w_ih, w_hh, b_ih, b_hh, w_hr, y, workspace, ctx.reverse, mask,
        )
        # An absent optional input, or one not asked for, has no gradient (the
        # kernel returns it empty).
        dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = (
            g if given is not None and mask[entry] else None
            for g, given, entry in zip(grads, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr), MASK_ENTRY)
        )
        return None, dx, None, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, None, None


def _needs_saving(tensors) -> bool:
    """Whether autograd will call backward: only then does forward keep a workspace."""
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        if t is not None and t.requires_grad:
            return True
    return False


def _dense(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


def layer(
    spec: LayerSpec,
    x: Tensor,
    batch_sizes: Tensor,
    h0: Tensor,
    c0: Optional[Tensor],
    weights: LayerWeights,
    reverse: bool,
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """One layer, one direction through the native op (contract: backends/base.py)."""
    save = _needs_saving((x, h0, c0, *weights))
    y, h_n, c_n, _ = layer_with_workspace(spec, x, batch_sizes, h0, c0, weights, reverse, save)
    return y, h_n, c_n


def layer_with_workspace(spec: LayerSpec, x: Tensor, batch_sizes: Tensor, h0: Tensor,
                         c0: Optional[Tensor], weights: LayerWeights, reverse: bool, save: bool):
    """`layer`, also returning the op's workspace (layout: csrc/include/fastrnn/workspace.h;
    empty unless save). fastrnn.gate_activations reads the gates from it."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    args = (spec.mode, x.contiguous(), batch_sizes.contiguous(), h0.contiguous(), _dense(c0),
            w_ih.contiguous(), w_hh.contiguous(), _dense(b_ih), _dense(b_hh), _dense(w_hr),
            reverse, save)
    if torch._C._are_functorch_transforms_active():
        y, h_n, c_n, workspace = _LayerForTransforms.apply(*args)
    else:
        y, h_n, c_n, workspace = torch.ops.fastrnn.layer_fwd.default(*args)
    return y, h_n, (c_n if spec.mode == "LSTM" else None), workspace


def directions_apart() -> bool:
    """Whether a bidirectional layer runs as two `layer` calls instead of one
    bilayer_fwd: under torch.func transforms (see _LayerForTransforms), and
    under torch.export, as AOTInductor's proxy executor, which runs an exported
    program's fastrnn ops from C++, passed bilayer_fwd's empty Tensor[]
    arguments (c0 of a GRU or RNN, W_hr without projection) as None."""
    return torch._C._are_functorch_transforms_active() or torch.compiler.is_exporting()


def bidirectional_layer(spec: LayerSpec, x: Tensor, batch_sizes: Tensor, h0, c0, weights):
    """Both directions of one layer in one native call (the CPU kernel runs them
    concurrently), or two `layer` calls where directions_apart().
    Contract: Backend.bidirectional_layer in backends/base.py."""
    if directions_apart():
        return tuple(layer(spec, x, batch_sizes, h0[d], c0[d], weights[d], d == 1) for d in (0, 1))
    save = _needs_saving((x, *h0, *c0, *weights[0], *weights[1]))
    return tuple(r[:3] for r in bidirectional_layer_with_workspace(
        spec, x, batch_sizes, h0, c0, weights, save))


def bidirectional_layer_with_workspace(spec: LayerSpec, x: Tensor, batch_sizes: Tensor, h0, c0,
                                       weights, save: bool):
    """bidirectional_layer's one native call, also returning each direction's workspace:
    ((y, h_n, c_n, workspace) forward, (...) reverse)."""
    def pair(*ts: Optional[Tensor]) -> list[Tensor]:
        return [] if ts[0] is None else [t.contiguous() for t in ts]

    y, h_n, c_n, workspace = torch.ops.fastrnn.bilayer_fwd.default(
        spec.mode, x.contiguous(), batch_sizes.contiguous(), pair(*h0), pair(*c0),
        *(pair(*ws) for ws in zip(*weights)), save,
    )
    return tuple((y[d], h_n[d], c_n[d] if spec.mode == "LSTM" else None, workspace[d])
                 for d in (0, 1))
