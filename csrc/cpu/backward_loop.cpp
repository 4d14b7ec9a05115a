// Backward time loop (contract: fastrnn/cpu/recurrence.h).
//
// Walks the steps of a range (BackwardArgs::s_begin) in reverse processing
// order. Per step and batch tile:
//   dh_t    = dL/dy_t + dh carried from the later step      (P wide)
//   (projection: dL/d h_cell = dh_t @ W_hr, a small GEMM)
//   one vectorized pass: gate backward of fastrnn/gates.h -> dg rows, dc carry
//   dh carry = dg_hidden @ W_hh (+ GRU's direct dh * z), a small GEMM.
// The weight gradients are left to large GEMMs after each range, which is why
// the loop also writes h_prev (and, projecting, dy_total and h_cell) per token.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "fastrnn/cpu/recurrence.h"
#include "fastrnn/cpu/small_gemm.h"
#include "fastrnn/cpu/steps.h"
#include "fastrnn/cpu/vec_math.h"
#include "fastrnn/gates.h"

namespace fastrnn::cpu {
namespace {

using at::vec::Vectorized;
namespace ws_col = workspace;

// One row's gate backward over units [j0, j1) of each gate: dh_t = dy + dh
// (dh null: dy alone, as a projection's dh_cell), the workspace row (ws) of
// the forward, and per mode: LSTM c_prev read and dc read and written in
// place (dc <- dc_prev); GRU h_prev read and dh written in place with its
// direct term dh * z; RNN y read. dg's row (dgate_columns) written; an LSTM
// with a projection also writes o * tanh(c) to h_cell (W_hr's gradient).
template <typename S, Mode M>
inline FASTRNN_VECTOR_INLINE void backward_row(int64_t j0, int64_t j1, int64_t H, const S* dy, S* dh, const S* ws,
                         const S* c_prev, S* dc, const S* h_prev, const S* y, S* dg,
                         S* h_cell) {
  using V = Vectorized<S>;
  for_each_vector<S>(j0, j1, [&](int64_t j, int64_t cnt) FASTRNN_VECTOR_INLINE {
    auto ld = [&](const S* q) { return V::loadu(q + j, cnt); };
    auto st = [&](const V& v, S* q) { v.store(q + j, cnt); };
    const V dh_t = dh ? ld(dy) + ld(dh) : ld(dy);
    if constexpr (M == Mode::LSTM) {
      const V o = ld(ws + ws_col::kLstmO * H), c = ld(ws + ws_col::kLstmC * H);
      const auto g = lstm_backward(dh_t, ld(dc), ld(ws + ws_col::kLstmI * H),
                                   ld(ws + ws_col::kLstmF * H), ld(ws + ws_col::kLstmG * H), o, c,
                                   ld(c_prev));
      st(g.i, dg);
      st(g.f, dg + H);
      st(g.g, dg + 2 * H);
      st(g.o, dg + 3 * H);
      st(g.c_prev, dc);
      if (h_cell) st(lstm_cell_output(o, c), h_cell);
    } else if constexpr (M == Mode::GRU) {
      const auto g = gru_backward(dh_t, ld(ws + ws_col::kGruR * H), ld(ws + ws_col::kGruZ * H),
                                  ld(ws + ws_col::kGruN * H), ld(ws + ws_col::kGruHn * H),
                                  ld(h_prev));
      st(g.r, dg);
      st(g.z, dg + H);
      st(g.x_n, dg + 2 * H);
      st(g.h_n, dg + 3 * H);
      st(g.h_prev, dh);
    } else {
      constexpr RnnAct A = M == Mode::RNN_TANH ? RnnAct::Tanh : RnnAct::Relu;
      st(rnn_backward<A>(dh_t, ld(y)), dg);
    }
  });
}

template <typename S, Mode M, bool bf16>
void backward_part(const LayerDims& d, const Steps& steps, const BackwardArgs<S>& a,
                   const Part& part) {
  using V = Vectorized<S>;
  const int64_t H = d.H, P = d.P, GH = gates(M) * H, cols = ws_col::columns(M, H);
  const int64_t dgc = dgate_columns(M, H);
  const int64_t b0 = part.b0, b1 = part.b1, j0 = part.j0, j1 = part.j1;
  const bool project = a.whr.data != nullptr;
  S* const dh_cell = project ? a.dh_cell + (part.slot * d.B + b0) * H : nullptr;
  // The columns of W_hh (its output side, P) whose dh this part carries.
  const Packed<S> whh = a.whh.data ? packed_columns(a.whh, part.o0, part.o1 - part.o0) : a.whh;
  const PackedBf16 whh16 =
      bf16 ? packed_columns(a.bf16.whh, part.o0, part.o1 - part.o0) : a.bf16.whh;

  for (int64_t s = a.s_end - 1; s >= a.s_begin; --s) {
    const int64_t t = steps.step(s);
    const int64_t live = steps.live(t, b0, b1);
    if (live <= 0) continue;
    const int64_t n0 = steps.row(t, b0);
    S* dh = a.dh + b0 * P;

    if (project) {
      for (int64_t r = 0; r < live; ++r) {
        const S* gy = a.grad_y + (n0 + r) * P;
        S* dy = a.dy_total + (n0 - a.row0 + r) * P;
        for_each_vector<S>(P, [&](int64_t j, int64_t n) {
          (V::loadu(gy + j, n) + V::loadu(dh + r * P + j, n)).store(dy + j, n);
        });
      }
      small_gemm<S>(live, a.dy_total + (n0 - a.row0) * P, P, a.whr, 0, P, dh_cell, H,
                    false);
    }

    for (int64_t r = 0; r < live; ++r) {
      const int64_t b = b0 + r, n = n0 + r, p = steps.prev_row(t, b);
      const S* hp = p >= 0 ? a.y + p * P : a.h0 + b * P;
      std::memcpy(a.h_prev + (n - a.row0) * P + part.o0, hp + part.o0,
                  sizeof(S) * (part.o1 - part.o0));
      const S* ws = a.ws + n * cols;
      const S* gy = a.grad_y + n * P;
      S* dhr = dh + r * P;
      S* dg = a.dg + (n - a.row0) * dgc;
      backward_row<S, M>(j0, j1, H, project ? dh_cell + r * H : gy, project ? nullptr : dhr, ws,
                         p >= 0 ? a.ws + p * cols + ws_col::kLstmC * H
                                : (a.c0 ? a.c0 + b * H : nullptr),
                         a.dc ? a.dc + b * H : nullptr, hp, a.y + n * P, dg,
                         project ? a.h_cell + (n - a.row0) * H : nullptr);
    }

    if constexpr (bf16) {  // this part's columns of dg, as the product's bf16 operand
      for (int64_t r = n0 - a.row0; r < n0 - a.row0 + live; ++r)
        for (int64_t c = j0; c < dgc; c += H)
          to_bf16_row(a.dg + r * dgc + c, a.bf16.dg + r * dgc + c, j1 - j0);
    }
    if (a.whh.data == nullptr && !bf16) continue;  // BLAS single step: the caller adds it
    if (s == 0 && !a.dh0_product) continue;        // only dh0's term, not wanted
    part.sync->wait();  // every slice of this step's dg written
    S* dh_out = dh + part.o0;
    // Hidden side of GRU is [d r | d z | d h_n]: columns 0..2H and 3H..4H of dg.
    if constexpr (bf16) {
      const uint16_t* g16 = a.bf16.dg + (n0 - a.row0) * dgc;
      const auto& fn = a.step_product;
      const bool through_fn = fn.fn_bf16 != nullptr && part.o0 == 0 && part.o1 == P;
      // dh (+)= dg columns [col, col + K) @ W_hh rows [w_row0, w_row0 + K)
      auto product = [&](int64_t col, int64_t w_row0, int64_t K, bool accumulate) {
        if (through_fn) {
          fn.fn_bf16(fn.ctx, live, g16 + col, dgc, w_row0, K, dh_out, accumulate);
        } else {
          small_gemm_bf16(live, g16 + col, dgc, whh16, w_row0, K, dh_out, P, accumulate);
        }
      };
      if constexpr (M == Mode::GRU) {
        product(0, 0, 2 * H, /*accumulate=*/true);
        product(3 * H, 2 * H, H, true);
      } else {
        product(0, 0, GH, /*accumulate=*/false);
      }
    } else {
      const S* dg0 = a.dg + (n0 - a.row0) * dgc;
      if constexpr (M == Mode::GRU) {
        small_gemm<S>(live, dg0, dgc, whh, 0, 2 * H, dh_out, P, /*accumulate=*/true);
        small_gemm<S>(live, dg0 + 3 * H, dgc, whh, 2 * H, H, dh_out, P, true);
      } else {
        small_gemm<S>(live, dg0, dgc, whh, 0, GH, dh_out, P, /*accumulate=*/false);
      }
    }
  }
}

}  // namespace

template <typename S>
void backward_loop(const LayerDims& d, const BackwardArgs<S>& a) {
  const Steps steps(d);
  const bool bf16 = a.bf16.whh.data != nullptr || a.step_product.fn_bf16 != nullptr;
  for_each_part<S>(d, bf16, [&](auto mode, auto bf16, const Part& part) {
    backward_part<S, decltype(mode)::value, decltype(bf16)::value>(d, steps, a, part);
  });
}

template void backward_loop<float>(const LayerDims&, const BackwardArgs<float>&);
template void backward_loop<double>(const LayerDims&, const BackwardArgs<double>&);

void single_step_bf16_backward(const SingleStepBf16Grad& a) {
  with_mode(a.mode, [&](auto mode) {
    constexpr Mode M = decltype(mode)::value;
    const int64_t H = a.H, cols = ws_col::columns(M, H), dgc = dgate_columns(M, H);
    at::parallel_for(0, a.B, row_grain(dgc), [&](int64_t r0, int64_t r1) {
      // The row's dy, dh (GRU: in dh0's row, where its direct term dh * z
      // lands), the state it reads (LSTM c0, GRU h0, RNN y) and LSTM's dc,
      // widened to fp32.
      std::vector<float> buf(4 * H);
      float* const dy = buf.data();
      float* const state = dy + H;
      float* const dc = state + H;
      for (int64_t r = r0; r < r1; ++r) {
        float* const dh = M == Mode::GRU ? a.dh0 + r * H : dc + H;
        float* const dg = a.dg + r * dgc;
        from_bf16_row(a.grad_y + r * H, dy, H);
        from_bf16_row(a.grad_h_n + r * H, dh, H);
        from_bf16_row((M == Mode::LSTM ? a.c0 : M == Mode::GRU ? a.h0 : a.y) + r * H, state, H);
        if constexpr (M == Mode::LSTM) from_bf16_row(a.grad_c_n + r * H, dc, H);
        // `state` as c_prev, h_prev and y alike: each mode reads its own.
        backward_row<float, M>(0, H, H, dy, dh, a.ws + r * cols, state, dc, state, state, dg,
                               nullptr);
        if constexpr (M == Mode::LSTM) to_bf16_row(dc, a.dc0 + r * H, H);
        if (M == Mode::GRU && a.dgh16) {  // [d r | d z] and d h_n
          to_bf16_row(dg, a.dgh16 + r * 3 * H, 2 * H);
          to_bf16_row(dg + 3 * H, a.dgh16 + r * 3 * H + 2 * H, H);
        }
        to_bf16_row(dg, a.dg16 + r * dgc, dgc);
      }
    });
  });
}

}  // namespace fastrnn::cpu
