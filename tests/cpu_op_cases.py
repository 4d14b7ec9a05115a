"""Inputs, oracle comparisons and op arguments shared by the CPU op tests
(test_cpu_kernels.py, test_cpu_bfloat16.py, test_cpu_aten_lstm.py,
test_cpu_op_contract.py, test_output_mask.py): fresh random layer cases in
float64, rounded to the dtype under test, checked against the pure-PyTorch
oracle (backends/reference.py) for outputs, final states and every gradient."""
import contextlib

import pytest
import torch

from fastrnn.backends.base import GATES, LayerSpec, LayerWeights
from fastrnn.backends.reference import run_layer

_ops = pytest.importorskip("fastrnn._ops", reason="fastrnn._C is not built")

PACKED = [5, 5, 4, 2, 2, 1]  # shrinking batch (packed sequence)
PADDED = [3] * 4  # batch_sizes of a padded batch
CONFIGS = [  # (mode, proj_size)
    ("LSTM", 0),
    ("LSTM", 3),
    ("GRU", 0),
    ("RNN_TANH", 0),
    ("RNN_RELU", 0),
]


def make_case(mode, proj=0, bias=True, sizes=PACKED, input_size=7, hidden=5, dtype=torch.float64,
              seed=0, scale=0.4):
    """Fresh random inputs in float64 (standard deviation `scale`), rounded to
    `dtype`'s precision (so an oracle in float64 sees exactly the values the
    kernel sees), returned in float64."""
    gen = torch.Generator().manual_seed(seed)
    gates, out = GATES[mode], proj or hidden

    def rand(*shape):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype).double()

    batch = sizes[0]
    weights = LayerWeights(
        rand(gates * hidden, input_size),
        rand(gates * hidden, out),
        rand(gates * hidden) if bias else None,
        rand(gates * hidden) if bias else None,
        rand(out, hidden) if proj else None,
    )
    spec = LayerSpec(mode, input_size, hidden, proj, bias)
    x = rand(sum(sizes), input_size)
    h0 = rand(batch, out)
    c0 = rand(batch, hidden) if mode == "LSTM" else None
    return spec, x, torch.tensor(sizes), h0, c0, weights


def leaves(x, h0, c0, weights, dtype):
    """The inputs as fresh leaves of `dtype` requiring grad; None stays None."""
    def leaf(t):
        return None if t is None else t.detach().to(dtype).requires_grad_()

    return leaf(x), leaf(h0), leaf(c0), LayerWeights(*(leaf(w) for w in weights))


def outputs_and_grads(fn, spec, x, sizes, h0, c0, weights, reverse, dtype, seed=1):
    x, h0, c0, weights = leaves(x, h0, c0, weights, dtype)
    outs = [o for o in fn(spec, x, sizes, h0, c0, weights, reverse) if o is not None]
    gen = torch.Generator().manual_seed(seed)
    cotangents = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(dtype) for o in outs]
    inputs = [t for t in (x, h0, c0, *weights) if t is not None]
    grads = torch.autograd.grad(outs, inputs, cotangents)
    return [o.detach().double() for o in outs], [g.double() for g in grads]


TOLERANCE = {  # (atol, rtol)
    torch.float64: (1e-12, 1e-10),
    torch.float32: (2e-5, 1e-4),
    torch.bfloat16: (3e-2, 3e-2),
}


def assert_matches_oracle(case, reverse, threads, dtype=torch.float64, tolerance=None):
    """The native op on `threads` threads, run in `dtype`, gives the float64
    oracle's outputs and gradients within `dtype`'s tolerance (or the
    (atol, rtol) given)."""
    want_out, want_grad = outputs_and_grads(run_layer, *case, reverse, torch.float64)
    with num_threads(threads):
        got_out, got_grad = outputs_and_grads(_ops.layer, *case, reverse, dtype)
    atol, rtol = tolerance or TOLERANCE[dtype]
    for got, want in zip(got_out + got_grad, want_out + want_grad, strict=True):
        torch.testing.assert_close(got, want, atol=atol * want.abs().max().item(), rtol=rtol)


@contextlib.contextmanager
def num_threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def assert_bitwise(got, want):
    for g, w in zip(got[0] + got[1], want[0] + want[1], strict=True):
        torch.testing.assert_close(g, w, atol=0, rtol=0)


def op_args(mode, proj, sizes, reverse, save, dtype, bias=True):
    spec, x, bs, h0, c0, w = make_case(mode, proj, bias=bias, sizes=sizes)
    cast = (lambda t: None if t is None else t.to(dtype))
    return (mode, cast(x), bs, cast(h0), cast(c0), *(cast(t) for t in w), reverse, save)


def bi_op_args(mode, proj, sizes, save, dtype, bias=True):
    """bilayer_fwd's arguments: op_args as [forward, reverse] lists (the reverse
    direction's values scaled, so the directions differ), absent optionals []."""
    mode, x, bs, *per_direction = op_args(mode, proj, sizes, False, save, dtype, bias)[:10]
    lists = [[] if t is None else [t, t * 0.9] for t in per_direction]
    return (mode, x, bs, *lists, save)
