"""`cpu` backend: fused C++ time loops of fastrnn._C (csrc/cpu/).

Serves float32, float64 and bfloat16 CPU tensors for every mode; anything else
is declined with a reason so the registry falls back to the next backend. Both
directions of a bidirectional layer go to the kernel in one call, which runs
them side by side when it has two threads. An LSTM layer's training calls may
run on torch's oneDNN LSTM instead, where this machine runs that faster
(onednn_training.py).
"""
from __future__ import annotations

import torch

from . import onednn_training, register
from .native import NativeBackend, _ops


class CpuBackend(NativeBackend):
    name = "cpu"
    device_type = "cpu"
    dtypes = (torch.float32, torch.float64, torch.bfloat16)

    def layer(self, spec, x, batch_sizes, h0, c0, weights, reverse):
        if spec.mode != "LSTM":
            return _ops.layer(spec, x, batch_sizes, h0, c0, weights, reverse)
        steps = batch_sizes.shape[0]

        def own():
            return _ops.layer(spec, x, batch_sizes, h0, c0, weights, reverse)

        def onednn():
            results, node = onednn_training.onednn_direction(x, steps, h0, c0, weights, reverse)
            return results, [node]

        return _lstm(spec, x, batch_sizes, h0, (x, h0, c0, *weights),
                     "reverse" if reverse else "forward", own, onednn)

    def bidirectional_layer(self, spec, x, batch_sizes, h0, c0, weights):
        if spec.mode != "LSTM":
            return _ops.bidirectional_layer(spec, x, batch_sizes, h0, c0, weights)
        steps = batch_sizes.shape[0]

        def own():
            return _ops.bidirectional_layer(spec, x, batch_sizes, h0, c0, weights)

        def onednn():
            runs = [onednn_training.onednn_direction(x, steps, h0[d], c0[d], weights[d], d == 1)
                    for d in (0, 1)]
            return tuple(r for r, _ in runs), [node for _, node in runs]

        return _lstm(spec, x, batch_sizes, h0[0], (x, *h0, *c0, *weights[0], *weights[1]),
                     "bidirectional", own, onednn)


def _lstm(spec, x, batch_sizes, h0, tensors, kind, own, onednn):
    """own() (fastrnn's op), unless this LSTM call trains in eager mode (autograd
    records `tensors`) where oneDNN could serve it: then the race's choice."""
    # torch.compile traces the op: the race is for eager calls. Asked first, as
    # dynamo stops at the torch._C flags that eligible() reads.
    if torch.compiler.is_compiling() or not _ops._needs_saving(tensors):
        return own()
    key = onednn_training.race_key(x, h0, spec.hidden_size, batch_sizes.shape[0], kind,
                                   spec.bias)
    if onednn_training.loop_won(key) or not onednn_training.eligible(spec, x, batch_sizes, h0):
        return own()
    return onednn_training.race(key, own, onednn)

register(CpuBackend())
