"""The PyTorch machinery around a module, on fastrnn's modules as on torch.nn's: revert and
dynamic quantization, DistributedDataParallel, activation checkpointing, module hooks.
(torch.compile: test_compile.py; parametrizations, functional_call: test_module_api.py.)"""
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import fastrnn
from models import CASES, IDS, assert_as_torch, assert_same, example, flat, nets, pair

ROOT = Path(__file__).resolve().parents[1]


def outputs_and_grads(module, x, call=None):
    """Every output of module(x) (or call(module, x)), then the gradients of a
    loss of them with respect to x and every parameter."""
    x = x.detach().requires_grad_()
    module.zero_grad()
    out = flat(call(module, x) if call else module(x))
    loss = sum((t * torch.linspace(-1, 1, t.numel()).view(t.shape)).sum() for t in out)
    loss.backward()  # not autograd.grad: reentrant checkpointing supports only backward()
    return out + [x.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_revert_undoes_convert(case):
    _, name, kwargs = case
    ref_net, ours_net = nets(name, kwargs)
    x = example(name)
    ours_net(x)  # records last_backend
    module, params = ours_net.rnn, [id(p) for p in ours_net.parameters()]
    assert fastrnn.revert(ours_net) is ours_net
    assert type(ours_net.rnn) is type(ref_net.rnn) and ours_net.rnn is module
    assert [id(p) for p in ours_net.parameters()] == params
    assert "last_backend" not in vars(module)
    assert_same(ours_net(x), ref_net(x))
    assert type(fastrnn.convert(ours_net).rnn) is getattr(fastrnn, name)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_quantize_dynamic_after_revert(case):
    """torch's quantization swaps exact classes (type(m) in a mapping): a fastrnn
    module stays float until revert() makes it torch.nn's class again."""
    _, name, kwargs = case
    ref_net, ours_net = nets(name, kwargs)
    x = example(name)

    def quantized(net):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notice
            return torch.ao.quantization.quantize_dynamic(net)

    assert type(quantized(ours_net).rnn) is getattr(fastrnn, name)  # left in float
    fastrnn.revert(ours_net)
    # torch.nn's own limits hold alike (no quantized LSTM without bias, no quantized RNN).
    def same_quantized_model(got, want):
        assert type(got.rnn) is type(want.rnn)
        assert_same(got(x), want(x), rtol=0, atol=0)

    assert_as_torch(quantized, ref_net, ours_net, check=same_quantized_model)


@pytest.mark.parametrize("reentrant", [False, True], ids=["non_reentrant", "reentrant"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_activation_checkpointing(case, reentrant):
    _, name, kwargs = case
    ref, ours = pair(name, kwargs)

    def call(module, x):
        return checkpoint(module, x, use_reentrant=reentrant)

    x = example(name)
    assert_same(outputs_and_grads(ours, x, call), outputs_and_grads(ref, x, call))


def test_activation_checkpointing_replays_dropout():
    """checkpoint() restores the RNG state for the recomputation: the same dropout masks."""
    ref, ours = pair("LSTM", dict(num_layers=3, dropout=0.5))
    ref.train(), ours.train()
    x = example("LSTM")
    results = []
    for module in (ref, ours):
        torch.manual_seed(7)
        results.append(outputs_and_grads(module, x, lambda m, v: checkpoint(m, v, use_reentrant=False)))
    assert_same(*reversed(results))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_module_hooks(case):
    """Forward pre-hooks and forward hooks that change input and output, and full
    backward hooks, see and do on fastrnn's modules what they do on torch.nn's."""
    _, name, kwargs = case
    x = example(name)
    seen = {}
    for label, module in zip(("torch", "fastrnn"), pair(name, kwargs)):
        log = seen[label] = []
        module.register_forward_pre_hook(lambda m, args: (args[0] * 2, *args[1:]))
        module.register_forward_hook(lambda m, args, out: out if isinstance(out, tuple) else out + 1)
        module.register_full_backward_hook(lambda m, g_in, g_out: log.extend(
            t.clone() for t in (*g_in, *g_out) if t is not None))
        log.extend(outputs_and_grads(module, x))
    assert_same(seen["fastrnn"], seen["torch"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_data_parallel_two_processes(tmp_path):
    """2 processes, gloo over 127.0.0.1: per-rank losses and the synchronised
    weights equal torch.nn's under DDP."""
    port, world = free_port(), 2
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    outs = [tmp_path / f"rank{rank}.pt" for rank in range(world)]
    workers = [
        subprocess.Popen([sys.executable, str(ROOT / "tests" / "ddp_worker.py"), str(rank), str(world),
                          str(port), str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for rank, out in enumerate(outs)
    ]
    logs = []
    try:
        for worker in workers:
            logs.append(worker.communicate(timeout=180)[0].decode(errors="replace"))
    finally:
        for worker in workers:
            worker.kill()
    assert all(w.returncode == 0 for w in workers), "\n".join(logs)[-4000:]
    results = [torch.load(out) for out in outs]
    for result in results:
        assert result["backends"] == ("cpu", "cpu")
        (want_losses, want_params), (got_losses, got_params) = result["torch"], result["fastrnn"]
        torch.testing.assert_close(torch.tensor(got_losses), torch.tensor(want_losses), rtol=1e-5, atol=0)
        assert_same(got_params, want_params)
    assert results[0]["torch"][0] != results[1]["torch"][0], "each rank trains on its own data"
    assert_same(results[0]["fastrnn"][1], results[1]["fastrnn"][1], rtol=0, atol=0)  # DDP kept the ranks in sync
