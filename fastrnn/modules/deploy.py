"""What a fastrnn module becomes when a model leaves eager PyTorch for a runtime without fastrnn.

A TorchScript, traced or ONNX artifact runs where fastrnn's op library is not
loaded (a C++ runtime, onnxruntime, a process that never imports fastrnn), so
such an artifact must hold torch.nn's own ops, not fastrnn::layer_fwd:

- torch.jit.script calls `__prepare_scriptable__` and compiles what it returns:
  the torch.nn class this module subclasses, sharing the same Parameter objects
  (and hooks), so the artifact is torch.nn's scripted module;
- torch.jit.trace and torch.onnx.export (dynamo=False traces; dynamo=True sets
  the ONNX export flag while torch.export runs) record the call, and while they
  do, forward is torch.nn's own forward, so the graph holds aten::lstm etc.

torch.export and torch.compile outside an ONNX export keep fastrnn's ops: their
graphs run in a process that has fastrnn.
"""
from __future__ import annotations

import torch
from torch import nn


def torch_class(cls: type) -> type:
    """The torch.nn class a fastrnn class subclasses: its last base, (mixin, nn.LSTM)."""
    return cls.__bases__[-1]


# Bound once: two attribute lookups fewer on every eager call (~30 ns each).
_is_tracing = torch._C._is_tracing
_is_compiling = torch.compiler.is_compiling


def recording() -> bool:
    """Whether torch.jit.trace or torch.onnx.export is recording this call.

    The ONNX flag is read only while compiling (torch.export sets that flag
    too): reading it costs ~2 us, too much for every eager cell step.
    """
    if _is_compiling():  # first: Dynamo folds it, but cannot trace _is_tracing
        return torch.onnx.is_in_onnx_export()
    return _is_tracing()


class Deployable:
    """Mixin of fastrnn's modules (`self` is also the torch.nn module it subclasses)."""

    def __prepare_scriptable__(self) -> nn.Module:
        """The module torch.jit.script compiles in place of this one: an instance of
        the torch.nn class whose __dict__ is a shallow copy of this module's (the
        same Parameter objects, buffers and hooks). torch.jit.script also writes it
        into the parent module's `_modules`, so after scripting a model, its eager
        copy runs torch.nn there; fastrnn.convert(model) swaps it back."""
        twin = torch_class(type(self)).__new__(torch_class(type(self)))
        twin.__dict__.update((k, v) for k, v in self.__dict__.items() if k != "last_backend")
        return twin
