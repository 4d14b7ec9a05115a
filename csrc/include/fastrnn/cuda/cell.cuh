// One (row, hidden unit) of a step: gate math from fastrnn/gates.h plus the
// workspace layout of fastrnn/workspace.h, shared by the step kernels and the
// persistent kernel so both save exactly what the backward reads.
//
// Conventions (H = hidden size, G = gates(mode), j = the hidden unit):
//   xg[g] = (W_ih x)[g*H + j] + b_ih[g*H + j]      (input side, bias folded in)
//   hg[g] = (W_hh h_prev)[g*H + j] + b_hh[g*H + j]  (hidden side, bias folded in)
//   ws    = this token's workspace row, or nullptr when nothing is saved.
#pragma once

#include "fastrnn/gates.h"
#include "fastrnn/workspace.h"

namespace fastrnn {
namespace cuda {

template <Mode M>
constexpr int kGates = static_cast<int>(gates(M));

template <Mode M>
constexpr RnnAct kAct = M == Mode::RNN_RELU ? RnnAct::Relu : RnnAct::Tanh;

// Forward of unit j: returns the cell output h (before any projection), updates
// the fp32 cell state c in place (LSTM) and saves the workspace columns.
// h_prev is read by GRU only.
template <Mode M>
__device__ __forceinline__ float forward_unit(const float (&xg)[kGates<M>],
                                              const float (&hg)[kGates<M>], float& c,
                                              float h_prev, float* ws, long long H, long long j) {
  using namespace workspace;
  if constexpr (M == Mode::LSTM) {
    const LstmForward<float> s =
        lstm_forward(xg[0] + hg[0], xg[1] + hg[1], xg[2] + hg[2], xg[3] + hg[3], c);
    if (ws != nullptr) {
      ws[kLstmI * H + j] = s.i;
      ws[kLstmF * H + j] = s.f;
      ws[kLstmG * H + j] = s.g;
      ws[kLstmO * H + j] = s.o;
      ws[kLstmC * H + j] = s.c;
    }
    c = s.c;
    return s.h;
  } else if constexpr (M == Mode::GRU) {
    const GruForward<float> s = gru_forward(xg[0], xg[1], xg[2], hg[0], hg[1], hg[2], h_prev);
    if (ws != nullptr) {
      ws[kGruR * H + j] = s.r;
      ws[kGruZ * H + j] = s.z;
      ws[kGruN * H + j] = s.n;
      ws[kGruHn * H + j] = hg[2];
    }
    return s.h;
  } else {
    return rnn_forward<kAct<M>>(xg[0] + hg[0]);
  }
}

// Backward of unit j, given dh = dL/d(cell output) of this step (output grad plus
// the recurrent grad, already through W_hr when projecting).
//   dgx[g]  gradient w.r.t. the input-side pre-activation (feeds dx, dW_ih, db_ih)
//   dgh[g]  gradient w.r.t. the hidden-side pre-activation (feeds dh_prev, dW_hh,
//           db_hh); equal to dgx except for GRU's n gate
//   dc      LSTM: in dL/dc_t, out dL/dc_{t-1}
//   returns the part of dL/dh_prev that bypasses W_hh (GRU: dh * z; else 0)
// c_prev is read by LSTM, h_prev by GRU, h (this step's output) by RNN.
template <Mode M>
__device__ __forceinline__ float backward_unit(float dh, float& dc, const float* ws, float c_prev,
                                               float h_prev, float h, long long H, long long j,
                                               float (&dgx)[kGates<M>], float (&dgh)[kGates<M>]) {
  using namespace workspace;
  if constexpr (M == Mode::LSTM) {
    const LstmBackward<float> d =
        lstm_backward(dh, dc, ws[kLstmI * H + j], ws[kLstmF * H + j], ws[kLstmG * H + j],
                      ws[kLstmO * H + j], ws[kLstmC * H + j], c_prev);
    dgx[0] = dgh[0] = d.i;
    dgx[1] = dgh[1] = d.f;
    dgx[2] = dgh[2] = d.g;
    dgx[3] = dgh[3] = d.o;
    dc = d.c_prev;
    return 0.0f;
  } else if constexpr (M == Mode::GRU) {
    const GruBackward<float> d = gru_backward(dh, ws[kGruR * H + j], ws[kGruZ * H + j],
                                              ws[kGruN * H + j], ws[kGruHn * H + j], h_prev);
    dgx[0] = dgh[0] = d.r;
    dgx[1] = dgh[1] = d.z;
    dgx[2] = d.x_n;
    dgh[2] = d.h_n;
    return d.h_prev;
  } else {
    dgx[0] = dgh[0] = rnn_backward<kAct<M>>(dh, h);
    return 0.0f;
  }
}

}  // namespace cuda
}  // namespace fastrnn
