// Argument checks shared by the CUDA bindings (declarations: layer_args.h).
#include "layer_args.h"

#include <cstdint>
#include <cstdlib>

namespace fastrnn {
namespace cuda {

std::vector<int64_t> Layer::forward_order(bool reverse) const {
  const int64_t steps = static_cast<int64_t>(sizes.size());
  std::vector<int64_t> order(steps);
  for (int64_t s = 0; s < steps; ++s) order[s] = reverse ? steps - 1 - s : s;
  return order;
}

Layer check_layer(std::string_view mode, const at::Tensor& x, const at::Tensor& batch_sizes,
                  const at::Tensor& h0, const std::optional<at::Tensor>& c0,
                  const at::Tensor& w_ih, const at::Tensor& w_hh,
                  const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
                  const std::optional<at::Tensor>& w_hr) {
  Layer L;
  TORCH_CHECK(parse_mode(std::string(mode).c_str(), &L.mode), "fastrnn: unknown mode '", mode,
              "'; expected LSTM, GRU, RNN_TANH or RNN_RELU");
  TORCH_CHECK(x.is_cuda(), "fastrnn (cuda): x must be a CUDA tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf ||
                  x.scalar_type() == at::kBFloat16,
              "fastrnn (cuda): x must be float32, float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 2, "fastrnn: x must be 2-D (N, input_size), got ", x.sizes());
  TORCH_CHECK(batch_sizes.device().is_cpu() && batch_sizes.scalar_type() == at::kLong &&
                  batch_sizes.dim() == 1 && batch_sizes.numel() > 0,
              "fastrnn: batch_sizes must be a non-empty 1-D int64 CPU tensor");

  const at::Tensor bs = batch_sizes.contiguous();
  const int64_t* b = bs.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t t = 0; t < bs.numel(); ++t) {
    TORCH_CHECK(b[t] > 0 && (t == 0 || b[t] <= b[t - 1]),
                "fastrnn: batch_sizes must be positive and non-increasing");
    L.offsets.push_back(total);
    L.sizes.push_back(b[t]);
    total += b[t];
  }
  L.tokens = x.size(0);
  L.input = x.size(1);
  L.batch = b[0];
  TORCH_CHECK(total == L.tokens, "fastrnn: sum(batch_sizes) = ", total, " but x has ", L.tokens,
              " rows");

  L.gates = gates(L.mode);
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) % L.gates == 0,
              "fastrnn: w_hh must be (gates*hidden, out), got ", w_hh.sizes());
  L.hidden = w_hh.size(0) / L.gates;
  L.out = w_hh.size(1);
  L.proj = w_hr.has_value() && w_hr->defined();
  check_same(w_hh, x, "w_hh");
  check_same(w_ih, x, "w_ih");
  check_shape(w_ih, {L.gates * L.hidden, L.input}, "w_ih");
  check_same(h0, x, "h0");
  check_shape(h0, {L.batch, L.out}, "h0");
  if (L.proj) {
    TORCH_CHECK(L.mode == Mode::LSTM, "fastrnn: w_hr (projection) applies to LSTM only");
    check_same(*w_hr, x, "w_hr");
    check_shape(*w_hr, {L.out, L.hidden}, "w_hr");
  } else {
    TORCH_CHECK(L.out == L.hidden, "fastrnn: w_hh must be (gates*hidden, hidden) without w_hr");
  }
  const bool has_c0 = c0.has_value() && c0->defined();
  TORCH_CHECK(has_c0 == (L.mode == Mode::LSTM), "fastrnn: c0 is required for LSTM and only LSTM");
  if (has_c0) {
    check_same(*c0, x, "c0");
    check_shape(*c0, {L.batch, L.hidden}, "c0");
  }
  const bool has_b_ih = b_ih.has_value() && b_ih->defined();
  const bool has_b_hh = b_hh.has_value() && b_hh->defined();
  TORCH_CHECK(has_b_ih == has_b_hh, "fastrnn: b_ih and b_hh must be given together");
  L.bias = has_b_ih;
  if (L.bias) {
    check_same(*b_ih, x, "b_ih");
    check_same(*b_hh, x, "b_hh");
    check_shape(*b_ih, {L.gates * L.hidden}, "b_ih");
    check_shape(*b_hh, {L.gates * L.hidden}, "b_hh");
  }
  return L;
}

PathRequest requested_path() {
  const char* env = std::getenv("FASTRNN_CUDA_PATH");
  const std::string want = env == nullptr || *env == '\0' ? "auto" : env;
  if (want == "step") return PathRequest::Step;
  if (want == "persistent") return PathRequest::Persistent;
  TORCH_CHECK(want == "auto", "fastrnn: FASTRNN_CUDA_PATH must be auto, step or persistent, got '",
              want, "'");
  return PathRequest::Auto;
}

// Above this batch the per-step cuBLAS GEMMs (tensor cores) are expected to beat
// the persistent kernels' CUDA-core dot products. Not yet tuned on hardware.
constexpr int64_t kPersistentMaxBatch = 64;

bool use_persistent(const Layer& L, PathRequest want, bool fits) {
  TORCH_CHECK(fits || want != PathRequest::Persistent,
              "fastrnn: FASTRNN_CUDA_PATH=persistent, but this layer does not fit the persistent "
              "kernels (it has a projection, or W_hh exceeds the GPU's shared memory)");
  return fits && want != PathRequest::Step &&
         (want == PathRequest::Persistent || L.batch <= kPersistentMaxBatch);
}

at::Tensor dense(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  if (reinterpret_cast<std::uintptr_t>(c.data_ptr()) % 16 != 0) c = c.clone();
  return c;
}

}  // namespace cuda
}  // namespace fastrnn
