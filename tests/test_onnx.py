"""torch.onnx.export (dynamo=False and dynamo=True) of models holding fastrnn modules:
onnxruntime gives torch.nn's outputs, and where torch.nn's export fails, fastrnn's fails alike."""
import contextlib
import io

import pytest
import torch

from models import CASES, IDS, assert_same, example, flat, nets

pytest.importorskip("onnx", reason="ONNX tests need onnx (.ci/install)")
pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript (.ci/install)")
ort = pytest.importorskip("onnxruntime", reason="ONNX tests run the model on onnxruntime (.ci/install)")


def export_and_run(net, xs, path, dynamo):
    """Exports net at xs[0] and runs the ONNX model on every input of xs. The
    TorchScript exporter marks the steps and batch dimensions dynamic; the dynamo
    exporter exports torch.nn's forward, which fixes T (see test_export.py), so it
    runs at the exported shape only."""
    cell = xs[0].dim() == 2
    axes = {"x": {0: "batch"} if cell else {0: "steps", 1: "batch"}}
    with contextlib.redirect_stdout(io.StringIO()):  # the dynamo exporter reports its steps
        torch.onnx.export(net, (xs[0],), path, dynamo=dynamo, input_names=["x"],
                          **({} if dynamo else dict(dynamic_axes=axes)))
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return [[torch.from_numpy(o) for o in session.run(None, {"x": x.numpy()})] for x in xs]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_onnx_export_runs_on_onnxruntime_as_torch(case, dynamo, tmp_path):
    _, name, kwargs = case
    ref_net, ours_net = nets(name, kwargs)
    torch.manual_seed(3)
    xs = [example(name)] + ([] if dynamo else [example(name, steps=7, batch=3)])
    try:
        got = export_and_run(ours_net, xs, str(tmp_path / "ours.onnx"), dynamo)
    except Exception as err:  # noqa: BLE001
        # torch.nn's own limits (an LSTM with proj_size has no ONNX form that
        # onnxruntime runs): its export must fail with the same class.
        with pytest.raises(type(err)):
            export_and_run(ref_net, xs, str(tmp_path / "ref.onnx"), dynamo)
        return
    for outputs, x in zip(got, xs, strict=True):
        assert_same(outputs, flat(ref_net(x)), rtol=1e-5, atol=1e-6)
