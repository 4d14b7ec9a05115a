"""fastrnn.gate_activations: the per-step gates a recurrent module's kernels computed.

    trace = fastrnn.gate_activations(lstm, x)           # x padded or a PackedSequence
    out, (h_n, c_n) = trace.output, trace.hidden        # what lstm(x) returns
    f = trace.gates[layer][direction]["f"]              # forget gate of every step

Gate order (trace.names): LSTM i, f, g, o, c (input, forget, cell candidate and
output gate after their activations, and the new cell state c_t); GRU r, z, n
(reset, update, candidate); RNN h (the layer's output; the pre-activation is not
kept by any kernel). Each gate has H = hidden_size columns (not proj_size) and is
laid out like the module's output, per layer and direction:

    padded input      (T, B, H), or (B, T, H) with batch_first, or (T, H) unbatched
    PackedSequence    a PackedSequence with the output's batch_sizes and indices

so gates[l][d]["f"][t, b] (time-major) is the forget gate of batch row b at step t,
the step whose output is out[t, b]. Direction 1 (bidirectional) is the reverse
direction, indexed by the same t. Padding positions past a sequence's length hold
nothing meaningful (the kernels leave them out; they are zeros after
pad_packed_sequence).

The module runs one forward exactly as module(input, hx) would (same backend,
dropout, autograd graph; training mode or not), keeping the buffers its kernels
save for backward: on the cpu, cuda and triton backends the gates are views of
those buffers (float32 for bf16/fp16 input; do not modify them before backward).
A backend that saves no gates (reference) gets them recomputed from the layer's
input and output; trace.sources says which happened for each layer and direction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from . import backends
from .gates_capture import GATE_NAMES, LayerGates, Recorder

Gate = Union[Tensor, PackedSequence]


@dataclass
class GateActivations:
    """What gate_activations returns (see the module docstring for shapes)."""

    output: Any  # as module(input, hx) returns it
    hidden: Any
    names: tuple[str, ...]
    gates: list[list[dict[str, Gate]]]  # [layer][direction][name]
    sources: list[list[str]]  # [layer][direction]: "cpu: saved by the kernel", ...
    batch_first: bool

    def gate(self, name: str, layer: int = 0, direction: int = 0) -> Gate:
        return self.gates[layer][direction][name]

    def sequence(self, name: str, batch: int = 0, layer: int = 0, direction: int = 0) -> Tensor:
        """(length, H): gate `name` of batch row `batch` over its own steps (a
        PackedSequence row's index is that of the input before packing)."""
        g = self.gate(name, layer, direction)
        if isinstance(g, PackedSequence):
            padded, lengths = pad_packed_sequence(g)  # (T, B, H), original batch order
            return padded[: int(lengths[batch]), batch]
        if g.dim() == 2:  # unbatched
            return g
        return g[batch] if self.batch_first else g[:, batch]


def gate_activations(module: torch.nn.Module, input, hx=None) -> GateActivations:
    """Runs module(input, hx) on its kernels and returns its output, its final
    state and the gates of every layer, direction and step (see module docstring).
    module is a fastrnn.RNN, LSTM or GRU (use fastrnn.convert on a torch.nn one)."""
    from .modules.rnn import _FusedStack

    if not isinstance(module, _FusedStack):
        raise TypeError(
            f"gate_activations takes a fastrnn.RNN, LSTM or GRU, got {type(module).__name__} "
            "(fastrnn.convert(model) swaps torch.nn's recurrent modules for fastrnn's)"
        )
    records: list[LayerGates] = []
    backends._wrappers.append(lambda backend: Recorder(backend, records))
    try:
        output, hidden = module(input, hx)
    finally:
        backends._wrappers.pop()
    dirs = 2 if module.bidirectional else 1
    if len(records) != module.num_layers * dirs:
        raise RuntimeError(f"expected {module.num_layers * dirs} layer runs, recorded {len(records)}")
    layout = _Layout(output, module.batch_first)
    per_layer = [records[l * dirs:(l + 1) * dirs] for l in range(module.num_layers)]
    return GateActivations(
        output=output,
        hidden=hidden,
        names=GATE_NAMES[module.mode],
        gates=[[{k: layout(v) for k, v in r.gates.items()} for r in layer] for layer in per_layer],
        sources=[[r.source for r in layer] for layer in per_layer],
        batch_first=module.batch_first,
    )


class _Layout:
    """Maps (N, H) time-major packed rows to the layout of the module's output."""

    def __init__(self, output, batch_first: bool):
        self.output, self.batch_first = output, batch_first

    def __call__(self, rows: Tensor) -> Gate:
        out = self.output
        if isinstance(out, PackedSequence):
            return PackedSequence(rows, out.batch_sizes, out.sorted_indices, out.unsorted_indices)
        if out.dim() == 2:  # unbatched: one row per step
            return rows
        steps = out.shape[1] if self.batch_first else out.shape[0]
        grid = rows.unflatten(0, (steps, rows.shape[0] // steps))  # (T, B, H), a view
        return grid.transpose(0, 1) if self.batch_first else grid
