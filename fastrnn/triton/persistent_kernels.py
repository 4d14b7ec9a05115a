"""Persistent kernels: one launch per layer and direction loops over all steps.

Grid (row tiles,). Each program owns BLOCK_B batch rows and the whole hidden
dimension (BLOCK_H >= H, BLOCK_O >= Hout), so a step needs no other program's
results and the only synchronisation is a CTA barrier between stages. The cell
state c (forward) and its gradient dc (backward) live in registers for the
whole sequence; h and dh are kept in their fp32 row buffers because tl.dot
consumes them in K-chunks that registers cannot be sliced into (the rows were
just written by this program, so they are read back from L1/L2). W_hh is
re-read every step and stays L2-resident. Suited to small batches and long
sequences, where step launches would dominate. Register use grows with
GATES * BLOCK_H; launch.py enforces the limit.
"""
import triton
import triton.language as tl

from .gates import LSTM
from .stages import backward_cell, backward_hidden, forward_cell, forward_projection, load_tile
from .stages import step_rows, store_tile


@triton.jit
def forward_persistent_kernel(
    T, N, sizes_ptr, starts_ptr, prev_ptr,
    gx_ptr, w_hh_ptr, b_hh_ptr, w_hr_ptr, hs_ptr, cs_ptr, saved_ptr, ms_ptr, y_ptr, H, HOUT,
    REVERSE: tl.constexpr, MODE: tl.constexpr, GATES: tl.constexpr, PROJ: tl.constexpr,
    HAS_BHH: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    j = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_O)
    c = tl.zeros((BLOCK_B, BLOCK_H), tl.float32)
    if MODE == LSTM:
        first = (b < tl.load(sizes_ptr))[:, None] & (j < H)[None, :]
        c = load_tile(cs_ptr, N + b.to(tl.int64), H, 0, j, first)  # c0 rows
    for s in range(T):
        if REVERSE:
            t = T - 1 - s
        else:
            t = s
        bs, live, n, prev = step_rows(t, sizes_ptr, starts_ptr, prev_ptr, BLOCK_B)
        c_new = forward_cell(
            gx_ptr, w_hh_ptr, b_hh_ptr, hs_ptr, cs_ptr, saved_ptr, ms_ptr, y_ptr,
            n, prev, live, j, c, H, HOUT,
            MODE, GATES, PROJ, HAS_BHH, BLOCK_B, BLOCK_H, BLOCK_K, PRECISION,
        )
        c = tl.where(live[:, None], c_new, c)  # rows past the live count keep their state
        if PROJ:
            tl.debug_barrier()  # every column of m written before W_hr reads whole rows
            forward_projection(ms_ptr, w_hr_ptr, hs_ptr, y_ptr, n, live, cols, H, HOUT,
                               BLOCK_B, BLOCK_O, BLOCK_K, PRECISION)
        tl.debug_barrier()  # h rows of step t complete before step t+1 reads them


@triton.jit
def backward_persistent_kernel(
    T, N, sizes_ptr, starts_ptr, prev_ptr,
    dht_ptr, w_hh_ptr, w_hr_ptr, saved_ptr, hs_ptr, cs_ptr, dg_ptr, dg_stride,
    dcn_ptr, dc0_ptr, H, HOUT,
    REVERSE: tl.constexpr, MODE: tl.constexpr, GATES: tl.constexpr, PROJ: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_O: tl.constexpr,
    BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    """Runs the steps in the opposite order to the forward pass."""
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    j = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_O)
    first = (b < tl.load(sizes_ptr))[:, None] & (j < H)[None, :]
    dc = tl.zeros((BLOCK_B, BLOCK_H), tl.float32)
    if MODE == LSTM:
        dc = load_tile(dcn_ptr, b, H, 0, j, first)  # grad of c_n
    for s in range(T):
        if REVERSE:
            t = s
        else:
            t = T - 1 - s
        bs, live, n, prev = step_rows(t, sizes_ptr, starts_ptr, prev_ptr, BLOCK_B)
        dc_prev = backward_cell(
            dht_ptr, w_hr_ptr, saved_ptr, hs_ptr, cs_ptr, dg_ptr, dg_stride,
            n, prev, live, j, dc, H, HOUT,
            MODE, PROJ, BLOCK_B, BLOCK_H, BLOCK_K, PRECISION,
        )
        dc = tl.where(live[:, None], dc_prev, dc)
        tl.debug_barrier()  # gate grads of whole rows written before the matmul reads them
        backward_hidden(dg_ptr, dg_stride, w_hh_ptr, dht_ptr, n, prev, live, cols, H, HOUT,
                        MODE, GATES, BLOCK_B, BLOCK_O, BLOCK_K, PRECISION)
        tl.debug_barrier()  # dh of the next rows complete before they are read
    if MODE == LSTM:
        store_tile(dc0_ptr, b, H, 0, j, first, dc)
