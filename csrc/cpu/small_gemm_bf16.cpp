// bfloat16-operand small GEMM (interface and contract: fastrnn/cpu/small_gemm_bf16.h).
// The same register blocking as small_gemm.cpp: a block of R rows x NB
// vectors of C stays in registers for the whole reduction; each k pair loads
// NB packed vectors once and broadcasts one (A[r, 2i], A[r, 2i+1]) pair per row.
#include "fastrnn/cpu/small_gemm_bf16.h"
#include "fastrnn/cpu/transpose.h"

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstring>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

namespace fastrnn::cpu {

int64_t packed_size_bf16(int64_t K, int64_t n) { return (n + 15) / 16 * 16 * K; }

void pack_transposed_bf16(const uint16_t* w, int64_t K, int64_t n, uint16_t* dst) {
  // A panel is the transpose of 16 rows of W read as K/2 32-bit pairs: the
  // 16x16 float transpose moves those words unchanged (no arithmetic).
  const int64_t pairs = K / 2;
  if (n % 16 != 0) {
    uint16_t* last = dst + (n / 16) * 16 * K;
    std::fill(last, last + 16 * K, uint16_t{0});
  }
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    const int64_t width = std::min<int64_t>(16, n - j0);
    transpose_matrix<float>(reinterpret_cast<const float*>(w + j0 * K), pairs,
                            reinterpret_cast<float*>(dst + j0 * K), 16, width, pairs);
  }
}

void pack_bf16(const uint16_t* b, int64_t K, int64_t n, uint16_t* dst) {
  // Lane j of pair i holds (B[2i, j], B[2i+1, j]): two rows interleaved.
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    uint16_t* panel = dst + j0 * K;
    const int64_t width = std::min<int64_t>(16, n - j0);
    for (int64_t i = 0; i < K / 2; ++i) {
      uint16_t* out = panel + i * 32;
      const uint16_t* even = b + 2 * i * n + j0;
      for (int64_t j = 0; j < 16; ++j) {
        out[2 * j] = j < width ? even[j] : uint16_t{0};
        out[2 * j + 1] = j < width ? even[n + j] : uint16_t{0};
      }
    }
  }
}

void to_bf16_row(const float* src, uint16_t* dst, int64_t n) {
  at::vec::convert(src, reinterpret_cast<c10::BFloat16*>(dst), n);
}

void from_bf16_row(const uint16_t* src, float* dst, int64_t n) {
  at::vec::convert(reinterpret_cast<const c10::BFloat16*>(src), dst, n);
}

#if defined(__AVX512BF16__)
namespace {

constexpr int kMaxRows = 8;

template <int R, int NB>
void block(int64_t pairs, const uint16_t* A, int64_t lda, const uint16_t* Bp,
           int64_t panel_stride, float* C, int64_t ldc, int64_t n_valid, bool accumulate) {
  __m512 acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NB; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t i = 0; i < pairs; ++i) {
    __m512i b[NB];
    for (int v = 0; v < NB; ++v) b[v] = _mm512_loadu_si512(Bp + v * panel_stride + i * 32);
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      memcpy(&pair, A + r * lda + 2 * i, sizeof pair);
      const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
      for (int v = 0; v < NB; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], a, (__m512bh)b[v]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < NB; ++v) {
      const int64_t count = std::min<int64_t>(16, n_valid - v * 16);
      if (count <= 0) break;
      const __mmask16 mask = static_cast<__mmask16>((1u << count) - 1u);
      float* c = C + r * ldc + v * 16;
      __m512 out = acc[r][v];
      if (accumulate) out = _mm512_add_ps(out, _mm512_maskz_loadu_ps(mask, c));
      _mm512_mask_storeu_ps(c, mask, out);
    }
  }
}

// Pairs [k0 / 2, (k0 + K) / 2) of the panels from panel p on, NB at a time.
template <int R, int NB>
int64_t blocks(const uint16_t* A, int64_t lda, const PackedBf16& B, int64_t k0, int64_t K,
               float* C, int64_t ldc, bool accumulate, int64_t p) {
  const int64_t panels = (B.n + 15) / 16, stride = B.K * 16;
  for (; p + NB <= panels; p += NB)
    block<R, NB>(K / 2, A, lda, B.data + p * stride + k0 * 16, stride, C + p * 16, ldc,
                 std::min<int64_t>(NB * 16, B.n - p * 16), accumulate);
  return p;
}

template <int R>
void row_block(const uint16_t* A, int64_t lda, const PackedBf16& B, int64_t k0, int64_t K,
               float* C, int64_t ldc, bool accumulate) {
  constexpr int NB = R <= 2 ? 8 : R <= 4 ? 4 : 2;
  int64_t p = blocks<R, NB>(A, lda, B, k0, K, C, ldc, accumulate, 0);
  if constexpr (NB > 4) p = blocks<R, 4>(A, lda, B, k0, K, C, ldc, accumulate, p);
  if constexpr (NB > 2) p = blocks<R, 2>(A, lda, B, k0, K, C, ldc, accumulate, p);
  blocks<R, 1>(A, lda, B, k0, K, C, ldc, accumulate, p);
}

}  // namespace

void small_gemm_bf16(int64_t rows, const uint16_t* A, int64_t lda, const PackedBf16& B,
                     int64_t k0, int64_t K, float* C, int64_t ldc, bool accumulate) {
  for (int64_t r = 0; r < rows; r += kMaxRows) {
    const uint16_t* a = A + r * lda;
    float* c = C + r * ldc;
    switch (std::min<int64_t>(kMaxRows, rows - r)) {
      case 1: row_block<1>(a, lda, B, k0, K, c, ldc, accumulate); break;
      case 2: row_block<2>(a, lda, B, k0, K, c, ldc, accumulate); break;
      case 3: row_block<3>(a, lda, B, k0, K, c, ldc, accumulate); break;
      case 4: row_block<4>(a, lda, B, k0, K, c, ldc, accumulate); break;
      case 5: row_block<5>(a, lda, B, k0, K, c, ldc, accumulate); break;
      case 6: row_block<6>(a, lda, B, k0, K, c, ldc, accumulate); break;
      case 7: row_block<7>(a, lda, B, k0, K, c, ldc, accumulate); break;
      default: row_block<8>(a, lda, B, k0, K, c, ldc, accumulate); break;
    }
  }
}
#else
void small_gemm_bf16(int64_t, const uint16_t*, int64_t, const PackedBf16&, int64_t, int64_t,
                     float*, int64_t, bool) {}
#endif

}  // namespace fastrnn::cpu
