"""An inference LSTM on the CPU may run on ATen's own LSTM (oneDNN) instead of
fastrnn's loop where that was measured faster (race_calls): the same numbers,
the choice learnt from a shape's calls, and only for plain inference."""
import pytest
import torch

import fastrnn
from cpu_op_cases import PACKED, PADDED, TOLERANCE, make_case

def ran_aten_lstm(fn):
    """Whether fn() ran ATen's LSTM (at::lstm) inside fastrnn::layer_fwd."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    names = {e.key for e in prof.key_averages()}
    assert "fastrnn::layer_fwd" in names or "fastrnn::bilayer_fwd" in names
    return "aten::lstm" in names


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_lstm_inference_on_aten_lstm(dtype, bidirectional, bias, monkeypatch):
    """An inference LSTM runs on ATen's LSTM where that measured faster
    (prefer_aten_lstm; pinned here: blas always, own never): pinned to it,
    outputs and final states equal torch.nn's bitwise (the same oneDNN
    kernel), reverse direction included; pinned off, the loop runs and
    matches within the dtype's tolerance. A bfloat16 LSTM where oneDNN has no bf16 kernel (no AVX-512)
    never runs ATen's LSTM, pinned or not: ATen's per-step bf16 matmul is
    20-100x slower than the loop there."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(11, 20, num_layers=2, bias=bias, bidirectional=bidirectional,
                        batch_first=True).to(dtype)
    ours = fastrnn.LSTM(11, 20, num_layers=2, bias=bias, bidirectional=bidirectional,
                        batch_first=True).to(dtype)
    ours.load_state_dict(ref.state_dict())
    dirs = 2 if bidirectional else 1
    x = torch.randn(5, 9, 11, dtype=dtype)
    hx = (torch.randn(2 * dirs, 5, 20, dtype=dtype), torch.randn(2 * dirs, 5, 20, dtype=dtype))
    with torch.no_grad():
        y_ref, (h_ref, c_ref) = ref(x, hx)
        onednn = dtype == torch.float32 or torch.ops.mkldnn._is_mkldnn_bf16_supported()
        pins = [("blas", onednn), ("own", False)] + ([] if onednn else [("auto", False)])
        for pin, exact in pins:
            monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", pin)
            got = []
            assert ran_aten_lstm(lambda: got.extend(ours(x, hx))) == exact
            y, (h, c) = got
            for g, w in ((y, y_ref), (h, h_ref), (c, c_ref)):
                if exact:
                    assert torch.equal(g, w)
                else:
                    atol, rtol = TOLERANCE[dtype]
                    torch.testing.assert_close(g, w, atol=atol, rtol=rtol)


def test_aten_lstm_learnt_from_calls(monkeypatch):
    """Unpinned, the first inference calls of a new shape alternate between
    the loop and ATen's LSTM (race_calls: a warm-up each, then timed calls
    until each has three lasting 2 ms in all, 64 at most), and every later
    call runs the one that was faster; either way the outputs match
    torch.nn."""
    monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", "auto")
    torch.manual_seed(0)
    ref = torch.nn.LSTM(13, 17)  # a shape no other test runs
    ours = fastrnn.LSTM(13, 17)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, 3, 13)
    with torch.no_grad():
        want = ref(x)[0]
        on_aten = []
        for _ in range(2 + 2 * 64 + 8):
            got = []
            on_aten.append(ran_aten_lstm(lambda: got.append(ours(x)[0])))
            atol, rtol = TOLERANCE[torch.float32]
            torch.testing.assert_close(got[0], want, atol=atol, rtol=rtol)
    settled = on_aten[-1]
    racing = next(i for i in range(len(on_aten)) if on_aten[i:] == [settled] * (len(on_aten) - i))
    assert racing >= 7  # 2 warm-ups and at least 3 timed calls each (the last may match)
    assert on_aten[:racing] == [i % 2 == 1 for i in range(racing)]


@pytest.mark.parametrize("case", ["training", "float64", "projection", "packed"])
def test_aten_lstm_only_for_plain_inference(case, monkeypatch):
    """ATen's LSTM never runs a call it cannot serve as the loop does, even
    pinned: one that saves a workspace for the backward, float64, a
    projection, batch sizes that shrink."""
    monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", "blas")
    proj = 3 if case == "projection" else 0
    sizes = PACKED if case == "packed" else PADDED
    dtype = torch.float64 if case == "float64" else torch.float32
    spec, x, bs, h0, c0, w = make_case("LSTM", proj, sizes=sizes, dtype=dtype)
    args = ["LSTM", x.to(dtype), bs, h0.to(dtype), c0.to(dtype),
            *(None if t is None else t.to(dtype) for t in w), False, case == "training"]
    assert not ran_aten_lstm(lambda: torch.ops.fastrnn.layer_fwd(*args))
    args[-1] = False
    assert ran_aten_lstm(lambda: torch.ops.fastrnn.layer_fwd(*args)) == (case == "training")
