// Out-of-place transposes, for packing operands into panels.
//
// transpose_matrix(src, ld_src, dst, ld_dst, M, N): dst (N, M; row stride
// ld_dst) = src (M, N; row stride ld_src)^T. Float transposes each whole tile
// (16 x 16 on AVX-512, 8 x 8 on AVX2) in registers. ATen's dynamic-size
// transpose_mxn<float>, which the packing used before, goes on AVX-512
// through a 16-vector array on the stack that it clears with memset calls,
// and on AVX2 is a scalar loop over the elements. Packing W (n, K) into
// small_gemm's panels on an AMD Zen 4, 1 thread, output allocated per call:
// 4096 x 1024 took 4.0-5.1 ms with it and 1.9-3.0 with the tiles on AVX-512,
// 3.7-5.0 and 1.8-2.1 built for AVX2; 1024 x 256 (in cache) 0.068 and 0.038
// ms, and 0.153-0.158 and 0.031-0.039 ms. Partial tiles and other types
// still use ATen's.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace fastrnn::cpu {

namespace tile {
#if defined(__AVX512F__)
constexpr int64_t kSize = 16;
using Reg = __m512;
inline Reg load(const float* p) { return _mm512_loadu_ps(p); }
inline Reg unpack_lo(Reg a, Reg b) { return _mm512_unpacklo_ps(a, b); }
inline Reg unpack_hi(Reg a, Reg b) { return _mm512_unpackhi_ps(a, b); }
template <int imm>
Reg shuffle(Reg a, Reg b) { return _mm512_shuffle_ps(a, b, imm); }
#elif defined(__AVX2__)
constexpr int64_t kSize = 8;
using Reg = __m256;
inline Reg load(const float* p) { return _mm256_loadu_ps(p); }
inline Reg unpack_lo(Reg a, Reg b) { return _mm256_unpacklo_ps(a, b); }
inline Reg unpack_hi(Reg a, Reg b) { return _mm256_unpackhi_ps(a, b); }
template <int imm>
Reg shuffle(Reg a, Reg b) { return _mm256_shuffle_ps(a, b, imm); }
#endif

#if defined(__AVX2__)
// The kSize rows of a tile, loaded, then transposed within each 128-bit lane:
// 32-bit interleaves of row pairs, then 64-bit pairs, leave in lane l of rows
// 4q .. 4q + 3 the transposed 4 x 4 block of those rows' columns 4l .. 4l + 3.
inline void load_transposed_lanes(const float* src, int64_t ld_src, Reg (&r)[kSize]) {
  Reg t[kSize];
  for (int i = 0; i < kSize; ++i) r[i] = load(src + i * ld_src);
  for (int i = 0; i < kSize; i += 2) {
    t[i] = unpack_lo(r[i], r[i + 1]);
    t[i + 1] = unpack_hi(r[i], r[i + 1]);
  }
  for (int i = 0; i < kSize; i += 4) {
    r[i] = shuffle<0x44>(t[i], t[i + 2]);
    r[i + 1] = shuffle<0xEE>(t[i], t[i + 2]);
    r[i + 2] = shuffle<0x44>(t[i + 1], t[i + 3]);
    r[i + 3] = shuffle<0xEE>(t[i + 1], t[i + 3]);
  }
}
#endif

// dst[j * ld_dst + i] = src[i * ld_src + j] for i, j < kSize: the 4 x 4
// blocks above, then moved between rows as whole lanes.
#if defined(__AVX512F__)
inline void transpose(const float* src, int64_t ld_src, float* dst, int64_t ld_dst) {
  Reg r[16], t[16];
  load_transposed_lanes(src, ld_src, r);
  for (int a : {0, 1, 2, 3, 8, 9, 10, 11}) {  // lanes 0, 2 and 1, 3 of rows a, a + 4
    t[a] = _mm512_shuffle_f32x4(r[a], r[a + 4], 0x88);
    t[a + 4] = _mm512_shuffle_f32x4(r[a], r[a + 4], 0xDD);
  }
  for (int i = 0; i < 8; ++i) {  // the same for rows i, i + 8
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
  }
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * ld_dst, r[i]);
}
#elif defined(__AVX2__)
inline void transpose(const float* src, int64_t ld_src, float* dst, int64_t ld_dst) {
  Reg r[8];
  load_transposed_lanes(src, ld_src, r);
  for (int i = 0; i < 4; ++i) {  // row i: the low halves of rows i, i + 4; row i + 4: the high
    _mm256_storeu_ps(dst + i * ld_dst, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ld_dst, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}
#endif
}  // namespace tile

template <typename S>
void transpose_matrix(const S* src, int64_t ld_src, S* dst, int64_t ld_dst, int64_t M,
                      int64_t N) {
#if defined(__AVX2__)
  if constexpr (std::is_same_v<S, float>) {
    constexpr int64_t kTile = tile::kSize;
    for (int64_t i = 0; i < M; i += kTile) {
      for (int64_t j = 0; j < N; j += kTile) {
        const int64_t m = std::min(kTile, M - i), n = std::min(kTile, N - j);
        const float* s = src + i * ld_src + j;
        float* d = dst + j * ld_dst + i;
        if (m == kTile && n == kTile) {
          tile::transpose(s, ld_src, d, ld_dst);
        } else {
          at::vec::transpose_mxn<float>(s, ld_src, d, ld_dst, static_cast<int>(m),
                                        static_cast<int>(n));
        }
      }
    }
    return;
  }
#endif
  at::vec::transpose_mxn<S>(src, ld_src, dst, ld_dst, static_cast<int>(M), static_cast<int>(N));
}

}  // namespace fastrnn::cpu
