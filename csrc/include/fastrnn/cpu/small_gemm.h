// Register-blocked GEMM for the per-step products of a recurrence, where the
// left operand has few rows (a batch tile) and the right operand (a weight
// matrix) is reused every step, so it is packed once per call into the layout
// the kernel streams. No allocation, no threading in the products (the caller
// owns both), no dispatch overhead: at B <= 8 this beats a BLAS call per step.
#pragma once

#include <stdint.h>

namespace fastrnn::cpu {

// A right operand B (K, n) packed in column panels one SIMD vector (V lanes of
// S) wide: each panel is K x V contiguous, so the kernel reads every panel as
// one sequential stream (a row-major B read column block by column block
// strides by a whole row per k, which defeated the prefetcher and aliased in
// L1: 4x slower at K = 256). Element (k, j) lives at
// data[((j / V) * K + k) * V + j % V]; the last panel is zero-padded.
template <typename S>
struct Packed {
  const S* data;  // packed_size(K, n) elements from pack_rhs, or null for "absent"
  int64_t K, n;
};

// Columns [c0, c0 + n) of a packed operand as a packed operand of its own;
// c0 must be a multiple of the vector width (a panel boundary).
template <typename S>
Packed<S> packed_columns(const Packed<S>& B, int64_t c0, int64_t n) {
  return Packed<S>{B.data + c0 * B.K, B.K, n};
}

// Elements of the packed form of a (K, n) matrix.
template <typename S>
int64_t packed_size(int64_t K, int64_t n);

// dst <- B packed, B (K, n) read from src:
//   transpose = false: src is B, (K, n) row-major;
//   transpose = true:  src is B^T, (n, K) row-major (e.g. W_hh (G*H, Hout)
//                      packed as B = W_hh^T for h @ W_hh^T).
template <typename S>
void pack_rhs(const S* src, int64_t K, int64_t n, bool transpose, S* dst);

// C[r, 0:n] = (accumulate ? C[r, 0:n] : 0) + sum_{k < K} op(A)[r, k] * B[k0 + k, 0:n]
//   op(A) (rows, K): A with row stride lda, or, a_transposed, the transpose of
//   A (K, rows) with row stride lda (e.g. dG^T for a weight gradient, read
//   without copying); B packed, rows k0 .. k0+K-1 used;
//   C (rows, B.n) with row stride ldc. Any rows >= 0.
template <typename S>
void small_gemm(int64_t rows, const S* A, int64_t lda, const Packed<S>& B, int64_t k0, int64_t K,
                S* C, int64_t ldc, bool accumulate, bool a_transposed = false);

}  // namespace fastrnn::cpu
