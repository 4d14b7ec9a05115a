// The fused pointwise part of one time step, forward and backward.
//
// The step path of a layer is, per step t with `rows` = batch_sizes[t] live rows:
//   forward   gh = h_prev @ W_hh^T          (cuBLAS, in the binding)
//             forward_step(...)             (this file: biases, gates, state, workspace)
//   backward  backward_step(...)            (this file: gate gradients)
//             dh_prev = dgh @ W_hh (+ GRU's direct term)   (cuBLAS, in the binding)
// Pointers address the step's first live row; every matrix is row-major and
// contiguous with the row length given. H = hidden size, G = gates(mode).
// T is float, __half or __nv_bfloat16; states, workspace and gate math are fp32.
// Both functions enqueue one kernel on `stream` and return its launch status.
#pragma once

#include <cuda_runtime.h>

#include "fastrnn/workspace.h"

namespace fastrnn {
namespace cuda {

template <typename T>
struct ForwardStep {
  long long rows = 0, hidden = 0;
  const T* gx = nullptr;      // (rows, G*H)  W_ih x of the step's tokens, no bias
  const T* gh = nullptr;      // (rows, G*H)  W_hh h_prev, no bias
  const T* b_ih = nullptr;    // (G*H,) or nullptr
  const T* b_hh = nullptr;    // (G*H,) or nullptr
  float* c = nullptr;         // (rows, H)    LSTM cell state, updated in place
  const T* h_prev = nullptr;  // (rows, H)    GRU only: the hidden state gh was computed from
  T* h_state = nullptr;       // (rows, H)    receives h (may alias h_prev), or nullptr
  T* out = nullptr;           // (rows, H)    receives h: y rows, or LSTM's pre-projection h
  float* ws = nullptr;        // (rows, workspace::columns(mode, H)) or nullptr
};

template <typename T>
struct BackwardStep {
  long long rows = 0, hidden = 0;
  T* dh = nullptr;            // (rows, H) in: dL/dh from later steps (or through W_hr);
                              //           out (GRU): the direct part of dL/dh_prev
  const T* dy = nullptr;      // (rows, H) output grad added to dh, or nullptr (projection)
  float* dc = nullptr;        // (rows, H) LSTM: in dL/dc_t, out dL/dc_{t-1}
  const float* ws = nullptr;  // (rows, workspace::columns(mode, H)) saved by the forward
  const float* c_prev = nullptr;  // (rows, H) LSTM: c_{t-1}
  const T* h_prev = nullptr;  // (rows, H) GRU: h_{t-1}
  const T* h = nullptr;       // (rows, H) RNN: this step's output h_t
  T* dgx = nullptr;           // (rows, G*H) gradient of the input-side pre-activations
  T* dgh = nullptr;           // (rows, G*H) GRU: hidden side (differs in n); else unused
  T* h_cell = nullptr;        // (rows, H) LSTM with projection: receives o * tanh(c_t)
                              //           (dW_hr's operand), or nullptr
};

template <typename T>
cudaError_t forward_step(Mode mode, const ForwardStep<T>& args, cudaStream_t stream);

template <typename T>
cudaError_t backward_step(Mode mode, const BackwardStep<T>& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastrnn
