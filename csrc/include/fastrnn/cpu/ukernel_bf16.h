// bfloat16 products on oneDNN's batch-reduce GEMM microkernel (brgemm
// ukernel), as ATen exposes it (at::native::cpublas::brgemm): bf16 operands,
// fp32 accumulation and output, on AMX tiles. A product of a step's few rows
// costs a few microseconds there, against ~40 us for ATen's bfloat16 matmul
// (a oneDNN primitive per call) and ~4x that on the AVX512-BF16 blocks
// (small_gemm_bf16.h): at B = 16, H = 128, one LSTM step product on 1 core of
// an Intel Xeon (Emerald Rapids) took 4.7 us against 40 us for at::mm.
//
// The right operand is packed once per layer call into oneDNN's layout for
// it (VNNI: pairs of K rows interleaved), in panels of up to 64 columns, the
// widest row stride the packing accepts. small_gemm_bf16's packing is the
// same layout in panels of 16, which the ukernel ran 7-35% slower (16 x 128 x
// 512: 10.0 us against 7.4; 256 x 256 x 1024: 401 against 260), so the two
// plans pack apart.
//
// Only where ATen says the bf16 ukernel needs packing (cpublas::could_pack:
// CPUs with AMX); elsewhere a bfloat16 layer keeps ATen's matmul and the
// bf16 blocks. Values are bfloat16 bit patterns (uint16_t).
#pragma once

#include <stdint.h>

namespace fastrnn::cpu {

// Whether this build and CPU run bf16 products on the ukernel (cached).
bool ukernel_bf16_available();

// A right operand B (K, n) packed by pack_ukernel_bf16: ceil(n / 64) panels,
// each (K rounded up to even) x 64 elements.
struct UkernelBf16 {
  const uint16_t* data;  // ukernel_packed_size(K, n) elements, or null for "absent"
  int64_t K, n;
};

int64_t ukernel_packed_size(int64_t K, int64_t n);

// dst <- B packed, for B (K, n) row-major, or B = W^T for W (n, K) row-major
// where `transposed`.
void pack_ukernel_bf16(const uint16_t* b, int64_t K, int64_t n, bool transposed, uint16_t* dst);

// out (rows, cols; row stride ldo) (+)= A @ B[k0 : k0 + K, c0 : c0 + cols]
// in fp32, for A (rows, K; row stride lda) bfloat16, k0 even and K even
// unless the range ends at B's last row; columns all of B's unless given (a
// hidden slice's columns of one gate: any range, whole panels run fastest).
// Leaves no AMX tile state configured behind it.
void ukernel_bf16_product(int64_t rows, const uint16_t* a, int64_t lda, const UkernelBf16& b,
                          int64_t k0, int64_t K, float* out, int64_t ldo, bool accumulate,
                          int64_t c0 = 0, int64_t cols = -1);

}  // namespace fastrnn::cpu
