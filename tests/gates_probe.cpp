// Evaluates the scalar gate math of csrc/include/fastrnn/gates.h (the form the
// CUDA kernels use) for tests/test_cpu_op_contract.py::test_scalar_gate_math
// and tests/test_nonfinite.py, which build and run it through tests/gates_probe.py.
// stdin: n, then n records of 8 numbers v0..v7. stdout per record and type
// (double, then float): one line of 19 numbers:
//   LSTM  pre i,f,g,o = v0..v3, c_prev = v4, dh = v5, dc_next = v6:
//         h, c, d pre i, f, g, o, dc_prev                                (7)
//   GRU   x_r,x_z,x_n = v0..v2, h_r,h_z,h_n = v3..v5, h_prev = v6, dh = v7:
//         h, d r, d z, d x_n, d h_n, dh_prev (direct)                    (6)
//   RNN   pre = v0, dh = v1: tanh h, d pre; relu h, d pre                  (4)
//   Math  sigmoid(v0), relu_backward(dh = v1, y = v0)                     (2)
#include <stdio.h>

#include "fastrnn/gates.h"

using namespace fastrnn;

template <typename T>
void probe(const double* v) {
  T x[8];
  for (int i = 0; i < 8; ++i) x[i] = static_cast<T>(v[i]);
  const auto l = lstm_forward(x[0], x[1], x[2], x[3], x[4]);
  const auto dl = lstm_backward(x[5], x[6], l.i, l.f, l.g, l.o, l.c, x[4]);
  const auto g = gru_forward(x[0], x[1], x[2], x[3], x[4], x[5], x[6]);
  const auto dg = gru_backward(x[7], g.r, g.z, g.n, x[5], x[6]);
  const T ht = rnn_forward<RnnAct::Tanh>(x[0]), hr = rnn_forward<RnnAct::Relu>(x[0]);
  const T out[19] = {l.h, l.c, dl.i, dl.f, dl.g, dl.o, dl.c_prev,
                     g.h, dg.r, dg.z, dg.x_n, dg.h_n, dg.h_prev,
                     ht, rnn_backward<RnnAct::Tanh>(x[1], ht),
                     hr, rnn_backward<RnnAct::Relu>(x[1], hr),
                     Math<T>::sigmoid(x[0]), Math<T>::relu_backward(x[1], x[0])};
  for (int i = 0; i < 19; ++i) printf("%.17g%c", static_cast<double>(out[i]), i == 18 ? '\n' : ' ');
}

int main() {
  int n = 0;
  if (scanf("%d", &n) != 1) return 1;
  for (int r = 0; r < n; ++r) {
    double v[8];
    for (int i = 0; i < 8; ++i)
      if (scanf("%lf", &v[i]) != 1) return 1;
    probe<double>(v);
    probe<float>(v);
  }
  return 0;
}
