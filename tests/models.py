"""Every recurrent class fastrnn replaces, built in pairs (torch.nn, fastrnn) with the same weights.

Small sizes on purpose: these cases check that a path of the PyTorch
ecosystem (scripting, export, fake tensors, ...) gives torch.nn's results, not
the kernels' numerics, which tests/parity.py covers.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fastrnn

INPUT, HIDDEN, PROJ = 3, 4, 2

# (id, class name, constructor kwargs)
CASES = [
    ("rnn_tanh", "RNN", dict(num_layers=2)),
    ("rnn_relu", "RNN", dict(nonlinearity="relu", bidirectional=True)),
    ("lstm", "LSTM", dict(num_layers=2, bidirectional=True)),
    ("lstm_proj", "LSTM", dict(proj_size=PROJ, bias=False)),
    ("gru", "GRU", dict(num_layers=2, bidirectional=True)),
    ("rnn_cell", "RNNCell", dict(nonlinearity="tanh")),
    ("lstm_cell", "LSTMCell", dict()),
    ("gru_cell", "GRUCell", dict()),
]
IDS = [case[0] for case in CASES]
LAYERS = [case for case in CASES if not case[1].endswith("Cell")]
LAYER_IDS = [case[0] for case in LAYERS]


def pair(name: str, kwargs: dict, seed: int = 0):
    """(torch.nn module, fastrnn module) with identical weights, in eval mode."""
    torch.manual_seed(seed)
    ref = getattr(nn, name)(INPUT, HIDDEN, **kwargs).eval()
    ours = getattr(fastrnn, name)(INPUT, HIDDEN, **kwargs).eval()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


class Net(nn.Module):
    """A model holding a recurrent module: Linear -> rnn."""

    def __init__(self, rnn):
        super().__init__()
        self.proj = nn.Linear(INPUT, INPUT)
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(self.proj(x))


def nets(name: str, kwargs: dict):
    """pair(), each inside a Net, the two Linears equal too."""
    ref, ours = pair(name, kwargs)
    torch.manual_seed(1)
    ref_net = Net(ref).eval()
    ours_net = Net(ours).eval()
    ours_net.proj.load_state_dict(ref_net.proj.state_dict())
    return ref_net, ours_net


def example(name: str, steps: int = 5, batch: int = 2, **like) -> torch.Tensor:
    """A random input: (T, B, I) for the layers, (B, I) for the cells."""
    shape = (batch, INPUT) if name.endswith("Cell") else (steps, batch, INPUT)
    return torch.randn(shape, **like)


def flat(out) -> list[torch.Tensor]:
    """Every tensor of a module's output, in order: y, h_n, c_n (or h, c)."""
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for part in out for t in flat(part)]


def assert_same(got, want, **tol) -> None:
    got, want = flat(got), flat(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **tol)


def assert_as_torch(run, ref, ours, check=assert_same, **tol):
    """run(ours) gives run(ref)'s result (compared by check), or raises the exception
    class run(ref) raises. Returns (run(ours), run(ref)), or None where torch.nn raised."""
    try:
        want = run(ref)
    except Exception as err:  # noqa: BLE001  (whatever torch.nn raises, fastrnn must raise)
        with pytest.raises(type(err)):
            run(ours)
        return None
    got = run(ours)
    check(got, want, **tol)
    return got, want
