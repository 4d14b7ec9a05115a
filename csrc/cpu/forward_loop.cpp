// Forward time loop (contract: fastrnn/cpu/recurrence.h).
//
// Per step and batch tile: one small GEMM gh = h @ W_hh^T over the tile's live
// rows (and, in the per-step form, gx = bias + x_t @ W_ih^T), then one
// vectorized pass that adds the input projection,
// applies the gate math of fastrnn/gates.h, updates the state in place and
// writes y and the workspace. With a projection, a second small GEMM maps the
// cell outputs through W_hr into y and h. The loop allocates nothing.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
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

// The operand a product reads: its bfloat16 form in a bf16 instantiation.
template <bool bf16, typename Bf16, typename Other>
const auto& pick(const Bf16& bf16_form, const Other& other) {
  if constexpr (bf16) return bf16_form;
  else return other;
}

// One row's gate pass over units [j0, j1) of each gate: the pre-activations
// gx + gh (G*H each; GRU's n gate adds b_hn to gh's, inside r * (.)), the
// state read and written in place (LSTM: c, (H); GRU: h, (P = H)), y's row
// and, unless null, the workspace row (workspace.h) written. An LSTM with a
// projection writes o * tanh(c) to h_cell instead of h and y (W_hr follows).
template <typename S, Mode M>
inline FASTRNN_VECTOR_INLINE void forward_row(int64_t j0, int64_t j1, int64_t H, const S* gx, const S* g,
                        const S* b_hn, S* c, S* h, S* y, S* ws, S* h_cell) {
  using V = Vectorized<S>;
  for_each_vector<S>(j0, j1, [&](int64_t j, int64_t n) FASTRNN_VECTOR_INLINE {
    auto ld = [&](const S* p) { return V::loadu(p + j, n); };
    auto st = [&](const V& v, S* p) { v.store(p + j, n); };
    if constexpr (M == Mode::LSTM) {
      const auto o = lstm_forward(ld(gx) + ld(g), ld(gx + H) + ld(g + H),
                                  ld(gx + 2 * H) + ld(g + 2 * H),
                                  ld(gx + 3 * H) + ld(g + 3 * H), ld(c));
      st(o.c, c);
      if (ws) {
        st(o.i, ws + ws_col::kLstmI * H);
        st(o.f, ws + ws_col::kLstmF * H);
        st(o.g, ws + ws_col::kLstmG * H);
        st(o.o, ws + ws_col::kLstmO * H);
        st(o.c, ws + ws_col::kLstmC * H);
      }
      if (h_cell) {
        st(o.h, h_cell);
      } else {
        st(o.h, y);
        st(o.h, h);
      }
    } else if constexpr (M == Mode::GRU) {
      V hn = ld(g + 2 * H);
      if (b_hn) hn = hn + ld(b_hn);
      const auto o = gru_forward(ld(gx), ld(gx + H), ld(gx + 2 * H), ld(g), ld(g + H), hn, ld(h));
      st(o.h, h);
      st(o.h, y);
      if (ws) {
        st(o.r, ws + ws_col::kGruR * H);
        st(o.z, ws + ws_col::kGruZ * H);
        st(o.n, ws + ws_col::kGruN * H);
        st(hn, ws + ws_col::kGruHn * H);
      }
    } else {
      constexpr RnnAct A = M == Mode::RNN_TANH ? RnnAct::Tanh : RnnAct::Relu;
      const V out = rnn_forward<A>(ld(gx) + ld(g));
      st(out, h);
      st(out, y);
    }
  });
}

template <typename S, Mode M, bool bf16>
void forward_part(const LayerDims& d, const Steps& steps, const ForwardArgs<S>& a,
                  const Part& part) {
  const int64_t H = d.H, P = d.P, GH = gates(M) * H, cols = ws_col::columns(M, H);
  const int64_t b0 = part.b0, b1 = part.b1, j0 = part.j0, j1 = part.j1;
  const bool project = a.whr_t.data != nullptr;
  // This part's rows of its copy of the per-step buffers (ForwardArgs::gh).
  const int64_t row = part.slot * d.B + b0;
  S* const gh = a.gh ? a.gh + row * GH : nullptr;
  S* const gx_step = a.gx_step ? a.gx_step + row * GH : nullptr;
  S* const h_cell = project ? a.h_cell + row * H : nullptr;
  // fn(operand's columns, first column) for the columns of every gate this
  // part computes: all of them, or units [j0, j1) of each gate.
  auto for_part_columns = [&](const auto& w, auto&& fn) {
    if (j1 - j0 == H) return fn(w, int64_t{0});
    for (int64_t g = 0; g < gates(M); ++g)
      fn(packed_columns(w, g * H + j0, j1 - j0), g * H + j0);
  };

  for (int64_t s = 0; s < d.T; ++s) {
    const int64_t t = steps.step(s);
    const int64_t live = steps.live(t, b0, b1);
    if (live <= 0) continue;
    const int64_t n0 = steps.row(t, b0);
    S* h = a.h + b0 * P;
    // h_{t-1} of the live rows is y of the previous step for the rows that
    // were live then, and h0 for rows that join now (reverse only). Reading y,
    // not the state buffer, keeps the state writes below private to a part.
    const int64_t carried =
        s == 0 ? 0 : std::clamp<int64_t>(steps.live(steps.step(s - 1), b0, b1), 0, live);
    const S* y_prev = s == 0 ? nullptr : a.y + steps.row(steps.step(s - 1), b0) * P;
    part.sync->wait();  // every slice of h_{t-1} written
    const bool given = s == 0 && a.gh0 != nullptr;  // first step's h0 @ W_hh^T precomputed
    const S* gh_rows = given ? a.gh0 + b0 * GH : gh;
    // out[0:live] = h_{t-1} @ w, rows carried from y_prev and rows joining from h0.
    auto recurrent = [&](const auto& w, S* out) {
      if constexpr (bf16) {  // the same rows of the bf16 copy of y
        const uint16_t* y16_prev = s == 0 ? nullptr : a.bf16.y + (y_prev - a.y);
        small_gemm_bf16(carried, y16_prev, P, w, 0, P, out, GH, /*accumulate=*/false);
        small_gemm_bf16(live - carried, a.bf16.h0 + (b0 + carried) * P, P, w, 0, P,
                        out + carried * GH, GH, false);
      } else {
        small_gemm<S>(carried, y_prev, P, w, 0, P, out, GH, /*accumulate=*/false);
        small_gemm<S>(live - carried, a.h0 + (b0 + carried) * P, P, w, 0, P,
                      out + carried * GH, GH, false);
      }
    };
    const auto& product = a.step_product;
    // The step product through product.fn (fn_bf16): rows carried from prev
    // (the previous step's y) and rows joining from h0_rows.
    auto through = [&](auto fn, const auto* prev, const auto* h0_rows) {
      const bool whole = j1 - j0 == H;  // one product, or one per gate's slice
      for (int64_t g = 0; g < (whole ? 1 : gates(M)); ++g) {
        const int64_t c0 = whole ? 0 : g * H + j0, cols = whole ? GH : j1 - j0;
        fn(product.ctx, carried, prev, c0, cols, gh + c0);
        fn(product.ctx, live - carried, h0_rows, c0, cols, gh + carried * GH + c0);
      }
    };
    const bool through_fn = bf16 ? product.fn_bf16 != nullptr : product.fn != nullptr;
    if (!given && through_fn) {
      if constexpr (bf16)
        through(product.fn_bf16, s == 0 ? nullptr : a.bf16.y + (y_prev - a.y),
                a.bf16.h0 + (b0 + carried) * P);
      else
        through(product.fn, y_prev, a.h0 + (b0 + carried) * P);
    } else if (!given) {
      for_part_columns(pick<bf16>(a.bf16.whh_t, a.whh_t),
                       [&](const auto& w, int64_t c0) { recurrent(w, gh + c0); });
    }
    const S* gx_rows = a.gx ? a.gx + n0 * GH : gx_step;
    if (!a.gx) {  // gx_step[0:live] = bias + x_t @ W_ih^T
      auto project = [&](const auto& w, int64_t c0) {
        if (a.bias)
          for (int64_t r = 0; r < live; ++r)
            std::memcpy(gx_step + r * GH + c0, a.bias + c0, sizeof(S) * w.n);
        if constexpr (bf16)
          small_gemm_bf16(live, a.bf16.x + n0 * w.K, w.K, w, 0, w.K, gx_step + c0, GH,
                          /*accumulate=*/a.bias != nullptr);
        else
          small_gemm<S>(live, a.x + n0 * w.K, w.K, w, 0, w.K, gx_step + c0, GH,
                        /*accumulate=*/a.bias != nullptr);
      };
      for_part_columns(pick<bf16>(a.bf16.wih_t, a.wih_t), project);
    }

    for (int64_t r = 0; r < live; ++r) {
      forward_row<S, M>(j0, j1, H, gx_rows + r * GH, gh_rows + r * GH, a.b_hn,
                        a.c ? a.c + (b0 + r) * H : nullptr, h + r * P, a.y + (n0 + r) * P,
                        a.ws ? a.ws + (n0 + r) * cols : nullptr,
                        project ? h_cell + r * H : nullptr);
    }

    if constexpr (bf16) {  // this part's columns of y, as the next step's bf16 operand
      for (int64_t r = 0; r < live; ++r)
        to_bf16_row(a.y + (n0 + r) * P + j0, a.bf16.y + (n0 + r) * P + j0, j1 - j0);
    }

    if (project) {
      S* y = a.y + n0 * P;
      small_gemm<S>(live, h_cell, H, a.whr_t, 0, H, y, P, /*accumulate=*/false);
      std::memcpy(h, y, sizeof(S) * live * P);
    }
  }
}

}  // namespace

template <typename S>
void forward_loop(const LayerDims& d, const ForwardArgs<S>& a) {
  const Steps steps(d);
  const bool bf16 = a.bf16.whh_t.data != nullptr || a.step_product.fn_bf16 != nullptr;
  for_each_part<S>(d, bf16, [&](auto mode, auto bf16_products, const Part& part) {
    forward_part<S, decltype(mode)::value, decltype(bf16_products)::value>(d, steps, a, part);
  });
}

template void forward_loop<float>(const LayerDims&, const ForwardArgs<float>&);
template void forward_loop<double>(const LayerDims&, const ForwardArgs<double>&);

namespace {

// Row r of p (row length n) widened to fp32 into dst, or p's own row when it
// is fp32 already.
const float* fp32_row(const uint16_t* p, int64_t r, int64_t n, float* dst) {
  from_bf16_row(p + r * n, dst, n);
  return dst;
}
const float* fp32_row(const float* p, int64_t r, int64_t n, float*) { return p + r * n; }

}  // namespace

template <typename G>
void single_step_bf16(const SingleStepBf16<G>& a) {
  with_mode(a.mode, [&](auto mode) {
    constexpr Mode M = decltype(mode)::value;
    const int64_t H = a.H, GH = gates(M) * H, cols = ws_col::columns(M, H);
    at::parallel_for(0, a.B, row_grain(GH), [&](int64_t r0, int64_t r1) {
      // The row's products widened to fp32 (bf16 products only), its state
      // (LSTM: c; GRU: h_{t-1}, then h) and h.
      constexpr int64_t widened = std::is_same_v<G, float> ? 0 : 2;
      std::vector<float> buf(widened * GH + 2 * H);
      float* const gx32 = buf.data();
      float* const gh32 = gx32 + (widened ? GH : 0);
      float* const state = buf.data() + widened * GH;
      float* const h = M == Mode::GRU ? state : state + H;
      for (int64_t r = r0; r < r1; ++r) {
        if constexpr (M == Mode::LSTM) from_bf16_row(a.c0 + r * H, state, H);
        if constexpr (M == Mode::GRU) from_bf16_row(a.h0 + r * H, h, H);
        forward_row<float, M>(0, H, H, fp32_row(a.gx, r, GH, gx32), fp32_row(a.gh, r, GH, gh32),
                              nullptr, M == Mode::LSTM ? state : nullptr, h, h,
                              a.ws ? a.ws + r * cols : nullptr, nullptr);
        if constexpr (M == Mode::LSTM) to_bf16_row(state, a.c_n + r * H, H);
        to_bf16_row(h, a.y + r * H, H);
        to_bf16_row(h, a.h_n + r * H, H);
      }
    });
  });
}

template void single_step_bf16<uint16_t>(const SingleStepBf16<uint16_t>&);
template void single_step_bf16<float>(const SingleStepBf16<float>&);

}  // namespace fastrnn::cpu
