// Packed-sequence bookkeeping shared by the forward and backward time loops.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>  // at::internal::GRAIN_SIZE
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "fastrnn/cpu/recurrence.h"
#include "fastrnn/cpu/small_gemm_bf16.h"
#include "fastrnn/cpu/step_barrier.h"

namespace fastrnn::cpu {

class Steps {
 public:
  explicit Steps(const LayerDims& d) : d_(d), offset_(d.T) {
    int64_t sum = 0;
    for (int64_t t = 0; t < d.T; ++t) {
      offset_[t] = sum;
      sum += d.batch_sizes[t];
    }
  }

  // The step processed s-th in forward order.
  int64_t step(int64_t s) const { return d_.reverse ? d_.T - 1 - s : s; }

  // Packed row of row b at step t.
  int64_t row(int64_t t, int64_t b) const { return offset_[t] + b; }

  // Packed row whose output row b of step t read as h_prev (the step before t
  // in forward order), or -1 when that is h0/c0: the first step, or in reverse
  // a row that joins at t.
  int64_t prev_row(int64_t t, int64_t b) const {
    const int64_t p = d_.reverse ? t + 1 : t - 1;
    if (p < 0 || p >= d_.T || b >= d_.batch_sizes[p]) return -1;
    return offset_[p] + b;
  }

  // Live rows of the tile [b0, b1) at step t (<= 0: none).
  int64_t live(int64_t t, int64_t b0, int64_t b1) const {
    return std::min(b1, d_.batch_sizes[t]) - b0;
  }

 private:
  const LayerDims& d_;
  std::vector<int64_t> offset_;
};

// One thread's share of a time loop: batch rows [b0, b1), hidden units
// [j0, j1) and output columns [o0, o1) of h / y (all P unless split).
struct Part {
  int64_t b0, b1, j0, j1, o0, o1;
  int64_t slot;               // its copy of the per-step scratch (scratch_slots)
  StepBarrier::Member* sync;  // wait() between dependent phases of a step
};

// Whether threads split the hidden units of one time loop instead of running
// one loop per batch tile. A batch tile streams all of W_hh every step, so
// with few rows per tile the loop is bound by reading W_hh (at H = 256 an
// LSTM's W_hh^T is 1 MiB, this machine's L2); a hidden slice reads only its
// share of W_hh, for the price of one barrier per step. Measured on 2 cores
// (docs/cpu_kernels.md): it pays at H >= 256 up to B = 8, and at H = 128 only
// where tiles would leave a thread idle (B < threads); at H = 64 the barrier
// costs what the split saves. Slices are whole SIMD vectors of every gate
// (H % VL == 0); no projection, which would need a second barrier per step.
// A single step never splits: nothing amortizes waking the other threads,
// and a step that reaches the loop has at most 64K weight elements (larger
// ones run on BLAS: blas_single_step), a few microseconds of work. An RNN
// cell's backward at B = 1, H = 128 took 31 us on 2 threads split, 24 on one.
inline bool split_hidden(const LayerDims& d, int64_t threads, int64_t vector_width) {
  if (d.T < 2 || threads < 2 || d.P != d.H || d.H % vector_width != 0 ||
      d.H / vector_width < threads)
    return false;
  return (d.H >= 256 && d.B <= 8) || (d.H >= 128 && d.B < threads);
}

// Copies of the per-step scratch (ForwardArgs::gh) that a loop of S runs on,
// of B rows each: one per part when threads split the hidden units, so that
// each core writes memory of its own (one buffer whose columns the slices
// share, lines apart, cost a 2-thread LSTM at B = 8, H = 256 15-60 % of its
// forward: the cores' prefetchers pull each other's lines); else one, whose
// rows the batch tiles share out. for_each_part numbers the parts to match.
template <typename S>
int64_t scratch_slots(const LayerDims& d) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  return split_hidden(d, threads, at::vec::Vectorized<S>::size()) ? threads : 1;
}

// Threads that share one time loop: 1 inside a parallel region (e.g. one
// direction of a bidirectional layer), where at::parallel_for runs inline.
inline int64_t loop_threads() {
  return at::in_parallel_region() ? 1 : std::max<int64_t>(1, at::get_num_threads());
}

// Whether the loop computes each step's input projection x_t @ W_ih^T itself
// (small_gemm on a packed W_ih, into a buffer of one step) instead of reading
// it from one product over all tokens made before the loop. Per step pays
// once a part has >= 8 rows, where small_gemm's 8-row block runs at ~110
// GFLOP/s against MKL's 85-90 on this machine (docs/cpu_kernels.md), and it
// never materialises the (N, G*H) projection: at T = 1024, B = 16, H = 128 an
// LSTM's is 32 MiB, written, page-faulted and read back once per call. But
// every step then streams W_ih as well as W_hh, 2 FLOP per row per 4 bytes:
// once the packed weights leave the caches (> 4 MiB together) only >= 32 rows
// keep that above memory speed (B = 8, H = 1024, 1 thread: 120 ms per step
// vs 100 hoisted). Fewer than 8 rows run small_gemm at 40-65 GFLOP/s, so they
// keep the hoisted product; so does a single step (see layer_args.h, blas_single_step).
inline bool project_per_step(const LayerDims& d, int64_t input_size, int64_t vector_width,
                             int64_t element_bytes) {
  const int64_t threads = loop_threads();
  const int64_t rows = split_hidden(d, threads, vector_width) ? d.B : (d.B + threads - 1) / threads;
  const int64_t weight_bytes = (input_size + d.P) * gates(d.mode) * d.H * element_bytes;
  return d.T > 1 && rows >= 8 && (weight_bytes <= (4 << 20) || rows >= 32);
}

// fn(std::integral_constant<Mode, mode>{}): code compiled once per mode, its
// gate math inlined and no per-element branch, chosen once per call.
template <typename Fn>
decltype(auto) with_mode(Mode mode, const Fn& fn) {
  switch (mode) {
    case Mode::LSTM: return fn(std::integral_constant<Mode, Mode::LSTM>{});
    case Mode::GRU: return fn(std::integral_constant<Mode, Mode::GRU>{});
    case Mode::RNN_TANH: return fn(std::integral_constant<Mode, Mode::RNN_TANH>{});
    default: return fn(std::integral_constant<Mode, Mode::RNN_RELU>{});  // parse_mode's last
  }
}

// Rows per task of an at::parallel_for over rows of `width` elements: at
// least ATen's grain of elements, so that a small batch stays on one thread.
inline int64_t row_grain(int64_t width) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(width, 1));
}

// Runs fn(mode, part) on one Part per thread, mode being
// std::integral_constant<Mode, d.mode>: each mode's loop is compiled with its
// gate math inlined and no per-element branch. Parts are either batch tiles
// (no synchronisation) or hidden slices of the whole batch that meet at a
// StepBarrier; ATen's OpenMP parallel_for runs its chunks concurrently, one
// per thread, which the barrier relies on.
// fn(mode, bf16, part): bf16 is std::bool_constant, true when `bf16` asks for
// the bfloat16-operand products (small_gemm_bf16.h) and this build and S
// (float) have them, so each loop is compiled once with and once without.
template <typename S, typename Fn>
void for_each_part(const LayerDims& d, bool bf16, const Fn& fn) {
  constexpr int64_t VL = at::vec::Vectorized<S>::size();
  constexpr bool has_bf16 = std::is_same_v<S, float> && kBf16Products;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  auto run_parts = [&](auto mode, auto bf16_products) {
    if (split_hidden(d, threads, VL)) {
      StepBarrier barrier(threads);
      const int64_t vectors = d.H / VL;
      auto bound = [&](int64_t p) { return vectors * p / threads * VL; };
      at::parallel_for(0, threads, 1, [&](int64_t p0, int64_t p1) {
        StepBarrier::Member sync(&barrier, p1 - p0);
        fn(mode, bf16_products,
           Part{0, d.B, bound(p0), bound(p1), bound(p0), bound(p1), p0, &sync});
      });
    } else {
      const int64_t grain = std::max<int64_t>(1, (d.B + threads - 1) / threads);
      at::parallel_for(0, d.B, grain, [&](int64_t b0, int64_t b1) {
        StepBarrier::Member alone(nullptr, 1);
        fn(mode, bf16_products, Part{b0, b1, 0, d.H, 0, d.P, 0, &alone});
      });
    }
  };
  auto run = [&](auto mode) {
    if (has_bf16 && bf16)
      run_parts(mode, std::bool_constant<has_bf16>{});
    else
      run_parts(mode, std::false_type{});
  };
  with_mode(d.mode, run);
}

}  // namespace fastrnn::cpu
