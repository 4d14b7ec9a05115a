"""The benchmark grid: the product of the user's choices, with defaults per device.

A Config is one shape. Input size equals hidden size, time-major; the grid is
one layer, one direction: the plain case every implementation supports, so
differences in the timings come from the recurrent kernels rather than from
features. A stacked or bidirectional Config (layers, bidirectional) times a
whole module as users build it (benchmarks/gpu_check.py).
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch

# name -> (torch.nn mode, is a single-step cell)
CELLS = {
    "lstm": ("LSTM", False),
    "gru": ("GRU", False),
    "rnn_tanh": ("RNN_TANH", False),
    "rnn_relu": ("RNN_RELU", False),
    "lstm_cell": ("LSTM", True),
    "gru_cell": ("GRU", True),
    "rnn_tanh_cell": ("RNN_TANH", True),
    "rnn_relu_cell": ("RNN_RELU", True),
}
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
MODES = ("inference", "training")  # the default grid's
# A training step as a first layer fed data takes it: gradients of the
# parameters only, the input needing none (no dx). Named with --mode.
TRAINING_PARAMS = "training_params"
KNOWN_MODES = MODES + (TRAINING_PARAMS,)
INPUTS = ("padded", "packed")

# Defaults sized so that the default CPU run (parity included) stays within a few
# minutes on two cores. --full covers every cell and T = 16..4096 (every power of
# two) plus half types, and on the GPU a second hidden size; it runs for a long
# time. Explicit options override both.
_ALL_T = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
DEFAULTS = {
    ("cpu", False): dict(cells=("lstm", "gru"), seq_lens=(16, 64, 256, 1024), batch=(16,), hidden=(128,),
                         dtype=("float32",)),
    ("cpu", True): dict(cells=tuple(CELLS), seq_lens=_ALL_T, batch=(16,), hidden=(128,),
                        dtype=("float32", "bfloat16")),
    ("cuda", False): dict(cells=("lstm", "gru"), seq_lens=(16, 64, 256, 1024, 4096), batch=(64,), hidden=(256,),
                          dtype=("float32", "float16")),
    ("cuda", True): dict(cells=tuple(CELLS), seq_lens=_ALL_T, batch=(64,), hidden=(256, 1024),
                         dtype=("float32", "float16", "bfloat16")),
}


@dataclass(frozen=True)
class Config:
    cell: str
    dtype: str
    batch: int
    hidden: int
    mode: str
    input: str
    seq_len: int
    device: str
    layers: int = 1
    bidirectional: bool = False

    @property
    def kind(self) -> str:
        """torch.nn's mode string: LSTM, GRU, RNN_TANH or RNN_RELU."""
        return CELLS[self.cell][0]

    @property
    def is_cell(self) -> bool:
        return CELLS[self.cell][1]

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def training(self) -> bool:
        return self.mode in ("training", TRAINING_PARAMS)

    @property
    def input_grad(self) -> bool:
        """Whether a training step asks for the input's gradient too."""
        return self.mode == "training"

    @property
    def packed(self) -> bool:
        return self.input == "packed"

    def series(self) -> tuple:
        """Everything but the sequence length: the configs one plotted line runs through."""
        return (self.cell, self.dtype, self.batch, self.hidden, self.mode, self.input, self.device,
                self.layers, self.bidirectional)

    @property
    def module_name(self) -> str:
        return module_name(self.cell, self.layers, self.bidirectional)

    def label(self) -> str:
        return (f"{self.module_name} {self.mode} {self.input} {self.dtype} B{self.batch} H{self.hidden} "
                f"T{self.seq_len}")

    def as_dict(self) -> dict:
        return asdict(self)


def module_name(cell: str, layers: int, bidirectional: bool) -> str:
    """The cell name, with the stacking when there is any: 'lstm', 'lstm x2 bi'."""
    return cell + (f" x{layers}" if layers > 1 else "") + (" bi" if bidirectional else "")


def defaults(device: str, full: bool) -> dict:
    return dict(DEFAULTS[("cuda" if device.startswith("cuda") else "cpu", full)])


def build_grid(
    cells: Sequence[str],
    seq_lens: Sequence[int],
    batch: Sequence[int],
    hidden: Sequence[int],
    dtype: Sequence[str],
    mode: Sequence[str],
    inputs: Sequence[str],
    device: str,
) -> list[Config]:
    """Series-major order (T innermost), so each plotted line is measured back to back.

    Cells take one step per call and have no packed form: they run the padded form only.
    """
    _check("cell", cells, CELLS)
    _check("dtype", dtype, DTYPES)
    _check("mode", mode, KNOWN_MODES)
    _check("input", inputs, INPUTS)
    for name, values in (("seq-lens", seq_lens), ("batch", batch), ("hidden", hidden)):
        if not values or any(v < 1 for v in values):
            raise ValueError(f"--{name} needs positive integers, got {list(values)}")
    grid = []
    for c, dt, b, h, m, form, t in itertools.product(cells, dtype, batch, hidden, mode, inputs, seq_lens):
        if CELLS[c][1] and form == "packed":
            continue
        grid.append(Config(c, dt, b, h, m, form, t, device))
    return grid


def _check(what: str, values: Sequence[str], known) -> None:
    bad = [v for v in values if v not in known]
    if bad:
        raise ValueError(f"unknown {what} {bad}; choose from {list(known)}")


def parse_list(text: Optional[str], cast=str) -> Optional[tuple]:
    """'a,b,c' -> ('a', 'b', 'c'); None stays None (use the default)."""
    if text is None:
        return None
    return tuple(cast(item.strip()) for item in text.split(",") if item.strip())
