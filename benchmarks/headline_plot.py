"""Draws README's headline plot from the 1-thread CPU tables of docs/benchmarks.md.

Reads the rows of the sections "### 1 thread (the default)" and "### RNN and the
cells, 1 thread" (columns: cell | mode | input | dtype | B | H | T | torch ms | cpu ms
| cpu speedup | ...) and plots the speedup over torch.nn against T, inference and
training side by side, one line per layer type and input form.

    python benchmarks/headline_plot.py [docs/benchmarks.md] [docs/img/headline-cpu.png]
"""
from __future__ import annotations

import sys
from collections import defaultdict

SECTIONS = ("### 1 thread (the default)", "### RNN and the cells, 1 thread")
CELLS = ("lstm", "gru", "rnn_tanh")


def rows(path: str):
    """(cell, mode, input, T, speedup) of the float32 rows in SECTIONS."""
    section = None
    with open(path) as f:
        for line in f:
            if line.startswith("#"):
                section = line.strip()
                continue
            if section not in SECTIONS or not line.startswith("| ") or "---" in line:
                continue
            cols = [c.strip() for c in line.strip().strip("|").split("|")]
            if cols[0] == "cell" or cols[3] != "float32":
                continue
            yield cols[0], cols[1], cols[2], int(cols[6]), float(cols[9].rstrip("x"))


def main() -> None:
    src = sys.argv[1] if len(sys.argv) > 1 else "docs/benchmarks.md"
    dst = sys.argv[2] if len(sys.argv) > 2 else "docs/img/headline-cpu.png"
    lines = defaultdict(list)
    for cell, mode, form, steps, speedup in rows(src):
        if cell in CELLS:
            lines[(mode, cell, form)].append((steps, speedup))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
    for ax, mode in zip(axes, ("inference", "training")):
        for k, cell in enumerate(CELLS):
            for form, style in (("padded", "o-"), ("packed", "s--")):
                points = sorted(lines[(mode, cell, form)])
                if points:
                    ax.plot(*zip(*points), style, color=f"C{k}", ms=4, label=f"{cell.upper()} {form}")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set(xscale="log", yscale="log", title=f"{mode} (forward{' + backward' if mode == 'training' else ''})",
               xlabel="sequence length T")
        ax.set_xticks([16, 64, 256, 1024], ["16", "64", "256", "1024"])
        ax.set_yticks([1, 2, 5, 10, 20], ["1x", "2x", "5x", "10x", "20x"])
    axes[0].set_ylabel("speedup over torch.nn")
    axes[1].legend(fontsize=7, ncol=2, loc="upper left")
    fig.suptitle("fastrnn cpu backend vs torch.nn, 1 thread, B = 16, H = 128, float32 (docs/benchmarks.md)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(dst, dpi=80)
    print("wrote", dst)


if __name__ == "__main__":
    main()
