"""The CUDA kernels of fastrnn._C against the reference oracle, at the op level.

Forward outputs and every gradient of fastrnn._ops.layer on CUDA are compared
with fastrnn.backends.reference.run_layer evaluated in float64 on the same
values, for each mode, direction and packing, on both kernel paths
(FASTRNN_CUDA_PATH=step / persistent). Needs a GPU and a CUDA build of fastrnn._C.
"""
from __future__ import annotations

import zlib

import pytest
import torch

from fastrnn import backends
from fastrnn.backends.base import LayerSpec, LayerWeights
from fastrnn.backends.reference import run_layer

CUDA_REASON = backends.get("cuda").available() if "cuda" in backends.names() else "no cuda backend"
pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    pytest.mark.skipif(
        torch.cuda.is_available() and CUDA_REASON is not None, reason=str(CUDA_REASON)
    ),
]

# Worst error relative to the largest reference magnitude of each tensor.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}

LENGTHS = {"padded": [6, 6, 6], "packed": [9, 7, 7, 4, 1]}


@pytest.fixture(autouse=True)
def _exact_fp32():
    """fp32 GEMMs (cuBLAS here, cuDNN in the speed cases) must not silently run in TF32."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def batch_sizes_of(lengths: list[int]) -> torch.Tensor:
    steps = max(lengths)
    return torch.tensor([sum(n > t for n in lengths) for t in range(steps)], dtype=torch.int64)


def make_inputs(spec: LayerSpec, lengths: list[int], seed: int):
    """Random float64 CUDA leaves: x, batch_sizes, h0, c0 and the weights."""
    gen = torch.Generator().manual_seed(seed)
    batch_sizes = batch_sizes_of(lengths)
    n, b = int(batch_sizes.sum()), int(batch_sizes[0])
    gh, out = spec.gates * spec.hidden_size, spec.out_size

    def rand(*shape, scale=0.5):
        return (torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale

    x = rand(n, spec.input_size, scale=1.0)
    h0 = rand(b, out)
    c0 = rand(b, spec.hidden_size) if spec.mode == "LSTM" else None
    weights = LayerWeights(
        w_ih=rand(gh, spec.input_size),
        w_hh=rand(gh, out),
        b_ih=rand(gh) if spec.bias else None,
        b_hh=rand(gh) if spec.bias else None,
        w_hr=rand(out, spec.hidden_size) if spec.proj_size else None,
    )
    return x, batch_sizes, h0, c0, weights


def leaves(x, h0, c0, weights, dtype):
    """CUDA copies in `dtype` that require grad (None stays None)."""
    def leaf(t):
        return None if t is None else t.to("cuda", dtype).requires_grad_()

    return leaf(x), leaf(h0), leaf(c0), LayerWeights(*(leaf(w) for w in weights))


def poison_allocator():
    """Leave NaN in freed cached blocks (small and large pools) so an output element
    the kernels forget to write shows up as non-finite."""
    junk = [torch.full((n,), float("nan"), device="cuda")
            for n in (1 << 8, 1 << 10, 1 << 12, 1 << 14, 1 << 16) for _ in range(32)]
    junk.append(torch.full((1 << 24,), float("nan"), device="cuda"))
    del junk


def run_and_grad(fn, spec, x, batch_sizes, h0, c0, weights, reverse, seed):
    """Outputs and the gradients of a random linear loss of every output."""
    y, h_n, c_n = fn(spec, x, batch_sizes, h0, c0, weights, reverse)
    gen = torch.Generator().manual_seed(seed + 1)
    outputs = [t for t in (y, h_n, c_n) if t is not None]
    loss = sum(
        (t.double() * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.device)).sum()
        for t in outputs
    )
    inputs = [t for t in (x, h0, c0, *weights) if t is not None]
    grads = torch.autograd.grad(loss, inputs)
    return outputs, grads


def assert_near(ours, ref, dtype, what):
    ours, ref = ours.double(), ref.double()
    assert torch.isfinite(ours).all(), f"{what}: non-finite values"
    scale = ref.abs().max().clamp_min(1e-6)
    err = ((ours - ref).abs().max() / scale).item()
    assert err <= TOLERANCE[dtype], f"{what}: relative error {err:.2e} > {TOLERANCE[dtype]:.0e}"


SPECS = [
    LayerSpec("LSTM", 5, 16),
    LayerSpec("LSTM", 5, 16, proj_size=7),
    LayerSpec("GRU", 5, 16),
    LayerSpec("RNN_TANH", 5, 16),
    LayerSpec("RNN_RELU", 5, 16, bias=False),
    LayerSpec("GRU", 3, 37, bias=False),  # odd H: the persistent kernels' scalar path
    LayerSpec("GRU", 4, 264),             # H > SMs: several units per block, vector path
    LayerSpec("LSTM", 3, 301),            # ... and a last block with fewer units
]


def spec_id(spec: LayerSpec) -> str:
    extra = f"-p{spec.proj_size}" if spec.proj_size else ""
    return f"{spec.mode}-H{spec.hidden_size}{extra}{'' if spec.bias else '-nobias'}"


@pytest.mark.parametrize("path", ["step", "persistent"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("form", list(LENGTHS))
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_layer_matches_reference(spec, reverse, form, dtype, path, monkeypatch):
    from fastrnn import _ops

    if path == "persistent" and spec.proj_size:
        pytest.skip("the persistent kernel has no projection (covered by the error test)")
    monkeypatch.setenv("FASTRNN_CUDA_PATH", path)
    seed = zlib.crc32(f"{spec_id(spec)}{reverse}{form}".encode()) % 1000
    x, batch_sizes, h0, c0, weights = make_inputs(spec, LENGTHS[form], seed)
    # The oracle sees the same (rounded) values, so only the kernels' error is measured.
    x, h0, c0 = (None if t is None else t.to(dtype).double() for t in (x, h0, c0))
    weights = LayerWeights(*(None if t is None else t.to(dtype).double() for t in weights))

    ref_in = leaves(x, h0, c0, weights, torch.float64)
    ref_out, ref_grads = run_and_grad(run_layer, spec, ref_in[0], batch_sizes, *ref_in[1:], reverse, seed)

    poison_allocator()
    ours_in = leaves(x, h0, c0, weights, dtype)
    ours_out, ours_grads = run_and_grad(_ops.layer, spec, ours_in[0], batch_sizes, *ours_in[1:], reverse, seed)

    for name, a, b in zip(("y", "h_n", "c_n"), ours_out, ref_out):
        assert a.dtype == dtype and a.device.type == "cuda"
        assert_near(a, b, dtype, name)
    with torch.no_grad():  # inference (save=False: no workspace) computes the same values
        inference = _ops.layer(spec, ours_in[0], batch_sizes, *ours_in[1:], reverse)
    for name, a, b in zip(("y", "h_n", "c_n"), inference, ours_out):
        assert torch.equal(a, b), f"{name}: inference differs from training forward"
    names = [n for n, t in zip(("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr"),
                                (x, h0, c0, *weights)) if t is not None]
    for name, a, b in zip(names, ours_grads, ref_grads):
        assert_near(a, b, dtype, f"d{name}")


def test_forced_persistent_rejects_projection(monkeypatch):
    from fastrnn import _ops

    monkeypatch.setenv("FASTRNN_CUDA_PATH", "persistent")
    spec = LayerSpec("LSTM", 4, 8, proj_size=3)
    x, batch_sizes, h0, c0, weights = make_inputs(spec, [3, 2], 0)
    args = leaves(x, h0, c0, weights, torch.float32)
    with pytest.raises(RuntimeError, match="persistent"):
        _ops.layer(spec, args[0], batch_sizes, *args[1:], False)


def test_rejects_unknown_path(monkeypatch):
    from fastrnn import _ops

    monkeypatch.setenv("FASTRNN_CUDA_PATH", "fastest")
    spec = LayerSpec("RNN_TANH", 4, 8)
    x, batch_sizes, h0, c0, weights = make_inputs(spec, [2], 0)
    args = leaves(x, h0, c0, weights, torch.float32)
    with pytest.raises(RuntimeError, match="FASTRNN_CUDA_PATH"):
        _ops.layer(spec, args[0], batch_sizes, *args[1:], False)


def test_rejects_mismatched_shapes_and_devices():
    spec = LayerSpec("GRU", 4, 8)
    x, batch_sizes, h0, _, w = make_inputs(spec, [3, 2], 0)
    x, h0 = x.cuda().float(), h0.cuda().float()
    w = LayerWeights(*(t.cuda().float() for t in w[:4]), None)
    op = torch.ops.fastrnn.layer_fwd
    with pytest.raises(RuntimeError, match="w_ih"):
        op("GRU", x, batch_sizes, h0, None, w.w_ih[:, :3], w.w_hh, w.b_ih, w.b_hh, None, False, False)
    with pytest.raises(RuntimeError, match="batch_sizes"):
        op("GRU", x, batch_sizes + 1, h0, None, *w[:4], None, False, False)
    with pytest.raises(RuntimeError, match="device|cuda"):
        op("GRU", x, batch_sizes, h0.cpu(), None, *w[:4], None, False, False)


@pytest.mark.parametrize("path", ["step", "persistent"])
def test_opcheck(path, monkeypatch):
    monkeypatch.setenv("FASTRNN_CUDA_PATH", path)
    spec = LayerSpec("LSTM", 4, 8)
    x, batch_sizes, h0, c0, w = make_inputs(spec, [3, 3, 1], 1)
    x, h0, c0, w = leaves(x, h0, c0, w, torch.float32)
    args = ("LSTM", x, batch_sizes, h0, c0, *w, False, True)
    torch.library.opcheck(torch.ops.fastrnn.layer_fwd.default, args)


# ---------------------------------------------------------------- speed
# Run alone with --benchmark-only (docs/cuda_kernels.md): one layer, padded
# batch, fastrnn's two paths against torch.nn (cuDNN) on the same weights.
# Each case also checks that fastrnn's output agrees with cuDNN's.

SPEED_CASES = [(m, b, h) for m in ("LSTM", "GRU") for b in (8, 64) for h in (256, 1024)]


@pytest.mark.parametrize("phase", ["inference", "training"])
@pytest.mark.parametrize("impl", ["cudnn", "step", "persistent"])
@pytest.mark.parametrize("mode,batch,hidden", SPEED_CASES, ids=[f"{m}-B{b}-H{h}" for m, b, h in SPEED_CASES])
def test_speed(mode, batch, hidden, impl, phase, benchmark, monkeypatch):
    from fastrnn import _ops

    steps = 100
    torch.manual_seed(0)
    module = getattr(torch.nn, mode)(hidden, hidden).cuda()
    x = torch.randn(steps, batch, hidden, device="cuda", requires_grad=phase == "training")
    spec = LayerSpec(mode, hidden, hidden)
    weights = LayerWeights(module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0,
                           module.bias_hh_l0, None)
    batch_sizes = torch.full((steps,), batch, dtype=torch.int64)
    h0 = torch.randn(batch, hidden, device="cuda")
    c0 = torch.randn(batch, hidden, device="cuda") if mode == "LSTM" else None
    state = (h0[None], c0[None]) if mode == "LSTM" else h0[None]

    def ours():
        y, _, _ = _ops.layer(spec, x.view(steps * batch, hidden), batch_sizes, h0, c0, weights, False)
        return y.view(steps, batch, hidden)

    def cudnn():
        return module(x, state)[0]

    fn = cudnn if impl == "cudnn" else ours
    if impl != "cudnn":
        monkeypatch.setenv("FASTRNN_CUDA_PATH", impl)
    with torch.no_grad():
        torch.testing.assert_close(fn(), cudnn(), rtol=1e-3, atol=1e-4)

    def run():
        with torch.set_grad_enabled(phase == "training"):
            y = fn()
            if phase == "training":
                y.sum().backward()
        torch.cuda.synchronize()

    benchmark.group = f"{mode}-B{batch}-H{hidden}-{phase}"
    benchmark.pedantic(run, rounds=10, warmup_rounds=2)
