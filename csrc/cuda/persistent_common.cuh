// Pieces shared by the persistent forward and backward kernels
// (design: fastrnn/cuda/persistent.cuh): block shape, the warp dot product over
// shared-memory weights, the step walk over packed rows, and launch planning.
#pragma once

#include <cooperative_groups.h>

#include <cstdint>

#include "dispatch.cuh"
#include "fastrnn/cuda/cell.cuh"
#include "fastrnn/cuda/numeric.cuh"
#include "fastrnn/cuda/persistent.cuh"

namespace fastrnn {
namespace cuda {
namespace persistent {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRows = 4;  // batch rows per warp item: each weight read from smem serves kRows rows

// acc[r][g] = sum_k w[g*H + k] * h[r][k], summed over the warp (every lane gets
// every sum). w is shared memory; h rows are other blocks' outputs of the
// previous step, read with __ldcg (L2, never a stale L1 line). `vectorized`:
// w and h rows are 16-byte aligned (H a multiple of kVec<T>, aligned bases).
template <typename T, int G>
__device__ __forceinline__ void warp_dot(const T* w, const T* const (&h)[kRows], long long H,
                                         bool vectorized, float (&acc)[kRows][G]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int g = 0; g < G; ++g) acc[r][g] = 0.0f;
  }
  if (vectorized) {
    constexpr int V = kVec<T>;
    for (long long k = lane * V; k < H; k += 32 * V) {
      float hv[kRows][V];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        unpack<T>(__ldcg(reinterpret_cast<const uint4*>(h[r] + k)), hv[r]);
      }
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float wv[V];
        unpack<T>(*reinterpret_cast<const uint4*>(w + g * H + k), wv);
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
#pragma unroll
          for (int v = 0; v < V; ++v) acc[r][g] = fmaf(wv[v], hv[r][v], acc[r][g]);
        }
      }
    }
  } else {
    for (long long k = lane; k < H; k += 32) {
      float hk[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) hk[r] = to_float(__ldcg(h[r] + k));
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const float wk = to_float(w[g * H + k]);
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[r][g] = fmaf(wk, hk[r], acc[r][g]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) {
        acc[r][g] += __shfl_xor_sync(0xffffffffu, acc[r][g], offset);
      }
    }
  }
}

// out[g] = acc[row][g] for a runtime row; the unrolled compare keeps acc in
// registers (a dynamic index would move it to local memory).
template <int G>
__device__ __forceinline__ void take_row(const float (&acc)[kRows][G], int row, float (&out)[G]) {
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    if (r == row) {
#pragma unroll
      for (int g = 0; g < G; ++g) out[g] = acc[r][g];
    }
  }
}

// Walks the steps t = 0..T-1, or T-1..0 when `descending`, over packed rows.
// next() moves to the next step (false after the last); then `rows` is its live
// row count, `start` its first packed row, and `prev_start` / `prev_rows` those
// of the step visited before (prev_rows = 0 at the first step).
struct StepWalk {
  const int* batch_sizes;
  long long steps;
  bool descending;  // visiting t = T-1 .. 0
  long long s = 0, start = 0, prev_start = 0;
  int rows = 0, prev_rows = 0;

  __device__ StepWalk(const int* sizes, long long count, bool desc)
      : batch_sizes(sizes), steps(count), descending(desc) {
    if (descending) {
      for (long long t = 0; t < steps; ++t) start += batch_sizes[t];
    }
  }
  __device__ bool next() {
    if (s == steps) return false;
    prev_start = start;
    prev_rows = rows;
    if (!descending && s > 0) start += rows;
    rows = __ldg(batch_sizes + (descending ? steps - 1 - s : s));
    if (descending) start -= rows;
    ++s;
    return true;
  }
};

// Fills `plan` for `kernel` when G*U*H elements of `elem_bytes` fit one block's
// opt-in shared memory with U = ceil(H / SMs) and every block co-resident
// (required by the cooperative launch); leaves plan->blocks = 0 otherwise.
template <typename Kernel>
cudaError_t plan_launch(Kernel kernel, long long gates, long long hidden, long long elem_bytes,
                        int device, PersistentPlan* plan) {
  *plan = PersistentPlan{};
  int sms = 0, optin = 0, cooperative = 0;
  cudaError_t err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  }
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device);
  }
  if (err != cudaSuccess || !cooperative || hidden <= 0 || sms <= 0) return err;
  const long long units = (hidden + sms - 1) / sms;
  const long long blocks = (hidden + units - 1) / units;
  const long long bytes = gates * units * hidden * elem_bytes;
  if (bytes > optin) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  int per_sm = 0;
  if (err == cudaSuccess) {
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, bytes);
  }
  if (err == cudaSuccess && static_cast<long long>(per_sm) * sms >= blocks) {
    *plan = PersistentPlan{int(blocks), int(units), size_t(bytes)};
  }
  return err;
}

// plan_launch for the kernel kernel_for(ModeTag<mode>{}) of element type T.
template <typename T, typename KernelFor>
cudaError_t plan_kernel(Mode mode, long long hidden, int device, PersistentPlan* plan,
                        KernelFor kernel_for) {
  return with_mode(mode, [&](auto tag) {
    return plan_launch(kernel_for(tag), kGates<decltype(tag)::value>, hidden, sizeof(T), device,
                       plan);
  });
}

// Cooperative launch of kernel_for(ModeTag<mode>{})(args, plan.units, vectorized).
template <typename Args, typename KernelFor>
cudaError_t launch_kernel(Mode mode, const Args& args, const PersistentPlan& plan,
                          bool vectorized, cudaStream_t stream, KernelFor kernel_for) {
  if (plan.blocks <= 0) return cudaErrorInvalidValue;
  if (args.steps == 0) return cudaSuccess;
  Args copy = args;
  int units = plan.units;
  void* params[] = {&copy, &units, &vectorized};
  return with_mode(mode, [&](auto tag) {
    return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel_for(tag)),
                                       dim3(plan.blocks), dim3(kThreads), params,
                                       plan.smem_bytes, stream);
  });
}

// Whether rows of H elements of T starting at these bases allow 16-byte loads.
template <typename T>
bool vector_aligned(long long hidden, const void* a, const void* b) {
  const auto aligned = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
  return hidden % kVec<T> == 0 && aligned(a) && aligned(b);
}

}  // namespace persistent
}  // namespace cuda
}  // namespace fastrnn
