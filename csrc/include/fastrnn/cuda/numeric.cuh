// Element types of the CUDA kernels and their conversions to the fp32 the math runs in.
//
// T (the tensor dtype) is float, __half or __nv_bfloat16. Gate math, cell
// states and the workspace are fp32 for every T (see fastrnn/workspace.h), so a
// kernel converts T -> float on load and float -> T on store, once per element.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

// Applies X to every element type the kernels are instantiated for.
#define FASTRNN_CUDA_DTYPES(X) X(float) X(__half) X(__nv_bfloat16)

namespace fastrnn {
namespace cuda {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Optional bias element: absent biases (bias=False) read as zero.
template <typename T>
__device__ __forceinline__ float bias_at(const T* bias, long long index) {
  return bias == nullptr ? 0.0f : to_float(bias[index]);
}

// 16-byte vectors: kVec<T> elements of T per load, unpacked into fp32 registers.
template <typename T>
constexpr int kVec = 16 / sizeof(T);

// Two packed 16-bit values and their conversion to float2.
template <typename T>
struct Pair;
template <>
struct Pair<__half> {
  using type = __half2;
};
template <>
struct Pair<__nv_bfloat16> {
  using type = __nv_bfloat162;
};
__device__ __forceinline__ float2 to_float2(__half2 v) { return __half22float2(v); }
__device__ __forceinline__ float2 to_float2(__nv_bfloat162 v) { return __bfloat1622float2(v); }

// Unpacks one 16-byte word holding kVec<T> values of T into out[].
template <typename T>
__device__ __forceinline__ void unpack(const uint4& word, float (&out)[kVec<T>]) {
  if constexpr (std::is_same_v<T, float>) {
    out[0] = __uint_as_float(word.x);
    out[1] = __uint_as_float(word.y);
    out[2] = __uint_as_float(word.z);
    out[3] = __uint_as_float(word.w);
  } else {
    const auto* pairs = reinterpret_cast<const typename Pair<T>::type*>(&word);
#pragma unroll
    for (int p = 0; p < kVec<T> / 2; ++p) {
      const float2 v = to_float2(pairs[p]);
      out[2 * p] = v.x;
      out[2 * p + 1] = v.y;
    }
  }
}

}  // namespace cuda
}  // namespace fastrnn
