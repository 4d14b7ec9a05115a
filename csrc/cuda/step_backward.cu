// Backward pointwise step kernel: one thread per (live row, hidden unit).
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
__global__ void __launch_bounds__(kThreads) backward_step_kernel(const BackwardStep<T> a) {
  constexpr int G = kGates<M>;
  const long long H = a.hidden;
  const long long index = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x;
  if (index >= a.rows * H) return;
  const long long row = index / H, j = index - row * H;
  float dh = to_float(a.dh[index]);
  if (a.dy != nullptr) dh += to_float(a.dy[index]);
  const float* ws = a.ws + row * workspace::columns(M, H);
  float dc = 0.0f, c_prev = 0.0f, h_prev = 0.0f, h = 0.0f;
  if constexpr (M == Mode::LSTM) {
    dc = a.dc[index];
    c_prev = a.c_prev[index];
  } else if constexpr (M == Mode::GRU) {
    h_prev = to_float(a.h_prev[index]);
  } else {
    h = to_float(a.h[index]);
  }
  float dgx[G], dgh[G];
  const float dh_direct = backward_unit<M>(dh, dc, ws, c_prev, h_prev, h, H, j, dgx, dgh);
  T* out_x = a.dgx + row * G * H;
#pragma unroll
  for (int g = 0; g < G; ++g) out_x[g * H + j] = from_float<T>(dgx[g]);
  if constexpr (M == Mode::LSTM) {
    a.dc[index] = dc;
    if (a.h_cell != nullptr) {
      const float o = ws[workspace::kLstmO * H + j], c = ws[workspace::kLstmC * H + j];
      a.h_cell[index] = from_float<T>(lstm_cell_output(o, c));
    }
  } else if constexpr (M == Mode::GRU) {
    T* out_h = a.dgh + row * G * H;
#pragma unroll
    for (int g = 0; g < G; ++g) out_h[g * H + j] = from_float<T>(dgh[g]);
    a.dh[index] = from_float<T>(dh_direct);
  }
}

}  // namespace

template <typename T>
cudaError_t backward_step(Mode mode, const BackwardStep<T>& args, cudaStream_t stream) {
  return launch_elementwise<kThreads>(mode, args.rows * args.hidden, args, stream, [](auto tag) {
    return backward_step_kernel<T, decltype(tag)::value>;
  });
}

#define FASTRNN_INSTANTIATE(T) \
  template cudaError_t backward_step<T>(Mode, const BackwardStep<T>&, cudaStream_t);
FASTRNN_CUDA_DTYPES(FASTRNN_INSTANTIATE)
#undef FASTRNN_INSTANTIATE

}  // namespace cuda
}  // namespace fastrnn
