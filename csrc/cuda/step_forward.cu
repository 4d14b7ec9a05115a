// Forward pointwise step kernel: one thread per (live row, hidden unit).
// Shapes and the calling sequence: fastrnn/cuda/step.cuh.
#include "dispatch.cuh"
#include "fastrnn/cuda/cell.cuh"
#include "fastrnn/cuda/numeric.cuh"
#include "fastrnn/cuda/step.cuh"

namespace fastrnn {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T, Mode M>
__global__ void __launch_bounds__(kThreads) forward_step_kernel(const ForwardStep<T> a) {
  constexpr int G = kGates<M>;
  const long long H = a.hidden;
  const long long index = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x;
  if (index >= a.rows * H) return;
  const long long row = index / H, j = index - row * H;
  const T* gx = a.gx + row * G * H;
  const T* gh = a.gh + row * G * H;
  float xg[G], hg[G];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    xg[g] = to_float(gx[g * H + j]) + bias_at(a.b_ih, g * H + j);
    hg[g] = to_float(gh[g * H + j]) + bias_at(a.b_hh, g * H + j);
  }
  float c = 0.0f;
  if constexpr (M == Mode::LSTM) c = a.c[index];
  const float h_prev = M == Mode::GRU ? to_float(a.h_prev[index]) : 0.0f;
  float* ws = a.ws == nullptr ? nullptr : a.ws + row * workspace::columns(M, H);
  const float h = forward_unit<M>(xg, hg, c, h_prev, ws, H, j);
  if constexpr (M == Mode::LSTM) a.c[index] = c;
  const T h_out = from_float<T>(h);
  a.out[index] = h_out;
  if (a.h_state != nullptr) a.h_state[index] = h_out;
}

}  // namespace

template <typename T>
cudaError_t forward_step(Mode mode, const ForwardStep<T>& args, cudaStream_t stream) {
  return launch_elementwise<kThreads>(mode, args.rows * args.hidden, args, stream, [](auto tag) {
    return forward_step_kernel<T, decltype(tag)::value>;
  });
}

#define FASTRNN_INSTANTIATE(T) \
  template cudaError_t forward_step<T>(Mode, const ForwardStep<T>&, cudaStream_t);
FASTRNN_CUDA_DTYPES(FASTRNN_INSTANTIATE)
#undef FASTRNN_INSTANTIATE

}  // namespace cuda
}  // namespace fastrnn
