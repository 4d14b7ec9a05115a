// The time loops of one recurrent layer in one direction on the CPU.
//
// Framework-free core: raw row-major contiguous arrays, no tensors. The caller
// (csrc/cpu/layer_fwd.cpp, layer_bwd.cpp) does the one-off large GEMMs around the loops (the
// input projection before, the weight gradients after) and owns all buffers.
//
// Notation: G = gates(mode), H = hidden size, P = output size (proj_size or H),
// N = sum(batch_sizes), B = batch_sizes[0]. At step t only rows [0, bs[t]) are
// live; the packed rows of step t are [offset[t], offset[t] + bs[t]).
//
// Threading (steps.h, for_each_part): either the batch is cut into one
// contiguous tile per thread and each thread runs the whole time loop on its
// tile with no synchronisation, or (small batches, large H) the threads share
// the loop, each computing a slice of the hidden units of every gate, and meet
// at a barrier once per step.
#pragma once

#include <stdint.h>

#include "fastrnn/cpu/small_gemm.h"
#include "fastrnn/cpu/small_gemm_bf16.h"
#include "fastrnn/workspace.h"

namespace fastrnn::cpu {

struct LayerDims {
  Mode mode;
  int64_t T, B, N, H, P;
  const int64_t* batch_sizes;  // (T,) non-increasing, batch_sizes[0] == B
  bool reverse;                // process t = T-1 .. 0
};

template <typename S>
struct ForwardArgs {
  // The input projection, in one of two forms (steps.h, project_per_step):
  const S* gx;       // (N, G*H)  x @ W_ih^T + b_ih, plus b_hh for every gate but GRU's n;
                    // or null, and then the loop projects each step itself from:
  const S* x;       //   (N, I) the layer input
  Packed<S> wih_t;  //   W_ih^T (I, G*H): pack_rhs(w_ih, I, G*H, /*transpose=*/true)
  const S* bias;    //   (G*H,) the bias folded as in gx, or null (bias = False)
  Packed<S> whh_t;  // W_hh^T (P, G*H): pack_rhs(w_hh, P, G*H, /*transpose=*/true);
                    // data = null when T = 1 and gh0 is given (no step needs it)
  const S* gh0;     // (B, G*H) h0 @ W_hh^T, computed by the caller for the first step,
                    // or null. A single step (a cell) then packs nothing: packing W_hh
                    // costs as much as the step's GEMM.
  const S* b_hn;     // (H,) GRU's b_hn (added inside r * (.)), or null
  const S* h0;      // (B, P) initial state, read by rows at their first step
  Packed<S> whr_t;  // W_hr^T (H, P) when projecting, else data = null
  S* h;             // (B, P) in: h0, out: h_n
  S* c;             // (B, H) in: c0, out: c_n; LSTM only, else null
  S* y;             // (N, P) out: h of every token
  S* ws;            // (N, workspace::columns(mode, H)) out, or null (inference)
  // Per-step scratch, owned by the caller so that the threads of a loop
  // allocate nothing (one that failed to would leave its partner waiting at
  // the step barrier): scratch_slots(dims) copies (steps.h) of B rows each.
  S* gh;            // (slots * B, G*H) h_{t-1} @ W_hh^T; null when gh0 serves the only step
  S* gx_step;       // (slots * B, G*H) bias + x_t @ W_ih^T when gx is null, else null
  S* h_cell;        // (slots * B, H) o * tanh(c), the input of W_hr, when projecting
  // A bfloat16 layer's products on bf16 dot products (small_gemm_bf16.h) when
  // bf16.whh_t.data is set, or on step_product.fn_bf16 (S = float, T > 1, no
  // projection): x_t and h_{t-1} enter the products as bfloat16, as in
  // torch.nn's bfloat16 kernels; gates and state stay fp32. Then whh_t (and
  // wih_t) above are unused.
  struct Bf16Operands {
    const uint16_t* x;   // (N, I) the input
    PackedBf16 wih_t;    // W_ih^T, when projecting per step
    PackedBf16 whh_t;    // W_hh^T
    const uint16_t* h0;  // (B, P)
    uint16_t* y;         // (N, P) out: y rounded to bfloat16 (the op's output)
  } bf16;
  // When fn is set, every step product runs through it instead of the
  // packed whh_t (the caller's BLAS, or W_hh read as stored, where
  // product_choice.h measured that faster): fn(ctx, rows, h (rows, P), c0,
  // cols, out) writes out (rows, cols; row stride G*H) = h @ W_hh^T[:, c0 :
  // c0 + cols], once for all G*H columns of a batch tile, once per gate for
  // a hidden slice's units. In a bf16 instantiation fn_bf16 does the same
  // from the bfloat16 rows of h (bf16.y, bf16.h0) instead of bf16.whh_t.
  struct StepProduct {
    void (*fn)(const void* ctx, int64_t rows, const S* h, int64_t c0, int64_t cols, S* out);
    void (*fn_bf16)(const void* ctx, int64_t rows, const uint16_t* h, int64_t c0, int64_t cols,
                    S* out);
    const void* ctx;
  } step_product;
};

template <typename S>
void forward_loop(const LayerDims& dims, const ForwardArgs<S>& args);

// A bfloat16 single step (T = 1, every row live, no projection) whose two
// products the caller made: G = uint16_t for bfloat16 bits (ATen's bf16
// matmul, rounded as torch.nn's cells round them), float for fp32 sums
// (rows_times_wt_bf16). The same gate pass as forward_loop's, on each row
// widened to fp32 in a buffer of the thread, writing the bfloat16 results
// directly: no fp32 copies of the products, states and outputs as separate
// passes (each an ATen conversion and allocation, ~5-7 us a call at B = 64,
// H = 256).
template <typename G>
struct SingleStepBf16 {
  Mode mode;
  int64_t B, H;
  const G* gx;           // (B, G*H) x @ W_ih^T + b_ih
  const G* gh;           // (B, G*H) h0 @ W_hh^T + b_hh (GRU's b_hn included)
  const uint16_t* h0;    // (B, H) bfloat16
  const uint16_t* c0;    // (B, H) bfloat16; LSTM only, else null
  uint16_t* y;           // (B, H) out
  uint16_t* h_n;         // (B, H) out: y's values, a separate output
  uint16_t* c_n;         // (B, H) out; LSTM only, else null
  float* ws;             // (B, workspace::columns(mode, H)) out, or null (inference)
};

template <typename G>
void single_step_bf16(const SingleStepBf16<G>& args);

// Columns of the pre-activation gradient buffer: G*H, except GRU, whose input
// and hidden sides differ in the n gate: [d r | d z | d x_n | d h_n] (4H).
inline int64_t dgate_columns(Mode mode, int64_t H) {
  return mode == Mode::GRU ? 4 * H : gates(mode) * H;
}

template <typename S>
struct BackwardArgs {
  const S* grad_y;  // (N, P)
  const S* y;       // (N, P) forward output
  const S* h0;      // (B, P)
  const S* c0;      // (B, H) LSTM, else null
  const S* ws;      // (N, workspace::columns(mode, H)) from forward_loop
  Packed<S> whh;    // W_hh (G*H, P): pack_rhs(w_hh, G*H, P, /*transpose=*/false), or
                    // data = null for a single step whose products are BLAS calls
                    // (layer_args.h, blas_single_step): the loop then leaves dh0's
                    // GEMM term to the caller (dh += dG_hidden @ W_hh; the GRU loop
                    // writes its direct term dh * z into dh first, the others leave
                    // dh undefined)
  Packed<S> whr;    // W_hr (P, H) when projecting, else data = null
  S* dh;            // (B, P) in: dL/dh of the step after the range (dL/dh_n at first),
                    // out: dL/dh of the range's first step (dL/dh0 at last)
  S* dc;            // (B, H) the same for c; LSTM only, else null
  // Per-token outputs, for the packed rows [row0, row0 + R) of the steps run
  // (see s_begin below), row r of each at index r - row0:
  S* dg;            // (R, dgate_columns) out: dL/d pre-activations
  S* h_prev;        // (R, P) out: the h each token's step read (for dW_hh)
  S* dy_total;      // (R, P) out when projecting: dL/dy including the recurrent part
  S* h_cell;        // (R, H) out when projecting: o * tanh(c), the input of W_hr
  S* dh_cell;       // (slots * B, H) scratch when projecting: dL/d h_cell of a step
  // A bfloat16 layer's per-step product dh = dG_hidden @ W_hh on bf16 dot
  // products when bf16.whh.data is set (S = float, T > 1, no projection, H
  // even): dG enters it rounded to bfloat16, as in torch.nn's bf16 kernels.
  // Then whh above is unused.
  struct Bf16Operands {
    PackedBf16 whh;  // W_hh (G*H, P): pack_bf16(w_hh, G*H, P)
    uint16_t* dg;    // (R, dgate_columns) out: dg rounded to bfloat16
  } bf16;
  // The steps run: s_begin <= s < s_end in processing order (walked from
  // s_end - 1 down; all of them: 0 and T), whose packed rows start at row0.
  // Calls over consecutive ranges from the end carry dh and dc between them,
  // so the caller can consume dg range by range (layer_bwd.cpp).
  int64_t s_begin, s_end, row0;
  // When fn_bf16 is set, a bf16 step product of a part that computes every
  // column (batch tiles, not hidden slices) runs through it instead of
  // bf16.whh: fn_bf16(ctx, rows, g (rows, K) bf16 with row stride ld, w_row0,
  // K, out (rows, P), accumulate) computes out (+)= g @ W_hh[w_row0 :
  // w_row0 + K] (ATen's bfloat16 matmul, where product_choice.h measured it
  // faster).
  struct StepProduct {
    void (*fn_bf16)(const void* ctx, int64_t rows, const uint16_t* g, int64_t ld,
                    int64_t w_row0, int64_t K, S* out, bool accumulate);
    const void* ctx;
  } step_product;
  // Whether the first step in processing order (s = 0) computes its dh carry
  // (dh @ W_hh): for the rows live there that is dh0's W_hh term, which
  // nobody needs when h0 asks for no gradient (layer_bwd's output_mask);
  // every part skips it alike, so no barrier goes unmatched.
  bool dh0_product = true;
};

template <typename S>
void backward_loop(const LayerDims& dims, const BackwardArgs<S>& args);

// The gate backward of a bfloat16 single step without projection (the
// forward's single_step_bf16), on each row widened to fp32 in a buffer of the
// thread: dG in fp32 and rounded to bfloat16 (the bf16 products' operand;
// for GRU also its W_hh side in one block, where asked), LSTM's dc0 in bfloat16, GRU's direct term of dh0 in fp32 (the caller adds
// dG_h @ W_hh). Reads the bfloat16 operands as they are: no fp32 copies of
// dy, dh, y, h0, c0 and dc as separate ATen conversions.
struct SingleStepBf16Grad {
  Mode mode;
  int64_t B, H;
  const uint16_t* grad_y;    // (B, H)
  const uint16_t* grad_h_n;  // (B, H)
  const uint16_t* grad_c_n;  // (B, H); LSTM only, else null
  const uint16_t* y;         // (B, H) the forward's output (RNN reads it)
  const uint16_t* h0;        // (B, H) (GRU reads it)
  const uint16_t* c0;        // (B, H); LSTM only, else null
  const float* ws;           // (B, workspace::columns(mode, H)) from single_step_bf16
  float* dg;                 // (B, dgate_columns(mode, H)) out
  uint16_t* dg16;            // (B, dgate_columns(mode, H)) out: dg rounded to bfloat16
  uint16_t* dgh16;           // (B, 3H) out: GRU's W_hh side [d r | d z | d h_n] of dg16, or null
  uint16_t* dc0;             // (B, H) out; LSTM only, else null
  float* dh0;                // (B, H) out: dh * z; GRU only, else null
};

void single_step_bf16_backward(const SingleStepBf16Grad& args);

}  // namespace fastrnn::cpu
