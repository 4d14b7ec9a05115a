// The gate math of every cell, written once for the CPU and CUDA kernels.
//
// Each function computes ONE element (one hidden unit of one batch row) and is
// templated on the value type T. T is float or double on CUDA (a kernel holding
// __half / __nv_bfloat16 converts to float first) and at::vec::Vectorized<float>
// or <double> on the CPU, where one call then covers a whole SIMD lane group.
// T only needs +, -, * and the primitives of Math<T> below; Math<float> and
// Math<double> live here, Math<Vectorized<...>> in fastrnn/cpu/vec_math.h, so
// this header needs neither torch nor CUDA headers.
//
// Notation: "pre" = pre-activation (W_ih x + b_ih + W_hh h + b_hh for the gate),
// sigma = logistic sigmoid. Backward functions take the gradient of the loss
// w.r.t. the step's outputs and return gradients w.r.t. pre-activations, which
// is what the weight-gradient GEMMs consume.
#pragma once

#include <math.h>

#if defined(__CUDACC__)
#define FASTRNN_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Inlined into the loops' vector passes: GCC otherwise kept lstm_forward a
// call per vector (5% of a B = 64 LSTM forward), its operands passed through
// memory.
#define FASTRNN_HD inline __attribute__((always_inline))
#else
#define FASTRNN_HD inline
#endif

namespace fastrnn {

// Primitive elementwise functions per value type. Specialise for new types.
//   one()          1
//   tanh(x)        tanh x
//   sigmoid(x)     1 / (1 + e^-x)
//   relu(x)        max(x, 0)
//   relu_backward(dh, y)   0 where y <= 0 else dh (y = relu(x): same mask as x > 0)
//   fma(a, b, c)   a * b + c, rounded once
// Non-finite values behave as in torch: NaN in gives NaN out (relu too), +-inf
// saturates sigmoid and tanh, and relu_backward is torch's threshold_backward:
// a select, not a product with a 0/1 mask, so a NaN or inf dh stops where
// y <= 0 (0 * NaN would be NaN), and a NaN y passes dh on (NaN <= 0 is false).
template <typename T>
struct Math;

// float and double: the overloads of <math.h> (host) and of CUDA's device math
// library resolve ::exp / ::tanh / ::fma to expf / tanhf / fmaf for float.
template <typename T>
struct ScalarMath {
  FASTRNN_HD static T one() { return T(1); }
  FASTRNN_HD static T tanh(T x) { return ::tanh(x); }
  FASTRNN_HD static T sigmoid(T x) { return T(1) / (T(1) + ::exp(-x)); }
  FASTRNN_HD static T relu(T x) { return x < T(0) ? T(0) : x; }  // NaN < 0 is false
  FASTRNN_HD static T relu_backward(T dh, T y) { return y <= T(0) ? T(0) : dh; }
  FASTRNN_HD static T fma(T a, T b, T c) { return ::fma(a, b, c); }
};

template <>
struct Math<float> : ScalarMath<float> {};
template <>
struct Math<double> : ScalarMath<double> {};

// ---------------------------------------------------------------- LSTM
// Forward:  i = sigma(pre_i)   f = sigma(pre_f)   g = tanh(pre_g)   o = sigma(pre_o)
//           c = f * c_prev + i * g
//           h = o * tanh(c)                 (before the optional projection W_hr)
template <typename T>
struct LstmForward {
  T i, f, g, o;  // activated gates (saved for backward)
  T c;           // new cell state (saved for backward)
  T h;           // new hidden state of the cell
};

template <typename T>
FASTRNN_HD LstmForward<T> lstm_forward(T pre_i, T pre_f, T pre_g, T pre_o, T c_prev) {
  using M = Math<T>;
  LstmForward<T> s;
  s.i = M::sigmoid(pre_i);
  s.f = M::sigmoid(pre_f);
  s.g = M::tanh(pre_g);
  s.o = M::sigmoid(pre_o);
  s.c = s.f * c_prev + s.i * s.g;
  s.h = s.o * M::tanh(s.c);
  return s;
}

// h = o * tanh(c): recomputes the cell output from the saved o and c (the
// backward needs it for dW_hr without the forward having to store it).
template <typename T>
FASTRNN_HD T lstm_cell_output(T o, T c) {
  return o * Math<T>::tanh(c);
}

// Backward. Inputs: dh = dL/dh of the cell output (after back-propagating
// through W_hr when projecting), dc_next = dL/dc arriving from the next step,
// the saved activated gates and new cell state c, and c_prev.
//   dc      = dc_next + dh * o * (1 - tanh(c)^2)
//   d pre_i = dc * g * i (1 - i)        d pre_f = dc * c_prev * f (1 - f)
//   d pre_g = dc * i * (1 - g^2)        d pre_o = dh * tanh(c) * o (1 - o)
//   dc_prev = dc * f
template <typename T>
struct LstmBackward {
  T i, f, g, o;  // gradients w.r.t. the pre-activations
  T c_prev;      // gradient w.r.t. c_prev
};

template <typename T>
FASTRNN_HD LstmBackward<T> lstm_backward(T dh, T dc_next, T i, T f, T g, T o, T c, T c_prev) {
  using M = Math<T>;
  const T one = M::one();
  const T tc = M::tanh(c);
  const T dc = dc_next + dh * o * (one - tc * tc);
  LstmBackward<T> d;
  d.i = dc * g * i * (one - i);
  d.f = dc * c_prev * f * (one - f);
  d.g = dc * i * (one - g * g);
  d.o = dh * tc * o * (one - o);
  d.c_prev = dc * f;
  return d;
}

// ---------------------------------------------------------------- GRU
// torch.nn's formulation: b_hn sits inside the reset product.
//   x_r, x_z, x_n = W_i{r,z,n} x + b_i{r,z,n}
//   h_r, h_z, h_n = W_h{r,z,n} h_prev + b_h{r,z,n}
//   r = sigma(x_r + h_r)   z = sigma(x_z + h_z)   n = tanh(x_n + r * h_n)
//   h = n + z * (h_prev - n)      (= (1 - z) n + z h_prev, in torch's order of
//                                  operations: see gru_backward)
template <typename T>
struct GruForward {
  T r, z, n;  // activated gates (saved for backward, with h_n)
  T h;        // new hidden state
};

template <typename T>
FASTRNN_HD GruForward<T> gru_forward(T x_r, T x_z, T x_n, T h_r, T h_z, T h_n, T h_prev) {
  using M = Math<T>;
  GruForward<T> s;
  s.r = M::sigmoid(x_r + h_r);
  s.z = M::sigmoid(x_z + h_z);
  s.n = M::tanh(x_n + s.r * h_n);
  s.h = M::fma(s.z, h_prev - s.n, s.n);
  return s;
}

// Backward. Inputs: dh = dL/dh (output plus recurrent gradient), the saved
// r, z, n, h_n (= W_hn h_prev + b_hn) and h_prev.
//   d pre_n = (dh - dh * z) * (1 - n^2)         (= d x_n)
//   d pre_z = dh * (h_prev - n) * z (1 - z)     (= d x_z = d h_z)
//   d pre_r = d pre_n * h_n * r (1 - r)         (= d x_r = d h_r)
//   d h_n   = d pre_n * r
//   dh_prev (direct part) = dh * z; the rest comes from the recurrent GEMM.
// The input side and the hidden side differ only in the n gate: x_n gets
// d pre_n, h_n gets d pre_n * r.
// dL/dn is dh - dh * z as torch's autograd forms it for h = n + z (h_prev - n),
// not dh (1 - z): an infinite dh then gives NaN (inf - inf) exactly where
// torch.nn's does; fma rounds it once, so it is also the more accurate form.
template <typename T>
struct GruBackward {
  T r, z;     // gradients w.r.t. the r and z pre-activations (both sides)
  T x_n;      // gradient w.r.t. x_n
  T h_n;      // gradient w.r.t. h_n
  T h_prev;   // direct gradient w.r.t. h_prev (excluding through W_hh)
};

template <typename T>
FASTRNN_HD GruBackward<T> gru_backward(T dh, T r, T z, T n, T h_n, T h_prev) {
  using M = Math<T>;
  const T one = M::one();
  GruBackward<T> d;
  d.x_n = M::fma(-dh, z, dh) * (one - n * n);
  d.z = dh * (h_prev - n) * z * (one - z);
  d.r = d.x_n * h_n * r * (one - r);
  d.h_n = d.x_n * r;
  d.h_prev = dh * z;
  return d;
}

// ---------------------------------------------------------------- RNN
// h = act(pre), act = tanh or relu. The backward needs only the output h:
//   tanh: d pre = dh * (1 - h^2)      relu: d pre = h <= 0 ? 0 : dh
enum class RnnAct { Tanh, Relu };

template <RnnAct A, typename T>
FASTRNN_HD T rnn_forward(T pre) {
  return A == RnnAct::Tanh ? Math<T>::tanh(pre) : Math<T>::relu(pre);
}

template <RnnAct A, typename T>
FASTRNN_HD T rnn_backward(T dh, T h) {
  return A == RnnAct::Tanh ? dh * (Math<T>::one() - h * h) : Math<T>::relu_backward(dh, h);
}

}  // namespace fastrnn
