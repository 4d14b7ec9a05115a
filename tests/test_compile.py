"""A model using fastrnn compiles with torch.compile(fullgraph=True): no graph break, same numbers."""
import pytest
import torch
from torch import nn

import fastrnn


def skip_reference(backend):
    if backend == "reference":
        pytest.skip(reason="the reference backend is a Python loop over batch_sizes by design; "
                    "it is the oracle, not a compiled path")


class Net(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size * (2 if rnn.bidirectional else 1), 11)

    def forward(self, ids):
        out, _ = self.rnn(self.embed(ids))
        return self.head(out)


@pytest.mark.parametrize(
    "make",
    [
        lambda: fastrnn.LSTM(6, 8, num_layers=2, bidirectional=True, batch_first=True),
        lambda: fastrnn.GRU(6, 8, batch_first=True),
        lambda: fastrnn.RNN(6, 8, nonlinearity="relu", batch_first=True),
    ],
    ids=["lstm", "gru", "rnn"],
)
def test_fullgraph_compile_forward_backward(make, use):
    skip_reference(use)
    torch.manual_seed(0)
    model = Net(make())
    ids = torch.randint(0, 11, (3, 9))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    got = compiled(ids)
    want = model(ids)
    torch.testing.assert_close(got, want)
    got.square().mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    want.square().mean().backward()
    for g, w in zip(grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(g, w)
    assert model.rnn.last_backend == use


class CellLoop(nn.Module):
    """A cell stepped over time in Python, as users write decoders."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, xs):
        state, outs = None, []
        for x in xs:
            state = self.cell(x, state)
            outs.append(state[0] if isinstance(state, tuple) else state)
        return torch.stack(outs)


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_fullgraph_compile_cells(name, use):
    skip_reference(use)
    torch.manual_seed(0)
    model = CellLoop(getattr(fastrnn, name)(4, 6))
    xs = torch.randn(5, 3, 4, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    inputs = [xs, *model.parameters()]
    got = compiled(xs)
    want = model(xs)
    torch.testing.assert_close(got, want)
    got_grads = torch.autograd.grad(got.square().sum(), inputs)
    want_grads = torch.autograd.grad(want.square().sum(), inputs)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w)
    assert model.cell.last_backend == use


def test_plain_torch_lstm_is_left_alone():
    """fastrnn does not turn on Dynamo's allow_rnn for torch.nn's own modules."""
    import torch._dynamo

    torch._dynamo.reset()
    compiled = torch.compile(nn.LSTM(3, 4), backend="eager")
    compiled(torch.randn(2, 1, 3))
    assert torch._dynamo.config.allow_rnn is False
