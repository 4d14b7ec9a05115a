"""convert() and patch() on a real model, trained for a few steps on real text: same losses."""
import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import fastrnn
from fastrnn.modules import rnn as fr_rnn

TEXT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext-2" / "valid.txt"


def corpus(n_chars=4000):
    """Character ids from WikiText-2 (shared/ beside the checkout), or a fixed passage without it."""
    if TEXT.exists():
        text = TEXT.read_text(encoding="utf-8")[:n_chars]
    else:
        text = "The quick brown fox jumps over the lazy dog while the recurrent network learns. " * 50
    vocab = sorted(set(text))
    return torch.tensor([vocab.index(ch) for ch in text]), len(vocab)


class Tagger(nn.Module):
    """embedding -> 2-layer bidirectional LSTM (with dropout) -> linear."""

    def __init__(self, vocab):
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.rnn = nn.LSTM(16, 24, num_layers=2, bidirectional=True, dropout=0.2, batch_first=True)
        self.head = nn.Linear(48, vocab)

    def forward(self, ids):
        return self.head(self.rnn(self.embed(ids))[0])


def train(model, ids, vocab, steps=4, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    seq = 33
    batches = ids[: (len(ids) // seq) * seq].view(-1, seq)
    losses = []
    for step in range(steps):
        batch = batches[step * 8 : (step + 1) * 8]
        logits = model(batch[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_convert_trains_like_torch(dtype, use):
    ids, vocab = corpus()
    torch.manual_seed(0)
    model = Tagger(vocab).to(dtype)
    twin = copy.deepcopy(model)
    params_before = [id(p) for p in twin.parameters()]
    lstm = twin.rnn
    assert fastrnn.convert(twin) is twin
    assert type(twin.rnn) is fastrnn.LSTM and twin.rnn is lstm
    assert [id(p) for p in twin.parameters()] == params_before, "convert must keep the Parameter objects"
    want = train(model, ids, vocab)
    got = train(twin, ids, vocab)
    rtol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=rtol, atol=0)
    assert twin.rnn.last_backend


def test_convert_keeps_optimizer_and_hooks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.GRU(4, 6, batch_first=True))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(type(m).__name__))
    fastrnn.convert(model)
    before = model[0].weight_hh_l0.detach().clone()
    model(torch.randn(2, 3, 4))[0].pow(2).sum().backward()
    opt.step()
    assert seen == ["GRU"] and isinstance(model[0], fastrnn.GRU)
    assert not torch.equal(before, model[0].weight_hh_l0), "optimizer made before convert() did not update"


def test_patch_swaps_and_undoes():
    original = nn.LSTM
    with fastrnn.patch():
        assert nn.LSTM is fastrnn.LSTM and torch.nn.modules.rnn.GRU is fastrnn.GRU
        made = nn.LSTM(3, 4)
        assert type(made) is fastrnn.LSTM
        # Our classes keep their real bases: no recursion through the patched name.
        assert fr_rnn.LSTM.__bases__[-1] is original
        made(torch.randn(2, 1, 3))
    assert nn.LSTM is original
    undo = fastrnn.patch()
    assert nn.RNNCell is fastrnn.RNNCell
    undo.undo()
    assert nn.RNNCell is not fastrnn.RNNCell
