"""A model using fastrnn compiles with torch.compile(fullgraph=True): no graph break, same numbers."""
import pytest
import torch
from torch import nn

import fastrnn


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
    if use == "reference":
        pytest.skip(reason="the reference backend is a Python loop over batch_sizes by design; "
                    "it is the oracle, not a compiled path")
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


def test_plain_torch_lstm_is_left_alone():
    """fastrnn does not turn on Dynamo's allow_rnn for torch.nn's own modules."""
    import torch._dynamo

    torch._dynamo.reset()
    compiled = torch.compile(nn.LSTM(3, 4), backend="eager")
    compiled(torch.randn(2, 1, 3))
    assert torch._dynamo.config.allow_rnn is False
