"""Shared fixtures: one intra-op thread, and the backends the suite runs against.

Every parity test is parametrized over `backend`: the single backend named by
FASTRNN_BACKEND when set (CI runs one job per backend that way), else every
backend available in this process that can serve the test device. Later
backends inherit the whole suite by registering themselves.
"""
import os

import pytest
import torch

import fastrnn
from fastrnn import backends
from fastrnn.backends.base import LayerSpec

# OpenMP spin-waits on a shared 2-core box make multi-threaded torch erratic;
# correctness does not depend on the thread count.
torch.set_num_threads(1)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Parity on a GPU is judged in true fp32: TF32 would make cuDNN itself drift.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def serving_backends(device: str = DEVICE) -> list[str]:
    named = os.environ.get("FASTRNN_BACKEND")
    if named and named != "auto":
        return [named]
    probe = torch.empty(1, 1, device=device)
    spec = LayerSpec("LSTM", 1, 1)
    return [n for n in backends.available() if backends.why_not(n, spec, probe) is None]


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", serving_backends())


@pytest.fixture
def use(backend):
    """Runs the test body with `backend` selected."""
    with fastrnn.use_backend(backend):
        yield backend


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def own_lstm_training(monkeypatch):
    """The suite checks fastrnn's own kernels: an LSTM's training calls do not
    race torch's oneDNN LSTM here (fastrnn/backends/onednn_training.py), whose
    results are torch.nn's by construction. tests/test_cpu_onednn_training.py
    tests that route and its race, and turns this off."""
    from fastrnn.backends import onednn_training

    monkeypatch.setattr(onednn_training, "_pinned", lambda: onednn_training.OWN)
