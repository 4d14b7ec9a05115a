"""Plots saved benchmark results: time per step and speedup against sequence length.

    python benchmarks/plot.py bench-out/results.json [more.json ...] [--out DIR]

Reads the JSON written by `fastrnn bench` (OUT/results.json) or by the pytest
suite (`--benchmark-json=FILE`, or a file under .benchmarks/ from
`--benchmark-autosave`) and writes DIR/plot-<cell>.png (default: next to the
first input). The runners only write data; this only reads it.
"""
from __future__ import annotations

import argparse
import os
import sys

from fastrnn.bench import plot, results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="results JSON files")
    parser.add_argument("--out", help="output folder (default: the first file's folder)")
    args = parser.parse_args(argv)
    _, records = results.load(args.paths)
    if not any(r.get("median_ms") for r in records):
        print("no timed results in " + ", ".join(args.paths), file=sys.stderr)
        return 1
    out = args.out or os.path.dirname(os.path.abspath(args.paths[0]))
    for path in plot.plot(records, out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
