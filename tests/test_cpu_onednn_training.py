"""An LSTM layer's training calls on the CPU may run on torch's oneDNN LSTM
(aten::mkldnn_rnn_layer) where that was measured faster
(fastrnn/backends/onednn_training.py): torch.nn's numbers bit for bit, the
choice learnt from a shape's calls, and only for eager training calls that
oneDNN serves as torch.nn would."""
import pytest
import torch

import fastrnn
from cpu_op_cases import TOLERANCE


@pytest.fixture(autouse=True)
def own_lstm_training():
    """Overrides conftest's: these tests exercise the race and the oneDNN route."""
    yield


def ran_onednn(fn):
    """Whether fn() ran oneDNN's LSTM layer (forward or backward)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return any(e.key.startswith("aten::mkldnn_rnn_layer") for e in prof.key_averages())


def onednn_bf16():
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def pair(dtype, bidirectional=False, bias=True, proj_size=0, input_size=11, hidden=20):
    torch.manual_seed(0)
    kw = dict(num_layers=2, bias=bias, bidirectional=bidirectional, batch_first=True,
              proj_size=proj_size)
    ref = torch.nn.LSTM(input_size, hidden, **kw).to(dtype)
    ours = fastrnn.LSTM(input_size, hidden, **kw).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def train_step(model, x, hx):
    """Outputs, final states and the gradients of x, hx and every parameter
    for a loss that weighs each result differently."""
    x = x.detach().requires_grad_()
    hx = tuple(h.detach().requires_grad_() for h in hx)
    y, (h, c) = model(x, hx)
    loss = (y.float() * torch.linspace(-1, 1, y.shape[-1])).sum() + h.float().square().sum() \
        + c.float().pow(3).sum()
    grads = torch.autograd.grad(loss, [x, *hx, *model.parameters()])
    return [y, h, c, *grads]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_lstm_training_on_onednn(dtype, bidirectional, bias, monkeypatch):
    """Pinned to oneDNN (FASTRNN_CPU_PRODUCTS=blas), a training call's
    outputs, final states and every gradient equal torch.nn's bitwise (the
    same oneDNN kernels), reverse direction included; pinned to the loop
    (own), oneDNN never runs and the results match within the dtype's
    tolerance. A bfloat16 LSTM where oneDNN has no bf16 kernel stays on the
    loop either way."""
    onednn = dtype == torch.float32 or onednn_bf16()
    ref, ours = pair(dtype, bidirectional, bias)
    dirs = 2 if bidirectional else 1
    x = torch.randn(5, 9, 11, dtype=dtype)
    hx = (torch.randn(2 * dirs, 5, 20, dtype=dtype), torch.randn(2 * dirs, 5, 20, dtype=dtype))
    want = train_step(ref, x, hx)
    for pin, exact in (("blas", onednn), ("own", False)):
        monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", pin)
        got = []
        assert ran_onednn(lambda: got.extend(train_step(ours, x, hx))) == exact
        for g, w in zip(got, want):
            if exact:
                assert torch.equal(g, w)
            else:
                atol, rtol = TOLERANCE[dtype]
                torch.testing.assert_close(g, w, atol=atol * 10, rtol=rtol)


def test_training_route_learnt_from_calls(monkeypatch, capfd):
    """Unpinned, the first training calls of a new shape alternate between
    the loop and oneDNN (a warm-up each, then timed calls, forward and
    backward, until each has three lasting 2 ms in all), every later call
    runs the one that was faster, and FASTRNN_CPU_VERBOSE reports the
    decision; either way the results match torch.nn. FASTRNN_CPU_PRODUCTS
    still pins the route afterwards."""
    monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", "auto")
    monkeypatch.setenv("FASTRNN_CPU_VERBOSE", "1")
    ref, ours = pair(torch.float32, input_size=13, hidden=17)  # a shape no other test trains
    x = torch.randn(3, 6, 13)
    hx = (torch.randn(2, 3, 17), torch.randn(2, 3, 17))
    want = train_step(ref, x, hx)
    on_onednn = []
    atol, rtol = TOLERANCE[torch.float32]
    for _ in range(2 + 2 * 64 + 8):
        got = []
        on_onednn.append(ran_onednn(lambda: got.extend(train_step(ours, x, hx))))
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=atol * 10, rtol=rtol)
    settled = on_onednn[-1]
    racing = next(i for i in range(len(on_onednn))
                  if on_onednn[i:] == [settled] * (len(on_onednn) - i))
    assert racing >= 7  # 2 warm-ups and at least 3 timed calls each (the last may match)
    assert on_onednn[:racing] == [i % 2 == 1 for i in range(racing)]
    # Both layers (input sizes 13 and 17) raced and were reported.
    assert capfd.readouterr().err.count("LSTM layer training (race of calls)") == 2
    # The pin still decides after the race, whichever route won.
    for pin, onednn in (("blas", True), ("own", False)):
        monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", pin)
        assert ran_onednn(lambda: train_step(ours, x, hx)) == onednn


def test_training_race_without_backward(monkeypatch):
    """Forward calls that record autograd but never run a backward still end
    the race (on their forward times, after 64 timed calls each)."""
    monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", "auto")
    ref, ours = pair(torch.float32, input_size=12, hidden=19)
    x = torch.randn(3, 6, 12, requires_grad=True)
    routes = []
    for _ in range(2 + 2 * 64 + 4):
        routes.append(ran_onednn(lambda: ours(x)))
    assert routes[:8] == [i % 2 == 1 for i in range(8)]
    assert len(set(routes[-4:])) == 1


@pytest.mark.parametrize("case", ["float64", "projection", "packed", "one step", "autocast",
                                  "torch.func", "compile", "pinned own"])
def test_onednn_training_only_where_torch_nn_uses_it(case, monkeypatch):
    """oneDNN never trains a call that torch.nn would not run on it, or whose
    graph or dtypes must not depend on a race, even pinned (blas): float64, a
    projection, batch sizes that shrink, a single step, CPU autocast, torch.func
    transforms, torch.compile; nor anything pinned own. (Inference calls are
    layer_fwd's to route: tests/test_cpu_aten_lstm.py.)"""
    monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", "own" if case == "pinned own" else "blas")
    dtype = torch.float64 if case == "float64" else torch.float32
    _, ours = pair(dtype, proj_size=3 if case == "projection" else 0)
    x = torch.randn(5, 1 if case == "one step" else 9, 11, dtype=dtype, requires_grad=True)

    def run():
        if case == "packed":
            packed = torch.nn.utils.rnn.pack_padded_sequence(x, [9, 7, 7, 4, 2], batch_first=True)
            ours(packed)[0].data.sum().backward()
        elif case == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = ours(x)[0]
            y.float().sum().backward()
        elif case == "torch.func":
            params = dict(ours.named_parameters())
            torch.func.grad(lambda p: torch.func.functional_call(ours, p, (x,))[0].sum())(params)
        elif case == "compile":
            torch.compile(ours, fullgraph=True, backend="aot_eager")(x)[0].sum().backward()
        else:
            ours(x)[0].sum().backward()

    assert not ran_onednn(run)
