"""NaN, +-inf and huge finite values, against torch.nn, on every backend.

One non-finite (or huge) value is put in one place: the input, the initial
state h0 or c0, one weight, or the incoming gradient (the cotangent of the
output). Every output, final state and gradient must then have the same
non-finite entries as torch.nn's (NaN where torch has NaN, +inf / -inf where it
has them) and the same finite values, within the dtype's tolerance. Huge finite
pre-activations (+-1e30) must give torch.nn's saturated values.
"""
import math
import os
import zlib

import pytest
import torch

import fastrnn
from gates_probe import gate_reference, run_gate_probe

NAN, INF = math.nan, math.inf
# (kind, class name, constructor kwargs); LSTM_PROJ exercises w_hr.
MODULES = {
    "RNN_TANH": ("RNN", {"nonlinearity": "tanh"}),
    "RNN_RELU": ("RNN", {"nonlinearity": "relu"}),
    "GRU": ("GRU", {}),
    "LSTM": ("LSTM", {}),
    "LSTM_PROJ": ("LSTM", {"proj_size": 3}),
}
CELLS = {
    "RNNCell_TANH": ("RNNCell", {"nonlinearity": "tanh"}),
    "RNNCell_RELU": ("RNNCell", {"nonlinearity": "relu"}),
    "GRUCell": ("GRUCell", {}),
    "LSTMCell": ("LSTMCell", {}),
}
INPUT, HIDDEN, STEPS, BATCH = 5, 6, 4, 3
DTYPES = (torch.float32, torch.float64, torch.bfloat16)
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def places(kind: str) -> list[str]:
    """Where a value can go for this kind: inputs, states, weights, the cotangent."""
    lstm = kind.startswith("LSTM")
    out = ["x", "h0"] + (["c0"] if lstm else []) + ["weight_ih", "weight_hh", "bias_hh", "grad"]
    return out + (["weight_hr"] if kind == "LSTM_PROJ" else [])


def cases(kinds):
    for kind in kinds:
        for place in places(kind):
            # every value where a pre-activation can be reached; the rest with NaN and +inf
            values = (NAN, INF, -INF, 1e30, -1e30) if place in ("x", "h0", "weight_hh") else (NAN, INF)
            for value in values:
                for dtype in DTYPES:
                    yield pytest.param(kind, place, value, dtype, id=f"{kind}-{place}-{value:g}-{str(dtype)[6:]}")


def make(kinds: dict, kind: str, dtype, device):
    name, kwargs = kinds[kind]
    torch.manual_seed(zlib.crc32(kind.encode()))
    cell = name.endswith("Cell")
    extra = {} if cell else {"num_layers": 2}
    ref = getattr(torch.nn, name)(INPUT, HIDDEN, **kwargs, **extra).to(device, dtype)
    ours = getattr(fastrnn, name)(INPUT, HIDDEN, **kwargs, **extra).to(device, dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def plant(t: torch.Tensor, index: tuple, value: float) -> torch.Tensor:
    """A copy of t with `value` at `index`."""
    t = t.clone()
    t[index] = value
    return t


def run(module, kind, place, value, dtype, device):
    """Forward + backward with `value` planted at `place`; every result, in float64."""
    gen = torch.Generator().manual_seed(7)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64).to(device, dtype)  # noqa: E731
    cell = kind in CELLS
    lstm = "LSTM" in kind
    out_size = 3 if kind == "LSTM_PROJ" else HIDDEN
    layers = () if cell else (2,)
    x = rand(BATCH, INPUT) if cell else rand(STEPS, BATCH, INPUT)
    states = [rand(*layers, BATCH, out_size)] + ([rand(*layers, BATCH, HIDDEN)] if lstm else [])
    # Interior entries: time step 1 (modules), batch row 1, the last feature / unit.
    row = (1, -1) if cell else (1, 1, -1)
    if place == "x":
        x = plant(x, row, value)
    if place in ("h0", "c0"):
        i = 0 if place == "h0" else 1
        states[i] = plant(states[i], (1, -1) if cell else (0, 1, -1), value)  # modules: layer 0
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith(place):  # the first layer's (cells: the only) weight
                p.copy_(plant(p, (1, -1) if p.dim() == 2 else (-1,), value))
                break
    x.requires_grad_()
    for s in states:
        s.requires_grad_()
    module.zero_grad(set_to_none=True)
    arg = tuple(states) if lstm else states[0]
    out = module(x, arg)
    outs = (list(out) if lstm else [out]) if cell else [out[0]] + (list(out[1]) if lstm else [out[1]])
    cots = [rand(*o.shape) for o in outs]
    if place == "grad":
        cots[0] = plant(cots[0], row, value)
    sum((o * c).sum() for o, c in zip(outs, cots)).backward()
    results = {f"out{i}": o for i, o in enumerate(outs)}
    results["grad_x"] = x.grad
    results.update({f"grad_state{i}": s.grad for i, s in enumerate(states)})
    results.update({f"grad_{n}": p.grad for n, p in module.named_parameters()})
    return {k: v.detach().double() for k, v in results.items()}


TOL = {torch.float64: (1e-9, 1e-10), torch.float32: (2e-4, 2e-5)}


def assert_same(got: dict, want: dict, dtype) -> None:
    """Same NaN, +inf and -inf entries as torch.nn, and the finite ones close.
    bfloat16 compares which entries are non-finite, not which kind: torch.nn
    rounds every op's result to bf16 and fastrnn's kernels keep fp32 inside,
    so where infinities meet (inf - inf: NaN, or still +-inf) depends on it."""
    assert got.keys() == want.keys()
    kinds = (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf))
    if dtype == torch.bfloat16:
        kinds = (("non-finite", lambda t: ~torch.isfinite(t)),)
    for name, w in want.items():
        g = got[name]
        for what, mask in kinds:
            diff = (mask(g) != mask(w)).nonzero().tolist()
            assert not diff, f"{name}: {what} differs from torch.nn at {diff[:5]} ({len(diff)} entries)"
        finite = torch.isfinite(w)
        if dtype == torch.bfloat16:  # a few bf16 roundings of the tensor's scale
            scale = max(1.0, w[finite].abs().max().item()) if finite.any() else 1.0
            rtol, atol = 5e-2, 5e-2 * scale
        else:
            rtol, atol = TOL[dtype]
        torch.testing.assert_close(g[finite], w[finite], rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def check(kinds, kind, place, value, dtype, backend, device):
    if INTERPRETED and backend == "triton" and (dtype != torch.float32 or value in (-INF, -1e30)):
        # Triton's CPU interpreter takes ~0.5 s a case: there, fp32 with NaN, +inf
        # and 1e30 (the same kernel code serves every dtype and sign).
        pytest.skip(reason="Triton interpreter: fp32 NaN, +inf, 1e30 only")
    ref, ours = make(kinds, kind, dtype, device)
    want = run(ref, kind, place, value, dtype, device)
    got = run(ours, kind, place, value, dtype, device)
    if math.isnan(value) and place != "grad":  # the case must reach the outputs at all
        assert any(torch.isnan(w).any() for k, w in want.items() if k.startswith("out"))
    assert_same(got, want, dtype)


@pytest.mark.parametrize("kind,place,value,dtype", list(cases(MODULES)))
def test_module_nonfinite_matches_torch(kind, place, value, dtype, use, device):
    check(MODULES, kind, place, value, dtype, use, device)


@pytest.mark.parametrize("kind,place,value,dtype", list(cases(CELLS)))
def test_cell_nonfinite_matches_torch(kind, place, value, dtype, use, device):
    check(CELLS, kind, place, value, dtype, use, device)


def test_scalar_gate_math_nonfinite(tmp_path):
    """The scalar gate math the CUDA kernels run (gates.h with float / double):
    NaN, +-inf and +-1e30 in each argument give torch's non-finite entries and
    saturated values (tests/gates_probe.cpp, against torch autograd)."""
    gen = torch.Generator().manual_seed(5)
    records = []
    for value in (NAN, INF, -INF, 1e30, -1e30):
        for column in range(8):
            row = torch.randn(8, generator=gen, dtype=torch.float64)
            row[column] = value
            records.append(row)
    values = torch.stack(records).to(torch.float32).double()
    rows = run_gate_probe(tmp_path, values)
    want = gate_reference(values)
    for got in (rows[0::2], rows[1::2]):  # double, float
        assert torch.equal(torch.isnan(got), torch.isnan(want))
        assert torch.equal(torch.isposinf(got), torch.isposinf(want))
        assert torch.equal(torch.isneginf(got), torch.isneginf(want))
        finite = torch.isfinite(want)
        torch.testing.assert_close(got[finite], want[finite], rtol=2e-5, atol=2e-6)
