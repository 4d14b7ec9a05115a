"""Backend registry and selection.

Selection order for one layer call:
  1. the innermost `use_backend(name)` context, else the FASTRNN_BACKEND
     environment variable, else "auto";
  2. a named backend is tried first, then the automatic chain for the device;
  3. each backend in the chain either serves the call or declines with a reason;
     `reference` supports everything, so the chain always ends in a result.
Under forward-mode AD (torch.func.jvp, jacfwd, hessian; a dual level of
torch.autograd.forward_ad) every call runs `reference`: the fused ops have no
forward derivative, the reference's ATen ops do.

The automatic chain per device type is fastest first. `cuda` is deliberately
absent from it: it is opt-in until its parity suite has passed on real hardware
and the result is recorded in docs/benchmarks.md.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, Optional

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor

from .base import Backend, LayerSpec, LayerWeights

_BACKENDS: dict[str, Backend] = {}
AUTO_CHAIN = {"cpu": ("cpu", "reference"), "cuda": ("triton", "reference")}
_override: list[str] = []
# Hook for fastrnn.gate_activations (fastrnn/gates_capture.py): while a capture
# is active, select() hands the chosen backend to the innermost wrapper, which
# runs it keeping the gates its kernel saved. Empty otherwise (one list test a call).
_wrappers: list[Callable[[Backend], Backend]] = []


# select()'s answers for CPU tensors, by (requested backend, spec, dtype), kept
# where every backend the chain asked decides from those alone
# (Backend.static_choice): auto mode, or a named `cpu` or `reference`, as
# benchmarks and tests name them. A cold x.device.type costs ~10 us (a
# torch.device made per call), as much as a small layer's kernel; walking a
# named chain warm ~1.5 us, a cell step's worth of Python.
_CPU_CHOICES: dict[tuple[str, LayerSpec, torch.dtype], Backend] = {}


def register(backend: Backend) -> Backend:
    _BACKENDS[backend.name] = backend
    _CPU_CHOICES.clear()
    return backend


def get(name: str) -> Backend:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown fastrnn backend {name!r}; choose one of {['auto', *_BACKENDS]}"
        ) from None


def names() -> list[str]:
    """Every registered backend, usable here or not."""
    return list(_BACKENDS)


def available() -> list[str]:
    """Backends that can run in this process (their extension or package loaded)."""
    return [n for n, b in _BACKENDS.items() if b.available() is None]


# os.environ.get costs ~0.7 us (it encodes the key each call), as much as the
# rest of select(); os.environ's own dict of encoded names, which every change
# made through os.environ updates, answers in ~0.05 us. Where that dict is
# missing (not CPython's os._Environ), os.environ.get.
_ENVIRON = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey("FASTRNN_BACKEND") if _ENVIRON is not None else None


def requested() -> str:
    """The backend the user asked for: context manager, then env var, then auto."""
    if _override:
        return _override[-1]
    if _ENVIRON is None:
        return os.environ.get("FASTRNN_BACKEND", "auto") or "auto"
    raw = _ENVIRON.get(_ENV_KEY)
    return "auto" if raw is None else (os.environ.decodevalue(raw) or "auto")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the enclosed calls on backend `name` ("auto" restores the default)."""
    if name != "auto":
        get(name)
    _override.append(name)
    try:
        yield
    finally:
        _override.pop()


def chain(device_type: str, want: Optional[str] = None) -> tuple[str, ...]:
    """The backends tried for a device type, in order; `want` as requested()."""
    want = requested() if want is None else want
    auto = AUTO_CHAIN.get(device_type, ("reference",))
    if want == "auto":
        return auto
    get(want)
    return (want, *(n for n in auto if n != want))


def select(spec: LayerSpec, x: Tensor) -> Backend:
    """The first backend in the chain that accepts this call (handed to an active
    gate capture's wrapper, if any; one frame, as it runs every layer call)."""
    # torch.func's jvp (and jacfwd, hessian) enters a dual level too: one
    # module attribute (~0.03 us) tells both forms of forward-mode AD. Not
    # cached: the same shape runs the fused kernels outside it.
    if forward_ad._current_level >= 0:
        chosen = _BACKENDS["reference"]
        return _wrappers[-1](chosen) if _wrappers else chosen
    want = requested()
    key = (want, spec, x.dtype) if x.is_cpu else None
    chosen = None if key is None else _CPU_CHOICES.get(key)
    if chosen is None:
        chosen, static = _BACKENDS["reference"], True
        for name in chain(x.device.type, want):
            backend = _BACKENDS.get(name)
            if backend is None:
                continue
            static = static and backend.static_choice
            if backend.available() is None and backend.supports(spec, x) is None:
                chosen = backend
                break
        if key is not None and static:
            _CPU_CHOICES[key] = chosen
    return _wrappers[-1](chosen) if _wrappers else chosen


def why_not(name: str, spec: LayerSpec, x: Tensor) -> Optional[str]:
    """None if backend `name` would serve this call, else its reason for declining."""
    backend = get(name)
    return backend.available() or backend.supports(spec, x)


def _load() -> None:
    from . import reference  # noqa: F401  (always present: the oracle)

    for module in ("cpu", "triton_backend", "cuda"):
        try:
            __import__(f"{__name__}.{module}")
        except ModuleNotFoundError as err:
            # A backend whose source is not in this tree is simply absent; any other
            # import failure is a bug and must surface.
            if err.name != f"{__name__}.{module}":
                raise


__all__ = [
    "Backend",
    "LayerSpec",
    "LayerWeights",
    "register",
    "get",
    "names",
    "available",
    "requested",
    "use_backend",
    "chain",
    "select",
    "why_not",
]

_load()
