"""Putting fastrnn into existing code: `convert` for models you hold, `patch` for code you can't edit."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch.nn
import torch.nn.modules
import torch.nn.modules.rnn

from . import modules

#: torch.nn class -> fastrnn twin. Bound at import, before any patch() runs.
TWINS: dict[type, type] = {
    torch.nn.RNN: modules.RNN,
    torch.nn.LSTM: modules.LSTM,
    torch.nn.GRU: modules.GRU,
    torch.nn.RNNCell: modules.RNNCell,
    torch.nn.LSTMCell: modules.LSTMCell,
    torch.nn.GRUCell: modules.GRUCell,
}

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
