"""fastrnn.RNNCell, LSTMCell and GRUCell: torch.nn's cells with `forward` replaced.

A cell is one time step of a one-layer, one-direction stack, so it runs through
the same backend `layer` call with batch_sizes = [B].
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .. import backends
from ..autocast import cell_dtype
from ..backends.base import LayerSpec, LayerWeights
from ..stack import current_weights, padded_batch_sizes
from .deploy import Deployable, recording

_MODES = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}
_WEIGHT_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class _FusedCell(Deployable):
    """forward() shared by the three cells; `self` is also an nn.RNNCellBase."""

    last_backend: Optional[str] = None

    def _mode(self) -> str:
        raise NotImplementedError

    def forward(self, input: Tensor, hx=None):
        if recording():  # an artifact for runtimes without fastrnn: torch.nn's ops (deploy.py)
            return super().forward(input, hx)
        # A cell is stepped once per token from Python, so what runs around the
        # kernel is counted in microseconds: one pass of checks on shapes, the
        # backend chosen by backends.select, and the op (backends' `layer`).
        mode = self._mode()
        lstm = mode == "LSTM"
        rank = input.dim()
        if rank != 2 and rank != 1:
            raise ValueError(f"{type(self).__name__}: Expected input to be 1D or 2D, got {rank}D instead")
        is_batched = rank == 2
        states = None if hx is None else (tuple(hx) if lstm else (hx,))
        if states is not None:
            for idx, state in enumerate(states):
                if state.dim() not in (1, 2):
                    what = f"hx[{idx}]" if lstm else "hidden"
                    raise ValueError(
                        f"{type(self).__name__}: Expected {what} to be 1D or 2D, got {state.dim()}D instead")
            if lstm and not (is_batched and len(states) == 2 and isinstance(hx, tuple)):
                _check_pair(hx, len(states), type(self).__name__, is_batched)  # raises, or keeps two
                states = states[:2]
        x = input if is_batched else input.unsqueeze(0)
        weights = LayerWeights(*current_weights(self, _WEIGHT_NAMES), None)
        # Under autocast, dtypes may differ: the op's autocast kernel casts them.
        # (The any-device test first: 0.16 us, against 0.66 for this device's.)
        autocast = torch._C._is_any_autocast_enabled() and torch.is_autocast_enabled(x.device.type)
        if states is None:  # a state made here needs no checks
            batch = self._check(x, (), weights.w_ih, autocast)
            zeros = torch.zeros(batch, self.hidden_size, dtype=x.dtype, device=x.device)
            states = (zeros, zeros) if lstm else (zeros,)
        else:
            if not is_batched:
                states = tuple(s.unsqueeze(0) for s in states)
            batch = self._check(x, states, weights.w_ih, autocast)

        spec = LayerSpec(mode, self.input_size, self.hidden_size, 0, self.bias)
        backend = backends.select(spec, x)
        _, h, c = backend.layer(spec, x.contiguous(), padded_batch_sizes(1, batch),
                                states[0].contiguous(), states[1].contiguous() if lstm else None,
                                weights, False)
        self.__dict__["last_backend"] = backend.name  # as in rnn.py: no Module.__setattr__
        if autocast and (dtype := cell_dtype(x.device.type)) is not None:
            h, c = h.to(dtype), (c.to(dtype) if lstm else None)
        if not is_batched:
            h = h.squeeze(0)
            c = c.squeeze(0) if lstm else None
        return (h, c) if lstm else h

    def _check(self, x: Tensor, states: tuple[Tensor, ...], w_ih: Tensor, autocast: bool) -> int:
        """The checks torch.nn's cells make in C++, with the same RuntimeError class
        (dtypes only outside autocast, as torch.nn's); returns the batch size."""
        batch, size = x.shape
        if size != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {size} expected {self.input_size}")
        if x.dtype != w_ih.dtype and not autocast:
            raise RuntimeError(f"input dtype ({x.dtype}) does not match weight dtype ({w_ih.dtype})")
        expected = (batch, self.hidden_size)
        for idx, state in enumerate(states):
            if state.shape != expected:
                _raise_state_shape(idx, state, batch, self.hidden_size)
            if (state.dtype != x.dtype and not autocast) or state.device != x.device:
                raise RuntimeError(
                    f"hidden{idx} is {state.dtype} on {state.device} but input is {x.dtype} on {x.device}"
                )
        return batch


def _raise_state_shape(idx: int, state: Tensor, batch: int, hidden: int) -> None:
    """torch.nn's message for state `idx` (2-D, or unbatched and unsqueezed) whose
    shape is not (batch, hidden)."""
    if state.dim() != 2:
        raise RuntimeError(f"hidden{idx} must be 1-D for 1-D input, got {state.dim() - 1}-D")
    if state.size(0) != batch:
        raise RuntimeError(f"Input batch size {batch} doesn't match hidden{idx} batch size {state.size(0)}")
    raise RuntimeError(f"hidden{idx} has inconsistent hidden_size: got {state.size(1)}, expected {hidden}")


def _check_pair(hx, count: int, name: str, is_batched: bool) -> None:
    """An LSTMCell's hx, after the rank of each of its `count` entries was checked
    (torch.nn iterates over hx for that, so a Tensor yields its rows). Batched,
    torch.nn's kernel wants a tuple (TypeError) of two states (RuntimeError);
    unbatched, it reads hx[0] and hx[1] (IndexError for one) and ignores the rest."""
    if is_batched:
        if not isinstance(hx, (tuple, list)):
            raise TypeError(f"{name}: hx must be a tuple (h, c) of Tensors, got {type(hx).__name__}")
        if count != 2:
            raise RuntimeError("lstm_cell expects two hidden states")
    elif count < 2:
        raise IndexError(f"{name}: hx must hold two states (h, c), got {count}")


class RNNCell(_FusedCell, nn.RNNCell):
    __doc__ = "Drop-in for torch.nn.RNNCell running on fastrnn's kernels.\n\n" + (nn.RNNCell.__doc__ or "")

    def _mode(self) -> str:
        if self.nonlinearity not in _MODES:
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        return _MODES[self.nonlinearity]


class LSTMCell(_FusedCell, nn.LSTMCell):
    __doc__ = "Drop-in for torch.nn.LSTMCell running on fastrnn's kernels.\n\n" + (nn.LSTMCell.__doc__ or "")

    def _mode(self) -> str:
        return "LSTM"


class GRUCell(_FusedCell, nn.GRUCell):
    __doc__ = "Drop-in for torch.nn.GRUCell running on fastrnn's kernels.\n\n" + (nn.GRUCell.__doc__ or "")

    def _mode(self) -> str:
        return "GRU"
