"""The Python side of tests/gates_probe.cpp: the scalar gates.h (as the CUDA
kernels use it) built without torch and run on given values, and the same
19 outputs from torch autograd (test_cpu_op_contract.py, test_nonfinite.py)."""
import subprocess

import pytest
import torch


def gate_reference(v):
    """The 19 probe outputs (see tests/gates_probe.cpp) from torch autograd, float64."""
    v = [t.clone().requires_grad_() for t in v.t()]
    pi, pf, pg, po, c_prev, dh, dc_next, _ = v
    i, f, g, o = pi.sigmoid(), pf.sigmoid(), pg.tanh(), po.sigmoid()
    c = f * c_prev + i * g
    h = o * c.tanh()
    lstm_grads = torch.autograd.grad((dh * h + dc_next * c).sum(), [pi, pf, pg, po, c_prev])
    x_r, x_z, x_n, h_r, h_z, h_n, h_prev, gdh = v
    r, z = (x_r + h_r).sigmoid(), (x_z + h_z).sigmoid()
    n = (x_n + r * h_n).tanh()
    gh = n + z * (h_prev - n)  # torch.nn's GRU cell
    gru_grads = torch.autograd.grad((gdh * gh).sum(), [x_r, x_z, x_n, h_n, h_prev])
    pre, rdh = v[0], v[1]
    rnn = []
    for act in (torch.tanh, torch.relu):
        out = act(pre)
        rnn += [out, torch.autograd.grad((rdh * out).sum(), pre)[0]]
    cols = [h, c, *lstm_grads, gh, *gru_grads, *rnn, pre.sigmoid(), torch.where(pre <= 0, 0.0, rdh)]
    return torch.stack([t.detach() for t in cols], dim=1)


def run_gate_probe(tmp_path, values):
    """tests/gates_probe.cpp built here and run on `values` (n, 8): its rows,
    double then float for each record. Skips without a C++ compiler."""
    import shutil
    from pathlib import Path

    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip(reason="no C++ compiler on PATH to build the scalar gates.h probe")
    root = Path(__file__).resolve().parents[1]
    probe = tmp_path / "gates_probe"
    subprocess.run([compiler, "-std=c++17", "-O1", f"-I{root / 'csrc' / 'include'}",
                    str(root / "tests" / "gates_probe.cpp"), "-o", str(probe)], check=True)
    stdin = f"{len(values)}\n" + "\n".join(" ".join(repr(x) for x in row.tolist())
                                           for row in values)
    out = subprocess.run([str(probe)], input=stdin, capture_output=True, text=True, check=True)
    return torch.tensor([[float(x) for x in line.split()] for line in out.stdout.splitlines()],
                        dtype=torch.float64)
