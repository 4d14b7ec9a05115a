"""Forward and backward under FakeTensorMode and on the meta device, for padded and packed input:
torch.nn's shapes, dtypes and devices, for every class (shape inference, meta initialisation)."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.utils.rnn import pack_padded_sequence

from models import CASES, IDS, LAYER_IDS, LAYERS, assert_as_torch, example, flat, pair


def meta_data(out) -> list[tuple]:
    return [(t.shape, t.dtype, t.device.type) for t in flat(out)]


def run_and_grads(module, x, hx):
    """Outputs and parameter gradients, as (shape, dtype, device) lists."""
    tensors = flat(module(x) if hx is None else module(x, hx))
    sum(t.float().sum() for t in tensors).backward()
    return meta_data(tensors) + meta_data([p.grad for p in module.parameters()])


def flat_packed(out):
    """flat() that takes a PackedSequence as its data."""
    if hasattr(out, "batch_sizes"):
        return [out.data]
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for part in out for t in flat_packed(part)]


def states(ref, x, cell: bool):
    """A random initial state, as torch.nn's zero state would be shaped (None for half the cases)."""
    zeros = ref(x) if cell else ref(x)[1]
    return tuple(torch.randn_like(z) for z in zeros) if isinstance(zeros, tuple) else torch.randn_like(zeros)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fake_tensor_mode_padded(case, with_hx, dtype):
    _, name, kwargs = case
    with FakeTensorMode():
        ref, ours = pair(name, dict(kwargs, dtype=dtype))
        x = example(name, dtype=dtype)
        hx = states(ref, x, name.endswith("Cell")) if with_hx else None
        assert run_and_grads(ours, x, hx) == run_and_grads(ref, x, hx)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_meta_device_padded(case):
    _, name, kwargs = case
    ref, ours = (m.to("meta") for m in pair(name, kwargs))
    x = example(name, device="meta")
    assert meta_data(ours(x)) == meta_data(ref(x))
    assert all(t.device.type == "meta" for t in flat(ours(x)))


def packed(device="cpu"):
    """A PackedSequence of three sequences (lengths 5, 2, 4), unsorted; batch_sizes stays on the CPU."""
    x = example("LSTM", steps=5, batch=3)
    return pack_padded_sequence(x.to(device), torch.tensor([5, 2, 4]), enforce_sorted=False)


@pytest.mark.parametrize("case", LAYERS, ids=LAYER_IDS)
def test_meta_device_packed(case):
    _, name, kwargs = case
    ref, ours = (m.to("meta") for m in pair(name, kwargs))
    sequence = packed("meta")
    got, want = ours(sequence), ref(sequence)
    assert meta_data(flat_packed(got)) == meta_data(flat_packed(want))
    assert torch.equal(got[0].batch_sizes, want[0].batch_sizes)


@pytest.mark.parametrize("case", LAYERS, ids=LAYER_IDS)
def test_fake_tensor_mode_packed_as_torch(case):
    """batch_sizes is data (its first entry is the batch size), which fake tensors do not hold:
    torch.nn cannot run packed input under FakeTensorMode, and fastrnn fails the same way."""
    _, name, kwargs = case
    sequence = packed()
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        ref, ours = pair(name, kwargs)
        fake = type(sequence)(mode.from_tensor(sequence.data), sequence.batch_sizes,
                              sequence.sorted_indices, sequence.unsorted_indices)
        assert_as_torch(lambda module: meta_data(flat_packed(module(fake))), ref, ours)
