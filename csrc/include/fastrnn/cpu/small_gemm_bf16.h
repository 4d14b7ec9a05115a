// small_gemm (small_gemm.h) for bfloat16 operands with fp32 accumulation, on
// AVX512-BF16's dot product (vdpbf16ps: per fp32 lane, acc += a0*b0 + a1*b1,
// two bf16 products per lane and instruction, twice the fp32 FMA rate). The
// products of two bf16 values are exact in fp32; only the sums round, as in
// the fp32 kernel. The forward loop of a bfloat16 layer uses it for its
// products (recurrence.h, ForwardArgs::bf16); without AVX512-BF16 at build
// time kBf16Products is false and bfloat16 layers use the fp32 kernel.
//
// Values are bfloat16 bit patterns (uint16_t), so the header needs no
// framework type.
#pragma once

#include <stdint.h>

namespace fastrnn::cpu {

#if defined(__AVX512BF16__)
constexpr bool kBf16Products = true;
#else
constexpr bool kBf16Products = false;
#endif

// A right operand B (K, n), K even, packed in panels of 16 columns; each
// panel holds K/2 rows of 16 lanes x (B[2i, j], B[2i+1, j]): element (k, j)
// at data[((j / 16) * (K / 2) + k / 2) * 32 + (j % 16) * 2 + k % 2]; the last
// panel is zero-padded.
struct PackedBf16 {
  const uint16_t* data;  // packed_size_bf16(K, n) elements, or null for "absent"
  int64_t K, n;
};

// Columns [c0, c0 + n) (c0 a multiple of 16) as a packed operand of its own.
inline PackedBf16 packed_columns(const PackedBf16& B, int64_t c0, int64_t n) {
  return PackedBf16{B.data + c0 * B.K, B.K, n};
}

int64_t packed_size_bf16(int64_t K, int64_t n);

// dst <- W^T packed, for W (n, K) row-major bfloat16 (a weight used as W^T).
void pack_transposed_bf16(const uint16_t* w, int64_t K, int64_t n, uint16_t* dst);

// dst <- B packed, for B (K, n) row-major bfloat16 (a weight used as it is).
void pack_bf16(const uint16_t* b, int64_t K, int64_t n, uint16_t* dst);

// C[r, 0:n] = (accumulate ? C[r, 0:n] : 0) + sum_{k < K} A[r, k] * B[k0 + k, 0:n]
//   A (rows, K) bfloat16 with row stride lda; rows k0 .. k0+K-1 of B (k0, K
//   even); C (rows, B.n) fp32 with row stride ldc. Only with kBf16Products.
void small_gemm_bf16(int64_t rows, const uint16_t* A, int64_t lda, const PackedBf16& B,
                     int64_t k0, int64_t K, float* C, int64_t ldc, bool accumulate);

// dst[0:n] = src[0:n] rounded to bfloat16 as torch rounds float -> bfloat16
// (nearest even; ATen's vectorized conversion).
void to_bf16_row(const float* src, uint16_t* dst, int64_t n);

// dst[0:n] = src[0:n] widened to fp32 (exact).
void from_bf16_row(const uint16_t* src, float* dst, int64_t n);

}  // namespace fastrnn::cpu
