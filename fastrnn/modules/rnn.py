"""fastrnn.RNN, LSTM and GRU: subclasses of torch.nn's, with only `forward` replaced.

Subclassing keeps everything else identical by construction: constructor
arguments and their validation, parameter names/order/shapes, initialisation and
its random draws, state_dict keys, flatten_parameters, all_weights, repr, _apply
(.to(), .double()), and `isinstance(m, torch.nn.LSTM)`. The base classes are bound
here at import time, so `fastrnn.patch()` replacing `torch.nn.LSTM` later cannot
make these classes inherit from themselves.

forward validates input exactly as torch.nn does (reusing the inherited
check_forward_args, and raising the same exception classes for the checks torch
does in C++), then hands time-major packed rows to fastrnn.stack.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..autocast import onednn_lstm_dtype
from ..stack import current_weights, padded_batch_sizes, run_stack
from .deploy import Deployable, recording


class NotATensorError(TypeError, AttributeError):
    """An argument that must be a Tensor is not one.

    torch.nn fails on such input with an AttributeError ('list' object has no
    attribute 'dim'); this is also that class, so existing handlers still match,
    but with a message that names the problem.
    """


class _FusedStack(Deployable):
    """forward() shared by RNN, LSTM and GRU; `self` is also an nn.RNNBase."""

    #: Name(s) of the backend(s) that ran this module's last forward, e.g. "cpu".
    last_backend: Optional[str] = None

    def forward(self, input, hx=None):
        weights = current_weights(self, self._flat_weights_names)
        if any(w is not f for w, f in zip(weights, self._flat_weights)):
            self._update_flat_weights()  # e.g. functional_call: torch.nn's checks read _flat_weights
        if recording():  # an artifact for runtimes without fastrnn: torch.nn's ops (deploy.py)
            return super().forward(input, hx)
        lstm = self.mode == "LSTM"
        dirs = 2 if self.bidirectional else 1
        packed = isinstance(input, PackedSequence)
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            is_batched, batch_dim = True, None
            max_batch = int(batch_sizes[0])
        else:
            if not isinstance(input, Tensor):
                raise NotATensorError(
                    f"{type(self).__name__}: input must be a Tensor or PackedSequence, "
                    f"got {type(input).__name__}"
                )
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"{type(self).__name__}: Expected input to be 2D or 3D, got {input.dim()}D instead"
                )
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            data = input if is_batched else input.unsqueeze(batch_dim)
            batch_sizes = sorted_indices = unsorted_indices = None
            max_batch = data.size(batch_dim)
        if hx is not None:
            if packed:  # first, as in torch.nn: a wrong form fails there for packed input
                hx = self.permute_hidden(hx, sorted_indices)
            _check_state_kind(hx, lstm, is_batched)
            hx = _match_rank(hx, lstm, is_batched, packed)

        if hx is None:
            # A zero state of the expected size: only the input needs checking.
            self.check_input(data, batch_sizes)
            out_size = self.proj_size if self.proj_size > 0 else self.hidden_size
            states = self.num_layers * dirs
            h0s = _zero_states(data, states, max_batch, out_size)
            c0s = _zero_states(data, states, max_batch, self.hidden_size) if lstm else None
        else:
            self.check_forward_args(data, hx, batch_sizes)
            _check_state_dtype(data, hx)
            h0s = (hx[0] if lstm else hx).unbind(0)
            c0s = hx[1].unbind(0) if lstm else None

        if packed:
            rows = data
        else:
            time_major = data.transpose(0, 1) if self.batch_first else data
            steps = time_major.size(0)
            if steps == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
            rows = time_major.reshape(steps * max_batch, self.input_size)
            batch_sizes = padded_batch_sizes(steps, max_batch)

        used: list[str] = []
        out, h_n, c_n = run_stack(
            self.mode,
            rows,
            batch_sizes,
            h0s,
            c0s,
            weights,
            hidden_size=self.hidden_size,
            proj_size=self.proj_size,
            num_layers=self.num_layers,
            bidirectional=self.bidirectional,
            bias=self.bias,
            dropout=float(self.dropout),
            training=self.training,
            used=used,
        )
        if lstm and not packed and torch._C._is_any_autocast_enabled():
            dtype = onednn_lstm_dtype(data, self.proj_size)
            if dtype is not None:
                out, h_n, c_n = out.to(dtype), h_n.to(dtype), c_n.to(dtype)
        # Straight into __dict__: RNNBase.__setattr__ and Module.__setattr__
        # cost ~1.5 us per call for a plain attribute.
        self.__dict__["last_backend"] = used[0] if len(used) == 1 else "+".join(used)
        hidden = (h_n, c_n) if lstm else h_n

        if packed:
            return PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices), self.permute_hidden(
                hidden, unsorted_indices
            )
        width = out.size(1)
        if not is_batched:  # (T, width) in either layout
            return out.view(steps, width), ((h_n.squeeze(1), c_n.squeeze(1)) if lstm else h_n.squeeze(1))
        out = out.view(steps, max_batch, width)
        return (out.transpose(0, 1) if self.batch_first else out), hidden


def _zero_states(data: Tensor, states: int, batch: int, size: int) -> tuple[Tensor, ...]:
    """`states` zero (batch, size) states like data, in as few torch calls as
    possible: each costs ~15 us when a long kernel has left the caches cold,
    which at B = 64, H = 64, T = 64 was 3% of an LSTM's call."""
    if states == 1:
        return (data.new_zeros(batch, size),)
    return data.new_zeros(states, batch, size).unbind(0)


def _check_state_kind(hx, lstm: bool, is_batched: bool) -> None:
    """LSTM takes an (h, c) pair, RNN and GRU one tensor; torch.nn's exception classes.

    torch.nn's LSTM reads hx[0], then hx[1], before anything else: a single state
    fails there with an IndexError, a non-sequence with a TypeError. For unbatched
    input it then builds a new pair from those two (so states beyond two are
    ignored); batched input goes to its kernel, which wants exactly two."""
    if lstm:
        for idx in (0, 1):
            if not isinstance(hx[idx], Tensor):
                raise NotATensorError(f"hx[{idx}] must be a Tensor, got {type(hx[idx]).__name__}")
        if is_batched and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise RuntimeError("lstm expects two hidden states")
    elif not isinstance(hx, Tensor):
        raise NotATensorError(f"hx must be a Tensor, got {type(hx).__name__}")


def _match_rank(hx, lstm: bool, is_batched: bool, packed: bool):
    """torch.nn's rule: hx must have rank 3 for batched input, 2 for unbatched (then add the batch dim).
    For packed input, torch.nn's LSTM checks nothing in Python and its kernel fails with an
    IndexError on a state of rank below 3 (RNN and GRU check sizes: check_forward_args)."""
    if packed:
        if lstm and min(hx[0].dim(), hx[1].dim()) < 3:
            raise IndexError(
                f"For packed input, hx and cx should be 3-D but got ({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
            )
        return hx
    want = 3 if is_batched else 2
    kind = "batched 3-D" if is_batched else "unbatched 2-D"
    if lstm:
        if hx[0].dim() != want or hx[1].dim() != want:
            raise RuntimeError(
                f"For {kind} input, hx and cx should also be {want}-D but got "
                f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
            )
        return hx if is_batched else (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
    if hx.dim() != want:
        raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got {hx.dim()}-D tensor")
    return hx if is_batched else hx.unsqueeze(1)


def _check_state_dtype(data: Tensor, hx) -> None:
    """torch.nn fails inside its kernels on a state of another dtype or device; say so up front."""
    for state in hx if isinstance(hx, (tuple, list)) else (hx,):
        if state.dtype != data.dtype and not torch.is_autocast_enabled(data.device.type):  # autocast casts
            raise RuntimeError(f"hidden state dtype ({state.dtype}) does not match input dtype ({data.dtype})")
        if state.device != data.device:
            raise RuntimeError(
                f"hidden state is on {state.device} but input is on {data.device}; move them to one device"
            )


class RNN(_FusedStack, nn.RNN):
    __doc__ = "Drop-in for torch.nn.RNN running on fastrnn's kernels.\n\n" + (nn.RNN.__doc__ or "")


class LSTM(_FusedStack, nn.LSTM):
    __doc__ = "Drop-in for torch.nn.LSTM running on fastrnn's kernels.\n\n" + (nn.LSTM.__doc__ or "")


class GRU(_FusedStack, nn.GRU):
    __doc__ = "Drop-in for torch.nn.GRU running on fastrnn's kernels.\n\n" + (nn.GRU.__doc__ or "")
