"""pytest-benchmark suite: torch.nn and every available fastrnn backend, on identical inputs.

    python -m pytest benchmarks/ -q                          small default grid (a couple of minutes)
    FASTRNN_BENCH_FULL=1 python -m pytest benchmarks/ -q     T = 16..4096 and the --full axes of `fastrnn bench`
    FASTRNN_BENCH_THREADS=2 ...                              torch intra-op threads (default 1)

Save:     --benchmark-autosave            (numbered runs under .benchmarks/)
          --benchmark-json=bench.json     (one file; `python benchmarks/plot.py bench.json` plots it)
Compare:  --benchmark-compare --benchmark-compare-fail=median:10%
          (against the latest autosaved run; fails when a median regressed by more than 10%)

Each benchmark group is one shape (`benchmark.group`), holding torch.nn and every
backend, all run on the same Workload object (same weights, inputs, cotangent).
Before a backend is timed on a shape it must match torch.nn there (outputs, and
gradients in training): a mismatch fails that test. A backend that declines a
shape is skipped with its reason.

Unlike `fastrnn bench`, pytest-benchmark times one test after another, not
interleaved; use the CLI for side-by-side ratios and this suite to track
regressions over time.
"""
from __future__ import annotations

import functools
import os
import time

import pytest
import torch

from fastrnn.bench import config as grid
from fastrnn.bench import parity, runner
from fastrnn.bench.workload import TORCH, Workload

FULL = os.environ.get("FASTRNN_BENCH_FULL") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
THREADS = int(os.environ.get("FASTRNN_BENCH_THREADS", "1"))
torch.set_num_threads(THREADS)

# Default subset: short and long-ish sequences of the CLI's default shape.
SMALL = dict(seq_lens=(16, 256), batch=(16,), hidden=(128,), dtype=("float32",))
BUDGET_S = 0.5  # measured time per test: rounds = budget / one call, clamped to [3, 100]


def _cases(cells: tuple[str, ...]) -> list:
    axes = grid.defaults(DEVICE, True) if FULL else dict(SMALL)
    configs = grid.build_grid(cells=cells, seq_lens=axes["seq_lens"], batch=axes["batch"], hidden=axes["hidden"],
                              dtype=axes["dtype"], mode=grid.MODES, inputs=grid.INPUTS, device=DEVICE)
    impls = [TORCH] + runner.default_backends(DEVICE)[0]
    # Implementation innermost, so a group's members run back to back on one cached Workload.
    return [pytest.param(cfg, impl, id=f"{cfg.label().replace(' ', '-')}-{impl}") for cfg in configs for impl in impls]


def pytest_generate_tests(metafunc):
    """A test module names its cells: CELLS (default run) and CELLS_FULL (FASTRNN_BENCH_FULL=1)."""
    if "cfg" in metafunc.fixturenames:
        cells = metafunc.module.CELLS_FULL if FULL else metafunc.module.CELLS
        metafunc.parametrize("cfg,impl", _cases(cells))


@functools.lru_cache(maxsize=1)
def _workload(cfg: grid.Config) -> Workload:
    return Workload(cfg)


@pytest.fixture
def measure(benchmark):
    """measure(cfg, impl): parity with torch.nn first (backends), then pytest-benchmark's timing."""

    def run(cfg: grid.Config, impl: str) -> None:
        wl = _workload(cfg)
        if impl != TORCH:
            why = runner.why_not(impl, wl)
            if why is not None:
                pytest.skip(why)
            (result,) = parity.check(wl, [impl])
            if result.declined:
                pytest.skip(f"declined: served by {result.served_by}")
            assert result.ok, parity.report([result])
        step = wl.step(impl)
        if DEVICE == "cuda":
            inner = step

            def step() -> None:  # pytest-benchmark reads a wall clock: wait for the GPU
                inner()
                torch.cuda.synchronize()

        benchmark.group = cfg.label()
        benchmark.extra_info.update(cfg.as_dict(), impl=impl, tokens=wl.tokens, threads=torch.get_num_threads())
        start = time.perf_counter()
        step()
        once = time.perf_counter() - start
        rounds = min(100, max(3, int(BUDGET_S / max(once, 1e-6))))
        benchmark.pedantic(step, rounds=rounds, warmup_rounds=1, iterations=1)

    return run
