"""The modules are torch.nn's from a user's point of view: construction, weights, state, copies."""
import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import fastrnn

PAIRS = [
    ("RNN", dict(num_layers=2, nonlinearity="relu", bidirectional=True)),
    ("LSTM", dict(num_layers=2, proj_size=3, bidirectional=True, batch_first=True)),
    ("GRU", dict(num_layers=3, bias=False, dropout=0.3)),
    ("RNNCell", dict(nonlinearity="tanh")),
    ("LSTMCell", dict()),
    ("GRUCell", dict(bias=False)),
]


def build(name, kwargs, seed=0):
    torch.manual_seed(seed)
    ref = getattr(nn, name)(5, 7, **kwargs)
    torch.manual_seed(seed)
    ours = getattr(fastrnn, name)(5, 7, **kwargs)
    return ref, ours


def sample_input(name, ours):
    if name.endswith("Cell"):
        return (torch.randn(3, 5),)
    return (torch.randn(3, 4, 5),)


@pytest.mark.parametrize("name,kwargs", PAIRS)
def test_same_class_identity_and_init(name, kwargs):
    ref, ours = build(name, kwargs)
    assert isinstance(ours, getattr(nn, name))
    assert type(ours).__name__ == name
    assert repr(ours) == repr(ref)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    for (n, a), (_, b) in zip(ref.named_parameters(), ours.named_parameters()):
        assert torch.equal(a, b), f"seeded init differs for {n}"
    if not name.endswith("Cell"):
        assert [[p.shape for p in w] for w in ours.all_weights] == [[p.shape for p in w] for w in ref.all_weights]
        ours.flatten_parameters()


@pytest.mark.parametrize("name,kwargs", PAIRS)
def test_state_dict_both_ways(name, kwargs):
    ref, ours = build(name, kwargs, seed=1)
    _, fresh = build(name, kwargs, seed=2)
    fresh.load_state_dict(ref.state_dict())
    ref2, _ = build(name, kwargs, seed=3)
    ref2.load_state_dict(fresh.state_dict())
    for a, b in zip(ref.state_dict().values(), ref2.state_dict().values()):
        assert torch.equal(a, b)
    ref.eval(), fresh.eval()
    args = sample_input(name, ours)
    torch.testing.assert_close(fresh(*args), ref(*args))


@pytest.mark.parametrize("name,kwargs", PAIRS)
def test_deepcopy_pickle_to(name, kwargs):
    _, ours = build(name, kwargs)
    ours.eval()
    args = sample_input(name, ours)
    want = ours(*args)
    for clone in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert type(clone) is type(ours)
        torch.testing.assert_close(clone(*args), want)
    buf = io.BytesIO()
    torch.save(ours, buf)
    buf.seek(0)
    assert type(torch.load(buf, weights_only=False)) is type(ours)
    assert type(ours).__module__.startswith("fastrnn.modules")
    double = copy.deepcopy(ours).double()
    assert all(p.dtype == torch.float64 for p in double.parameters())
    torch.testing.assert_close(double(*(a.double() for a in args)), want, check_dtype=False, rtol=1e-4, atol=1e-5)
    half = copy.deepcopy(ours).bfloat16()
    out = half(*(a.bfloat16() for a in args))
    first = out[0] if isinstance(out, tuple) else out
    first = first[0] if isinstance(first, tuple) else first
    assert first.dtype == torch.bfloat16


def _first_tensor(out):
    while isinstance(out, tuple):
        out = out[0]
    return out


@pytest.mark.parametrize("name,kwargs", PAIRS)
def test_inplace_update_and_functional_call(name, kwargs):
    _, ours = build(name, kwargs)
    ours.eval()
    args = sample_input(name, ours)
    before = _first_tensor(ours(*args)).clone()
    with torch.no_grad():
        (ours.weight_ih_l0 if hasattr(ours, "weight_ih_l0") else ours.weight_ih).mul_(2)
    after = _first_tensor(ours(*args))
    assert not torch.allclose(before, after), "in-place weight update had no effect"
    params = {n: torch.randn_like(p) for n, p in ours.named_parameters()}
    got = _first_tensor(functional_call(ours, params, args))
    twin = copy.deepcopy(ours)
    twin.load_state_dict(params)
    torch.testing.assert_close(got, _first_tensor(twin(*args)))
    assert not torch.allclose(got, after)


@pytest.mark.parametrize("name,kwargs", PAIRS)
def test_torch_func_grad_matches_torch(name, kwargs):
    """torch.func.grad through functional_call gives torch.nn's gradients (the
    op's C++ autograd kernel cannot run under torch.func transforms; those
    calls take a Python autograd.Function to the same backward op)."""
    ref, ours = build(name, kwargs)
    ref.load_state_dict(ours.state_dict())
    ref.eval(), ours.eval()  # no dropout draws
    args = sample_input(name, ours)

    def loss(module):
        return lambda params: _first_tensor(functional_call(module, params, args)).square().sum()

    got = grad(loss(ours))(dict(ours.named_parameters()))
    want = grad(loss(ref))(dict(ref.named_parameters()))
    assert ours.last_backend == "cpu"
    for key, value in want.items():
        torch.testing.assert_close(got[key], value)


@pytest.mark.parametrize("name,kwargs", PAIRS)
def test_forward_mode_ad_matches_torch(name, kwargs):
    """Forward-mode AD (torch.func.jvp over the parameters and the input;
    torch.autograd.forward_ad's dual tensors) gives torch.nn's tangents: such
    calls run the reference backend, whose ATen ops have forward derivatives
    (the fused ops have none). torch.nn's CPU LSTM runs oneDNN, which has none
    either: its tangents are compared with oneDNN off."""
    ref, ours = build(name, kwargs)
    ref.load_state_dict(ours.state_dict())
    ref.eval(), ours.eval()  # no dropout draws
    (x,) = sample_input(name, ours)
    params = dict(ours.named_parameters())
    tangents = ({k: torch.randn_like(v) for k, v in params.items()}, torch.randn_like(x))

    def output(module):
        return lambda p, inp: _first_tensor(functional_call(module, p, (inp,)))

    with torch.backends.mkldnn.flags(enabled=False):
        want = torch.func.jvp(output(ref), (params, x), tangents)
    got = torch.func.jvp(output(ours), (params, x), tangents)
    assert ours.last_backend == "reference"
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, tangents[1])
        with torch.backends.mkldnn.flags(enabled=False):
            want = fwAD.unpack_dual(_first_tensor(ref(dual))).tangent
        got = fwAD.unpack_dual(_first_tensor(ours(dual))).tangent
    torch.testing.assert_close(got, want)
    ours(x)  # outside forward-mode AD: the fused kernels again
    assert ours.last_backend == "cpu"


def test_transforms_then_eager_and_jacfwd(monkeypatch):
    """A padded shape first seen under a torch.func transform caches no
    functorch-wrapped batch_sizes (fastrnn.stack shares one tensor per shape
    between eager calls): hessian (jacfwd over jacrev), then jacfwd and an
    eager call of the same shape give torch.nn's results."""
    from fastrnn import stack

    monkeypatch.setattr(stack, "_PADDED", {})
    ref, ours = build("GRU", dict(num_layers=2))
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 4, 5)

    def loss(module):
        return lambda inp: module(inp)[0].square().sum()

    with torch.backends.mkldnn.flags(enabled=False):
        want = torch.func.hessian(loss(ref))(x), torch.func.jacfwd(lambda i: ref(i)[0])(x)
    got = torch.func.hessian(loss(ours))(x), torch.func.jacfwd(lambda i: ours(i)[0])(x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    assert not any(torch._C._functorch.is_functorch_wrapped_tensor(t)
                   for t in stack._PADDED.values())
    torch.testing.assert_close(ours(x)[0], ref(x)[0])


def test_per_sample_gradients_with_vmap():
    """vmap(grad(...)) gives per-sample gradients equal to one grad call per
    sample (torch.nn's RNN ops have no batching rule, so torch.nn cannot)."""
    torch.manual_seed(0)
    ours = fastrnn.LSTM(5, 7, bidirectional=True)
    params = {n: p.detach() for n, p in ours.named_parameters()}
    samples = torch.randn(3, 4, 5)  # 3 samples of 4 steps

    def loss(params, sample):
        return functional_call(ours, params, (sample.unsqueeze(1),))[0].square().sum()

    with pytest.warns(UserWarning, match="batching rule"):  # functorch's per-sample loop
        batched = vmap(grad(loss), in_dims=(None, 0))(params, samples)
    for i, sample in enumerate(samples):
        one = grad(loss)(params, sample)
        for key, value in one.items():
            torch.testing.assert_close(batched[key][i], value)


def test_double_backward_raises():
    """Differentiating a gradient through the fused kernels raises (README,
    Limits) instead of torch's default for an op without a derivative, a
    warning and silently missing terms."""
    torch.manual_seed(0)
    ours = fastrnn.LSTM(4, 5)
    y, _ = ours(torch.randn(6, 2, 4))
    (grad,) = torch.autograd.grad(y.square().sum(), ours.weight_hh_l0, create_graph=True)
    with pytest.raises(RuntimeError, match="not implemented"):
        grad.sum().backward()


def test_dropout_same_draws_in_train_and_none_in_eval():
    ref, ours = build("LSTM", dict(num_layers=3, dropout=0.4, bidirectional=True))
    x = torch.randn(6, 2, 5)
    torch.manual_seed(11)
    want = ref(x)[0]
    torch.manual_seed(11)
    got = ours(x)[0]
    torch.testing.assert_close(got, want)
    ref.eval(), ours.eval()
    torch.manual_seed(3)
    a = ours(x)[0]
    torch.manual_seed(4)
    torch.testing.assert_close(ours(x)[0], a)
    torch.testing.assert_close(a, ref(x)[0])


def test_dropout_warning_matches():
    with pytest.warns(UserWarning, match="dropout"):
        fastrnn.GRU(3, 4, num_layers=1, dropout=0.5)


def test_zero_batch():
    ref, ours = build("GRU", dict(num_layers=2))
    x = torch.randn(3, 0, 5)
    assert ours(x)[0].shape == ref(x)[0].shape


@pytest.mark.parametrize("cell", [False, True], ids=["GRU", "GRUCell"])
def test_inference_mode_then_training(cell):
    """Eager calls share one padded batch_sizes tensor per shape (stack.py); the
    one a call under inference_mode made must still be savable for backward."""
    torch.manual_seed(0)
    name, weight, x = ("GRUCell", "weight_hh", torch.randn(2, 4)) if cell else (
        "GRU", "weight_hh_l0", torch.randn(3, 2, 4))
    ref, ours = getattr(nn, name)(4, 5), getattr(fastrnn, name)(4, 5)
    ours.load_state_dict(ref.state_dict())
    with torch.inference_mode():
        ours(x)
    for m in (ref, ours):
        out = m(x)
        (out if cell else out[0]).square().sum().backward()
    torch.testing.assert_close(getattr(ours, weight).grad, getattr(ref, weight).grad)


class _Doubled(nn.Module):
    def forward(self, w):
        return 2 * w


@pytest.mark.parametrize("name,kwargs", PAIRS)
def test_parametrized_weight(name, kwargs):
    """A parametrized weight (torch.nn.utils.parametrize) is computed for the
    call, as in torch.nn, and its gradient reaches the original parameter."""
    ref, ours = build(name, kwargs)
    weight = "weight_hh" if name.endswith("Cell") else "weight_hh_l0"
    for module in (ref, ours):
        module.eval()  # no dropout draws between layers
        torch.nn.utils.parametrize.register_parametrization(module, weight, _Doubled())
    args = sample_input(name, ours)
    want, got = _first_tensor(ref(*args)), _first_tensor(ours(*args))
    torch.testing.assert_close(got, want)
    want.sum().backward()
    got.sum().backward()
    original = lambda m: getattr(m.parametrizations, weight).original  # noqa: E731
    torch.testing.assert_close(original(ours).grad, original(ref).grad)
