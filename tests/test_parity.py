"""Every module configuration of the grid, against torch.nn, on every backend."""
import copy
import zlib

import pytest
import torch

import fastrnn
from fastrnn import backends

from parity import FACTORS, Case, assert_half_close, compare, make_pair, pairwise_cases

CASES = pairwise_cases()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_module_matches_torch(case: Case, use, device):
    # A stable per-case seed (str hashes are randomised per process), used for the
    # weights and the inputs alike, so a failure reproduces whatever ran before.
    seed = zlib.crc32(str(case).encode())
    torch.manual_seed(seed)
    ref, ours = make_pair(case, device)
    compare(case, ref, ours, device, seed=seed)
    assert ours.last_backend, "forward did not record the backend it ran on"
    # The requested backend ran, unless it declined this dtype (then the fallback did).
    probe = torch.empty(1, 1, dtype=case.dtype, device=device)
    spec = backends.LayerSpec("LSTM" if case.lstm else case.kind, 1, 1)
    if backends.why_not(use, spec, probe) is None:
        assert ours.last_backend == use


CELLS = [
    (kind, bias, batched, hx, dtype)
    for kind in ("RNN_TANH", "RNN_RELU", "GRU", "LSTM")
    for bias in (True, False)
    for batched in (True, False)
    for hx in (True, False)
    for dtype in FACTORS["dtype"]
]


@pytest.mark.parametrize("kind,bias,batched,hx,dtype", CELLS)
def test_cell_matches_torch(kind, bias, batched, hx, dtype, use, device):
    name = {"RNN_TANH": "RNNCell", "RNN_RELU": "RNNCell", "GRU": "GRUCell", "LSTM": "LSTMCell"}[kind]
    kwargs = {"nonlinearity": "relu"} if kind == "RNN_RELU" else {}
    torch.manual_seed(zlib.crc32(f"{kind}{bias}{batched}{hx}{dtype}".encode()))
    ref = getattr(torch.nn, name)(5, 7, bias=bias, **kwargs).to(device, dtype)
    ours = getattr(fastrnn, name)(5, 7, bias=bias, **kwargs).to(device, dtype)
    ours.load_state_dict(ref.state_dict())
    gen = torch.Generator().manual_seed(len(name) + 7 * bias + 3 * batched + hx)
    shape = (3,) if batched else ()
    x = torch.randn(*shape, 5, generator=gen, dtype=torch.float64).to(device)
    states = [torch.randn(*shape, 7, generator=gen, dtype=torch.float64).to(device) for _ in range(2 if kind == "LSTM" else 1)]
    cots = [torch.randn(*shape, 7, generator=gen, dtype=torch.float64).to(device) for _ in states]

    def go(module, dtype=dtype):
        # Inputs are rounded to the case's dtype first, so a float64 run sees what the half runs saw.
        xi = x.to(case_dtype).to(dtype).requires_grad_()
        si = [s.to(case_dtype).to(dtype).requires_grad_() for s in states]
        module.zero_grad(set_to_none=True)
        arg = None if not hx else (tuple(si) if kind == "LSTM" else si[0])
        out = module(xi, arg)
        outs = list(out) if kind == "LSTM" else [out]
        sum((o * c.to(dtype)).sum() for o, c in zip(outs, cots)).backward()
        grads = [xi.grad] + ([s.grad for s in si] if hx else []) + [p.grad for p in module.parameters()]
        return [t.detach().double() for t in outs + grads]

    case_dtype = dtype
    if dtype in (torch.bfloat16, torch.float16):
        truth = go(copy.deepcopy(ref).double(), torch.float64)
        for i, (got, want, exact) in enumerate(zip(go(ours), go(ref), truth)):
            assert_half_close(got, want, exact, f"result {i}")
    else:
        tol = {torch.float64: (1e-9, 1e-10), torch.float32: (2e-5, 2e-6)}[dtype]
        for got, want in zip(go(ours), go(ref)):
            torch.testing.assert_close(got, want, rtol=tol[0], atol=tol[1])
    assert ours.last_backend
