// bfloat16 products on oneDNN's brgemm ukernel (contract: fastrnn/cpu/ukernel_bf16.h).
#include "fastrnn/cpu/ukernel_bf16.h"

#include <ATen/ATen.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cstring>

namespace fastrnn::cpu {
namespace {

namespace cpublas = at::native::cpublas;
constexpr int64_t kPanel = 64;  // columns per packed panel

int64_t even(int64_t K) { return (K + 1) / 2 * 2; }

const at::BFloat16* bf16(const uint16_t* p) { return reinterpret_cast<const at::BFloat16*>(p); }

}  // namespace

int64_t ukernel_packed_size(int64_t K, int64_t n) {
  return (n + kPanel - 1) / kPanel * even(K) * kPanel;
}

// CPUBLAS_BRGEMM_BF16BF16F32: this torch exports the bf16 ukernel; one without it
// builds fastrnn with the matmul path only.
#if defined(CPUBLAS_BRGEMM_BF16BF16F32)

bool ukernel_bf16_available() {
  static const bool yes = cpublas::could_pack(at::kBFloat16);
  return yes;
}

void pack_ukernel_bf16(const uint16_t* b, int64_t K, int64_t n, bool transposed, uint16_t* dst) {
  // oneDNN's VNNI layout for bf16 (what cpublas::pack writes, with the
  // panel's 64 columns as row stride): B's element (k, j) of panel p sits at
  // p * even(K) * 64 + (k / 2) * 128 + (j % 64) * 2 + k % 2; zeros past B's
  // last row and column. Written here directly: a plain transpose of W
  // followed by cpublas::pack took 5 ms for a 1024 x 1024 W_hh, 18x the
  // packing alone, where in W (n, K) each pair (k, k + 1) of B's column is
  // adjacent already.
  const int64_t pairs = even(K) / 2, full = K / 2;  // full: pairs without padding
  for (int64_t c0 = 0, p = 0; c0 < n; c0 += kPanel, ++p) {
    const int64_t cols = std::min(kPanel, n - c0);
    uint16_t* panel = dst + p * pairs * 2 * kPanel;
    if (transposed) {
      // 16 pairs at a time: one 64-byte line of each of W's rows c0.., into
      // 16 rows of the panel (4 KiB) that stay in L1.
      for (int64_t q0 = 0; q0 < full; q0 += 16)
        for (int64_t j = 0; j < cols; ++j) {
          const uint16_t* column = b + (c0 + j) * K;
          for (int64_t q = q0; q < std::min(full, q0 + 16); ++q)
            std::memcpy(panel + q * 2 * kPanel + j * 2, column + 2 * q, 2 * sizeof(uint16_t));
        }
    } else {
      for (int64_t q = 0; q < full; ++q) {
        const uint16_t* r0 = b + 2 * q * n + c0;
        uint16_t* to = panel + q * 2 * kPanel;
        for (int64_t j = 0; j < cols; ++j) to[2 * j] = r0[j], to[2 * j + 1] = r0[n + j];
      }
    }
    if (full < pairs) {  // odd K: the last row, paired with zeros
      uint16_t* to = panel + full * 2 * kPanel;
      for (int64_t j = 0; j < cols; ++j)
        to[2 * j] = transposed ? b[(c0 + j) * K + K - 1] : b[(K - 1) * n + c0 + j], to[2 * j + 1] = 0;
    }
    for (int64_t q = 0; q < pairs && cols < kPanel; ++q)  // the last panel's missing columns
      std::fill(panel + q * 2 * kPanel + cols * 2, panel + (q + 1) * 2 * kPanel, uint16_t{0});
  }
}

void ukernel_bf16_product(int64_t rows, const uint16_t* a, int64_t lda, const UkernelBf16& b,
                          int64_t k0, int64_t K, float* out, int64_t ldo, bool accumulate,
                          int64_t c0, int64_t cols) {
  if (cols < 0) cols = b.n - c0;
  TORCH_CHECK(k0 % 2 == 0 && (K % 2 == 0 || k0 + K == b.K) && k0 + K <= b.K && c0 >= 0 &&
                  c0 + cols <= b.n,
              "fastrnn: ukernel product over rows [", k0, ", ", k0 + K, ") and columns [", c0,
              ", ", c0 + cols, ") of a packed operand of ", b.K, " x ", b.n);
  // The loop asks for its joining rows every step, mostly none: no call and
  // no tile release then.
  if (rows <= 0 || cols <= 0) return;
  const int64_t panel = even(b.K) * kPanel;
  // A hoisted projection's thousands of rows in blocks of 256, so that a
  // block's rows of A stay in L2 across the panels.
  constexpr int64_t kRows = 256;
  for (int64_t r0 = 0; r0 < rows; r0 += kRows)
    // Packed rows come in pairs: rows [k0, k0 + K) of a panel start k0 * 64
    // in, and its column j 2 j in (a pair's row stride stays 128).
    for (int64_t c = c0; c < c0 + cols;) {
      const int64_t p = c / kPanel, j = c % kPanel, width = std::min(kPanel - j, c0 + cols - c);
      cpublas::brgemm(std::min(kRows, rows - r0), width, K, lda, kPanel, ldo, accumulate,
                      bf16(a + r0 * lda), bf16(b.data + p * panel + k0 * kPanel + 2 * j),
                      out + r0 * ldo + (c - c0), /*is_vnni=*/true);
      c += width;
    }
  // ATen keeps the last kernel's tile configuration per thread; other AMX
  // code (oneDNN's matmul and LSTM) may change the tiles in between.
  cpublas::brgemm_release(/*is_vnni=*/true);
}

#else

bool ukernel_bf16_available() { return false; }
void pack_ukernel_bf16(const uint16_t*, int64_t, int64_t, bool, uint16_t*) {
  TORCH_CHECK(false, "fastrnn: this torch has no bf16 brgemm ukernel");
}
void ukernel_bf16_product(int64_t, const uint16_t*, int64_t, const UkernelBf16&, int64_t, int64_t,
                          float*, int64_t, bool, int64_t, int64_t) {
  TORCH_CHECK(false, "fastrnn: this torch has no bf16 brgemm ukernel");
}

#endif

}  // namespace fastrnn::cpu
