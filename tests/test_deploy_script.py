"""torch.jit.script and torch.jit.trace of models holding fastrnn modules: torch.nn's outputs on
other shapes too, and the saved artifacts load and run in a process that cannot import fastrnn."""
import subprocess
import sys
import textwrap

import pytest
import torch

import fastrnn
from models import CASES, IDS, assert_same, example, flat, nets

# Shapes the artifacts are checked on besides the one they were traced with:
# (steps, batch); a cell has no steps.
SHAPES = [(5, 2), (3, 4), (1, 1)]


def inputs(name):
    torch.manual_seed(2)
    return [example(name, steps, batch) for steps, batch in SHAPES]


def artifacts(name, kwargs):
    """{"script": ..., "trace": ...} of the fastrnn model, and the torch.nn model."""
    ref_net, ours_net = nets(name, kwargs)
    params = [id(p) for p in ours_net.parameters()]
    scripted = torch.jit.script(ours_net)
    # torch.jit.script wrote the module it compiled, torch.nn's twin of the
    # fastrnn module (same Parameters), into the model; convert swaps it back.
    assert type(ours_net.rnn) is type(ref_net.rnn)
    fastrnn.convert(ours_net)
    assert isinstance(ours_net.rnn, fastrnn.modules.deploy.Deployable)
    assert [id(p) for p in ours_net.parameters()] == params
    traced = torch.jit.trace(ours_net, inputs(name)[0])  # check_trace=True: traced twice, compared
    return {"script": scripted, "trace": traced}, ref_net


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_script_and_trace_as_torch(case):
    _, name, kwargs = case
    made, ref_net = artifacts(name, kwargs)
    for x in inputs(name):
        want = ref_net(x)
        for kind, artifact in made.items():
            assert_same(artifact(x), want, msg=lambda m, kind=kind: f"{kind}: {m}")
    graph = "".join(str(artifact.inlined_graph) for artifact in made.values())
    # (A traced submodule keeps its Python class's name, __torch__.fastrnn.modules..., as a type name.)
    assert "fastrnn::" not in graph and "aten::" in graph, "the artifact must hold torch.nn's ops"


# Loads every artifact where fastrnn cannot be imported, runs it on the saved
# inputs and compares with torch.nn's saved outputs.
LOADER = textwrap.dedent(
    """
    import sys
    class NoFastrnn:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "fastrnn":
                raise ImportError("fastrnn is not importable here")
    sys.meta_path.insert(0, NoFastrnn())
    import torch
    cases = torch.load(sys.argv[1])
    for case in cases:
        module = torch.jit.load(case["path"])
        for x, want in zip(case["inputs"], case["outputs"]):
            out = module(x)
            got = [out] if isinstance(out, torch.Tensor) else [
                t for part in out for t in ((part,) if isinstance(part, torch.Tensor) else part)]
            assert len(got) == len(want), case["path"]
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w)
    assert not any(m.startswith("fastrnn") for m in sys.modules)
    print("ran", len(cases))
    """
)


def test_saved_artifacts_run_without_fastrnn(tmp_path):
    cases = []
    for cid, name, kwargs in CASES:
        made, ref_net = artifacts(name, kwargs)
        xs = inputs(name)
        outputs = [[t.detach() for t in flat(ref_net(x))] for x in xs]
        for kind, artifact in made.items():
            path = str(tmp_path / f"{cid}-{kind}.pt")
            torch.jit.save(artifact, path)
            cases.append(dict(path=path, inputs=xs, outputs=outputs))
    torch.save(cases, tmp_path / "cases.pt")
    done = subprocess.run(
        [sys.executable, "-c", LOADER, str(tmp_path / "cases.pt")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"ran {len(cases)}" in done.stdout
