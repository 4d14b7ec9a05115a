// Register-blocked small GEMM (interface and contract: fastrnn/cpu/small_gemm.h).
//
// A block of R rows x NB vectors of C lives in R*NB SIMD registers for the
// whole reduction; each k loads NB vectors of the packed right operand once and
// reuses them for all R rows (one broadcast of A[r, k] each). The right
// operand streams from L2 at 64/R bytes per FMA, so tall blocks pay, up to
// the register file: with AVX-512's 32 registers, 14 rows x 2 vectors (28
// accumulators beside the 2 loads). On an Intel Xeon (1 thread, same
// process, alternated) 14-row blocks ran the B = 64 step products 5-12 %
// faster than 8-row ones (64 x 1024 x 4096: 104 against 99 GFLOP/s;
// 64 x 256 x 1024: 160 against 143), and whole-operand products (4096 rows)
// 7-12 % faster. AVX2 has 16 registers: 6 rows x 2 vectors, 12 accumulators
// (the 6 x 16 float tile of BLIS's Haswell kernel); there 14-row blocks spilled
// their accumulators to the stack every k.
#include "fastrnn/cpu/small_gemm.h"
#include "fastrnn/cpu/transpose.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <unistd.h>

#include <algorithm>
#include <utility>
#include <vector>

namespace fastrnn::cpu {
namespace {

using at::vec::Vectorized;

// SIMD registers of the instruction set compiled for (-march=native).
#if defined(__AVX512F__)
constexpr int kRegisters = 32;
#else
constexpr int kRegisters = 16;
#endif
// The tallest block of 2 vectors: 2 * R accumulators, 2 loads, 1 broadcast.
constexpr int kMaxRows = (kRegisters - 3) / 2;  // 14 on AVX-512, 6 on AVX2

// Vectors per block row for R rows: a block holds R*NB accumulators, the NB
// loaded vectors and one broadcast. 32 registers: the widths measured on the
// Xeon; 16: the widest of 8, 4, 3, 2 that fits.
template <int R>
constexpr int block_width() {
  if constexpr (kRegisters == 32) return R <= 2 ? 8 : R <= 4 ? 4 : R <= 6 ? 3 : 2;
  for (int nb : {8, 4, 3, 2})
    if (R * nb + nb + 1 <= kRegisters) return nb;
  return 1;
}

// C[0:R, 0:n_valid] (+)= op(A)[0:R, 0:K] @ (NB panels at Bp); Bp points at row
// k0 of the block's first panel, panels are panel_stride elements apart, C at
// the block's first column, n_valid <= NB*VL. op(A)[r, k] = A[r * lda + k], or
// A[k * lda + r] when AT (A holds op(A)^T: the R values of one k are adjacent).
template <typename S, int R, int NB, bool AT>
void block(int64_t K, const S* A, int64_t lda, const S* Bp, int64_t panel_stride, S* C,
           int64_t ldc, int64_t n_valid, bool accumulate) {
  using V = Vectorized<S>;
  constexpr int64_t VL = V::size();
  V acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NB; ++v) acc[r][v] = V(S(0));
  for (int64_t k = 0; k < K; ++k) {
    V b[NB];
    for (int v = 0; v < NB; ++v) b[v] = V::loadu(Bp + v * panel_stride + k * VL);
    for (int r = 0; r < R; ++r) {
      const V a(AT ? A[k * lda + r] : A[r * lda + k]);
      for (int v = 0; v < NB; ++v) acc[r][v] = at::vec::fmadd(a, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r) {
    // Unrolled by request: where GCC 12 at -O3 left this loop rolled (its
    // break; R = 1, NB = 8), acc needed an address and the k loop stored it
    // to the stack on every k (tests/test_codegen.py).
#pragma GCC unroll 8
    for (int v = 0; v < NB; ++v) {
      const int64_t count = std::min<int64_t>(VL, n_valid - v * VL);
      if (count <= 0) break;
      S* c = C + r * ldc + v * VL;
      V out = acc[r][v];
      if (accumulate) out = out + V::loadu(c, count);
      out.store(c, count);
    }
  }
}

// Blocks of NB panels from panel p on while they fit; returns the next panel.
template <typename S, int R, int NB, bool AT>
int64_t blocks(const S* A, int64_t lda, const Packed<S>& B, int64_t k0, int64_t K, S* C,
               int64_t ldc, bool accumulate, int64_t p) {
  constexpr int64_t VL = Vectorized<S>::size();
  const int64_t panels = (B.n + VL - 1) / VL, stride = B.K * VL;
  for (; p + NB <= panels; p += NB)
    block<S, R, NB, AT>(K, A, lda, B.data + k0 * VL + p * stride, stride, C + p * VL, ldc,
                    std::min<int64_t>(NB * VL, B.n - p * VL), accumulate);
  return p;
}

// All columns for R rows: the widest blocks first, then narrower ones for the
// remaining panels (a lone panel per block leaves one FMA chain per row, which
// waits on the FMA latency; narrow operands such as a thread's slice of a gate
// would otherwise run mostly in those).
template <typename S, int R, bool AT>
void row_block(const S* A, int64_t lda, const Packed<S>& B, int64_t k0, int64_t K, S* C,
               int64_t ldc, bool accumulate) {
  constexpr int NB = block_width<R>();
  int64_t p = blocks<S, R, NB, AT>(A, lda, B, k0, K, C, ldc, accumulate, 0);
  if constexpr (NB > 4) p = blocks<S, R, 4, AT>(A, lda, B, k0, K, C, ldc, accumulate, p);
  if constexpr (NB > 2) p = blocks<S, R, 2, AT>(A, lda, B, k0, K, C, ldc, accumulate, p);
  blocks<S, R, 1, AT>(A, lda, B, k0, K, C, ldc, accumulate, p);
}

// Calls fn(r, n) for each row block: `rows` in blocks of at most kMaxRows,
// shared out evenly (64 rows: blocks of 10 and 11, not 4 x 14 and an 8-row
// tail); r is the block's first row, n its row count.
int64_t row_block_count(int64_t rows) { return (rows + kMaxRows - 1) / kMaxRows; }

template <typename F>
void for_each_row_block(int64_t rows, F&& fn) {
  const int64_t count = row_block_count(rows);
  for (int64_t b = 0, r = 0; b < count; ++b) {
    const int64_t n = (rows - r) / (count - b);
    fn(r, n);
    r += n;
  }
}

// Row blocks against columns [0, B.n). A is op(A) as small_gemm's (AT) or,
// when `panels`, the blocks' panels from pack_panels (read as AT, each block
// its own panel with row stride n).
template <typename S, bool AT, int... R>
void row_blocks_of(std::integer_sequence<int, R...>, int64_t rows, const S* A, int64_t lda,
                   bool panels, const Packed<S>& B, int64_t k0, int64_t K, S* C, int64_t ldc,
                   bool accumulate) {
  for_each_row_block(rows, [&](int64_t r, int64_t n) {
    const S* a = panels ? A + r * K : AT ? A + r : A + r * lda;
    const int64_t ld = panels ? n : lda;
    S* c = C + r * ldc;
    ((n == R + 1 ? (row_block<S, R + 1, AT>(a, ld, B, k0, K, c, ldc, accumulate), 0) : 0), ...);
  });
}

template <typename S, bool AT>
void row_blocks(int64_t rows, const S* A, int64_t lda, bool panels, const Packed<S>& B,
                int64_t k0, int64_t K, S* C, int64_t ldc, bool accumulate) {
  row_blocks_of<S, AT>(std::make_integer_sequence<int, kMaxRows>{}, rows, A, lda, panels, B, k0,
                       K, C, ldc, accumulate);
}

// dst <- A (rows, K; row stride lda) as one k-major panel per row block: the
// block of n rows from row r at dst + r * K, element (r + i, k) at
// [k * n + i], which the block then reads as one sequential stream instead of
// a stream per row (pack_a_panels says when that pays).
template <typename S>
void pack_panels(int64_t rows, const S* A, int64_t lda, int64_t K, S* dst) {
  for_each_row_block(rows, [&](int64_t r, int64_t n) {
    transpose_matrix<S>(A + r * lda, lda, dst + r * K, n, n, K);
  });
}

// This machine's L1 data cache (sysconf), or 64 sets of 8 ways of 64-byte
// lines where it does not say.
struct CacheGeometry {
  int64_t line, sets, ways;
};
const CacheGeometry& l1_data_cache() {
  static const CacheGeometry geometry = [] {
    const long line = sysconf(_SC_LEVEL1_DCACHE_LINESIZE);
    const long ways = sysconf(_SC_LEVEL1_DCACHE_ASSOC);
    const long size = sysconf(_SC_LEVEL1_DCACHE_SIZE);
    if (line <= 0 || ways <= 0 || size < line * ways) return CacheGeometry{64, 64, 8};
    return CacheGeometry{line, size / (line * ways), ways};
  }();
  return geometry;
}

// Whether small_gemm packs A into panels (pack_panels) before the blocks run:
// when the rows of one block, read in place `stride` bytes apart, put more
// lines into one L1 set than it has ways. Measured on an AMD Zen 4 (8 ways,
// 1 thread, a standalone loop of small_gemm alone): 64 x 1024 rows @ (1024,
// 4096) at a row stride of 4 KiB ran 72-84 GFLOP/s in place and 103-107
// packed (in place at a 4160-byte stride: 92-99); 14 rows in one block
// 85 -> 112; 8 rows, at most one line per way, 111-116 in place and
// 101-106 packed, the copy then costing more than it saves.
bool pack_a_panels(int64_t rows, int64_t stride) {
  if (rows <= 0) return false;
  const CacheGeometry& l1 = l1_data_cache();
  const int64_t blocks = row_block_count(rows);
  const int64_t tallest = (rows + blocks - 1) / blocks;  // for_each_row_block's largest n
  // No set can take more lines than the block has rows: the step products of
  // <= 8 rows a part (every B <= 8) stop here, at no cost to their loop.
  if (tallest <= l1.ways) return false;
  int64_t set[kMaxRows];
  for (int64_t r = 0; r < tallest; ++r) set[r] = (r * stride / l1.line) % l1.sets;
  for (int64_t r = 0; r < tallest; ++r)
    if (std::count(set, set + tallest, set[r]) > l1.ways) return true;
  return false;
}

}  // namespace

template <typename S>
int64_t packed_size(int64_t K, int64_t n) {
  constexpr int64_t VL = Vectorized<S>::size();
  return (n + VL - 1) / VL * VL * K;
}

template <typename S>
void pack_rhs(const S* src, int64_t K, int64_t n, bool transpose, S* dst) {
  constexpr int64_t VL = Vectorized<S>::size();
  if (n % VL != 0) {  // the last panel's columns past n are zero padding
    S* last = dst + (n / VL) * VL * K;
    std::fill(last, last + K * VL, S(0));
  }
  // Panels split between threads once there are >= 64K elements a thread:
  // a layer packs its weights once per call, and a serial copy of a 12 MiB
  // W_hh cost 2-thread loops as much as two of their steps.
  const int64_t panels = (n + VL - 1) / VL;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, K * VL));
  at::parallel_for(0, panels, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t j0 = p0 * VL; j0 < std::min(n, p1 * VL); j0 += VL) {
      const int64_t width = std::min(VL, n - j0);
      S* panel = dst + j0 * K;  // panel j0 / VL starts at (j0 / VL) * K * VL
      if (transpose) {
        // Whole float tiles transposed in registers (transpose.h); a
        // scalar gather was 10-15 % of a B=1 forward.
        transpose_matrix<S>(src + j0 * K, K, panel, VL, width, K);
      } else {
        for (int64_t k = 0; k < K; ++k)
          std::copy(src + k * n + j0, src + k * n + j0 + width, panel + k * VL);
      }
    }
  });
}

template <typename S>
void small_gemm(int64_t rows, const S* A, int64_t lda, const Packed<S>& B, int64_t k0, int64_t K,
                S* C, int64_t ldc, bool accumulate, bool a_transposed) {
  // With several row blocks, every block would stream all of B; at H = 1024
  // that is an L3-sized read per block. Walk B in column chunks of at most
  // ~256 KiB instead (at least 4 panels, the widest block of rows > 2), so
  // the row blocks re-read a chunk from L2.
  constexpr int64_t VL = Vectorized<S>::size();
  const int64_t panel_bytes = K * VL * static_cast<int64_t>(sizeof(S));
  const int64_t chunk =
      rows <= kMaxRows ? B.n : std::max<int64_t>(4, (256 << 10) / panel_bytes / 4 * 4) * VL;
  // op(A) = A^T is read in place (gemm transposes its slices where that pays).
  const bool panels =
      !a_transposed && pack_a_panels(rows, lda * static_cast<int64_t>(sizeof(S)));
  // One buffer per thread, kept at the largest op(A) it has packed for the
  // calls after it (rows x K: 1 MiB for 64 rows of dG at H = 1024, 4 MiB for
  // a thread's 4096 rows of a large product's 256-wide K slice).
  thread_local std::vector<S> panel_storage;
  if (panels) {
    if (static_cast<int64_t>(panel_storage.size()) < rows * K) panel_storage.resize(rows * K);
    pack_panels<S>(rows, A, lda, K, panel_storage.data());
  }
  for (int64_t c0 = 0; c0 < B.n; c0 += chunk) {
    const Packed<S> cols = packed_columns(B, c0, std::min(chunk, B.n - c0));
    if (panels || a_transposed)
      row_blocks<S, true>(rows, panels ? panel_storage.data() : A, lda, panels, cols, k0, K,
                          C + c0, ldc, accumulate);
    else
      row_blocks<S, false>(rows, A, lda, false, cols, k0, K, C + c0, ldc, accumulate);
  }
}

#define FASTRNN_INSTANTIATE(S)                                                                 \
  template int64_t packed_size<S>(int64_t, int64_t);                                           \
  template void pack_rhs<S>(const S*, int64_t, int64_t, bool, S*);                             \
  template void small_gemm<S>(int64_t, const S*, int64_t, const Packed<S>&, int64_t, int64_t, \
                              S*, int64_t, bool, bool);
FASTRNN_INSTANTIATE(float)
FASTRNN_INSTANTIATE(double)
#undef FASTRNN_INSTANTIATE

}  // namespace fastrnn::cpu
