"""Backend selection: auto, the env var, the context manager, declining, and reporting."""
import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

import fastrnn
from fastrnn import backends
from fastrnn.backends.base import Backend, LayerSpec


def test_reference_is_always_available():
    assert "reference" in backends.available()


def test_auto_prefers_fastest_available(monkeypatch):
    monkeypatch.delenv("FASTRNN_BACKEND", raising=False)
    x = torch.randn(2, 3)
    chosen = backends.select(LayerSpec("GRU", 3, 4), x)
    first_usable = next(n for n in backends.AUTO_CHAIN["cpu"] if n in backends.available())
    assert chosen.name == first_usable


def test_env_var_and_context_manager(monkeypatch):
    monkeypatch.setenv("FASTRNN_BACKEND", "reference")
    assert backends.requested() == "reference"
    m = fastrnn.GRU(3, 4)
    m(torch.randn(2, 1, 3))
    assert m.last_backend == "reference"
    monkeypatch.setenv("FASTRNN_BACKEND", "auto")
    with fastrnn.use_backend("reference"):
        assert backends.requested() == "reference"
        m(torch.randn(2, 1, 3))
        assert m.last_backend == "reference"
    assert backends.requested() == "auto"


def test_env_var_unknown_backend_fails_loudly(monkeypatch):
    monkeypatch.setenv("FASTRNN_BACKEND", "warp9")
    with pytest.raises(ValueError, match="unknown fastrnn backend"):
        fastrnn.GRU(3, 4)(torch.randn(2, 1, 3))


class _Declines(Backend):
    """A backend that refuses GRU and runs everything else on the reference."""

    name = "declines-gru"

    def supports(self, spec, x):
        return "no GRU here" if spec.mode == "GRU" else None

    def layer(self, spec, x, batch_sizes, h0, c0, weights, reverse):
        y, h, c = backends.get("reference").layer(spec, x, batch_sizes, h0, c0, weights, reverse)
        return y, h, c


def test_declining_backend_falls_through(monkeypatch):
    monkeypatch.setitem(backends._BACKENDS, "declines-gru", _Declines())
    torch.manual_seed(0)
    ref = torch.nn.GRU(3, 4)
    ours = fastrnn.GRU(3, 4)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3)
    with fastrnn.use_backend("declines-gru"):
        out, _ = ours(x)
        assert ours.last_backend != "declines-gru"
        torch.testing.assert_close(out, ref(x)[0])
        lstm = fastrnn.LSTM(3, 4)
        lstm(x)
        assert lstm.last_backend == "declines-gru"
    assert backends.why_not("declines-gru", LayerSpec("GRU", 3, 4), x) == "no GRU here"


class _Switchable(Backend):
    """Serves a call only while `on`: its answer changes within a process."""

    name = "switchable"
    on = True

    def supports(self, spec, x):
        return None if self.on else "switched off"

    def layer(self, spec, x, batch_sizes, h0, c0, weights, reverse):
        return backends.get("reference").layer(spec, x, batch_sizes, h0, c0, weights, reverse)


@pytest.mark.parametrize("static", [False, True])
def test_select_keeps_only_static_answers(monkeypatch, static):
    """select() remembers a CPU answer only where each backend it asked declared
    that its answer depends on the spec, device type and dtype alone."""
    switch = _Switchable()
    switch.static_choice = static
    monkeypatch.setitem(backends._BACKENDS, "switchable", switch)
    monkeypatch.setattr(backends, "_CPU_CHOICES", {})
    spec, x = LayerSpec("GRU", 3, 4), torch.randn(2, 3)
    with fastrnn.use_backend("switchable"):
        assert backends.select(spec, x) is switch
        switch.on = False
        # Remembered (static) or asked again, which now falls through to the chain.
        assert (backends.select(spec, x) is switch) == static
    # Another request is another key: auto does not reuse the named answer.
    assert backends.select(spec, x).name != "switchable"


MODES = [("LSTM", dict(proj_size=2)), ("LSTM", {}), ("GRU", {}), ("RNN", dict(nonlinearity="relu")), ("RNN", {})]


@pytest.mark.parametrize("name,kwargs", MODES)
def test_gradcheck_float64(name, kwargs, use):
    """Numerical vs analytical gradients of input, states and every parameter, packed and bidirectional."""
    torch.manual_seed(0)
    m = getattr(fastrnn, name)(3, 4, num_layers=2, bidirectional=True, **kwargs).double()
    names = [n for n, _ in m.named_parameters()]
    out = m.proj_size or m.hidden_size
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 2, 4])
    states = [torch.randn(4, 3, out, dtype=torch.float64, requires_grad=True)]
    if name == "LSTM":
        states.append(torch.randn(4, 3, 4, dtype=torch.float64, requires_grad=True))
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def f(x, *rest):
        hx = rest[: len(states)]
        ps = dict(zip(names, rest[len(states) :]))
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        y, h = functional_call(m, ps, (packed, tuple(hx) if name == "LSTM" else hx[0]))
        return (y.data,) + (h if isinstance(h, tuple) else (h,))

    assert gradcheck(f, (x, *states, *params), eps=1e-6, atol=1e-6)
