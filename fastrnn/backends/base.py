"""The contract every backend implements: one recurrent layer, one direction.

Shapes (G = gates per cell: LSTM 4, GRU 3, RNN 1; H = hidden_size;
Hout = proj_size if proj_size > 0 else H; B = batch_sizes[0]):

    x            (N, I)      time-major packed rows, N = sum(batch_sizes).
                             Padded input is the special case batch_sizes = [B] * T.
    batch_sizes  (T,)        int64 on the CPU, non-increasing, batch_sizes[0] = B.
                             At step t only rows 0..batch_sizes[t]-1 are live, so a
                             row that has ended keeps its state: h_n is then simply
                             the state buffer after the last step.
    h0           (B, Hout)
    c0           (B, H)      LSTM only, else None
    w_ih         (G*H, I)    torch.nn's gate order (LSTM i,f,g,o; GRU r,z,n)
    w_hh         (G*H, Hout)
    b_ih, b_hh   (G*H,)      or None when bias=False
    w_hr         (Hout, H)   LSTM with proj_size > 0, else None

    returns y (N, Hout), h_n (B, Hout), c_n (B, H) or None.

`reverse=True` runs time backwards: for packed input the batch then grows, and a
row that joins at step t starts from its h0/c0.

A backend's `layer` must be differentiable with respect to x, h0, c0 and every
weight (through autograd or a registered backward). `supports` returns None when
the backend can serve the call, or a short reason when it declines; the registry
then asks the next backend, so a decline never produces a wrong result.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

from torch import Tensor

MODES = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


class LayerSpec(NamedTuple):
    """What a layer computes; independent of the data it runs on. (A NamedTuple,
    not a frozen dataclass: it is made on every call, and a frozen dataclass
    costs ~0.5 us more to construct.)"""

    mode: str
    input_size: int
    hidden_size: int
    proj_size: int = 0
    bias: bool = True

    @property
    def gates(self) -> int:
        return GATES[self.mode]

    @property
    def out_size(self) -> int:
        return self.proj_size if self.proj_size > 0 else self.hidden_size


class LayerWeights(NamedTuple):
    w_ih: Tensor
    w_hh: Tensor
    b_ih: Optional[Tensor]
    b_hh: Optional[Tensor]
    w_hr: Optional[Tensor]


# The entry of a backward op's output_mask ([dx, (dh0, dc0), parameters'])
# that each of its outputs (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr)
# belongs to.
MASK_ENTRY = (0, 1, 1, 2, 2, 2, 2, 2)


def output_mask(needs_input_grad) -> list[bool]:
    """A backward op's output_mask from the needs_input_grad of a layer op
    whose arguments begin (mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih,
    b_hh, w_hr): fastrnn::layer_fwd and fastrnn::triton_layer_fwd."""
    needs = needs_input_grad
    return [needs[1], any(needs[3:5]), any(needs[5:10])]


class Backend:
    """Base class; subclasses set `name` and implement `supports` and `layer`."""

    name: str = "?"
    # True when available() never changes in a process and supports() answers
    # from the spec, x's device type and x's dtype alone, so that select() may
    # keep its answer for CPU tensors; False where they read more (an
    # environment variable, a package's state).
    static_choice: bool = False

    def available(self) -> Optional[str]:
        """None when usable in this process, else why not (e.g. extension missing)."""
        return None

    def supports(self, spec: LayerSpec, x: Tensor) -> Optional[str]:
        raise NotImplementedError

    def layer(
        self,
        spec: LayerSpec,
        x: Tensor,
        batch_sizes: Tensor,
        h0: Tensor,
        c0: Optional[Tensor],
        weights: LayerWeights,
        reverse: bool,
    ) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        raise NotImplementedError

    def bidirectional_layer(
        self,
        spec: LayerSpec,
        x: Tensor,
        batch_sizes: Tensor,
        h0: tuple[Tensor, Tensor],
        c0: tuple[Optional[Tensor], Optional[Tensor]],
        weights: tuple[LayerWeights, LayerWeights],
    ) -> tuple[tuple[Tensor, Tensor, Optional[Tensor]], ...]:
        """Both directions of one layer over the same input: h0, c0 and weights
        are (forward, reverse) pairs; returns one (y, h_n, c_n) per direction.
        Two `layer` calls unless a backend can run the directions together."""
        return tuple(
            self.layer(spec, x, batch_sizes, h0[d], c0[d], weights[d], d == 1) for d in (0, 1)
        )
