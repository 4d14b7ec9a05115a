// Large products on small_gemm (interface and contract: fastrnn/cpu/gemm.h).
#include "fastrnn/cpu/gemm.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <memory>

#include "fastrnn/cpu/small_gemm.h"
#include "fastrnn/cpu/transpose.h"

namespace fastrnn::cpu {

template <typename S>
void gemm(int64_t M, const S* A, int64_t lda, bool a_transposed, const Packed<S>& B, S* C,
          int64_t ldc, bool accumulate) {
  const int64_t K = B.K, n = B.n;
  if (M <= 0 || n <= 0) return;
  if (K <= 0) {  // an empty sum
    if (!accumulate)
      for (int64_t m = 0; m < M; ++m) std::fill(C + m * ldc, C + m * ldc + n, S(0));
    return;
  }
  // K slices of 256 rows: one packed panel slice is 16 KiB (float), and
  // small_gemm's 256 KiB column chunks of it are what the row blocks re-read
  // from L2. Rows go to threads in multiples of 8 (small_gemm shares a
  // thread's rows out evenly among its row blocks).
  constexpr int64_t kSlice = 256, kRowBlock = 8, kGroup = 128;
  const int64_t row_blocks = (M + kRowBlock - 1) / kRowBlock;
  // A read transposed with a row stride of 4 KiB or more (dG^T at G*H >=
  // 1024 floats): the k-rows a block reads then share one L1 set (64 sets of
  // 64 B) and evict each other on every pass. Such slices are transposed
  // first, kGroup rows at a time, into a buffer read like a plain A: the
  // weight gradients at N = 4096, G*H = 4096, I = 1024 then run at 104-106
  // GFLOP/s instead of 97-98 (MKL: 101), at G*H = 2048, I = 512 at 103-104
  // instead of 93. Below that stride the transposition costs more than it
  // saves (G*H = 512, I = 128: 112 GFLOP/s in place, 102 transposed).
  const bool transpose_slices =
      a_transposed && lda * static_cast<int64_t>(sizeof(S)) >= (int64_t{4} << 10);
  at::parallel_for(0, row_blocks, 1, [&](int64_t r0, int64_t r1) {
    const int64_t m0 = r0 * kRowBlock, m1 = std::min(M, r1 * kRowBlock);
    const std::unique_ptr<S[]> rows_of_a(transpose_slices ? new S[kGroup * kSlice] : nullptr);
    for (int64_t k0 = 0; k0 < K; k0 += kSlice) {
      const int64_t k = std::min(kSlice, K - k0);
      const bool acc = accumulate || k0 > 0;
      if (!transpose_slices) {
        const S* a = a_transposed ? A + k0 * lda + m0 : A + m0 * lda + k0;
        small_gemm<S>(m1 - m0, a, lda, B, k0, k, C + m0 * ldc, ldc, acc, a_transposed);
        continue;
      }
      for (int64_t g0 = m0; g0 < m1; g0 += kGroup) {
        // rows_of_a (rows, k) = op(A)[g0:g0 + rows, k0:k0 + k]
        const int64_t rows = std::min(kGroup, m1 - g0);
        transpose_matrix<S>(A + k0 * lda + g0, lda, rows_of_a.get(), kSlice, k, rows);
        small_gemm<S>(rows, rows_of_a.get(), kSlice, B, k0, k, C + g0 * ldc, ldc, acc);
      }
    }
  });
}

template <typename S>
void gemm(int64_t M, int64_t n, int64_t K, const S* A, int64_t lda, bool a_transposed,
          const S* B, bool b_transposed, S* C, int64_t ldc, bool accumulate) {
  if (M <= 0 || n <= 0) return;
  // pack_rhs writes every element (no zero-initialisation needed).
  const std::unique_ptr<S[]> storage(new S[packed_size<S>(K, n)]);
  pack_rhs<S>(B, K, n, b_transposed, storage.get());
  gemm<S>(M, A, lda, a_transposed, Packed<S>{storage.get(), K, n}, C, ldc, accumulate);
}

template <typename S>
void add_column_sums(int64_t M, int64_t n, const S* A, int64_t lda, double* acc) {
  // Chunks of 256 columns: 2 KiB of double accumulators in L1 while the rows
  // stream past. A small reduction stays on the caller's thread (grain).
  constexpr int64_t kChunk = 256;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const int64_t grain = M * n < (1 << 16) ? chunks : 1;
  at::parallel_for(0, chunks, grain, [&](int64_t c0, int64_t c1) {
    double sums[kChunk];
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t j0 = c * kChunk, w = std::min(kChunk, n - j0);
      std::copy_n(acc + j0, w, sums);
      for (int64_t r = 0; r < M; ++r) {
        const S* row = A + r * lda + j0;
        for (int64_t j = 0; j < w; ++j) sums[j] += row[j];
      }
      std::copy_n(sums, w, acc + j0);
    }
  });
}

template void gemm<float>(int64_t, int64_t, int64_t, const float*, int64_t, bool, const float*,
                          bool, float*, int64_t, bool);
template void gemm<double>(int64_t, int64_t, int64_t, const double*, int64_t, bool,
                           const double*, bool, double*, int64_t, bool);
template void gemm<float>(int64_t, const float*, int64_t, bool, const Packed<float>&, float*,
                          int64_t, bool);
template void gemm<double>(int64_t, const double*, int64_t, bool, const Packed<double>&,
                           double*, int64_t, bool);
template void add_column_sums<float>(int64_t, int64_t, const float*, int64_t, double*);
template void add_column_sums<double>(int64_t, int64_t, const double*, int64_t, double*);

}  // namespace fastrnn::cpu
