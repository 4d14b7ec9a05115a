// The large one-off products around a layer's time loop: the input projection
// of all tokens before it; dx, dW_ih, dW_hh and dW_hr after the backward loop.
//
// They run on small_gemm's register blocks rather than BLAS: on this project's
// AMD Zen 4 machine (1 thread, N = 4096 tokens, G*H = 512, I = 128) the input
// projection and dx run at 102-109 GFLOP/s where MKL's sgemm reaches 85-90;
// the weight gradients read dG^T in place (small_gemm's a_transposed) at
// MKL's rate (86-87) or better, with no transposed copy of dG, except where
// dG's rows are 4 KiB or longer: there 128 x 256 blocks of it are transposed
// on the way (gemm.cpp), 104-106 GFLOP/s at G*H = 4096, I = 1024 against
// MKL's 101.
// Threads split the rows of C; K is walked in slices whose packed rows stay in
// L2 while every row block of a thread reuses them.
#pragma once

#include <stdint.h>

#include "fastrnn/cpu/small_gemm.h"

namespace fastrnn::cpu {

// C (M, n) = (accumulate ? C : 0) + op(A) @ op(B), row stride of C ldc:
//   op(A) (M, K): A (M, K) with row stride lda, or, a_transposed, A^T for
//                 A (K, M) with row stride lda;
//   op(B) (K, n): B (K, n) contiguous, or, b_transposed, B^T for B (n, K)
//                 contiguous (a weight W (n, K) used as W^T).
// Uses at::parallel_for; inside a parallel region it runs on the caller's thread.
template <typename S>
void gemm(int64_t M, int64_t n, int64_t K, const S* A, int64_t lda, bool a_transposed,
          const S* B, bool b_transposed, S* C, int64_t ldc, bool accumulate);

// The same with op(B) (B.K, B.n) packed by the caller (pack_rhs), for a
// right operand used by several products.
template <typename S>
void gemm(int64_t M, const S* A, int64_t lda, bool a_transposed, const Packed<S>& B, S* C,
          int64_t ldc, bool accumulate);

// acc (n) += the sums of the columns of A (M, n), row stride lda: the bias
// gradients, sums over tokens of dG. Each column is added up in row order in
// double (for float, more accurate than a float cascade over ~1e5 rows), so
// the result does not depend on the thread count. Threads split the columns.
template <typename S>
void add_column_sums(int64_t M, int64_t n, const S* A, int64_t lda, double* acc);

}  // namespace fastrnn::cpu
