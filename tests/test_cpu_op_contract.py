"""The CPU ops' contract: gradcheck in float64 through the op, torch.library.opcheck
for layer_* and bilayer_*, both directions in one call, NaN-poisoned outputs,
zero batch, inference without a workspace, bad inputs raising RuntimeError,
the backend declining what it cannot serve, torch.compile(fullgraph=True), a
layer against torch.nn, and the scalar gate math of gates.h."""
import pytest
import torch

from fastrnn.backends import get
from fastrnn.backends.base import LayerSpec, LayerWeights
from fastrnn.backends.reference import run_layer
from cpu_op_cases import (CONFIGS, PACKED, PADDED, TOLERANCE, _ops, bi_op_args, leaves, make_case,
                          num_threads, op_args, outputs_and_grads)
from gates_probe import gate_reference, run_gate_probe

GRADCHECK = [  # (mode, proj, bias, sizes, reverse)
    *((m, p, True, [2, 2, 1], False) for m, p in CONFIGS),
    ("LSTM", 2, False, [3, 1, 1], True),
    ("GRU", 0, False, [2, 2, 2], True),
    ("RNN_TANH", 0, True, [3, 2, 1], True),
]


@pytest.mark.parametrize("mode,proj,bias,sizes,reverse", GRADCHECK)
def test_gradcheck(mode, proj, bias, sizes, reverse):
    spec, x, bs, h0, c0, weights = make_case(mode, proj, bias, sizes, input_size=3, hidden=4)
    if mode == "RNN_RELU":  # keep pre-activations away from relu's kink
        x = x + 1.0
    x, h0, c0, weights = leaves(x, h0, c0, weights, torch.float64)
    given = [t is not None for t in (c0, *weights)]

    def fn(x, h0, *rest):
        it = iter(rest)
        c0, *w = (next(it) if g else None for g in given)
        return tuple(o for o in _ops.layer(spec, x, bs, h0, c0, LayerWeights(*w), reverse)
                     if o is not None)

    inputs = [x, h0, *(t for t in (c0, *weights) if t is not None)]
    assert torch.autograd.gradcheck(fn, inputs)


OPCHECK = [  # (mode, proj, sizes, reverse, dtype)
    ("LSTM", 0, PACKED, False, torch.float32),
    ("LSTM", 3, PADDED, True, torch.float64),
    ("GRU", 0, PACKED, True, torch.float32),
    ("GRU", 0, PADDED, False, torch.bfloat16),
    ("RNN_TANH", 0, PADDED, False, torch.float64),
    ("RNN_RELU", 0, PACKED, True, torch.float32),
]


@pytest.mark.parametrize("mode,proj,sizes,reverse,dtype", OPCHECK)
def test_opcheck(mode, proj, sizes, reverse, dtype):
    args = op_args(mode, proj, sizes, reverse, True, dtype)
    differentiable = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
    for t in differentiable:
        t.requires_grad_(dtype != torch.bfloat16)
    torch.library.opcheck(torch.ops.fastrnn.layer_fwd, args)
    inference = op_args(mode, proj, sizes, reverse, False, dtype)
    torch.library.opcheck(torch.ops.fastrnn.layer_fwd, inference)

    plain = op_args(mode, proj, sizes, reverse, True, dtype)
    y, h_n, c_n, ws = torch.ops.fastrnn.layer_fwd(*plain)
    mode_, x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse_, _ = plain
    bwd = (mode, torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n), x, bs, h0, c0,
           w_ih, w_hh, b_ih, b_hh, w_hr, y, ws, reverse, [True, True, True])
    torch.library.opcheck(torch.ops.fastrnn.layer_bwd, bwd)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("mode,proj", CONFIGS)
def test_opcheck_bidirectional(mode, proj, dtype):
    args = bi_op_args(mode, proj, PACKED, True, dtype)
    for lst in args[3:10]:
        for t in lst:
            t.requires_grad_()
    args[1].requires_grad_()
    torch.library.opcheck(torch.ops.fastrnn.bilayer_fwd, args)
    torch.library.opcheck(torch.ops.fastrnn.bilayer_fwd, bi_op_args(mode, proj, PADDED, False, dtype))

    plain = bi_op_args(mode, proj, PACKED, True, dtype)
    y, h_n, c_n, ws = torch.ops.fastrnn.bilayer_fwd(*plain)
    rand = lambda ts: [torch.randn_like(t) for t in ts]  # noqa: E731
    bwd = (mode, rand(y), rand(h_n), rand(c_n), *plain[1:3], *plain[3:10], y, ws,
           [True, True, True])
    torch.library.opcheck(torch.ops.fastrnn.bilayer_bwd, bwd)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("mode,proj", CONFIGS)
def test_bidirectional_matches_reference(mode, proj, bias, threads):
    """Both directions in one call (run concurrently on 2 threads) give each
    direction's oracle outputs and gradients; the input gradient is their sum."""
    fwd = make_case(mode, proj, bias=bias, sizes=PACKED, hidden=21, input_size=19, seed=3)
    rev = make_case(mode, proj, bias=bias, sizes=PACKED, hidden=21, input_size=19, seed=4)
    spec, x, sizes = fwd[:3]

    def both(fn, x, h0f, h0r, c0f, c0r, *weights):
        wf, wr = LayerWeights(*weights[:5]), LayerWeights(*weights[5:])
        if fn is None:
            outs = _ops.bidirectional_layer(spec, x, sizes, (h0f, h0r), (c0f, c0r), (wf, wr))
        else:
            outs = [fn(spec, x, sizes, h0, c0, w, d == 1)
                    for d, (h0, c0, w) in enumerate([(h0f, c0f, wf), (h0r, c0r, wr)])]
        return [o for out in outs for o in out if o is not None]

    def run(fn):
        inputs = [None if t is None else t.detach().clone().requires_grad_()
                  for t in (x, fwd[3], rev[3], fwd[4], rev[4], *fwd[5], *rev[5])]
        outs = both(fn, *inputs)
        gen = torch.Generator().manual_seed(5)
        cots = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outs]
        leaves = [t for t in inputs if t is not None]
        return outs + list(torch.autograd.grad(outs, leaves, cots))

    want = run(run_layer)
    with num_threads(threads):
        got = run(None)
    atol, rtol = TOLERANCE[torch.float64]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=atol * w.abs().max().item(), rtol=rtol)


def test_bidirectional_bad_lists_raise():
    mode, x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, save = bi_op_args("LSTM", 0, PACKED, False,
                                                                        torch.float64)
    with pytest.raises(RuntimeError, match="h0 must list 2 tensors"):
        torch.ops.fastrnn.bilayer_fwd(mode, x, bs, h0[:1], c0, w_ih, w_hh, b_ih, b_hh, w_hr, save)
    with pytest.raises(RuntimeError, match="b_ih must list 2 tensors"):
        torch.ops.fastrnn.bilayer_fwd(mode, x, bs, h0, c0, w_ih, w_hh, b_ih[:1], b_hh, w_hr, save)
    with pytest.raises(RuntimeError, match="LSTM needs c0"):
        torch.ops.fastrnn.bilayer_fwd(mode, x, bs, h0, [], w_ih, w_hh, b_ih, b_hh, w_hr, save)


@pytest.mark.parametrize("mode,proj", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_poisoned_outputs(mode, proj, dtype):
    """Every output element is written: with deterministic mode on, torch fills
    each fresh at::empty buffer (outputs, workspace, scratch) with NaN. The
    bfloat16 case has even sizes and 9 rows: per-step bf16 products and the
    loops' bf16 copies of y and dG (small_gemm_bf16.h)."""
    if dtype == torch.bfloat16:
        case = make_case(mode, proj, sizes=[9, 9, 8, 4, 2], hidden=20, input_size=18, dtype=dtype)
    else:
        case = make_case(mode, proj, sizes=PACKED, hidden=19)
    clean = outputs_and_grads(_ops.layer, *case, True, dtype)
    torch.use_deterministic_algorithms(True)
    try:
        assert torch.utils.deterministic.fill_uninitialized_memory
        poisoned = outputs_and_grads(_ops.layer, *case, True, dtype)
    finally:
        torch.use_deterministic_algorithms(False)
    for got, want in zip(poisoned[0] + poisoned[1], clean[0] + clean[1]):
        assert not got.isnan().any()
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("mode,proj", CONFIGS)
def test_zero_batch(mode, proj):
    case = make_case(mode, proj, sizes=[0, 0, 0])
    outs, grads = outputs_and_grads(_ops.layer, *case, False, torch.float32)
    assert [tuple(o.shape) for o in outs][0] == (0, proj or 5)
    spec, x, bs, h0, c0, w = case
    shapes = [t.shape for t in (x, h0, c0, *w) if t is not None]
    assert [g.shape for g in grads] == shapes
    assert all(g.eq(0).all() for g in grads)


def test_inference_skips_workspace():
    args = op_args("LSTM", 0, PACKED, False, False, torch.float32)
    y, h_n, c_n, ws = torch.ops.fastrnn.layer_fwd(*args)
    assert ws.shape == (0, 5 * 5)
    saved = op_args("LSTM", 0, PACKED, False, True, torch.float32)
    y2, *_, ws2 = torch.ops.fastrnn.layer_fwd(*saved)
    assert ws2.shape == (sum(PACKED), 5 * 5)
    torch.testing.assert_close(y, y2, rtol=0, atol=0)


def _bad_fwd_args():
    """(description, args) pairs; each must raise RuntimeError from the kernel."""
    good = list(op_args("LSTM", 0, PACKED, False, True, torch.float32))
    gru = list(op_args("GRU", 0, PACKED, False, True, torch.float32))
    X, BS, H0, C0, WIH, WHH, BIH, BHH, WHR = range(1, 10)

    def edit(base, **changes):
        args = list(base)
        for index, value in changes.items():
            args[int(index[1:])] = value
        return args

    f32 = good[X]
    return [
        ("unknown mode", edit(good, a0="LSTMX")),
        ("x 3-D", edit(good, **{f"a{X}": f32[None]})),
        ("x float16", edit(good, **{f"a{X}": f32.half()})),
        ("x int", edit(good, **{f"a{X}": f32.long()})),
        ("x dtype differs from weights", edit(good, **{f"a{X}": f32.double()})),
        ("x not contiguous", edit(good, **{f"a{X}": torch.randn(7, f32.shape[0]).t()})),
        ("x rows != sum(batch_sizes)", edit(good, **{f"a{X}": f32[1:]})),
        ("batch_sizes increasing", edit(good, **{f"a{BS}": torch.tensor([1, 2, 4, 5, 5, 2])})),
        ("batch_sizes negative", edit(good, **{f"a{BS}": torch.tensor([20, -1])})),
        ("batch_sizes int32", edit(good, **{f"a{BS}": good[BS].int()})),
        ("batch_sizes empty", edit(good, **{f"a{BS}": torch.tensor([], dtype=torch.long)})),
        ("h0 batch", edit(good, **{f"a{H0}": good[H0][:-1]})),
        ("h0 dtype", edit(good, **{f"a{H0}": good[H0].double()})),
        ("c0 missing for LSTM", edit(good, **{f"a{C0}": None})),
        ("c0 given for GRU", edit(gru, **{f"a{C0}": torch.zeros(5, 5)})),
        ("c0 shape", edit(good, **{f"a{C0}": torch.zeros(5, 4)})),
        ("w_ih rows not gates * H", edit(good, **{f"a{WIH}": good[WIH][:-1]})),
        ("w_ih input size", edit(good, **{f"a{WIH}": good[WIH][:, :-1].contiguous()})),
        ("w_hh shape", edit(good, **{f"a{WHH}": good[WHH][:, :-1].contiguous()})),
        ("w_hh not contiguous", edit(good, **{f"a{WHH}": torch.randn(5, 20).t()})),
        ("b_ih without b_hh", edit(good, **{f"a{BHH}": None})),
        ("b_hh shape", edit(good, **{f"a{BHH}": good[BHH][:-1]})),
        ("w_hr for GRU", edit(gru, **{f"a{WHR}": torch.randn(3, 5)})),
        ("w_hr shape vs w_hh", edit(good, **{f"a{WHR}": torch.randn(3, 5)})),
        ("w_hr as wide as hidden", edit(good, **{f"a{WHR}": torch.randn(5, 5)})),
    ]


@pytest.mark.parametrize("case", range(len(_bad_fwd_args())),
                         ids=[d for d, _ in _bad_fwd_args()])
def test_bad_forward_inputs_raise(case):
    _, args = _bad_fwd_args()[case]
    with pytest.raises(RuntimeError):
        torch.ops.fastrnn.layer_fwd(*args)


def test_bad_backward_inputs_raise():
    args = op_args("GRU", 0, PACKED, False, True, torch.float32)
    y, h_n, c_n, ws = torch.ops.fastrnn.layer_fwd(*args)
    _, x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, _ = args
    _, *_, ws_inference = torch.ops.fastrnn.layer_fwd(*args[:-1], False)

    def bwd(grad_y=torch.ones_like(y), grad_c=c_n, workspace=ws, grad_h=torch.ones_like(h_n)):
        return torch.ops.fastrnn.layer_bwd("GRU", grad_y, grad_h, grad_c, x, bs, h0, c0, w_ih,
                                           w_hh, b_ih, b_hh, w_hr, y, workspace, reverse,
                                           [True, True, True])

    bwd()  # the well-formed call works
    bad = [
        dict(workspace=ws_inference),  # forward ran with save=False
        dict(workspace=ws.double()),
        dict(workspace=ws[:, :-1]),
        dict(grad_y=torch.ones(y.shape[1], y.shape[0]).t()),  # not contiguous
        dict(grad_y=torch.ones_like(y)[:-1]),
        dict(grad_h=torch.ones_like(h_n).double()),
        dict(grad_c=torch.ones(5, 5)),  # GRU has no cell state
    ]
    for kwargs in bad:
        with pytest.raises(RuntimeError):
            bwd(**kwargs)


def test_backward_after_inference_forward_raises():
    args = op_args("GRU", 0, PACKED, False, False, torch.float32)
    leaf = args[1].requires_grad_()
    y, *_ = torch.ops.fastrnn.layer_fwd(*args)
    with pytest.raises(RuntimeError, match="save=False"):
        y.sum().backward()
    assert leaf.grad is None


def test_backend_declines_what_it_cannot_serve():
    backend = get("cpu")
    assert backend.available() is None
    spec = LayerSpec("GRU", 3, 4)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        assert backend.supports(spec, torch.zeros(2, 3, dtype=dtype)) is None
    assert "float16" in backend.supports(spec, torch.zeros(2, 3, dtype=torch.float16))
    assert "meta" in backend.supports(spec, torch.zeros(2, 3, device="meta"))


@pytest.mark.parametrize("mode,proj", [("LSTM", 3), ("GRU", 0)])
def test_compile_fullgraph(mode, proj):
    """The op traces through torch.compile(fullgraph=True) (fake kernel + autograd
    formula) and gives the eager numbers, forward and backward."""
    torch._dynamo.reset()
    spec, x, bs, h0, c0, w = make_case(mode, proj, sizes=PADDED)
    backend = get("cpu")

    def fn(x, h0, c0, weights):
        y, h_n, c_n = backend.layer(spec, x, bs, h0, c0, weights, False)
        return (y.square().sum() + h_n.sum() + (0 if c_n is None else c_n.sum())).tanh()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    results = []
    for f in (fn, compiled):
        xs, h, c, ws = leaves(x, h0, c0, w, torch.float32)
        loss = f(xs, h, c, ws)
        inputs = [t for t in (xs, h, c, *ws) if t is not None]
        results.append([loss.detach(), *torch.autograd.grad(loss, inputs)])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
def test_matches_torch_nn(mode):
    """One layer against torch.nn's own module (same weights), padded batch."""
    steps, batch, size, hidden = 6, 3, 5, 11
    if mode in ("LSTM", "GRU"):
        module = getattr(torch.nn, mode)(size, hidden).double()
    else:
        nonlinearity = "tanh" if mode == "RNN_TANH" else "relu"
        module = torch.nn.RNN(size, hidden, nonlinearity=nonlinearity).double()
    x = torch.randn(steps, batch, size, dtype=torch.float64)
    h0 = torch.randn(1, batch, hidden, dtype=torch.float64)
    c0 = torch.randn(1, batch, hidden, dtype=torch.float64)
    want = module(x, (h0, c0) if mode == "LSTM" else h0)
    weights = LayerWeights(module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0,
                           module.bias_hh_l0, None)
    y, h_n, c_n = _ops.layer(LayerSpec(mode, size, hidden), x.reshape(-1, size),
                             torch.full((steps,), batch), h0[0],
                             c0[0] if mode == "LSTM" else None, weights, False)
    torch.testing.assert_close(y.reshape(steps, batch, hidden), want[0])
    if mode == "LSTM":
        torch.testing.assert_close(h_n, want[1][0][0])
        torch.testing.assert_close(c_n, want[1][1][0])
    else:
        torch.testing.assert_close(h_n, want[1][0])


def test_scalar_gate_math(tmp_path):
    """gates.h instantiated with plain float/double (as the CUDA kernels use it),
    compiled without torch, against torch autograd."""
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(64, 8, generator=gen, dtype=torch.float64) * 2
    values = values.to(torch.float32).double()  # exactly representable in float too
    rows = run_gate_probe(tmp_path, values)
    want = gate_reference(values)
    torch.testing.assert_close(rows[0::2], want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(rows[1::2], want, atol=2e-6, rtol=2e-5)
