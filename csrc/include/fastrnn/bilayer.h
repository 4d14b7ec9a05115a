// bilayer_fwd / bilayer_bwd of any device, built from that device's
// layer_fwd / layer_bwd kernels: per-direction arguments come as lists of 2
// ([forward, reverse]; an absent optional argument is an empty list), results
// are the per-direction results as lists, except dx, summed over directions.
// `Run` runs a function of the direction d in {0, 1}: the CPU runs both at once
// on two threads, a GPU one after the other on its stream.
#pragma once

#include <c10/util/FunctionRef.h>

#include "fastrnn/kernels.h"

namespace fastrnn {

using RunBoth = void (*)(c10::function_ref<void(int64_t)>);

// fn(0), then fn(1).
inline void in_turn(c10::function_ref<void(int64_t)> fn) {
  fn(0);
  fn(1);
}

namespace bilayer_detail {
using namespace sig;

// A per-direction argument list must be [forward, reverse], or empty for an
// absent optional argument.
inline void check_pair(TensorList list, const char* name, bool optional = false) {
  TORCH_CHECK(list.size() == 2 || (optional && list.empty()), "fastrnn: ", name,
              " must list 2 tensors (forward, reverse)", optional ? " or none" : "");
}

// Direction d of a checked optional list.
inline OptTensor direction(TensorList list, int64_t d) {
  return list.empty() ? OptTensor() : OptTensor(list[d]);
}
}  // namespace bilayer_detail

template <sig::LayerFwdFn* layer_fwd, RunBoth run>
std::tuple<sig::Tensors, sig::Tensors, sig::Tensors, sig::Tensors> bilayer_fwd(
    const std::string& mode, const at::Tensor& x, const at::Tensor& batch_sizes,
    at::TensorList h0, at::TensorList c0, at::TensorList w_ih, at::TensorList w_hh,
    at::TensorList b_ih, at::TensorList b_hh, at::TensorList w_hr, bool save) {
  using namespace bilayer_detail;
  Tensors y(2), h_n(2), c_n(2), ws(2);
  check_pair(h0, "h0"), check_pair(c0, "c0", true), check_pair(w_ih, "w_ih");
  check_pair(w_hh, "w_hh"), check_pair(b_ih, "b_ih", true), check_pair(b_hh, "b_hh", true);
  check_pair(w_hr, "w_hr", true);
  run([&](int64_t d) {
    std::tie(y[d], h_n[d], c_n[d], ws[d]) =
        layer_fwd(mode, x, batch_sizes, h0[d], direction(c0, d), w_ih[d], w_hh[d],
                  direction(b_ih, d), direction(b_hh, d), direction(w_hr, d),
                  /*reverse=*/d == 1, save);
  });
  return {y, h_n, c_n, ws};
}

template <sig::LayerBwdFn* layer_bwd, RunBoth run>
std::tuple<at::Tensor, sig::Tensors, sig::Tensors, sig::Tensors, sig::Tensors, sig::Tensors,
           sig::Tensors, sig::Tensors>
bilayer_bwd(const std::string& mode, at::TensorList grad_y, at::TensorList grad_h_n,
            at::TensorList grad_c_n, const at::Tensor& x, const at::Tensor& batch_sizes,
            at::TensorList h0, at::TensorList c0, at::TensorList w_ih, at::TensorList w_hh,
            at::TensorList b_ih, at::TensorList b_hh, at::TensorList w_hr, at::TensorList y,
            at::TensorList workspace, sig::OutputMask output_mask) {
  using namespace bilayer_detail;
  check_pair(grad_y, "grad_y"), check_pair(grad_h_n, "grad_h_n");
  check_pair(grad_c_n, "grad_c_n"), check_pair(h0, "h0"), check_pair(c0, "c0", true);
  check_pair(w_ih, "w_ih"), check_pair(w_hh, "w_hh"), check_pair(b_ih, "b_ih", true);
  check_pair(b_hh, "b_hh", true), check_pair(w_hr, "w_hr", true), check_pair(y, "y");
  check_pair(workspace, "workspace");
  Tensors dx(2), dh0(2), dc0(2), dw_ih(2), dw_hh(2), db_ih(2), db_hh(2), dw_hr(2);
  run([&](int64_t d) {
    std::tie(dx[d], dh0[d], dc0[d], dw_ih[d], dw_hh[d], db_ih[d], db_hh[d], dw_hr[d]) =
        layer_bwd(mode, grad_y[d], grad_h_n[d], grad_c_n[d], x, batch_sizes, h0[d],
                  direction(c0, d), w_ih[d], w_hh[d], direction(b_ih, d), direction(b_hh, d),
                  direction(w_hr, d), y[d], workspace[d], /*reverse=*/d == 1, output_mask);
  });
  return {dx[0].add_(dx[1]), dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr};
}

}  // namespace fastrnn
