"""Host-side planning: which family, which tiles, which rows feed which.

Everything here is plain Python on small CPU tensors; nothing launches.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
from torch import Tensor

from ..backends.base import GATES
from .gates import MODE_IDS

FAMILIES = ("auto", "step", "persistent")

# Register budgets below are what ptxas reports without spills for sm_90 (run
# `python -m fastrnn.triton.aot_check`). They depend on the tl.dot precision, not
# the storage dtype: TF32 dots run on tensor cores, IEEE fp32 dots on FMA units
# with register-hungrier layouts. IEEE is float32's default; TF32 serves
# bfloat16, float16 and float32 under allow_tf32 (see precision()).
STEP_BLOCK_N = 32  # hidden / output columns per step-kernel program
STEP_BLOCK_K = 32  # reduction chunk of the step kernels' tl.dot
STEP_MAX_BLOCK_B = {"tf32": 64, "ieee": 32}  # tallest row tile per step program
PERSISTENT_BLOCK_B = 16  # rows per persistent program: small, to spread rows over SMs
# The persistent kernels' weight chunk is BLOCK_K x pow2(H) registers: keep it short.
PERSISTENT_BLOCK_K = 16
PERSISTENT_WARPS = 8
# A persistent program holds GATES accumulators of 16 x pow2(H) fp32 values plus
# c, a weight chunk and the stage's row tiles, so its hidden size is bounded.
PERSISTENT_MAX_HIDDEN = {
    "tf32": {"LSTM": 128, "GRU": 128, "RNN_TANH": 512, "RNN_RELU": 512},
    "ieee": {"LSTM": 64, "GRU": 64, "RNN_TANH": 128, "RNN_RELU": 128},
}
# Below this many batch rows a step launch has too few programs to fill a GPU,
# so launch latency dominates and the persistent kernel wins when it fits.
PERSISTENT_MAX_BATCH = 64


def pow2(n: int) -> int:
    """Smallest power of two >= n, and >= 16 (tl.dot's minimum tile side)."""
    return max(16, triton.next_power_of_2(n))


def precision(dtype: torch.dtype) -> str:
    """tl.dot precision. fp32 is IEEE unless the user allowed TF32 for matmuls;
    bf16/fp16 weights are exact in TF32, so TF32 only rounds the fp32 state,
    less than torch's own half-precision matmul does."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def persistent_fits(mode: str, hidden: int, dtype: torch.dtype) -> bool:
    """The projection's output size is below hidden (torch.nn requires it), so
    the hidden size alone decides."""
    return hidden <= PERSISTENT_MAX_HIDDEN[precision(dtype)][mode]


def choose_family(family: str, mode: str, batch: int, hidden: int, dtype: torch.dtype) -> str:
    """`family` as asked; "auto" follows FASTRNN_TRITON_FAMILY (step | persistent,
    a preference that falls back to step where persistent does not fit), else
    the heuristic."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    fits = persistent_fits(mode, hidden, dtype)
    if family == "persistent" and not fits:
        raise ValueError(
            f"hidden size {hidden} exceeds the persistent {mode} kernel's limit for {dtype}"
        )
    if family != "auto":
        return family
    preferred = os.environ.get("FASTRNN_TRITON_FAMILY", "auto")
    if preferred not in FAMILIES:
        raise ValueError(f"FASTRNN_TRITON_FAMILY must be one of {FAMILIES}, got {preferred!r}")
    if preferred == "auto":
        return "persistent" if fits and batch <= PERSISTENT_MAX_BATCH else "step"
    return "persistent" if preferred == "persistent" and fits else "step"


@dataclass(frozen=True)
class Tiling:
    family: str
    block_b: int  # batch rows per program
    block_h: int  # hidden columns per program (cell stages)
    block_o: int  # output columns per program (projection / dh_prev stages)
    block_k: int  # reduction chunk of tl.dot
    num_warps: int

    def grid(self, batch: int, columns: int = 1) -> tuple[int, ...]:
        rows = triton.cdiv(batch, self.block_b)
        if self.family == "persistent":
            return (rows,)
        return (rows, triton.cdiv(columns, self.block_h))


def tiling(
    family: str, mode: str, batch: int, hidden: int, out: int, dtype: torch.dtype
) -> Tiling:
    family = choose_family(family, mode, batch, hidden, dtype)
    if family == "persistent":
        return Tiling(family, PERSISTENT_BLOCK_B, pow2(hidden), pow2(out), PERSISTENT_BLOCK_K,
                      PERSISTENT_WARPS)
    # Taller row tiles re-read each weight tile less often once the batch allows.
    block_b = min(STEP_MAX_BLOCK_B[precision(dtype)], pow2(batch))
    return Tiling(family, block_b, STEP_BLOCK_N, STEP_BLOCK_N, STEP_BLOCK_K,
                  8 if block_b >= 32 else 4)


def kernel_constants(mode: str, dtype: torch.dtype, tile: Tiling, proj: bool) -> dict:
    """Compile-time arguments every kernel of one layer shares (num_warps included)."""
    return dict(
        MODE=MODE_IDS[mode], GATES=GATES[mode], PROJ=proj, BLOCK_B=tile.block_b,
        BLOCK_K=tile.block_k, PRECISION=precision(dtype), num_warps=tile.num_warps,
    )


@dataclass
class RowMaps:
    """Where each packed row's state comes from, on the kernels' device.

    prev[n]: row holding the state that packed row n consumes (N + b for a row's
    first step); final[b]: packed row of batch row b's last step.
    """

    T: int
    N: int
    B: int
    sizes: Tensor  # (T,) int32
    starts: Tensor  # (T,) int32
    prev: Tensor  # (N,) int64
    final: Tensor  # (B,) int64

    def steps(self, reverse: bool) -> range:
        """Time steps in the order the forward pass runs them."""
        return range(self.T - 1, -1, -1) if reverse else range(self.T)


def row_maps(batch_sizes: Tensor, reverse: bool, device: torch.device) -> RowMaps:
    sizes = batch_sizes.to("cpu", torch.int64)
    T, B, N = sizes.numel(), int(sizes[0]), int(sizes.sum())
    starts = torch.cumsum(sizes, 0) - sizes
    step = torch.repeat_interleave(torch.arange(T), sizes)
    b = torch.arange(N) - starts[step]
    lengths = (sizes[None, :] > torch.arange(B)[:, None]).sum(1)
    if reverse:
        # Row b of step t continues from step t + 1 if it was live there.
        nxt = (step + 1).clamp(max=T - 1)
        carried = (step + 1 < T) & (b < sizes[nxt])
        prev = torch.where(carried, starts[nxt] + b, N + b)
        final = torch.arange(B)
    else:
        # Batch sizes never grow, so row b of step t > 0 was live at t - 1.
        prv = (step - 1).clamp(min=0)
        prev = torch.where(step > 0, starts[prv] + b, N + b)
        final = starts[lengths - 1] + torch.arange(B)
    return RowMaps(
        T, N, B,
        sizes.to(device, torch.int32), starts.to(device, torch.int32),
        prev.to(device), final.to(device),
    )
