// Own blocks or BLAS, measured (contract: fastrnn/cpu/product_choice.h).
#include "fastrnn/cpu/product_choice.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "fastrnn/cpu/gemm.h"
#include "fastrnn/cpu/gemv_bf16.h"
#include "fastrnn/cpu/small_gemm.h"
#include "fastrnn/cpu/small_gemm_bf16.h"
#include "fastrnn/cpu/ukernel_bf16.h"

namespace fastrnn::cpu {
namespace {

// op(X) for X (rows, cols) with row stride ld, as an ATen view of the memory.
template <typename S>
at::Tensor view(const S* X, int64_t rows, int64_t cols, int64_t ld, bool transposed) {
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<S>::value);
  at::Tensor t = at::from_blob(const_cast<S*>(X), {rows, cols}, {ld, 1}, options);
  return transposed ? t.t() : t;
}

enum class Pin { Auto, Own, Blas, Stored };

Pin pinned() {
  const char* env = std::getenv("FASTRNN_CPU_PRODUCTS");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "auto") == 0) {
    // torch.use_deterministic_algorithms(True): nothing chosen by timing,
    // whose outcome can differ between two runs of one seeded script where
    // candidates time within noise (different kernels, different last bits);
    // the blocks, as `own` pins them.
    return at::globalContext().deterministicAlgorithms() ? Pin::Own : Pin::Auto;
  }
  if (std::strcmp(env, "own") == 0) return Pin::Own;
  if (std::strcmp(env, "stored") == 0) return Pin::Stored;
  TORCH_CHECK(std::strcmp(env, "blas") == 0,
              "fastrnn: FASTRNN_CPU_PRODUCTS must be own, blas, stored or auto, got '", env,
              "'");
  return Pin::Blas;
}

double seconds(const std::chrono::steady_clock::time_point& start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// (product, element size, M, n, K with the token dimension bucketed,
// transposes, threads, inside a parallel region, time steps of a layer sample
// or another size, the size of a layer's hidden state where M, n, K do not
// give it)
using Key =
    std::tuple<int, int, int64_t, int64_t, int64_t, bool, bool, int, bool, int64_t, int64_t>;

// The extra Product values in cached_times' key: a bfloat16 single step's
// products (kBf16Single, kBf16Gemv), the layer sample of close plans
// (sample_prefers_second), the bfloat16 backward's step, a bfloat16 layer's
// packing, the input projection per step (a second product of the step), the
// recurrent step, a bfloat16 layer's step product on the float32 loop
// (kBf16RowsStep: prefer_rows_bf16_step), the float32 step product of hidden
// slices (kSliceStep: slice_step_times) and a float32 single step's products
// (kF32Single: prefer_rows_f32_single_step). Each has its own slot in a
// thread's last-times cache, so that a layer called in a loop, which looks up
// several of them per call, takes no lock. kProducts: Product's five and
// these eleven; kAtenLstm's slot is unused (it keys race_calls, which keeps
// its own races).
constexpr int kF32Single = -11, kSliceStep = -10, kBf16RowsStep = -9, kAtenLstm = -8,
              kBf16Gemv = -7, kBf16Single = -6, kBf16BackStep = -5, kBlasSteps = -4,
              kBf16Packing = -3, kInputStep = -2, kRecurrentStep = -1;
constexpr size_t kProducts = 16;

// What each key's product is and what its two times are, for
// FASTRNN_CPU_VERBOSE; indexed from kF32Single up, then Product's five.
struct Label {
  const char *what, *first, *second;
};
constexpr std::array<Label, kProducts> kLabels{{
    {"fp32 single step", "rows kernel", "ATen addmm"},
    {"hidden slices' step product", "blocks", "W_hh as stored"},
    {"bf16 step product on the fp32 loop", "bf16 rows", "fp32 product"},
    {"LSTM layer (race of calls)", "fastrnn loop", "ATen LSTM"},
    {"bf16 single step, rows kernel", "rows kernel", "ATen"},
    {"bf16 single step", "fp32 widened", "ATen bf16"},
    {"bf16 backward step product", "blocks", "ATen"},
    {"layer sample of two plans", "first plan", "second plan"},
    {"bf16 weight packing", "blocks", "ukernel"},
    {"input projection per step", "blocks", "BLAS"},
    {"recurrent step product", "blocks", "BLAS"},
    {"input projection", "blocks", "BLAS"},
    {"input gradient", "blocks", "BLAS"},
    {"input weight gradient", "blocks", "BLAS"},
    {"hidden weight gradient", "blocks", "BLAS"},
    {"projection weight gradient", "blocks", "BLAS"},
}};

// FASTRNN_CPU_VERBOSE=1: each measurement to stderr once, as it is made, so
// that a user comparing two machines sees what each measured (docs/cpu_kernels.md).
bool verbose() {
  static const bool on = [] {
    const char* env = std::getenv("FASTRNN_CPU_VERBOSE");
    return env != nullptr && *env != '\0' && std::strcmp(env, "0") != 0;
  }();
  return on;
}

// One line per measured key: its shape fields as Key names them, then the
// two candidates' seconds per run.
void report(const Key& key, double first, double second) {
  if (!verbose()) return;
  const auto [product, size, M, n, K, ta, tb, threads, nested, steps, P] = key;
  const Label& l = kLabels[static_cast<size_t>(product - kF32Single)];
  std::fprintf(stderr,
               "fastrnn: %s, %d-byte, M %lld n %lld K %lld%s%s, T %lld, P %lld, %d thread%s%s: "
               "%s %.1f us, %s %.1f us\n",
               l.what, size, static_cast<long long>(M), static_cast<long long>(n),
               static_cast<long long>(K), ta ? ", A^T" : "", tb ? ", B^T" : "",
               static_cast<long long>(steps), static_cast<long long>(P), threads,
               threads == 1 ? "" : "s", nested ? " (nested)" : "", l.first, first * 1e6,
               l.second, second * 1e6);
}

// The cached times for `key`, measured by time_both(repeats) -> Times for
// `repeats` runs of each the first time: one warm-up, then the best of
// `rounds` rounds. Small products repeat until a round takes ~round_seconds,
// so that timer resolution and one-off noise do not decide.
template <typename Measure>
Times cached_times(const Key& key, const Measure& time_both, double round_seconds = 2e-4,
                   int rounds = 2) {
  // Each thread remembers the last times per product, so that a loop of
  // calls of one shape (a cell stepped by a decoder) takes no lock.
  thread_local std::array<std::pair<Key, Times>, kProducts> last{};
  auto& mine = last[static_cast<size_t>(std::get<0>(key) - kF32Single)];
  if (mine.first == key) return mine.second;
  static std::mutex mutex;
  static std::map<Key, Times> measured;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    const auto found = measured.find(key);
    if (found != measured.end()) return (mine = {key, found->second}).second;
  }
  const Times once = time_both(1);  // warm-up, and the run's size
  const int64_t repeats = std::clamp<int64_t>(
      static_cast<int64_t>(round_seconds / std::max(1e-9, std::min(once.own, once.blas))), 1,
      1000);
  Times t = time_both(repeats);
  for (int r = 1; r < rounds; ++r) {
    const Times next = time_both(repeats);
    t = {std::min(t.own, next.own), std::min(t.blas, next.blas),
         std::min(t.own_setup, next.own_setup)};
  }
  t = {t.own / repeats, t.blas / repeats, t.own_setup / repeats};
  report(key, t.own, t.blas);
  const std::lock_guard<std::mutex> lock(mutex);
  return (mine = {key, measured.emplace(key, t).first->second}).second;
}

template <typename Fn>
double seconds_of(int64_t repeats, const Fn& fn) {
  const auto start = std::chrono::steady_clock::now();
  for (int64_t r = 0; r < repeats; ++r) fn();
  return seconds(start);
}

}  // namespace

template <typename S>
void blas_gemm(int64_t M, int64_t n, int64_t K, const S* A, int64_t lda, bool a_transposed,
               const S* B, bool b_transposed, S* C, int64_t ldc, bool accumulate) {
  if (M <= 0 || n <= 0) return;
  at::Tensor c = view(C, M, n, ldc, false);
  if (K <= 0) {
    if (!accumulate) c.zero_();
    return;
  }
  const at::Tensor a = a_transposed ? view(A, K, M, lda, true) : view(A, M, K, lda, false);
  const at::Tensor b = b_transposed ? view(B, n, K, K, true) : view(B, K, n, n, false);
  if (accumulate) {
    c.addmm_(a, b);
  } else {
    at::mm_out(c, a, b);
  }
}

template <typename S>
void gemm_on(bool blas, int64_t M, int64_t n, int64_t K, const S* A, int64_t lda,
             bool a_transposed, const S* B, bool b_transposed, S* C, int64_t ldc,
             bool accumulate) {
  if (blas) {
    blas_gemm<S>(M, n, K, A, lda, a_transposed, B, b_transposed, C, ldc, accumulate);
  } else {
    gemm<S>(M, n, K, A, lda, a_transposed, B, b_transposed, C, ldc, accumulate);
  }
}

bool blas_wins(double own, double blas) { return blas < 0.95 * own; }

bool products_pinned(bool* blas) {
  const Pin pin = pinned();
  *blas = pin == Pin::Blas;
  return pin != Pin::Auto;
}

bool stored_pinned() { return pinned() == Pin::Stored; }

template <typename S>
Times product_times(Product product, int64_t M, int64_t n, int64_t K, bool a_transposed,
                    bool b_transposed, bool tokens_in_m) {
  // The sample: the token dimension rounded up to a power of two, at most 512
  // (a product of 512 tokens already runs at its large-size rate); its times
  // scale to the call's tokens.
  int64_t& tokens = tokens_in_m ? M : K;
  const int64_t wanted = tokens;
  int64_t bucket = 1;
  while (bucket < std::min<int64_t>(tokens, 512)) bucket *= 2;
  tokens = bucket;
  const Key key{static_cast<int>(product), static_cast<int>(sizeof(S)), M, n, K, a_transposed,
                b_transposed, at::get_num_threads(), at::in_parallel_region(), 0, 0};
  // Operands of the sample's shape, made at the first measurement and filled
  // (values do not change the speed of either implementation; denormals
  // would, so none).
  std::vector<S> a, b, c;
  const Times t = cached_times(key, [&](int64_t repeats) {
    if (a.empty()) a.assign(M * K, S(0.5)), b.assign(K * n, S(0.25)), c.assign(M * n, S(0));
    const int64_t lda = a_transposed ? M : K;
    auto run = [&](bool blas) {
      return seconds_of(repeats, [&] {
        gemm_on<S>(blas, M, n, K, a.data(), lda, a_transposed, b.data(), b_transposed,
                   c.data(), n, false);
      });
    };
    const double own = run(false);
    return Times{own, run(true), 0.0};
  });
  const double scale = static_cast<double>(wanted) / static_cast<double>(bucket);
  return Times{t.own * scale, t.blas * scale, 0.0};
}

template <typename S>
bool prefer_blas(Product product, int64_t M, int64_t n, int64_t K, bool a_transposed,
                 bool b_transposed, bool tokens_in_m) {
  bool blas;
  if (products_pinned(&blas)) return blas;
  const Times t = product_times<S>(product, M, n, K, a_transposed, b_transposed, tokens_in_m);
  return blas_wins(t.own, t.blas);
}

// The gate pass's traffic after a part's step product, in the timings
// below: rows x [c0, c0 + cols) of out (row stride n) read, twice as many
// values of gates (2 per output, at the output's index) read and written.
template <typename Out>
void gate_pass_sweep(const Out* out, Out* gates, int64_t rows, int64_t c0, int64_t cols,
                     int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const Out* o = out + r * n + c0;
    Out* pass = gates + 2 * (r * n + c0);
    for (int64_t i = 0; i < cols; ++i) pass[2 * i] += o[i], pass[2 * i + 1] -= o[i];
  }
}

// The times of a step product's two candidates, product(blas, rows, h, out)
// with blas false (the blocks) and true, run as the loop runs them: batch
// tiles of `grain` rows concurrently, one per thread, `one` filling h. Each
// product is followed by a pass over twice its output, as the loop's gate
// pass reads and writes the step's buffers: what that evicts (MKL packs W
// per call) is what a bare repetition of products would not show; both
// candidates pay the pass alike; gate_pass = false leaves it out (a second
// product of the same step, whose pass the first one's timing holds).
// setup() is the blocks' packing of W.
template <typename In, typename Out, typename Setup, typename Product>
Times tile_times(const Key& key, int64_t B, int64_t grain, int64_t n, int64_t K, In one,
                 bool gate_pass, const Setup& setup, const Product& product) {
  std::vector<In> h;
  std::vector<Out> out, gates;
  return cached_times(key, [&](int64_t repeats) {
    if (h.empty()) h.assign(B * K, one), out.assign(B * n, Out(0)), gates.assign(2 * B * n, Out(0));
    const double pack = seconds_of(repeats, setup);
    auto tiles = [&](bool blas) {
      return seconds_of(repeats, [&] {
        at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
          Out* dst = out.data() + b0 * n;
          product(blas, b1 - b0, h.data() + b0 * K, dst);
          if (gate_pass) gate_pass_sweep<Out>(dst, gates.data() + 2 * b0 * n, b1 - b0, 0, n, n);
        });
      });
    };
    const double own = tiles(false);
    return Times{own, tiles(true), pack};
  });
}

template <typename S>
Times step_times(int64_t B, int64_t grain, int64_t n, int64_t K, bool gate_pass) {
  const Key key{gate_pass ? kRecurrentStep : kInputStep, static_cast<int>(sizeof(S)), B, n, K,
                false, true, at::get_num_threads(), at::in_parallel_region(), 0, 0};
  std::vector<S> w, packed;
  auto pack = [&] {
    if (w.empty()) w.assign(n * K, S(0.25)), packed.resize(packed_size<S>(K, n));
    pack_rhs<S>(w.data(), K, n, /*transpose=*/true, packed.data());
  };
  return tile_times<S, S>(key, B, grain, n, K, S(0.5), gate_pass, pack,
                          [&](bool blas, int64_t rows, const S* h, S* out) {
    if (blas) {
      blas_gemm<S>(rows, n, K, h, K, false, w.data(), true, out, n, false);
    } else {
      small_gemm<S>(rows, h, K, Packed<S>{packed.data(), K, n}, 0, K, out, n, false);
    }
  });
}

Times slice_step_times(int64_t B, int64_t n, int64_t K) {
  const int64_t threads = std::max(1, at::get_num_threads());
  const Key key{kSliceStep, 4, B, n, K, false, true, static_cast<int>(threads),
                at::in_parallel_region(), 0, 0};
  constexpr int64_t VL = at::vec::Vectorized<float>::size();
  std::vector<float> w, packed, h, out, gates;
  auto pack = [&] {
    if (w.empty()) w.assign(n * K, 0.25f), packed.resize(packed_size<float>(K, n));
    pack_rhs<float>(w.data(), K, n, /*transpose=*/true, packed.data());
  };
  return cached_times(key, [&](int64_t repeats) {
    if (h.empty()) h.assign(B * K, 0.5f), out.assign(B * n, 0.0f), gates.assign(2 * B * n, 0.0f);
    const double pack_seconds = seconds_of(repeats, pack);
    // Columns [bound(p), bound(p + 1)) for part p: whole vectors, as
    // for_each_part cuts the units of each gate.
    auto bound = [&](int64_t p) { return n / VL * p / threads * VL; };
    auto slices = [&](bool rows) {
      return seconds_of(repeats, [&] {
        at::parallel_for(0, threads, 1, [&](int64_t p0, int64_t p1) {
          const int64_t c0 = bound(p0), cols = bound(p1) - c0;
          if (rows)
            rows_times_wt_f32(B, h.data(), K, w.data() + c0 * K, cols, K, nullptr,
                              out.data() + c0, n);
          else
            small_gemm<float>(B, h.data(), K,
                              packed_columns(Packed<float>{packed.data(), K, n}, c0, cols), 0, K,
                              out.data() + c0, n, false);
          gate_pass_sweep(out.data(), gates.data(), B, c0, cols, n);
        });
      });
    };
    const double blocks = slices(false);
    return Times{blocks, slices(true), pack_seconds};
  });
}

namespace {

// The rows of the bfloat16 product g (rows, K; row stride ldg) @ wv (K, n),
// through ATen's bfloat16 matmul, as bit patterns: consume(r0, r1, p) gets
// rows [r0, r1) at p. The products go, a chunk of rows at a time, into a
// buffer of the calling thread that is kept (about 1 MiB, so a chunk is
// still in cache when consumed), not into a fresh tensor per call: a step's
// product of 64 rows x 1024 columns is 128 KiB, glibc's mmap threshold, so
// each step could map, fault in and unmap its own.
template <typename Consume>
void aten_bf16_rows(int64_t rows, int64_t n, int64_t K, const uint16_t* g, int64_t ldg,
                    const at::Tensor& wv, const Consume& consume) {
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16);
  const int64_t chunk = std::clamp<int64_t>((int64_t{1} << 19) / n, 1, rows);
  thread_local std::vector<uint16_t> scratch;
  if (static_cast<int64_t>(scratch.size()) < chunk * n) scratch.resize(chunk * n);
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
    const int64_t r1 = std::min(rows, r0 + chunk);
    const at::Tensor gv =
        at::from_blob(const_cast<uint16_t*>(g + r0 * ldg), {r1 - r0, K}, {ldg, 1}, bf16);
    at::Tensor pv = at::from_blob(scratch.data(), {r1 - r0, n}, bf16);
    at::mm_out(pv, gv, wv);
    consume(r0, r1, scratch.data());
  }
}

}  // namespace

void aten_bf16_product(int64_t rows, int64_t n, int64_t K, const uint16_t* h, const uint16_t* w,
                       float* out, const float* bias) {
  if (rows <= 0) return;
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16);
  const at::Tensor wv = at::from_blob(const_cast<uint16_t*>(w), {n, K}, bf16);
  aten_bf16_rows(rows, n, K, h, K, wv.t(), [&](int64_t r0, int64_t r1, const uint16_t* p) {
    if (bias == nullptr) return from_bf16_row(p, out + r0 * n, (r1 - r0) * n);
    for (int64_t r = 0; r < r1 - r0; ++r) {  // each row widened, then biased while in L1
      float* o = out + (r0 + r) * n;
      from_bf16_row(p + r * n, o, n);
      for (int64_t j = 0; j < n; ++j) o[j] += bias[j];
    }
  });
}

void aten_bf16_product_nn(int64_t rows, int64_t n, int64_t K, const uint16_t* g, int64_t ldg,
                          const uint16_t* w, float* out, bool accumulate) {
  if (rows <= 0) return;
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16);
  const at::Tensor wv = at::from_blob(const_cast<uint16_t*>(w), {K, n}, bf16);
  aten_bf16_rows(rows, n, K, g, ldg, wv, [&](int64_t r0, int64_t r1, const uint16_t* p) {
    float* o = out + r0 * n;
    if (!accumulate) return from_bf16_row(p, o, (r1 - r0) * n);
    for (int64_t i = 0; i < (r1 - r0) * n; ++i)
      o[i] += static_cast<float>(c10::BFloat16(p[i], c10::BFloat16::from_bits()));
  });
}

// A bfloat16 single step's operands x (B, I), h (B, P), W_ih (GH, I) and
// W_hh (GH, P), and each way layer_fwd may run its two products
// x @ W_ih^T and h @ W_hh^T, to time them.
struct Bf16StepSample {
  at::Tensor x, h, w_ih, w_hh, out;

  Bf16StepSample(int64_t B, int64_t I, int64_t P, int64_t GH) {
    const auto bf16 = at::TensorOptions().dtype(at::kBFloat16);
    x = at::full({B, I}, 0.5, bf16), h = at::full({B, P}, 0.5, bf16);
    w_ih = at::full({GH, I}, 0.25, bf16), w_hh = at::full({GH, P}, 0.25, bf16);
    out = at::empty({B, GH}, at::kFloat);
  }
  void widened() const {  // both weights widened to fp32, MKL's sgemm
    at::mm(x.to(at::kFloat), w_ih.to(at::kFloat).t());
    at::mm(h.to(at::kFloat), w_hh.to(at::kFloat).t());
  }
  void in_bf16() const {  // ATen's bfloat16 matmul, its result widened
    at::mm(x, w_ih.t()).to(at::kFloat);
    at::mm(h, w_hh.t()).to(at::kFloat);
  }
  void rows_kernel() const {  // gemv_bf16.h
    const int64_t B = x.size(0), I = x.size(1), P = h.size(1), GH = w_ih.size(0);
    float* o = out.data_ptr<float>();
    rows_times_wt_bf16(B, bits(x), I, bits(w_ih), GH, I, nullptr, o, GH);
    rows_times_wt_bf16(B, bits(h), P, bits(w_hh), GH, P, nullptr, o, GH);
  }
  static const uint16_t* bits(const at::Tensor& t) {
    return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>());
  }
};

bool prefer_bf16_single_step(int64_t B, int64_t I, int64_t P, int64_t GH) {
  bool aten;
  if (products_pinned(&aten)) return aten;
  const Key key{kBf16Single, 2, B, GH, I, false, false, at::get_num_threads(),
                at::in_parallel_region(), P, 0};
  std::optional<Bf16StepSample> sample;
  const Times t = cached_times(key, [&](int64_t repeats) {
    if (!sample) sample.emplace(B, I, P, GH);
    return Times{seconds_of(repeats, [&] { sample->widened(); }),
                 seconds_of(repeats, [&] { sample->in_bf16(); }), 0.0};
  });
  return blas_wins(t.own, t.blas);
}

bool prefer_gemv_bf16_single_step(int64_t B, int64_t I, int64_t P, int64_t GH, bool in_bf16) {
  if (!kBf16RowsKernels) return false;
  bool aten;
  if (products_pinned(&aten)) return !aten;
  const Key key{kBf16Gemv, 2, B, GH, I, in_bf16, false, at::get_num_threads(),
                at::in_parallel_region(), P, 0};
  std::optional<Bf16StepSample> sample;
  const Times t = cached_times(key, [&](int64_t repeats) {
    if (!sample) sample.emplace(B, I, P, GH);
    // Against the way prefer_bf16_single_step chose, timed side by side.
    return Times{seconds_of(repeats, [&] { sample->rows_kernel(); }),
                 seconds_of(repeats, [&] { in_bf16 ? sample->in_bf16() : sample->widened(); }),
                 0.0};
  });
  return !blas_wins(t.own, t.blas);
}

bool prefer_rows_f32_single_step(int64_t B, int64_t I, int64_t P, int64_t GH) {
  if (!kBf16RowsKernels) return false;
  bool aten;
  if (products_pinned(&aten)) return !aten;
  const Key key{kF32Single, 4, B, GH, I, false, false, at::get_num_threads(),
                at::in_parallel_region(), 1, P};
  struct Operands {
    at::Tensor x, h, w_ih, w_hh, b;
  };
  std::optional<Operands> op;
  const Times t = cached_times(key, [&](int64_t repeats) {
    if (!op) {
      const auto f32 = at::TensorOptions().dtype(at::kFloat);
      op = Operands{at::full({B, I}, 0.5, f32), at::full({B, P}, 0.5, f32),
                    at::full({GH, I}, 0.25, f32), at::full({GH, P}, 0.25, f32),
                    at::full({GH}, 0.125, f32)};
    }
    const float* b = op->b.data_ptr<float>();
    // Each as layer_fwd runs it: a fresh output per product.
    auto rows = [&](const at::Tensor& a, const at::Tensor& w) {
      const at::Tensor out = at::empty({B, GH}, a.options());
      rows_times_wt_f32(B, a.data_ptr<float>(), a.size(1), w.data_ptr<float>(), GH, a.size(1), b,
                        out.data_ptr<float>(), GH);
    };
    return Times{seconds_of(repeats, [&] { rows(op->x, op->w_ih), rows(op->h, op->w_hh); }),
                 seconds_of(repeats, [&] {
                   at::addmm(op->b, op->x, op->w_ih.t()), at::addmm(op->b, op->h, op->w_hh.t());
                 }),
                 0.0};
  });
  return !blas_wins(t.own, t.blas);
}

bool prefer_aten_bf16_backward_step(int64_t B, int64_t grain, int64_t n, int64_t K,
                                    int64_t steps) {
  bool aten;
  if (products_pinned(&aten)) return aten;
  const Key key{kBf16BackStep, 2, B, n, K, false, false, at::get_num_threads(),
                at::in_parallel_region(), 0, 0};
  std::vector<uint16_t> w, packed, ukernel;
  auto pack = [&] {
    if (w.empty()) w.assign(K * n, 0x3e80), packed.resize(packed_size_bf16(K, n));  // 0.25
    pack_bf16(w.data(), K, n, packed.data());
  };
  const Times t = tile_times<uint16_t, float>(
      key, B, grain, n, K, uint16_t{0x3f00}, /*gate_pass=*/true, pack,  // dG = 0.5
      [&](bool on_aten, int64_t rows, const uint16_t* g, float* out) {
        // ATen's candidate as the backward runs it (aten_bf16_backward_step in
        // step_products.h): the ukernel where it runs, packed in the untimed
        // warm-up (a call packs it once: W_hh 1024 x 1024 in 0.2 ms on an
        // Emerald Rapids core, against 64 steps' products of ~40 us at 8 rows).
        if (on_aten && ukernel_bf16_available()) {
          if (ukernel.empty()) {
            ukernel.resize(ukernel_packed_size(K, n));
            pack_ukernel_bf16(w.data(), K, n, /*transposed=*/false, ukernel.data());
          }
          ukernel_bf16_product(rows, g, K, UkernelBf16{ukernel.data(), K, n}, 0, K, out, n, false);
        } else if (on_aten) {
          aten_bf16_product_nn(rows, n, K, g, K, w.data(), out, false);
        } else {
          small_gemm_bf16(rows, g, K, PackedBf16{packed.data(), K, n}, 0, K, out, n, false);
        }
      });
  return blas_wins(steps * t.own + t.own_setup, steps * t.blas);
}

bool prefer_rows_bf16_step(int64_t B, int64_t grain, int64_t GH, int64_t P) {
  if (!kBf16RowsKernels) return false;
  bool blas;
  if (products_pinned(&blas)) return !blas;
  // Against the float32 loop's step product as step_times chooses it, both
  // run as the loop runs them (tile_times): `own` the rows kernel on W_hh's
  // bfloat16, `blas` that product on its fp32 copy.
  const Times fp32 = step_times<float>(B, grain, GH, P, /*gate_pass=*/true);
  const bool fp32_blas = blas_wins(fp32.own, fp32.blas);
  const Key key{kBf16RowsStep, 2, B, GH, P, false, false, at::get_num_threads(),
                at::in_parallel_region(), 0, 0};
  std::vector<float> w, packed;
  std::vector<uint16_t> w16;
  auto operands = [&] {  // made once; the blocks' packing is step_times' to count
    if (!w16.empty()) return;
    w16.assign(GH * P, uint16_t{0x3E80}), w.assign(GH * P, 0.25f);  // 0.25
    packed.resize(packed_size<float>(P, GH));
    pack_rhs<float>(w.data(), P, GH, /*transpose=*/true, packed.data());
  };
  const Times t = tile_times<float, float>(
      key, B, grain, GH, P, 0.5f, /*gate_pass=*/true, operands,
      [&](bool fp32_copy, int64_t rows, const float* h, float* out) {
        if (!fp32_copy) {
          rows_times_wt_bf16(rows, h, P, w16.data(), GH, P, nullptr, out, GH);
        } else if (fp32_blas) {
          blas_gemm<float>(rows, GH, P, h, P, false, w.data(), true, out, GH, false);
        } else {
          small_gemm<float>(rows, h, P, Packed<float>{packed.data(), P, GH}, 0, P, out, GH, false);
        }
      });
  return t.own < t.blas;
}

Times bf16_packing_seconds(int64_t n, int64_t P, int64_t I, bool per_step) {
  const Key key{kBf16Packing, 2, I, n, P, per_step, true, at::get_num_threads(),
                at::in_parallel_region(), 0, 0};
  std::vector<uint16_t> w, packed, ukernel;
  return cached_times(key, [&](int64_t repeats) {
    const int64_t K = std::max(P, I);
    if (w.empty()) w.assign(n * K, 0x3e80), packed.resize(packed_size_bf16(K, n));  // 0.25
    const double blocks = seconds_of(repeats, [&] {
      pack_transposed_bf16(w.data(), P, n, packed.data());
      if (per_step) pack_transposed_bf16(w.data(), I, n, packed.data());
    });
    if (!ukernel_bf16_available()) return Times{blocks, 0.0, blocks};
    ukernel.resize(ukernel_packed_size(K, n));
    const double aten = seconds_of(repeats, [&] {
      pack_ukernel_bf16(w.data(), P, n, /*transposed=*/true, ukernel.data());
      pack_ukernel_bf16(w.data(), I, n, /*transposed=*/true, ukernel.data());
    });
    return Times{blocks, aten, blocks};
  });
}

bool sample_prefers_second(int element_size, int64_t B, int64_t I, int64_t GH, int64_t P,
                           int64_t steps, bool reverse, bool bias, double first_setup,
                           double second_setup, double scale,
                           c10::function_ref<void()> first, c10::function_ref<void()> second) {
  const Key key{kBlasSteps, element_size, B, GH, I, reverse, bias, at::get_num_threads(),
                at::in_parallel_region(), steps, P};
  // Alternated, so that a change of clock or load reaches both, and each the
  // fastest of its runs: rounds of >= 5 ms, three of them, as a sample of a
  // small layer lasts ~0.2 ms and one interrupt in a few runs could decide.
  const Times t = cached_times(key, [&](int64_t repeats) {
    double a = 1e30, b = 1e30;
    for (int64_t r = 0; r < repeats; ++r) {
      a = std::min(a, seconds_of(1, first));
      b = std::min(b, seconds_of(1, second));
    }
    return Times{a * repeats, b * repeats, 0.0};  // per run, as cached_times divides
  }, /*round_seconds=*/5e-3, /*rounds=*/3);
  auto call = [&](double sample, double setup) {
    setup = std::min(setup, sample);
    return setup + (sample - setup) * scale;
  };
  return call(t.blas, second_setup) < call(t.own, first_setup);
}

void race_calls(int element_size, int64_t B, int64_t I, int64_t GH, int64_t T, bool reverse,
                bool bias, c10::function_ref<void()> first, c10::function_ref<void()> second) {
  // The first call of each untimed; then alternating until each has three
  // timed calls of >= 2 ms in all (one timed 0.1 ms call scatters by 30-40%
  // on a 2-core VM: a race of one such call each once kept B = 1, H = 64 on
  // ATen's LSTM at 0.81x of torch.nn, where the loop runs 1.6x), or two calls
  // each of >= 20 ms with a winner by 10% (at B = 64, H = 1024 a call takes
  // seconds; single training steps there scattered by 15%, and one pair of
  // them put oneDNN 16% behind where the two then ran equal), or 64 timed
  // calls each. fastrnn/backends/onednn_training.py races training calls by
  // the same rule.
  constexpr int kWarmups = 2, kMinTimed = 3, kClearTimed = 2, kMaxTimed = 64;
  constexpr double kMinSeconds = 2e-3, kLongCall = 2e-2;
  int64_t bucket = 1;
  while (bucket < T) bucket *= 2;
  const Key key{kAtenLstm, element_size, B, GH, I, reverse, bias, at::get_num_threads(),
                at::in_parallel_region(), bucket, 0};
  struct Race {
    int calls = 0, decided = -1, timed[2] = {0, 0};
    double best[2] = {1e30, 1e30}, total[2] = {0, 0};
  };
  // Each thread remembers the last race it saw decided, so that a layer
  // called in a loop (a decoder stepping T = 1) takes no lock.
  thread_local std::pair<Key, int> last{Key{}, -1};
  if (last.second >= 0 && last.first == key) return (last.second ? second : first)();
  static std::mutex mutex;
  static std::map<Key, Race> races;
  int call, pick;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    Race& race = races[key];
    call = race.calls++;
    pick = race.decided >= 0 ? race.decided : call % 2;
    if (race.decided >= 0) call = -1, last = {key, pick};  // not racing
  }
  const c10::function_ref<void()> run = pick ? second : first;
  if (call < 0) return run();
  const double took = seconds_of(1, run);
  if (call < kWarmups) return;
  const std::lock_guard<std::mutex> lock(mutex);
  Race& race = races[key];
  if (race.decided >= 0) return;
  ++race.timed[pick], race.total[pick] += took, race.best[pick] = std::min(race.best[pick], took);
  const int n = std::min(race.timed[0], race.timed[1]);
  const double fast = std::min(race.best[0], race.best[1]);
  const double slow = std::max(race.best[0], race.best[1]);
  const bool enough = n >= kMinTimed && std::min(race.total[0], race.total[1]) >= kMinSeconds;
  const bool clear = n >= kClearTimed && fast >= kLongCall && fast < 0.9 * slow;
  if (enough || clear || n >= kMaxTimed) {
    race.decided = race.best[1] < race.best[0] ? 1 : 0;
    report(key, race.best[0], race.best[1]);
  }
}

template void blas_gemm<float>(int64_t, int64_t, int64_t, const float*, int64_t, bool,
                               const float*, bool, float*, int64_t, bool);
template void blas_gemm<double>(int64_t, int64_t, int64_t, const double*, int64_t, bool,
                                const double*, bool, double*, int64_t, bool);
template void gemm_on<float>(bool, int64_t, int64_t, int64_t, const float*, int64_t, bool,
                             const float*, bool, float*, int64_t, bool);
template void gemm_on<double>(bool, int64_t, int64_t, int64_t, const double*, int64_t, bool,
                              const double*, bool, double*, int64_t, bool);
template bool prefer_blas<float>(Product, int64_t, int64_t, int64_t, bool, bool, bool);
template bool prefer_blas<double>(Product, int64_t, int64_t, int64_t, bool, bool, bool);
template Times product_times<float>(Product, int64_t, int64_t, int64_t, bool, bool, bool);
template Times product_times<double>(Product, int64_t, int64_t, int64_t, bool, bool, bool);
template Times step_times<float>(int64_t, int64_t, int64_t, int64_t, bool);
template Times step_times<double>(int64_t, int64_t, int64_t, int64_t, bool);

}  // namespace fastrnn::cpu
