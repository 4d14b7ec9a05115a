"""The Triton kernels (both families) against the reference layer.

Runs on a GPU as is, or on the CPU through Triton's interpreter, which must be
switched on before triton.jit runs, i.e. from the command line:

    TRITON_INTERPRET=1 OMP_NUM_THREADS=1 python -m pytest -q tests/test_triton_kernels.py

Every case calls the custom op fastrnn::triton_layer_fwd with a forced family,
differentiates through its registered backward (fastrnn::triton_layer_bwd) and
compares y, h_n, c_n and every gradient with fastrnn.backends.reference run in
float64 on the same (dtype-rounded) inputs.
"""
import os
import subprocess
import sys

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(reason="no GPU: run with TRITON_INTERPRET=1 set on the command line (the "
                "interpreter must be on before triton.jit runs)", allow_module_level=True)
pytest.importorskip("triton", reason="the triton package is not installed")

from fastrnn.backends import triton_backend  # noqa: E402  (registers the ops)
from fastrnn.backends.base import GATES, MASK_ENTRY, LayerSpec, LayerWeights  # noqa: E402
from fastrnn.backends.reference import run_layer  # noqa: E402
from fastrnn.triton import plan  # noqa: E402

torch.set_num_threads(1)
FAMILIES = ("step", "persistent")
MODES = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")
GRAD_NAMES = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")


@pytest.fixture(autouse=True)
def poisoned_empty(monkeypatch):
    """torch.empty returns NaN-filled floats, so an unwritten element cannot pass."""
    real = torch.empty

    def empty(*args, **kwargs):
        t = real(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", empty)


def make_inputs(mode, input_size, hidden, proj, bias, sizes, seed):
    """Float64 leaves: x, h0, c0 (or None), w_ih, w_hh, b_ih, b_hh, w_hr."""
    g = torch.Generator().manual_seed(seed)
    G, out = GATES[mode], proj or hidden

    def rand(*shape, scale=1.0):
        return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * scale

    k = hidden**-0.5  # torch.nn's init range, so activations are not saturated
    B, N = sizes[0], sum(sizes)
    return [
        rand(N, input_size),
        rand(B, out),
        rand(B, hidden) if mode == "LSTM" else None,
        rand(G * hidden, input_size, scale=k),
        rand(G * hidden, out, scale=k),
        rand(G * hidden, scale=k) if bias else None,
        rand(G * hidden, scale=k) if bias else None,
        rand(out, hidden, scale=k) if proj else None,
    ]


def forward_backward(fn, leaves, seed):
    """Outputs of fn(*leaves) and the grads of every leaf for random output grads."""
    leaves = [None if t is None else t.detach().requires_grad_() for t in leaves]
    y, h_n, c_n = fn(*leaves)
    outs = [o for o in (y, h_n, c_n) if o is not None]
    g = torch.Generator().manual_seed(seed + 1)
    grads = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o) for o in outs]
    torch.autograd.backward(outs, grads)
    return outs, [None if t is None else t.grad for t in leaves]


def check(mode, family, dtype, *, hidden=20, input_size=13, proj=0, bias=True,
          sizes=(3, 3, 3, 3), reverse=False, seed=0):
    spec = LayerSpec(mode, input_size, hidden, proj, bias)
    bs = torch.tensor(sizes)
    master = make_inputs(mode, input_size, hidden, proj, bias, sizes, seed)
    # The kernel sees dtype-rounded inputs; the reference sees the same values in float64.
    ours_in = [None if t is None else t.to(DEVICE, dtype) for t in master]
    ref_in = [None if t is None else t.to(dtype).double() for t in ours_in]

    def ours(x, h0, c0, *w):
        y, h_n, c_n, *_ = torch.ops.fastrnn.triton_layer_fwd(
            mode, x, bs, h0, c0, *w, reverse, family)
        return y, h_n, (c_n if mode == "LSTM" else None)

    def ref(x, h0, c0, *w):
        return run_layer(spec, x, bs, h0, c0, LayerWeights(*w), reverse)

    got, got_grads = forward_backward(ours, ours_in, seed)
    want, want_grads = forward_backward(ref, ref_in, seed)
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    for name, a, b in zip(("y", "h_n", "c_n"), got, want):
        assert a.dtype == dtype, name
        torch.testing.assert_close(a.double().cpu(), b, atol=tol, rtol=tol, msg=name)
    for name, a, b in zip(GRAD_NAMES, got_grads, want_grads):
        assert (a is None) == (b is None), name
        if b is not None:
            assert a.dtype == dtype, name
            scale = max(1.0, b.abs().max().item())  # weight grads sum over all rows
            torch.testing.assert_close(
                a.double().cpu(), b, atol=tol * scale, rtol=tol, msg=f"grad {name}")


# (id, kwargs): padded, packed (ragged batch_sizes), reverse, no bias, projection,
# more than one row tile (B > 16 persistent, B > 64 step) and more than one column
# tile (H, Hout > 32).
CASES = [
    *[(f"{m}-padded", dict(mode=m)) for m in MODES],
    *[(f"{m}-packed-reverse", dict(mode=m, sizes=(3, 2, 2, 1), reverse=True)) for m in MODES],
    ("LSTM-proj-packed", dict(mode="LSTM", proj=7, sizes=(3, 3, 1))),
    ("LSTM-proj-reverse-wide", dict(mode="LSTM", hidden=40, proj=33, sizes=(2, 2, 1), reverse=True)),
    ("LSTM-nobias-18rows", dict(mode="LSTM", bias=False, sizes=(18, 17, 5))),
    ("GRU-nobias-packed", dict(mode="GRU", bias=False, sizes=(3, 2, 2, 1))),
    ("GRU-wide-18rows-reverse", dict(mode="GRU", hidden=40, sizes=(18, 9, 1), reverse=True)),
    ("RNN_RELU-nobias-wide", dict(mode="RNN_RELU", bias=False, hidden=37, sizes=(5, 4, 4))),
    ("RNN_TANH-1step", dict(mode="RNN_TANH", sizes=(4,))),
    ("LSTM-proj-70rows", dict(mode="LSTM", proj=5, sizes=(70, 66, 3))),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kwargs", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_float32(family, kwargs):
    check(family=family, dtype=torch.float32, **kwargs)


HALF_CASES = [
    ("LSTM-proj-packed", dict(mode="LSTM", proj=7, sizes=(3, 2, 2, 1))),
    ("GRU-packed-reverse", dict(mode="GRU", sizes=(3, 2, 2, 1), reverse=True)),
    ("RNN_TANH-padded", dict(mode="RNN_TANH")),
    ("RNN_RELU-nobias", dict(mode="RNN_RELU", bias=False, sizes=(3, 3, 2))),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kwargs", [c[1] for c in HALF_CASES], ids=[c[0] for c in HALF_CASES])
def test_half(family, dtype, kwargs):
    check(family=family, dtype=dtype, **kwargs)


@pytest.mark.parametrize("mode", MODES)
def test_families_write_identical_buffers(mode):
    """The backward of either family may follow the forward of either family."""
    x, h0, c0, *w = [None if t is None else t.to(DEVICE, torch.float32)
                     for t in make_inputs(mode, 13, 20, 0, True, (3, 2, 1), seed=3)]
    bs = torch.tensor([3, 2, 1])
    step, persistent = (
        torch.ops.fastrnn.triton_layer_fwd(mode, x, bs, h0, c0, *w, False, f) for f in FAMILIES)
    for name, a, b in zip(("y", "h_n", "c_n", "hs", "cs", "saved"), step, persistent):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def _opcheck_args(mode, proj, bias, reverse, requires_grad):
    leaves = [None if t is None else t.to(DEVICE, torch.float32).requires_grad_(requires_grad)
              for t in make_inputs(mode, 5, 17, proj, bias, (3, 2, 2), seed=5)]
    x, h0, c0, *w = leaves
    return [mode, x, torch.tensor([3, 2, 2]), h0, c0, *w, reverse, "auto"]


OPCHECK = [("LSTM", 6, True, True), ("GRU", 0, False, False), ("RNN_TANH", 0, True, True),
           ("RNN_RELU", 0, False, False)]


@pytest.mark.parametrize("mode,proj,bias,reverse", OPCHECK)
def test_opcheck_forward_op(mode, proj, bias, reverse):
    """Schema, fake kernel, autograd registration and AOT dispatch (which runs the bwd op)."""
    torch.library.opcheck(triton_backend.layer_fwd, _opcheck_args(mode, proj, bias, reverse, True))


@pytest.mark.parametrize("mode,proj,bias,reverse", OPCHECK)
def test_opcheck_backward_op(mode, proj, bias, reverse):
    args = _opcheck_args(mode, proj, bias, reverse, False)
    y, h_n, c_n, hs, cs, saved = triton_backend.layer_fwd(*args)
    x, bs, w_ih, w_hh, w_hr = args[1], args[2], args[5], args[6], args[9]
    grads = [torch.randn_like(t) for t in (y, h_n, c_n)]
    torch.library.opcheck(
        triton_backend.layer_bwd,
        [mode, *grads, x, bs, w_ih, w_hh, w_hr, hs, cs, saved, reverse, bias, "auto",
         [True, True, True]],
    )


@pytest.mark.parametrize("mask", [[False, True, True], [True, False, False], [False, False, True]],
                         ids=str)
@pytest.mark.parametrize("mode,proj", [("LSTM", 3), ("GRU", 0)])
def test_backward_op_output_mask(mode, proj, mask):
    """The gradients asked for equal those of a call asking for all (bitwise);
    the others are empty, as the fake kernel says (opcheck)."""
    args = _opcheck_args(mode, proj, True, False, False)
    y, h_n, c_n, hs, cs, saved = triton_backend.layer_fwd(*args)
    x, bs, w_ih, w_hh, w_hr = args[1], args[2], args[5], args[6], args[9]
    grads = [torch.randn_like(t) for t in (y, h_n, c_n)]
    call = [mode, *grads, x, bs, w_ih, w_hh, w_hr, hs, cs, saved, False, True, "auto"]
    full = triton_backend.layer_bwd(*call, [True, True, True])
    got = triton_backend.layer_bwd(*call, mask)
    for i, (g, f) in enumerate(zip(got, full)):
        wanted = mask[MASK_ENTRY[i]] and f.numel() > 0
        assert torch.equal(g, f) if wanted else g.numel() == 0, (i, mask)
    torch.library.opcheck(triton_backend.layer_bwd, [*call, mask])
    # No mask (a caller from before it, e.g. a graph cached by an older fastrnn): all.
    for g, f in zip(triton_backend.layer_bwd(*call), full, strict=True):
        assert torch.equal(g, f)


def test_autograd_asks_for_what_is_needed():
    """A layer whose input and state need no gradient: its backward op is
    called with output_mask [False, False, True], and the parameters'
    gradients match the oracle's."""
    from torch.utils._python_dispatch import TorchDispatchMode

    x, h0, _, *w = make_inputs("GRU", 13, 20, 0, True, (3, 3), seed=5)
    bs = torch.tensor([3, 3])
    x32, h32 = x.float().to(DEVICE), h0.float().to(DEVICE)
    weights = [t.float().to(DEVICE).requires_grad_() for t in w[:4]]
    masks = []

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "triton_layer_bwd" in str(func):
                masks.append(list(args[-1]))
            return func(*args, **(kwargs or {}))

    y = triton_backend.layer_fwd("GRU", x32, bs, h32, None, *weights, None, False, "auto")[0]
    with Log():
        got = torch.autograd.grad(y.sum(), weights)
    ref_w = [t.detach().double().requires_grad_() for t in weights]
    spec = LayerSpec("GRU", 13, 20, 0, True)
    y_ref = run_layer(spec, x32.double(), bs, h32.double(), None, LayerWeights(*ref_w, None),
                      False)[0]
    want = torch.autograd.grad(y_ref.sum(), ref_w)
    assert masks == [[False, False, True]]
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), r, atol=1e-4, rtol=1e-4)


def test_non_contiguous_and_stride0_grads():
    """Backward gets the stride-0 grads that .sum() produces and a non-contiguous x."""
    x, h0, c0, *w = make_inputs("LSTM", 13, 20, 0, True, (3, 3), seed=7)[:-1]
    bs = torch.tensor([3, 3])
    x32 = x.float().to(DEVICE)
    strided_x = torch.stack([x32, x32], 2).flatten(1)[:, ::2]  # same values, column stride 2

    def ours(x, h0, c0, *w):
        y, h_n, c_n, *_ = torch.ops.fastrnn.triton_layer_fwd(
            "LSTM", x, bs, h0, c0, *w, None, False, "step")
        return y, h_n, c_n

    def ref(x, h0, c0, *w):
        return run_layer(LayerSpec("LSTM", 13, 20), x, bs, h0, c0, LayerWeights(*w, None), False)

    grads = []
    for fn, leaves in ((ours, [strided_x, *(t.float().to(DEVICE) for t in (h0, c0, *w))]),
                       (ref, [x, h0, c0, *w])):
        leaves = [t.detach().requires_grad_() for t in leaves]
        assert fn is ref or not leaves[0].is_contiguous()
        sum(o.sum() for o in fn(*leaves)).backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a.double().cpu(), b, atol=1e-4, rtol=1e-4)


def test_backend_supports_and_declines():
    backend = triton_backend.TritonBackend()
    spec = LayerSpec("GRU", 3, 4)
    assert backend.available() is None
    assert backend.supports(spec, torch.empty(1, 3, device=DEVICE)) is None
    assert "float64" in backend.supports(spec, torch.empty(1, 3, dtype=torch.float64, device=DEVICE))


def test_family_choice(monkeypatch):
    monkeypatch.delenv("FASTRNN_TRITON_FAMILY", raising=False)
    f32, bf16 = torch.float32, torch.bfloat16
    assert plan.choose_family("auto", "LSTM", 8, 128, bf16) == "persistent"
    assert plan.choose_family("auto", "LSTM", 8, 128, f32) == "step"  # IEEE dots need more registers
    assert plan.choose_family("auto", "LSTM", 8, 64, f32) == "persistent"
    assert plan.choose_family("auto", "GRU", 4096, 64, bf16) == "step"  # batch fills a GPU
    assert plan.choose_family("step", "RNN_TANH", 8, 64, bf16) == "step"
    with pytest.raises(ValueError, match="limit"):
        plan.choose_family("persistent", "LSTM", 8, 512, bf16)
    monkeypatch.setenv("FASTRNN_TRITON_FAMILY", "persistent")  # a preference for "auto"
    assert plan.choose_family("auto", "GRU", 4096, 64, bf16) == "persistent"
    assert plan.choose_family("auto", "LSTM", 8, 512, bf16) == "step"
    assert plan.choose_family("step", "GRU", 8, 64, bf16) == "step"


def test_kernels_compile_for_sm90_without_spills():
    """Triton's full GPU pipeline and ptxas on every kernel variant the planner can
    pick: what the interpreter cannot check. A separate process, because kernels
    built under TRITON_INTERPRET=1 cannot be compiled."""
    pytest.importorskip("triton.backends.nvidia.compiler", reason="no NVIDIA backend in triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    run = subprocess.run([sys.executable, "-m", "fastrnn.triton.aot_check"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count("0 bytes spilled") == run.stdout.count("\n") > 0


def test_torch_compile_fullgraph():
    """The fake and autograd registrations let dynamo trace the op without a graph break."""
    x, h0, c0, *w = [t.float().to(DEVICE).requires_grad_()
                     for t in make_inputs("LSTM", 5, 17, 0, True, (2, 2), seed=9)[:-1]]
    bs = torch.tensor([2, 2])

    def loss(x, h0, c0, *w):
        y, h_n, c_n, *_ = torch.ops.fastrnn.triton_layer_fwd(
            "LSTM", x, bs, h0, c0, *w, None, False, "auto")
        return (y * y).sum() + h_n.sum() + c_n.sum()

    compiled = torch.compile(loss, fullgraph=True)
    leaves = (x, h0, c0, *w)
    got = torch.autograd.grad(compiled(*leaves), leaves)
    want = torch.autograd.grad(loss(*leaves), leaves)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
