// Argument checks and step schedule shared by the CUDA bindings of
// fastrnn::layer_fwd and fastrnn::layer_bwd (shapes: fastrnn/backends/base.py).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fastrnn/workspace.h"

namespace fastrnn {
namespace cuda {

// Sizes of one layer call, validated: every later raw-pointer access relies on them.
struct Layer {
  Mode mode = Mode::LSTM;
  int64_t tokens = 0;   // N = sum(batch_sizes)
  int64_t input = 0;    // I
  int64_t hidden = 0;   // H
  int64_t out = 0;      // Hout (proj_size, or H)
  int64_t batch = 0;    // B = batch_sizes[0]
  int64_t gates = 0;    // G
  bool proj = false;
  bool bias = false;
  std::vector<int64_t> sizes;    // batch_sizes
  std::vector<int64_t> offsets;  // first packed row of each step
  // Steps in the order the forward runs them (reverse: T-1 .. 0).
  std::vector<int64_t> forward_order(bool reverse) const;
};

inline void check_same(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.device() == x.device(), "fastrnn: ", name, " is on ", t.device(), " but x is on ",
              x.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "fastrnn: ", name, " has dtype ",
              t.scalar_type(), " but x has ", x.scalar_type());
}

inline void check_shape(const at::Tensor& t, at::IntArrayRef shape, const char* name) {
  TORCH_CHECK(t.sizes() == shape, "fastrnn: ", name, " must have shape ", shape, ", got ",
              t.sizes());
}

// Validates every input of the layer (device, dtype, shapes, batch_sizes) and
// returns its sizes. Contiguity is established by the callers (`dense`).
Layer check_layer(std::string_view mode, const at::Tensor& x, const at::Tensor& batch_sizes,
                  const at::Tensor& h0, const std::optional<at::Tensor>& c0,
                  const at::Tensor& w_ih, const at::Tensor& w_hh,
                  const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
                  const std::optional<at::Tensor>& w_hr);

// A contiguous tensor whose data pointer is 16-byte aligned (vector loads).
at::Tensor dense(const at::Tensor& t);

// Typed data pointer of an optional tensor, nullptr when absent.
template <typename T>
const T* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? reinterpret_cast<const T*>(t->data_ptr()) : nullptr;
}

template <typename T>
T* ptr(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

// Workspace dtype for x's dtype (fastrnn/workspace.h).
inline at::ScalarType workspace_dtype(at::ScalarType x) {
  return x == at::kFloat || x == at::kDouble ? x : at::kFloat;
}

// An empty tensor standing for an output that does not apply to this mode.
inline at::Tensor absent(const at::Tensor& like) { return at::empty({0}, like.options()); }

// Calls f(T{}) with T the CUDA element type of x's dtype (float, __half, __nv_bfloat16).
template <typename F>
auto with_dtype(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kFloat: return f(float{});
    case at::kHalf: return f(__half{});
    case at::kBFloat16: return f(__nv_bfloat16{});
    default: TORCH_CHECK(false, "fastrnn (cuda): unsupported dtype ", dtype);
  }
}

// batch_sizes as the persistent kernels read it: int32 on the device.
inline at::Tensor device_batch_sizes(const at::Tensor& batch_sizes, const at::Device& device) {
  return batch_sizes.to(at::kInt).to(device);
}

// Which kernel path runs a layer: FASTRNN_CUDA_PATH = step | persistent | auto
// (default). Forcing one is for tests and benchmarks.
enum class PathRequest { Auto, Step, Persistent };
PathRequest requested_path();

// Whether the persistent kernels serve this call, given whether the layer fits
// them (`fits`: no projection and a plan with blocks > 0). A forced persistent
// path that does not fit is an error rather than a silent fallback.
bool use_persistent(const Layer& L, PathRequest want, bool fits);

inline cudaStream_t current_stream(const at::Tensor& x) {
  return c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
}

}  // namespace cuda
}  // namespace fastrnn
