"""The four stages of one time step, shared by the step and persistent kernels.

A stage works on a tile of BLOCK_B batch rows of step t and a tile of columns.
The step kernels run one stage per launch with a grid over column tiles; the
persistent kernels run all stages of every step in one program holding whole
rows (BLOCK_H >= H), with a barrier between stages. Same code, same numbers.

Row buffers (fp32; N packed rows, B = batch_sizes[0]; an "_ext" buffer has B
extra rows after the packed ones holding the initial state / its gradient):
    gx       (N, G*H)       x @ W_ih^T + b_ih for every step (one GEMM outside)
    hs_ext   (N+B, Hout)    h after each row's step; rows N.. hold h0
    cs_ext   (N+B, H)       LSTM c after each row's step; rows N.. hold c0
    ms       (N, H)         LSTM with projection: o * tanh(c) before W_hr
    saved    (N, 4H)        LSTM i,f,g,o / GRU r,z,n,hn (post-activation)
    dht_ext  (N+B, Hout)    grad w.r.t. each row's h; rows N.. become dh0
    dct_ext  (N+B, H)       grad w.r.t. each row's c; rows N.. become dc0
    dg       (N, DG)        pre-activation grads: LSTM i,f,g,o / RNN a (DG = G*H);
                            GRU r,z,n(input part),n(recurrent part) (DG = 4H)
Row n's state input lives at row prev[n] (the same batch row one step earlier
in processing order, or N + b for a row's first step), so variable lengths and
both directions need no repacking: only `prev` differs.
"""
import triton
import triton.language as tl

from .gates import (
    GRU,
    LSTM,
    RNN_TANH,
    gru_backward,
    gru_forward,
    lstm_backward,
    lstm_forward,
    rnn_backward,
    rnn_forward,
)
from .matmul import rows_matmul


@triton.jit
def step_rows(t, sizes_ptr, starts_ptr, prev_ptr, BLOCK_B: tl.constexpr):
    """Rows of this program at step t -> (live count, live mask, packed row, prev row)."""
    bs = tl.load(sizes_ptr + t)
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    live = b < bs
    n = (tl.load(starts_ptr + t) + b).to(tl.int64)
    prev = tl.load(prev_ptr + n, mask=live, other=0)
    return bs, live, n, prev


@triton.jit
def load_tile(ptr, rows, stride, col0, cols, mask):
    return tl.load(ptr + rows[:, None] * stride + col0 + cols[None, :], mask=mask, other=0.0).to(
        tl.float32
    )


@triton.jit
def store_tile(ptr, rows, stride, col0, cols, mask, value):
    tl.store(
        ptr + rows[:, None] * stride + col0 + cols[None, :],
        value.to(ptr.dtype.element_ty),
        mask=mask,
    )


@triton.jit
def load_block(ptr, rows, stride, block, H, cols, mask):
    """Columns cols of the block-th H-wide block (a gate) of rows."""
    return load_tile(ptr, rows, stride, block * H, cols, mask)


@triton.jit
def store_block(ptr, rows, stride, block, H, cols, mask, value):
    store_tile(ptr, rows, stride, block * H, cols, mask, value)


@triton.jit
def add_tile(ptr, rows, stride, cols, mask, value):
    """ptr[rows, cols] += value; callers guarantee no other program touches it."""
    total = load_tile(ptr, rows, stride, 0, cols, mask) + value
    store_tile(ptr, rows, stride, 0, cols, mask, total)


@triton.jit
def recurrent_preact(
    gate, hs_ptr, prev, live, w_hh_ptr, b_hh_ptr, j, j_mask, H, HOUT,
    HAS_BHH: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    """h_prev @ W_hh[gate*H + j]^T + b_hh[gate*H + j]  ->  (BLOCK_B, BLOCK_H)."""
    acc = tl.zeros((BLOCK_B, BLOCK_H), tl.float32)
    acc = rows_matmul(
        acc, hs_ptr, prev, live, HOUT, 0, HOUT,
        w_hh_ptr + gate * H * HOUT, 1, HOUT, j, j_mask, BLOCK_K, PRECISION,
    )
    if HAS_BHH:
        acc += tl.load(b_hh_ptr + gate * H + j, mask=j_mask, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def forward_cell(
    gx_ptr, w_hh_ptr, b_hh_ptr, hs_ptr, cs_ptr, saved_ptr, ms_ptr, y_ptr,
    n, prev, live, j, c_prev, H, HOUT,
    MODE: tl.constexpr, GATES: tl.constexpr, PROJ: tl.constexpr, HAS_BHH: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Gates and state update for hidden columns j; returns c_new (c_prev if not LSTM).

    Writes h (or m before the projection), y, c and the saved activations of rows n.
    """
    j_mask = j < H
    mask = live[:, None] & j_mask[None, :]
    gxs = GATES * H  # row stride of gx
    pre0 = load_block(gx_ptr, n, gxs, 0, H, j, mask) + recurrent_preact(
        0, hs_ptr, prev, live, w_hh_ptr, b_hh_ptr, j, j_mask, H, HOUT,
        HAS_BHH, BLOCK_B, BLOCK_H, BLOCK_K, PRECISION)
    c_new = c_prev
    if MODE == LSTM:
        pre1 = load_block(gx_ptr, n, gxs, 1, H, j, mask) + recurrent_preact(
            1, hs_ptr, prev, live, w_hh_ptr, b_hh_ptr, j, j_mask, H, HOUT,
            HAS_BHH, BLOCK_B, BLOCK_H, BLOCK_K, PRECISION)
        pre2 = load_block(gx_ptr, n, gxs, 2, H, j, mask) + recurrent_preact(
            2, hs_ptr, prev, live, w_hh_ptr, b_hh_ptr, j, j_mask, H, HOUT,
            HAS_BHH, BLOCK_B, BLOCK_H, BLOCK_K, PRECISION)
        pre3 = load_block(gx_ptr, n, gxs, 3, H, j, mask) + recurrent_preact(
            3, hs_ptr, prev, live, w_hh_ptr, b_hh_ptr, j, j_mask, H, HOUT,
            HAS_BHH, BLOCK_B, BLOCK_H, BLOCK_K, PRECISION)
        i, f, g, o, c_new, h_new = lstm_forward(pre0, pre1, pre2, pre3, c_prev)
        store_block(saved_ptr, n, 4 * H, 0, H, j, mask, i)
        store_block(saved_ptr, n, 4 * H, 1, H, j, mask, f)
        store_block(saved_ptr, n, 4 * H, 2, H, j, mask, g)
        store_block(saved_ptr, n, 4 * H, 3, H, j, mask, o)
        store_tile(cs_ptr, n, H, 0, j, mask, c_new)
    elif MODE == GRU:
        pre1 = load_block(gx_ptr, n, gxs, 1, H, j, mask) + recurrent_preact(
            1, hs_ptr, prev, live, w_hh_ptr, b_hh_ptr, j, j_mask, H, HOUT,
            HAS_BHH, BLOCK_B, BLOCK_H, BLOCK_K, PRECISION)
        hn = recurrent_preact(
            2, hs_ptr, prev, live, w_hh_ptr, b_hh_ptr, j, j_mask, H, HOUT,
            HAS_BHH, BLOCK_B, BLOCK_H, BLOCK_K, PRECISION)
        xn = load_block(gx_ptr, n, gxs, 2, H, j, mask)
        r, z, nn, h_new = gru_forward(pre0, pre1, xn, hn, load_tile(hs_ptr, prev, HOUT, 0, j, mask))
        store_block(saved_ptr, n, 4 * H, 0, H, j, mask, r)
        store_block(saved_ptr, n, 4 * H, 1, H, j, mask, z)
        store_block(saved_ptr, n, 4 * H, 2, H, j, mask, nn)
        store_block(saved_ptr, n, 4 * H, 3, H, j, mask, hn)
    else:
        h_new = rnn_forward(pre0, MODE)
    if PROJ:
        store_tile(ms_ptr, n, H, 0, j, mask, h_new)
    else:
        store_tile(hs_ptr, n, HOUT, 0, j, mask, h_new)
        store_tile(y_ptr, n, HOUT, 0, j, mask, h_new)
    return c_new


@triton.jit
def forward_projection(
    ms_ptr, w_hr_ptr, hs_ptr, y_ptr, n, live, cols, H, HOUT,
    BLOCK_B: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """h[n, cols] = m[n] @ W_hr[cols]^T   (W_hr: (Hout, H))."""
    c_mask = cols < HOUT
    acc = tl.zeros((BLOCK_B, BLOCK_O), tl.float32)
    acc = rows_matmul(
        acc, ms_ptr, n, live, H, 0, H, w_hr_ptr, 1, H, cols, c_mask, BLOCK_K, PRECISION)
    mask = live[:, None] & c_mask[None, :]
    store_tile(hs_ptr, n, HOUT, 0, cols, mask, acc)
    store_tile(y_ptr, n, HOUT, 0, cols, mask, acc)


@triton.jit
def backward_cell(
    dht_ptr, w_hr_ptr, saved_ptr, hs_ptr, cs_ptr, dg_ptr, dg_stride,
    n, prev, live, j, dc_next, H, HOUT,
    MODE: tl.constexpr, PROJ: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Pre-activation grads of rows n at columns j; returns dc_prev (dc_next if not LSTM).

    dht[n] must be complete (dy plus everything the later step sent back). GRU
    also adds its direct path z * dh into dht[prev].
    """
    j_mask = j < H
    mask = live[:, None] & j_mask[None, :]
    if PROJ:
        # dm = dh @ W_hr: the grad w.r.t. o * tanh(c) for columns j.
        dh = tl.zeros((BLOCK_B, BLOCK_H), tl.float32)
        dh = rows_matmul(
            dh, dht_ptr, n, live, HOUT, 0, HOUT, w_hr_ptr, H, 1, j, j_mask, BLOCK_K, PRECISION)
    else:
        dh = load_tile(dht_ptr, n, HOUT, 0, j, mask)
    dc_prev = dc_next
    if MODE >= RNN_TANH:  # RNN_TANH or RNN_RELU (gates.py numbers them last)
        h_new = load_tile(hs_ptr, n, HOUT, 0, j, mask)
        store_tile(dg_ptr, n, dg_stride, 0, j, mask, rnn_backward(dh, h_new, MODE))
    else:
        # The four saved gates: LSTM i, f, g, o / GRU r, z, n, hn.
        s0 = load_block(saved_ptr, n, 4 * H, 0, H, j, mask)
        s1 = load_block(saved_ptr, n, 4 * H, 1, H, j, mask)
        s2 = load_block(saved_ptr, n, 4 * H, 2, H, j, mask)
        s3 = load_block(saved_ptr, n, 4 * H, 3, H, j, mask)
        if MODE == LSTM:
            c_prev = load_tile(cs_ptr, prev, H, 0, j, mask)
            c_new = load_tile(cs_ptr, n, H, 0, j, mask)
            d0, d1, d2, d3, dc_prev = lstm_backward(dh, dc_next, s0, s1, s2, s3, c_prev, c_new)
        else:
            h_prev = load_tile(hs_ptr, prev, HOUT, 0, j, mask)
            d0, d1, d2, d3, dh_direct = gru_backward(dh, s0, s1, s2, s3, h_prev)
            add_tile(dht_ptr, prev, HOUT, j, mask, dh_direct)
        store_block(dg_ptr, n, dg_stride, 0, H, j, mask, d0)
        store_block(dg_ptr, n, dg_stride, 1, H, j, mask, d1)
        store_block(dg_ptr, n, dg_stride, 2, H, j, mask, d2)
        store_block(dg_ptr, n, dg_stride, 3, H, j, mask, d3)
    return dc_prev


@triton.jit
def backward_hidden(
    dg_ptr, dg_stride, w_hh_ptr, dht_ptr, n, prev, live, cols, H, HOUT,
    MODE: tl.constexpr, GATES: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dht[prev, cols] += sum_g dg_g[n] @ W_hh_g[:, cols]  (the recurrent grads)."""
    c_mask = cols < HOUT
    acc = tl.zeros((BLOCK_B, BLOCK_O), tl.float32)
    for g in tl.static_range(GATES):
        col0 = g * H
        if MODE == GRU:
            if g == 2:
                col0 = 3 * H  # W_hn multiplies the recurrent part r * dan, not dan
        acc = rows_matmul(
            acc, dg_ptr, n, live, dg_stride, col0, H,
            w_hh_ptr + g * H * HOUT, HOUT, 1, cols, c_mask, BLOCK_K, PRECISION,
        )
    mask = live[:, None] & c_mask[None, :]
    add_tile(dht_ptr, prev, HOUT, cols, mask, acc)
