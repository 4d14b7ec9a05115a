"""What every example shares: its command line, where it writes, and --compare.

Each example builds its model from torch.nn modules and swaps in fastrnn's with
fastrnn.convert(model), as one would in existing code. `--compare` then runs the
same short training workload on a torch.nn copy and on the fastrnn model
(same weights and inputs, interleaved rounds, medians) and prints both times.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from typing import Callable

import torch

import fastrnn

HERE = os.path.dirname(os.path.abspath(__file__))


def parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--compare", action="store_true",
                    help="also time the training workload on torch.nn and on fastrnn")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds (CI)")
    ap.add_argument("--out", default=HERE, help="folder for the pictures and results (default: examples/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads (default 1: two threads on a loaded 2-core machine "
                         "spin-wait and run many times slower)")
    return ap


def start(args: argparse.Namespace) -> None:
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)


def write_results(args: argparse.Namespace, name: str, results: dict) -> str:
    """results as examples/NAME.json (or under --out): what the run reached."""
    path = os.path.join(args.out, f"{name}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    return path


def compare(build: Callable[[], torch.nn.Module], workload: Callable[[torch.nn.Module], None],
            rounds: int = 3) -> dict:
    """Times workload(model) on build()'s torch.nn model and on its fastrnn twin."""
    ref = build()
    fast = fastrnn.convert(copy.deepcopy(ref))
    times: dict[str, list[float]] = {"torch.nn": [], "fastrnn": []}
    for _ in range(rounds):  # interleaved, so load on the machine hits both alike
        for name, model in (("torch.nn", ref), ("fastrnn", fast)):
            torch.manual_seed(0)
            t0 = time.perf_counter()
            workload(model)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["torch.nn"] / med["fastrnn"]
    print(f"compare: torch.nn {med['torch.nn']:.2f} s, fastrnn {med['fastrnn']:.2f} s "
          f"(median of {rounds}, same workload): fastrnn {ratio:.2f}x "
          f"[backend {next(m for m in fast.modules() if hasattr(m, 'last_backend')).last_backend}]")
    return {"torch_s": med["torch.nn"], "fastrnn_s": med["fastrnn"], "speedup": ratio}


def pyplot():
    """matplotlib's pyplot, writing files only (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
