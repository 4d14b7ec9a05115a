// Packed-sequence bookkeeping shared by the forward and backward time loops.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "fastrnn/cpu/recurrence.h"

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

// Runs fn(mode, b0, b1) on one contiguous batch tile [b0, b1) per thread, mode
// being std::integral_constant<Mode, d.mode>: each mode's loop is compiled
// with its gate math inlined and no per-element branch.
template <typename Fn>
void for_each_tile(const LayerDims& d, const Fn& fn) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t grain = std::max<int64_t>(1, (d.B + threads - 1) / threads);
  auto tiles = [&](auto mode) {
    at::parallel_for(0, d.B, grain, [&](int64_t b0, int64_t b1) { fn(mode, b0, b1); });
  };
  switch (d.mode) {
    case Mode::LSTM: return tiles(std::integral_constant<Mode, Mode::LSTM>{});
    case Mode::GRU: return tiles(std::integral_constant<Mode, Mode::GRU>{});
    case Mode::RNN_TANH: return tiles(std::integral_constant<Mode, Mode::RNN_TANH>{});
    case Mode::RNN_RELU: return tiles(std::integral_constant<Mode, Mode::RNN_RELU>{});
  }
}

}  // namespace fastrnn::cpu
