"""fastrnn.gate_activations against an independent oracle, on every serving backend.

The oracle runs each sequence of the batch on its own, step by step, with the
gate equations of torch.nn's documentation and the module's weights, layer by
layer and direction by direction, so it shares no packing, stacking or kernel
code with fastrnn. Its outputs are checked against torch.nn's first, so a wrong
oracle cannot pass.
"""
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastrnn
from fastrnn import backends
from fastrnn.backends.base import LayerSpec

TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


def oracle(module, x, lengths, hx=None):
    """x (T, B, I) padded, hx optional (h0, c0) or h0 as torch.nn takes them; returns
    gates[l][d][name] (T, B, H) zero past each length, and the last layer's output
    (T, B, D*Hout)."""
    mode, H = module.mode, module.hidden_size
    dirs = 2 if module.bidirectional else 1
    Hout = module.proj_size or H
    T, B, _ = x.shape
    layer_in = x
    gates = []
    for layer in range(module.num_layers):
        outs, per_dir = [], []
        for d in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w = [getattr(module, n + sfx, None) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")]
            out = x.new_zeros(T, B, Hout)
            got = {}
            for b in range(B):
                h, c = x.new_zeros(Hout), x.new_zeros(H)
                if hx is not None:
                    k = layer * dirs + d
                    h, c = (hx[0][k, b], hx[1][k, b]) if mode == "LSTM" else (hx[k, b], c)
                steps = range(lengths[b] - 1, -1, -1) if d else range(lengths[b])
                for t in steps:
                    h, c, g = step(mode, layer_in[t, b], h, c, *w)
                    out[t, b] = h
                    for k, v in g.items():
                        got.setdefault(k, x.new_zeros(T, B, H))[t, b] = v
            outs.append(out)
            per_dir.append(got)
        gates.append(per_dir)
        layer_in = torch.cat(outs, 2)
    return gates, layer_in


def step(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, w_hr):
    gi, gh = w_ih @ x + b_ih, w_hh @ h + b_hh
    if mode == "LSTM":
        i, f, g, o = (gi + gh).chunk(4)
        i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
        c = f * c + i * g
        h = o * c.tanh()
        return (h if w_hr is None else w_hr @ h), c, {"i": i, "f": f, "g": g, "o": o, "c": c}
    if mode == "GRU":
        (xr, xz, xn), (hr, hz, hn) = gi.chunk(3), gh.chunk(3)
        r, z = (xr + hr).sigmoid(), (xz + hz).sigmoid()
        n = (xn + r * hn).tanh()
        return (1 - z) * n + z * h, c, {"r": r, "z": z, "n": n}
    h = (gi + gh).tanh()
    return h, c, {"h": h}


def padded(gate, trace, lengths):
    """A trace's gate as (T, B, H), zero past each length."""
    if isinstance(gate, nn.utils.rnn.PackedSequence):
        return pad_packed_sequence(gate)[0]
    grid = gate.transpose(0, 1) if trace.batch_first else gate
    mask = torch.arange(grid.shape[0])[:, None] < torch.tensor(lengths)[None, :]
    return grid * mask[..., None]


CONFIGS = [  # mode, layers, bidirectional, proj, form
    ("LSTM", 1, False, 0, "padded"),
    ("LSTM", 2, True, 0, "packed"),
    ("LSTM", 2, True, 3, "batch_first"),
    ("GRU", 1, False, 0, "packed"),
    ("GRU", 2, True, 0, "batch_first"),
    ("RNN_TANH", 2, True, 0, "packed"),
]


def make(mode, layers, bidir, proj, form, dtype, seed=0):
    torch.manual_seed(seed)
    kw = dict(num_layers=layers, bidirectional=bidir, batch_first=form == "batch_first")
    if proj:
        kw["proj_size"] = proj
    cls = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN_TANH": nn.RNN}[mode]
    ref = cls(3, 5, **kw).to(dtype)
    fast = {"LSTM": fastrnn.LSTM, "GRU": fastrnn.GRU, "RNN_TANH": fastrnn.RNN}[mode](3, 5, **kw).to(dtype)
    fast.load_state_dict(ref.state_dict())
    T, B = 6, 3
    x = torch.randn(T, B, 3, dtype=dtype)
    lengths = [6, 3, 5] if form == "packed" else [T] * B
    if form == "packed":
        inp = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
    else:
        inp = x.transpose(0, 1) if form == "batch_first" else x
    return ref, fast, x, inp, lengths


def serves(backend, dtype):
    why = backends.why_not(backend, LayerSpec("LSTM", 3, 5), torch.empty(1, dtype=dtype))
    if why is not None:
        pytest.skip(reason=f"{backend} does not serve {dtype}: {why}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_gates_match_oracle(backend, use, config, dtype):
    serves(backend, dtype)
    ref, fast, x, inp, lengths = make(*config, dtype)
    trace = fastrnn.gate_activations(fast, inp)
    want, want_out = oracle(ref, x, lengths)

    # The oracle is torch.nn's recurrence, and the trace's output is the module's.
    torch_out = ref(inp)[0]
    out = trace.output
    if isinstance(out, nn.utils.rnn.PackedSequence):
        out, torch_out = pad_packed_sequence(out)[0], pad_packed_sequence(torch_out)[0]
    elif fast.batch_first:
        out, torch_out = out.transpose(0, 1), torch_out.transpose(0, 1)
    torch.testing.assert_close(want_out, torch_out, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(out, torch_out, atol=TOL[dtype], rtol=TOL[dtype])

    assert trace.names == {"LSTM": ("i", "f", "g", "o", "c"), "GRU": ("r", "z", "n"),
                           "RNN_TANH": ("h",)}[fast.mode]
    for layer in range(fast.num_layers):
        for d in range(2 if fast.bidirectional else 1):
            source = trace.sources[layer][d]
            assert source.startswith(backend)
            if backend in ("cpu", "triton") and fast.mode != "RNN_TANH":
                assert "saved by the kernel" in source  # decoded, not recomputed
            for name in trace.names:
                got = padded(trace.gate(name, layer, d), trace, lengths)
                assert got.shape == (x.shape[0], x.shape[1], fast.hidden_size)
                torch.testing.assert_close(got.to(dtype), want[layer][d][name], atol=TOL[dtype],
                                           rtol=TOL[dtype], msg=lambda m: f"{name} l{layer} d{d}: {m}")


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_given_initial_state(backend, use, mode):
    """hx reaches every layer and direction: the first step's gates depend on it."""
    serves(backend, torch.float32)
    ref, fast, x, inp, lengths = make(mode, 2, True, 0, "packed", torch.float32)
    B = x.shape[1]
    h0 = torch.randn(4, B, 5)
    hx = (h0, torch.randn(4, B, 5)) if mode == "LSTM" else h0
    trace = fastrnn.gate_activations(fast, inp, hx)
    want, _ = oracle(ref, x, lengths, hx)
    for layer in range(2):
        for d in range(2):
            for name in trace.names:
                torch.testing.assert_close(padded(trace.gate(name, layer, d), trace, lengths),
                                           want[layer][d][name], atol=TOL[torch.float32],
                                           rtol=TOL[torch.float32])


def test_bfloat16_gates_are_float32(backend, use):
    """Half-precision layers keep their states in fp32, and so do their gates."""
    serves(backend, torch.bfloat16)
    ref, fast, x, inp, lengths = make("LSTM", 2, True, 0, "packed", torch.bfloat16)
    trace = fastrnn.gate_activations(fast, inp)
    want, _ = oracle(ref.double(), x.double(), lengths)
    for layer in range(2):
        for d in range(2):
            for name in trace.names:
                got = trace.gate(name, layer, d)
                assert got.data.dtype == torch.float32
                torch.testing.assert_close(padded(got, trace, lengths).double(), want[layer][d][name],
                                           atol=5e-2, rtol=0)


def test_capture_keeps_training_semantics(backend, use):
    """The captured forward is the module's forward: same output and gradients."""
    serves(backend, torch.float32)
    _, fast, _, inp, _ = make("LSTM", 2, True, 0, "packed", torch.float32)
    trace = fastrnn.gate_activations(fast, inp)
    trace.output.data.sum().backward()
    got = [p.grad.clone() for p in fast.parameters()]
    fast.zero_grad()
    fast(inp)[0].data.sum().backward()
    for g, w in zip(got, (p.grad for p in fast.parameters())):
        torch.testing.assert_close(g, w)
    assert fast.last_backend == backend


def test_unbatched_and_no_grad(backend, use):
    serves(backend, torch.float32)
    torch.manual_seed(1)
    gru = fastrnn.GRU(3, 4)
    x = torch.randn(7, 3)
    with torch.no_grad():
        trace = fastrnn.gate_activations(gru, x)
    assert trace.gate("z").shape == (7, 4)
    batched = fastrnn.gate_activations(gru, x.unsqueeze(1))
    torch.testing.assert_close(trace.gate("z"), batched.gate("z")[:, 0])
    torch.testing.assert_close(trace.sequence("n"), batched.sequence("n", batch=0))


def test_rejects_torch_nn_modules():
    with pytest.raises(TypeError, match="fastrnn.convert"):
        fastrnn.gate_activations(nn.LSTM(2, 3), torch.randn(4, 1, 2))


def test_plot_writes_png(tmp_path):
    torch.manual_seed(0)
    lstm = fastrnn.LSTM(3, 6, batch_first=True)
    trace = fastrnn.gate_activations(lstm, torch.randn(2, 9, 3))
    path = fastrnn.plot_gates(trace, str(tmp_path / "g.png"), batch=1, units=[0, 2, 5],
                              labels="abcdefghi", title="test")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_import_does_not_need_matplotlib():
    code = "import sys, fastrnn; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
