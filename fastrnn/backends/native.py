"""The one loader of fastrnn._C for the backends built on it (cpu, cuda).

A missing or mismatched extension (not built, or built for another torch) is
not an import error of fastrnn: the native backends report it through
`available()` and the registry falls back to the next backend.
"""
from __future__ import annotations

from typing import Optional

try:
    from .. import _ops
except ImportError as err:
    _ops = None
    LOAD_ERROR: Optional[str] = f"fastrnn._C could not be loaded: {err}"
else:
    LOAD_ERROR = None

__all__ = ["_ops", "LOAD_ERROR"]
