// What the CPU bindings of fastrnn::layer_fwd (csrc/cpu/layer_fwd.cpp) and
// fastrnn::layer_bwd (csrc/cpu/layer_bwd.cpp) share: the checks of a call's
// arguments, the buffers and packed weights they hand the framework-free loops
// (recurrence.h), and which kinds of products a call's shape and dtype allow.
// Shapes: fastrnn/backends/base.py.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/FunctionRef.h>

#include <string>

#include "fastrnn/cpu/recurrence.h"
#include "fastrnn/cpu/small_gemm.h"
#include "fastrnn/cpu/small_gemm_bf16.h"
#include "fastrnn/cpu/ukernel_bf16.h"
#include "fastrnn/workspace.h"

namespace fastrnn::cpu {

using OptTensor = c10::optional<at::Tensor>;

// Sizes of a validated call; see fastrnn/backends/base.py for the shapes.
struct Layer {
  Mode mode;
  int64_t G, H, P, I, B, T, N;
  bool bias, project;
};

// t on the CPU, of x's dtype, contiguous (else a RuntimeError naming it).
void check_tensor(const at::Tensor& t, const char* name, const at::Tensor& x);
void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef shape);

// Validates every argument of a layer call (mode, dtypes, devices, contiguity,
// batch_sizes, shapes) before any memory is touched; returns its sizes.
Layer check_layer(const std::string& mode_name, const at::Tensor& x,
                  const at::Tensor& batch_sizes, const at::Tensor& h0, const OptTensor& c0,
                  const at::Tensor& w_ih, const at::Tensor& w_hh, const OptTensor& b_ih,
                  const OptTensor& b_hh, const OptTensor& w_hr);

// The dtype the state math and sums run in: fp32 for bfloat16, else x's.
at::ScalarType compute_type(const at::Tensor& x);

// t in the compute dtype (a no-op unless t is bfloat16).
at::Tensor in_compute(const at::Tensor& t, at::ScalarType ct);

// A fresh, writable state buffer holding t in the compute dtype.
at::Tensor state_copy(const at::Tensor& t, at::ScalarType ct);

// at::empty for the per-token outputs handed to the user (y, dx), hinted to
// transparent huge pages from 32 MiB on (why: layer_args.cpp).
at::Tensor fresh(at::IntArrayRef sizes, const at::TensorOptions& opts);

// B (K, n) packed for small_gemm; `storage` keeps the memory alive.
template <typename S>
Packed<S> packed(const at::Tensor& src, int64_t K, int64_t n, bool transpose,
                 at::Tensor& storage) {
  storage = at::empty({packed_size<S>(K, n)}, src.options());
  pack_rhs<S>(src.data_ptr<S>(), K, n, transpose, storage.data_ptr<S>());
  return Packed<S>{storage.data_ptr<S>(), K, n};
}

// The bit patterns of a bfloat16 tensor, for the framework-free kernels.
inline uint16_t* bits(const at::Tensor& t) {
  return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>());
}

// W^T packed for small_gemm_bf16, W (n, K) bfloat16; `storage` keeps the memory alive.
PackedBf16 packed_bf16(const at::Tensor& w, int64_t K, int64_t n, at::Tensor& storage);

// W (K, n), or W^T for W (n, K) where `transposed`, packed for the bf16
// ukernel where it runs (ukernel_bf16.h), else absent; `storage` keeps the
// memory alive.
UkernelBf16 ukernel_packed(const at::Tensor& w, int64_t K, int64_t n, bool transposed,
                           at::Tensor& storage);

// Whether a layer's products take bfloat16 operands (small_gemm_bf16.h;
// ATen's bf16 matmul for the backward's large ones): a bfloat16 layer of more
// than one step, without projection (its h_cell would need a rounding
// torch.nn's bf16 kernels do not make), where the build has bf16 dot
// products. The kernels that read operands in pairs add their size rules.
bool bf16_operands(const Layer& L, const at::Tensor& x);

// Whether a single step (a cell, or T = 1) runs its products as BLAS calls,
// which read each weight once, instead of packing the weights for a product
// of B rows like every other length: when G*H*(I+P) weight elements exceed
// `limit`. Packing small weights costs less than the BLAS calls' overhead;
// where that ends was measured per pass (layer_fwd, layer_bwd).
bool blas_single_step(const Layer& L, int64_t limit);

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
SingleBf16 single_bf16_products(const Layer& L, const at::Tensor& x, bool single);

// scratch_slots (steps.h) for the compute dtype.
int64_t scratch_copies(const LayerDims& dims, at::ScalarType ct);

LayerDims dims_of(const Layer& L, const at::Tensor& batch_sizes, bool reverse);

// Runs fn(d) for d = 0 (forward) and 1 (reverse), concurrently when there are
// threads: each direction then runs on one thread, with the caller's
// thread-local state (grad mode, dispatch keys); inside it every
// at::parallel_for runs inline and BLAS calls run single-threaded, so the two
// directions do not compete for threads. Errors are rethrown by parallel_for.
void for_both_directions(c10::function_ref<void(int64_t)> fn);

}  // namespace fastrnn::cpu
