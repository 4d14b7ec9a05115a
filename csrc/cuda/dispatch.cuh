// Turns the runtime Mode into the compile-time template argument of a kernel
// and launches it.
#pragma once

#include <cuda_runtime.h>

#include <type_traits>

#include "fastrnn/workspace.h"

namespace fastrnn {
namespace cuda {

template <Mode M>
using ModeTag = std::integral_constant<Mode, M>;

// Calls f(ModeTag<M>{}) for the runtime `mode` (C++17 has no template lambdas,
// so the callee reads M back as decltype(tag)::value); f returns cudaError_t.
template <typename F>
cudaError_t with_mode(Mode mode, F&& f) {
  switch (mode) {
    case Mode::LSTM: return f(ModeTag<Mode::LSTM>{});
    case Mode::GRU: return f(ModeTag<Mode::GRU>{});
    case Mode::RNN_TANH: return f(ModeTag<Mode::RNN_TANH>{});
    case Mode::RNN_RELU: return f(ModeTag<Mode::RNN_RELU>{});
  }
  return cudaErrorInvalidValue;
}

// Launches kernel_for(ModeTag<mode>{}) (a __global__ taking `args`) with one
// thread per element of `total`, `Threads` per block, on `stream`.
template <int Threads, typename Args, typename KernelFor>
cudaError_t launch_elementwise(Mode mode, long long total, const Args& args, cudaStream_t stream,
                               KernelFor kernel_for) {
  if (total == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>((total + Threads - 1) / Threads);
  return with_mode(mode, [&](auto tag) {
    kernel_for(tag)<<<blocks, Threads, 0, stream>>>(args);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace fastrnn
