"""One benchmark shape: a torch.nn module, its fastrnn twin with the same weights, and inputs.

Every implementation runs on the SAME input tensor (and, in training, the same
output cotangent); "torch" runs the torch.nn module, any other name runs the
fastrnn twin with that backend selected.

Shapes (T steps, B batch, H hidden = input size, N = tokens):
    padded   data (T, B, H)  time-major; N = T * B
    packed   data (N, H)     PackedSequence rows; lengths ~ U[1, T] with one row of length T,
                             unsorted, as real batches of ragged sentences are
    cells    data (T, B, H)  fed one step per call, the way a decoder loop drives a cell

A training step is forward + backward of out against the fixed cotangent, with
gradients for the input and every parameter (mode training_params: the
parameters only), after setting old ones to None (what optimizer.zero_grad()
does by default). Inference runs under no_grad.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Callable, Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastrnn

from .config import Config

TORCH = "torch"

_STACKS = {"LSTM": "LSTM", "GRU": "GRU", "RNN_TANH": "RNN", "RNN_RELU": "RNN"}


def _module_classes(cfg: Config) -> tuple[type, type, dict]:
    base = _STACKS[cfg.kind] + ("Cell" if cfg.is_cell else "")
    kwargs = {"nonlinearity": "relu" if cfg.kind == "RNN_RELU" else "tanh"} if base.startswith("RNN") else {}
    return getattr(nn, base), getattr(fastrnn, base), kwargs


class Workload:
    def __init__(self, cfg: Config, seed: int = 0):
        self.cfg = cfg
        dtype, device = cfg.torch_dtype, torch.device(cfg.device)
        torch_cls, fastrnn_cls, kwargs = _module_classes(cfg)
        if not cfg.is_cell:
            kwargs.update(num_layers=cfg.layers, bidirectional=cfg.bidirectional)
        torch.manual_seed(seed)
        self.torch_module = torch_cls(cfg.hidden, cfg.hidden, **kwargs).to(device, dtype)
        self.fastrnn_module = fastrnn_cls(cfg.hidden, cfg.hidden, **kwargs).to(device, dtype)
        self.fastrnn_module.load_state_dict(self.torch_module.state_dict())
        for module in (self.torch_module, self.fastrnn_module):
            module.train(cfg.training)

        gen = torch.Generator().manual_seed(seed)
        steps, batch = cfg.seq_len, cfg.batch
        x = torch.randn(steps, batch, cfg.hidden, generator=gen).to(device, dtype)
        self._pack: Optional[PackedSequence] = None
        if cfg.packed:
            lengths = torch.randint(1, steps + 1, (batch,), generator=gen)
            lengths[0] = steps
            self._pack = pack_padded_sequence(x, lengths, enforce_sorted=False)
            x = self._pack.data
            self.tokens = int(lengths.sum())
        else:
            self.tokens = steps * batch
        # A leaf, so the training step can ask for its gradient.
        self.data: Tensor = x.detach().requires_grad_(cfg.input_grad)
        out_rows = (self.tokens,) if cfg.packed else (steps, batch)
        out_size = cfg.hidden * (2 if cfg.bidirectional else 1)
        self.cotangent = torch.randn(*out_rows, out_size, generator=gen).to(device, dtype)
        zeros = torch.zeros(batch, cfg.hidden, device=device, dtype=dtype)
        self._cell_states = (zeros, zeros) if cfg.kind == "LSTM" else (zeros,)

    # -- what one call computes -------------------------------------------------------

    def _forward(self, module: nn.Module, data: Tensor) -> Tensor:
        """The output rows for `data`: (T, B, H) padded/cells, (N, H) packed."""
        if self.cfg.is_cell:
            lstm = self.cfg.kind == "LSTM"
            states = [s.to(data.dtype) for s in self._cell_states]
            state = tuple(states) if lstm else states[0]
            outs = []
            for x_t in data.unbind(0):
                state = module(x_t, state)
                outs.append(state[0] if lstm else state)
            return torch.stack(outs)
        if self._pack is not None:
            pack = self._pack
            out, _ = module(PackedSequence(data, pack.batch_sizes, pack.sorted_indices, pack.unsorted_indices))
            return out.data
        out, _ = module(data)
        return out

    def _module(self, impl: str) -> nn.Module:
        return self.torch_module if impl == TORCH else self.fastrnn_module

    @staticmethod
    def _selected(impl: str):
        return contextlib.nullcontext() if impl == TORCH else fastrnn.use_backend(impl)

    # -- timing -------------------------------------------------------------------

    def step(self, impl: str) -> Callable[[], None]:
        """A zero-argument callable running one inference or training step on `impl`."""
        module, data, cotangent = self._module(impl), self.data, self.cotangent
        forward, selected = self._forward, self._selected
        if not self.cfg.training:
            def run() -> None:
                with selected(impl), torch.no_grad():
                    forward(module, data)
            return run

        params = list(module.parameters())

        def run() -> None:
            data.grad = None
            for p in params:
                p.grad = None
            with selected(impl):
                forward(module, data).backward(cotangent)
        return run

    # -- parity ---------------------------------------------------------------------

    def evaluate(self, impl: str) -> tuple[dict[str, Tensor], str]:
        """Outputs (and, in training, every gradient) in float64, and who computed them."""
        got = self._evaluate(self._module(impl), self.data, impl)
        served = TORCH if impl == TORCH else (self.fastrnn_module.last_backend or "?")
        return got, served

    def truth(self) -> dict[str, Tensor]:
        """torch.nn in float64 on the same (already rounded) weights and inputs: ground truth for half types."""
        return self._evaluate(copy.deepcopy(self.torch_module).double(), self.data.double(), TORCH)

    def _evaluate(self, module: nn.Module, data: Tensor, impl: str) -> dict[str, Tensor]:
        training = self.cfg.training
        data = data.detach().requires_grad_(self.cfg.input_grad)
        module.zero_grad(set_to_none=True)
        with self._selected(impl), torch.set_grad_enabled(training):
            out = self._forward(module, data)
            if training:
                out.backward(self.cotangent.to(out.dtype))
        got = {"out": out}
        if self.cfg.input_grad:
            got["grad_input"] = data.grad
        if training:
            got.update((f"grad_{name}", p.grad) for name, p in module.named_parameters())
        return {name: t.detach().double() for name, t in got.items()}
