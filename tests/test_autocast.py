"""Mixed precision: fastrnn under torch.autocast, against torch.nn under it.

For every class and the input dtypes autocast meets (fp32, or the low dtype a
preceding Linear returns), with and without hx: the same output dtypes as
torch.nn, no exception where torch.nn has none, outputs and gradients within
low-precision tolerance of torch.nn's own autocast result (judged against a
float64 truth, as the bf16 parity tests), parameter gradients in the
parameters' dtype; weights cast at most once per autocast region when a
module or cell is called in a loop; a GradScaler training loop with torch.nn's losses and
skipped steps. CUDA: torch.nn's cuDNN autocast (float16 for the modules
whatever the autocast dtype; the autocast dtype for the cells), skipped here.
"""
import copy

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence
from torch.utils._python_dispatch import TorchDispatchMode

import fastrnn

from parity import assert_half_close

# (class, kwargs); each runs as one module or one cell step.
CLASSES = [
    ("LSTM", {}),
    ("LSTM", {"proj_size": 3}),
    ("LSTM", {"num_layers": 2, "bidirectional": True}),
    ("GRU", {}),
    ("GRU", {"num_layers": 2, "bidirectional": True}),
    ("RNN", {"nonlinearity": "tanh"}),
    ("RNN", {"nonlinearity": "relu", "num_layers": 2}),
    ("LSTMCell", {}),
    ("GRUCell", {}),
    ("RNNCell", {}),
]
INPUT, HIDDEN, STEPS, BATCH = 8, 6, 5, 4


@pytest.fixture
def native(use):
    """The backend under test, if it runs fastrnn's native ops (cpu, cuda),
    whose autocast kernels these tests are about."""
    if use not in ("cpu", "cuda"):
        pytest.skip(reason=f"the {use} backend is plain PyTorch / Triton ops, not the native ops "
                    "with autocast kernels")
    return use


def ident(v):
    return v if isinstance(v, str) else "-".join(f"{k}{w}" for k, w in v.items()) or "default"


def make(lib, name, kwargs, device="cpu"):
    torch.manual_seed(0)
    return getattr(lib, name)(INPUT, HIDDEN, **kwargs).to(device)


def inputs(name, kwargs, dtype, with_hx, device="cpu"):
    gen = torch.Generator().manual_seed(1)
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).to(device, dtype)  # noqa: E731
    cell = name.endswith("Cell")
    x = rand(BATCH, INPUT) if cell else rand(STEPS, BATCH, INPUT)
    if not with_hx:
        return x, None
    layers = () if cell else (kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1),)
    out = kwargs.get("proj_size", 0) or HIDDEN
    h = rand(*layers, BATCH, out)
    return x, ((h, rand(*layers, BATCH, HIDDEN)) if "LSTM" in name else h)


def flat(out):
    if isinstance(out, PackedSequence):
        return [out.data]
    return [t for o in out for t in flat(o)] if isinstance(out, tuple) else [out]


def forward_backward(module, x, hx, device_type, low, packed=False):
    """Results and gradients of one forward under autocast, backward after it;
    `packed`: x as a PackedSequence of lengths STEPS, 3, 2, 2."""
    x = x.detach().clone().requires_grad_()
    hx = None if hx is None else tuple(h.detach().clone().requires_grad_() for h in flat(hx))
    state = None if hx is None else (hx if len(hx) == 2 else hx[0])
    module.zero_grad(set_to_none=True)
    inp = pack_padded_sequence(x, torch.tensor([STEPS, 3, 2, 2])) if packed else x
    with torch.autocast(device_type, dtype=low):
        outs = flat(module(inp, state))
    gen = torch.Generator().manual_seed(2)
    sum((o.double() * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device)).sum()
        for o in outs).backward()
    grads = [x.grad] + [h.grad for h in hx or ()] + [p.grad for p in module.parameters()]
    return outs, grads, x, hx


def dtypes(ts):
    return [t.dtype for t in ts]


def torch_raises(ref, x, hx, device_type, low, packed):
    x = x.detach().requires_grad_()
    try:
        with torch.autocast(device_type, dtype=low):
            ref(pack_padded_sequence(x, torch.tensor([STEPS, 3, 2, 2])) if packed else x, hx)
    except RuntimeError:
        return True
    return False


FORMS = [(name, kwargs, form) for name, kwargs in CLASSES
         for form in (("padded",) if name.endswith("Cell") else ("padded", "packed"))]


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("input_dtype", ["fp32", "low"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
@pytest.mark.parametrize("name,kwargs,form", FORMS, ids=ident)
def test_cpu_autocast_matches_torch(name, kwargs, form, with_hx, input_dtype, low, native):
    dtype = torch.float32 if input_dtype == "fp32" else low
    packed = form == "packed"
    ref, ours = make(torch.nn, name, kwargs), make(fastrnn, name, kwargs)
    x, hx = inputs(name, kwargs, dtype, with_hx)
    if torch_raises(ref, x, hx, "cpu", low, packed):
        # torch.nn's oneDNN LSTM has no fp16 kernel for fp32 input, nor a bf16
        # one on a CPU without AVX-512 (AMD Zen 1-3); fastrnn runs it (in fp32,
        # rounded to the low dtype) and returns it as torch.nn's other paths do.
        outs, grads, _, _ = forward_backward(ours, x, hx, "cpu", low, packed)
        assert dtypes(outs) == [low] * len(outs)
        return
    want, want_grads, _, _ = forward_backward(ref, x, hx, "cpu", low, packed)
    got, got_grads, _, _ = forward_backward(ours, x, hx, "cpu", low, packed)
    assert dtypes(got) == dtypes(want), "output dtypes differ from torch.nn's under autocast"
    assert dtypes(got_grads) == dtypes(want_grads)
    assert all(p.grad.dtype == p.dtype for p in ours.parameters())
    # The float64 truth of what the low-precision products see: inputs, states
    # and weights rounded to the autocast dtype (else a relu whose input sits
    # near 0 flips with the rounding and its gradient with it).
    rounded = lambda t: t.detach().to(low).double()  # noqa: E731
    exact = copy.deepcopy(ref).double()
    with torch.no_grad():
        for p in exact.parameters():
            p.copy_(rounded(p))
    hx64 = None if hx is None else (tuple(map(rounded, hx)) if "LSTM" in name else rounded(hx))
    truth, truth_grads, _, _ = forward_backward(exact, rounded(x), hx64, "cpu", low, packed)
    for i, (g, w, t) in enumerate(zip(got + got_grads, want + want_grads, truth + truth_grads)):
        assert_half_close(g.double(), w.double(), t.double(), f"result {i}")


class CastCounter(TorchDispatchMode):
    """Counts the dtype casts of tensors of given shapes (the weights)."""

    def __init__(self, shapes):
        super().__init__()
        self.shapes, self.casts = set(shapes), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default and tuple(args[0].shape) in self.shapes:
            self.casts += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_loop_casts_weights_at_most_once_per_region(name, native):
    """A module or cell called in a loop inside one autocast region: each weight
    is cast at most once (ATen's autocast cache), not once per call. (A cell
    step runs in fp32 on the CPU and casts no weight at all.)"""
    module = make(fastrnn, name, {})
    shapes = [tuple(p.shape) for p in module.parameters()]
    cell = name.endswith("Cell")
    x = torch.randn(BATCH, INPUT) if cell else torch.randn(STEPS, BATCH, INPUT)
    def loop(module, counter=None):
        with torch.autocast("cpu", dtype=torch.bfloat16), counter or torch.no_grad():
            hx = None
            for _ in range(6):  # the state fed back in the dtype it came out in
                out = module(x, hx)
                hx = out if cell else out[1]
        return dtypes(flat(out))

    counter = CastCounter(shapes)
    got = loop(module, counter)
    try:
        want = loop(make(torch.nn, name, {}))
    except RuntimeError:  # oneDNN's bf16 LSTM needs AVX-512 (test_cpu_autocast_matches_torch)
        want = [torch.bfloat16] * len(got)
    assert got == want
    assert counter.casts == (0 if cell else len(shapes))


def train(lib, name, kwargs, scaler_steps=6, nan_step=2):
    """Linear -> recurrent module -> Linear under bf16 autocast with a GradScaler
    and SGD; a NaN in the input of step `nan_step` must make the scaler skip it."""
    torch.manual_seed(0)
    rnn = getattr(lib, name)(INPUT, HIDDEN, **kwargs)
    head_in, head_out = torch.nn.Linear(INPUT, INPUT), torch.nn.Linear(HIDDEN, 1)
    params = list(head_in.parameters()) + list(rnn.parameters()) + list(head_out.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    gen = torch.Generator().manual_seed(3)
    losses, scales = [], []
    for step in range(scaler_steps):
        x = torch.randn(STEPS, BATCH, INPUT, generator=gen)
        if step == nan_step:
            x[1, 2, 3] = float("nan")
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = rnn(head_in(x))[0]
            loss = head_out(out).float().pow(2).mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
        scales.append(scaler.get_scale())
    return torch.tensor(losses), scales, params


@pytest.mark.parametrize("name,kwargs", [("LSTM", {}), ("GRU", {}), ("RNN", {})], ids=ident)
def test_grad_scaler_loop_matches_torch(name, kwargs, native):
    want_losses, want_scales, want_params = train(torch.nn, name, kwargs)
    got_losses, got_scales, got_params = train(fastrnn, name, kwargs)
    assert got_scales == want_scales  # the same steps skipped (scale halved)
    assert torch.isnan(got_losses).tolist() == torch.isnan(want_losses).tolist()
    finite = ~torch.isnan(want_losses)
    torch.testing.assert_close(got_losses[finite], want_losses[finite], rtol=3e-2, atol=3e-3)
    for g, w in zip(got_params, want_params):
        torch.testing.assert_close(g, w, rtol=3e-2, atol=3e-3)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@requires_cuda
@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name,kwargs", CLASSES, ids=ident)
def test_cuda_autocast_matches_torch(name, kwargs, low):
    """torch.nn's modules run _cudnn_rnn, whose autocast kernel casts to float16
    whatever the autocast dtype; its cells are on the lower-precision list."""
    ref, ours = make(torch.nn, name, kwargs, "cuda"), make(fastrnn, name, kwargs, "cuda")
    x, hx = inputs(name, kwargs, torch.float32, True, "cuda")
    want, want_grads, _, _ = forward_backward(ref, x, hx, "cuda", low)
    got, got_grads, _, _ = forward_backward(ours, x, hx, "cuda", low)
    assert dtypes(got) == dtypes(want)
    assert dtypes(got_grads) == dtypes(want_grads)
    for g, w in zip(got + got_grads, want + want_grads):
        scale = max(1.0, w.double().abs().max().item())
        torch.testing.assert_close(g.double(), w.double(), rtol=5e-2, atol=5e-2 * scale)
