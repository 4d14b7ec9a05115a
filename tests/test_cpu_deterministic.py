"""torch.use_deterministic_algorithms(True) on the CPU backend: no choice by
timing. By default fastrnn times candidate kernels (blocks or BLAS, forward
plans, the inference race with ATen's LSTM, the training race with oneDNN's)
and keeps the faster; where two time within noise, two runs of one seeded
script can take different ones and differ in the last bits. In deterministic
mode every choice is fixed (fastrnn's own kernels, as FASTRNN_CPU_PRODUCTS=own
pins them), so a seeded run gives the same bits every time."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fastrnn
from fastrnn.backends import onednn_training
from models import flat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def own_lstm_training():
    """Overrides conftest's pin: these tests check what pins the route."""
    yield


@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


def test_no_timed_choice_in_deterministic_mode():
    """In a fresh process with FASTRNN_CPU_VERBOSE=1, which prints every
    measurement and race decision, deterministic training and inference of
    each class, float32 and bfloat16, layers and cells, print none: nothing
    was timed. Unset, the same script prints
    them (the check can fail)."""
    script = textwrap.dedent("""
        import sys, torch, fastrnn
        torch.use_deterministic_algorithms(sys.argv[1] == "1")
        torch.manual_seed(0)
        for dtype in (torch.float32, torch.bfloat16):
            for cls in (fastrnn.LSTM, fastrnn.GRU, fastrnn.RNN):
                m = cls(24, 40, num_layers=2, bidirectional=True).to(dtype)
                x = torch.randn(9, 6, 24, dtype=dtype)
                for _ in range(12):  # beyond a training race's calls
                    m(x)[0].float().sum().backward()
                with torch.no_grad():
                    for _ in range(12):
                        m(x)
            for cls in (fastrnn.LSTMCell, fastrnn.GRUCell, fastrnn.RNNCell):
                cell = cls(24, 40).to(dtype)
                x = torch.randn(6, 24, dtype=dtype)
                out = cell(x)
                (out[0] if isinstance(out, tuple) else out).float().sum().backward()
        """)
    env = {**os.environ, "FASTRNN_CPU_VERBOSE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("FASTRNN_CPU_PRODUCTS", None)
    env.pop("FASTRNN_BACKEND", None)
    runs = {}
    for flag in ("1", "0"):
        done = subprocess.run([sys.executable, "-c", script, flag], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        runs[flag] = [line for line in done.stderr.splitlines() if line.startswith("fastrnn:")]
    assert runs["1"] == []
    assert runs["0"], "unpinned, the same calls should have measured something"


@pytest.mark.parametrize("cls", [fastrnn.LSTM, fastrnn.GRU, fastrnn.RNN, fastrnn.LSTMCell,
                                 fastrnn.GRUCell, fastrnn.RNNCell], ids=lambda c: c.__name__)
@pytest.mark.parametrize("threads", [1, 2])
def test_deterministic_equals_own_pin(cls, threads, deterministic, monkeypatch):
    """Deterministic mode runs what FASTRNN_CPU_PRODUCTS=own runs: outputs,
    final states and every gradient equal bitwise, on 1 and 2 threads."""
    torch.manual_seed(1)
    layer = cls in (fastrnn.LSTM, fastrnn.GRU, fastrnn.RNN)
    m = cls(33, 48, num_layers=2) if layer else cls(33, 48)
    x = torch.randn(21, 7, 33) if layer else torch.randn(7, 33)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        def run():
            m.zero_grad()
            xi = x.clone().requires_grad_()
            outs = flat(m(xi))
            sum(o.square().sum() for o in outs).backward()
            return [*outs, xi.grad, *(p.grad for p in m.parameters())]

        monkeypatch.delenv("FASTRNN_CPU_PRODUCTS", raising=False)
        got = run()
        torch.use_deterministic_algorithms(False)
        monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", "own")
        want = run()
    finally:
        torch.set_num_threads(before)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_lstm_training_race_off_in_deterministic_mode(deterministic, monkeypatch):
    """The LSTM training race (onednn_training) takes the loop and starts no
    race; an explicit FASTRNN_CPU_PRODUCTS still wins (blas: oneDNN, also a
    fixed choice)."""
    monkeypatch.delenv("FASTRNN_CPU_PRODUCTS", raising=False)
    assert onednn_training._pinned() == onednn_training.OWN
    monkeypatch.setenv("FASTRNN_CPU_PRODUCTS", "blas")
    assert onednn_training._pinned() == onednn_training.ONEDNN
    torch.use_deterministic_algorithms(False)
    monkeypatch.delenv("FASTRNN_CPU_PRODUCTS")
    assert onednn_training._pinned() is None
