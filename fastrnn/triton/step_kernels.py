"""Step kernels: one launch per time step and stage, grid (row tiles, column tiles).

Parallel over hidden columns as well as rows, so they suit large hidden sizes
and large batches; the per-step launches are the price. A step has two stages
(forward: cell, then the LSTM projection; backward: cell grads, then the
recurrent matmul), each needing whole rows of the one before, hence a launch
per stage selected by STAGE. The grid always covers batch_sizes[0] rows;
programs whose rows are all past this step's live count exit at once, so the
launch shape never depends on t (graph-capture friendly).
"""
import triton
import triton.language as tl

from . import stages
from .gates import LSTM

CELL = tl.constexpr(0)  # STAGE values
MATMUL = tl.constexpr(1)  # the projection (forward) / dh_prev (backward)


@triton.jit
def forward_step_kernel(
    t, sizes_ptr, starts_ptr, prev_ptr,
    gx_ptr, w_hh_ptr, b_hh_ptr, w_hr_ptr, hs_ptr, cs_ptr, saved_ptr, ms_ptr, y_ptr, H, HOUT,
    STAGE: tl.constexpr, MODE: tl.constexpr, GATES: tl.constexpr, PROJ: tl.constexpr,
    HAS_BHH: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    """STAGE CELL: columns are hidden units; MATMUL: columns of h = m @ W_hr^T."""
    bs, live, n, prev = stages.step_rows(t, sizes_ptr, starts_ptr, prev_ptr, BLOCK_B)
    if tl.program_id(0) * BLOCK_B >= bs:
        return
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    if STAGE == CELL:
        c_prev = tl.zeros((BLOCK_B, BLOCK_N), tl.float32)
        if MODE == LSTM:
            c_prev = stages.load_tile(cs_ptr, prev, H, 0, cols, live[:, None] & (cols < H)[None, :])
        stages.forward_cell(
            gx_ptr, w_hh_ptr, b_hh_ptr, hs_ptr, cs_ptr, saved_ptr, ms_ptr, y_ptr,
            n, prev, live, cols, c_prev, H, HOUT,
            MODE, GATES, PROJ, HAS_BHH, BLOCK_B, BLOCK_N, BLOCK_K, PRECISION,
        )
    else:
        stages.forward_projection(ms_ptr, w_hr_ptr, hs_ptr, y_ptr, n, live, cols, H, HOUT,
                                  BLOCK_B, BLOCK_N, BLOCK_K, PRECISION)


@triton.jit
def backward_step_kernel(
    t, sizes_ptr, starts_ptr, prev_ptr,
    dht_ptr, w_hh_ptr, w_hr_ptr, saved_ptr, hs_ptr, cs_ptr, dct_ptr, dg_ptr, dg_stride, H, HOUT,
    STAGE: tl.constexpr, MODE: tl.constexpr, GATES: tl.constexpr, PROJ: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """STAGE CELL: columns are hidden units; MATMUL: columns of dh_prev."""
    bs, live, n, prev = stages.step_rows(t, sizes_ptr, starts_ptr, prev_ptr, BLOCK_B)
    if tl.program_id(0) * BLOCK_B >= bs:
        return
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    if STAGE == CELL:
        mask = live[:, None] & (cols < H)[None, :]
        dc_next = tl.zeros((BLOCK_B, BLOCK_N), tl.float32)
        if MODE == LSTM:
            dc_next = stages.load_tile(dct_ptr, n, H, 0, cols, mask)
        dc_prev = stages.backward_cell(
            dht_ptr, w_hr_ptr, saved_ptr, hs_ptr, cs_ptr, dg_ptr, dg_stride,
            n, prev, live, cols, dc_next, H, HOUT,
            MODE, PROJ, BLOCK_B, BLOCK_N, BLOCK_K, PRECISION,
        )
        if MODE == LSTM:
            # Each row's state has one consumer, so a plain store suffices.
            stages.store_tile(dct_ptr, prev, H, 0, cols, mask, dc_prev)
    else:
        stages.backward_hidden(dg_ptr, dg_stride, w_hh_ptr, dht_ptr, n, prev, live, cols,
                               H, HOUT, MODE, GATES, BLOCK_B, BLOCK_N, BLOCK_K, PRECISION)
