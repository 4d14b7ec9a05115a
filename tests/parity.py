"""Differential testing against torch.nn: the configuration grid and the comparison.

The grid is every recurrent kind crossed with a pairwise covering of the other
factors (every pair of factor values appears in at least one case), which keeps
the suite to about a hundred cases instead of the ~10^4 of a full product.
"""
from __future__ import annotations

import copy
import itertools
import random
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence

import fastrnn

# (input_size, hidden_size, proj_size): odd sizes exercise every vector and
# register-block tail; even ones are what bfloat16 layers need for the CPU
# kernel's bf16 products (operands read in pairs).
SIZES = {"odd": (5, 7, 3), "even": (6, 8, 4)}
LONG = 17

KINDS = ("RNN_TANH", "RNN_RELU", "GRU", "LSTM", "LSTM_PROJ")
FACTORS = {
    "layers": (1, 2, 3),
    "bidirectional": (False, True),
    "batch_first": (False, True),
    "bias": (True, False),
    "form": ("padded", "unbatched", "packed_sorted", "packed_unsorted", "pack_sequence"),
    "hx": (False, True),
    "steps": (1, LONG),
    "batch": (1, 4),
    # float16 only where torch.nn runs it (cuDNN): the GPU kernels' half path.
    "dtype": (torch.float64, torch.float32, torch.bfloat16)
    + ((torch.float16,) if torch.cuda.is_available() else ()),
    "sizes": tuple(SIZES),
}

# (rtol, atol) against torch.nn in the same dtype. bfloat16 and float16 are
# judged against a float64 ground truth instead (see compare()).
TOLERANCE = {torch.float64: (1e-9, 1e-10), torch.float32: (2e-4, 2e-5)}


@dataclass(frozen=True)
class Case:
    kind: str
    layers: int
    bidirectional: bool
    batch_first: bool
    bias: bool
    form: str
    hx: bool
    steps: int
    batch: int
    dtype: torch.dtype
    sizes: str

    def __str__(self) -> str:
        dt = str(self.dtype).replace("torch.", "")
        return (
            f"{self.kind}-L{self.layers}-{'bi' if self.bidirectional else 'uni'}"
            f"-{'bf' if self.batch_first else 'tf'}-{'bias' if self.bias else 'nobias'}-{self.form}"
            f"-{'hx' if self.hx else 'nohx'}-T{self.steps}-B{self.batch}-{dt}-{self.sizes}"
        )

    @property
    def input_size(self) -> int:
        return SIZES[self.sizes][0]

    @property
    def hidden_size(self) -> int:
        return SIZES[self.sizes][1]

    @property
    def out_size(self) -> int:
        return SIZES[self.sizes][2] if self.kind == "LSTM_PROJ" else self.hidden_size

    @property
    def lstm(self) -> bool:
        return self.kind.startswith("LSTM")

    @property
    def packed(self) -> bool:
        return self.form.startswith("pack")


def pairwise_cases(seed: int = 0) -> list[Case]:
    """Greedy pairwise covering per kind, deterministic for a seed."""
    rng = random.Random(seed)
    names = list(FACTORS)
    cases = []
    for kind in KINDS:
        uncovered = {
            (a, va, b, vb)
            for a, b in itertools.combinations(names, 2)
            for va in FACTORS[a]
            for vb in FACTORS[b]
        }
        while uncovered:
            best, best_gain = None, -1
            for _ in range(200):
                pick = {n: rng.choice(FACTORS[n]) for n in names}
                gain = sum(
                    (a, pick[a], b, pick[b]) in uncovered for a, b in itertools.combinations(names, 2)
                )
                if gain > best_gain:
                    best, best_gain = pick, gain
            for a, b in itertools.combinations(names, 2):
                uncovered.discard((a, best[a], b, best[b]))
            cases.append(Case(kind, **best))
    return cases


def make_pair(case: Case, device: str):
    """A torch.nn module and its fastrnn twin with identical weights (float64 master copy)."""
    mode = "LSTM" if case.lstm else ("GRU" if case.kind == "GRU" else "RNN")
    kwargs = dict(
        num_layers=case.layers,
        bias=case.bias,
        batch_first=case.batch_first,
        bidirectional=case.bidirectional,
    )
    if case.kind == "LSTM_PROJ":
        kwargs["proj_size"] = case.out_size
    if mode == "RNN":
        kwargs["nonlinearity"] = "relu" if case.kind == "RNN_RELU" else "tanh"
    ref = getattr(nn, mode)(case.input_size, case.hidden_size, **kwargs).to(device, case.dtype)
    ours = getattr(fastrnn, mode)(case.input_size, case.hidden_size, **kwargs).to(device, case.dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def make_inputs(case: Case, device: str, seed: int):
    """Random input, lengths, hx and output cotangents for one case (never zeros)."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    dirs = 2 if case.bidirectional else 1
    out_size = case.out_size
    batch = 1 if case.form == "unbatched" else case.batch
    shape = (batch, case.steps, case.input_size) if case.batch_first else (case.steps, batch, case.input_size)
    x = rand(*shape)
    if case.form == "unbatched":
        x = x.squeeze(0 if case.batch_first else 1)
    lengths = torch.randint(1, case.steps + 1, (batch,), generator=gen)
    lengths[int(torch.randint(0, batch, (1,), generator=gen))] = case.steps
    if case.form == "packed_sorted" or case.form == "pack_sequence":
        lengths = lengths.sort(descending=True).values
    hx = None
    if case.hx:
        state = (case.layers * dirs,) if case.form == "unbatched" else (case.layers * dirs, batch)
        hx = [rand(*state, out_size)] + ([rand(*state, case.hidden_size)] if case.lstm else [])
    n_rows = int(lengths.sum()) if case.packed else case.steps * batch
    cot = {
        "out": rand(n_rows, dirs * out_size),
        "h": rand(case.layers * dirs, batch, out_size),
        "c": rand(case.layers * dirs, batch, case.hidden_size),
    }
    to = lambda t: t.to(device)  # noqa: E731
    return to(x), lengths, None if hx is None else [to(h) for h in hx], {k: to(v) for k, v in cot.items()}


def run(module, case: Case, x, lengths, hx, cot, dtype):
    """Forward + backward; returns outputs and gradients by name, in float64."""
    x = x.to(dtype).requires_grad_()
    hx = None if hx is None else [h.to(dtype).requires_grad_() for h in hx]
    module.zero_grad(set_to_none=True)
    inp = x
    if case.form == "pack_sequence":
        seqs = [(x[b] if case.batch_first else x[:, b])[: int(lengths[b])] for b in range(x.shape[0 if case.batch_first else 1])]
        inp = pack_sequence(seqs, enforce_sorted=True)
    elif case.packed:
        inp = pack_padded_sequence(
            x, lengths, batch_first=case.batch_first, enforce_sorted=case.form == "packed_sorted"
        )
    state = None if hx is None else (tuple(hx) if case.lstm else hx[0])
    out, hidden = module(inp, state)
    out_data = out.data if case.packed else out
    if case.packed:
        assert torch.equal(out.batch_sizes, inp.batch_sizes)
    h_n, c_n = hidden if case.lstm else (hidden, None)
    results = {"out": out_data, "h_n": h_n}
    if c_n is not None:
        results["c_n"] = c_n
    loss = (out_data.reshape(cot["out"].shape) * cot["out"].to(dtype)).sum()
    loss = loss + (h_n.reshape(cot["h"].shape) * cot["h"].to(dtype)).sum()
    if c_n is not None:
        loss = loss + (c_n.reshape(cot["c"].shape) * cot["c"].to(dtype)).sum()
    loss.backward()
    results["grad_x"] = x.grad
    for i, h in enumerate(hx or []):
        results[f"grad_hx{i}"] = h.grad
    for name, p in module.named_parameters():
        results[f"grad_{name}"] = p.grad
    return {k: v.detach().double() for k, v in results.items()}


def assert_half_close(got, want, truth, name: str) -> None:
    """Reduced precision: ours may be at most 2x as far from the float64 truth as
    torch.nn's own result, plus 2% of the tensor's scale."""
    err_ours = (got - truth).abs().max().item()
    err_torch = (want - truth).abs().max().item()
    scale = truth.abs().max().item()
    assert err_ours <= 2 * err_torch + 2e-2 * max(1.0, scale), (
        f"{name}: error {err_ours:.3g} vs torch's {err_torch:.3g} (scale {scale:.3g})"
    )


def compare(case: Case, ref, ours, device: str, seed: int) -> None:
    """Asserts that `ours` matches torch.nn on outputs, states and every gradient."""
    x, lengths, hx, cot = make_inputs(case, device, seed)
    got = run(ours, case, x, lengths, hx, cot, case.dtype)
    if case.dtype in (torch.bfloat16, torch.float16):
        # torch's own half result is off from the truth too: require ours to be no
        # further from a float64 ground truth (same rounded weights) than 2x torch's
        # error, plus a small floor.
        want = run(ref, case, x, lengths, hx, cot, case.dtype)
        rounded = lambda t: t.to(case.dtype)  # noqa: E731  the inputs both half runs saw
        truth_hx = None if hx is None else [rounded(h) for h in hx]
        truth = run(copy.deepcopy(ref).double(), case, rounded(x), lengths, truth_hx, cot, torch.float64)
        for name in truth:
            assert_half_close(got[name], want[name], truth[name], name)
        return
    want = run(ref, case, x, lengths, hx, cot, case.dtype)
    rtol, atol = TOLERANCE[case.dtype]
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")
