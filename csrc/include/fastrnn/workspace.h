// What fastrnn::layer_fwd saves for fastrnn::layer_bwd, shared by every device.
//
// The workspace is a 2-D row-major tensor (rows, columns(mode, H)):
//   rows  = N (= sum(batch_sizes), one row per packed token) when save=true, else 0.
//   dtype = float32 when x is bfloat16 or float16 (state math runs in fp32, so the
//           saved states keep fp32 precision), otherwise x's dtype.
// Row n belongs to the token at packed row n of x / y, so a step's rows are the
// contiguous block [offset(t), offset(t) + batch_sizes[t]).
//
// Column blocks of a row, each H wide (H = hidden_size, NOT proj_size):
//   LSTM      [ i | f | g | o | c ]    activated gates and the new cell state c_t.
//             c_{t-1} is the previous step's c (or c0), tanh(c_t) and the
//             cell output o*tanh(c_t) are recomputed in backward.
//   GRU       [ r | z | n | hn ]       activated gates and hn = W_hn h_{t-1} + b_hn,
//             the term the reset gate multiplies (needed for d r).
//   RNN_TANH, RNN_RELU: no columns; backward needs only the output y (= h_t).
// h_{t-1} is always read from y of the previous step (or h0), never saved twice.
//
// The Python fake kernel (fastrnn/_ops.py) mirrors columns() and dtype; change both.
#pragma once

#include <stdint.h>

#include <cstring>

#include "fastrnn/gates.h"  // FASTRNN_HD

namespace fastrnn {

enum class Mode { LSTM, GRU, RNN_TANH, RNN_RELU };

// Parses the schema's mode string; returns false for an unknown name.
inline bool parse_mode(const char* name, Mode* mode) {
  if (std::strcmp(name, "LSTM") == 0) { *mode = Mode::LSTM; return true; }
  if (std::strcmp(name, "GRU") == 0) { *mode = Mode::GRU; return true; }
  if (std::strcmp(name, "RNN_TANH") == 0) { *mode = Mode::RNN_TANH; return true; }
  if (std::strcmp(name, "RNN_RELU") == 0) { *mode = Mode::RNN_RELU; return true; }
  return false;
}

// Gates per cell: rows of w_ih / w_hh are gates(mode) * H.
FASTRNN_HD constexpr int64_t gates(Mode mode) {
  return mode == Mode::LSTM ? 4 : mode == Mode::GRU ? 3 : 1;
}

namespace workspace {

// Column offsets inside a row, in units of H.
enum LstmBlock : int64_t { kLstmI = 0, kLstmF = 1, kLstmG = 2, kLstmO = 3, kLstmC = 4 };
enum GruBlock : int64_t { kGruR = 0, kGruZ = 1, kGruN = 2, kGruHn = 3 };

// Columns per token.
FASTRNN_HD constexpr int64_t columns(Mode mode, int64_t hidden) {
  return mode == Mode::LSTM ? 5 * hidden : mode == Mode::GRU ? 4 * hidden : 0;
}

}  // namespace workspace
}  // namespace fastrnn
