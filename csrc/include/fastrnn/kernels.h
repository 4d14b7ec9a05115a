// The C++ signature of every fastrnn op's kernels, declared once for all
// devices (the schemas are in csrc/ops.cpp). Each device registers its kernels
// through impl<Op, &kernel>(m), whose template parameter has the op's function
// type, so a kernel written against another signature (say std::string_view
// for `str`) fails to compile, instead of aborting `import fastrnn` with the
// dispatcher's "Mismatch in kernel C++ signatures".
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace fastrnn {

namespace sig {
using at::Tensor;
using OptTensor = std::optional<Tensor>;
using Tensors = std::vector<Tensor>;
using at::TensorList;
// layer_bwd's `bool[3] output_mask`: which gradients to compute,
// [dx, (dh0, dc0), (dw_ih, dw_hh, db_ih, db_hh, dw_hr)] (csrc/ops.cpp).
using OutputMask = std::array<bool, 3>;

// layer_fwd(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, save)
//   -> (y, h_n, c_n, workspace)
using LayerFwdFn = std::tuple<Tensor, Tensor, Tensor, Tensor>(
    const std::string&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
    const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&, bool,
    bool);

// layer_bwd(mode, grad_y, grad_h_n, grad_c_n, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih,
//           b_hh, w_hr, y, workspace, reverse, output_mask)
//   -> (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr)
using LayerBwdFn = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const std::string&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const Tensor&, const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
    const OptTensor&, const OptTensor&, const OptTensor&, const Tensor&, const Tensor&, bool,
    OutputMask);

// bilayer_fwd(mode, x, batch_sizes, h0[2], c0[], w_ih[2], w_hh[2], b_ih[], b_hh[], w_hr[], save)
//   -> (y[2], h_n[2], c_n[2], workspace[2])
using BilayerFwdFn = std::tuple<Tensors, Tensors, Tensors, Tensors>(
    const std::string&, const Tensor&, const Tensor&, TensorList, TensorList, TensorList,
    TensorList, TensorList, TensorList, TensorList, bool);

// bilayer_bwd(mode, grad_y[2], grad_h_n[2], grad_c_n[2], x, batch_sizes, h0[2], c0[],
//             w_ih[2], w_hh[2], b_ih[], b_hh[], w_hr[], y[2], workspace[2], output_mask)
//   -> (dx, dh0[2], dc0[2], dw_ih[2], dw_hh[2], db_ih[2], db_hh[2], dw_hr[2])
using BilayerBwdFn =
    std::tuple<Tensor, Tensors, Tensors, Tensors, Tensors, Tensors, Tensors, Tensors>(
        const std::string&, TensorList, TensorList, TensorList, const Tensor&, const Tensor&,
        TensorList, TensorList, TensorList, TensorList, TensorList, TensorList, TensorList,
        TensorList, TensorList, OutputMask);
}  // namespace sig

// One tag per op: its name in the schema block and its kernels' function type.
template <const char* Name, typename F>
struct OpTag {
  static constexpr const char* name = Name;
  using Fn = F;
};
inline constexpr char kLayerFwd[] = "layer_fwd", kLayerBwd[] = "layer_bwd",
                      kBilayerFwd[] = "bilayer_fwd", kBilayerBwd[] = "bilayer_bwd";
using LayerFwd = OpTag<kLayerFwd, sig::LayerFwdFn>;
using LayerBwd = OpTag<kLayerBwd, sig::LayerBwdFn>;
using BilayerFwd = OpTag<kBilayerFwd, sig::BilayerFwdFn>;
using BilayerBwd = OpTag<kBilayerBwd, sig::BilayerBwdFn>;

// The dispatcher's handle of Op, for a kernel that calls the op again below
// its own dispatch key (autograd, autocast), so that the call reaches the
// device kernels or, traced, the fake kernels.
template <typename Op>
const c10::TypedOperatorHandle<typename Op::Fn>& op() {
  static const auto handle =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow((std::string("fastrnn::") + Op::name).c_str(), "")
          .template typed<typename Op::Fn>();
  return handle;
}

// Registers `kernel` for Op inside a TORCH_LIBRARY_IMPL block. The only way a
// device kernel should be registered: the conversion of &kernel to Op::Fn* is
// the compile-time signature check.
template <typename Op, typename Op::Fn* kernel>
void impl(torch::Library& m) {
  m.impl(Op::name, TORCH_FN(kernel));
}

}  // namespace fastrnn
