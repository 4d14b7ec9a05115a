"""Lets torch.compile trace fastrnn's modules without a graph break.

Dynamo refuses to trace any instance of nn.RNN/GRU/LSTM unless the global flag
`torch._dynamo.config.allow_rnn` is set, because torch.nn's own RNN kernels do
not trace reliably (with the flag on, torch 2.13 still fails in Inductor on
nn.LSTM's oneDNN op). fastrnn's classes must stay nn.LSTM subclasses for
isinstance(), yet their forward is plain tensor code plus registered custom ops,
which trace cleanly.

So, rather than flipping the global flag (which would expose users' own nn.LSTM
modules to that failure), we wrap Dynamo's module-wrapping step so the flag is
on exactly while a fastrnn module is being wrapped. Dynamo is imported lazily by
torch, and importing it costs about a second, so the wrap is installed when
Dynamo's builder module first loads, not at fastrnn import.
"""
from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import sys

_BUILDER = "torch._dynamo.variables.builder"


def _install(builder_module, fused_classes: tuple[type, ...]) -> None:
    builder = getattr(builder_module, "VariableBuilder", None)
    wrap_module = getattr(builder, "wrap_module", None)
    if wrap_module is None or getattr(wrap_module, "_fastrnn", False):
        return  # a torch without this hook point: compile then graph-breaks, as for nn.LSTM
    from torch._dynamo import config

    @functools.wraps(wrap_module)
    def wrap(self, value):
        if isinstance(value, fused_classes):
            with config.patch(allow_rnn=True):
                return wrap_module(self, value)
        return wrap_module(self, value)

    wrap._fastrnn = True
    builder.wrap_module = wrap


class _OnImport(importlib.abc.MetaPathFinder):
    """Runs `_install` right after Dynamo's builder module executes."""

    def __init__(self, fused_classes):
        self.fused_classes = fused_classes

    def find_spec(self, name, path, target=None):
        if name != _BUILDER:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module
        classes = self.fused_classes

        def exec_then_install(module):
            exec_module(module)
            _install(module, classes)

        spec.loader.exec_module = exec_then_install
        return spec


def enable(fused_classes: tuple[type, ...]) -> None:
    if _BUILDER in sys.modules:
        _install(sys.modules[_BUILDER], fused_classes)
    elif not any(isinstance(f, _OnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _OnImport(fused_classes))
