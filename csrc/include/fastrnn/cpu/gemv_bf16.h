// A few rows times a bfloat16 weight or its transpose, reading the weight in
// the layout it is stored in: the products of a bfloat16 single step (a
// cell) with few rows; and the same for a float32 weight's transpose (a
// float32 loop's step product without packing W_hh). Nothing is packed, so nothing is paid per call but one read
// of W: at B = 1 an LSTMCell's 1 x 256 by 256 x 1024 product takes ~10 us,
// where ATen's bfloat16 matmul (a oneDNN primitive, its weight reordered each
// call) takes ~55 us on the Emerald Rapids Xeon (docs/cpu_kernels.md,
// "bfloat16 cells"). Per output, AVX512-BF16's vdpbf16ps sums pairs of exact
// bf16 products in fp32 lanes over K, then the lanes are added; an AVX-512
// build without AVX512-BF16 (Skylake-SP to Ice Lake) widens W and A in
// registers (exact) and sums their products with fp32 FMAs instead.
//
// Values are bfloat16 bit patterns (uint16_t), so the header needs no
// framework type.
#pragma once

#include <stdint.h>

namespace fastrnn::cpu {

// Whether this build has the kernels below (AVX-512).
#if defined(__AVX512F__)
constexpr bool kBf16RowsKernels = true;
#else
constexpr bool kBf16RowsKernels = false;
#endif

// C[r, j] = bias[j] + sum_{k < K} A[r, k] * W[j, k]   for r < rows, j < n
//   A (rows, K) bfloat16, row stride lda; W (n, K) bfloat16 row-major, as a
//   Linear weight is stored; bias (n) fp32 or null for none; C (rows, n)
//   fp32, row stride ldc. Any K (a masked tail). Threads share the columns
//   (at::parallel_for). Only with kBf16RowsKernels.
void rows_times_wt_bf16(int64_t rows, const uint16_t* A, int64_t lda, const uint16_t* W,
                        int64_t n, int64_t K, const float* bias, float* C, int64_t ldc);

// The same for an fp32 A (a widened bfloat16 layer's h_{t-1}), W still
// bfloat16 as stored: W widened in registers, fp32 FMAs (any AVX-512).
void rows_times_wt_bf16(int64_t rows, const float* A, int64_t lda, const uint16_t* W, int64_t n,
                        int64_t K, const float* bias, float* C, int64_t ldc);

// The same for an fp32 A and an fp32 W (a float32 layer's step product
// h_{t-1} @ W_hh^T with W_hh as stored, nothing packed per call; with
// hidden slices, a slice's rows of W_hh): each output sums its K products in
// 16 fp32 lanes, then the lanes, so not in the packed blocks' order.
void rows_times_wt_f32(int64_t rows, const float* A, int64_t lda, const float* W, int64_t n,
                       int64_t K, const float* bias, float* C, int64_t ldc);

// C[r, i] = (accumulate ? C[r, i] : 0) + sum_{g < G} A[r, g] * W[g, i]
//   for r < rows, i < n: the backward's dx = dG @ W_ih and dh = dG @ W_hh.
//   A (rows, G) fp32 (dG, not rounded), row stride lda; W (G, n) bfloat16
//   row-major as stored, widened in registers (exact); C (rows, n) fp32,
//   row stride ldc. Threads share the columns. Only with kBf16RowsKernels.
void rows_times_w_bf16(int64_t rows, const float* A, int64_t lda, const uint16_t* W, int64_t G,
                       int64_t n, float* C, int64_t ldc, bool accumulate);

}  // namespace fastrnn::cpu
