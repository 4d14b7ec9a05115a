// fastrnn::layer_fwd for CUDA tensors: checks, buffers, cuBLAS GEMMs through
// ATen on the current stream, and the choice between the two kernel paths:
//   step        per step: gh = h @ W_hh^T (cuBLAS), then one fused pointwise
//               kernel (fastrnn/cuda/step.cuh); projection through cuBLAS.
//   persistent  one cooperative launch for all steps (fastrnn/cuda/persistent.cuh);
//               no projection, and W_hh must fit in the SMs' shared memory.
// (FASTRNN_CUDA_PATH and the automatic choice: use_persistent in layer_args.h.)
// Both write the same outputs and workspace, so layer_bwd serves either.
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

struct State {
  at::Tensor gx;  // (N, G*H)  W_ih x for every token
  at::Tensor y;   // (N, Hout)
  at::Tensor h;   // (B, Hout) h0 in, h_n out
  at::Tensor c;   // (B, H) fp32 LSTM cell state: c0 in, c_n out; undefined otherwise
  at::Tensor ws;  // (N or 0, columns) workspace
};

template <typename T>
void run_step(const Layer& L, bool reverse, const at::Tensor& w_hh, const T* b_ih, const T* b_hh,
              const std::optional<at::Tensor>& w_hr, State& s, cudaStream_t stream) {
  const int64_t gh_cols = L.gates * L.hidden, ws_cols = workspace::columns(L.mode, L.hidden);
  const at::Tensor gh = at::empty({L.batch, gh_cols}, s.y.options());
  const at::Tensor h_cell = L.proj ? at::empty({L.batch, L.hidden}, s.y.options()) : at::Tensor();
  for (const int64_t t : L.forward_order(reverse)) {
    const int64_t rows = L.sizes[t], start = L.offsets[t];
    at::Tensor h_live = s.h.narrow(0, 0, rows);
    at::Tensor gh_live = gh.narrow(0, 0, rows);
    at::mm_out(gh_live, h_live, w_hh.t());
    ForwardStep<T> a;
    a.rows = rows;
    a.hidden = L.hidden;
    a.gx = ptr<T>(s.gx) + start * gh_cols;
    a.gh = ptr<T>(gh);
    a.b_ih = b_ih;
    a.b_hh = b_hh;
    a.c = s.c.defined() ? ptr<float>(s.c) : nullptr;
    a.h_prev = ptr<T>(s.h);
    a.h_state = L.proj ? nullptr : ptr<T>(s.h);
    a.out = L.proj ? ptr<T>(h_cell) : ptr<T>(s.y) + start * L.out;
    a.ws = s.ws.numel() > 0 ? ptr<float>(s.ws) + start * ws_cols : nullptr;
    C10_CUDA_CHECK(forward_step<T>(L.mode, a, stream));
    if (L.proj) {
      at::Tensor y_live = s.y.narrow(0, start, rows);
      at::mm_out(y_live, h_cell.narrow(0, 0, rows), w_hr->t());
      h_live.copy_(y_live);
    }
  }
}

template <typename T>
void run_persistent(const Layer& L, bool reverse, const at::Tensor& batch_sizes,
                    const at::Tensor& h0, const at::Tensor& w_hh, const T* b_ih, const T* b_hh,
                    const PersistentPlan& plan, State& s, cudaStream_t stream) {
  const at::Tensor sizes = device_batch_sizes(batch_sizes, s.y.device());
  const at::Tensor w = dense(w_hh);
  PersistentForward<T> a;
  a.steps = static_cast<long long>(L.sizes.size());
  a.hidden = L.hidden;
  a.reverse = reverse;
  a.batch_sizes = sizes.data_ptr<int>();
  a.gx = ptr<T>(s.gx);
  a.w_hh = ptr<T>(w);
  a.b_ih = b_ih;
  a.b_hh = b_hh;
  a.h0 = ptr<T>(h0);
  a.c = s.c.defined() ? ptr<float>(s.c) : nullptr;
  a.y = ptr<T>(s.y);
  a.h_n = ptr<T>(s.h);
  a.ws = s.ws.numel() > 0 ? ptr<float>(s.ws) : nullptr;
  C10_CUDA_CHECK(persistent_forward<T>(L.mode, a, plan, stream));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_fwd_cuda(
    const std::string& mode, const at::Tensor& x, const at::Tensor& batch_sizes,
    const at::Tensor& h0, const std::optional<at::Tensor>& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr, bool reverse,
    bool save) {
  const Layer L = check_layer(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr);
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = current_stream(x);
  const at::Tensor h0_d = dense(h0);
  State s;
  s.gx = at::mm(x, w_ih.t());
  s.y = at::empty({L.tokens, L.out}, x.options());
  s.h = at::empty({L.batch, L.out}, x.options()).copy_(h0_d);
  if (L.mode == Mode::LSTM) {
    s.c = at::empty({L.batch, L.hidden}, x.options().dtype(at::kFloat)).copy_(*c0);
  }
  s.ws = at::empty({save ? L.tokens : 0, workspace::columns(L.mode, L.hidden)},
                   x.options().dtype(workspace_dtype(x.scalar_type())));
  const at::Tensor bi = L.bias ? dense(*b_ih) : at::Tensor();
  const at::Tensor bh = L.bias ? dense(*b_hh) : at::Tensor();
  with_dtype(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* b_ih_p = L.bias ? ptr<T>(bi) : nullptr;
    const T* b_hh_p = L.bias ? ptr<T>(bh) : nullptr;
    const PathRequest want = requested_path();
    PersistentPlan plan;
    if (want != PathRequest::Step && !L.proj) {
      C10_CUDA_CHECK(plan_persistent_forward<T>(L.mode, L.hidden, x.device().index(), &plan));
    }
    if (use_persistent(L, want, !L.proj && plan.blocks > 0)) {
      run_persistent<T>(L, reverse, batch_sizes, h0_d, w_hh, b_ih_p, b_hh_p, plan, s, stream);
    } else {
      run_step<T>(L, reverse, w_hh, b_ih_p, b_hh_p, w_hr, s, stream);
    }
  });
  const at::Tensor c_n = s.c.defined() ? s.c.to(x.scalar_type()) : absent(x);
  return {s.y, s.h, c_n, s.ws};
}

}  // namespace
}  // namespace cuda
}  // namespace fastrnn

// Both directions of a bidirectional layer run one after the other on the
// current stream.
TORCH_LIBRARY_IMPL(fastrnn, CUDA, m) {
  using namespace fastrnn;
  impl<LayerFwd, &fastrnn::cuda::layer_fwd_cuda>(m);
  impl<BilayerFwd, &bilayer_fwd<&fastrnn::cuda::layer_fwd_cuda, &in_turn>>(m);
}
