// Autograd kernels of layer_fwd and bilayer_fwd, for every device: the
// gradient of layer_fwd is layer_bwd, and that of bilayer_fwd is bilayer_bwd.
//
// Registered in C++ rather than with torch.library.register_autograd: the
// Python formula cost ~40 us of autograd overhead per training call on this
// project's CPU (a Python ctx, its setup_context and backward frames, a Python
// node to free), against ~10 us of kernel for a B = 1, H = 64 cell step
// (docs/cpu_kernels.md). torch.compile traces through this kernel as through
// ATen's own formulas: the forward op and, in the backward graph, the
// backward op, both with the fake kernels of fastrnn/_ops.py.
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "fastrnn/kernels.h"

namespace fastrnn {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using Tensors = std::vector<Tensor>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Where backward() calls layer_bwd or bilayer_bwd: below autograd, unless the
// gradient's own graph is being recorded (create_graph=True turns grad mode
// on in backward), where their autograd kernel raises. Otherwise that kernel
// (autogradNotImplementedFallback) only boxes the call's arguments and
// redispatches: ~5 us of a ~160 us RNNCell training step at B = 1, H = 128.
class BelowAutogradUnlessRecording {
 public:
  BelowAutogradUnlessRecording() {
    if (!at::GradMode::is_enabled()) guard_.emplace();
  }

 private:
  std::optional<at::AutoDispatchBelowADInplaceOrView> guard_;
};

// A gradient as the backward kernels read it: dense (a grad from .sum() is
// stride 0), and zeros for an output that autograd did not reach.
Tensor dense_grad(const Tensor& grad, const Tensor& like) {
  return grad.defined() ? grad.contiguous() : at::zeros_like(like);
}

OptTensor optional(const Tensor& t) { return t.defined() ? OptTensor(t) : OptTensor(); }

// An absent optional input, or one whose gradient output_mask did not ask
// for, has no gradient; the kernels return an empty tensor for it (not a
// zero-size gradient of a real input, e.g. input_size 0).
Tensor grad_of(const Tensor& input, const Tensor& grad, bool wanted) {
  return input.defined() && wanted ? grad : Tensor();
}

// needs_input_grad of a range of autograd edges: one edge per tensor input,
// in argument order, an absent optional input having none
// (torch/csrc/autograd/custom_function.h, ExtractVariables).
bool any_needed(AutogradContext* ctx, size_t begin, size_t end) {
  for (size_t e = begin; e < end; ++e)
    if (ctx->needs_input_grad(e)) return true;
  return false;
}

void check_saved(AutogradContext* ctx, const char* op) {
  TORCH_CHECK(ctx->saved_data["save"].toBool(), "fastrnn::", op,
              " ran with save=False (inference) and cannot be differentiated");
}

struct LayerFunction : torch::autograd::Function<LayerFunction> {
  static variable_list forward(AutogradContext* ctx, const std::string& mode, const Tensor& x,
                               const Tensor& batch_sizes, const Tensor& h0, const OptTensor& c0,
                               const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                               const OptTensor& b_hh, const OptTensor& w_hr, bool reverse,
                               bool save) {
    Tensor y, h_n, c_n, workspace;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(y, h_n, c_n, workspace) = op<LayerFwd>().call(
          mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, save);
    }
    ctx->set_materialize_grads(false);  // unused outputs (a cell's y) stay undefined
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["reverse"] = reverse;
    ctx->saved_data["save"] = save;
    ctx->save_for_backward({x, batch_sizes, h0, c0.value_or(Tensor()), w_ih, w_hh,
                            b_ih.value_or(Tensor()), b_hh.value_or(Tensor()),
                            w_hr.value_or(Tensor()), y, workspace});
    ctx->mark_non_differentiable({workspace});
    return {y, h_n, c_n, workspace};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    check_saved(ctx, "layer_fwd");
    const std::string mode = ctx->saved_data["mode"].toStringRef();
    const variable_list s = ctx->get_saved_variables();
    const Tensor &x = s[0], &batch_sizes = s[1], &h0 = s[2], &c0 = s[3], &w_ih = s[4],
                 &w_hh = s[5], &b_ih = s[6], &b_hh = s[7], &w_hr = s[8], &y = s[9],
                 &workspace = s[10];
    const Tensor grad_c = mode == "LSTM" ? dense_grad(grads[2], c0) : x.new_empty({0});
    // Edges: x 0, batch_sizes 1, h0 2, then c0 when given, then the parameters.
    const size_t params = c0.defined() ? 4 : 3;
    const size_t edges = params + 2 + b_ih.defined() + b_hh.defined() + w_hr.defined();
    const sig::OutputMask mask{ctx->needs_input_grad(0), any_needed(ctx, 2, params),
                               any_needed(ctx, params, edges)};
    const BelowAutogradUnlessRecording below;
    auto [dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr] =
        op<LayerBwd>().call(mode, dense_grad(grads[0], y), dense_grad(grads[1], h0), grad_c,
                            x, batch_sizes, h0, optional(c0), w_ih, w_hh, optional(b_ih),
                            optional(b_hh), optional(w_hr), y, workspace,
                            ctx->saved_data["reverse"].toBool(), mask);
    // One gradient per forward argument (mode, batch_sizes and the flags have none).
    const auto [want_dx, want_state, want_params] = mask;
    return {Tensor(),
            grad_of(x, dx, want_dx),
            Tensor(),
            grad_of(h0, dh0, want_state),
            grad_of(c0, dc0, want_state),
            grad_of(w_ih, dw_ih, want_params),
            grad_of(w_hh, dw_hh, want_params),
            grad_of(b_ih, db_ih, want_params),
            grad_of(b_hh, db_hh, want_params),
            grad_of(w_hr, dw_hr, want_params),
            Tensor(),
            Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor> layer_fwd_autograd(
    const std::string& mode, const Tensor& x, const Tensor& batch_sizes, const Tensor& h0,
    const OptTensor& c0, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
    const OptTensor& b_hh, const OptTensor& w_hr, bool reverse, bool save) {
  // Nothing to differentiate (inference, no_grad): straight to the kernel,
  // without the autograd function's bookkeeping.
  if (!torch::autograd::compute_requires_grad(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return op<LayerFwd>().call(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                               reverse, save);
  }
  const variable_list out = LayerFunction::apply(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih,
                                                 b_hh, w_hr, reverse, save);
  return {out[0], out[1], out[2], out[3]};
}

// bilayer_fwd: per-direction lists of 2, an absent optional argument an
// empty list. Autograd sees every tensor of a list as an input of its own, so
// backward returns the lists' gradients flattened in argument order.
struct BilayerFunction : torch::autograd::Function<BilayerFunction> {
  static variable_list forward(AutogradContext* ctx, const std::string& mode, const Tensor& x,
                               const Tensor& batch_sizes, at::TensorList h0, at::TensorList c0,
                               at::TensorList w_ih, at::TensorList w_hh, at::TensorList b_ih,
                               at::TensorList b_hh, at::TensorList w_hr, bool save) {
    Tensors y, h_n, c_n, workspace;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(y, h_n, c_n, workspace) = op<BilayerFwd>().call(
          mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, save);
    }
    TORCH_CHECK(y.size() == 2 && h_n.size() == 2 && c_n.size() == 2 && workspace.size() == 2,
                "fastrnn::bilayer_fwd must return 2 tensors per list");
    ctx->set_materialize_grads(false);
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["save"] = save;
    std::vector<int64_t> lengths;
    variable_list saved{x, batch_sizes};
    for (at::TensorList list : {h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr}) {
      lengths.push_back(static_cast<int64_t>(list.size()));
      saved.insert(saved.end(), list.begin(), list.end());
    }
    ctx->saved_data["lengths"] = lengths;
    saved.insert(saved.end(), y.begin(), y.end());
    saved.insert(saved.end(), workspace.begin(), workspace.end());
    ctx->save_for_backward(saved);
    ctx->mark_non_differentiable(workspace);
    return {y[0], y[1], h_n[0], h_n[1], c_n[0], c_n[1], workspace[0], workspace[1]};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    check_saved(ctx, "bilayer_fwd");
    const std::string mode = ctx->saved_data["mode"].toStringRef();
    const variable_list s = ctx->get_saved_variables();
    const Tensor &x = s[0], &batch_sizes = s[1];
    // The saved lists h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, then y and workspace.
    std::vector<Tensors> lists;
    size_t next = 2;
    for (int64_t n : ctx->saved_data["lengths"].toIntVector()) {
      lists.emplace_back(s.begin() + next, s.begin() + next + n);
      next += n;
    }
    const Tensors y(s.begin() + next, s.begin() + next + 2);
    const Tensors workspace(s.begin() + next + 2, s.begin() + next + 4);
    const Tensors &h0 = lists[0], &c0 = lists[1];
    Tensors grad_y, grad_h, grad_c;
    for (int d = 0; d < 2; ++d) {
      grad_y.push_back(dense_grad(grads[d], y[d]));
      grad_h.push_back(dense_grad(grads[2 + d], h0[d]));
      grad_c.push_back(mode == "LSTM" ? dense_grad(grads[4 + d], c0[d]) : x.new_empty({0}));
    }
    // Edges: x 0, batch_sizes 1, then every tensor of the lists in order:
    // h0 and c0 (the state), then the parameters'.
    const size_t params = 2 + h0.size() + c0.size();
    size_t edges = 2;
    for (const Tensors& list : lists) edges += list.size();
    const sig::OutputMask mask{ctx->needs_input_grad(0), any_needed(ctx, 2, params),
                               any_needed(ctx, params, edges)};
    const BelowAutogradUnlessRecording below;
    auto [dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr] = op<BilayerBwd>().call(
        mode, grad_y, grad_h, grad_c, x, batch_sizes, lists[0], lists[1], lists[2], lists[3],
        lists[4], lists[5], lists[6], y, workspace, mask);
    variable_list out{Tensor(), grad_of(x, dx, mask[0]), Tensor()};
    const std::vector<const Tensors*> per_list{&dh0, &dc0, &dw_ih, &dw_hh,
                                               &db_ih, &db_hh, &dw_hr};
    for (size_t i = 0; i < lists.size(); ++i)  // an absent optional list has no entries
      for (size_t d = 0; d < lists[i].size(); ++d)  // lists 0, 1 the state's, then parameters'
        out.push_back(grad_of(lists[i][d], (*per_list[i])[d], mask[i < 2 ? 1 : 2]));
    out.push_back(Tensor());  // save
    return out;
  }
};

std::tuple<Tensors, Tensors, Tensors, Tensors> bilayer_fwd_autograd(
    const std::string& mode, const Tensor& x, const Tensor& batch_sizes, at::TensorList h0,
    at::TensorList c0, at::TensorList w_ih, at::TensorList w_hh, at::TensorList b_ih,
    at::TensorList b_hh, at::TensorList w_hr, bool save) {
  if (!torch::autograd::compute_requires_grad(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return op<BilayerFwd>().call(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                 save);
  }
  const variable_list o = BilayerFunction::apply(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih,
                                                 b_hh, w_hr, save);
  return {{o[0], o[1]}, {o[2], o[3]}, {o[4], o[5]}, {o[6], o[7]}};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, Autograd, m) {
  m.impl("layer_fwd", &layer_fwd_autograd);
  m.impl("bilayer_fwd", &bilayer_fwd_autograd);
  // The backward ops have no derivative: differentiating a gradient
  // (create_graph=True, then backward through it) raises "derivative for
  // fastrnn::layer_bwd is not implemented" instead of torch's default for an
  // op without an autograd kernel, a warning and silently missing terms.
  m.impl("layer_bwd", torch::autograd::autogradNotImplementedFallback());
  m.impl("bilayer_bwd", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace fastrnn
