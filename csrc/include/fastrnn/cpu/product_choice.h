// Own blocks or BLAS for a layer's large one-off products, chosen by measuring
// this machine.
//
// The products around a layer's time loop (gemm.h: the input projection, dx,
// dW_ih, dW_hh, dW_hr) can run on fastrnn's register blocks (gemm) or on the
// BLAS torch was built with (blas_gemm, through ATen: MKL on x86 wheels).
// Which is faster depends on the CPU: on an AMD Zen 4 machine the blocks ran
// at 102-109 GFLOP/s where MKL's sgemm reached 85-90, on an Intel Xeon with
// AVX-512 MKL led. No threshold tuned on one CPU can hold on both, so
// prefer_blas() times both on a sample of the product the first time a shape
// is seen in a process and keeps the faster; later calls look it up.
//
// FASTRNN_CPU_PRODUCTS = own | blas | auto (default) pins the choice, e.g. for
// bitwise-reproducible runs across machines. Unset (or auto) under
// torch.use_deterministic_algorithms(True), every choice is pinned as own
// pins it: a seeded run then gives the same bits every time.
#pragma once

#include <c10/util/FunctionRef.h>
#include <stdint.h>

namespace fastrnn::cpu {

// The product a choice is for (one cache entry per product and shape).
enum class Product { InputProjection, InputGrad, InputWeightGrad, HiddenWeightGrad, ProjWeightGrad };

// C (M, n) = (accumulate ? C : 0) + op(A) @ op(B), arguments as gemm()'s
// (gemm.h), through ATen's BLAS.
template <typename S>
void blas_gemm(int64_t M, int64_t n, int64_t K, const S* A, int64_t lda, bool a_transposed,
               const S* B, bool b_transposed, S* C, int64_t ldc, bool accumulate);

// blas_gemm when `blas`, else gemm (gemm.h), same arguments.
template <typename S>
void gemm_on(bool blas, int64_t M, int64_t n, int64_t K, const S* A, int64_t lda,
             bool a_transposed, const S* B, bool b_transposed, S* C, int64_t ldc,
             bool accumulate);

// What a choice is made from: seconds per call of the blocks and of BLAS, and
// the blocks' one-off cost per layer call (packing the weight a loop's step
// products stream; 0 for one-off products, whose timed run packs).
struct Times {
  double own, blas, own_setup;
};

// BLAS must win by 5%, so that a tie keeps the blocks (and results stay the
// same from process to process).
bool blas_wins(double own, double blas);

// True when FASTRNN_CPU_PRODUCTS pins the choice, or deterministic algorithms
// are on (the blocks), then *blas tells which (stored pins the blocks here,
// as own does).
bool products_pinned(bool* blas);

// True when FASTRNN_CPU_PRODUCTS=stored: a float32 loop's step products on
// W_hh as stored (rows_times_wt_f32) wherever that kernel runs, batch tiles
// too; every other choice as own pins it.
bool stored_pinned();

// The times of `product` of this shape on this machine at the caller's thread
// count: measured on a sample of at most 512 tokens (the dimension that grows
// with the batch: M for the input projection and dx, K for the weight
// gradients) the first time the product's fixed dimensions, power-of-two
// token bucket and thread count are seen, cached, and scaled to the call's
// tokens. Thread-safe; FASTRNN_CPU_PRODUCTS is not consulted.
template <typename S>
Times product_times(Product product, int64_t M, int64_t n, int64_t K, bool a_transposed,
                    bool b_transposed, bool tokens_in_m);

// The times of one step product out (B, n) = h (B, K) @ W^T (K, n) when batch
// tiles of `grain` rows run it concurrently, one per thread, as the loop's
// parts do (steps.h, for_each_part), each product followed by a sweep over
// the buffers the loop's gate pass touches (unless !gate_pass: a second
// product of the same step); the blocks on a W packed beforehand, with the
// packing as own_setup. Cached per shape and thread count. layer_fwd.cpp
// (plan_forward) weighs them for a layer's T steps.
template <typename S>
Times step_times(int64_t B, int64_t grain, int64_t n, int64_t K, bool gate_pass);

// The same step product out (B, n) = h (B, K) @ W^T where threads split
// its columns (hidden slices: steps.h, split_hidden), each thread its share
// of whole vectors concurrently, each followed by the gate pass's sweep:
// own the packed blocks (small_gemm), with the packing of W as own_setup;
// blas W read as stored by rows_times_wt_f32 (gemv_bf16.h), nothing packed.
// float32, with kBf16RowsKernels only. Cached per shape and thread count.
// (The loop's slices are one range of units per gate; here one range of
// columns of the same width in all.)
Times slice_step_times(int64_t B, int64_t n, int64_t K);

// Whether blas_gemm is faster than gemm for `product` of this shape on this
// machine (product_times), unless FASTRNN_CPU_PRODUCTS pins it.
template <typename S>
bool prefer_blas(Product product, int64_t M, int64_t n, int64_t K, bool a_transposed,
                 bool b_transposed, bool tokens_in_m);

// out (rows, n) fp32 = h (rows, K) @ W^T for bfloat16 h and W (n, K), both
// bit patterns, through ATen's bfloat16 matmul (oneDNN: AMX tiles where the
// CPU has them, 560-590 GFLOP/s on 1 core of an Intel Xeon against 110-160
// for fp32); the product comes rounded to bfloat16, as torch.nn's bfloat16
// GRU and RNN round theirs, and is widened into out, plus bias (n,) unless
// null (one pass: the hoisted projection's bias).
void aten_bf16_product(int64_t rows, int64_t n, int64_t K, const uint16_t* h, const uint16_t* w,
                       float* out, const float* bias = nullptr);

// out (rows, n) fp32 (+)= g (rows, K; row stride ldg) @ w (K, n) for bfloat16 g
// and w, through ATen's bfloat16 matmul, the product rounded to bfloat16 as
// aten_bf16_product's: the backward's step product dh = dG @ W_hh.
void aten_bf16_product_nn(int64_t rows, int64_t n, int64_t K, const uint16_t* g, int64_t ldg,
                          const uint16_t* w, float* out, bool accumulate);

// Whether the bfloat16 backward's step products dh (B, n) = dG (B, K) @ W_hh
// run faster on aten_bf16_product_nn than on small_gemm_bf16 with W_hh packed
// once per call (pack_bf16), both timed as step_times times its candidates,
// packing included, for `steps` steps. FASTRNN_CPU_PRODUCTS pins it too. On
// the Intel Xeon (AMX) at 64 rows ATen's runs ~450 GFLOP/s, the blocks ~70.
bool prefer_aten_bf16_backward_step(int64_t B, int64_t grain, int64_t n, int64_t K,
                                    int64_t steps);

// Whether a bfloat16 single step (a cell; blas_single_step in layer_args.h)
// of B rows runs its products x @ W_ih^T (W_ih (GH, I)) and h @ W_hh^T (W_hh
// (GH, P)) faster by ATen's bfloat16 matmul than with both weights widened
// to fp32 and multiplied by MKL, both as layer_fwd runs them, timed once per
// shape and thread count; layer_bwd follows the same choice. On the Intel
// Xeon (AMX) oneDNN's bf16 matmul costs ~55 us a call at any small size:
// widening won for an RNNCell at H = 256 (88 us against 184 per step at
// B = 8), lost 6x for an LSTMCell at B = 8, H = 1024 (12.5 ms against 2.0).
// FASTRNN_CPU_PRODUCTS pins it (blas: bfloat16).
bool prefer_bf16_single_step(int64_t B, int64_t I, int64_t P, int64_t GH);

// Whether a float32 single step (a cell, or T = 1) whose products run as
// one call each rather than on packed weights (blas_single_step in
// layer_args.h) runs x @ W_ih^T + b_ih and h @ W_hh^T + b_hh (x (B, I),
// h (B, P), W_ih (GH, I), W_hh (GH, P)) faster on rows_times_wt_f32
// (gemv_bf16.h: W read as stored, nothing packed, no ATen call) than on
// ATen's addmm, timed once per shape and thread count. A cell stepped from
// Python pays each addmm's dispatch and output allocation every token:
// ~3 us of an RNNCell's ~14 us step at B = 1, H = 128 on a Zen 4 core.
// Only with kBf16RowsKernels. FASTRNN_CPU_PRODUCTS pins it (own: yes).
bool prefer_rows_f32_single_step(int64_t B, int64_t I, int64_t P, int64_t GH);

// Whether that step's forward products run faster on fastrnn's own
// rows_times_wt_bf16 (gemv_bf16.h: W read as stored, nothing packed or
// reordered) than the way prefer_bf16_single_step chose (`in_bf16`), timed
// once per shape and thread count; the backward keeps that choice. At B = 1
// on the Emerald Rapids Xeon: ~10 us against oneDNN's ~55 per product; at
// B = 8 the matmul led. Only with kBf16RowsKernels (gemv_bf16.h).
// FASTRNN_CPU_PRODUCTS pins it (own: yes).
bool prefer_gemv_bf16_single_step(int64_t B, int64_t I, int64_t P, int64_t GH, bool in_bf16);

// Whether a bfloat16 layer that runs the float32 loop (no bf16 dot products
// in this build, or odd I or P) runs its step product h @ W_hh^T (h fp32, B
// rows in batch tiles of `grain`; W_hh (GH, P)) faster on rows_times_wt_bf16,
// which reads W_hh's bfloat16 as stored, than on its fp32 copy as
// step_times chooses (half the bytes a step, and no widened copy or packing
// per call). Timed once per shape and thread count; only with
// kBf16RowsKernels. FASTRNN_CPU_PRODUCTS pins it (own: yes).
bool prefer_rows_bf16_step(int64_t B, int64_t grain, int64_t GH, int64_t P);

// Seconds a bfloat16 layer spends packing weights once per call, per plan:
// `own` to pack W_hh (n, P) and, where it projects per step, W_ih (n, I) for
// small_gemm_bf16 (pack_transposed_bf16, small_gemm_bf16.h); `blas` to pack
// W_hh^T and W_ih^T for ATen's ukernel (pack_ukernel_bf16, ukernel_bf16.h;
// 0 where it does not run). One-off costs that raced_plan (layer_fwd.cpp)
// does not scale with the call's length. Measured once per shape and thread
// count.
Times bf16_packing_seconds(int64_t n, int64_t P, int64_t I, bool per_step);

// Whether second() runs a layer call faster than first(), from their times
// on a sample of it (the layer's first steps; plan_forward's close plans in
// layer_fwd.cpp: BLAS steps against the blocks): both run the sample
// alternated, each timed by its fastest run over three rounds of >= 5 ms,
// the first time this element size, first batch size B, input I, gate
// columns GH, output size P (the step product's K), sample `steps`,
// direction, bias and thread count are seen, and those times are cached. A
// call `scale` times the sample's length costs setup + (sample - setup) *
// scale for each, where setup is its one-off cost per call (packing its
// weights): first_setup and second_setup seconds. No margin: the candidates
// are close. FASTRNN_CPU_PRODUCTS is not consulted (callers pin).
bool sample_prefers_second(int element_size, int64_t B, int64_t I, int64_t GH, int64_t P,
                           int64_t steps, bool reverse, bool bias, double first_setup,
                           double second_setup, double scale,
                           c10::function_ref<void()> first, c10::function_ref<void()> second);

// Runs one layer call on first() or on second() (layer_fwd.cpp: fastrnn's
// loop or ATen's LSTM), learning which is faster from the calls of this shape
// themselves (element size, B, I, GH, T rounded up to a power of two,
// direction, bias, thread count): the first calls alternate, the first of
// each being a warm-up (one-off costs: calibrations, oneDNN generating its
// kernels), until each has had three timed calls lasting 2 ms in all (two
// calls each, where calls take 20 ms and one wins by 10%; 64 each at most); the
// fastest timed call of each decides, and every later call runs the faster.
// Real calls, not a sample, because what runs between them (other layers;
// torch.nn, in a benchmark) decides how warm the caches are: a
// sample run back to back found the loop's packed weights still cached and
// chose it for a bfloat16 B = 1, H = 256 LSTM it then ran at 0.76x of
// torch.nn (ATen's LSTM 0.95x), and with caches swept before each run chose
// it at B = 64, H = 64 float32 (0.90x against 0.97x). FASTRNN_CPU_PRODUCTS is
// not consulted (callers pin).
void race_calls(int element_size, int64_t B, int64_t I, int64_t GH, int64_t T, bool reverse,
                bool bias, c10::function_ref<void()> first, c10::function_ref<void()> second);

}  // namespace fastrnn::cpu
