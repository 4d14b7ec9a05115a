"""The sweep: parity for every shape first, then interleaved timing of every shape.

Parity runs to completion before the first timing, so a disagreement stops the
run before minutes are spent measuring wrong code, and reports every failing
backend/shape pair at once.

A backend that declines a shape (its `supports` says why, or the call falls
through to another backend) is recorded with that reason and not timed: a time
must never be labelled with a backend that did not compute it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from tqdm import tqdm

from fastrnn import backends as registry
from fastrnn.backends.base import LayerSpec

from . import cudnn, parity, timing
from .config import Config
from .results import derive
from .workload import TORCH, Workload


@dataclass
class Sweep:
    records: list[dict] = field(default_factory=list)
    parity: list[parity.Parity] = field(default_factory=list)
    failures: list[parity.Parity] = field(default_factory=list)


def default_backends(device: str) -> tuple[list[str], dict[str, str]]:
    """The contenders: every usable backend that serves `device` at all, except the
    reference (the oracle, not a contender). Also returns the others' reasons."""
    probe = torch.empty(1, 1, device=device)
    chosen, skipped = [], {}
    for name in registry.available():
        why = registry.why_not(name, LayerSpec("LSTM", 1, 1), probe)
        if why is not None:
            skipped[name] = why
        elif name != "reference":
            chosen.append(name)
    return chosen, skipped


def why_not(backend: str, wl: Workload) -> Optional[str]:
    """None if `backend` would serve this workload's layer call, else its reason."""
    cfg = wl.cfg
    spec = LayerSpec(cfg.kind, cfg.hidden, cfg.hidden)
    rows = wl.data.detach()[0] if cfg.is_cell else wl.data.detach().reshape(-1, cfg.hidden)
    reason = registry.why_not(backend, spec, rows)
    return None if reason is None else f"declined: {reason}"


def run(configs: list[Config], backends: list[str], *, budget_s: float = timing.BUDGET_S) -> Sweep:
    sweep = Sweep()
    skipped: dict[Config, dict[str, str]] = {}
    for cfg in tqdm(configs, desc="parity", unit="shape", disable=None):
        wl = Workload(cfg)
        skip = {b: r for b in backends if (r := why_not(b, wl)) is not None}
        results = parity.check(wl, [b for b in backends if b not in skip])
        for p in results:
            if p.declined:
                skip[p.impl] = f"declined: served by {p.served_by}"
            elif p.failures:
                sweep.failures.append(p)
        sweep.parity.extend(results)
        skipped[cfg] = skip
    if sweep.failures:
        return sweep

    for cfg in tqdm(configs, desc="timing", unit="shape", disable=None):
        wl = Workload(cfg)
        impls = [TORCH] + [b for b in backends if b not in skipped[cfg]]
        timings = timing.measure({impl: wl.step(impl) for impl in impls}, cfg.device, budget_s=budget_s)
        algo = cudnn.algo_class(cfg) if cfg.device.startswith("cuda") else None
        for impl in [TORCH] + backends:
            record = {**cfg.as_dict(), "impl": impl, "status": skipped[cfg].get(impl, "ok"), "tokens": wl.tokens,
                      "threads": torch.get_num_threads(), "cudnn_algo": algo}
            if impl in timings:
                t = timings[impl]
                q1, q3 = t.quartiles_ms
                record.update(median_ms=t.median_ms, q1_ms=q1, q3_ms=q3, rounds=len(t.samples_ms),
                              samples_ms=t.samples_ms)
            sweep.records.append(record)
    derive(sweep.records)
    return sweep
