"""Backend registry and selection.

Selection order for one layer call:
  1. the innermost `use_backend(name)` context, else the FASTRNN_BACKEND
     environment variable, else "auto";
  2. a named backend is tried first, then the automatic chain for the device;
  3. each backend in the chain either serves the call or declines with a reason;
     `reference` supports everything, so the chain always ends in a result.

The automatic chain per device type is fastest first. `cuda` is deliberately
absent from it: it is opt-in until its parity suite has passed on real hardware
and the result is recorded in docs/benchmarks.md.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor

from .base import Backend, LayerSpec, LayerWeights

_BACKENDS: dict[str, Backend] = {}
AUTO_CHAIN = {"cpu": ("cpu", "reference"), "cuda": ("triton", "reference")}
_override: list[str] = []
# Hook for fastrnn.gate_activations (fastrnn/gates_capture.py): while a capture
# is active, select() hands the chosen backend to the innermost wrapper, which
# runs it keeping the gates its kernel saved. Empty otherwise (one list test a call).
_wrappers: list[Callable[[Backend], Backend]] = []


# select()'s answers for CPU tensors in auto mode, by (spec, dtype): the CPU
# chain's backends decide from those alone. A cold x.device.type costs ~10 us
# (a torch.device made per call), as much as a small layer's kernel.
_CPU_AUTO: dict[tuple[LayerSpec, torch.dtype], Backend] = {}


def register(backend: Backend) -> Backend:
    _BACKENDS[backend.name] = backend
    _CPU_AUTO.clear()
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


def requested() -> str:
    """The backend the user asked for: context manager, then env var, then auto."""
    if _override:
        return _override[-1]
    return os.environ.get("FASTRNN_BACKEND", "auto") or "auto"


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


def chain(device_type: str) -> tuple[str, ...]:
    want = requested()
    auto = AUTO_CHAIN.get(device_type, ("reference",))
    if want == "auto":
        return auto
    get(want)
    return (want, *(n for n in auto if n != want))


def select(spec: LayerSpec, x: Tensor) -> Backend:
    """The first backend in the chain that accepts this call (handed to an active
    gate capture's wrapper, if any; one frame, as it runs every layer call)."""
    cpu_auto = x.is_cpu and requested() == "auto"
    if cpu_auto:
        chosen = _CPU_AUTO.get((spec, x.dtype))
        if chosen is not None:
            return _wrappers[-1](chosen) if _wrappers else chosen
    chosen = _BACKENDS["reference"]
    for name in chain(x.device.type):
        backend = _BACKENDS.get(name)
        if backend is None or backend.available() is not None:
            continue
        if backend.supports(spec, x) is None:
            chosen = backend
            break
    if cpu_auto:
        _CPU_AUTO[(spec, x.dtype)] = chosen
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
