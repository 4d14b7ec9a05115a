"""Python side of the native ops fastrnn::layer_fwd / layer_bwd (csrc/ops.cpp).

Importing this module loads fastrnn._C (which registers the schemas and the
device kernels) and adds what torch needs above the kernels, for these ops and
for their two-direction forms bilayer_fwd / bilayer_bwd:
  * fake kernels, so torch.compile / FakeTensor can trace the ops;
  * the autograd formula of layer_fwd, which calls layer_bwd.
`layer` is the one-layer entry point shared by the cpu and cuda backends.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

import fastrnn._C  # noqa: F401  (registers torch.ops.fastrnn.*)

from .backends.base import GATES, LayerSpec, LayerWeights

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
                    b_ih, b_hh, w_hr, y, workspace, reverse):
    def like(t: Optional[Tensor]) -> Tensor:
        return x.new_empty((0,)) if t is None else t.new_empty(t.shape)

    return (like(x), like(h0), like(c0), like(w_ih), like(w_hh), like(b_ih), like(b_hh),
            like(w_hr))


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
                      b_ih, b_hh, w_hr, y, workspace):
    dx, *per_direction = _as_lists(
        _layer_bwd_fake(mode, grad_y[d], grad_h_n[d], grad_c_n[d], x, batch_sizes,
                        *_direction(d, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr), y[d], workspace[d],
                        d == 1)
        for d in (0, 1)
    )
    return (dx[0], *per_direction)


def _setup_context(ctx, inputs, output):
    mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, save = inputs
    y, _, _, workspace = output
    ctx.mode, ctx.reverse, ctx.save = mode, reverse, save
    ctx.save_for_backward(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, workspace)


def _grad(g: Optional[Tensor], like: Tensor) -> Tensor:
    # Incoming grads may be None, expanded (stride 0, e.g. from .sum()) or
    # otherwise strided; the kernel wants dense tensors.
    return torch.zeros_like(like) if g is None else g.contiguous()


def _needs_saving(tensors) -> bool:
    """Whether autograd will call backward: only then does forward keep a workspace."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _check_saved(ctx, op: str) -> None:
    if not ctx.save:
        raise RuntimeError(f"fastrnn::{op} ran with save=False (inference) and cannot be differentiated")


def _backward(ctx, grad_y, grad_h_n, grad_c_n, grad_workspace):
    _check_saved(ctx, "layer_fwd")
    x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, workspace = ctx.saved_tensors
    grad_c = x.new_empty((0,)) if ctx.mode != "LSTM" else _grad(grad_c_n, c0)
    grads = torch.ops.fastrnn.layer_bwd.default(
        ctx.mode, _grad(grad_y, y), _grad(grad_h_n, h0), grad_c, x, batch_sizes, h0, c0,
        w_ih, w_hh, b_ih, b_hh, w_hr, y, workspace, ctx.reverse,
    )
    # Outputs that do not apply (the op returns them empty) belong to inputs
    # that were None; matching on the input, not on numel, keeps genuinely
    # empty gradients (e.g. input_size 0) intact.
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = (
        None if given is None else g
        for g, given in zip(grads, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr))
    )
    return None, dx, None, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, None, None


torch.library.register_autograd(
    "fastrnn::layer_fwd", _backward, setup_context=_setup_context
)


def _bi_setup_context(ctx, inputs, output):
    mode, x, batch_sizes, *lists, save = inputs
    y, _, _, workspace = output
    ctx.mode, ctx.save = mode, save
    ctx.lengths = [len(lst) for lst in lists]  # 2, or 0 for an absent optional
    ctx.save_for_backward(x, batch_sizes, *(t for lst in lists for t in lst), *y, *workspace)


def _bi_backward(ctx, grad_y, grad_h_n, grad_c_n, grad_workspace):
    _check_saved(ctx, "bilayer_fwd")
    x, batch_sizes, *flat = ctx.saved_tensors
    lists = []
    for n in ctx.lengths:
        lists.append(flat[:n])
        flat = flat[n:]
    y, workspace = flat[:2], flat[2:]
    h0, c0 = lists[0], lists[1]
    grad_c = ([x.new_empty((0,))] * 2 if ctx.mode != "LSTM"
              else [_grad(grad_c_n[d], c0[d]) for d in (0, 1)])
    dx, *grads = torch.ops.fastrnn.bilayer_bwd(
        ctx.mode, [_grad(grad_y[d], y[d]) for d in (0, 1)],
        [_grad(grad_h_n[d], h0[d]) for d in (0, 1)], grad_c, x, batch_sizes, *lists, y,
        workspace,
    )
    # An absent optional argument is an empty list; so is its gradient.
    grads = [g if given else [] for g, given in zip(grads, lists)]
    return (None, dx, None, *grads, None)


torch.library.register_autograd(
    "fastrnn::bilayer_fwd", _bi_backward, setup_context=_bi_setup_context
)


class _LayerEager(torch.autograd.Function):
    """layer_fwd with its registered autograd formula, for eager calls.

    torch.library's autograd wrapper costs about 50 us a call on this machine
    (it rebuilds the schema's argument list several times per call to fill
    defaults, then redispatches from Python), as much as a whole cell step
    (docs/cpu_kernels.md). Eager calls of `layer` go through this Function: the
    same setup_context and backward, with the op called below the Autograd key.
    forward takes ctx itself: a separate setup_context staticmethod would make
    Function.apply bind the arguments through inspect.signature, ~20 us more.
    Traced calls (torch.compile) and functorch transforms use the op itself, so
    graphs hold the custom op and its registered formula. (bilayer_fwd keeps the registered path: an
    autograd.Function does not see tensors inside its list arguments.)

    Only y, h_n and c_n (LSTM) are outputs of the Function: each output costs
    autograd ~3 us a call, and the workspace is saved, not differentiated.
    """

    @staticmethod
    def forward(ctx, *args):
        # Unused outputs (e.g. a cell's y) get None, not zeros made by
        # autograd: _backward fills only what the kernel reads.
        ctx.set_materialize_grads(False)
        with torch._C._AutoDispatchBelowAutograd():
            output = torch.ops.fastrnn.layer_fwd.default(*args)
        _setup_context(ctx, args, output)
        return output[:3] if args[0] == "LSTM" else output[:2]

    @staticmethod
    def backward(ctx, grad_y, grad_h_n, grad_c_n=None):
        return _backward(ctx, grad_y, grad_h_n, grad_c_n, None)


def _bare_apply(function: type) -> object:
    """function.apply without autograd.Function's Python prologue (it binds
    default arguments for a setup_context and unwraps functorch's dead
    wrappers: ~4.5 us a call here). `layer` calls it only outside functorch
    transforms, where that prologue changes nothing; a torch without the C
    method keeps the full apply."""
    base = getattr(torch._C, "_FunctionBase", None)
    method = base.__dict__.get("apply") if base is not None else None
    return method.__get__(None, function) if hasattr(method, "__get__") else function.apply


_layer_eager = _bare_apply(_LayerEager)


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

    def dense(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.contiguous()

    args = (spec.mode, x.contiguous(), batch_sizes.contiguous(), h0.contiguous(), dense(c0),
            *(dense(w) for w in weights), reverse, save)
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        y, h_n, c_n, _ = torch.ops.fastrnn.layer_fwd(*args)
    elif save:
        y, h_n, *c_n = _layer_eager(*args)
        return y, h_n, (c_n[0] if c_n else None)
    else:  # nothing to differentiate: straight to the kernel
        with torch._C._AutoDispatchBelowAutograd():
            y, h_n, c_n, _ = torch.ops.fastrnn.layer_fwd.default(*args)
    return y, h_n, (c_n if spec.mode == "LSTM" else None)


def bidirectional_layer(spec: LayerSpec, x: Tensor, batch_sizes: Tensor, h0, c0, weights):
    """Both directions of one layer in one native call (the CPU kernel runs them
    concurrently). Contract: Backend.bidirectional_layer in backends/base.py."""
    save = _needs_saving((x, *h0, *c0, *weights[0], *weights[1]))

    def pair(*ts: Optional[Tensor]) -> list[Tensor]:
        return [] if ts[0] is None else [t.contiguous() for t in ts]

    y, h_n, c_n, _ = torch.ops.fastrnn.bilayer_fwd(
        spec.mode, x.contiguous(), batch_sizes.contiguous(), pair(*h0), pair(*c0),
        *(pair(*ws) for ws in zip(*weights)), save,
    )
    return tuple((y[d], h_n[d], c_n[d] if spec.mode == "LSTM" else None) for d in (0, 1))
