// The persistent forward kernel (design and limits: fastrnn/cuda/persistent.cuh).
#include "persistent_common.cuh"

namespace fastrnn {
namespace cuda {
namespace {

using namespace persistent;
namespace cg = cooperative_groups;

template <typename T, Mode M>
__global__ void __launch_bounds__(kThreads, 1)
    persistent_forward_kernel(const PersistentForward<T> a, int units, bool vectorized) {
  constexpr int G = kGates<M>;
  extern __shared__ __align__(16) unsigned char smem[];
  T* w = reinterpret_cast<T*>(smem);  // row jj*G + g = W_hh row g*H + j0 + jj
  const long long H = a.hidden;
  const long long j0 = static_cast<long long>(blockIdx.x) * units;
  const int mine = static_cast<int>(H - j0 < units ? H - j0 : units);
  for (long long e = threadIdx.x; e < mine * G * H; e += kThreads) {
    const long long r = e / H, k = e - r * H;
    const long long jj = r / G, g = r - jj * G;
    w[e] = a.w_hh[(g * H + j0 + jj) * H + k];
  }
  __syncthreads();

  const cg::grid_group grid = cg::this_grid();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  StepWalk step(a.batch_sizes, a.steps, a.reverse);
  // A row live in the previous step continues from its y there; otherwise
  // (first step, or a row joining in reverse) from h0.
  const auto state_of = [&](int b) {
    return b < step.prev_rows ? a.y + (step.prev_start + b) * H : a.h0 + b * H;
  };
  while (step.next()) {
    const int groups = (step.rows + kRows - 1) / kRows;
    // Item = (group of kRows live rows, unit jj); lane r < count finishes row b0 + r.
    for (int item = warp; item < groups * mine; item += kWarps) {
      const int group = item / mine, jj = item - group * mine;
      const int b0 = group * kRows, count = step.rows - b0 < kRows ? step.rows - b0 : kRows;
      const long long j = j0 + jj;
      const T* h_prev[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) h_prev[r] = state_of(b0 + (r < count ? r : 0));
      const bool owner = lane < count;
      const int b = b0 + lane;
      const long long n = step.start + b;
      float xg[G] = {};
      if (owner) {  // issued before the dot so the loads overlap it
#pragma unroll
        for (int g = 0; g < G; ++g) {
          xg[g] = to_float(a.gx[n * G * H + g * H + j]) + bias_at(a.b_ih, g * H + j);
        }
      }
      float acc[kRows][G];
      warp_dot<T, G>(w + static_cast<long long>(jj) * G * H, h_prev, H, vectorized, acc);
      if (owner) {
        float hg[G];
        take_row(acc, lane, hg);
#pragma unroll
        for (int g = 0; g < G; ++g) hg[g] += bias_at(a.b_hh, g * H + j);
        float c = 0.0f;
        if constexpr (M == Mode::LSTM) c = a.c[b * H + j];
        const float hp = M == Mode::GRU ? to_float(__ldcg(state_of(b) + j)) : 0.0f;
        float* ws = a.ws == nullptr ? nullptr : a.ws + n * workspace::columns(M, H);
        const T h = from_float<T>(forward_unit<M>(xg, hg, c, hp, ws, H, j));
        if constexpr (M == Mode::LSTM) a.c[b * H + j] = c;
        a.y[n * H + j] = h;
        a.h_n[b * H + j] = h;
      }
    }
    grid.sync();  // this step's y is complete before any block reads it as h_prev
  }
}

// The kernel instantiation for a mode tag (see with_mode).
template <typename T>
constexpr auto kernel_forward = [](auto tag) {
  return persistent_forward_kernel<T, decltype(tag)::value>;
};

}  // namespace

template <typename T>
cudaError_t plan_persistent_forward(Mode mode, long long hidden, int device,
                                    PersistentPlan* plan) {
  return plan_kernel<T>(mode, hidden, device, plan, kernel_forward<T>);
}

template <typename T>
cudaError_t persistent_forward(Mode mode, const PersistentForward<T>& args,
                               const PersistentPlan& plan, cudaStream_t stream) {
  const bool vectorized = vector_aligned<T>(args.hidden, args.y, args.h0);
  return launch_kernel(mode, args, plan, vectorized, stream, kernel_forward<T>);
}

#define FASTRNN_INSTANTIATE(T)                                                            \
  template cudaError_t plan_persistent_forward<T>(Mode, long long, int, PersistentPlan*); \
  template cudaError_t persistent_forward<T>(Mode, const PersistentForward<T>&,           \
                                             const PersistentPlan&, cudaStream_t);
FASTRNN_CUDA_DTYPES(FASTRNN_INSTANTIATE)
#undef FASTRNN_INSTANTIATE

}  // namespace cuda
}  // namespace fastrnn
