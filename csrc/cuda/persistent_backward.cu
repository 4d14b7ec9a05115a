// The persistent backward kernel (design and limits: fastrnn/cuda/persistent.cuh).
#include "persistent_common.cuh"

namespace fastrnn {
namespace cuda {
namespace {

using namespace persistent;
namespace cg = cooperative_groups;

template <typename T, Mode M>
__global__ void __launch_bounds__(kThreads, 1)
    persistent_backward_kernel(const PersistentBackward<T> a, int units, bool vectorized) {
  constexpr int G = kGates<M>;
  extern __shared__ __align__(16) unsigned char smem[];
  T* wt = reinterpret_cast<T*>(smem);  // row kk = column j0 + kk of W_hh (G*H elements)
  const long long H = a.hidden, GH = G * a.hidden;
  const long long j0 = static_cast<long long>(blockIdx.x) * units;
  const int mine = static_cast<int>(H - j0 < units ? H - j0 : units);
  for (long long e = threadIdx.x; e < mine * GH; e += kThreads) {
    const long long kk = e / GH, r = e - kk * GH;
    wt[e] = a.w_hh[r * H + j0 + kk];
  }
  __syncthreads();

  const cg::grid_group grid = cg::this_grid();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  StepWalk step(a.batch_sizes, a.steps, !a.reverse);
  while (step.next()) {
    // (1) Gate gradients of the block's units, one thread per (live row, unit).
    for (long long e = threadIdx.x; e < static_cast<long long>(step.rows) * mine; e += kThreads) {
      const long long b = e / mine, j = j0 + (e - b * mine), n = step.start + b;
      const float dh = a.dh[b * H + j] + to_float(a.dy[n * H + j]);
      float dc = 0.0f, c_prev = 0.0f, h_prev = 0.0f, h = 0.0f;
      if constexpr (M == Mode::LSTM) {
        dc = a.dc[b * H + j];
        c_prev = a.c_prev[n * H + j];
      } else if constexpr (M == Mode::GRU) {
        h_prev = to_float(a.h_prev[n * H + j]);
      } else {
        h = to_float(a.y[n * H + j]);
      }
      const float* ws = a.ws + n * workspace::columns(M, H);
      float dgx[G], dgh[G];
      const float direct = backward_unit<M>(dh, dc, ws, c_prev, h_prev, h, H, j, dgx, dgh);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        a.dgx[n * GH + g * H + j] = from_float<T>(dgx[g]);
        if constexpr (M == Mode::GRU) a.dgh[n * GH + g * H + j] = from_float<T>(dgh[g]);
      }
      if constexpr (M == Mode::LSTM) a.dc[b * H + j] = dc;
      a.dh[b * H + j] = direct;  // (2) adds the part through W_hh
    }
    grid.sync();  // every unit's dgh of this step is written

    // (2) dh[b, j] += dgh[row b] . W_hh[:, j] for the block's columns j.
    const int groups = (step.rows + kRows - 1) / kRows;
    for (int item = warp; item < groups * mine; item += kWarps) {
      const int group = item / mine, kk = item - group * mine;
      const int b0 = group * kRows, count = step.rows - b0 < kRows ? step.rows - b0 : kRows;
      const T* grads[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        grads[r] = a.dgh + (step.start + b0 + (r < count ? r : 0)) * GH;
      }
      float acc[kRows][1];
      warp_dot<T, 1>(wt + static_cast<long long>(kk) * GH, grads, GH, vectorized, acc);
      if (lane < count) {
        float sum[1];
        take_row(acc, lane, sum);
        a.dh[(b0 + lane) * H + j0 + kk] += sum[0];
      }
    }
    __syncthreads();  // (1) of the next step reads dh written by other warps of this block
  }
}

// The kernel instantiation for a mode tag (see with_mode).
template <typename T>
constexpr auto kernel_backward = [](auto tag) {
  return persistent_backward_kernel<T, decltype(tag)::value>;
};

}  // namespace

template <typename T>
cudaError_t plan_persistent_backward(Mode mode, long long hidden, int device,
                                     PersistentPlan* plan) {
  return plan_kernel<T>(mode, hidden, device, plan, kernel_backward<T>);
}

template <typename T>
cudaError_t persistent_backward(Mode mode, const PersistentBackward<T>& args,
                                const PersistentPlan& plan, cudaStream_t stream) {
  const bool vectorized = vector_aligned<T>(gates(mode) * args.hidden, args.dgh, args.dgh);
  return launch_kernel(mode, args, plan, vectorized, stream, kernel_backward<T>);
}

#define FASTRNN_INSTANTIATE(T)                                                             \
  template cudaError_t plan_persistent_backward<T>(Mode, long long, int, PersistentPlan*); \
  template cudaError_t persistent_backward<T>(Mode, const PersistentBackward<T>&,          \
                                              const PersistentPlan&, cudaStream_t);
FASTRNN_CUDA_DTYPES(FASTRNN_INSTANTIATE)
#undef FASTRNN_INSTANTIATE

}  // namespace cuda
}  // namespace fastrnn
