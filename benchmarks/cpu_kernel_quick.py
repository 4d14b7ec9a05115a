"""Quick CPU comparison: a one-layer fastrnn module (the `cpu` backend) vs torch.nn's.

The fastrnn module is the torch.nn module's twin (same state_dict), called
the way users call it, so its Python overhead is timed too. Same weights and
inputs; calls are interleaved (torch, fastrnn, torch, ...) so
drift in machine load hits both; the median of each is reported. On a shared
machine, `--clock cpu` times with the process CPU clock instead of the wall
clock, which ignores time spent descheduled (meaningful with --threads 1 only:
with more threads it sums the threads' CPU time).

    python benchmarks/cpu_kernel_quick.py --threads 1 2 --modes LSTM GRU RNN_TANH --steps 16 64
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import fastrnn

CLASSES = {"LSTM": "LSTM", "GRU": "GRU", "RNN_TANH": "RNN", "RNN_RELU": "RNN"}


def module_pair(mode: str, size: int, hidden: int):
    """(torch.nn module, fastrnn twin with the same weights)."""
    kwargs = {} if CLASSES[mode] != "RNN" else {"nonlinearity": mode[4:].lower()}
    ref = getattr(torch.nn, CLASSES[mode])(size, hidden, **kwargs)
    ours = getattr(fastrnn, CLASSES[mode])(size, hidden, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def median_times(fns, repeats: int, clock) -> list[float]:
    samples = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, samples):
            start = clock()
            fn()
            out.append(clock() - start)
    return [statistics.median(s) for s in samples]


def case(mode: str, batch: int, hidden: int, steps: int, train: bool, repeats: int, clock):
    ref, ours = module_pair(mode, hidden, hidden)
    x = torch.randn(steps, batch, hidden, requires_grad=train)

    def runner(module):
        def run():
            with torch.set_grad_enabled(train):
                y = module(x)[0]
                if train:
                    y.sum().backward()
        return run

    fns = [runner(ref), runner(ours)]
    for fn in fns:  # warm-up (allocator, MKL/oneDNN primitives)
        fn()
    if ours.last_backend != "cpu":
        raise SystemExit(f"fastrnn ran on {ours.last_backend!r}, not the cpu backend")
    return median_times(fns, repeats, clock)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--modes", nargs="+", default=["LSTM", "GRU", "RNN_TANH"])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--steps", type=int, nargs="+", default=[100])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = parser.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print("| threads | mode | T | B | H | pass | torch ms | fastrnn ms | speedup | fastrnn GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for mode in args.modes:
            for steps in args.steps:
                for batch in args.batch:
                    for hidden in args.hidden:
                        for train in (False, True):
                            t_torch, t_fast = case(mode, batch, hidden, steps, train,
                                                   args.repeats, clock)
                            rate = layer_flops(mode, steps, batch, hidden, train) / t_fast / 1e9
                            print(f"| {threads} | {mode} | {steps} | {batch} | {hidden} | "
                                  f"{'fwd+bwd' if train else 'no_grad'} | {t_torch * 1e3:.2f} | "
                                  f"{t_fast * 1e3:.2f} | {t_torch / t_fast:.2f}x | {rate:.0f} |",
                                  flush=True)
        print(f"| {threads} | fp32 GEMM reference: {gemm_rate(args.repeats, clock):.0f} GFLOP/s "
              "(4096 x 1024 @ 1024 x 4096) |", flush=True)


def layer_flops(mode: str, steps: int, batch: int, hidden: int, train: bool) -> float:
    """GEMM FLOPs of one layer with input size = hidden: input projection and
    recurrent product forward; backward adds dx, dh and the two weight grads."""
    gh = {"LSTM": 4, "GRU": 3}.get(mode, 1) * hidden
    forward = 2 * 2 * steps * batch * hidden * gh
    return forward * (3 if train else 1)


def gemm_rate(repeats: int, clock) -> float:
    a, b = torch.randn(4096, 1024), torch.randn(1024, 4096)
    (t,) = median_times([lambda: torch.mm(a, b)], repeats, clock)
    return 2 * 4096 * 1024 * 4096 / t / 1e9


if __name__ == "__main__":
    main()
