"""Putting fastrnn into existing code: `convert` for models you hold, `patch` for code you can't
edit; `revert` undoes `convert` (for tools that match torch.nn's exact classes)."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch.nn
import torch.nn.modules
import torch.nn.modules.rnn

from . import modules
from .modules.deploy import torch_class

#: torch.nn class -> fastrnn twin. Bound at import, before any patch() runs.
TWINS: dict[type, type] = {
    torch_class(twin): twin
    for twin in (modules.RNN, modules.LSTM, modules.GRU, modules.RNNCell, modules.LSTMCell, modules.GRUCell)
}
#: fastrnn class -> the torch.nn class it subclasses.
ORIGINALS: dict[type, type] = {twin: original for original, twin in TWINS.items()}

# Every place torch exposes the classes under their public names.
_NAMESPACES = (torch.nn, torch.nn.modules, torch.nn.modules.rnn)


def convert(model: torch.nn.Module) -> torch.nn.Module:
    """Swap every torch.nn recurrent submodule of `model` (itself included) for its twin, in place.

    The swap changes each module's class and nothing else, so the very same
    module and Parameter objects stay in place: optimizers, hooks, state_dict
    keys and shared references keep working. Subclasses of torch.nn's classes
    are left alone, since their forward may be their own. Returns `model`.
    """
    for module in model.modules():
        twin = TWINS.get(type(module))
        if twin is not None:
            module.__class__ = twin
    return model


def revert(model: torch.nn.Module) -> torch.nn.Module:
    """The inverse of `convert`: every fastrnn recurrent submodule of `model` (itself
    included) becomes an instance of its torch.nn class again, in place, keeping
    its module and Parameter objects. For tools that match torch.nn's exact
    classes, such as torch.ao.quantization.quantize_dynamic. Returns `model`."""
    for module in model.modules():
        original = ORIGINALS.get(type(module))
        if original is not None:
            module.__class__ = original
            module.__dict__.pop("last_backend", None)  # fastrnn's record of its last call
    return model


class _Patch:
    """Saved torch.nn attributes; undo() restores them."""

    def __init__(self) -> None:
        self._saved = [(ns, cls.__name__, getattr(ns, cls.__name__)) for ns in _NAMESPACES for cls in TWINS]
        for ns, name, _ in self._saved:
            setattr(ns, name, getattr(modules, name))

    def undo(self) -> None:
        for ns, name, original in self._saved:
            setattr(ns, name, original)
        self._saved = []

    def __enter__(self) -> "_Patch":
        return self

    def __exit__(self, *exc) -> None:
        self.undo()


def patch() -> _Patch:
    """Make `torch.nn.LSTM` (and RNN, GRU, the cells) resolve to fastrnn's classes.

    Affects code that looks the names up after the call (`nn.LSTM(...)`), not
    names already imported with `from torch.nn import LSTM`. Undo with
    `.undo()`, or use it as a context manager: `with fastrnn.patch(): ...`.
    """
    return _Patch()
