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
        def own():
            return _ops.layer(spec, x, batch_sizes, h0, c0, weights, reverse)

        if not self._may_race(spec, x, batch_sizes, h0, c0, weights):
            return own()
        steps = batch_sizes.shape[0]

        def onednn():
            results, node = onednn_training.onednn_direction(x, steps, h0, c0, weights, reverse)
            return results, [node]

        key = onednn_training.race_key(x, h0, spec.hidden_size, steps,
                                       "reverse" if reverse else "forward", spec.bias)
        return onednn_training.race(key, own, onednn)

    def bidirectional_layer(self, spec, x, batch_sizes, h0, c0, weights):
        def own():
            return _ops.bidirectional_layer(spec, x, batch_sizes, h0, c0, weights)

        if not self._may_race(spec, x, batch_sizes, h0[0], c0[0], (*weights[0], *weights[1])):
            return own()
        steps = batch_sizes.shape[0]

        def onednn():
            runs = [onednn_training.onednn_direction(x, steps, h0[d], c0[d], weights[d], d == 1)
                    for d in (0, 1)]
            return tuple(r for r, _ in runs), [node for _, node in runs]

        key = onednn_training.race_key(x, h0[0], spec.hidden_size, steps, "bidirectional",
                                       spec.bias)
        return onednn_training.race(key, own, onednn)

    @staticmethod
    def _may_race(spec, x, batch_sizes, h0, c0, weights) -> bool:
        save = spec.mode == "LSTM" and _ops._needs_saving((x, h0, c0, *weights))
        return onednn_training.eligible(spec, x, batch_sizes, h0, save)


register(CpuBackend())
