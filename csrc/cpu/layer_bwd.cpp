// CPU kernel of fastrnn::layer_bwd (schema: csrc/ops.cpp), and of
// bilayer_bwd as its two directions.
//
// Thin torch layer around the framework-free backward loop (recurrence.h):
// validates every argument before touching memory (layer_args.h), widens
// bfloat16 where the products need it, and runs the large products after each
// range of the loop's steps (step_ranges): dx = dG @ W_ih, dW_ih = dG^T X,
// dW_hh = dG^T H_prev, dW_hr = dY^T H_cell, each on the packed blocks or BLAS
// as measured (product_choice.h); a single step's (a cell's) on ATen's matmul.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <tuple>
#include <vector>

#include "fastrnn/bilayer.h"
#include "fastrnn/cpu/block_cache.h"
#include "fastrnn/cpu/gemm.h"
#include "fastrnn/cpu/gemv_bf16.h"
#include "fastrnn/cpu/layer_args.h"
#include "fastrnn/cpu/product_choice.h"
#include "fastrnn/cpu/recurrence.h"
#include "fastrnn/cpu/step_products.h"
#include "fastrnn/kernels.h"
#include "fastrnn/workspace.h"

namespace fastrnn::cpu {
namespace {

using at::Tensor;

// A range of the backward loop's steps (BackwardArgs::s_begin) and its packed
// rows [row0, row1).
struct StepRange {
  int64_t s_begin, s_end, row0, row1;
};

// The backward loop's ranges, from the last steps processed back to the first.
// Each range's dG goes into the products right after the loop wrote it: about
// 2 MiB of it (dg_row_bytes a row), which stays in cache, where all of dG at
// T = 256, B = 16, H = 128 (8 MiB, with a 10 MiB workspace beside it) was
// read back from memory by three products. Each range adds its share to dW_ih
// and dW_hh, a pass over them, so a range has at least 2 (I + P) rows: at
// B = 64, H = 1024 one range holds T = 64. FASTRNN_CPU_RANGE_ROWS, when set,
// replaces that row count (tests use it to cut many ranges at small sizes).
std::vector<StepRange> step_ranges(const Layer& L, const Tensor& batch_sizes, bool reverse,
                                   int64_t dg_row_bytes) {
  const int64_t* bs = batch_sizes.data_ptr<int64_t>();
  std::vector<int64_t> offset(L.T + 1, 0);  // packed row of each step's first row
  for (int64_t t = 0; t < L.T; ++t) offset[t + 1] = offset[t] + bs[t];
  const char* forced = std::getenv("FASTRNN_CPU_RANGE_ROWS");
  const int64_t target =
      forced ? std::max<int64_t>(1, std::atoll(forced))
             : std::max<int64_t>(2 * (L.I + L.P), (int64_t{2} << 20) / dg_row_bytes);
  std::vector<StepRange> ranges;
  for (int64_t s_end = L.T; s_end > 0;) {
    int64_t s = s_end, rows = 0;
    while (s > 0 && rows < target) {
      --s;
      rows += bs[reverse ? L.T - 1 - s : s];
    }
    // Processing step s is time step s, or T - 1 - s in reverse: the range's
    // time steps are contiguous either way, and so are their packed rows.
    ranges.push_back(reverse ? StepRange{s, s_end, offset[L.T - s_end], offset[L.T - s]}
                             : StepRange{s, s_end, offset[s], offset[s_end]});
    s_end = s;
  }
  return ranges;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> layer_bwd(
    const std::string& mode, const Tensor& grad_y, const Tensor& grad_h_n,
    const Tensor& grad_c_n, const Tensor& x, const Tensor& batch_sizes, const Tensor& h0,
    const OptTensor& c0, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
    const OptTensor& b_hh, const OptTensor& w_hr, const Tensor& y, const Tensor& workspace,
    bool reverse, sig::OutputMask output_mask) {
  const Layer L = check_layer(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr);
  const auto ct = compute_type(x);
  const int64_t GH = L.G * L.H, H = L.H;
  // The gradients asked for: the products of the others are skipped (dh0's
  // W_hh term: a single step's product, and the loop's at its first step for
  // the rows live there; rows that join later in processing order, in the
  // reverse direction, still compute theirs inside the loop).
  const auto [want_dx, want_state, want_params] = output_mask;
  check_tensor(grad_y, "grad_y", x);
  check_shape(grad_y, "grad_y", {L.N, L.P});
  check_tensor(grad_h_n, "grad_h_n", x);
  check_shape(grad_h_n, "grad_h_n", {L.B, L.P});
  check_tensor(y, "y", x);
  check_shape(y, "y", {L.N, L.P});
  if (L.mode == Mode::LSTM) {
    check_tensor(grad_c_n, "grad_c_n", x);
    check_shape(grad_c_n, "grad_c_n", {L.B, L.H});
  } else {
    TORCH_CHECK(grad_c_n.numel() == 0, "fastrnn: grad_c_n must be empty for ", mode);
  }
  TORCH_CHECK(workspace.device().is_cpu() && workspace.scalar_type() == ct &&
                  workspace.is_contiguous(),
              "fastrnn: workspace must be a contiguous ", ct, " CPU tensor");
  TORCH_CHECK(workspace.sizes() == at::IntArrayRef({L.N, workspace::columns(L.mode, H)}),
              "fastrnn: workspace has shape ", workspace.sizes(),
              "; run layer_fwd with save=True before layer_bwd");

  // dh0's W_hh term and the products by BLAS for a single step with weights
  // over 64K elements: at H = 256, B = 1 an LSTM's backward takes 118 us
  // against 180 packed; at H = 64, B = 1..64 packing is 15-35 % faster.
  const bool single = blas_single_step(L, int64_t{1} << 16);
  // bfloat16 operands (bf16_operands): the large products below, and the
  // loop's dh = dG @ W_hh when H is even (read in pairs); x and W_ih (and then
  // W_hh) need no fp32 copy.
  const bool bf16_products = bf16_operands(L, x);
  const bool bf16_loop = bf16_products && H % 2 == 0;
  const auto [single_bf16, single_gemv] = single_bf16_products(L, x, single);
  // Such a step without projection runs its gate backward on the bfloat16
  // operands as they are (single_step_bf16_backward) instead of the loop.
  const bool bf16_step = (single_bf16 || single_gemv) && !L.project;
  const bool lstm = L.mode == Mode::LSTM;
  auto widened = [&](const Tensor& t) { return bf16_step ? Tensor() : in_compute(t, ct); };
  const Tensor xc = bf16_products || single_bf16 || !want_params ? Tensor() : in_compute(x, ct);
  const Tensor wih =
      bf16_products || single_bf16 || single_gemv || !want_dx ? Tensor() : in_compute(w_ih, ct);
  const Tensor whh = bf16_loop || single_bf16 || single_gemv ? Tensor() : in_compute(w_hh, ct);
  const Tensor gy = widened(grad_y), yc = widened(y), h0c = widened(h0);
  const Tensor c0c = lstm ? widened(*c0) : Tensor();
  const auto opts = x.options().dtype(ct);
  const int64_t dgc = dgate_columns(L.mode, H);
  // dh and dc: in, grad_h_n and grad_c_n; out, dh0 and dc0 (bfloat16 steps:
  // GRU's direct term of dh0 in fp32, dc0 in bfloat16).
  Tensor dh = !bf16_step ? state_copy(grad_h_n, ct)
              : L.mode == Mode::GRU ? at::empty({L.B, H}, opts) : Tensor();
  Tensor dc = !lstm ? Tensor() : bf16_step ? at::empty({L.B, H}, x.options())
                                           : state_copy(grad_c_n, ct);

  // With our products, the loop runs in ranges of steps, and each range's dG
  // goes into the products while it is still in cache; dG, h_prev (and dY,
  // h_cell) then exist for one range only (step_ranges). A single step takes
  // all steps as one range. The bf16 products read all of dG after the loop:
  // its ranges write into buffers of every row (`whole`), and only dG's column
  // sums run per range, on rows still in cache (read back after the whole
  // loop, 8 MiB of dG at B = 16, H = 128, T = 256, they cost a bfloat16 LSTM's
  // backward as much as half its step products).
  const std::vector<StepRange> ranges =
      single ? std::vector<StepRange>{{0, L.T, 0, L.N}}
             : step_ranges(L, batch_sizes, reverse, dgc * at::elementSize(ct));
  const bool whole = single || bf16_products;
  int64_t rows = whole ? L.N : 0;
  for (const StepRange& r : ranges) rows = std::max(rows, r.row1 - r.row0);
  Tensor dg = cached_empty({rows, dgc}, opts);
  Tensor h_prev = bf16_step ? Tensor() : cached_empty({rows, L.P}, opts);
  Tensor dy_total = L.project ? at::empty({rows, L.P}, opts) : Tensor();
  Tensor h_cell = L.project ? at::empty({rows, H}, opts) : Tensor();
  const LayerDims dims = dims_of(L, batch_sizes, reverse);
  Tensor dh_cell =
      L.project ? at::empty({L.B * scratch_copies(dims, ct), H}, opts) : Tensor();
  Tensor dg16 = bf16_loop || bf16_step ? cached_empty(dg.sizes(), x.options()) : Tensor();
  const Tensor dgh16 = bf16_step && single_bf16 && L.mode == Mode::GRU
                            ? at::empty({L.B, GH}, x.options())
                            : Tensor();

  // GRU's hidden side differs from its input side in the n gate:
  // dg = [d r | d z | d x_n | d h_n], so its W_hh side is columns 0..2H and
  // 3H..4H of dg, two column ranges of the same products.
  struct Range {
    int64_t dg_col, w_row, rows;
  };
  const std::vector<Range> hidden_side =
      L.mode == Mode::GRU ? std::vector<Range>{{0, 0, 2 * H}, {3 * H, 2 * H, H}}
                          : std::vector<Range>{{0, 0, GH}};
  // dW_hh (GH, P) by ATen's matmul: each range's rows = g[:, range]^T @ hp,
  // written in place (GRU's two ranges: no cat copying a 3H x P gradient,
  // 12 MiB a step for a GRUCell at H = 1024).
  auto hidden_weight_grad = [&](const Tensor& g, const std::vector<Range>& ranges,
                                const Tensor& hp) {
    if (ranges.size() == 1) return at::mm(g.narrow(1, ranges[0].dg_col, ranges[0].rows).t(), hp);
    Tensor out = at::empty({GH, hp.size(1)}, hp.options());
    for (const Range& r : ranges) {
      Tensor rows = out.narrow(0, r.w_row, r.rows);
      at::mm_out(rows, g.narrow(1, r.dg_col, r.rows).t(), hp);
    }
    return out;
  };
  Tensor dx, dw_ih, dw_hh;
  if (!bf16_products && !single) {
    if (want_dx) dx = fresh({L.N, L.I}, opts);
    if (want_params) dw_ih = at::empty({GH, L.I}, opts), dw_hh = at::empty({GH, L.P}, opts);
  }
  Tensor dw_hr = L.project && want_params ? at::empty({L.P, H}, opts) : Tensor();
  const bool bias_grads = L.bias && want_params;
  std::vector<double> bias_sums(bias_grads ? dgc : 0, 0.0);  // column sums of dG

  if (bf16_step) {
    single_step_bf16_backward({L.mode, L.B, H, bits(grad_y), bits(grad_h_n),
                               lstm ? bits(grad_c_n) : nullptr, bits(y), bits(h0),
                               lstm ? bits(*c0) : nullptr, workspace.data_ptr<float>(),
                               dg.data_ptr<float>(), bits(dg16),
                               dgh16.defined() ? bits(dgh16) : nullptr, lstm ? bits(dc) : nullptr,
                               L.mode == Mode::GRU ? dh.data_ptr<float>() : nullptr});
    if (bias_grads) add_column_sums<float>(L.B, dgc, dg.data_ptr<float>(), dgc, bias_sums.data());
  } else AT_DISPATCH_FLOATING_TYPES(ct, "fastrnn_layer_bwd", [&] {
    using S = scalar_t;
    Tensor whh_storage, whr_storage, whh16_storage, wih_storage;
    auto ptr = [](const Tensor& t) { return t.defined() ? t.data_ptr<S>() : nullptr; };
    typename BackwardArgs<S>::Bf16Operands bf16{};
    // The bf16 step product on ATen's bfloat16 matmul where measured faster
    // (batch tiles: every part computes every column); W_hh is then not packed.
    const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
    const bool step_aten =
        bf16_loop && scratch_copies(dims, ct) == 1 &&
        prefer_aten_bf16_backward_step(L.B, (L.B + threads - 1) / threads, L.P, GH, L.T);
    if (bf16_loop && !step_aten) {
      whh16_storage = at::empty({packed_size_bf16(GH, L.P)}, w_hh.options());
      pack_bf16(bits(w_hh), GH, L.P, bits(whh16_storage));
    }
    if (bf16_loop) bf16 = {PackedBf16{step_aten ? nullptr : bits(whh16_storage), GH, L.P}, bits(dg16)};
    BackwardArgs<S> args{
        ptr(gy), ptr(yc), ptr(h0c), ptr(c0c), ptr(workspace),
        single || bf16_loop ? Packed<S>{nullptr, GH, L.P}
                            : packed<S>(whh, GH, L.P, /*transpose=*/false, whh_storage),
        L.project ? packed<S>(in_compute(*w_hr, ct), L.P, H, false, whr_storage)
                  : Packed<S>{nullptr, 0, 0},
        ptr(dh), ptr(dc), ptr(dg), ptr(h_prev), ptr(dy_total), ptr(h_cell), ptr(dh_cell),
        bf16, 0, 0, 0, {}};
    const StepWeights<S> step_weights{
        nullptr, step_aten ? bits(w_hh) : nullptr, GH, L.P,
        step_aten ? ukernel_packed(w_hh, GH, L.P, /*transposed=*/false, whh16_storage)
                  : UkernelBf16{}};
    if (step_aten) args.step_product = {&aten_bf16_backward_step<S>, &step_weights};
    args.dh0_product = want_state;
    // Each product on the blocks or on BLAS, as measured for this machine
    // (product_choice.h), for the rows of the largest range.
    int64_t range_rows = 0;
    for (const StepRange& r : ranges) range_rows = std::max(range_rows, r.row1 - r.row0);
    auto product = [&](Product p, bool tokens_in_m, int64_t M, int64_t n, int64_t K, const S* A,
                       int64_t lda, const S* B, S* C, int64_t ldc, bool acc) {
      const bool blas = prefer_blas<S>(p, tokens_in_m ? range_rows : M, n,
                                       tokens_in_m ? K : range_rows, !tokens_in_m, false,
                                       tokens_in_m);
      gemm_on<S>(blas, M, n, K, A, lda, !tokens_in_m, B, false, C, ldc, acc);
    };
    const bool products = !single && !bf16_products;
    // dx = dG @ W_ih: on the blocks, W_ih packed once for every range.
    const bool dx_blas =
        products && want_dx &&
        prefer_blas<S>(Product::InputGrad, range_rows, L.I, GH, false, false, /*tokens_in_m=*/true);
    const Packed<S> wih_p = !products || !want_dx || dx_blas
                                ? Packed<S>{nullptr, GH, L.I}
                                : packed<S>(wih, GH, L.I, /*transpose=*/false, wih_storage);
    for (size_t i = 0; i < ranges.size(); ++i) {  // from the last steps processed back
      const StepRange& r = ranges[i];
      args.s_begin = r.s_begin, args.s_end = r.s_end, args.row0 = whole ? 0 : r.row0;
      backward_loop<S>(dims, args);
      const int64_t n = r.row1 - r.row0;
      const S* g = dg.data_ptr<S>() + (whole ? r.row0 * dgc : 0);
      if (bias_grads) add_column_sums<S>(n, dgc, g, dgc, bias_sums.data());
      if (whole) continue;  // every row in one buffer: products below
      // This range's share of the input and weight gradients (gemm.h):
      // dx rows = dG @ W_ih; dW_ih += dG^T X; dW_hh += dG_h^T H_prev;
      // dW_hr += dY^T H_cell.
      const bool acc = i > 0;
      if (want_dx) {
        S* dx_rows = dx.data_ptr<S>() + r.row0 * L.I;
        if (dx_blas) {
          blas_gemm<S>(n, L.I, GH, g, dgc, false, wih.data_ptr<S>(), false, dx_rows, L.I, false);
        } else {
          gemm<S>(n, g, dgc, false, wih_p, dx_rows, L.I, false);
        }
      }
      if (!want_params) continue;
      product(Product::InputWeightGrad, false, GH, L.I, n, g, dgc,
              xc.data_ptr<S>() + r.row0 * L.I, dw_ih.data_ptr<S>(), L.I, acc);
      for (const Range& hr : hidden_side)
        product(Product::HiddenWeightGrad, false, hr.rows, L.P, n, g + hr.dg_col, dgc,
                h_prev.data_ptr<S>(), dw_hh.data_ptr<S>() + hr.w_row * L.P, L.P, acc);
      if (L.project)
        product(Product::ProjWeightGrad, false, L.P, H, n, dy_total.data_ptr<S>(), L.P,
                h_cell.data_ptr<S>(), dw_hr.data_ptr<S>(), H, acc);
    }
  });

  if (single) {
    // One step (a cell): products of B rows by ATen's matmul, without our
    // packing; a bfloat16 step's in bfloat16 (dG and h_prev rounded, the
    // weights as they are), as torch.nn's cells run them: widening both
    // weights every call ran an LSTMCell's training step at B = 8, H = 1024
    // 0.45x of torch.nn (Emerald Rapids, 1 thread).
    const auto dt = single_bf16 ? at::kBFloat16 : ct;
    const Tensor g = bf16_step && single_bf16 ? dg16 : dg.to(dt), g_x = g.narrow(1, 0, GH);
    const Tensor hp = want_params ? h0.to(dt) : Tensor();  // a single step's h_prev
    const Tensor& wh = single_bf16 ? w_hh : whh;
    if (want_dx && single_gemv) {
      dx = at::empty({L.B, L.I}, opts);
      rows_times_w_bf16(L.B, dg.data_ptr<float>(), dgc, bits(w_ih), GH, L.I,
                        dx.data_ptr<float>(), L.I, false);
    } else if (want_dx) {
      dx = at::mm(g_x, single_bf16 ? w_ih : wih);
    }
    if (want_params) dw_ih = at::mm(g_x.t(), single_bf16 ? x : xc);
    // W_hh's side of dG: GRU's [d r | d z | d h_n] as one operand where the
    // gate backward wrote it so (dgh16: one product each, and no cat of a
    // 3H x H gradient), else column ranges of g.
    const bool one_hidden = dgh16.defined();
    const std::vector<Range> h_ranges =
        one_hidden ? std::vector<Range>{{0, 0, GH}} : hidden_side;
    const Tensor& g_h = one_hidden ? dgh16 : g;
    if (want_params) dw_hh = hidden_weight_grad(g_h, h_ranges, hp);
    // dh0's W_hh term; GRU's gate backward already wrote its direct term dh * z.
    const bool gru = L.mode == Mode::GRU;
    if (want_state && single_gemv) {
      if (!dh.defined()) dh = at::empty({L.B, L.P}, opts);
      for (const Range& r : hidden_side)
        rows_times_w_bf16(L.B, dg.data_ptr<float>() + r.dg_col, dgc, bits(w_hh) + r.w_row * L.P,
                          r.rows, L.P, dh.data_ptr<float>(), L.P, /*accumulate=*/gru);
    } else if (want_state) {
      for (const Range& r : h_ranges) {  // dh is else unused after the step
        const Tensor term = at::mm(g_h.narrow(1, r.dg_col, r.rows), wh.narrow(0, r.w_row, r.rows));
        dh = gru ? dh.add_(term) : term;
      }
    }
    if (L.project && want_params) at::mm_out(dw_hr, dy_total.t(), h_cell);
  } else if (bf16_products) {
    // A bfloat16 layer on a CPU with bf16 dot products: dG rounded to bfloat16
    // (x, y, h_prev and the weights are bfloat16 values already), products by
    // ATen's bfloat16 matmul (oneDNN on AVX512-BF16: ~200 GFLOP/s here
    // against 80-110 for fp32), accumulated in fp32 and rounded once to the
    // bfloat16 gradients returned anyway; torch.nn's bf16 kernels do the same.
    if (!bf16_loop) dg16 = cached_empty(dg.sizes(), x.options()).copy_(dg);  // else the loop wrote it
    const Tensor dg16_x = dg16.narrow(1, 0, GH);
    if (want_dx) dx = at::mm(dg16_x, w_ih);
    if (want_params) {
      const Tensor hp16 = cached_empty(h_prev.sizes(), x.options()).copy_(h_prev);
      dw_ih = at::mm(dg16_x.t(), x);
      dw_hh = hidden_weight_grad(dg16, hidden_side, hp16);
    }
  }

  // Bias gradients from the column sums of dG: the input side's columns 0..GH
  // and the hidden side's ranges (for GRU not the same columns).
  Tensor db_ih, db_hh;
  if (bias_grads) {
    db_ih = at::empty({GH}, opts), db_hh = at::empty({GH}, opts);
    AT_DISPATCH_FLOATING_TYPES(ct, "fastrnn_layer_bwd_bias", [&] {
      std::copy_n(bias_sums.data(), GH, db_ih.data_ptr<scalar_t>());
      for (const Range& r : hidden_side)
        std::copy_n(bias_sums.data() + r.dg_col, r.rows, db_hh.data_ptr<scalar_t>() + r.w_row);
    });
  }

  // An output not asked for, or of an absent input, is empty; each its own
  // tensor, as outputs must not alias.
  const auto out = x.scalar_type();
  auto result = [&](const Tensor& t) {
    return t.defined() ? t.to(out) : at::empty({0}, x.options());
  };
  return {result(dx),    result(want_state ? dh : Tensor()), result(want_state ? dc : Tensor()),
          result(dw_ih), result(dw_hh), result(db_ih), result(db_hh), result(dw_hr)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  impl<LayerBwd, &layer_bwd>(m);
  impl<BilayerBwd, &bilayer_bwd<&layer_bwd, &for_both_directions>>(m);
}

}  // namespace fastrnn::cpu
