// Math<T> (see fastrnn/gates.h) for ATen's SIMD type, so the CPU kernels run the
// shared gate math on whole vectors: one call covers Vectorized<S>::size() lanes.
// exp is ATen's fast vector exp (exp_u20: <= 2 ulp). tanh is derived from it as
// 2 sigmoid(2x) - 1, which profiling showed ~4x cheaper than ATen's SLEEF tanh;
// its error is a few ulp of 1 in absolute terms (relative error grows only
// for |x| << 1, where tanh x itself is tiny), well inside fp32/bf16 tolerances,
// and the double path keeps it at ~1e-16 absolute.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include "fastrnn/gates.h"

namespace fastrnn {

template <typename S>
struct Math<at::vec::Vectorized<S>> {
  using V = at::vec::Vectorized<S>;
  static V one() { return V(S(1)); }
  static V exp(V x) { return x.exp_u20(); }
  static V sigmoid(V x) { return one() / (one() + exp(x.neg())); }
  static V tanh(V x) {
    const V two(S(2));
    return two * sigmoid(two * x) - one();
  }
  static V relu(V x) { return at::vec::clamp_min(x, V(S(0))); }
  static V relu_grad(V y) { return y.gt(V(S(0))); }
};

// Calls fn(j, count) for j = begin, begin + V, ... < end with
// count = min(V, end - j) lanes, V = Vectorized<S>::size(); fn loads/stores with
// V::loadu(p + j, count) and v.store(p + j, count), so a ragged tail reuses the
// vector code.
template <typename S, typename Fn>
inline void for_each_vector(int64_t begin, int64_t end, const Fn& fn) {
  constexpr int64_t V = at::vec::Vectorized<S>::size();
  for (int64_t j = begin; j < end; j += V) fn(j, end - j < V ? end - j : V);
}

template <typename S, typename Fn>
inline void for_each_vector(int64_t n, const Fn& fn) {
  for_each_vector<S>(0, n, fn);
}

}  // namespace fastrnn
