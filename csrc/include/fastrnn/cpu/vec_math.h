// Math<T> (see fastrnn/gates.h) for ATen's SIMD type, so the CPU kernels run the
// shared gate math on whole vectors: one call covers Vectorized<S>::size() lanes.
//
// What torch.nn gives, lane for lane: NaN in -> NaN out, +-inf and huge finite
// inputs saturate (sigmoid -> 0 / 1, tanh -> -1 / 1), and fp32 results are
// accurate *relative to their value*, also near 0 (tests/test_nonfinite.py,
// tests/test_accuracy.py).
//
// float: exp is ATen's fast vector exp (exp_u20: <= 5 ulp measured on
// [-80, 80]; it clamps its argument with min/max, which turns NaN into +inf,
// hence the explicit NaN lanes below). tanh is a polynomial near 0 and an exp
// form elsewhere (see tanh_f32); together ~1.5x the old 2 sigmoid(2x) - 1,
// which lost all relative precision for |x| << 1 (6e-5 relative error at
// activations ~1e-3), and still ~3x cheaper than ATen's SLEEF tanh
// (docs/benchmarks.md, "NaN-safe and accurate gate math").
// double: SLEEF's exp and tanh (1 ulp, NaN- and inf-correct): the double
// kernels are for exactness, not speed.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <type_traits>

#include "fastrnn/gates.h"

namespace fastrnn {

namespace vec_detail {
using Vf = at::vec::Vectorized<float>;

// tanh x for fp32 lanes, <= ~2 ulp relative everywhere:
//   |x| < 0.625:  x + x^3 P(x^2), P of degree 4: a minimax fit of
//                 (tanh x - x) / x^3 weighted to the relative error of tanh
//                 (4.4e-9 in exact arithmetic, < 0.8 ulp evaluated in fp32).
//   |x| >= 0.625: sign(x) (1 - e) / (1 + e), e = exp(-2|x|) <= 0.29, so that
//                 1 - e cancels at most one bit; e -> 0 saturates to +-1
//                 (also for +-inf), and no overflow.
// A NaN lane fails the |x| >= 0.625 test, takes the polynomial and stays NaN.
inline Vf tanh_f32(Vf x) {
  const Vf a = x.abs();
  const Vf s = x * x;
  Vf p = at::vec::fmadd(s, Vf(-0.005704963114112616f), Vf(0.02063906379044056f));
  p = at::vec::fmadd(s, p, Vf(-0.05373970791697502f));
  p = at::vec::fmadd(s, p, Vf(0.13331441581249237f));
  p = at::vec::fmadd(s, p, Vf(-0.3333328068256378f));
  const Vf near_zero = at::vec::fmadd(x * s, p, x);
  const Vf e = (a * Vf(-2.0f)).exp_u20();
  const Vf one(1.0f);
  const Vf magnitude = (one - e) / (one + e);
  const Vf far = magnitude | (x & Vf(-0.0f));  // copysign: magnitude >= 0
  return Vf::blendv(near_zero, far, a >= Vf(0.625f));
}

// 1 / (1 + e^-x), with NaN lanes passed through (exp_u20 maps NaN to +inf,
// which would give 0). x -> +inf: 1; x -> -inf: 1 / inf = 0.
inline Vf sigmoid_f32(Vf x) {
  const Vf one(1.0f);
  const Vf y = one / (one + x.neg().exp_u20());
  return Vf::blendv(y, x, x != x);
}
}  // namespace vec_detail

template <typename S>
struct Math<at::vec::Vectorized<S>> {
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>,
                "the CPU gate math runs in fp32 or fp64");
  using V = at::vec::Vectorized<S>;
  static V one() { return V(S(1)); }
  static V sigmoid(V x) {
    if constexpr (std::is_same_v<S, float>)
      return vec_detail::sigmoid_f32(x);
    else
      return one() / (one() + x.neg().exp());
  }
  static V tanh(V x) {
    if constexpr (std::is_same_v<S, float>)
      return vec_detail::tanh_f32(x);
    else
      return x.tanh();
  }
  // max(0, x) with the constant first: _mm*_max_ps returns its second operand
  // when either is NaN, so NaN stays NaN as in torch.relu.
  static V relu(V x) { return at::vec::clamp_min(x, V(S(0))); }
  // torch's threshold_backward: a select, so a non-finite dh stops where y <= 0
  // and a NaN y passes dh on.
  static V relu_backward(V dh, V y) { return V::blendv(dh, V(S(0)), y <= V(S(0))); }
  static V fma(V a, V b, V c) { return at::vec::fmadd(a, b, c); }
};

// Forced inline, for the loops' row passes and their per-vector lambdas
// (`[&](int64_t j, int64_t n) FASTRNN_VECTOR_INLINE {...}`): a row pass shared
// by the time loop and a single step (forward_row in forward_loop.cpp) was
// otherwise left a call per vector of 16 lanes, its operands passed through
// memory, ~10% of a bfloat16 LSTM training call at B = 64, H = 256, T = 64.
#if defined(__GNUC__)
#define FASTRNN_VECTOR_INLINE __attribute__((always_inline))
#else
#define FASTRNN_VECTOR_INLINE
#endif

// Calls fn(j, count) for j = begin, begin + V, ... < end with
// count = min(V, end - j) lanes, V = Vectorized<S>::size(); fn loads/stores with
// V::loadu(p + j, count) and v.store(p + j, count), so a ragged tail reuses the
// vector code.
template <typename S, typename Fn>
inline FASTRNN_VECTOR_INLINE void for_each_vector(int64_t begin, int64_t end, const Fn& fn) {
  constexpr int64_t V = at::vec::Vectorized<S>::size();
  for (int64_t j = begin; j < end; j += V) fn(j, end - j < V ? end - j : V);
}

template <typename S, typename Fn>
inline void for_each_vector(int64_t n, const Fn& fn) {
  for_each_vector<S>(0, n, fn);
}

}  // namespace fastrnn
