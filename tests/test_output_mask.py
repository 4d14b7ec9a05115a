"""layer_bwd's output_mask: the backward ops compute only the gradients asked
for ([dx, (dh0, dc0), parameters']), and autograd asks for those of the
inputs that need one (needs_input_grad), as ATen's own backward ops do.

A first layer whose input needs no gradient then skips dx = dG @ W_ih, a
cell called without a state skips dh0 = dG @ W_hh, and a frozen layer skips
its weight gradients; torch.nn's GRU and RNN skip the same products.
"""
import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastrnn
from fastrnn.backends.base import MASK_ENTRY

from cpu_op_cases import CONFIGS, PACKED, bi_op_args, make_case

MASKS = list(itertools.product([True, False], repeat=3))
FULL = [True, True, True]
# (sizes, input_size, hidden): many steps; a single step with large weights,
# whose products are one ATen matmul each (blas_single_step in layer_args.h);
# a single step with small weights, through the loop (whose first step then
# skips dh0's product).
SHAPES = {"steps": (PACKED, 7, 5), "single": ([6], 40, 64), "small_single": ([6], 7, 5)}


def op_args(mode, proj, shape, dtype, seed=0):
    sizes, input_size, hidden = SHAPES[shape]
    spec, x, bs, h0, c0, w = make_case(mode, proj, sizes=sizes, input_size=input_size,
                                       hidden=hidden, seed=seed)
    cast = (lambda t: None if t is None else t.to(dtype))
    return (mode, cast(x), bs, cast(h0), cast(c0), *(cast(t) for t in w))


def backward_args(mode, proj, shape, dtype):
    """layer_bwd's arguments but the mask, from a saving forward, random cotangents."""
    fwd = op_args(mode, proj, shape, dtype)
    y, h_n, c_n, ws = torch.ops.fastrnn.layer_fwd(*fwd, False, True)
    gen = torch.Generator().manual_seed(3)
    rand = (lambda t: torch.randn(t.shape, generator=gen, dtype=torch.float64).to(dtype))
    return (mode, rand(y), rand(h_n), rand(c_n), *fwd[1:], y, ws, False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("mode,proj", CONFIGS)
def test_masked_gradients_are_the_full_ones(mode, proj, shape, dtype):
    """Each gradient asked for equals (bitwise) the one of a call asking for
    all; one not asked for is an empty tensor, like an absent input's."""
    args = backward_args(mode, proj, shape, dtype)
    full = torch.ops.fastrnn.layer_bwd(*args, FULL)
    for mask in MASKS:
        got = torch.ops.fastrnn.layer_bwd(*args, list(mask))
        for i, (g, f) in enumerate(zip(got, full)):
            if mask[MASK_ENTRY[i]]:
                assert torch.equal(g, f), (mask, i)
            else:
                assert g.shape == (0,) and g.dtype == dtype, (mask, i)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_masked_state_with_hidden_slices(mode, reverse, monkeypatch):
    """Two threads sharing one loop by hidden slices (a barrier per step) skip
    the first step's dh0 product alike: without dh0 the other gradients are
    those of a call asking for all, bitwise."""
    monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", "own")  # bitwise needs no BLAS
    spec, x, bs, h0, c0, w = make_case(mode, sizes=[5, 5, 4, 2, 2, 1], input_size=9, hidden=256)
    fwd = (mode, x, bs, h0, c0, *w)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        y, h_n, c_n, ws = torch.ops.fastrnn.layer_fwd(*fwd, reverse, True)
        args = (mode, torch.ones_like(y), h_n * 0.5, c_n * 0.5, *fwd[1:], y, ws, reverse)
        full = torch.ops.fastrnn.layer_bwd(*args, FULL)
        got = torch.ops.fastrnn.layer_bwd(*args, [True, False, True])
    finally:
        torch.set_num_threads(before)
    for i in (0, 3, 4, 5, 6):
        assert torch.equal(got[i], full[i]), i
    assert got[1].numel() == 0 and got[2].numel() == 0


@pytest.mark.parametrize("shape", list(SHAPES))
def test_mask_defaults_to_all(shape):
    """A caller from before output_mask (a backward graph compiled and cached
    by an older fastrnn, which torch's AOT autograd cache may replay) still
    gets every gradient, from either op."""
    args = backward_args("GRU", 0, shape, torch.float64)
    for got, want in zip(torch.ops.fastrnn.layer_bwd(*args),
                         torch.ops.fastrnn.layer_bwd(*args, FULL), strict=True):
        assert torch.equal(got, want)
    bi = bi_op_args("LSTM", 3, PACKED, True, torch.float64)
    y, h_n, c_n, ws = torch.ops.fastrnn.bilayer_fwd(*bi)
    bwd = (bi[0], y, h_n, c_n, *bi[1:10], y, ws)
    for got, want in zip(torch.ops.fastrnn.bilayer_bwd(*bwd),
                         torch.ops.fastrnn.bilayer_bwd(*bwd, FULL), strict=True):
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True)) \
            if isinstance(got, list) else torch.equal(got, want)


@pytest.mark.parametrize("mask", [m for m in MASKS if m != (True, True, True)], ids=str)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_opcheck_masked(shape, mask):
    """The fake kernel returns the same empty outputs as the CPU kernel."""
    torch.library.opcheck(torch.ops.fastrnn.layer_bwd,
                          (*backward_args("LSTM", 3, shape, torch.float32), list(mask)))
    bi = bi_op_args("GRU", 0, PACKED, True, torch.float32)
    y, h_n, c_n, ws = torch.ops.fastrnn.bilayer_fwd(*bi)
    rand = lambda ts: [torch.randn_like(t) for t in ts]  # noqa: E731
    torch.library.opcheck(torch.ops.fastrnn.bilayer_bwd,
                          (bi[0], rand(y), rand(h_n), rand(c_n), *bi[1:10], y, ws, list(mask)))


class MaskLog(TorchDispatchMode):
    """Records the output_mask of every backward op call."""

    def __init__(self):
        super().__init__()
        self.masks = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in ("layer_bwd", "bilayer_bwd"):
            # The dispatcher leaves out a trailing argument equal to its default.
            given = len(args) == len(func._schema.arguments)
            self.masks.append(list(args[-1]) if given else FULL)
        return func(*args, **(kwargs or {}))


def twin(cls_name, *args, **kwargs):
    """torch.nn's module and fastrnn's with the same parameters."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, cls_name)(*args, **kwargs).double()
    ours = getattr(fastrnn, cls_name)(*args, **kwargs).double()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def grads_of(module, x, state, wrt, log=None):
    out = module(x) if state is None else module(x, state)
    y = out[0] if isinstance(out, tuple) else out
    loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum()
    if log is None:
        return torch.autograd.grad(loss, wrt)
    with log:
        return torch.autograd.grad(loss, wrt)


# (module, constructor args, input shape, state given, what to differentiate, mask)
CASES = {
    "first_layer": ("LSTM", (6, 9, 2), (7, 3, 6), False, "params", [[True, False, True],
                                                                    [False, False, True]]),
    "bidirectional": ("GRU", (6, 9, 1), (7, 3, 6), False, "params", [[False, False, True]]),
    "cell_no_state": ("LSTMCell", (40, 64), (4, 40), False, "params", [[False, False, True]]),
    "cell_state": ("GRUCell", (40, 64), (4, 40), True, "all", [[True, True, True]]),
    "frozen": ("RNN", (6, 9), (7, 3, 6), True, "inputs", [[True, True, False]]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_autograd_asks_for_what_is_needed(case):
    """A module's backward passes needs_input_grad as the mask, and its
    gradients still match torch.nn's."""
    name, ctor, shape, with_state, wrt, masks = CASES[case]
    kwargs = {"bidirectional": True} if case == "bidirectional" else {}
    ref, ours = twin(name, *ctor, **kwargs)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_(wrt != "params")
    state = None
    if with_state:
        batch = shape[-2]  # (T, B, I) or a cell's (B, I)
        state = torch.randn(batch, ctor[1], generator=gen, dtype=torch.float64)
        state = state.unsqueeze(0) if len(shape) == 3 else state
        state.requires_grad_(wrt != "params")
    inputs = [t for t in (x, state) if t is not None and t.requires_grad]
    log = MaskLog()
    got = grads_of(ours, x, state, inputs + (list(ours.parameters()) if wrt != "inputs" else []),
                   log)
    want = grads_of(ref, x, state, inputs + (list(ref.parameters()) if wrt != "inputs" else []))
    assert log.masks == masks
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-10)


def test_func_transforms_ask_for_what_is_needed():
    """Under torch.func (the op's Python autograd), a gradient of the input
    alone: only dx is computed, and it matches torch.nn's."""
    ref, ours = twin("GRU", 6, 9)
    x = torch.randn(7, 3, 6, dtype=torch.float64)

    def loss(module):
        return lambda x: module(x)[0].pow(2).sum()

    log = MaskLog()
    with log:
        got = torch.func.grad(loss(ours))(x)
    torch.testing.assert_close(got, torch.func.grad(loss(ref))(x), atol=1e-12, rtol=1e-10)
    assert log.masks == [[True, False, False]]
