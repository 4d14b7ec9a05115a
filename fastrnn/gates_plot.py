"""fastrnn.plot_gates: a PNG heatmap of gate activations over time.

One panel per gate, hidden units down, time steps across, for one batch row.
matplotlib is imported only when a plot is drawn, so `import fastrnn` does not
need it.
"""
from __future__ import annotations

from typing import Optional, Sequence

from .gates_api import GateActivations

# Value ranges: sigmoid gates in [0, 1]; tanh ones in [-1, 1]; c and relu's h unbounded.
_SIGMOID = {"i", "f", "o", "r", "z"}
_TANH = {"g", "n"}


def plot_gates(trace: GateActivations, path: str, *, batch: int = 0, layer: int = 0,
               direction: int = 0, units: Optional[Sequence[int]] = None,
               names: Optional[Sequence[str]] = None, labels: Optional[Sequence[str]] = None,
               title: Optional[str] = None) -> str:
    """Writes a heatmap of gates `names` (default: all of trace.names) of batch
    row `batch` for hidden `units` (default: all) and returns `path`. `labels`,
    one per step (e.g. the input characters), mark the time axis."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    names = list(names or trace.names)
    fig, axes = plt.subplots(len(names), 1, figsize=(10, 1.2 + 1.6 * len(names)), squeeze=False,
                             sharex=True)
    for ax, name in zip(axes[:, 0], names):
        values = trace.sequence(name, batch, layer, direction).detach().float().cpu()  # (T, H)
        if units is not None:
            values = values[:, list(units)]
        if name in _SIGMOID:
            lo, hi, cmap = 0.0, 1.0, "viridis"
        else:
            bound = 1.0 if name in _TANH else max(float(values.abs().max()), 1e-6)
            lo, hi, cmap = -bound, bound, "RdBu_r"
        im = ax.imshow(values.t().numpy(), aspect="auto", interpolation="nearest", cmap=cmap,
                       vmin=lo, vmax=hi)
        ax.set_ylabel(f"{name}\nunit")
        if units is not None and len(units) <= 16:
            ax.set_yticks(range(len(units)), [str(u) for u in units])
        fig.colorbar(im, ax=ax, pad=0.01)
    steps = values.shape[0]
    bottom = axes[-1, 0]
    if labels is not None:
        labels = list(labels)[:steps]
        bottom.set_xticks(range(len(labels)), [repr(c)[1:-1] if isinstance(c, str) else str(c)
                                               for c in labels], fontsize=7)
    bottom.set_xlabel("time step")
    where = f"layer {layer}, {'reverse' if direction else 'forward'} direction, batch row {batch}"
    fig.suptitle(f"{title}\n{where}" if title else where, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
