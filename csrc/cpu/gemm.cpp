// Large products on small_gemm (interface and contract: fastrnn/cpu/gemm.h).
#include "fastrnn/cpu/gemm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>

#include "fastrnn/cpu/small_gemm.h"

namespace fastrnn::cpu {

template <typename S>
void gemm(int64_t M, int64_t n, int64_t K, const S* A, int64_t lda, bool a_transposed,
          const S* B, bool b_transposed, S* C, int64_t ldc, bool accumulate) {
  if (M <= 0 || n <= 0) return;
  if (K <= 0) {  // an empty sum
    if (!accumulate)
      for (int64_t m = 0; m < M; ++m) std::fill(C + m * ldc, C + m * ldc + n, S(0));
    return;
  }
  // pack_rhs writes every element (no zero-initialisation needed).
  const std::unique_ptr<S[]> storage(new S[packed_size<S>(K, n)]);
  pack_rhs<S>(B, K, n, b_transposed, storage.get());
  const Packed<S> packed{storage.get(), K, n};

  // K slices of 256 rows: one packed panel slice is 16 KiB (float), and
  // small_gemm's 256 KiB column chunks of it are what the row blocks re-read
  // from L2. Rows go to threads in multiples of small_gemm's 8-row block.
  constexpr int64_t kSlice = 256, kRowBlock = 8;
  const int64_t row_blocks = (M + kRowBlock - 1) / kRowBlock;
  at::parallel_for(0, row_blocks, 1, [&](int64_t r0, int64_t r1) {
    const int64_t m0 = r0 * kRowBlock, m1 = std::min(M, r1 * kRowBlock);
    for (int64_t k0 = 0; k0 < K; k0 += kSlice) {
      const int64_t k = std::min(kSlice, K - k0);
      const S* a = a_transposed ? A + k0 * lda + m0 : A + m0 * lda + k0;
      small_gemm<S>(m1 - m0, a, lda, packed, k0, k, C + m0 * ldc, ldc, accumulate || k0 > 0,
                    a_transposed);
    }
  });
}

template void gemm<float>(int64_t, int64_t, int64_t, const float*, int64_t, bool, const float*,
                          bool, float*, int64_t, bool);
template void gemm<double>(int64_t, int64_t, int64_t, const double*, int64_t, bool,
                           const double*, bool, double*, int64_t, bool);

}  // namespace fastrnn::cpu
