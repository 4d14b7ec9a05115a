"""What fastrnn.gate_activations costs over the plain training-mode forward it wraps.

Both run the same module on the same input with grad enabled (the forward of a
training step: the kernel saves its workspace either way); calls are interleaved
(plain, capture, plain, ...) and the medians compared. Backward is not timed: it
is the same in both.

    python benchmarks/gate_capture.py --threads 1 --batch 16 --hidden 128 --steps 256 --clock cpu
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn, clock) -> float:
    start = clock()
    fn()
    return (clock() - start) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--modes", nargs="+", default=["LSTM", "GRU"])
    ap.add_argument("--clock", choices=tuple(CLOCKS), default="cpu",
                    help="cpu: this process's CPU time, which leaves out time spent descheduled "
                         "on a shared machine (meaningful with --threads 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print("| mode | input | layers | plain ms | capture ms | capture / plain |")
    print("|---|---|---|---|---|---|")
    for mode in args.modes:
        for layers, bidir, form in ((1, False, "padded"), (2, True, "packed")):
            module = getattr(fastrnn, mode)(args.hidden, args.hidden, num_layers=layers,
                                            bidirectional=bidir)
            x = torch.randn(args.steps, args.batch, args.hidden)
            if form == "packed":
                lengths = torch.randint(args.steps // 2, args.steps + 1, (args.batch,))
                lengths[0] = args.steps
                x = pack_padded_sequence(x, lengths, enforce_sorted=False)
            plain = lambda: module(x)  # noqa: E731
            capture = lambda: fastrnn.gate_activations(module, x)  # noqa: E731
            for _ in range(3):
                plain(), capture()
            p, c = [], []
            for _ in range(args.rounds):
                p.append(timed(plain, CLOCKS[args.clock]))
                c.append(timed(capture, CLOCKS[args.clock]))
            pm, cm = statistics.median(p), statistics.median(c)
            print(f"| {mode} | {form} | {layers}{' bidir' if bidir else ''} | {pm:.2f} | {cm:.2f} "
                  f"| {cm / pm:.3f} |")


if __name__ == "__main__":
    main()
