"""Runs one layer and direction on its backend and keeps the gates it computed.

What each backend keeps for its backward, per packed row n (N = sum(batch_sizes),
time-major; H = hidden_size):

    cpu, cuda  the op's workspace (csrc/include/fastrnn/workspace.h)
               LSTM (N, 5H) [i|f|g|o|c], GRU (N, 4H) [r|z|n|hn], RNN nothing
    triton     `saved` (N, 4H) LSTM [i|f|g|o], GRU [r|z|n|hn], plus cs_ext
               (N+B, H) whose rows 0..N-1 are LSTM's c (fastrnn/triton/stages.py)
    reference  nothing: autograd keeps its own graph

The gates are slices of those buffers (no copy). A backend that keeps nothing
gets its gates recomputed from the layer's inputs and output
(fastrnn/gates_recompute.py). RNN's only value is h, which is the layer's output y.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .backends.base import Backend, LayerSpec, LayerWeights
from .backends.native import _ops as native_ops  # None where fastrnn._C did not load
from .gates_recompute import recompute

# The gates fastrnn.gate_activations returns, in order; also their column blocks
# (units of H) in the cpu workspace and the triton saved buffer. GRU's hn is internal.
GATE_NAMES = {"LSTM": ("i", "f", "g", "o", "c"), "GRU": ("r", "z", "n"),
              "RNN_TANH": ("h",), "RNN_RELU": ("h",)}


class LayerGates(NamedTuple):
    """One layer and direction: gate name -> (N, H) rows, and where they came from."""

    gates: dict[str, Tensor]
    source: str


def _blocks(names: tuple[str, ...], buffer: Tensor, hidden: int) -> dict[str, Tensor]:
    """Column blocks k*H..(k+1)*H of a saved buffer, one per name."""
    return {name: buffer[:, k * hidden:(k + 1) * hidden] for k, name in enumerate(names)}


def _native(spec, x, batch_sizes, h0, c0, weights, reverse):
    y, h_n, c_n, ws = native_ops.layer_with_workspace(spec, x, batch_sizes, h0, c0, weights, reverse, True)
    return (y, h_n, c_n), _blocks(GATE_NAMES[spec.mode], ws, spec.hidden_size)


def _triton(spec, x, batch_sizes, h0, c0, weights, reverse):
    from .backends.triton_backend import layer_fwd

    y, h_n, c_n, _hs, cs, saved = layer_fwd(spec.mode, x, batch_sizes, h0, c0, *weights, reverse, "auto")
    if spec.mode != "LSTM":
        return (y, h_n, None), _blocks(GATE_NAMES[spec.mode], saved, spec.hidden_size)
    gates = _blocks(("i", "f", "g", "o"), saved, spec.hidden_size)
    gates["c"] = cs[: x.shape[0]]
    return (y, h_n, c_n), gates


def _labelled(backend: str, spec: LayerSpec, y: Tensor, gates: dict[str, Tensor], how: str) -> LayerGates:
    """An RNN layer's only value is h, its output y; LSTM/GRU keep their gates."""
    if spec.mode in ("LSTM", "GRU"):
        return LayerGates(gates, f"{backend}: {how}")
    return LayerGates({"h": y}, f"{backend}: the layer's output")


def run_keeping_gates(backend: Backend, spec: LayerSpec, x: Tensor, batch_sizes: Tensor, h0: Tensor,
                      c0: Optional[Tensor], weights: LayerWeights, reverse: bool):
    """backend.layer(...) -> ((y, h_n, c_n), LayerGates)."""
    from .backends.native import NativeBackend

    runner = (_native if isinstance(backend, NativeBackend) else
              _triton if backend.name == "triton" else None)
    if runner is not None:
        result, gates = runner(spec, x, batch_sizes, h0, c0, weights, reverse)
        return result, _labelled(backend.name, spec, result[0], gates, "saved by the kernel")
    result = backend.layer(spec, x, batch_sizes, h0, c0, weights, reverse)
    gates = recompute(spec, x, batch_sizes, h0, c0, weights, reverse, result[0]) \
        if spec.mode in ("LSTM", "GRU") else {}
    return result, _labelled(backend.name, spec, result[0], gates, "recomputed from its output")


def native_bidirectional_keeping_gates(spec, x, batch_sizes, h0, c0, weights):
    """The cpu backend's one native call for both directions, with both workspaces."""
    out = native_ops.bidirectional_layer_with_workspace(spec, x, batch_sizes, h0, c0, weights, True)
    return tuple(
        ((y, h, c), _labelled("cpu", spec, y, _blocks(GATE_NAMES[spec.mode], ws, spec.hidden_size),
                              "saved by the kernel"))
        for y, h, c, ws in out
    )


class Recorder(Backend):
    """Stands in for the backend the registry chose (same name, same decisions)
    and appends one LayerGates per layer and direction to `records`, in the
    order fastrnn.stack runs them: layer by layer, forward direction first."""

    def __init__(self, inner: Backend, records: list[LayerGates]):
        self.inner, self.records, self.name = inner, records, inner.name

    def available(self):
        return self.inner.available()

    def supports(self, spec, x):
        return self.inner.supports(spec, x)

    def layer(self, spec, x, batch_sizes, h0, c0, weights, reverse):
        result, gates = run_keeping_gates(self.inner, spec, x, batch_sizes, h0, c0, weights, reverse)
        self.records.append(gates)
        return result

    def bidirectional_layer(self, spec, x, batch_sizes, h0, c0, weights):
        # Only cpu runs both directions in one native call; the others (and cpu
        # where native_ops.directions_apart()) run two `layer` calls.
        if self.inner.name != "cpu" or native_ops.directions_apart():
            return super().bidirectional_layer(spec, x, batch_sizes, h0, c0, weights)
        both = native_bidirectional_keeping_gates(spec, x, batch_sizes, h0, c0, weights)
        self.records.extend(g for _, g in both)
        return tuple(r for r, _ in both)
