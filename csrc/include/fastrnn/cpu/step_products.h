// The step products a layer's loops call through a function pointer
// (ForwardArgs::step_product, BackwardArgs::step_product in recurrence.h)
// where the planned product is not fastrnn's packed blocks: BLAS, the
// rows kernels on W_hh as stored (gemv_bf16.h), or ATen's bfloat16 kernels
// (ukernel_bf16.h); and the hoisted bfloat16 input projection on the latter.
// The float64 instances of the bfloat16 ones exist only to fill the table:
// bfloat16 layers compute in float.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>

#include "fastrnn/cpu/product_choice.h"
#include "fastrnn/cpu/gemv_bf16.h"
#include "fastrnn/cpu/ukernel_bf16.h"

namespace fastrnn::cpu {

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


}  // namespace fastrnn::cpu
