// Autocast kernels of layer_fwd and bilayer_fwd, at the dispatcher's
// AutocastCPU and AutocastCUDA keys: under torch.autocast, the dtypes that
// torch.nn's recurrent modules compute in and return (tests/test_autocast.py).
//
// Autocast runs above autograd, so the casts here are differentiable and a
// parameter's gradient comes back in the parameter's own dtype. They go through
// at::autocast::cached_cast: a weight (a leaf that requires grad) is cast once
// per autocast region and then reused, so a cell stepped in a loop does not
// re-cast its weights every step. float64 tensors are never cast, as in torch.
//
// CPU, as torch.nn under torch.autocast("cpu") (low = the autocast dtype):
//   the kernels run in bfloat16 under bfloat16 autocast, except a single step
//   (a cell): the CPU kernels compute a bf16 step in fp32 anyway (bf16
//   products need T > 1, layer_args.h: bf16_operands), so casting its input,
//   states and weights to bf16 would only cost time (~15 us a LSTMCell step)
//   and precision. Under float16 autocast, fp32 too (the CPU kernels have no
//   fp16 arithmetic). The results are then rounded to the dtypes below.
//   The results' dtypes follow torch.nn's CPU cell formulas, whose products
//   run in low precision and whose updates meet the state:
//     RNN                  y, h_n: low (h' = act(products))
//     GRU                  y, h_n: promote(h0, low) (h' = n + z (h - n))
//     LSTM                 c_n: promote(c0, low) (c' = f c + i g);
//                          y, h_n: c's dtype (h' = o tanh(c')), or low with a
//                          projection (its product)
//   That is torch.nn's cells, packed modules and LSTM with proj_size; its
//   padded LSTM runs on oneDNN (mkldnn_rnn_layer, on CPU autocast's list) and
//   returns low, which the module sets (fastrnn/autocast.py), as the op does
//   not know how torch.nn would have run its call.
// CUDA, as torch's Autocast kernel for _cudnn_rnn: every eligible tensor to
//   float16, whatever the autocast dtype, and fp16 results (torch.nn's cells
//   return the autocast dtype: fastrnn/autocast.py).
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "fastrnn/kernels.h"

namespace fastrnn {
namespace {

using at::Tensor;
using sig::OptTensor;
using sig::Tensors;

// The dtype the kernels run in, and the one the results are rounded to where
// torch.nn returns the low precision, under the current autocast state.
struct Precision {
  at::ScalarType run, low;
};

template <c10::DeviceType D>
Precision precision(const Tensor& batch_sizes) {
  if constexpr (D == c10::DeviceType::CUDA) {
    return {at::kHalf, at::kHalf};
  } else {
    const at::ScalarType low = at::autocast::get_autocast_dtype(D);
    const bool bf16 = low == at::kBFloat16 && batch_sizes.numel() > 1;
    return {bf16 ? low : at::kFloat, low};
  }
}

Tensor to(const Tensor& t, at::ScalarType dtype) {
  return !t.defined() || t.scalar_type() == dtype ? t : t.to(dtype);
}

// The results' dtypes (see the file comment): y and h_n share one.
struct OutDtypes {
  at::ScalarType y, c;
};

template <c10::DeviceType D>
OutDtypes out_dtypes(const std::string& mode, const Precision& p, at::ScalarType h0,
                     const OptTensor& c0, bool project) {
  if constexpr (D == c10::DeviceType::CUDA) {
    return {p.low, p.low};
  } else {
    if (mode == "GRU") return {at::promote_types(h0, p.low), p.low};
    if (mode != "LSTM") return {p.low, p.low};
    const at::ScalarType c = at::promote_types(c0 ? c0->scalar_type() : p.low, p.low);
    return {project ? p.low : c, c};
  }
}

template <c10::DeviceType D>
std::tuple<Tensor, Tensor, Tensor, Tensor> layer_fwd_autocast(
    const std::string& mode, const Tensor& x, const Tensor& batch_sizes, const Tensor& h0,
    const OptTensor& c0, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
    const OptTensor& b_hh, const OptTensor& w_hr, bool reverse, bool save) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(D));
  if (!at::autocast::is_eligible(x, D))  // float64 (or another device): as is
    return op<LayerFwd>().call(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                               reverse, save);
  const Precision p = precision<D>(batch_sizes);
  auto cast = [&](const auto& t) { return at::autocast::cached_cast(p.run, t, D); };
  auto [y, h_n, c_n, ws] =
      op<LayerFwd>().call(mode, cast(x), batch_sizes, cast(h0), cast(c0), cast(w_ih),
                          cast(w_hh), cast(b_ih), cast(b_hh), cast(w_hr), reverse, save);
  const OutDtypes out = out_dtypes<D>(mode, p, h0.scalar_type(), c0, w_hr.has_value());
  return {to(y, out.y), to(h_n, out.y), mode == "LSTM" ? to(c_n, out.c) : c_n, ws};
}

template <c10::DeviceType D>
std::tuple<Tensors, Tensors, Tensors, Tensors> bilayer_fwd_autocast(
    const std::string& mode, const Tensor& x, const Tensor& batch_sizes, at::TensorList h0,
    at::TensorList c0, at::TensorList w_ih, at::TensorList w_hh, at::TensorList b_ih,
    at::TensorList b_hh, at::TensorList w_hr, bool save) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(D));
  if (!at::autocast::is_eligible(x, D) || h0.empty())
    return op<BilayerFwd>().call(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                 save);
  const Precision p = precision<D>(batch_sizes);
  auto cast = [&](const auto& t) { return at::autocast::cached_cast(p.run, t, D); };
  auto [y, h_n, c_n, ws] =
      op<BilayerFwd>().call(mode, cast(x), batch_sizes, cast(h0), cast(c0), cast(w_ih),
                            cast(w_hh), cast(b_ih), cast(b_hh), cast(w_hr), save);
  const OutDtypes out = out_dtypes<D>(mode, p, h0[0].scalar_type(),
                                      c0.empty() ? OptTensor() : OptTensor(c0[0]),
                                      !w_hr.empty());
  for (size_t d = 0; d < y.size(); ++d) {
    y[d] = to(y[d], out.y);
    h_n[d] = to(h_n[d], out.y);
    if (mode == "LSTM") c_n[d] = to(c_n[d], out.c);
  }
  return {y, h_n, c_n, ws};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, AutocastCPU, m) {
  impl<LayerFwd, &layer_fwd_autocast<c10::DeviceType::CPU>>(m);
  impl<BilayerFwd, &bilayer_fwd_autocast<c10::DeviceType::CPU>>(m);
}

TORCH_LIBRARY_IMPL(fastrnn, AutocastCUDA, m) {
  impl<LayerFwd, &layer_fwd_autocast<c10::DeviceType::CUDA>>(m);
  impl<BilayerFwd, &bilayer_fwd_autocast<c10::DeviceType::CUDA>>(m);
}

}  // namespace fastrnn
