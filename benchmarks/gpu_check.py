"""The Python half of benchmarks/gpu_check.sh: the timed shapes, the sanitizer
cases and the one-screen summary. Each subcommand is one phase of the check, run
in its own process under the shell script's time box.

    python benchmarks/gpu_check.py time OUT [--dry-run]
        torch.nn (cuDNN) against each fastrnn GPU backend at the shapes users
        compare (below), parity with torch.nn first; writes OUT/results.json,
        OUT/results.csv and OUT/table.md (with microseconds per step).
    python benchmarks/gpu_check.py case BACKEND FAMILY [--dry-run]
        one small forward + backward of every mode on one kernel family: what
        compute-sanitizer runs (memcheck, racecheck).
    python benchmarks/gpu_check.py summary OUT
        reads what the phases left in OUT and prints what passed and failed.

--dry-run runs the same code on the CPU at toy sizes (CI runs it, so the
script cannot rot on machines without a GPU).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import xml.etree.ElementTree as ElementTree

import torch

import fastrnn
from fastrnn.bench import environment, parity, results, runner, table
from fastrnn.bench.config import Config

GPU_BACKENDS = ("triton", "cuda")
DRY_BACKENDS = ("cpu",)
MODES = ("inference", "training")

# (cell, dtypes, B, H, T, input, layers, bidirectional). The first rows are
# FlashRNN's published H100 shape (cuDNN: 2.0 ms forward, 5.2 ms training for the
# LSTM); the cell row is a decoder loop, 256 calls of one step each.
GPU_SHAPES = (
    ("lstm", ("float16", "bfloat16", "float32"), 16, 768, 1024, "padded", 1, False),
    ("gru", ("float16", "bfloat16", "float32"), 16, 768, 1024, "padded", 1, False),
    ("lstm", ("float32", "float16"), 64, 256, 256, "padded", 1, False),
    ("lstm", ("float32", "float16"), 64, 256, 256, "packed", 2, True),
    ("lstm_cell", ("float32", "float16"), 64, 512, 256, "padded", 1, False),
)
# The same kinds of rows at toy sizes, for --dry-run on the CPU.
DRY_SHAPES = (
    ("lstm", ("float32",), 4, 32, 16, "padded", 1, False),
    ("gru", ("float32",), 4, 32, 16, "padded", 1, False),
    ("lstm", ("float32",), 4, 16, 8, "packed", 2, True),
    ("lstm_cell", ("float32",), 4, 16, 8, "padded", 1, False),
)

# Kernel families and how to force one: (backend, family) -> environment.
FAMILIES = {
    ("triton", "step"): {"FASTRNN_TRITON_FAMILY": "step"},
    ("triton", "persistent"): {"FASTRNN_TRITON_FAMILY": "persistent"},
    ("cuda", "step"): {"FASTRNN_CUDA_PATH": "step"},
    ("cuda", "persistent"): {"FASTRNN_CUDA_PATH": "persistent"},
    ("cpu", "native"): {},
}


def configs(dry_run: bool) -> list[Config]:
    device = "cpu" if dry_run else "cuda"
    return [
        Config(cell, dtype, batch, hidden, mode, form, steps, device, layers, bidirectional)
        for cell, dtypes, batch, hidden, steps, form, layers, bidirectional in
        (DRY_SHAPES if dry_run else GPU_SHAPES)
        for dtype in dtypes
        for mode in MODES
    ]


def time_shapes(out: str, dry_run: bool) -> int:
    wanted = DRY_BACKENDS if dry_run else GPU_BACKENDS
    device = "cpu" if dry_run else "cuda"
    probe = torch.empty(1, 1, device=device)
    backends = [b for b in wanted if b in fastrnn.backends.available()
                and fastrnn.backends.why_not(b, fastrnn.backends.LayerSpec("LSTM", 1, 1), probe) is None]
    for b in sorted(set(wanted) - set(backends)):
        print(f"note: backend {b} is not usable here: {fastrnn.backends.get(b).available()}")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    if dry_run:
        torch.set_num_threads(1)  # CI's shared cores: spinning OpenMP threads only add noise
    meta = environment.metadata(device, ["gpu_check", *sys.argv[1:]])
    sweep = runner.run(configs(dry_run), backends, budget_s=0.05 if dry_run else 0.3)
    parity_rows = [p.as_dict() for p in sweep.parity]
    results.write(out, meta, sweep.records, parity_rows)
    if sweep.failures:
        print(parity.report(sweep.failures), file=sys.stderr)
        return 1
    text = (table.render(sweep.records, backends, cuda=not dry_run) + "\n\n"
            + table.render_per_step(sweep.records, backends))
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return 0


def run_case(backend: str, family: str, dry_run: bool) -> int:
    """Forward and backward of every mode, small and odd-sized, on one family."""
    os.environ.update(FAMILIES[(backend, family)])
    device = "cpu" if dry_run else "cuda"
    dtype = torch.float32
    for cls, kwargs in ((fastrnn.LSTM, {}), (fastrnn.GRU, {}), (fastrnn.RNN, {}),
                        (fastrnn.RNN, {"nonlinearity": "relu"})):
        torch.manual_seed(0)
        module = cls(24, 40, **kwargs).to(device, dtype)
        x = torch.randn(7, 5, 24, device=device, dtype=dtype, requires_grad=True)
        with fastrnn.use_backend(backend):
            out, _ = module(x)
            out.square().sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        assert module.last_backend == backend, f"{cls.__name__} ran on {module.last_backend}"
        print(f"{backend}/{family} {cls.__name__}{kwargs or ''}: ok")
    return 0


def summary(out: str) -> int:
    """One screen: each parity run, each sanitizer run, the timing table."""
    failed = False
    print(f"== fastrnn GPU check: {out}")
    env = os.path.join(out, "environment.txt")
    if os.path.exists(env):
        print(open(env).read().strip())
    for path in sorted(glob.glob(os.path.join(out, "parity-*.xml"))):
        suite = ElementTree.parse(path).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        bad = n["failures"] + n["errors"]
        failed |= bad > 0
        print(f"parity {os.path.basename(path)[7:-4]:<10} {n['tests'] - bad - n['skipped']} passed, "
              f"{bad} failed, {n['skipped']} skipped")
        for case in suite.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                print(f"  FAILED {case.get('classname')}::{case.get('name')}")
    for path in sorted(glob.glob(os.path.join(out, "phase-*.status"))):
        name = os.path.basename(path)[6:-7]
        status = open(path).read().strip()
        failed |= not status.startswith(("ok", "skipped"))
        print(f"phase {name:<28} {status}")
    tbl = os.path.join(out, "table.md")
    if os.path.exists(tbl):
        print(open(tbl).read().split("\n\n")[-1])
    print("== " + ("SOME CHECKS FAILED" if failed else "all checks passed"))
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("time")
    t.add_argument("out")
    t.add_argument("--dry-run", action="store_true")
    c = sub.add_parser("case")
    c.add_argument("backend")
    c.add_argument("family")
    c.add_argument("--dry-run", action="store_true")
    s = sub.add_parser("summary")
    s.add_argument("out")
    args = parser.parse_args(argv)
    if args.command == "time":
        os.makedirs(args.out, exist_ok=True)
        return time_shapes(args.out, args.dry_run)
    if args.command == "case":
        return run_case(args.backend, args.family, args.dry_run)
    return summary(args.out)


if __name__ == "__main__":
    sys.exit(main())
