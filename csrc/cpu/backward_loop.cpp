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
#include <cstring>

#include "fastrnn/cpu/recurrence.h"
#include "fastrnn/cpu/small_gemm.h"
#include "fastrnn/cpu/steps.h"
#include "fastrnn/cpu/vec_math.h"
#include "fastrnn/gates.h"

namespace fastrnn::cpu {
namespace {

using at::vec::Vectorized;
namespace ws_col = workspace;

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
      for_each_vector<S>(j0, j1, [&](int64_t j, int64_t cnt) {
        auto ld = [&](const S* q) { return V::loadu(q + j, cnt); };
        auto st = [&](const V& v, S* q) { v.store(q + j, cnt); };
        const V dh_t = project ? ld(dh_cell + r * H) : ld(gy) + ld(dhr);
        if constexpr (M == Mode::LSTM) {
          const S* cp = p >= 0 ? a.ws + p * cols + ws_col::kLstmC * H : a.c0 + b * H;
          S* dc = a.dc + b * H;
          const V o = ld(ws + ws_col::kLstmO * H), c = ld(ws + ws_col::kLstmC * H);
          const auto g = lstm_backward(dh_t, ld(dc), ld(ws + ws_col::kLstmI * H),
                                       ld(ws + ws_col::kLstmF * H), ld(ws + ws_col::kLstmG * H),
                                       o, c, ld(cp));
          st(g.i, dg);
          st(g.f, dg + H);
          st(g.g, dg + 2 * H);
          st(g.o, dg + 3 * H);
          st(g.c_prev, dc);
          if (project) st(lstm_cell_output(o, c), a.h_cell + (n - a.row0) * H);
        } else if constexpr (M == Mode::GRU) {
          const auto g = gru_backward(dh_t, ld(ws + ws_col::kGruR * H), ld(ws + ws_col::kGruZ * H),
                                      ld(ws + ws_col::kGruN * H), ld(ws + ws_col::kGruHn * H),
                                      ld(hp));
          st(g.r, dg);
          st(g.z, dg + H);
          st(g.x_n, dg + 2 * H);
          st(g.h_n, dg + 3 * H);
          st(g.h_prev, dhr);
        } else {
          constexpr RnnAct A = M == Mode::RNN_TANH ? RnnAct::Tanh : RnnAct::Relu;
          st(rnn_backward<A>(dh_t, ld(a.y + n * P)), dg);
        }
      });
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

}  // namespace fastrnn::cpu
