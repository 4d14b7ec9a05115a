// CPU kernel of fastrnn::layer_fwd (schema: csrc/ops.cpp), and of
// bilayer_fwd as its two directions.
//
// Thin torch layer around the framework-free forward loop (recurrence.h):
// validates every argument before touching memory (layer_args.h), converts
// bfloat16 to fp32 where the products need it (all state math runs in fp32;
// weights are converted once per call), plans where the products run
// (the packed blocks, BLAS, W_hh as stored, ATen's bfloat16 kernels; by
// measuring: product_choice.h), packs the weights, and runs the input
// projection of all N rows before the loop where it is hoisted. An inference
// LSTM may run on ATen's own LSTM instead, where that is faster.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "fastrnn/bilayer.h"
#include "fastrnn/cpu/block_cache.h"
#include "fastrnn/cpu/gemv_bf16.h"
#include "fastrnn/cpu/layer_args.h"
#include "fastrnn/cpu/product_choice.h"
#include "fastrnn/cpu/recurrence.h"
#include "fastrnn/cpu/steps.h"
#include "fastrnn/cpu/step_products.h"
#include "fastrnn/kernels.h"
#include "fastrnn/workspace.h"

namespace fastrnn::cpu {
namespace {

using at::Tensor;

// Where the fp32/fp64 forward's products run: the step product h_{t-1} @
// W_hh^T on the packed blocks or BLAS (batch tiles only; hidden slices cut the
// packed blocks by columns, or, float32 on AVX-512, read each gate's rows of
// W_hh as stored: rows_step), and the input projection per step inside the
// loop (on the blocks: steps.h, project_per_step) or hoisted before it as one
// product over every token (blocks or BLAS, product_choice.h). One choice
// among the three plans, from measured times (product_choice.h):
//   blocks, per step:  T (step(P) + step(I)) + packing W_hh and W_ih
//   blocks, hoisted:   T step(P) + packing W_hh + hoisted / 0.85
//   BLAS, hoisted:     T blas_step(P) + hoisted / 0.85
// where hoisted is the faster of blocks and BLAS for the whole projection,
// and / 0.85 its memory round trip, which the 512-token sample keeps in cache
// (at B = 64, H = 256, T = 64 a 16 MiB round trip, ~12% of the forward).
// Choosing the steps alone had BLAS win a tie at B = 64, H = 64 and so hoist
// the projection, 0.74x of torch.nn where per step ran 0.90x. Where BLAS and
// the best blocks plan come within 15% of each other, the products' times do
// not decide (at B = 64, H = 1024 they tied MKL with the blocks, and the loop
// on MKL then ran 6-10% slower; at B = 1, H = 1024 the blocks ran a GRU
// 0.84x of torch.nn, BLAS 1.06x): `close` says so, and own_layer_fwd races
// the two plans on the layer's first steps (raced_plan). Hidden slices
// weigh, by slice_step_times, the blocks' plans against
//   stored W_hh, hoisted: T rows_step(P) + hoisted / 0.85
// which packs nothing: a GRU at B = 1, H = 1024, T = 16 on 2 threads packed
// its 12 MiB W_hh in ~1 ms of a 6 ms call. (Batch tiles have BLAS for a
// plan without packing; weighed there too, the stored W_hh ran B = 1,
// H = 256, T = 16 13-21% faster and B = 1, H = 64 9-23% slower on 1 thread:
// not weighed.) FASTRNN_CPU_PRODUCTS pins: own runs the blocks per step
// where allowed, blas runs BLAS hoisted (slices: the blocks), stored the
// stored W_hh. bfloat16 layers plan with plan_bf16_forward.
struct ForwardPlan {
  bool step_blas, step_aten, per_step, close;
  double packing;  // seconds the blocks plan spends packing weights per call (close plans)
  double other_packing = 0.0;  // the same for its alternative (bfloat16: the ukernel's W_hh^T)
  bool step_rows = false;      // the step products on W_hh as stored (rows_step)
};

template <typename S>
ForwardPlan plan_forward(const Layer& L, int64_t grain, bool tiles, bool may_per_step) {
  // float32 may read W_hh as stored instead of packing it (rows_step): by
  // measurement (slice_step_times) in hidden slices, which have no BLAS plan
  // (BLAS cannot cut each gate's units); in batch tiles only where pinned.
  constexpr bool stored = std::is_same_v<S, float> && kBf16RowsKernels;
  const bool slice_rows = !tiles && stored;
  bool blas;
  if (products_pinned(&blas)) {
    ForwardPlan pinned{tiles && blas, false, may_per_step && !blas, false, 0.0};
    if (stored && stored_pinned()) pinned.per_step = false, pinned.step_rows = true;
    return pinned;
  }
  const int64_t GH = L.G * L.H;
  const double T = static_cast<double>(L.T);
  const Times step = slice_rows ? slice_step_times(L.B, GH, L.P)
                                : step_times<S>(L.B, grain, GH, L.P, /*gate_pass=*/true);
  const Times whole = product_times<S>(Product::InputProjection, L.N, GH, L.I, false, true,
                                       /*tokens_in_m=*/true);
  const double hoisted = std::min(whole.own, whole.blas) / 0.85;
  double blocks = T * step.own + step.own_setup + hoisted, packing = step.own_setup;
  bool per_step = false;
  if (may_per_step) {
    const Times input = step_times<S>(L.B, grain, GH, L.I, /*gate_pass=*/false);
    const double in_loop = T * (step.own + input.own) + step.own_setup + input.own_setup;
    per_step = in_loop < blocks;
    if (per_step) blocks = in_loop, packing += input.own_setup;
  }
  if (!tiles) {
    // On W_hh as stored: no packing, the projection hoisted; a tie keeps the blocks.
    if (slice_rows && blas_wins(blocks, T * step.blas + hoisted)) {
      ForwardPlan rows{false, false, false, false, 0.0};
      rows.step_rows = true;
      return rows;
    }
    return {false, false, per_step, false, packing};
  }
  const double on_blas = T * step.blas + hoisted;
  if (on_blas * 1.15 < blocks) return {true, false, false, false, 0.0};
  return {false, false, per_step, on_blas < blocks * 1.15, packing};
}

// Where a bfloat16 layer's products run (bf16 operands): on the bf16 blocks
// (small_gemm_bf16, W_hh and, per step, W_ih packed per call) or on ATen's
// bfloat16 kernels (the brgemm ukernel where it runs, else the matmul:
// aten_bf16_product, oneDNN on AMX tiles where the CPU has them), the step
// products and one hoisted projection. Threads that split the hidden units
// (`tiles` false) take ATen's side only on the ukernel, which computes a
// slice's columns of each gate (at 2 threads, B = 8, H = 1024 the blocks
// ran a GRU 0.65x of torch.nn, an RNN 0.84x). Always raced
// on the layer's first steps (raced_plan): timing the step product alone
// chose the blocks for an RNN at B = 8, H = 1024, where the loop, which also
// streams the packed W_ih every step, ran 0.64x of torch.nn and ATen's
// matmul 1.02-1.11x. FASTRNN_CPU_PRODUCTS pins: own the blocks, blas ATen's
// matmul.
ForwardPlan plan_bf16_forward(const Layer& L, bool tiles, bool may_per_step) {
  const ForwardPlan blocks{false, false, may_per_step, false, 0.0};
  bool aten;
  if (!tiles && !ukernel_bf16_available()) return blocks;
  if (products_pinned(&aten)) return aten ? ForwardPlan{false, true, false, false, 0.0} : blocks;
  const Times packing = bf16_packing_seconds(L.G * L.H, L.P, L.I, may_per_step);
  return {false, false, may_per_step, true, packing.own, packing.blas};
}

// A layer's first time steps (as many as fit in min(T, 16), rounded down to a
// power of two), on which raced_plan's two plans race: long enough that the
// blocks' packing of W_hh weighs about as in a long call. Views of the call's
// own inputs.
struct Sample {
  Layer L;
  Tensor x, batch_sizes;
};

int64_t sample_steps(int64_t T) {
  int64_t steps = 1;
  while (steps * 2 <= std::min<int64_t>(T, 16)) steps *= 2;
  return steps;
}

Sample first_steps(const Layer& L, const Tensor& x, const Tensor& batch_sizes) {
  const int64_t steps = sample_steps(L.T);
  const int64_t* bs = batch_sizes.data_ptr<int64_t>();
  Sample s{L, Tensor(), batch_sizes.narrow(0, 0, steps)};
  s.L.T = steps, s.L.N = std::accumulate(bs, bs + steps, int64_t{0});
  s.x = x.narrow(0, 0, s.L.N);
  return s;
}

// layer_fwd's results: y, h_n, c_n, workspace.
using Forward = std::tuple<Tensor, Tensor, Tensor, Tensor>;

// layer_fwd on fastrnn's loop, for a validated call; on `forced`'s products
// when given, else as planned (plan_forward, raced_plan).
Forward own_layer_fwd(const Layer& L, const Tensor& x, const Tensor& batch_sizes,
                      const Tensor& h0, const OptTensor& c0, const Tensor& w_ih,
                      const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                      const OptTensor& w_hr, bool reverse, bool save,
                      const ForwardPlan* forced = nullptr);

// A close plan's blocks or its alternative (BLAS steps; ATen's bfloat16
// kernels for a bfloat16 layer), whichever runs the call faster
// (sample_prefers_second): both run the layer's first steps, and each one's
// packing, paid once per call, is not scaled with the call's length (at
// B = 64, H = 1024 the blocks' costs about one step, 6% of a 16-step sample).
ForwardPlan raced_plan(const Layer& L, const Tensor& x, const Tensor& batch_sizes,
                       const Tensor& h0, const OptTensor& c0, const Tensor& w_ih,
                       const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                       const OptTensor& w_hr, bool reverse, bool save, ForwardPlan blocks,
                       bool bf16) {
  blocks.close = false;
  const ForwardPlan other{!bf16, bf16, false, false, 0.0};
  // The sample's views are made only when it runs: a cached race costs a lookup.
  auto run = [&](const ForwardPlan& plan) {
    const Sample s = first_steps(L, x, batch_sizes);
    own_layer_fwd(s.L, s.x, s.batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, save,
                  &plan);
  };
  const int64_t steps = sample_steps(L.T);
  const bool on_other = sample_prefers_second(
      static_cast<int>(x.element_size()), L.B, L.I, L.G * L.H, L.P, steps, reverse, L.bias,
      blocks.packing, blocks.other_packing, static_cast<double>(L.T) / static_cast<double>(steps),
      [&] { run(blocks); }, [&] { run(other); });
  return on_other ? other : blocks;
}

// layer_fwd of a bfloat16 single step without projection, from its two
// products gx and gh (single_step_bf16, recurrence.h): bfloat16 y, h_n and
// c_n, the workspace in fp32 as every layer's.
Forward single_step_bf16_fwd(const Layer& L, const Tensor& x, const Tensor& gx, const Tensor& gh,
                             const Tensor& h0, const OptTensor& c0, bool save) {
  const bool lstm = L.mode == Mode::LSTM;
  Tensor y = at::empty({L.B, L.H}, x.options()), h_n = at::empty({L.B, L.H}, x.options());
  Tensor c_n = lstm ? at::empty({L.B, L.H}, x.options()) : at::empty({0}, x.options());
  Tensor ws = cached_empty({save ? L.N : 0, workspace::columns(L.mode, L.H)},
                           x.options().dtype(at::kFloat));
  auto run = [&](const auto* gx_data, const auto* gh_data) {  // fp32 or bfloat16 bits
    using G = std::remove_const_t<std::remove_pointer_t<decltype(gx_data)>>;
    single_step_bf16<G>({L.mode, L.B, L.H, gx_data, gh_data, bits(h0), lstm ? bits(*c0) : nullptr,
                         bits(y), bits(h_n), lstm ? bits(c_n) : nullptr,
                         save ? ws.data_ptr<float>() : nullptr});
  };
  if (gx.scalar_type() == at::kFloat) run(gx.data_ptr<float>(), gh.data_ptr<float>());
  else run(bits(gx), bits(gh));
  return {y, h_n, c_n, ws};
}

Forward own_layer_fwd(const Layer& L, const Tensor& x, const Tensor& batch_sizes,
                      const Tensor& h0, const OptTensor& c0, const Tensor& w_ih,
                      const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                      const OptTensor& w_hr, bool reverse, bool save, const ForwardPlan* forced) {
  const auto ct = compute_type(x);
  const int64_t GH = L.G * L.H;
  const LayerDims dims = dims_of(L, batch_sizes, reverse);
  // B = 1: packed RNN at H = 64 (8K elements) 14.6 us against 16.6 by BLAS;
  // LSTM at H = 64 (32K) 23.3 us packed against 19.8.
  const bool single = blas_single_step(L, int64_t{1} << 14);
  // bfloat16 operands (bf16_operands) with even I and P, as small_gemm_bf16
  // reads them in pairs. The loop then writes the bfloat16 output itself, and
  // fp32 copies of x and the weights are made only for the products that
  // still read them.
  const bool bf16_products = bf16_operands(L, x) && L.I % 2 == 0 && L.P % 2 == 0;
  // Where the forward's products run (ForwardPlan, plan_forward).
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t grain = (L.B + threads - 1) / threads;
  const bool tiles = !single && scratch_copies(dims, ct) == 1;
  // A bfloat16 layer on the float32 loop (no bf16 dot products in this build,
  // or odd I or P) may read W_hh's bfloat16 in its step product instead of a
  // widened, packed copy (batch tiles only: the product of every column).
  const bool bf16_rows = x.scalar_type() == at::kBFloat16 && !bf16_products && tiles &&
                         prefer_rows_bf16_step(L.B, grain, L.G * L.H, L.P);
  ForwardPlan plan = forced ? *forced : AT_DISPATCH_FLOATING_TYPES(ct, "fastrnn_forward_plan", [&] {
    if (single || bf16_rows) return ForwardPlan{false, false, false, false, 0.0};
    const bool may_per_step = project_per_step(dims, L.I, at::vec::Vectorized<scalar_t>::size(),
                                               sizeof(scalar_t));
    if (bf16_products) return plan_bf16_forward(L, tiles, may_per_step);
    return plan_forward<scalar_t>(L, grain, tiles, may_per_step);
  });
  if (plan.close)
    plan = raced_plan(L, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, save, plan,
                      bf16_products);
  // A bfloat16 layer's step products through ATen's bfloat16 matmul (on AMX
  // 4x the bf16 blocks at B = 64, H = 256).
  const bool step_blas = plan.step_blas, step_aten = plan.step_aten, per_step = plan.per_step;
  // The step product on W_hh as stored (rows_step): a bfloat16 layer's
  // bfloat16 (no widened copy; its slices weighed it as fp32, which reads
  // twice the bytes a step), else its fp32.
  const bool step_rows = bf16_rows || plan.step_rows;
  const bool stored_bf16 = step_rows && x.scalar_type() == at::kBFloat16;
  const bool fp32_input = !bf16_products || (!per_step && !step_aten);
  const auto [single_bf16, single_gemv] = single_bf16_products(L, x, single);
  const bool widen = !single_bf16 && !single_gemv;
  // A float32 single step's products on rows_times_wt_f32 where measured faster
  // than addmm (prefer_rows_f32_single_step).
  const bool single_rows = single && x.scalar_type() == at::kFloat &&
                           prefer_rows_f32_single_step(L.B, L.I, L.P, GH);
  const Tensor xc = fp32_input && widen ? in_compute(x, ct) : Tensor();
  const Tensor wih = fp32_input && widen ? in_compute(w_ih, ct) : Tensor();
  const Tensor whh = bf16_products || !widen || stored_bf16 ? Tensor() : in_compute(w_hh, ct);
  const auto opts = x.options().dtype(ct);

  // A single step with large weights (blas_single_step) packs nothing:
  // gx = x @ W_ih^T + b_ih and gh0 = h0 @ W_hh^T + b_hh are one BLAS call
  // each, or one rows_times_wt_f32 (single_rows), every bias with its own
  // product (GRU's b_hn sits in gh0's n columns, inside the reset gate's
  // product, as the loop expects). With bfloat16 operands
  // (single_bf16_products) they come as fp32 sums from rows_times_wt_bf16 or
  // rounded to bfloat16 from ATen's bf16 matmul.
  auto product = [&](const Tensor& a, const Tensor& w, const OptTensor& b) {
    if (single_rows) {
      const Tensor out = at::empty({L.B, w.size(0)}, opts);
      rows_times_wt_f32(L.B, a.data_ptr<float>(), a.size(1), w.data_ptr<float>(), w.size(0),
                        w.size(1), L.bias ? b->data_ptr<float>() : nullptr,
                        out.data_ptr<float>(), w.size(0));
      return out;
    }
    if (single_gemv) {
      const Tensor out = at::empty({L.B, w.size(0)}, opts);
      const Tensor bias = L.bias ? in_compute(*b, ct) : Tensor();
      rows_times_wt_bf16(L.B, bits(a), a.size(1), bits(w), w.size(0), w.size(1),
                         L.bias ? bias.data_ptr<float>() : nullptr, out.data_ptr<float>(),
                         w.size(0));
      return out;
    }
    if (single_bf16) return L.bias ? at::addmm(*b, a, w.t()) : at::mm(a, w.t());
    return L.bias ? at::addmm(in_compute(*b, ct), a, w.t()) : at::mm(a, w.t());
  };
  if (!widen && !L.project)
    return single_step_bf16_fwd(L, x, product(x, w_ih, b_ih), product(h0, w_hh, b_hh), h0, c0,
                                save);

  const Tensor h0c = in_compute(h0, ct);
  Tensor h = state_copy(h0, ct);
  Tensor c = L.mode == Mode::LSTM ? state_copy(*c0, ct) : Tensor();
  Tensor y = fresh({L.N, L.P}, opts);
  Tensor ws = cached_empty({save ? L.N : 0, workspace::columns(L.mode, L.H)}, opts);
  const Tensor y16 = bf16_products ? at::empty({L.N, L.P}, x.options()) : Tensor();
  const Tensor gx_single =
      single ? in_compute(product(widen ? xc : x, widen ? wih : w_ih, b_ih), ct) : Tensor();
  const Tensor gh0 =
      single ? in_compute(product(widen ? h0c : h0, widen ? whh : w_hh, b_hh), ct) : Tensor();

  // The loop's per-step scratch (ForwardArgs::gh).
  const int64_t rows = L.B * scratch_copies(dims, ct);
  const Tensor gh_step = single ? Tensor() : at::empty({rows, GH}, opts);
  const Tensor gx_step = per_step ? at::empty({rows, GH}, opts) : Tensor();
  const Tensor h_cell = L.project ? at::empty({rows, L.H}, opts) : Tensor();

  const bool fold = L.bias && !single;
  const Tensor bih = fold ? in_compute(*b_ih, ct) : Tensor();
  const Tensor bhh = fold ? in_compute(*b_hh, ct) : Tensor();

  AT_DISPATCH_FLOATING_TYPES(ct, "fastrnn_layer_fwd", [&] {
    Tensor whh_storage, whr_storage, wih_storage, whh16_storage, wih16_storage;
    auto ptr = [](const Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
    // Otherwise the bias as the input projection carries it: b_ih + b_hh,
    // except GRU's b_hn, which the reset gate multiplies and so stays in the
    // loop. Plain loops, not ATen calls: at small sizes each call's dispatch
    // costs more than its arithmetic.
    std::vector<scalar_t> bias;
    const scalar_t* b_hn = nullptr;
    if (fold) {
      const int64_t folded = L.mode == Mode::GRU ? 2 * L.H : GH;
      const scalar_t* bh = bhh.data_ptr<scalar_t>();
      bias.assign(bih.data_ptr<scalar_t>(), bih.data_ptr<scalar_t>() + GH);
      for (int64_t j = 0; j < folded; ++j) bias[j] += bh[j];
      if (L.mode == Mode::GRU) b_hn = bh + folded;
    }
    Tensor gx = gx_single;
    if (!single && !per_step && step_aten) {  // the same on ATen's bfloat16 matmul, as the steps
      gx = cached_empty({L.N, GH}, opts);
      aten_bf16_projection<scalar_t>(
          L.N, GH, L.I, bits(x), bits(w_ih),
          ukernel_packed(w_ih, L.I, GH, /*transposed=*/true, wih16_storage),
          gx.data_ptr<scalar_t>(), fold ? bias.data() : nullptr);
    } else if (!single && !per_step) {  // gx = bias + x @ W_ih^T for every token
      gx = cached_empty({L.N, GH}, opts);
      scalar_t* g = gx.data_ptr<scalar_t>();
      if (fold)
        at::parallel_for(0, L.N, 64, [&](int64_t n0, int64_t n1) {
          for (int64_t n = n0; n < n1; ++n) std::copy_n(bias.data(), GH, g + n * GH);
        });
      const bool blas = prefer_blas<scalar_t>(Product::InputProjection, L.N, GH, L.I, false, true,
                                              /*tokens_in_m=*/true);
      gemm_on<scalar_t>(blas, L.N, GH, L.I, ptr(xc), L.I, false, ptr(wih), true, g, GH, fold);
    }
    typename ForwardArgs<scalar_t>::Bf16Operands bf16{};
    if (bf16_products) {
      bf16 = {bits(x), per_step ? packed_bf16(w_ih, L.I, GH, wih16_storage) : PackedBf16{},
              step_aten ? PackedBf16{} : packed_bf16(w_hh, L.P, GH, whh16_storage), bits(h0),
              bits(y16)};
    }
    const StepWeights<scalar_t> step_weights{
        step_blas || (step_rows && !stored_bf16) ? ptr(whh) : nullptr,
        step_aten || stored_bf16 ? bits(w_hh) : nullptr, GH, L.P,
        step_aten ? ukernel_packed(w_hh, L.P, GH, /*transposed=*/true, whh16_storage)
                  : UkernelBf16{}};
    ForwardArgs<scalar_t> args{
        ptr(gx),
        ptr(xc),
        per_step && !bf16_products
            ? packed<scalar_t>(wih, L.I, GH, /*transpose=*/true, wih_storage)
            : Packed<scalar_t>{nullptr, L.I, GH},
        fold ? bias.data() : nullptr,
        single || bf16_products || step_blas || step_rows
            ? Packed<scalar_t>{nullptr, L.P, GH}
            : packed<scalar_t>(whh, L.P, GH, /*transpose=*/true, whh_storage),
        single ? gh0.data_ptr<scalar_t>() : nullptr,
        b_hn,
        h0c.data_ptr<scalar_t>(),
        L.project ? packed<scalar_t>(in_compute(*w_hr, ct), L.H, L.P, true, whr_storage)
                  : Packed<scalar_t>{nullptr, 0, 0},
        h.data_ptr<scalar_t>(),
        c.defined() ? c.data_ptr<scalar_t>() : nullptr,
        y.data_ptr<scalar_t>(),
        save ? ws.data_ptr<scalar_t>() : nullptr,
        ptr(gh_step),
        ptr(gx_step),
        ptr(h_cell),
        bf16,
        {step_rows ? &rows_step<scalar_t> : step_blas ? &blas_step<scalar_t> : nullptr,
         step_aten ? &aten_bf16_step<scalar_t> : nullptr, &step_weights}};
    forward_loop<scalar_t>(dims, args);
  });

  const auto out = x.scalar_type();
  Tensor c_n = c.defined() ? c.to(out) : at::empty({0}, x.options());
  return {bf16_products ? y16 : y.to(out), h.to(out), c_n, ws};
}

// layer_fwd on ATen's LSTM (at::lstm), for a validated call of an LSTM
// without projection whose T steps all have B rows: x (T*B, I) is then the
// time-major (T, B, I) sequence at::lstm reads, reversed in time for the
// reverse direction. The workspace is empty (inference only).
Forward aten_lstm_fwd(const Layer& L, const Tensor& x, const Tensor& h0, const Tensor& c0,
                      const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                      const OptTensor& b_hh, bool reverse) {
  Tensor seq = x.view({L.T, L.B, L.I});
  if (reverse) seq = seq.flip(0);
  std::vector<Tensor> params{w_ih, w_hh};
  if (L.bias) params.insert(params.end(), {*b_ih, *b_hh});
  auto [y, h_n, c_n] = at::lstm(seq, {h0.unsqueeze(0), c0.unsqueeze(0)}, params, L.bias,
                                /*num_layers=*/1, /*dropout=*/0.0, /*train=*/false,
                                /*bidirectional=*/false, /*batch_first=*/false);
  if (reverse) y = y.flip(0);
  return {y.reshape({L.N, L.H}), h_n.squeeze(0).contiguous(),
          c_n.squeeze(0).contiguous(),
          at::empty({0, workspace::columns(L.mode, L.H)}, x.options().dtype(compute_type(x)))};
}

// Whether ATen runs a bfloat16 LSTM on oneDNN on this CPU (AVX-512 and
// newer). Elsewhere it takes its per-step path, whose bfloat16 matmul ran at
// 0.13-0.7 GFLOP/s on an AMD EPYC with AVX2 (fp32: 7-17): one such call can
// outlast minutes of the loop, so it is not raced at all. The answer is
// ATen's own (the op behind torch.backends.mkldnn's check); a torch without
// that op leaves the choice to the race.
bool onednn_bf16() {
  static const bool yes = [] {
    const auto op = c10::Dispatcher::singleton().findOp({"mkldnn::_is_mkldnn_bf16_supported", ""});
    return !op || op->typed<bool()>().call();
  }();
  return yes;
}

// Whether a call may run on ATen's LSTM instead of fastrnn's loop: an
// inference LSTM (no workspace wanted), float32, or bfloat16 where oneDNN
// runs it (onednn_bf16; oneDNN has no float64 LSTM), without projection
// (nor has it), every step of B rows (a
// padded batch; packed sequences of different lengths take ATen's per-step
// path, which the loop beats). Inference at B = 64 is where oneDNN's LSTM,
// the gate math fused into its products' register tiles, led the loop on an
// Intel Xeon (0.89-0.98x of torch.nn, 1 thread; docs/benchmarks.md,
// "Results: CPU, Intel Xeon").
bool aten_lstm_candidate(const Layer& L, const Tensor& x, const Tensor& batch_sizes, bool save) {
  const auto dtype = x.scalar_type();
  return !save && L.mode == Mode::LSTM && !L.project &&
         (dtype == at::kFloat || (dtype == at::kBFloat16 && onednn_bf16())) && L.B > 0 &&
         L.I > 0 && batch_sizes.data_ptr<int64_t>()[L.T - 1] == L.B;
}

Forward layer_fwd(const std::string& mode, const Tensor& x, const Tensor& batch_sizes,
                  const Tensor& h0, const OptTensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                  const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
                  bool reverse, bool save) {
  const Layer L = check_layer(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr);
  auto own = [&] {
    return own_layer_fwd(L, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, save);
  };
  if (!aten_lstm_candidate(L, x, batch_sizes, save)) return own();
  auto aten = [&] { return aten_lstm_fwd(L, x, h0, *c0, w_ih, w_hh, b_ih, b_hh, reverse); };
  // The faster of the two, learnt from this shape's calls (race_calls);
  // FASTRNN_CPU_PRODUCTS pins it: own never runs ATen's LSTM, blas always.
  bool pinned_aten;
  if (products_pinned(&pinned_aten)) return pinned_aten ? aten() : own();
  Forward out;
  race_calls(static_cast<int>(x.element_size()), L.B, L.I, L.G * L.H, L.T, reverse, L.bias,
             [&] { out = own(); }, [&] { out = aten(); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  impl<LayerFwd, &layer_fwd>(m);
  impl<BilayerFwd, &bilayer_fwd<&layer_fwd, &for_both_directions>>(m);
}

}  // namespace fastrnn::cpu
