// CPU kernels of fastrnn::layer_fwd / layer_bwd (schemas: csrc/ops.cpp).
//
// Thin torch layer around the framework-free loops of fastrnn/cpu/recurrence.h:
// validates every argument before touching memory, converts bfloat16 to fp32
// (all state math and accumulation run in fp32; weights are converted once per
// call), packs the recurrent weights, and runs the large GEMMs around the time
// loops: the input projection of all N rows before the forward loop, and
// dx = dG @ W_ih, dW_ih = dG^T X, dW_hh = dG^T H_prev, dW_hr = dY^T H_cell
// after each range of the backward loop's steps (step_ranges).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#if __has_include(<sys/mman.h>)
#include <sys/mman.h>  // madvise, MADV_HUGEPAGE (fresh)
#endif

#include <algorithm>
#include <cstdlib>
#include <numeric>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "fastrnn/bilayer.h"
#include "fastrnn/cpu/block_cache.h"
#include "fastrnn/cpu/gemm.h"
#include "fastrnn/cpu/gemv_bf16.h"
#include "fastrnn/cpu/product_choice.h"
#include "fastrnn/cpu/recurrence.h"
#include "fastrnn/cpu/small_gemm.h"
#include "fastrnn/cpu/small_gemm_bf16.h"
#include "fastrnn/cpu/steps.h"
#include "fastrnn/cpu/ukernel_bf16.h"
#include "fastrnn/kernels.h"
#include "fastrnn/workspace.h"

namespace fastrnn::cpu {
namespace {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;

// Sizes of a validated call; see fastrnn/backends/base.py for the shapes.
struct Layer {
  Mode mode;
  int64_t G, H, P, I, B, T, N;
  bool bias, project;
};

void check_tensor(const Tensor& t, const char* name, const Tensor& x) {
  TORCH_CHECK(t.device().is_cpu(), "fastrnn: ", name, " must be on the CPU, got ", t.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "fastrnn: ", name, " has dtype ",
              t.scalar_type(), " but x has ", x.scalar_type());
  TORCH_CHECK(t.is_contiguous(), "fastrnn: ", name, " must be contiguous");
}

void check_shape(const Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(t.sizes() == shape, "fastrnn: ", name, " must have shape ", shape, ", got ",
              t.sizes());
}

Layer check_layer(const std::string& mode_name, const Tensor& x, const Tensor& batch_sizes,
                  const Tensor& h0, const OptTensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                  const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr) {
  Layer L{};
  TORCH_CHECK(parse_mode(mode_name.c_str(), &L.mode), "fastrnn: unknown mode '", mode_name,
              "', expected LSTM, GRU, RNN_TANH or RNN_RELU");
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16,
              "fastrnn CPU kernels support float32, float64 and bfloat16, got ", dtype);
  TORCH_CHECK(x.dim() == 2, "fastrnn: x must be 2-D (N, input_size), got ", x.sizes());
  check_tensor(x, "x", x);
  check_tensor(w_ih, "w_ih", x);
  check_tensor(w_hh, "w_hh", x);
  check_tensor(h0, "h0", x);

  TORCH_CHECK(batch_sizes.device().is_cpu() && batch_sizes.scalar_type() == at::kLong &&
                  batch_sizes.dim() == 1 && batch_sizes.is_contiguous(),
              "fastrnn: batch_sizes must be a contiguous 1-D int64 CPU tensor");
  L.T = batch_sizes.numel();
  TORCH_CHECK(L.T > 0, "fastrnn: batch_sizes must not be empty");
  const int64_t* bs = batch_sizes.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t t = 0; t < L.T; ++t) {
    TORCH_CHECK(bs[t] >= 0 && (t == 0 || bs[t] <= bs[t - 1]),
                "fastrnn: batch_sizes must be non-negative and non-increasing");
    total += bs[t];
  }
  L.B = bs[0];
  L.N = x.size(0);
  L.I = x.size(1);
  TORCH_CHECK(total == L.N, "fastrnn: sum(batch_sizes) = ", total, " but x has ", L.N, " rows");

  L.G = gates(L.mode);
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) % L.G == 0 && w_ih.size(0) > 0,
              "fastrnn: w_ih must be (gates * hidden_size, input_size), got ", w_ih.sizes());
  L.H = w_ih.size(0) / L.G;
  L.project = w_hr.has_value();
  if (L.project) {
    TORCH_CHECK(L.mode == Mode::LSTM, "fastrnn: w_hr (projection) is only valid for LSTM");
    check_tensor(*w_hr, "w_hr", x);
    TORCH_CHECK(w_hr->dim() == 2 && w_hr->size(0) > 0,
                "fastrnn: w_hr must be (proj_size, hidden_size), got ", w_hr->sizes());
    L.P = w_hr->size(0);
    check_shape(*w_hr, "w_hr", {L.P, L.H});
    // torch.nn's rule; the loops rely on it (steps.h, split_hidden).
    TORCH_CHECK(L.P < L.H, "fastrnn: proj_size (w_hr rows, ", L.P,
                ") must be smaller than hidden_size (", L.H, ")");
  } else {
    L.P = L.H;
  }
  check_shape(w_ih, "w_ih", {L.G * L.H, L.I});
  check_shape(w_hh, "w_hh", {L.G * L.H, L.P});
  check_shape(h0, "h0", {L.B, L.P});

  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(),
              "fastrnn: pass both b_ih and b_hh or neither");
  L.bias = b_ih.has_value();
  if (L.bias) {
    check_tensor(*b_ih, "b_ih", x);
    check_tensor(*b_hh, "b_hh", x);
    check_shape(*b_ih, "b_ih", {L.G * L.H});
    check_shape(*b_hh, "b_hh", {L.G * L.H});
  }
  if (L.mode == Mode::LSTM) {
    TORCH_CHECK(c0.has_value(), "fastrnn: LSTM needs c0");
    check_tensor(*c0, "c0", x);
    check_shape(*c0, "c0", {L.B, L.H});
  } else {
    TORCH_CHECK(!c0.has_value(), "fastrnn: c0 is only valid for LSTM");
  }
  return L;
}

at::ScalarType compute_type(const Tensor& x) {
  return x.scalar_type() == at::kBFloat16 ? at::kFloat : x.scalar_type();
}

// t in the compute dtype (a no-op unless t is bfloat16).
Tensor in_compute(const Tensor& t, at::ScalarType ct) {
  return t.scalar_type() == ct ? t : t.to(ct);
}

// A fresh, writable state buffer holding t in the compute dtype.
Tensor state_copy(const Tensor& t, at::ScalarType ct) {
  return at::empty(t.sizes(), t.options().dtype(ct)).copy_(t);
}

// at::empty for the per-token outputs handed to the user (y, dx), with those
// of 32 MiB and more hinted to transparent huge pages before their
// first touch. glibc maps such a block afresh on every call (its mmap
// threshold stops growing at 32 MiB), so each call faulted it in 4 KiB pages:
// at T = 1024, B = 16, H = 128 an LSTM's 42 MiB workspace and (before the
// backward ran in ranges of steps) 34 MiB dG cost 16 ms of a 65 ms forward
// and 15 ms of a 124 ms backward (op alone, 1 thread); with the hint, 49 and
// 110 ms. Smaller blocks come from the heap, already mapped. Where THP is off
// the hint does nothing. The per-token scratch (the workspace, gx, dG, h_prev)
// comes from cached_empty (block_cache.h), which also skips the faults.
Tensor fresh(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  Tensor t = at::empty(sizes, opts);
#ifdef MADV_HUGEPAGE
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;  // x86-64's huge page
  const uintptr_t bytes = t.nbytes();
  if (bytes >= (uintptr_t{32} << 20)) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr());
    const uintptr_t b = (p + kHuge - 1) & ~(kHuge - 1), e = (p + bytes) & ~(kHuge - 1);
    if (e > b) madvise(reinterpret_cast<void*>(b), e - b, MADV_HUGEPAGE);
  }
#endif
  return t;
}

// B (K, n) packed for small_gemm; `storage` keeps the memory alive.
template <typename S>
Packed<S> packed(const Tensor& src, int64_t K, int64_t n, bool transpose, Tensor& storage) {
  storage = at::empty({packed_size<S>(K, n)}, src.options());
  pack_rhs<S>(src.data_ptr<S>(), K, n, transpose, storage.data_ptr<S>());
  return Packed<S>{storage.data_ptr<S>(), K, n};
}

// The bit patterns of a bfloat16 tensor, for the framework-free kernels.
uint16_t* bits(const Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); }

// W^T packed for small_gemm_bf16, W (n, K) bfloat16; `storage` keeps the memory alive.
PackedBf16 packed_bf16(const Tensor& w, int64_t K, int64_t n, Tensor& storage) {
  storage = at::empty({packed_size_bf16(K, n)}, w.options());
  pack_transposed_bf16(bits(w), K, n, bits(storage));
  return PackedBf16{bits(storage), K, n};
}

// W (K, n), or W^T for W (n, K) where `transposed`, packed for the bf16
// ukernel where it runs (ukernel_bf16.h), else absent; `storage` keeps the
// memory alive.
UkernelBf16 ukernel_packed(const Tensor& w, int64_t K, int64_t n, bool transposed,
                           Tensor& storage) {
  if (!ukernel_bf16_available()) return UkernelBf16{};
  storage = at::empty({ukernel_packed_size(K, n)}, w.options());
  pack_ukernel_bf16(bits(w), K, n, transposed, bits(storage));
  return UkernelBf16{bits(storage), K, n};
}

// Whether a layer's products take bfloat16 operands (small_gemm_bf16.h;
// ATen's bf16 matmul for the backward's large ones): a bfloat16 layer of more
// than one step, without projection (its h_cell would need a rounding
// torch.nn's bf16 kernels do not make), where the build has bf16 dot
// products. The kernels that read operands in pairs add their size rules.
bool bf16_operands(const Layer& L, const Tensor& x) {
  return kBf16Products && x.scalar_type() == at::kBFloat16 && L.T > 1 && !L.project;
}

// Whether a single step (a cell, or T = 1) runs its products as BLAS calls,
// which read each weight once, instead of packing the weights for a product
// of B rows like every other length: when G*H*(I+P) weight elements exceed
// `limit`. Packing small weights costs less than the BLAS calls' overhead;
// where that ends was measured per pass (layer_fwd, layer_bwd).
bool blas_single_step(const Layer& L, int64_t limit) {
  return L.T == 1 && L.G * L.H * (L.I + L.P) > limit;
}

// How such a single step of bfloat16 operands runs its products, as measured
// for its shape; layer_fwd and layer_bwd ask alike. in_bf16: in bfloat16 on
// ATen's matmul, as torch.nn's cells do (fp32 sums, the gates and the
// backward's dG and h_prev rounded to bfloat16), where that beats widening
// the weights to fp32 every call (prefer_bf16_single_step). rows_kernels:
// with few rows, the forward's x @ W^T on rows_times_wt_bf16 and the
// backward's dx and dh0 on rows_times_w_bf16 (gemv_bf16.h: fp32 sums, nothing
// rounded), where that beats the former (prefer_gemv_bf16_single_step); the
// weight gradients then stay as in_bf16 says.
struct SingleBf16 {
  bool in_bf16 = false, rows_kernels = false;
};

SingleBf16 single_bf16_products(const Layer& L, const Tensor& x, bool single) {
  if (!single || x.scalar_type() != at::kBFloat16) return {};
  const bool in_bf16 = prefer_bf16_single_step(L.B, L.I, L.P, L.G * L.H);
  return {in_bf16, prefer_gemv_bf16_single_step(L.B, L.I, L.P, L.G * L.H, in_bf16)};
}

// W_hh (G*H, P) for blas_step, or its bfloat16 bits for aten_bf16_step,
// and there packed for the ukernel where it runs (ukernel_bf16.h; else null).
template <typename S>
struct StepWeights {
  const S* w;
  const uint16_t* w16;
  int64_t GH, P;
  UkernelBf16 ukernel{};
};

// ForwardArgs::step_product through BLAS: out (rows, cols; row stride G*H)
// = h (rows, P) @ W_hh^T[:, c0 : c0 + cols], W_hh's rows c0.. as stored.
template <typename S>
void blas_step(const void* ctx, int64_t rows, const S* h, int64_t c0, int64_t cols, S* out) {
  const auto& w = *static_cast<const StepWeights<S>*>(ctx);
  blas_gemm<S>(rows, cols, w.P, h, w.P, false, w.w + c0 * w.P, true, out, w.GH, false);
}

// ForwardArgs::step_product on W_hh as stored, read by gemv_bf16.h's rows
// kernels (nothing packed per call): its bfloat16 bits (StepWeights::w16)
// for a bfloat16 layer on the float32 loop (prefer_rows_bf16_step), else
// its fp32 (StepWeights::w; plan_forward's step_rows).
template <typename S>
void rows_step(const void* ctx, int64_t rows, const S* h, int64_t c0, int64_t cols, S* out) {
  if constexpr (std::is_same_v<S, float>) {
    const auto& w = *static_cast<const StepWeights<S>*>(ctx);
    if (rows <= 0) return;
    if (w.w16 != nullptr)
      rows_times_wt_bf16(rows, h, w.P, w.w16 + c0 * w.P, cols, w.P, nullptr, out, w.GH);
    else
      rows_times_wt_f32(rows, h, w.P, w.w + c0 * w.P, cols, w.P, nullptr, out, w.GH);
  }
}

// BackwardArgs::step_product::fn_bf16 on ATen's bfloat16 kernels: the
// ukernel on W_hh packed (K = G*H, n = P) where it runs, else the matmul on
// W_hh's bfloat16 bits (G*H, P) as StepWeights::w16.
template <typename S>
void aten_bf16_backward_step(const void* ctx, int64_t rows, const uint16_t* g, int64_t ld,
                             int64_t w_row0, int64_t K, S* out, bool accumulate) {
  if constexpr (std::is_same_v<S, float>) {
    const auto& w = *static_cast<const StepWeights<S>*>(ctx);
    if (w.ukernel.data != nullptr)
      return ukernel_bf16_product(rows, g, ld, w.ukernel, w_row0, K, out, w.P, accumulate);
    aten_bf16_product_nn(rows, w.P, K, g, ld, w.w16 + w_row0 * w.P, out, accumulate);
  } else {
    TORCH_CHECK(false, "fastrnn: bfloat16 step products compute in float");
  }
}

// The hoisted input projection gx (rows, G*H) = bias + x @ W_ih^T of a
// bfloat16 layer on ATen's bfloat16 kernels: the ukernel on W_ih^T packed
// (K = I, n = G*H) where it runs, its fp32 product unrounded, in blocks of
// rows over the threads; else the matmul (the product rounded to bfloat16).
template <typename S>
void aten_bf16_projection(int64_t rows, int64_t GH, int64_t I, const uint16_t* x,
                          const uint16_t* w_ih, const UkernelBf16& packed, S* gx,
                          const S* bias) {
  if constexpr (std::is_same_v<S, float>) {
    if (packed.data == nullptr) return aten_bf16_product(rows, GH, I, x, w_ih, gx, bias);
    at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
      if (bias != nullptr)
        for (int64_t r = r0; r < r1; ++r) std::copy_n(bias, GH, gx + r * GH);
      ukernel_bf16_product(r1 - r0, x + r0 * I, I, packed, 0, I, gx + r0 * GH, GH,
                           /*accumulate=*/bias != nullptr);
    });
  } else {
    TORCH_CHECK(false, "fastrnn: bfloat16 products compute in float");
  }
}

// ForwardArgs::step_product::fn_bf16 on ATen's bfloat16 kernels: the
// ukernel on W_hh^T packed (K = P, n = G*H) where it runs (its fp32 product
// unrounded; any columns), else the matmul (the product rounded to bfloat16;
// every column: plan_bf16_forward keeps hidden slices off it).
template <typename S>
void aten_bf16_step(const void* ctx, int64_t rows, const uint16_t* h, int64_t c0, int64_t cols,
                    S* out) {
  if constexpr (std::is_same_v<S, float>) {
    const auto& w = *static_cast<const StepWeights<S>*>(ctx);
    if (w.ukernel.data != nullptr)
      return ukernel_bf16_product(rows, h, w.P, w.ukernel, 0, w.P, out, w.GH, false, c0, cols);
    TORCH_CHECK(c0 == 0 && cols == w.GH, "fastrnn: ATen's bf16 matmul runs every column");
    aten_bf16_product(rows, w.GH, w.P, h, w.w16, out);
  } else {
    TORCH_CHECK(false, "fastrnn: bfloat16 step products compute in float");
  }
}

// scratch_slots (steps.h) for the compute dtype.
int64_t scratch_copies(const LayerDims& dims, at::ScalarType ct) {
  return ct == at::kDouble ? scratch_slots<double>(dims) : scratch_slots<float>(dims);
}

LayerDims dims_of(const Layer& L, const Tensor& batch_sizes, bool reverse) {
  return LayerDims{L.mode, L.T, L.B, L.N, L.H, L.P, batch_sizes.data_ptr<int64_t>(), reverse};
}

// A range of the backward loop's steps (BackwardArgs::s_begin) and its packed
// rows [row0, row1).
struct StepRange {
  int64_t s_begin, s_end, row0, row1;
};

// The backward loop's ranges, from the last steps processed back to the first.
// Each range's dG goes into the products right after the loop wrote it: about
// 2 MiB of it (dg_row_bytes a row), which stays in cache, where all of dG at
// T = 256, B = 16, H = 128 (8 MiB, with a 10 MiB workspace beside it) was
// read back from memory by three products. Each range adds its share to dW_ih
// and dW_hh, a pass over them, so a range has at least 2 (I + P) rows: at
// B = 64, H = 1024 one range holds T = 64. FASTRNN_CPU_RANGE_ROWS, when set,
// replaces that row count (tests use it to cut many ranges at small sizes).
std::vector<StepRange> step_ranges(const Layer& L, const Tensor& batch_sizes, bool reverse,
                                   int64_t dg_row_bytes) {
  const int64_t* bs = batch_sizes.data_ptr<int64_t>();
  std::vector<int64_t> offset(L.T + 1, 0);  // packed row of each step's first row
  for (int64_t t = 0; t < L.T; ++t) offset[t + 1] = offset[t] + bs[t];
  const char* forced = std::getenv("FASTRNN_CPU_RANGE_ROWS");
  const int64_t target =
      forced ? std::max<int64_t>(1, std::atoll(forced))
             : std::max<int64_t>(2 * (L.I + L.P), (int64_t{2} << 20) / dg_row_bytes);
  std::vector<StepRange> ranges;
  for (int64_t s_end = L.T; s_end > 0;) {
    int64_t s = s_end, rows = 0;
    while (s > 0 && rows < target) {
      --s;
      rows += bs[reverse ? L.T - 1 - s : s];
    }
    // Processing step s is time step s, or T - 1 - s in reverse: the range's
    // time steps are contiguous either way, and so are their packed rows.
    ranges.push_back(reverse ? StepRange{s, s_end, offset[L.T - s_end], offset[L.T - s]}
                             : StepRange{s, s_end, offset[s], offset[s_end]});
    s_end = s;
  }
  return ranges;
}

// Where the fp32/fp64 forward's products run: the step product h_{t-1} @
// W_hh^T on the packed blocks or BLAS (batch tiles only; hidden slices cut the
// packed blocks by columns, or, float32 on AVX-512, read each gate's rows of
// W_hh as stored: rows_step), and the input projection per step inside the
// loop (on the blocks: steps.h, project_per_step) or hoisted before it as one
// product over every token (blocks or BLAS, product_choice.h). One choice
// among the three plans, from measured times (product_choice.h):
//   blocks, per step:  T (step(P) + step(I)) + packing W_hh and W_ih
//   blocks, hoisted:   T step(P) + packing W_hh + hoisted / 0.85
//   BLAS, hoisted:     T blas_step(P) + hoisted / 0.85
// where hoisted is the faster of blocks and BLAS for the whole projection,
// and / 0.85 its memory round trip, which the 512-token sample keeps in cache
// (at B = 64, H = 256, T = 64 a 16 MiB round trip, ~12% of the forward).
// Choosing the steps alone had BLAS win a tie at B = 64, H = 64 and so hoist
// the projection, 0.74x of torch.nn where per step ran 0.90x. Where BLAS and
// the best blocks plan come within 15% of each other, the products' times do
// not decide (at B = 64, H = 1024 they tied MKL with the blocks, and the loop
// on MKL then ran 6-10% slower; at B = 1, H = 1024 the blocks ran a GRU
// 0.84x of torch.nn, BLAS 1.06x): `close` says so, and own_layer_fwd races
// the two plans on the layer's first steps (raced_plan). Hidden slices
// weigh, by slice_step_times, the blocks' plans against
//   stored W_hh, hoisted: T rows_step(P) + hoisted / 0.85
// which packs nothing: a GRU at B = 1, H = 1024, T = 16 on 2 threads packed
// its 12 MiB W_hh in ~1 ms of a 6 ms call. (Batch tiles have BLAS for a
// plan without packing; weighed there too, the stored W_hh ran B = 1,
// H = 256, T = 16 13-21% faster and B = 1, H = 64 9-23% slower on 1 thread:
// not weighed.) FASTRNN_CPU_PRODUCTS pins: own runs the blocks per step
// where allowed, blas runs BLAS hoisted (slices: the blocks), stored the
// stored W_hh. bfloat16 layers plan with plan_bf16_forward.
struct ForwardPlan {
  bool step_blas, step_aten, per_step, close;
  double packing;  // seconds the blocks plan spends packing weights per call (close plans)
  double other_packing = 0.0;  // the same for its alternative (bfloat16: the ukernel's W_hh^T)
  bool step_rows = false;      // the step products on W_hh as stored (rows_step)
};

template <typename S>
ForwardPlan plan_forward(const Layer& L, int64_t grain, bool tiles, bool may_per_step) {
  // float32 may read W_hh as stored instead of packing it (rows_step): by
  // measurement (slice_step_times) in hidden slices, which have no BLAS plan
  // (BLAS cannot cut each gate's units); in batch tiles only where pinned.
  constexpr bool stored = std::is_same_v<S, float> && kBf16RowsKernels;
  const bool slice_rows = !tiles && stored;
  bool blas;
  if (products_pinned(&blas)) {
    ForwardPlan pinned{tiles && blas, false, may_per_step && !blas, false, 0.0};
    if (stored && stored_pinned()) pinned.per_step = false, pinned.step_rows = true;
    return pinned;
  }
  const int64_t GH = L.G * L.H;
  const double T = static_cast<double>(L.T);
  const Times step = slice_rows ? slice_step_times(L.B, GH, L.P)
                                : step_times<S>(L.B, grain, GH, L.P, /*gate_pass=*/true);
  const Times whole = product_times<S>(Product::InputProjection, L.N, GH, L.I, false, true,
                                       /*tokens_in_m=*/true);
  const double hoisted = std::min(whole.own, whole.blas) / 0.85;
  double blocks = T * step.own + step.own_setup + hoisted, packing = step.own_setup;
  bool per_step = false;
  if (may_per_step) {
    const Times input = step_times<S>(L.B, grain, GH, L.I, /*gate_pass=*/false);
    const double in_loop = T * (step.own + input.own) + step.own_setup + input.own_setup;
    per_step = in_loop < blocks;
    if (per_step) blocks = in_loop, packing += input.own_setup;
  }
  if (!tiles) {
    // On W_hh as stored: no packing, the projection hoisted; a tie keeps the blocks.
    if (slice_rows && blas_wins(blocks, T * step.blas + hoisted)) {
      ForwardPlan rows{false, false, false, false, 0.0};
      rows.step_rows = true;
      return rows;
    }
    return {false, false, per_step, false, packing};
  }
  const double on_blas = T * step.blas + hoisted;
  if (on_blas * 1.15 < blocks) return {true, false, false, false, 0.0};
  return {false, false, per_step, on_blas < blocks * 1.15, packing};
}

// Where a bfloat16 layer's products run (bf16 operands): on the bf16 blocks
// (small_gemm_bf16, W_hh and, per step, W_ih packed per call) or on ATen's
// bfloat16 kernels (the brgemm ukernel where it runs, else the matmul:
// aten_bf16_product, oneDNN on AMX tiles where the CPU has them), the step
// products and one hoisted projection. Threads that split the hidden units
// (`tiles` false) take ATen's side only on the ukernel, which computes a
// slice's columns of each gate (at 2 threads, B = 8, H = 1024 the blocks
// ran a GRU 0.65x of torch.nn, an RNN 0.84x). Always raced
// on the layer's first steps (raced_plan): timing the step product alone
// chose the blocks for an RNN at B = 8, H = 1024, where the loop, which also
// streams the packed W_ih every step, ran 0.64x of torch.nn and ATen's
// matmul 1.02-1.11x. FASTRNN_CPU_PRODUCTS pins: own the blocks, blas ATen's
// matmul.
ForwardPlan plan_bf16_forward(const Layer& L, bool tiles, bool may_per_step) {
  const ForwardPlan blocks{false, false, may_per_step, false, 0.0};
  bool aten;
  if (!tiles && !ukernel_bf16_available()) return blocks;
  if (products_pinned(&aten)) return aten ? ForwardPlan{false, true, false, false, 0.0} : blocks;
  const Times packing = bf16_packing_seconds(L.G * L.H, L.P, L.I, may_per_step);
  return {false, false, may_per_step, true, packing.own, packing.blas};
}

// A layer's first time steps (as many as fit in min(T, 16), rounded down to a
// power of two), on which raced_plan's two plans race: long enough that the
// blocks' packing of W_hh weighs about as in a long call. Views of the call's
// own inputs.
struct Sample {
  Layer L;
  Tensor x, batch_sizes;
};

int64_t sample_steps(int64_t T) {
  int64_t steps = 1;
  while (steps * 2 <= std::min<int64_t>(T, 16)) steps *= 2;
  return steps;
}

Sample first_steps(const Layer& L, const Tensor& x, const Tensor& batch_sizes) {
  const int64_t steps = sample_steps(L.T);
  const int64_t* bs = batch_sizes.data_ptr<int64_t>();
  Sample s{L, Tensor(), batch_sizes.narrow(0, 0, steps)};
  s.L.T = steps, s.L.N = std::accumulate(bs, bs + steps, int64_t{0});
  s.x = x.narrow(0, 0, s.L.N);
  return s;
}

// layer_fwd's results: y, h_n, c_n, workspace.
using Forward = std::tuple<Tensor, Tensor, Tensor, Tensor>;

// layer_fwd on fastrnn's loop, for a validated call; on `forced`'s products
// when given, else as planned (plan_forward, raced_plan).
Forward own_layer_fwd(const Layer& L, const Tensor& x, const Tensor& batch_sizes,
                      const Tensor& h0, const OptTensor& c0, const Tensor& w_ih,
                      const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                      const OptTensor& w_hr, bool reverse, bool save,
                      const ForwardPlan* forced = nullptr);

// A close plan's blocks or its alternative (BLAS steps; ATen's bfloat16
// kernels for a bfloat16 layer), whichever runs the call faster
// (sample_prefers_second): both run the layer's first steps, and each one's
// packing, paid once per call, is not scaled with the call's length (at
// B = 64, H = 1024 the blocks' costs about one step, 6% of a 16-step sample).
ForwardPlan raced_plan(const Layer& L, const Tensor& x, const Tensor& batch_sizes,
                       const Tensor& h0, const OptTensor& c0, const Tensor& w_ih,
                       const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                       const OptTensor& w_hr, bool reverse, bool save, ForwardPlan blocks,
                       bool bf16) {
  blocks.close = false;
  const ForwardPlan other{!bf16, bf16, false, false, 0.0};
  // The sample's views are made only when it runs: a cached race costs a lookup.
  auto run = [&](const ForwardPlan& plan) {
    const Sample s = first_steps(L, x, batch_sizes);
    own_layer_fwd(s.L, s.x, s.batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, save,
                  &plan);
  };
  const int64_t steps = sample_steps(L.T);
  const bool on_other = sample_prefers_second(
      static_cast<int>(x.element_size()), L.B, L.I, L.G * L.H, L.P, steps, reverse, L.bias,
      blocks.packing, blocks.other_packing, static_cast<double>(L.T) / static_cast<double>(steps),
      [&] { run(blocks); }, [&] { run(other); });
  return on_other ? other : blocks;
}

// layer_fwd of a bfloat16 single step without projection, from its two
// products gx and gh (single_step_bf16, recurrence.h): bfloat16 y, h_n and
// c_n, the workspace in fp32 as every layer's.
Forward single_step_bf16_fwd(const Layer& L, const Tensor& x, const Tensor& gx, const Tensor& gh,
                             const Tensor& h0, const OptTensor& c0, bool save) {
  const bool lstm = L.mode == Mode::LSTM;
  Tensor y = at::empty({L.B, L.H}, x.options()), h_n = at::empty({L.B, L.H}, x.options());
  Tensor c_n = lstm ? at::empty({L.B, L.H}, x.options()) : at::empty({0}, x.options());
  Tensor ws = cached_empty({save ? L.N : 0, workspace::columns(L.mode, L.H)},
                           x.options().dtype(at::kFloat));
  auto run = [&](const auto* gx_data, const auto* gh_data) {  // fp32 or bfloat16 bits
    using G = std::remove_const_t<std::remove_pointer_t<decltype(gx_data)>>;
    single_step_bf16<G>({L.mode, L.B, L.H, gx_data, gh_data, bits(h0), lstm ? bits(*c0) : nullptr,
                         bits(y), bits(h_n), lstm ? bits(c_n) : nullptr,
                         save ? ws.data_ptr<float>() : nullptr});
  };
  if (gx.scalar_type() == at::kFloat) run(gx.data_ptr<float>(), gh.data_ptr<float>());
  else run(bits(gx), bits(gh));
  return {y, h_n, c_n, ws};
}

Forward own_layer_fwd(const Layer& L, const Tensor& x, const Tensor& batch_sizes,
                      const Tensor& h0, const OptTensor& c0, const Tensor& w_ih,
                      const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                      const OptTensor& w_hr, bool reverse, bool save, const ForwardPlan* forced) {
  const auto ct = compute_type(x);
  const int64_t GH = L.G * L.H;
  const LayerDims dims = dims_of(L, batch_sizes, reverse);
  // B = 1: packed RNN at H = 64 (8K elements) 14.6 us against 16.6 by BLAS;
  // LSTM at H = 64 (32K) 23.3 us packed against 19.8.
  const bool single = blas_single_step(L, int64_t{1} << 14);
  // bfloat16 operands (bf16_operands) with even I and P, as small_gemm_bf16
  // reads them in pairs. The loop then writes the bfloat16 output itself, and
  // fp32 copies of x and the weights are made only for the products that
  // still read them.
  const bool bf16_products = bf16_operands(L, x) && L.I % 2 == 0 && L.P % 2 == 0;
  // Where the forward's products run (ForwardPlan, plan_forward).
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t grain = (L.B + threads - 1) / threads;
  const bool tiles = !single && scratch_copies(dims, ct) == 1;
  // A bfloat16 layer on the float32 loop (no bf16 dot products in this build,
  // or odd I or P) may read W_hh's bfloat16 in its step product instead of a
  // widened, packed copy (batch tiles only: the product of every column).
  const bool bf16_rows = x.scalar_type() == at::kBFloat16 && !bf16_products && tiles &&
                         prefer_rows_bf16_step(L.B, grain, L.G * L.H, L.P);
  ForwardPlan plan = forced ? *forced : AT_DISPATCH_FLOATING_TYPES(ct, "fastrnn_forward_plan", [&] {
    if (single || bf16_rows) return ForwardPlan{false, false, false, false, 0.0};
    const bool may_per_step = project_per_step(dims, L.I, at::vec::Vectorized<scalar_t>::size(),
                                               sizeof(scalar_t));
    if (bf16_products) return plan_bf16_forward(L, tiles, may_per_step);
    return plan_forward<scalar_t>(L, grain, tiles, may_per_step);
  });
  if (plan.close)
    plan = raced_plan(L, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, save, plan,
                      bf16_products);
  // A bfloat16 layer's step products through ATen's bfloat16 matmul (on AMX
  // 4x the bf16 blocks at B = 64, H = 256).
  const bool step_blas = plan.step_blas, step_aten = plan.step_aten, per_step = plan.per_step;
  // The step product on W_hh as stored (rows_step): a bfloat16 layer's
  // bfloat16 (no widened copy; its slices weighed it as fp32, which reads
  // twice the bytes a step), else its fp32.
  const bool step_rows = bf16_rows || plan.step_rows;
  const bool stored_bf16 = step_rows && x.scalar_type() == at::kBFloat16;
  const bool fp32_input = !bf16_products || (!per_step && !step_aten);
  const auto [single_bf16, single_gemv] = single_bf16_products(L, x, single);
  const bool widen = !single_bf16 && !single_gemv;
  // A float32 single step's products on rows_times_wt_f32 where measured faster
  // than addmm (prefer_rows_f32_single_step).
  const bool single_rows = single && x.scalar_type() == at::kFloat &&
                           prefer_rows_f32_single_step(L.B, L.I, L.P, GH);
  const Tensor xc = fp32_input && widen ? in_compute(x, ct) : Tensor();
  const Tensor wih = fp32_input && widen ? in_compute(w_ih, ct) : Tensor();
  const Tensor whh = bf16_products || !widen || stored_bf16 ? Tensor() : in_compute(w_hh, ct);
  const auto opts = x.options().dtype(ct);

  // A single step with large weights (blas_single_step) packs nothing:
  // gx = x @ W_ih^T + b_ih and gh0 = h0 @ W_hh^T + b_hh are one BLAS call
  // each, or one rows_times_wt_f32 (single_rows), every bias with its own
  // product (GRU's b_hn sits in gh0's n columns, inside the reset gate's
  // product, as the loop expects). With bfloat16 operands
  // (single_bf16_products) they come as fp32 sums from rows_times_wt_bf16 or
  // rounded to bfloat16 from ATen's bf16 matmul.
  auto product = [&](const Tensor& a, const Tensor& w, const OptTensor& b) {
    if (single_rows) {
      const Tensor out = at::empty({L.B, w.size(0)}, opts);
      rows_times_wt_f32(L.B, a.data_ptr<float>(), a.size(1), w.data_ptr<float>(), w.size(0),
                        w.size(1), L.bias ? b->data_ptr<float>() : nullptr,
                        out.data_ptr<float>(), w.size(0));
      return out;
    }
    if (single_gemv) {
      const Tensor out = at::empty({L.B, w.size(0)}, opts);
      const Tensor bias = L.bias ? in_compute(*b, ct) : Tensor();
      rows_times_wt_bf16(L.B, bits(a), a.size(1), bits(w), w.size(0), w.size(1),
                         L.bias ? bias.data_ptr<float>() : nullptr, out.data_ptr<float>(),
                         w.size(0));
      return out;
    }
    if (single_bf16) return L.bias ? at::addmm(*b, a, w.t()) : at::mm(a, w.t());
    return L.bias ? at::addmm(in_compute(*b, ct), a, w.t()) : at::mm(a, w.t());
  };
  if (!widen && !L.project)
    return single_step_bf16_fwd(L, x, product(x, w_ih, b_ih), product(h0, w_hh, b_hh), h0, c0,
                                save);

  const Tensor h0c = in_compute(h0, ct);
  Tensor h = state_copy(h0, ct);
  Tensor c = L.mode == Mode::LSTM ? state_copy(*c0, ct) : Tensor();
  Tensor y = fresh({L.N, L.P}, opts);
  Tensor ws = cached_empty({save ? L.N : 0, workspace::columns(L.mode, L.H)}, opts);
  const Tensor y16 = bf16_products ? at::empty({L.N, L.P}, x.options()) : Tensor();
  const Tensor gx_single =
      single ? in_compute(product(widen ? xc : x, widen ? wih : w_ih, b_ih), ct) : Tensor();
  const Tensor gh0 =
      single ? in_compute(product(widen ? h0c : h0, widen ? whh : w_hh, b_hh), ct) : Tensor();

  // The loop's per-step scratch (ForwardArgs::gh).
  const int64_t rows = L.B * scratch_copies(dims, ct);
  const Tensor gh_step = single ? Tensor() : at::empty({rows, GH}, opts);
  const Tensor gx_step = per_step ? at::empty({rows, GH}, opts) : Tensor();
  const Tensor h_cell = L.project ? at::empty({rows, L.H}, opts) : Tensor();

  const bool fold = L.bias && !single;
  const Tensor bih = fold ? in_compute(*b_ih, ct) : Tensor();
  const Tensor bhh = fold ? in_compute(*b_hh, ct) : Tensor();

  AT_DISPATCH_FLOATING_TYPES(ct, "fastrnn_layer_fwd", [&] {
    Tensor whh_storage, whr_storage, wih_storage, whh16_storage, wih16_storage;
    auto ptr = [](const Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
    // Otherwise the bias as the input projection carries it: b_ih + b_hh,
    // except GRU's b_hn, which the reset gate multiplies and so stays in the
    // loop. Plain loops, not ATen calls: at small sizes each call's dispatch
    // costs more than its arithmetic.
    std::vector<scalar_t> bias;
    const scalar_t* b_hn = nullptr;
    if (fold) {
      const int64_t folded = L.mode == Mode::GRU ? 2 * L.H : GH;
      const scalar_t* bh = bhh.data_ptr<scalar_t>();
      bias.assign(bih.data_ptr<scalar_t>(), bih.data_ptr<scalar_t>() + GH);
      for (int64_t j = 0; j < folded; ++j) bias[j] += bh[j];
      if (L.mode == Mode::GRU) b_hn = bh + folded;
    }
    Tensor gx = gx_single;
    if (!single && !per_step && step_aten) {  // the same on ATen's bfloat16 matmul, as the steps
      gx = cached_empty({L.N, GH}, opts);
      aten_bf16_projection<scalar_t>(
          L.N, GH, L.I, bits(x), bits(w_ih),
          ukernel_packed(w_ih, L.I, GH, /*transposed=*/true, wih16_storage),
          gx.data_ptr<scalar_t>(), fold ? bias.data() : nullptr);
    } else if (!single && !per_step) {  // gx = bias + x @ W_ih^T for every token
      gx = cached_empty({L.N, GH}, opts);
      scalar_t* g = gx.data_ptr<scalar_t>();
      if (fold)
        at::parallel_for(0, L.N, 64, [&](int64_t n0, int64_t n1) {
          for (int64_t n = n0; n < n1; ++n) std::copy_n(bias.data(), GH, g + n * GH);
        });
      const bool blas = prefer_blas<scalar_t>(Product::InputProjection, L.N, GH, L.I, false, true,
                                              /*tokens_in_m=*/true);
      gemm_on<scalar_t>(blas, L.N, GH, L.I, ptr(xc), L.I, false, ptr(wih), true, g, GH, fold);
    }
    typename ForwardArgs<scalar_t>::Bf16Operands bf16{};
    if (bf16_products) {
      bf16 = {bits(x), per_step ? packed_bf16(w_ih, L.I, GH, wih16_storage) : PackedBf16{},
              step_aten ? PackedBf16{} : packed_bf16(w_hh, L.P, GH, whh16_storage), bits(h0),
              bits(y16)};
    }
    const StepWeights<scalar_t> step_weights{
        step_blas || (step_rows && !stored_bf16) ? ptr(whh) : nullptr,
        step_aten || stored_bf16 ? bits(w_hh) : nullptr, GH, L.P,
        step_aten ? ukernel_packed(w_hh, L.P, GH, /*transposed=*/true, whh16_storage)
                  : UkernelBf16{}};
    ForwardArgs<scalar_t> args{
        ptr(gx),
        ptr(xc),
        per_step && !bf16_products
            ? packed<scalar_t>(wih, L.I, GH, /*transpose=*/true, wih_storage)
            : Packed<scalar_t>{nullptr, L.I, GH},
        fold ? bias.data() : nullptr,
        single || bf16_products || step_blas || step_rows
            ? Packed<scalar_t>{nullptr, L.P, GH}
            : packed<scalar_t>(whh, L.P, GH, /*transpose=*/true, whh_storage),
        single ? gh0.data_ptr<scalar_t>() : nullptr,
        b_hn,
        h0c.data_ptr<scalar_t>(),
        L.project ? packed<scalar_t>(in_compute(*w_hr, ct), L.H, L.P, true, whr_storage)
                  : Packed<scalar_t>{nullptr, 0, 0},
        h.data_ptr<scalar_t>(),
        c.defined() ? c.data_ptr<scalar_t>() : nullptr,
        y.data_ptr<scalar_t>(),
        save ? ws.data_ptr<scalar_t>() : nullptr,
        ptr(gh_step),
        ptr(gx_step),
        ptr(h_cell),
        bf16,
        {step_rows ? &rows_step<scalar_t> : step_blas ? &blas_step<scalar_t> : nullptr,
         step_aten ? &aten_bf16_step<scalar_t> : nullptr, &step_weights}};
    forward_loop<scalar_t>(dims, args);
  });

  const auto out = x.scalar_type();
  Tensor c_n = c.defined() ? c.to(out) : at::empty({0}, x.options());
  return {bf16_products ? y16 : y.to(out), h.to(out), c_n, ws};
}

// layer_fwd on ATen's LSTM (at::lstm), for a validated call of an LSTM
// without projection whose T steps all have B rows: x (T*B, I) is then the
// time-major (T, B, I) sequence at::lstm reads, reversed in time for the
// reverse direction. The workspace is empty (inference only).
Forward aten_lstm_fwd(const Layer& L, const Tensor& x, const Tensor& h0, const Tensor& c0,
                      const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                      const OptTensor& b_hh, bool reverse) {
  Tensor seq = x.view({L.T, L.B, L.I});
  if (reverse) seq = seq.flip(0);
  std::vector<Tensor> params{w_ih, w_hh};
  if (L.bias) params.insert(params.end(), {*b_ih, *b_hh});
  auto [y, h_n, c_n] = at::lstm(seq, {h0.unsqueeze(0), c0.unsqueeze(0)}, params, L.bias,
                                /*num_layers=*/1, /*dropout=*/0.0, /*train=*/false,
                                /*bidirectional=*/false, /*batch_first=*/false);
  if (reverse) y = y.flip(0);
  return {y.reshape({L.N, L.H}), h_n.squeeze(0).contiguous(),
          c_n.squeeze(0).contiguous(),
          at::empty({0, workspace::columns(L.mode, L.H)}, x.options().dtype(compute_type(x)))};
}

// Whether ATen runs a bfloat16 LSTM on oneDNN on this CPU (AVX-512 and
// newer). Elsewhere it takes its per-step path, whose bfloat16 matmul ran at
// 0.13-0.7 GFLOP/s on an AMD EPYC with AVX2 (fp32: 7-17): one such call can
// outlast minutes of the loop, so it is not raced at all. The answer is
// ATen's own (the op behind torch.backends.mkldnn's check); a torch without
// that op leaves the choice to the race.
bool onednn_bf16() {
  static const bool yes = [] {
    const auto op = c10::Dispatcher::singleton().findOp({"mkldnn::_is_mkldnn_bf16_supported", ""});
    return !op || op->typed<bool()>().call();
  }();
  return yes;
}

// Whether a call may run on ATen's LSTM instead of fastrnn's loop: an
// inference LSTM (no workspace wanted), float32, or bfloat16 where oneDNN
// runs it (onednn_bf16; oneDNN has no float64 LSTM), without projection
// (nor has it), every step of B rows (a
// padded batch; packed sequences of different lengths take ATen's per-step
// path, which the loop beats). Inference at B = 64 is where oneDNN's LSTM,
// the gate math fused into its products' register tiles, led the loop on an
// Intel Xeon (0.89-0.98x of torch.nn, 1 thread; docs/benchmarks.md,
// "Results: CPU, Intel Xeon").
bool aten_lstm_candidate(const Layer& L, const Tensor& x, const Tensor& batch_sizes, bool save) {
  const auto dtype = x.scalar_type();
  return !save && L.mode == Mode::LSTM && !L.project &&
         (dtype == at::kFloat || (dtype == at::kBFloat16 && onednn_bf16())) && L.B > 0 &&
         L.I > 0 && batch_sizes.data_ptr<int64_t>()[L.T - 1] == L.B;
}

Forward layer_fwd(const std::string& mode, const Tensor& x, const Tensor& batch_sizes,
                  const Tensor& h0, const OptTensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                  const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
                  bool reverse, bool save) {
  const Layer L = check_layer(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr);
  auto own = [&] {
    return own_layer_fwd(L, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, save);
  };
  if (!aten_lstm_candidate(L, x, batch_sizes, save)) return own();
  auto aten = [&] { return aten_lstm_fwd(L, x, h0, *c0, w_ih, w_hh, b_ih, b_hh, reverse); };
  // The faster of the two, learnt from this shape's calls (race_calls);
  // FASTRNN_CPU_PRODUCTS pins it: own never runs ATen's LSTM, blas always.
  bool pinned_aten;
  if (products_pinned(&pinned_aten)) return pinned_aten ? aten() : own();
  Forward out;
  race_calls(static_cast<int>(x.element_size()), L.B, L.I, L.G * L.H, L.T, reverse, L.bias,
             [&] { out = own(); }, [&] { out = aten(); });
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> layer_bwd(
    const std::string& mode, const Tensor& grad_y, const Tensor& grad_h_n,
    const Tensor& grad_c_n, const Tensor& x, const Tensor& batch_sizes, const Tensor& h0,
    const OptTensor& c0, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
    const OptTensor& b_hh, const OptTensor& w_hr, const Tensor& y, const Tensor& workspace,
    bool reverse, sig::OutputMask output_mask) {
  const Layer L = check_layer(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr);
  const auto ct = compute_type(x);
  const int64_t GH = L.G * L.H, H = L.H;
  // The gradients asked for: the products of the others are skipped (dh0's
  // W_hh term: a single step's product, and the loop's at its first step for
  // the rows live there; rows that join later in processing order, in the
  // reverse direction, still compute theirs inside the loop).
  const auto [want_dx, want_state, want_params] = output_mask;
  check_tensor(grad_y, "grad_y", x);
  check_shape(grad_y, "grad_y", {L.N, L.P});
  check_tensor(grad_h_n, "grad_h_n", x);
  check_shape(grad_h_n, "grad_h_n", {L.B, L.P});
  check_tensor(y, "y", x);
  check_shape(y, "y", {L.N, L.P});
  if (L.mode == Mode::LSTM) {
    check_tensor(grad_c_n, "grad_c_n", x);
    check_shape(grad_c_n, "grad_c_n", {L.B, L.H});
  } else {
    TORCH_CHECK(grad_c_n.numel() == 0, "fastrnn: grad_c_n must be empty for ", mode);
  }
  TORCH_CHECK(workspace.device().is_cpu() && workspace.scalar_type() == ct &&
                  workspace.is_contiguous(),
              "fastrnn: workspace must be a contiguous ", ct, " CPU tensor");
  TORCH_CHECK(workspace.sizes() == at::IntArrayRef({L.N, workspace::columns(L.mode, H)}),
              "fastrnn: workspace has shape ", workspace.sizes(),
              "; run layer_fwd with save=True before layer_bwd");

  // dh0's W_hh term and the products by BLAS for a single step with weights
  // over 64K elements: at H = 256, B = 1 an LSTM's backward takes 118 us
  // against 180 packed; at H = 64, B = 1..64 packing is 15-35 % faster.
  const bool single = blas_single_step(L, int64_t{1} << 16);
  // bfloat16 operands (bf16_operands): the large products below, and the
  // loop's dh = dG @ W_hh when H is even (read in pairs); x and W_ih (and then
  // W_hh) need no fp32 copy.
  const bool bf16_products = bf16_operands(L, x);
  const bool bf16_loop = bf16_products && H % 2 == 0;
  const auto [single_bf16, single_gemv] = single_bf16_products(L, x, single);
  // Such a step without projection runs its gate backward on the bfloat16
  // operands as they are (single_step_bf16_backward) instead of the loop.
  const bool bf16_step = (single_bf16 || single_gemv) && !L.project;
  const bool lstm = L.mode == Mode::LSTM;
  auto widened = [&](const Tensor& t) { return bf16_step ? Tensor() : in_compute(t, ct); };
  const Tensor xc = bf16_products || single_bf16 || !want_params ? Tensor() : in_compute(x, ct);
  const Tensor wih =
      bf16_products || single_bf16 || single_gemv || !want_dx ? Tensor() : in_compute(w_ih, ct);
  const Tensor whh = bf16_loop || single_bf16 || single_gemv ? Tensor() : in_compute(w_hh, ct);
  const Tensor gy = widened(grad_y), yc = widened(y), h0c = widened(h0);
  const Tensor c0c = lstm ? widened(*c0) : Tensor();
  const auto opts = x.options().dtype(ct);
  const int64_t dgc = dgate_columns(L.mode, H);
  // dh and dc: in, grad_h_n and grad_c_n; out, dh0 and dc0 (bfloat16 steps:
  // GRU's direct term of dh0 in fp32, dc0 in bfloat16).
  Tensor dh = !bf16_step ? state_copy(grad_h_n, ct)
              : L.mode == Mode::GRU ? at::empty({L.B, H}, opts) : Tensor();
  Tensor dc = !lstm ? Tensor() : bf16_step ? at::empty({L.B, H}, x.options())
                                           : state_copy(grad_c_n, ct);

  // With our products, the loop runs in ranges of steps, and each range's dG
  // goes into the products while it is still in cache; dG, h_prev (and dY,
  // h_cell) then exist for one range only (step_ranges). A single step takes
  // all steps as one range. The bf16 products read all of dG after the loop:
  // its ranges write into buffers of every row (`whole`), and only dG's column
  // sums run per range, on rows still in cache (read back after the whole
  // loop, 8 MiB of dG at B = 16, H = 128, T = 256, they cost a bfloat16 LSTM's
  // backward as much as half its step products).
  const std::vector<StepRange> ranges =
      single ? std::vector<StepRange>{{0, L.T, 0, L.N}}
             : step_ranges(L, batch_sizes, reverse, dgc * at::elementSize(ct));
  const bool whole = single || bf16_products;
  int64_t rows = whole ? L.N : 0;
  for (const StepRange& r : ranges) rows = std::max(rows, r.row1 - r.row0);
  Tensor dg = cached_empty({rows, dgc}, opts);
  Tensor h_prev = bf16_step ? Tensor() : cached_empty({rows, L.P}, opts);
  Tensor dy_total = L.project ? at::empty({rows, L.P}, opts) : Tensor();
  Tensor h_cell = L.project ? at::empty({rows, H}, opts) : Tensor();
  const LayerDims dims = dims_of(L, batch_sizes, reverse);
  Tensor dh_cell =
      L.project ? at::empty({L.B * scratch_copies(dims, ct), H}, opts) : Tensor();
  Tensor dg16 = bf16_loop || bf16_step ? cached_empty(dg.sizes(), x.options()) : Tensor();
  const Tensor dgh16 = bf16_step && single_bf16 && L.mode == Mode::GRU
                            ? at::empty({L.B, GH}, x.options())
                            : Tensor();

  // GRU's hidden side differs from its input side in the n gate:
  // dg = [d r | d z | d x_n | d h_n], so its W_hh side is columns 0..2H and
  // 3H..4H of dg, two column ranges of the same products.
  struct Range {
    int64_t dg_col, w_row, rows;
  };
  const std::vector<Range> hidden_side =
      L.mode == Mode::GRU ? std::vector<Range>{{0, 0, 2 * H}, {3 * H, 2 * H, H}}
                          : std::vector<Range>{{0, 0, GH}};
  // dW_hh (GH, P) by ATen's matmul: each range's rows = g[:, range]^T @ hp,
  // written in place (GRU's two ranges: no cat copying a 3H x P gradient,
  // 12 MiB a step for a GRUCell at H = 1024).
  auto hidden_weight_grad = [&](const Tensor& g, const std::vector<Range>& ranges,
                                const Tensor& hp) {
    if (ranges.size() == 1) return at::mm(g.narrow(1, ranges[0].dg_col, ranges[0].rows).t(), hp);
    Tensor out = at::empty({GH, hp.size(1)}, hp.options());
    for (const Range& r : ranges) {
      Tensor rows = out.narrow(0, r.w_row, r.rows);
      at::mm_out(rows, g.narrow(1, r.dg_col, r.rows).t(), hp);
    }
    return out;
  };
  Tensor dx, dw_ih, dw_hh;
  if (!bf16_products && !single) {
    if (want_dx) dx = fresh({L.N, L.I}, opts);
    if (want_params) dw_ih = at::empty({GH, L.I}, opts), dw_hh = at::empty({GH, L.P}, opts);
  }
  Tensor dw_hr = L.project && want_params ? at::empty({L.P, H}, opts) : Tensor();
  const bool bias_grads = L.bias && want_params;
  std::vector<double> bias_sums(bias_grads ? dgc : 0, 0.0);  // column sums of dG

  if (bf16_step) {
    single_step_bf16_backward({L.mode, L.B, H, bits(grad_y), bits(grad_h_n),
                               lstm ? bits(grad_c_n) : nullptr, bits(y), bits(h0),
                               lstm ? bits(*c0) : nullptr, workspace.data_ptr<float>(),
                               dg.data_ptr<float>(), bits(dg16),
                               dgh16.defined() ? bits(dgh16) : nullptr, lstm ? bits(dc) : nullptr,
                               L.mode == Mode::GRU ? dh.data_ptr<float>() : nullptr});
    if (bias_grads) add_column_sums<float>(L.B, dgc, dg.data_ptr<float>(), dgc, bias_sums.data());
  } else AT_DISPATCH_FLOATING_TYPES(ct, "fastrnn_layer_bwd", [&] {
    using S = scalar_t;
    Tensor whh_storage, whr_storage, whh16_storage, wih_storage;
    auto ptr = [](const Tensor& t) { return t.defined() ? t.data_ptr<S>() : nullptr; };
    typename BackwardArgs<S>::Bf16Operands bf16{};
    // The bf16 step product on ATen's bfloat16 matmul where measured faster
    // (batch tiles: every part computes every column); W_hh is then not packed.
    const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
    const bool step_aten =
        bf16_loop && scratch_copies(dims, ct) == 1 &&
        prefer_aten_bf16_backward_step(L.B, (L.B + threads - 1) / threads, L.P, GH, L.T);
    if (bf16_loop && !step_aten) {
      whh16_storage = at::empty({packed_size_bf16(GH, L.P)}, w_hh.options());
      pack_bf16(bits(w_hh), GH, L.P, bits(whh16_storage));
    }
    if (bf16_loop) bf16 = {PackedBf16{step_aten ? nullptr : bits(whh16_storage), GH, L.P}, bits(dg16)};
    BackwardArgs<S> args{
        ptr(gy), ptr(yc), ptr(h0c), ptr(c0c), ptr(workspace),
        single || bf16_loop ? Packed<S>{nullptr, GH, L.P}
                            : packed<S>(whh, GH, L.P, /*transpose=*/false, whh_storage),
        L.project ? packed<S>(in_compute(*w_hr, ct), L.P, H, false, whr_storage)
                  : Packed<S>{nullptr, 0, 0},
        ptr(dh), ptr(dc), ptr(dg), ptr(h_prev), ptr(dy_total), ptr(h_cell), ptr(dh_cell),
        bf16, 0, 0, 0, {}};
    const StepWeights<S> step_weights{
        nullptr, step_aten ? bits(w_hh) : nullptr, GH, L.P,
        step_aten ? ukernel_packed(w_hh, GH, L.P, /*transposed=*/false, whh16_storage)
                  : UkernelBf16{}};
    if (step_aten) args.step_product = {&aten_bf16_backward_step<S>, &step_weights};
    args.dh0_product = want_state;
    // Each product on the blocks or on BLAS, as measured for this machine
    // (product_choice.h), for the rows of the largest range.
    int64_t range_rows = 0;
    for (const StepRange& r : ranges) range_rows = std::max(range_rows, r.row1 - r.row0);
    auto product = [&](Product p, bool tokens_in_m, int64_t M, int64_t n, int64_t K, const S* A,
                       int64_t lda, const S* B, S* C, int64_t ldc, bool acc) {
      const bool blas = prefer_blas<S>(p, tokens_in_m ? range_rows : M, n,
                                       tokens_in_m ? K : range_rows, !tokens_in_m, false,
                                       tokens_in_m);
      gemm_on<S>(blas, M, n, K, A, lda, !tokens_in_m, B, false, C, ldc, acc);
    };
    const bool products = !single && !bf16_products;
    // dx = dG @ W_ih: on the blocks, W_ih packed once for every range.
    const bool dx_blas =
        products && want_dx &&
        prefer_blas<S>(Product::InputGrad, range_rows, L.I, GH, false, false, /*tokens_in_m=*/true);
    const Packed<S> wih_p = !products || !want_dx || dx_blas
                                ? Packed<S>{nullptr, GH, L.I}
                                : packed<S>(wih, GH, L.I, /*transpose=*/false, wih_storage);
    for (size_t i = 0; i < ranges.size(); ++i) {  // from the last steps processed back
      const StepRange& r = ranges[i];
      args.s_begin = r.s_begin, args.s_end = r.s_end, args.row0 = whole ? 0 : r.row0;
      backward_loop<S>(dims, args);
      const int64_t n = r.row1 - r.row0;
      const S* g = dg.data_ptr<S>() + (whole ? r.row0 * dgc : 0);
      if (bias_grads) add_column_sums<S>(n, dgc, g, dgc, bias_sums.data());
      if (whole) continue;  // every row in one buffer: products below
      // This range's share of the input and weight gradients (gemm.h):
      // dx rows = dG @ W_ih; dW_ih += dG^T X; dW_hh += dG_h^T H_prev;
      // dW_hr += dY^T H_cell.
      const bool acc = i > 0;
      if (want_dx) {
        S* dx_rows = dx.data_ptr<S>() + r.row0 * L.I;
        if (dx_blas) {
          blas_gemm<S>(n, L.I, GH, g, dgc, false, wih.data_ptr<S>(), false, dx_rows, L.I, false);
        } else {
          gemm<S>(n, g, dgc, false, wih_p, dx_rows, L.I, false);
        }
      }
      if (!want_params) continue;
      product(Product::InputWeightGrad, false, GH, L.I, n, g, dgc,
              xc.data_ptr<S>() + r.row0 * L.I, dw_ih.data_ptr<S>(), L.I, acc);
      for (const Range& hr : hidden_side)
        product(Product::HiddenWeightGrad, false, hr.rows, L.P, n, g + hr.dg_col, dgc,
                h_prev.data_ptr<S>(), dw_hh.data_ptr<S>() + hr.w_row * L.P, L.P, acc);
      if (L.project)
        product(Product::ProjWeightGrad, false, L.P, H, n, dy_total.data_ptr<S>(), L.P,
                h_cell.data_ptr<S>(), dw_hr.data_ptr<S>(), H, acc);
    }
  });

  if (single) {
    // One step (a cell): products of B rows by ATen's matmul, without our
    // packing; a bfloat16 step's in bfloat16 (dG and h_prev rounded, the
    // weights as they are), as torch.nn's cells run them: widening both
    // weights every call ran an LSTMCell's training step at B = 8, H = 1024
    // 0.45x of torch.nn (Emerald Rapids, 1 thread).
    const auto dt = single_bf16 ? at::kBFloat16 : ct;
    const Tensor g = bf16_step && single_bf16 ? dg16 : dg.to(dt), g_x = g.narrow(1, 0, GH);
    const Tensor hp = want_params ? h0.to(dt) : Tensor();  // a single step's h_prev
    const Tensor& wh = single_bf16 ? w_hh : whh;
    if (want_dx && single_gemv) {
      dx = at::empty({L.B, L.I}, opts);
      rows_times_w_bf16(L.B, dg.data_ptr<float>(), dgc, bits(w_ih), GH, L.I,
                        dx.data_ptr<float>(), L.I, false);
    } else if (want_dx) {
      dx = at::mm(g_x, single_bf16 ? w_ih : wih);
    }
    if (want_params) dw_ih = at::mm(g_x.t(), single_bf16 ? x : xc);
    // W_hh's side of dG: GRU's [d r | d z | d h_n] as one operand where the
    // gate backward wrote it so (dgh16: one product each, and no cat of a
    // 3H x H gradient), else column ranges of g.
    const bool one_hidden = dgh16.defined();
    const std::vector<Range> h_ranges =
        one_hidden ? std::vector<Range>{{0, 0, GH}} : hidden_side;
    const Tensor& g_h = one_hidden ? dgh16 : g;
    if (want_params) dw_hh = hidden_weight_grad(g_h, h_ranges, hp);
    // dh0's W_hh term; GRU's gate backward already wrote its direct term dh * z.
    const bool gru = L.mode == Mode::GRU;
    if (want_state && single_gemv) {
      if (!dh.defined()) dh = at::empty({L.B, L.P}, opts);
      for (const Range& r : hidden_side)
        rows_times_w_bf16(L.B, dg.data_ptr<float>() + r.dg_col, dgc, bits(w_hh) + r.w_row * L.P,
                          r.rows, L.P, dh.data_ptr<float>(), L.P, /*accumulate=*/gru);
    } else if (want_state) {
      for (const Range& r : h_ranges) {  // dh is else unused after the step
        const Tensor term = at::mm(g_h.narrow(1, r.dg_col, r.rows), wh.narrow(0, r.w_row, r.rows));
        dh = gru ? dh.add_(term) : term;
      }
    }
    if (L.project && want_params) at::mm_out(dw_hr, dy_total.t(), h_cell);
  } else if (bf16_products) {
    // A bfloat16 layer on a CPU with bf16 dot products: dG rounded to bfloat16
    // (x, y, h_prev and the weights are bfloat16 values already), products by
    // ATen's bfloat16 matmul (oneDNN on AVX512-BF16: ~200 GFLOP/s here
    // against 80-110 for fp32), accumulated in fp32 and rounded once to the
    // bfloat16 gradients returned anyway; torch.nn's bf16 kernels do the same.
    if (!bf16_loop) dg16 = cached_empty(dg.sizes(), x.options()).copy_(dg);  // else the loop wrote it
    const Tensor dg16_x = dg16.narrow(1, 0, GH);
    if (want_dx) dx = at::mm(dg16_x, w_ih);
    if (want_params) {
      const Tensor hp16 = cached_empty(h_prev.sizes(), x.options()).copy_(h_prev);
      dw_ih = at::mm(dg16_x.t(), x);
      dw_hh = hidden_weight_grad(dg16, hidden_side, hp16);
    }
  }

  // Bias gradients from the column sums of dG: the input side's columns 0..GH
  // and the hidden side's ranges (for GRU not the same columns).
  Tensor db_ih, db_hh;
  if (bias_grads) {
    db_ih = at::empty({GH}, opts), db_hh = at::empty({GH}, opts);
    AT_DISPATCH_FLOATING_TYPES(ct, "fastrnn_layer_bwd_bias", [&] {
      std::copy_n(bias_sums.data(), GH, db_ih.data_ptr<scalar_t>());
      for (const Range& r : hidden_side)
        std::copy_n(bias_sums.data() + r.dg_col, r.rows, db_hh.data_ptr<scalar_t>() + r.w_row);
    });
  }

  // An output not asked for, or of an absent input, is empty; each its own
  // tensor, as outputs must not alias.
  const auto out = x.scalar_type();
  auto result = [&](const Tensor& t) {
    return t.defined() ? t.to(out) : at::empty({0}, x.options());
  };
  return {result(dx),    result(want_state ? dh : Tensor()), result(want_state ? dc : Tensor()),
          result(dw_ih), result(dw_hh), result(db_ih), result(db_hh), result(dw_hr)};
}

// Runs fn(d) for d = 0 (forward) and 1 (reverse), concurrently when there are
// threads: each direction then runs on one thread, with the caller's
// thread-local state (grad mode, dispatch keys); inside it every
// at::parallel_for runs inline and BLAS calls run single-threaded, so the two
// directions do not compete for threads. Errors are rethrown by parallel_for.
void for_both_directions(c10::function_ref<void(int64_t)> fn) {
  const at::ThreadLocalState state;
  at::parallel_for(0, 2, 1, [&](int64_t d0, int64_t d1) {
    at::ThreadLocalStateGuard guard(state);
    for (int64_t d = d0; d < d1; ++d) fn(d);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  impl<LayerFwd, &layer_fwd>(m);
  impl<LayerBwd, &layer_bwd>(m);
  impl<BilayerFwd, &bilayer_fwd<&layer_fwd, &for_both_directions>>(m);
  impl<BilayerBwd, &bilayer_bwd<&layer_bwd, &for_both_directions>>(m);
}

}  // namespace fastrnn::cpu
