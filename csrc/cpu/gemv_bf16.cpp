// Rows times a stored bfloat16 weight or its transpose, or a stored fp32
// weight's transpose (interface and contract: fastrnn/cpu/gemv_bf16.h).
// W^T: blocks of 4 weight rows x 4 rows of A, 16 accumulators over the
// whole K (vdpbf16ps where the build has AVX512-BF16, else W and A widened
// in registers and fp32 FMAs), their lanes summed four at a time; the four
// weight rows (4 x K x 2 bytes, 8 KiB at K = 1024) stay in L1 while every
// block of A rows passes over them.
// W: 64 columns at a time, 4 rows of A in 16 accumulators; each g widens one
// 64-column piece of W's row g (exact: a bfloat16 is the top half of a
// float) and adds A[r, g] times it, an fp32 FMA.
#include "fastrnn/cpu/gemv_bf16.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>

#include "fastrnn/cpu/small_gemm_bf16.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace fastrnn::cpu {

#if defined(__AVX512F__)
namespace {

// The first `count` of 16 lanes (all for count >= 16).
inline __mmask16 first_lanes(int64_t count) {
  return count >= 16 ? __mmask16{0xFFFF} : static_cast<__mmask16>((uint32_t{1} << count) - 1);
}

// 16 bfloat16 values from p[0 : count] (count <= 16) widened to fp32, zeros past the end.
inline __m512 widen(const uint16_t* p, __mmask16 mask) {
  // (The maskz forms: GCC 12's plain ones warn of an uninitialised value.)
  const __m512i bits = _mm512_maskz_cvtepu16_epi32(mask, _mm256_maskz_loadu_epi16(mask, p));
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(mask, bits, 16));
}

// 16 lanes of an fp32 A row, zeros past the mask.
inline __m512 widen(const float* p, __mmask16 mask) { return _mm512_maskz_loadu_ps(mask, p); }

#if defined(__AVX512BF16__)
// 32 bf16 values from p[0 : count] (count <= 32), zeros past the end.
inline __m512bh load_pairs(const uint16_t* p, int64_t count) {
  const __mmask32 mask = count >= 32 ? ~__mmask32{0} : (__mmask32{1} << count) - 1;
  return (__m512bh)_mm512_maskz_loadu_epi16(mask, p);
}
#endif

// The sum of v's 16 lanes (GCC 12's _mm512_reduce_add_ps warns of an
// uninitialised value inside its own header).
inline float sum_lanes(__m512 v) {
  const __m256 s8 = _mm256_add_ps(_mm512_extractf32x8_ps(v, 0), _mm512_extractf32x8_ps(v, 1));
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

// {sum(v0), sum(v1), sum(v2), sum(v3)}: per 128-bit block, v0 and v1 (v2
// and v3) interleaved and added pairwise, then the four side by side, then
// the four blocks added. (maskz forms: GCC 12's plain unpack and shuffle warn
// of an uninitialised value inside its own header.)
inline __m128 sum_lanes4(__m512 v0, __m512 v1, __m512 v2, __m512 v3) {
  constexpr __mmask16 all = 0xFFFF;
  const __m512 s01 = _mm512_add_ps(_mm512_maskz_unpacklo_ps(all, v0, v1),
                                   _mm512_maskz_unpackhi_ps(all, v0, v1));
  const __m512 s23 = _mm512_add_ps(_mm512_maskz_unpacklo_ps(all, v2, v3),
                                   _mm512_maskz_unpackhi_ps(all, v2, v3));
  const __m512 s = _mm512_add_ps(_mm512_maskz_shuffle_ps(all, s01, s23, 0x44),
                                 _mm512_maskz_shuffle_ps(all, s01, s23, 0xEE));
  const __m256 s8 = _mm256_add_ps(_mm512_extractf32x8_ps(s, 0), _mm512_extractf32x8_ps(s, 1));
  return _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
}

// C[r0 + r, j0 + q] for r < A_ROWS, q < W_ROWS (both <= 4): A_ROWS x W_ROWS
// accumulators over the whole K; each chunk of 32 k loads W_ROWS pieces of W
// and A_ROWS of A for A_ROWS x W_ROWS dot products.
// A is bfloat16 (uint16_t) or fp32 (float, the widened loop's h); so is W
// (TW), the pair both bfloat16 or A fp32.
template <int A_ROWS, int W_ROWS, typename TA, typename TW>
void block(const TA* A, int64_t lda, const TW* W, int64_t j0, int64_t K,
           const float* bias, float* C, int64_t ldc) {
  __m512 acc[A_ROWS][W_ROWS];
  for (int r = 0; r < A_ROWS; ++r)
    for (int q = 0; q < W_ROWS; ++q) acc[r][q] = _mm512_setzero_ps();
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<TA, uint16_t>) {
  for (int64_t k = 0; k < K; k += 32) {
    const int64_t count = std::min<int64_t>(32, K - k);
    __m512bh w[W_ROWS];
    for (int q = 0; q < W_ROWS; ++q) w[q] = load_pairs(W + (j0 + q) * K + k, count);
    for (int r = 0; r < A_ROWS; ++r) {
      const __m512bh a = load_pairs(A + r * lda + k, count);
      for (int q = 0; q < W_ROWS; ++q) acc[r][q] = _mm512_dpbf16_ps(acc[r][q], w[q], a);
    }
  }
  } else
#endif
  // Without bf16 dot products, or an fp32 A: 16 k at a time, widened (exact;
  // an fp32 W as loaded), fp32 FMAs.
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 mask = first_lanes(K - k);
    __m512 w[W_ROWS];
    for (int q = 0; q < W_ROWS; ++q) w[q] = widen(W + (j0 + q) * K + k, mask);
    for (int r = 0; r < A_ROWS; ++r) {
      const __m512 a = widen(A + r * lda + k, mask);
      for (int q = 0; q < W_ROWS; ++q) acc[r][q] = _mm512_fmadd_ps(a, w[q], acc[r][q]);
    }
  }
  // Unrolled by request: GCC 12 at -O3 leaves this loop rolled, so acc[r]
  // needs an address, and the loop above then stores all accumulators to the
  // stack on every k (16 stores per 16 FMAs, half the kernel's time;
  // tests/test_codegen.py).
#pragma GCC unroll 4
  for (int r = 0; r < A_ROWS; ++r) {
    float* c = C + r * ldc + j0;
    if constexpr (W_ROWS == 4) {
      const __m128 sums = sum_lanes4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
      _mm_storeu_ps(c, bias ? _mm_add_ps(sums, _mm_loadu_ps(bias + j0)) : sums);
    } else {
      for (int q = 0; q < W_ROWS; ++q) c[q] = sum_lanes(acc[r][q]) + (bias ? bias[j0 + q] : 0.0f);
    }
  }
}

template <int W_ROWS, typename TA, typename TW>
void rows_block(int64_t A_rows, const TA* A, int64_t lda, const TW* W, int64_t j0,
                int64_t K, const float* bias, float* C, int64_t ldc) {
  switch (A_rows) {
    case 1: block<1, W_ROWS>(A, lda, W, j0, K, bias, C, ldc); break;
    case 2: block<2, W_ROWS>(A, lda, W, j0, K, bias, C, ldc); break;
    case 3: block<3, W_ROWS>(A, lda, W, j0, K, bias, C, ldc); break;
    default: block<4, W_ROWS>(A, lda, W, j0, K, bias, C, ldc); break;
  }
}

template <typename TA, typename TW>
void rows_times_wt(int64_t rows, const TA* A, int64_t lda, const TW* W, int64_t n,
                   int64_t K, const float* bias, float* C, int64_t ldc) {
  // Blocks of 4 outputs; a thread's share at least ~64K multiply-adds, so
  // that small products stay on one thread.
  const int64_t blocks = (n + 3) / 4;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, 4 * K * rows));
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t j0 = 4 * b;
      for (int64_t r0 = 0; r0 < rows; r0 += 4) {
        const int64_t a_rows = std::min<int64_t>(4, rows - r0);
        const TA* a = A + r0 * lda;
        float* c = C + r0 * ldc;
        switch (std::min<int64_t>(4, n - j0)) {
          case 1: rows_block<1>(a_rows, a, lda, W, j0, K, bias, c, ldc); break;
          case 2: rows_block<2>(a_rows, a, lda, W, j0, K, bias, c, ldc); break;
          case 3: rows_block<3>(a_rows, a, lda, W, j0, K, bias, c, ldc); break;
          default: rows_block<4>(a_rows, a, lda, W, j0, K, bias, c, ldc); break;
        }
      }
    }
  });
}

}  // namespace

void rows_times_wt_bf16(int64_t rows, const uint16_t* A, int64_t lda, const uint16_t* W,
                        int64_t n, int64_t K, const float* bias, float* C, int64_t ldc) {
  rows_times_wt(rows, A, lda, W, n, K, bias, C, ldc);
}

void rows_times_wt_bf16(int64_t rows, const float* A, int64_t lda, const uint16_t* W, int64_t n,
                        int64_t K, const float* bias, float* C, int64_t ldc) {
  rows_times_wt(rows, A, lda, W, n, K, bias, C, ldc);
}

void rows_times_wt_f32(int64_t rows, const float* A, int64_t lda, const float* W, int64_t n,
                       int64_t K, const float* bias, float* C, int64_t ldc) {
  rows_times_wt(rows, A, lda, W, n, K, bias, C, ldc);
}

namespace {

// C[r0 : r0 + R, i0 : i0 + 16 * V] (masked to n): R rows of A x V vectors of
// W's columns in registers over the whole sum over g.
template <int R, int V>
void column_block(const float* A, int64_t lda, const uint16_t* W, int64_t G, int64_t n,
                  int64_t i0, float* C, int64_t ldc, bool accumulate) {
  __mmask16 mask[V];
  for (int v = 0; v < V; ++v) mask[v] = first_lanes(std::max<int64_t>(n - i0 - 16 * v, 0));
  __m512 acc[R][V];
  // The loops over acc before and after the sum unrolled by request, as in
  // block(): left rolled, they make acc spill on every g.
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v)
      acc[r][v] = accumulate ? _mm512_maskz_loadu_ps(mask[v], C + r * ldc + i0 + 16 * v)
                             : _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    __m512 w[V];
    for (int v = 0; v < V; ++v) w[v] = widen(W + g * n + i0 + 16 * v, mask[v]);
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(A[r * lda + g]);
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(a, w[v], acc[r][v]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) _mm512_mask_storeu_ps(C + r * ldc + i0 + 16 * v, mask[v], acc[r][v]);
}

}  // namespace

void rows_times_w_bf16(int64_t rows, const float* A, int64_t lda, const uint16_t* W, int64_t G,
                       int64_t n, float* C, int64_t ldc, bool accumulate) {
  // Panels of 64 columns (4 vectors); rows in blocks of 4 (16 accumulators).
  constexpr int64_t kCols = 64;
  const int64_t panels = (n + kCols - 1) / kCols;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, kCols * G * rows));
  at::parallel_for(0, panels, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      for (int64_t r0 = 0; r0 < rows; r0 += 4) {
        const float* a = A + r0 * lda;
        float* c = C + r0 * ldc;
        switch (std::min<int64_t>(4, rows - r0)) {
          case 1: column_block<1, 4>(a, lda, W, G, n, p * kCols, c, ldc, accumulate); break;
          case 2: column_block<2, 4>(a, lda, W, G, n, p * kCols, c, ldc, accumulate); break;
          case 3: column_block<3, 4>(a, lda, W, G, n, p * kCols, c, ldc, accumulate); break;
          default: column_block<4, 4>(a, lda, W, G, n, p * kCols, c, ldc, accumulate); break;
        }
      }
    }
  });
}
#else
void rows_times_wt_bf16(int64_t, const uint16_t*, int64_t, const uint16_t*, int64_t, int64_t,
                        const float*, float*, int64_t) {}
void rows_times_wt_bf16(int64_t, const float*, int64_t, const uint16_t*, int64_t, int64_t,
                        const float*, float*, int64_t) {}
void rows_times_wt_f32(int64_t, const float*, int64_t, const float*, int64_t, int64_t,
                       const float*, float*, int64_t) {}
void rows_times_w_bf16(int64_t, const float*, int64_t, const uint16_t*, int64_t, int64_t, float*,
                       int64_t, bool) {}
#endif

}  // namespace fastrnn::cpu
