"""Every bad input torch.nn rejects raises the same exception class here, and nothing is mutated."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence

import fastrnn

BAD_CONSTRUCTION = [
    ("LSTM", (4, 5), dict(proj_size=5)),
    ("LSTM", (4, 5), dict(proj_size=-1)),
    ("GRU", (4, 5), dict(proj_size=2)),
    ("RNN", (4, 5), dict(proj_size=2)),
    ("LSTM", (4, 5), dict(dropout=2.0)),
    ("LSTM", (4, 5), dict(dropout=-0.1)),
    ("GRU", (4, 5), dict(dropout=True)),
    ("LSTM", (4, 0), dict()),
    ("LSTM", (0, 5), dict()),
    ("LSTM", (4, 5.0), dict()),
    ("GRU", (4, 5, 0), dict()),
    ("RNN", (4, 5), dict(nonlinearity="gelu")),
    ("RNN", (4, 5), dict(bias="yes")),
]


@pytest.mark.parametrize("name,args,kwargs", BAD_CONSTRUCTION)
def test_bad_construction(name, args, kwargs):
    with pytest.raises(Exception) as theirs:
        getattr(nn, name)(*args, **kwargs)
    with pytest.raises(theirs.type):
        getattr(fastrnn, name)(*args, **kwargs)


def _bad_calls():
    x = torch.randn(3, 2, 4)
    packed = pack_sequence([torch.randn(3, 4), torch.randn(2, 4)])
    z = torch.zeros
    return [
        ("LSTM", dict(num_layers=2), (torch.randn(3, 2, 2, 4),)),  # rank 4
        ("LSTM", dict(num_layers=2), (torch.randn(4),)),  # rank 1
        ("GRU", {}, (torch.randn(3, 2, 6),)),  # feature size
        ("GRU", {}, (x.double(),)),  # input dtype vs weights
        ("GRU", {}, (x.long(),)),  # integer input
        ("GRU", {}, (x, z(1, 3, 5))),  # hx batch
        ("GRU", {}, (x, z(2, 2, 5))),  # hx layers
        ("GRU", {}, (x, z(1, 2, 6))),  # hx size
        ("GRU", {}, (x, z(2, 5))),  # hx rank for batched input
        ("GRU", {}, (torch.randn(3, 4), z(1, 1, 5))),  # hx rank for unbatched input
        ("GRU", {}, (x, z(1, 2, 5, dtype=torch.float64))),  # hx dtype
        ("GRU", {}, (torch.randn(0, 2, 4),)),  # empty sequence
        ("GRU", {}, (packed, z(1, 3, 5))),  # packed hx batch
        ("GRU", {}, (packed, (z(1, 2, 5),))),  # packed input, hx not a tensor
        ("RNN", {}, ([1, 2],)),  # not a tensor
        ("LSTM", dict(num_layers=2), (x, z(2, 2, 5))),  # hx not a tuple
        ("LSTM", dict(num_layers=2), (x, (z(2, 2, 5),) * 3)),  # three states
        ("LSTM", dict(num_layers=2), (x, (z(2, 2, 5), z(2, 2, 6)))),  # c size
        ("LSTM", dict(num_layers=2, proj_size=3), (x, (z(2, 2, 5), z(2, 2, 5)))),  # h must be proj sized
        ("LSTMCell", {}, (torch.randn(2, 3),)),  # feature size
        ("LSTMCell", {}, (torch.randn(2, 4), (z(3, 5), z(3, 5)))),  # batch
        ("LSTMCell", {}, (torch.randn(2, 2, 4),)),  # rank
        ("GRUCell", {}, (torch.randn(2, 4), z(2, 6))),  # hidden size
        ("GRUCell", {}, (torch.randn(2, 4).double(),)),  # dtype
        ("GRUCell", {}, (torch.randn(2, 4), z(2, 5, dtype=torch.float64))),  # hx dtype
        ("GRUCell", {}, (torch.randn(4), z(2, 5))),  # unbatched input, batched hx
        ("GRUCell", {}, (torch.randn(2, 4), z(2, 2, 5))),  # hx rank
        ("RNNCell", dict(nonlinearity="gelu"), (torch.randn(2, 4),)),  # unknown nonlinearity at call
    ]


@pytest.mark.parametrize("case", range(len(_bad_calls())))
def test_bad_call_same_exception_nothing_mutated(case, use):
    name, kwargs, args = _bad_calls()[case]
    torch.manual_seed(0)
    ref = getattr(nn, name)(4, 5, **kwargs)
    torch.manual_seed(0)
    ours = getattr(fastrnn, name)(4, 5, **kwargs)
    params = [p.detach().clone() for p in ours.parameters()]
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    copies = [t.clone() for t in tensors]
    with pytest.raises(Exception) as theirs:
        ref(*args)
    with pytest.raises(theirs.type) as mine:
        ours(*args)
    assert str(mine.value), "error without a message"
    for p, saved in zip(ours.parameters(), params):
        assert torch.equal(p, saved)
    for t, saved in zip(tensors, copies):
        assert torch.equal(t, saved)


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown fastrnn backend"):
        with fastrnn.use_backend("nope"):
            pass
