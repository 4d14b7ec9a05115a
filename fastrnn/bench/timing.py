"""Interleaved timing: each round runs every implementation once, on the same inputs.

Interleaving spreads slow drifts of the machine (frequency, a neighbour's load,
the allocator's state) over all implementations alike instead of charging them to
whichever ran during the drift; the order rotates each round so none is always
first after the others. Medians over rounds discard the odd interruption.

A sample times `calls` consecutive calls and records their mean, `calls` set
per implementation from its warm-up so that a sample lasts at least
`min_sample_ms` (timeit's autorange): a 0.1 ms call timed alone scattered by
30-40% on a 2-core VM (timer resolution, interrupts, frequency), which no
median over rounds fixes; timed 50 at a time its spread stays within a few
percent. Calls that take longer than that run once per sample.

Each implementation is warmed up by WARMUP calls first, as many as fastrnn's
CPU LSTM takes to choose between its own loop and ATen's (oneDNN) LSTM from a
new shape's first calls, unless one leads clearly: a warm-up and three timed
calls each, in inference (race_calls in csrc/cpu/product_choice.cpp) and in
training (fastrnn/backends/onednn_training.py); cuDNN's benchmark mode tunes
in its first calls the same way. The timed rounds measure what a model's later
calls cost.

Rounds continue until at least `min_rounds` are done and `budget_s` seconds of
measured time are spent, or `max_rounds` are done. While some implementation's
samples are still scattered (interquartile range over NOISY of the median), they
go on up to 3 x `budget_s`: more samples are the only defence a median has
against a busy machine.

CPU: wall time around the call (time.perf_counter).
CUDA: events recorded on the current stream around the call, read after a
synchronize, so asynchronous launches are charged to the call that made them.
"""
from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

WARMUP = 8
MIN_ROUNDS = 3
MAX_ROUNDS = 200
BUDGET_S = 1.0
NOISY = 0.25
MIN_SAMPLE_MS = 5.0
MAX_CALLS = 1000


@dataclass
class Timing:
    samples_ms: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def quartiles_ms(self) -> tuple[float, float]:
        if len(self.samples_ms) < 2:
            return self.samples_ms[0], self.samples_ms[0]
        q = statistics.quantiles(self.samples_ms, n=4)
        return q[0], q[2]

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median."""
        q1, q3 = self.quartiles_ms
        return (q3 - q1) / self.median_ms


def timer(device: str) -> Callable[[Callable[[], None]], float]:
    """A function that runs a step once and returns its time in milliseconds."""
    if not device.startswith("cuda"):
        def cpu(fn: Callable[[], None]) -> float:
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        return cpu

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def cuda(fn: Callable[[], None]) -> float:
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    return cuda


def measure(
    steps: dict[str, Callable[[], None]],
    device: str,
    *,
    budget_s: float = BUDGET_S,
    min_rounds: int = MIN_ROUNDS,
    max_rounds: int = MAX_ROUNDS,
    warmup: int = WARMUP,
    min_sample_ms: float = MIN_SAMPLE_MS,
) -> dict[str, Timing]:
    time_one = timer(device)
    names = list(steps)
    warm_ms: dict[str, float] = {}
    for _ in range(warmup):
        for name in names:
            warm_ms[name] = time_one(steps[name])
    calls = {name: max(1, min(MAX_CALLS, math.ceil(min_sample_ms / max(warm_ms.get(name, min_sample_ms), 1e-6))))
             for name in names}

    def run(name: str) -> float:
        """One sample: the mean of calls[name] consecutive calls, in ms."""
        if calls[name] == 1:
            return time_one(steps[name])
        fn, n = steps[name], calls[name]

        def repeated() -> None:
            for _ in range(n):
                fn()
        return time_one(repeated) / n

    samples: dict[str, list[float]] = {name: [] for name in names}
    spent_ms = 0.0
    gc.collect()
    gc.disable()  # a collection inside one sample would be charged to whoever ran then
    try:
        for round_ in range(max_rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                ms = run(name)
                samples[name].append(ms)
                spent_ms += ms * calls[name]
            if round_ + 1 < min_rounds or spent_ms < budget_s * 1e3:
                continue
            noisy = any(Timing(t).spread > NOISY for t in samples.values())
            if not noisy or spent_ms >= 3 * budget_s * 1e3:
                break
    finally:
        gc.enable()
    return {name: Timing(s) for name, s in samples.items()}
