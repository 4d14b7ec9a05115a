// fastrnn::layer_bwd for CUDA tensors. The recurrence runs either as one
// persistent launch (fastrnn/cuda/persistent.cuh; path choice as in the forward,
// use_persistent in layer_args.h) or on the step path, which walks the steps in
// the opposite order of the forward; per step:
//   [projection] dy_total = dh + dy;  dh_cell = dy_total @ W_hr          (cuBLAS)
//   backward_step: gate gradients dgx, dgh (and dc, GRU's direct dh)      (fastrnn/cuda/step.cuh)
//   dh[:rows] = dgh @ W_hh (+ GRU's direct term, via addmm)               (cuBLAS)
// then the weight and input gradients as whole-sequence GEMMs (those that
// output_mask asks for):
//   dx = dgx @ W_ih   dW_ih = dgx^T x   dW_hh = dgh^T h_prev   dW_hr = dy_total^T h_cell
// h_prev (and c_prev) of every token are gathered once: a token's previous
// state is its row in the previous step's y (workspace c), or h0 (c0) when the
// row was not live there (first step, or joining in reverse).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "fastrnn/cuda/persistent.cuh"
#include "fastrnn/cuda/step.cuh"
#include "fastrnn/bilayer.h"
#include "fastrnn/kernels.h"
#include "layer_args.h"

namespace fastrnn {
namespace cuda {
namespace {

// For each token n: the row of cat([y, h0]) holding its previous state.
at::Tensor previous_rows(const Layer& L, bool reverse, const at::Device& device) {
  std::vector<int64_t> index(L.tokens);
  int64_t prev_start = 0, prev_rows = 0;
  for (const int64_t t : L.forward_order(reverse)) {
    for (int64_t b = 0; b < L.sizes[t]; ++b) {
      index[L.offsets[t] + b] = b < prev_rows ? prev_start + b : L.tokens + b;
    }
    prev_start = L.offsets[t];
    prev_rows = L.sizes[t];
  }
  return at::tensor(index, at::kLong).to(device);
}

struct Grads {
  at::Tensor dh;        // (B, Hout)  dL/dh state
  at::Tensor dc;        // (B, H)     fp32 dL/dc state (LSTM)
  at::Tensor dgx, dgh;  // (N, G*H)   pre-activation grads; dgh aliases dgx except for GRU
  at::Tensor dy_total;  // (N, Hout)  projection: dL/dy including the recurrent part
  at::Tensor h_cell;    // (N, H)     projection: o * tanh(c), the input of W_hr
};

template <typename T>
void run_steps(const Layer& L, bool reverse, const at::Tensor& dy, const at::Tensor& y,
               const at::Tensor& ws, const at::Tensor& h_prev, const at::Tensor& c_prev,
               const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr, Grads& g,
               cudaStream_t stream) {
  const int64_t gcols = L.gates * L.hidden, ws_cols = workspace::columns(L.mode, L.hidden);
  const at::Tensor dh_cell = L.proj ? at::empty({L.batch, L.hidden}, dy.options()) : at::Tensor();
  std::vector<int64_t> order = L.forward_order(reverse);
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    const int64_t rows = L.sizes[*it], start = L.offsets[*it];
    at::Tensor dh_live = g.dh.narrow(0, 0, rows);
    BackwardStep<T> a;
    a.rows = rows;
    a.hidden = L.hidden;
    if (L.proj) {
      at::Tensor total = g.dy_total.narrow(0, start, rows);
      at::add_out(total, dh_live, dy.narrow(0, start, rows));
      at::Tensor dh_cell_live = dh_cell.narrow(0, 0, rows);
      at::mm_out(dh_cell_live, total, *w_hr);
      a.dh = ptr<T>(dh_cell);
      a.h_cell = ptr<T>(g.h_cell) + start * L.hidden;
    } else {
      a.dh = ptr<T>(g.dh);
      a.dy = ptr<T>(dy) + start * L.out;
    }
    a.ws = ws.numel() > 0 ? ptr<float>(ws) + start * ws_cols : nullptr;
    if (L.mode == Mode::LSTM) {
      a.dc = ptr<float>(g.dc);
      a.c_prev = ptr<float>(c_prev) + start * L.hidden;
    }
    a.h_prev = ptr<T>(h_prev) + start * L.out;
    a.h = ptr<T>(y) + start * L.out;
    a.dgx = ptr<T>(g.dgx) + start * gcols;
    a.dgh = ptr<T>(g.dgh) + start * gcols;
    C10_CUDA_CHECK(backward_step<T>(L.mode, a, stream));
    const at::Tensor dgh_live = g.dgh.narrow(0, start, rows);
    if (L.mode == Mode::GRU) {
      dh_live.addmm_(dgh_live, w_hh);  // the kernel left GRU's direct term dh * z in dh
    } else {
      at::mm_out(dh_live, dgh_live, w_hh);
    }
  }
}

// The whole step loop as one persistent launch (fastrnn/cuda/persistent.cuh);
// dh and dc are carried in fp32 there.
template <typename T>
void run_persistent(const Layer& L, bool reverse, const at::Tensor& batch_sizes,
                    const at::Tensor& dy, const at::Tensor& y, const at::Tensor& ws,
                    const at::Tensor& h_prev, const at::Tensor& c_prev, const at::Tensor& w_hh,
                    const PersistentPlan& plan, Grads& g, cudaStream_t stream) {
  const at::Tensor sizes = device_batch_sizes(batch_sizes, y.device());
  const at::Tensor w = dense(w_hh);
  const at::Tensor dh = g.dh.to(at::kFloat);
  PersistentBackward<T> a;
  a.steps = static_cast<long long>(L.sizes.size());
  a.hidden = L.hidden;
  a.reverse = reverse;
  a.batch_sizes = sizes.data_ptr<int>();
  a.w_hh = ptr<T>(w);
  a.dy = ptr<T>(dy);
  a.ws = ws.numel() > 0 ? ptr<float>(ws) : nullptr;
  a.c_prev = c_prev.defined() ? ptr<float>(c_prev) : nullptr;
  a.h_prev = ptr<T>(h_prev);
  a.y = ptr<T>(y);
  a.dh = ptr<float>(dh);
  a.dc = g.dc.defined() ? ptr<float>(g.dc) : nullptr;
  a.dgx = ptr<T>(g.dgx);
  a.dgh = ptr<T>(g.dgh);
  C10_CUDA_CHECK(persistent_backward<T>(L.mode, a, plan, stream));
  g.dh.copy_(dh);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
layer_bwd_cuda(const std::string& mode, const at::Tensor& grad_y, const at::Tensor& grad_h_n,
               const at::Tensor& grad_c_n, const at::Tensor& x, const at::Tensor& batch_sizes,
               const at::Tensor& h0, const std::optional<at::Tensor>& c0, const at::Tensor& w_ih,
               const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
               const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr,
               const at::Tensor& y, const at::Tensor& workspace, bool reverse,
               sig::OutputMask output_mask) {
  const Layer L = check_layer(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr);
  check_same(grad_y, x, "grad_y");
  check_shape(grad_y, {L.tokens, L.out}, "grad_y");
  check_same(grad_h_n, x, "grad_h_n");
  check_shape(grad_h_n, {L.batch, L.out}, "grad_h_n");
  check_same(y, x, "y");
  check_shape(y, {L.tokens, L.out}, "y");
  if (L.mode == Mode::LSTM) {
    check_same(grad_c_n, x, "grad_c_n");
    check_shape(grad_c_n, {L.batch, L.hidden}, "grad_c_n");
  }
  TORCH_CHECK(workspace.device() == x.device() &&
                  workspace.scalar_type() == workspace_dtype(x.scalar_type()),
              "fastrnn: workspace must be ", workspace_dtype(x.scalar_type()), " on ", x.device());
  check_shape(workspace, {L.tokens, workspace::columns(L.mode, L.hidden)},
              "workspace (from layer_fwd with save=True)");

  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = current_stream(x);
  const at::Tensor dy = dense(grad_y), y_d = dense(y), ws = dense(workspace);
  const at::Tensor prev = previous_rows(L, reverse, x.device());
  const at::Tensor h_prev = dense(at::cat({y_d, h0}).index_select(0, prev));
  at::Tensor c_prev;
  if (L.mode == Mode::LSTM) {
    const at::Tensor c_saved = ws.narrow(1, workspace::kLstmC * L.hidden, L.hidden);
    c_prev = dense(at::cat({c_saved, c0->to(at::kFloat)}).index_select(0, prev));
  }

  Grads g;
  g.dh = at::empty({L.batch, L.out}, x.options()).copy_(grad_h_n);
  if (L.mode == Mode::LSTM) {
    g.dc = at::empty({L.batch, L.hidden}, x.options().dtype(at::kFloat)).copy_(grad_c_n);
  }
  g.dgx = at::empty({L.tokens, L.gates * L.hidden}, x.options());
  g.dgh = L.mode == Mode::GRU ? at::empty_like(g.dgx) : g.dgx;
  if (L.proj) {
    g.dy_total = at::empty({L.tokens, L.out}, x.options());
    g.h_cell = at::empty({L.tokens, L.hidden}, x.options());
  }
  const PathRequest want = requested_path();
  with_dtype(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    PersistentPlan plan;
    if (want != PathRequest::Step && !L.proj) {
      C10_CUDA_CHECK(plan_persistent_backward<T>(L.mode, L.hidden, x.device().index(), &plan));
    }
    if (use_persistent(L, want, !L.proj && plan.blocks > 0)) {
      run_persistent<T>(L, reverse, batch_sizes, dy, y_d, ws, h_prev, c_prev, w_hh, plan, g,
                        stream);
    } else {
      run_steps<T>(L, reverse, dy, y_d, ws, h_prev, c_prev, w_hh, w_hr, g, stream);
    }
  });

  // Only the gradients asked for (output_mask); the others are empty.
  const auto [want_dx, want_state, want_params] = output_mask;
  const at::Tensor dx = want_dx ? at::mm(g.dgx, w_ih) : absent(x);
  const at::Tensor dh0 = want_state ? g.dh : absent(x);
  const at::Tensor dc0 =
      want_state && L.mode == Mode::LSTM ? g.dc.to(x.scalar_type()) : absent(x);
  if (!want_params) return {dx, dh0, dc0, absent(x), absent(x), absent(x), absent(x), absent(x)};
  const at::Tensor dw_ih = at::mm(g.dgx.t(), x);
  const at::Tensor dw_hh = at::mm(g.dgh.t(), h_prev);
  const at::Tensor db_ih = L.bias ? g.dgx.sum(0) : absent(x);
  const at::Tensor db_hh = L.bias ? g.dgh.sum(0) : absent(x);
  const at::Tensor dw_hr = L.proj ? at::mm(g.dy_total.t(), g.h_cell) : absent(x);
  return {dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr};
}

}  // namespace
}  // namespace cuda
}  // namespace fastrnn

// Both directions of a bidirectional layer run one after the other on the
// current stream.
TORCH_LIBRARY_IMPL(fastrnn, CUDA, m) {
  using namespace fastrnn;
  impl<LayerBwd, &fastrnn::cuda::layer_bwd_cuda>(m);
  impl<BilayerBwd, &bilayer_bwd<&fastrnn::cuda::layer_bwd_cuda, &in_turn>>(m);
}
