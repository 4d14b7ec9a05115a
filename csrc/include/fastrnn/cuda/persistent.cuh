// The persistent kernels: one cooperative launch runs a whole layer direction
// (every time step) with W_hh resident in shared memory, forward or backward.
//
// Forward: block k owns hidden units [k*U, min(H, (k+1)*U)) and keeps their G
// gate rows of W_hh (G*U rows of H elements of T) in shared memory for the
// whole sequence. At each step a warp computes one item = (4 live rows, one
// unit): the G dot products W_hh[g*H+j, :] . h_prev for each row (fp32
// accumulation), then the gate math of fastrnn/cuda/cell.cuh in the epilogue.
// h_prev is read from the previous step's y rows (or h0), which other blocks
// wrote, so the steps are separated by a grid-wide barrier:
// cooperative_groups::this_grid().sync().
// The cooperative launch is what guarantees that every block is resident at
// once (it fails instead of deadlocking), so the grid is at most one block per
// SM and U = ceil(H / SMs): the layer fits when G * U * H * sizeof(T) bytes fit
// in one block's opt-in shared memory (227 KiB on H100, 163 KiB on A100).
//
// Backward: block k owns the same units, now as columns: it keeps W_hh[:, k*U ..
// (k+1)*U) (the same G*U*H elements, transposed) and per step (1) computes the
// gate gradients of its units for the live rows (cell.cuh), writing dgx/dgh;
// grid sync; (2) accumulates dh[b, own columns] = dgh[row] . W_hh[:, column]
// with the same warp dot product; block sync. dh and dc stay fp32 in global
// memory, each element touched only by its owning block. The weight gradients
// are then whole-sequence GEMMs in the binding, as on the step path.
//
// No projection (LSTM proj_size > 0 runs on the step path). H = hidden size,
// N = sum(batch_sizes), B = batch_sizes[0], G = gates(mode).
#pragma once

#include <cuda_runtime.h>

#include "fastrnn/workspace.h"

namespace fastrnn {
namespace cuda {

template <typename T>
struct PersistentForward {
  long long steps = 0, hidden = 0;
  bool reverse = false;
  const int* batch_sizes = nullptr;  // (steps,) device int32, non-increasing
  const T* gx = nullptr;             // (N, G*H)  W_ih x, no bias
  const T* w_hh = nullptr;           // (G*H, H)
  const T* b_ih = nullptr;           // (G*H,) or nullptr
  const T* b_hh = nullptr;           // (G*H,) or nullptr
  const T* h0 = nullptr;             // (B, H)
  float* c = nullptr;                // (B, H) LSTM cell state: in c0, out c_n
  T* y = nullptr;                    // (N, H)
  T* h_n = nullptr;                  // (B, H) last state of every row
  float* ws = nullptr;               // (N, workspace::columns(mode, H)) or nullptr
};

template <typename T>
struct PersistentBackward {
  long long steps = 0, hidden = 0;
  bool reverse = false;              // the forward's direction (backward walks it the other way)
  const int* batch_sizes = nullptr;  // (steps,) device int32, non-increasing
  const T* w_hh = nullptr;           // (G*H, H)
  const T* dy = nullptr;             // (N, H)    dL/dy
  const float* ws = nullptr;         // (N, workspace::columns(mode, H)) saved by the forward
  const float* c_prev = nullptr;     // (N, H)    LSTM: c_{t-1} of every token
  const T* h_prev = nullptr;         // (N, H)    GRU: h_{t-1} of every token
  const T* y = nullptr;              // (N, H)    RNN: h_t of every token
  float* dh = nullptr;               // (B, H)    in dL/dh_n, out dL/dh0
  float* dc = nullptr;               // (B, H)    LSTM: in dL/dc_n, out dL/dc0
  T* dgx = nullptr;                  // (N, G*H)  gradient of the input-side pre-activations
  T* dgh = nullptr;                  // (N, G*H)  hidden side; must equal dgx except for GRU
};

// Grid and shared memory of a persistent kernel for this layer on `device`.
struct PersistentPlan {
  int blocks = 0;          // grid size; 0 when the layer does not fit
  int units = 0;           // hidden units per block (U)
  size_t smem_bytes = 0;   // dynamic shared memory per block
};

template <typename T>
cudaError_t plan_persistent_forward(Mode mode, long long hidden, int device, PersistentPlan* plan);

template <typename T>
cudaError_t plan_persistent_backward(Mode mode, long long hidden, int device, PersistentPlan* plan);

// Enqueue the whole forward / backward on `stream`. `plan` must come from the
// matching plan_* call for the same mode, hidden size, T and device, with blocks > 0.
template <typename T>
cudaError_t persistent_forward(Mode mode, const PersistentForward<T>& args,
                               const PersistentPlan& plan, cudaStream_t stream);
template <typename T>
cudaError_t persistent_backward(Mode mode, const PersistentBackward<T>& args,
                                const PersistentPlan& plan, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastrnn
