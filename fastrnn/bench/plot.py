"""Plots: time per step and speedup against sequence length, one line per implementation.

One PNG per cell (`plot-<cell>.png`), one row of two panels per remaining
series (dtype, B, H, mode, input form): left, median ms per time step (log-log,
torch.nn included); right, speedup over torch.nn (log x, 1.0 marked).
matplotlib's Agg backend: no display needed.
"""
from __future__ import annotations

import os

from .workload import TORCH

SERIES_KEYS = ("dtype", "batch", "hidden", "mode", "input", "device")


def plot(records: list[dict], out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    timed = [r for r in records if r.get("median_ms")]
    os.makedirs(out_dir, exist_ok=True)
    # One colour per implementation across every panel and file.
    colors = {impl: f"C{i}" for i, impl in enumerate([TORCH] + sorted({r["impl"] for r in timed} - {TORCH}))}
    paths = []
    for cell in sorted({r["cell"] for r in timed}):
        mine = [r for r in timed if r["cell"] == cell]
        series = sorted({tuple(r[k] for k in SERIES_KEYS) for r in mine}, key=str)
        fig, axes = plt.subplots(len(series), 2, figsize=(11, 3.2 * len(series)), squeeze=False)
        for (ax_time, ax_speed), key in zip(axes, series):
            rows = [r for r in mine if tuple(r[k] for k in SERIES_KEYS) == key]
            for impl, color in colors.items():
                line = sorted(((r["seq_len"], r) for r in rows if r["impl"] == impl), key=lambda p: p[0])
                if not line:
                    continue
                t = [s for s, _ in line]
                ax_time.plot(t, [r["ms_per_step"] for _, r in line], marker="o", color=color, label=impl)
                if impl != TORCH:
                    pts = [(s, r["speedup"]) for s, r in line if r.get("speedup")]
                    ax_speed.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=color, label=impl)
            dtype, batch, hidden, mode, form, device = key
            title = f"{mode}, {form}, {dtype}, B={batch}, H={hidden}, {device}"
            ax_time.set(yscale="log", ylabel="ms per time step", title=title)
            ax_speed.axhline(1.0, color="grey", linestyle="--", linewidth=1)
            ax_speed.set(ylabel="speedup over torch.nn (x)", title=title)
            lengths = sorted({r["seq_len"] for r in rows})
            for ax in (ax_time, ax_speed):
                ax.set(xscale="log", xlabel="sequence length T")
                ax.set_xticks(lengths, [str(t) for t in lengths])
                ax.xaxis.set_minor_formatter(NullFormatter())
                ax.grid(True, which="both", alpha=0.3)
                if ax.get_legend_handles_labels()[0]:
                    ax.legend()
        fig.suptitle(f"fastrnn vs torch.nn: {cell}")
        fig.tight_layout()
        path = os.path.join(out_dir, f"plot-{cell}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
