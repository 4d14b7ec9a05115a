"""What torch.use_deterministic_algorithms(True) costs fastrnn on the CPU, and
what it buys.

    python3 benchmarks/deterministic_mode.py --threads 1 [--budget 1.0]
    python3 benchmarks/deterministic_mode.py --threads 2 --runs 5

Cost: each workload with deterministic mode off and on, interleaved in one
process on the same inputs by `fastrnn bench`'s timing (fastrnn/bench/timing.py:
warm-up calls that also end the default mode's measurements and races, rotating
rounds, medians); printed are the medians and their ratio, deterministic /
default (above 1: deterministic is slower).

--runs N: reproducibility. The same seeded script (12 SGD steps of an LSTM
and a GRU at three shapes, then 6 inference calls) runs in N fresh processes
per mode; printed is a digest of every weight and output per process. torch.nn
gives one digest; fastrnn's default mode can give several where two kernels
time within noise, deterministic mode one.
"""
from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys

import torch

import fastrnn
from fastrnn.bench.timing import measure

# (class, B, H = I, T, training)
WORKLOADS = [
    ("LSTM", 64, 256, 64, True), ("LSTM", 8, 256, 256, True), ("LSTM", 64, 1024, 16, False),
    ("LSTM", 1, 64, 256, True), ("GRU", 64, 1024, 16, True), ("GRU", 8, 256, 64, True),
    ("GRU", 1, 1024, 16, False), ("RNN", 64, 1024, 16, False),
]
# Shapes where kernels of this project's machines time close to each other.
SEEDED_SHAPES = [(8, 256, 256), (64, 256, 64), (64, 256, 16)]


def cost(budget: float) -> None:
    for name, B, H, T, training in WORKLOADS:
        torch.manual_seed(0)
        module = getattr(fastrnn, name)(H, H)
        x = torch.randn(T, B, H, requires_grad=training)

        def call(deterministic: bool) -> None:
            torch.use_deterministic_algorithms(deterministic)
            if training:
                module(x)[0].sum().backward()
            else:
                with torch.no_grad():
                    module(x)

        times = measure({"default": lambda: call(False), "deterministic": lambda: call(True)},
                        "cpu", budget_s=budget)
        torch.use_deterministic_algorithms(False)
        default, fixed = times["default"].median_ms, times["deterministic"].median_ms
        mode = "training" if training else "inference"
        print(f"{name} B{B} H{H} T{T} {mode}: default {default:.2f} ms, "
              f"deterministic {fixed:.2f} ms, {fixed / default:.3f}x", flush=True)


def seeded_digest(library: str) -> str:
    """One seeded training script's weights and outputs, as a digest."""
    nn = fastrnn if library == "fastrnn" else torch.nn
    torch.manual_seed(0)
    digest = hashlib.sha256()
    for B, H, T in SEEDED_SHAPES:
        for name in ("LSTM", "GRU"):
            module = getattr(nn, name)(H, H)
            optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
            x = torch.randn(T, B, H)
            for _ in range(12):
                optimizer.zero_grad()
                module(x)[0].square().mean().backward()
                optimizer.step()
            with torch.no_grad():
                for _ in range(6):
                    digest.update(module(x)[0].numpy().tobytes())
            for p in module.parameters():
                digest.update(p.detach().numpy().tobytes())
    return digest.hexdigest()[:16]


def reproducibility(runs: int, threads: int) -> None:
    for label, args in (("torch.nn", ["torch"]), ("fastrnn default", ["fastrnn"]),
                        ("fastrnn deterministic", ["fastrnn", "--deterministic"])):
        digests = []
        for _ in range(runs):
            out = subprocess.run([sys.executable, __file__, "--threads", str(threads),
                                  "--digest", *args], capture_output=True, text=True, check=True)
            digests.append(out.stdout.split()[-1])
        print(f"{label}, {threads} thread(s), {runs} runs: {len(set(digests))} distinct "
              f"digest(s): {' '.join(digests)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget", type=float, default=1.0,
                        help="seconds of measured time per workload (fastrnn bench's --budget)")
    parser.add_argument("--runs", type=int, default=0, help="processes per mode (reproducibility)")
    parser.add_argument("--digest", choices=["torch", "fastrnn"], help=argparse.SUPPRESS)
    parser.add_argument("--deterministic", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.digest:
        torch.use_deterministic_algorithms(args.deterministic)
        print(seeded_digest(args.digest))
    elif args.runs:
        reproducibility(args.runs, args.threads)
    else:
        cost(args.budget)


if __name__ == "__main__":
    main()
