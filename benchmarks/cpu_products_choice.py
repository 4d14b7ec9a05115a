"""torch.nn against fastrnn's cpu backend with the one-off products pinned to
fastrnn's blocks, pinned to BLAS, and chosen by measurement (FASTRNN_CPU_PRODUCTS,
docs/cpu_kernels.md "Blocks or BLAS"), all four alternated in one process on the
same inputs; medians of 7 calls, as speedups over torch.nn.

    python benchmarks/cpu_products_choice.py THREADS

With 1 thread it times process CPU time (robust to other jobs on the machine),
with more the wall clock.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import torch

import fastrnn

SHAPES = [("LSTM", 64, 1024, 16), ("GRU", 64, 1024, 16), ("LSTM", 64, 256, 64), ("LSTM", 8, 256, 64)]
PINS = ("own", "blas", "auto")
ROUNDS = 7


def main() -> None:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    torch.set_num_threads(threads)
    clock = time.process_time if threads == 1 else time.perf_counter
    for mode, batch, hidden, steps in SHAPES:
        for training in (False, True):
            ref = getattr(torch.nn, mode)(hidden, hidden)
            ours = getattr(fastrnn, mode)(hidden, hidden)
            ours.load_state_dict(ref.state_dict())
            x = torch.randn(steps, batch, hidden, requires_grad=training)

            def call(module, pin=None):
                if pin is not None:
                    os.environ["FASTRNN_CPU_PRODUCTS"] = pin
                with torch.set_grad_enabled(training):
                    out = module(x)[0]
                    if training:
                        out.sum().backward()

            calls = {"torch": lambda: call(ref)}
            calls.update({pin: (lambda pin=pin: call(ours, pin)) for pin in PINS})
            for fn in calls.values():  # warm-up; `auto` measures its choice here
                fn()
            samples = {name: [] for name in calls}
            for _ in range(ROUNDS):
                for name, fn in calls.items():
                    start = clock()
                    fn()
                    samples[name].append(clock() - start)
            ms = {name: statistics.median(s) * 1e3 for name, s in samples.items()}
            ratios = ", ".join(f"{pin} {ms['torch'] / ms[pin]:.2f}x" for pin in PINS)
            print(f"{mode} B{batch} H{hidden} T{steps} {'training' if training else 'inference'}: "
                  f"torch {ms['torch']:.1f} ms; {ratios}", flush=True)


if __name__ == "__main__":
    main()
