"""The one matmul shape every kernel needs: gathered rows times a weight tile.

    acc[m, n] += sum_k  src[rows[m], col0 + k] * W[k, cols[n]]      k in [0, K)

src is an fp32 row buffer (hidden states, gate grads) addressed through a row
index, so packed sequences, h0 fallback rows and the reverse direction are all
just different `rows`. W is addressed by strides, so one helper serves W_hh^T
(forward, stride_k = 1) and W_hh (backward, stride_n = 1) without copies.

Both operands are upcast to fp32 before tl.dot: fp32 state must not be rounded
to bf16, and bf16/fp16 weights are exact in tf32, so PRECISION="tf32" for half
inputs loses nothing on the weight side. Tile sizes are >= 16 (tl.dot's minimum
on GPUs); masks make any K, row count or column count valid.
"""
import triton
import triton.language as tl


@triton.jit
def rows_matmul(
    acc,
    src_ptr,
    rows,
    row_mask,
    src_stride,
    col0,
    K,
    w_ptr,
    w_stride_k,
    w_stride_n,
    cols,
    col_mask,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        a = tl.load(
            src_ptr + rows[:, None] * src_stride + col0 + ks[None, :],
            mask=row_mask[:, None] & k_mask[None, :],
            other=0.0,
        )
        w = tl.load(
            w_ptr + ks[:, None] * w_stride_k + cols[None, :] * w_stride_n,
            mask=k_mask[:, None] & col_mask[None, :],
            other=0.0,
        )
        acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc, input_precision=PRECISION)
    return acc
