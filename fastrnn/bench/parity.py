"""Parity: every contender against torch.nn on each benchmarked shape, before any timing.

Outputs are compared always; in training mode also the gradient of the input and
of every parameter. Errors are measured normwise, max|ours - torch| against
tol * max(1, max|torch|), because an elementwise relative test is meaningless on
gradient entries near zero, and a wrong kernel misses by O(1) anyway.

Half types (bfloat16, float16): torch.nn's own result is off from the truth too,
so both are judged against torch.nn in float64 on the same rounded weights and
inputs; a contender may be at most twice as far from it as torch.nn, plus a floor
of 2% of the scale (the policy of the test suite's bfloat16 parity).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import Config
from .workload import TORCH, Workload

TOLERANCE = {torch.float64: 1e-7, torch.float32: 1e-3}
HALF_FLOOR = 2e-2


class ParityError(RuntimeError):
    """A backend computed different numbers from torch.nn."""


@dataclass
class Parity:
    config: Config
    impl: str
    served_by: str
    # tensor name -> (error, allowed error)
    errors: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def declined(self) -> bool:
        """The call fell through to another backend: nothing of `impl` was measured."""
        return self.served_by != self.impl

    @property
    def failures(self) -> list[str]:
        return [
            f"{name}: error {err:.3g} > allowed {allowed:.3g}"
            for name, (err, allowed) in self.errors.items()
            if not err <= allowed  # NaN fails too
        ]

    @property
    def ok(self) -> bool:
        return not self.declined and not self.failures

    def as_dict(self) -> dict:
        return {
            **self.config.as_dict(),
            "impl": self.impl,
            "served_by": self.served_by,
            "ok": self.ok,
            "errors": {name: {"error": e, "allowed": a} for name, (e, a) in self.errors.items()},
        }


def check(workload: Workload, impls: list[str]) -> list[Parity]:
    """Compares each of `impls` (fastrnn backend names) with torch.nn on this workload."""
    want, _ = workload.evaluate(TORCH)
    dtype = workload.cfg.torch_dtype
    truth = workload.truth() if dtype not in TOLERANCE else None
    results = []
    for impl in impls:
        got, served = workload.evaluate(impl)
        result = Parity(workload.cfg, impl, served)
        if not result.declined:
            if got.keys() != want.keys():
                raise ParityError(f"{impl}: returned {sorted(got)} but torch.nn returned {sorted(want)}")
            for name in want:
                result.errors[name] = _error(got[name], want[name], None if truth is None else truth[name], dtype)
        results.append(result)
    return results


def _error(got, want, truth, dtype) -> tuple[float, float]:
    if truth is None:
        scale = want.abs().max().item()
        return (got - want).abs().max().item(), TOLERANCE[dtype] * max(1.0, scale)
    scale = truth.abs().max().item()
    err_torch = (want - truth).abs().max().item()
    return (got - truth).abs().max().item(), 2 * err_torch + HALF_FLOOR * max(1.0, scale)


def report(failures: list[Parity]) -> str:
    lines = [f"PARITY FAILURE: {len(failures)} backend/shape pair(s) disagree with torch.nn; nothing was timed."]
    for result in failures:
        lines.append(f"  {result.impl} on {result.config.label()}:")
        lines.extend(f"    {line}" for line in result.failures)
    return "\n".join(lines)
