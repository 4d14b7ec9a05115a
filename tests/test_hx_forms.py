"""Every wrong form of hx, for every class: torch.nn's exception class, or torch.nn's result
where torch.nn accepts the form (a list in place of a tuple, for instance)."""
import pytest
import torch

from torch.nn.utils.rnn import pack_padded_sequence

from models import CASES, assert_as_torch, example, pair


def forms(name: str, kwargs: dict, layout: str):
    """(label, input, hx) for every form of hx, right and wrong, for this class and
    input layout ("batched", "unbatched", or "packed" for the layers)."""
    cell = name.endswith("Cell")
    lstm = name.startswith("LSTM")
    batched = layout != "unbatched"
    x = example(name, batch=2)
    if not batched:
        x = x[0]
    elif layout == "packed":
        x = pack_padded_sequence(x, torch.tensor([3, 5]), enforce_sorted=False)
    ref, _ = pair(name, kwargs)
    # The right state: shapes from torch.nn's own zero state.
    if cell:
        h = torch.randn(2, ref.hidden_size)
        c = torch.randn(2, ref.hidden_size)
    else:
        dirs = 2 if ref.bidirectional else 1
        h = torch.randn(ref.num_layers * dirs, 2, ref.proj_size or ref.hidden_size)
        c = torch.randn(ref.num_layers * dirs, 2, ref.hidden_size)
    if not batched:
        h, c = (h[0], c[0]) if cell else (h[:, 0], c[:, 0])
    right = (h, c) if lstm else h
    cases = {
        "right": right,
        "tensor": h,
        "tuple1": (h,),
        "tuple2": (h, h),
        "tuple3": (h, c, c),
        "list": [h, c] if lstm else [h],
        "tuple_rank_up": (h.unsqueeze(0), c.unsqueeze(0)),
        "tuple_rank_down": (h[0], c[0]),
        "tuple_mixed_rank": (h, c[0]),
        "rank_up": h.unsqueeze(0),
        "rank_down": h[0],
        "tuple_with_none": (h, None),
        "int": 3,
        "string": "h",
    }
    return [(label, x, hx) for label, hx in cases.items()]


CALLS = [
    pytest.param(case, layout, label, id=f"{case[0]}-{layout}-{label}")
    for case in CASES
    for layout in ("batched", "unbatched") + (() if case[1].endswith("Cell") else ("packed",))
    for label, _, _ in forms(case[1], case[2], layout)
]


@pytest.mark.parametrize("case,layout,label", CALLS)
def test_hx_form_as_torch(case, layout, label):
    _, name, kwargs = case
    ref, ours = pair(name, kwargs)
    (x, hx), = [(x, hx) for lab, x, hx in forms(name, kwargs, layout) if lab == label]
    assert_as_torch(lambda module: module(x, hx), ref, ours)
