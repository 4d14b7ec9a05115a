"""fastrnn: fused recurrent kernels as drop-in replacements for torch.nn's RNN, LSTM and GRU.

    import fastrnn
    lstm = fastrnn.LSTM(256, 512, num_layers=2, bidirectional=True)   # as nn.LSTM
    fastrnn.convert(model)          # swap the recurrent modules of a model you hold
    fastrnn.revert(model)           # and back to torch.nn's classes (e.g. before quantize_dynamic)
    with fastrnn.patch(): ...       # make torch.nn.LSTM etc. resolve to fastrnn's
    with fastrnn.use_backend("reference"): ...   # or FASTRNN_BACKEND=reference
    trace = fastrnn.gate_activations(lstm, x)    # every gate of every step, as computed
"""
from . import backends
from .backends import use_backend
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from .swap import convert, patch, revert
from .gates_api import GateActivations, gate_activations
from .gates_plot import plot_gates
from . import compile_support

compile_support.enable((RNN, LSTM, GRU))

__version__ = "0.1.0"

__all__ = [
    "RNN",
    "LSTM",
    "GRU",
    "RNNCell",
    "LSTMCell",
    "GRUCell",
    "convert",
    "revert",
    "patch",
    "use_backend",
    "gate_activations",
    "GateActivations",
    "plot_gates",
    "backends",
]
