// bfloat16 products on oneDNN's brgemm ukernel (contract: fastrnn/cpu/ukernel_bf16.h).
#include "fastrnn/cpu/ukernel_bf16.h"

#include <ATen/ATen.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <vector>

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
  std::vector<uint16_t> plain;
  if (transposed) {  // b is W (n, K): B = W^T row-major first
    plain.resize(K * n);
    for (int64_t j = 0; j < n; ++j)
      for (int64_t k = 0; k < K; ++k) plain[k * n + j] = b[j * K + k];
    b = plain.data();
  }
  const int64_t panel = even(K) * kPanel;
  std::fill_n(dst, ukernel_packed_size(K, n), uint16_t{0});  // the padding of odd K and the last panel
  for (int64_t c0 = 0, p = 0; c0 < n; c0 += kPanel, ++p)
    cpublas::pack(K, std::min(kPanel, n - c0), n, kPanel, at::kBFloat16, at::kBFloat16, b + c0,
                  dst + p * panel);
}

void ukernel_bf16_product(int64_t rows, const uint16_t* a, int64_t lda, const UkernelBf16& b,
                          int64_t k0, int64_t K, float* out, int64_t ldo, bool accumulate) {
  TORCH_CHECK(k0 % 2 == 0 && (K % 2 == 0 || k0 + K == b.K) && k0 + K <= b.K,
              "fastrnn: ukernel product over rows [", k0, ", ", k0 + K,
              ") of a packed operand of ", b.K, " rows");
  if (rows <= 0) return;
  const int64_t panel = even(b.K) * kPanel;
  // Packed rows come in pairs: rows [k0, k0 + K) of a panel start k0 * 64 in.
  for (int64_t c0 = 0, p = 0; c0 < b.n; c0 += kPanel, ++p)
    cpublas::brgemm(rows, std::min(kPanel, b.n - c0), K, lda, kPanel, ldo, accumulate,
                    bf16(a), bf16(b.data + p * panel + k0 * kPanel), out + c0,
                    /*is_vnni=*/true);
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
                          float*, int64_t, bool) {
  TORCH_CHECK(false, "fastrnn: this torch has no bf16 brgemm ukernel");
}

#endif

}  // namespace fastrnn::cpu
