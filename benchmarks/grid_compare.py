"""Before/after table of two `fastrnn bench` runs over the same grid.

Reads each run's results.json (written by `fastrnn bench --out DIR`) and prints,
per shape both runs measured, fastrnn's speedup over torch.nn in each run and the
second run's spread (the widest interquartile range of the row's two timings,
over its median), then a summary: rows below 1.00x before and after, and the
lowest ratios. Markdown, for docs/benchmarks.md.

    python benchmarks/grid_compare.py BEFORE/results.json AFTER/results.json [--backend cpu]
    python benchmarks/grid_compare.py RUN/results.json      # one run: its speedups alone

BEFORE may also be a Markdown file holding a table this script wrote: the
"after" column (or a one-run table's speedups) of the table under the heading
--section (e.g. "## 1 thread" of docs/benchmarks-intel.md) is then the before
run, so a grid recorded in the docs can be compared with a new one without its
results.json.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics

SHAPE = ("cell", "mode", "input", "dtype", "batch", "hidden", "seq_len", "threads")


def ratios(path: str, backend: str) -> dict[tuple, tuple[float, float]]:
    """shape -> (speedup of `backend` over torch, spread of the row)."""
    with open(path) as f:
        records = json.load(f)["results"]
    rows: dict[tuple, dict[str, dict]] = {}
    for r in records:
        if r.get("median_ms") is not None:
            rows.setdefault(tuple(r[k] for k in SHAPE), {})[r["impl"]] = r
    out = {}
    for shape, impls in rows.items():
        if "torch" in impls and backend in impls:
            spread = max((r["q3_ms"] - r["q1_ms"]) / r["median_ms"] for r in impls.values())
            out[shape] = (impls["torch"]["median_ms"] / impls[backend]["median_ms"], spread)
    return out


# A row of either table this script writes: with a before column or without.
ROW = re.compile(r"\| (\w+) \| (\w+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| "
                 r"(?:\**[\d.]+x\** \| )?\**([\d.]+)x\** \| (\d+)% \|")


def table_ratios(path: str, section: str) -> dict[tuple, tuple[float, float]]:
    """shape -> (the "after" speedup, or a one-run table's speedup, and its
    spread) from a table this script wrote, under the heading `section` of a
    Markdown file."""
    with open(path) as f:
        text = f.read()
    start = text.index(section + "\n")
    end = text.find("\n#", start + len(section))
    out = {}
    for line in text[start : end if end >= 0 else len(text)].splitlines():
        m = ROW.match(line)
        if m:
            cell, mode, b, h, t, threads, ratio, spread = m.groups()
            out[(cell, mode, int(b), int(h), int(t), int(threads))] = (float(ratio), int(spread) / 100)
    return out


def marked(ratio: float) -> str:
    """A speedup as the tables print it: bold below 1.00x."""
    mark = "**" if ratio < 1.0 else ""
    return f"{mark}{ratio:.2f}x{mark}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after", nargs="?", help="omitted: BEFORE is the only run, tabled alone")
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--section", help="heading of the table when BEFORE is Markdown")
    args = parser.parse_args()
    if args.after is None:
        print_run(ratios(args.before, args.backend))
        return
    after = ratios(args.after, args.backend)
    if args.before.endswith(".md"):
        recorded = table_ratios(args.before, args.section)
        # The table has no input and dtype columns: one grid's rows.
        before = {s: recorded[s[:2] + s[4:]] for s in after if s[:2] + s[4:] in recorded}
    else:
        before = ratios(args.before, args.backend)
    shapes = [s for s in after if s in before]
    print("| cell | mode | B | H | T | threads | before | after | spread |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in shapes:
        cell, mode, _, _, b, h, t, threads = s
        old, (new, spread) = before[s][0], after[s]
        print(f"| {cell} | {mode} | {b} | {h} | {t} | {threads} | {old:.2f}x | {marked(new)} "
              f"| {100 * spread:.0f}% |")
    olds = [before[s][0] for s in shapes]
    news = [after[s][0] for s in shapes]
    print()
    print(f"{len(shapes)} shapes. Below 1.00x: {sum(r < 1.0 for r in olds)} before, "
          f"{sum(r < 1.0 for r in news)} after. Lowest: {min(olds):.2f}x before, {min(news):.2f}x after. "
          f"Median: {statistics.median(olds):.2f}x before, {statistics.median(news):.2f}x after. "
          f"Spread over 10% after: {sum(after[s][1] > 0.10 for s in shapes)} rows.")


def print_run(run: dict[tuple, tuple[float, float]]) -> None:
    """One run's table and summary, in the form of the before/after table's "after" column."""
    print("| cell | mode | B | H | T | threads | speedup | spread |")
    print("|---|---|---|---|---|---|---|---|")
    for (cell, mode, _, _, b, h, t, threads), (ratio, spread) in run.items():
        print(f"| {cell} | {mode} | {b} | {h} | {t} | {threads} | {marked(ratio)} | {100 * spread:.0f}% |")
    speedups = [r for r, _ in run.values()]
    print()
    print(f"{len(run)} shapes. Below 1.00x: {sum(r < 1.0 for r in speedups)}. Lowest: {min(speedups):.2f}x. "
          f"Median: {statistics.median(speedups):.2f}x. "
          f"Spread over 10%: {sum(s > 0.10 for _, s in run.values())} rows.")


if __name__ == "__main__":
    main()
