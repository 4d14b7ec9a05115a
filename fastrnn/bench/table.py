"""The summary table, as markdown (readable in a terminal, pasteable into docs/benchmarks.md).

One row per config: torch.nn's median, each backend's median and speedup
(torch / backend, > 1 means fastrnn is faster), tokens per second, the spread
(the widest interquartile range among the row's timings, as a fraction of its
median: a large one says the machine was busy and the row is not to be trusted),
and on CUDA the cuDNN algorithm class torch.nn's call gets (see cudnn.py).
"""
from __future__ import annotations

from .config import module_name
from .results import CONFIG_KEYS
from .workload import TORCH


def _ms(value) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _rate(value) -> str:
    if value is None:
        return "—"
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= div:
            return f"{value / div:.3g}{suffix}"
    return f"{value:.3g}"


def _speedup(value) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def _spread(records) -> str:
    """The widest interquartile range among a row's timings, relative to its median."""
    spreads = [(r["q3_ms"] - r["q1_ms"]) / r["median_ms"] for r in records if r.get("median_ms")]
    return f"{100 * max(spreads):.0f}%" if spreads else "—"


def _by_config(records: list[dict]) -> dict[tuple, dict[str, dict]]:
    """config -> impl -> record, in the order the configs were measured."""
    rows: dict[tuple, dict[str, dict]] = {}
    for r in records:
        rows.setdefault(tuple(r[k] for k in CONFIG_KEYS), {})[r["impl"]] = r
    return rows


def _shape_cells(base: dict) -> list[str]:
    return [module_name(base["cell"], base["layers"], base["bidirectional"]), base["mode"],
            base["input"], base["dtype"], str(base["batch"]), str(base["hidden"]),
            str(base["seq_len"])]


SHAPE_HEADER = ["cell", "mode", "input", "dtype", "B", "H", "T"]


def render(records: list[dict], backends: list[str], cuda: bool) -> str:
    rows = _by_config(records)
    header = SHAPE_HEADER + ["torch ms"]
    for b in backends:
        header += [f"{b} ms", f"{b} speedup"]
    header += ["torch tok/s"] + [f"{b} tok/s" for b in backends] + ["spread"]
    if cuda:
        header.append("cuDNN algo (torch)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes: dict[tuple[str, str], int] = {}
    for by_impl in rows.values():
        base = by_impl[TORCH]
        cells = _shape_cells(base) + [_ms(base.get("median_ms"))]
        for b in backends:
            r = by_impl.get(b, {})
            cells += [_ms(r.get("median_ms")), _speedup(r.get("speedup"))]
            if r and r["status"] != "ok":
                notes[(b, r["status"])] = notes.get((b, r["status"]), 0) + 1
        cells += [_rate(base.get("tokens_per_s"))] + [_rate(by_impl.get(b, {}).get("tokens_per_s")) for b in backends]
        cells.append(_spread(by_impl.values()))
        if cuda:
            cells.append(base.get("cudnn_algo") or "")
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines += [f"- {b} not timed on {n} of {len(rows)} shapes: {why}" for (b, why), n in notes.items()]
    return "\n".join(lines)


def render_per_step(records: list[dict], backends: list[str]) -> str:
    """Microseconds per time step (per call, for a cell stepped in a loop), and the
    speedup over torch.nn (cuDNN on a GPU) in brackets."""
    lines = ["| " + " | ".join(SHAPE_HEADER + ["torch us/step"]
                               + [f"{b} us/step (speedup)" for b in backends]) + " |",
             "|" + "---|" * (len(SHAPE_HEADER) + 1 + len(backends))]
    for by_impl in _by_config(records).values():
        base = by_impl[TORCH]
        cells = _shape_cells(base) + [_us(base)]
        for b in backends:
            r = by_impl.get(b, {})
            cells.append(f"{_us(r)} ({_speedup(r['speedup'])})" if r.get("speedup") else r.get("status", "—"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _us(record: dict) -> str:
    per_step = record.get("ms_per_step")
    return "—" if per_step is None else f"{per_step * 1e3:.1f}"
