// The CPU layer ops' shared argument handling (declarations and what each
// does: fastrnn/cpu/layer_args.h).
#include "fastrnn/cpu/layer_args.h"

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#if __has_include(<sys/mman.h>)
#include <sys/mman.h>  // madvise, MADV_HUGEPAGE (fresh)
#endif

#include "fastrnn/cpu/product_choice.h"
#include "fastrnn/cpu/steps.h"

namespace fastrnn::cpu {

using at::Tensor;

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

Tensor in_compute(const Tensor& t, at::ScalarType ct) {
  return t.scalar_type() == ct ? t : t.to(ct);
}

Tensor state_copy(const Tensor& t, at::ScalarType ct) {
  return at::empty(t.sizes(), t.options().dtype(ct)).copy_(t);
}

// Blocks of 32 MiB and more are hinted to transparent huge pages before their
// first touch: glibc maps such a block afresh on every call (its mmap
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

PackedBf16 packed_bf16(const Tensor& w, int64_t K, int64_t n, Tensor& storage) {
  storage = at::empty({packed_size_bf16(K, n)}, w.options());
  pack_transposed_bf16(bits(w), K, n, bits(storage));
  return PackedBf16{bits(storage), K, n};
}

UkernelBf16 ukernel_packed(const Tensor& w, int64_t K, int64_t n, bool transposed,
                           Tensor& storage) {
  if (!ukernel_bf16_available()) return UkernelBf16{};
  storage = at::empty({ukernel_packed_size(K, n)}, w.options());
  pack_ukernel_bf16(bits(w), K, n, transposed, bits(storage));
  return UkernelBf16{bits(storage), K, n};
}

bool bf16_operands(const Layer& L, const Tensor& x) {
  return kBf16Products && x.scalar_type() == at::kBFloat16 && L.T > 1 && !L.project;
}

bool blas_single_step(const Layer& L, int64_t limit) {
  return L.T == 1 && L.G * L.H * (L.I + L.P) > limit;
}

SingleBf16 single_bf16_products(const Layer& L, const Tensor& x, bool single) {
  if (!single || x.scalar_type() != at::kBFloat16) return {};
  const bool in_bf16 = prefer_bf16_single_step(L.B, L.I, L.P, L.G * L.H);
  return {in_bf16, prefer_gemv_bf16_single_step(L.B, L.I, L.P, L.G * L.H, in_bf16)};
}

int64_t scratch_copies(const LayerDims& dims, at::ScalarType ct) {
  return ct == at::kDouble ? scratch_slots<double>(dims) : scratch_slots<float>(dims);
}

LayerDims dims_of(const Layer& L, const Tensor& batch_sizes, bool reverse) {
  return LayerDims{L.mode, L.T, L.B, L.N, L.H, L.P, batch_sizes.data_ptr<int64_t>(), reverse};
}

void for_both_directions(c10::function_ref<void(int64_t)> fn) {
  const at::ThreadLocalState state;
  at::parallel_for(0, 2, 1, [&](int64_t d0, int64_t d1) {
    at::ThreadLocalStateGuard guard(state);
    for (int64_t d = d0; d < d1; ++d) fn(d);
  });
}

}  // namespace fastrnn::cpu
