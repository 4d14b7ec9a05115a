"""The `fastrnn` command. `fastrnn bench` answers: is fastrnn faster than torch.nn on this
machine, at these sequence lengths, and does it compute the same numbers?

Exit status: 0 done; 1 a backend disagreed with torch.nn (nothing timed); 2 bad arguments.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import torch

from . import backends as registry
from .bench import config as grid
from .bench import environment, parity, plot, results, runner, table, timing

_EPILOG = """\
The default sweep is small (32 shapes on CPU, 80 on GPU); --full covers every cell and
T = 16..4096 (432 shapes on CPU, 1296 on GPU).
Every timed backend is first checked against torch.nn on every shape (outputs, and
gradients in training mode); any disagreement stops the run with exit status 1.
Timings are medians over interleaved rounds on identical inputs. Results go to
OUT/results.json, OUT/results.csv, OUT/table.md and OUT/plot-<cell>.png.
See docs/benchmarks.md.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastrnn", description="fastrnn command-line tools")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser(
        "bench",
        help="check parity with torch.nn, then time fastrnn against torch.nn",
        description=__doc__.split("\n\n")[0],
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = bench.add_argument
    add("--full", action="store_true", help="the wide sweep: every cell, T = 16..4096, half types too (long)")
    add("--cells", help=f"comma list from {','.join(grid.CELLS)} (default lstm,gru)")
    add("--dtype", help=f"comma list from {','.join(grid.DTYPES)} (default float32; GPU also float16)")
    add("--device", help="cpu or cuda (default: cuda if available, else cpu)")
    add("--threads", type=int, default=1, help="torch intra-op threads, fixed for the whole run (default 1)")
    add("--out", default="bench-out", help="output folder (default ./bench-out)")
    add("--backends", help="comma list of fastrnn backends to time (default: every available one except "
                           "'reference', the oracle; name it to time it too)")
    add("--seq-lens", help="comma list of sequence lengths (default 16,64,256,1024 on CPU)")
    add("--batch", help="comma list of batch sizes (default 16 on CPU, 64 on GPU)")
    add("--hidden", help="comma list of hidden sizes = input sizes (default 128 on CPU, 256 on GPU)")
    add("--mode", help="comma list from inference,training,training_params (default inference,training; "
                       "training_params: gradients of the parameters only, as a first layer fed data)")
    add("--input", help="comma list from padded,packed (default both; cells run padded only)")
    add("--budget", type=float, default=timing.BUDGET_S,
        help=f"seconds of measured time per shape, at least {timing.MIN_ROUNDS} rounds (default {timing.BUDGET_S})")
    return parser


def _backends(text: Optional[str], device: str) -> list[str]:
    if text is None:
        chosen, skipped = runner.default_backends(device)
        for name, why in skipped.items():
            print(f"note: backend {name} skipped on {device}: {why}")
        return chosen
    chosen = list(grid.parse_list(text))
    for name in chosen:
        why = registry.get(name).available()  # raises ValueError on an unknown name
        if why is not None:
            raise ValueError(f"backend {name!r} is not usable here: {why}")
    return chosen


def bench(args: argparse.Namespace, argv: Sequence[str]) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available to this torch")
    if args.threads < 1:
        raise ValueError("--threads must be at least 1")
    torch.set_num_threads(args.threads)
    chosen = _backends(args.backends, device)
    base = grid.defaults(device, args.full)
    configs = grid.build_grid(
        cells=grid.parse_list(args.cells) or base["cells"],
        seq_lens=grid.parse_list(args.seq_lens, int) or base["seq_lens"],
        batch=grid.parse_list(args.batch, int) or base["batch"],
        hidden=grid.parse_list(args.hidden, int) or base["hidden"],
        dtype=grid.parse_list(args.dtype) or base["dtype"],
        mode=grid.parse_list(args.mode) or grid.MODES,
        inputs=grid.parse_list(args.input) or grid.INPUTS,
        device=device,
    )
    if not configs:
        raise ValueError("the options select no shape (cells have no packed form)")
    meta = environment.metadata(device, list(argv))
    print(f"fastrnn bench on {meta['gpu'] or meta['cpu']} ({device}), {meta['threads']} thread(s), "
          f"torch {meta['torch']}, {len(configs)} shapes")
    print(f"CPU: {meta['cpu']}, SIMD {' '.join(meta['cpu_simd']) or 'unknown'} "
          f"(torch kernels: {meta['torch_cpu_capability']})")
    load = meta["load_avg_1min_at_start"]
    if load is not None and load > max(0.5, 0.1 * (meta["cpu_count"] or 1)):
        print(f"note: load average {load:.1f} on {meta['cpu_count']} CPUs at start: other work is running, "
              "so timings will be slower and noisier than on an idle machine")
    if not chosen:
        print("note: no fastrnn backend other than the reference oracle is available here; timing torch.nn "
              "alone (add --backends reference to time the oracle)")
    else:
        print(f"backends: {', '.join(chosen)} (against torch.nn)")

    sweep = runner.run(configs, chosen, budget_s=args.budget)
    parity_rows = [p.as_dict() for p in sweep.parity]
    if sweep.failures:
        results.write(args.out, meta, [], parity_rows)
        print(parity.report(sweep.failures), file=sys.stderr)
        return 1

    json_path, csv_path = results.write(args.out, meta, sweep.records, parity_rows)
    text = table.render(sweep.records, chosen, cuda=device.startswith("cuda"))
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    pngs = plot.plot(sweep.records, args.out)
    print(f"parity: {sum(p.ok for p in sweep.parity)} backend/shape pairs match torch.nn")
    print("wrote " + ", ".join([json_path, csv_path, os.path.join(args.out, "table.md"), *pngs]))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return bench(args, argv[1:])
    except ValueError as err:
        print(f"fastrnn {args.command}: error: {err}", file=sys.stderr)
        return 2
