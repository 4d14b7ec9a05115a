"""Times the same fastrnn workloads in two checkouts (each with its extension
built in place), for a change that cannot run side by side in one process: two
builds of fastrnn._C register the same op names.

    python3 benchmarks/compare_checkouts.py OLD_CHECKOUT NEW_CHECKOUT [--rounds 7]
    python3 benchmarks/compare_checkouts.py OLD NEW --shape "RNN B64 H256 T64 training"

--shape (repeatable) times the named shapes instead of the built-in list: a class,
then B, H and T (I = H; T0 = one cell step), the mode, optionally a dtype.

Each round runs every workload once per checkout, in a fresh process per
checkout, alternating which goes first; a process reports its fastest batch
of calls (a batch's mean; the minimum of 15 batches, since a shared machine's
load only ever adds time). Printed per workload: both medians over rounds, and the median of the
per-round ratios new / old (paired, so a load change between rounds cancels).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

# name: (class, batch, hidden, steps, training, dtype); steps 0 = one cell step.
WORKLOADS = {
    "LSTM B16 H128 T256 inference": ("LSTM", 16, 128, 256, False, "float32"),
    "LSTM B16 H128 T256 training": ("LSTM", 16, 128, 256, True, "float32"),
    "LSTM B16 H128 T256 bfloat16 training": ("LSTM", 16, 128, 256, True, "bfloat16"),
    "LSTM B64 H256 T64 bfloat16 training": ("LSTM", 64, 256, 64, True, "bfloat16"),
    "GRU B64 H256 T64 bfloat16 inference": ("GRU", 64, 256, 64, False, "bfloat16"),
    "GRU B16 H128 T256 inference": ("GRU", 16, 128, 256, False, "float32"),
    "GRU B16 H128 T256 training": ("GRU", 16, 128, 256, True, "float32"),
    "LSTMCell B1 H64 step inference": ("LSTMCell", 1, 64, 0, False, "float32"),
    "LSTMCell B1 H64 step training": ("LSTMCell", 1, 64, 0, True, "float32"),
    "GRUCell B1 H64 step inference": ("GRUCell", 1, 64, 0, False, "float32"),
    "RNNCell B1 H64 step inference": ("RNNCell", 1, 64, 0, False, "float32"),
}

CHILD = r"""
import json, sys, time, torch, fastrnn
torch.set_num_threads(int(sys.argv[2]))
name, batch, hidden, steps, training, dtype = json.loads(sys.argv[1])
dtype = getattr(torch, dtype)
torch.manual_seed(0)
m = getattr(fastrnn, name)(hidden, hidden).to(dtype)
x = (torch.randn(batch, hidden) if steps == 0 else torch.randn(steps, batch, hidden)).to(dtype)
calls = 1000 if steps == 0 else 4  # per batch; 15 batches
def once():
    if training:
        out = m(x)
        (out[0] if isinstance(out, tuple) else out).sum().backward()
    else:
        with torch.no_grad():
            m(x)
for _ in range(calls):
    once()
batches = []
for _ in range(15):
    t0 = time.perf_counter()
    for _ in range(calls):
        once()
    batches.append((time.perf_counter() - t0) / calls)
print(json.dumps(min(batches)))
"""


def parse_shape(text: str) -> tuple:
    """"GRU B64 H256 T16 training [bfloat16]" -> a WORKLOADS value."""
    words = text.split()
    if len(words) not in (5, 6) or [w[0] for w in words[1:4]] != ["B", "H", "T"] \
            or words[4] not in ("inference", "training"):
        raise SystemExit(f"expected 'CLASS B<n> H<n> T<n> inference|training [dtype]', "
                         f"got {text!r}")
    batch, hidden, steps = (int(w[1:]) for w in words[1:4])
    return (words[0], batch, hidden, steps, words[4] == "training",
            words[5] if len(words) == 6 else "float32")


def run(checkout: str, workload, threads: int) -> float:
    env = dict(os.environ, PYTHONPATH=checkout, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(workload), str(threads)],
                         env=env, cwd=checkout, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", default="", help="run the workloads whose name contains this")
    parser.add_argument("--shape", action="append", default=[],
                        help="a shape to time instead of the built-in list (repeatable)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    workloads = {text: parse_shape(text) for text in args.shape} or WORKLOADS
    print(f"| workload | old | new | new / old |\n|---|---|---|---|")
    for label, workload in workloads.items():
        if args.only not in label:
            continue
        old, new = [], []
        for r in range(args.rounds):
            order = (args.old, args.new) if r % 2 == 0 else (args.new, args.old)
            got = {c: run(c, workload, args.threads) for c in order}
            old.append(got[args.old])
            new.append(got[args.new])
        ratio = statistics.median(n / o for n, o in zip(new, old))
        unit, scale = ("us", 1e6) if workload[3] == 0 else ("ms", 1e3)
        print(f"| {label} | {statistics.median(old) * scale:.2f} {unit} "
              f"| {statistics.median(new) * scale:.2f} {unit} | {ratio:.3f} |", flush=True)


if __name__ == "__main__":
    main()
