"""torch.export of models holding fastrnn modules: static shapes with fastrnn's own ops, through
torch.export.save/load, and (which torch.nn cannot) a dynamic sequence length and batch size."""
import pytest
import torch

from models import CASES, IDS, LAYER_IDS, LAYERS, assert_same, example, nets


def saved_and_loaded(program, tmp_path):
    path = tmp_path / "model.pt2"
    torch.export.save(program, path)
    return torch.export.load(path)


def ops(program) -> str:
    return " ".join(str(node.target) for node in program.graph.nodes if node.op == "call_function")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_static_export_save_load(case, tmp_path):
    _, name, kwargs = case
    ref_net, ours_net = nets(name, kwargs)
    torch.manual_seed(4)
    x = example(name)
    program = saved_and_loaded(torch.export.export(ours_net, (x,)), tmp_path)
    assert "fastrnn." in ops(program), "a static export keeps fastrnn's ops"
    assert_same(program.module()(x), ref_net(x))


# Every layer class time-major, and one batch_first (the layout is a transpose before the stack).
DYNAMIC = [pytest.param(case, False, id=case[0]) for case in LAYERS] + [
    pytest.param(LAYERS[2], True, id=f"{LAYERS[2][0]}-batch_first")
]


@pytest.mark.parametrize("case,batch_first", DYNAMIC)
def test_dynamic_sequence_length_and_batch(case, batch_first, tmp_path):
    _, name, kwargs = case
    ref_net, ours_net = nets(name, dict(kwargs, batch_first=batch_first))
    torch.manual_seed(5)
    time_dim, batch_dim = (1, 0) if batch_first else (0, 1)
    x = example(name, steps=6, batch=3).transpose(0, time_dim).contiguous()
    shapes = ({time_dim: torch.export.Dim("steps", min=2, max=64), batch_dim: torch.export.Dim("batch", max=64)},)
    with pytest.raises(torch._dynamo.exc.UserError, match="specialized"):  # torch.nn's RNNs fix T
        torch.export.export(ref_net, (x,), dynamic_shapes=shapes)
    program = saved_and_loaded(torch.export.export(ours_net, (x,), dynamic_shapes=shapes), tmp_path)
    for steps, batch in ((2, 3), (6, 5), (11, 2)):
        y = example(name, steps=steps, batch=batch).transpose(0, time_dim).contiguous()
        assert_same(program.module()(y), ref_net(y))


@pytest.mark.parametrize("case", LAYERS, ids=LAYER_IDS)
def test_dynamic_sequence_length_unbatched(case):
    _, name, kwargs = case
    ref_net, ours_net = nets(name, kwargs)
    torch.manual_seed(6)
    program = torch.export.export(
        ours_net, (example(name, steps=6)[:, 0],), dynamic_shapes=({0: torch.export.Dim("steps", max=64)},)
    )
    for steps in (2, 9):
        y = example(name, steps=steps)[:, 0]
        assert_same(program.module()(y), ref_net(y))


class _All(torch.nn.Module):
    """Every layer case's net on one input: one AOTInductor compile for all."""

    def __init__(self, nets):
        super().__init__()
        self.nets = torch.nn.ModuleList(nets)

    def forward(self, x):
        return tuple(net(x) for net in self.nets)


def test_aot_inductor_package_dynamic(tmp_path):
    """torch.export, then AOTInductor (aoti_compile_and_package and
    aoti_load_package), the C++ deployment path of an exported program, with
    a dynamic sequence length and batch: every layer case, bidirectional ones
    included, gives torch.nn's outputs at other shapes. (A bidirectional
    layer is exported as one op per direction: AOTInductor's proxy executor
    passed bilayer_fwd's empty Tensor[] arguments as None.)"""
    pairs = [nets(name, kwargs) for _, name, kwargs in LAYERS]
    ours = _All([o for _, o in pairs]).eval()
    torch.manual_seed(7)
    x = example("LSTM", steps=6, batch=3)
    shapes = ({0: torch.export.Dim("steps", min=2, max=64), 1: torch.export.Dim("batch", max=64)},)
    program = torch.export.export(ours, (x,), dynamic_shapes=shapes)
    package = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "m.pt2"))
    runner = torch._inductor.aoti_load_package(package)
    for steps, batch in ((2, 3), (6, 5), (11, 2)):
        y = example("LSTM", steps=steps, batch=batch)
        got = runner(y)
        for (ref, _), out in zip(pairs, got):
            assert_same(out, ref(y))
