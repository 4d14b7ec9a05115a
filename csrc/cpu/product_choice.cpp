// Own blocks or BLAS, measured (contract: fastrnn/cpu/product_choice.h).
#include "fastrnn/cpu/product_choice.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>
#include <vector>

#include "fastrnn/cpu/gemm.h"
#include "fastrnn/cpu/small_gemm.h"

namespace fastrnn::cpu {
namespace {

// op(X) for X (rows, cols) with row stride ld, as an ATen view of the memory.
template <typename S>
at::Tensor view(const S* X, int64_t rows, int64_t cols, int64_t ld, bool transposed) {
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<S>::value);
  at::Tensor t = at::from_blob(const_cast<S*>(X), {rows, cols}, {ld, 1}, options);
  return transposed ? t.t() : t;
}

enum class Pin { Auto, Own, Blas };

Pin pinned() {
  const char* env = std::getenv("FASTRNN_CPU_PRODUCTS");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "auto") == 0) return Pin::Auto;
  if (std::strcmp(env, "own") == 0) return Pin::Own;
  TORCH_CHECK(std::strcmp(env, "blas") == 0,
              "fastrnn: FASTRNN_CPU_PRODUCTS must be own, blas or auto, got '", env, "'");
  return Pin::Blas;
}

double seconds(const std::chrono::steady_clock::time_point& start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// (product, element size, M, n, K with the token dimension bucketed,
// transposes, threads, inside a parallel region)
using Key = std::tuple<int, int, int64_t, int64_t, int64_t, bool, bool, int, bool>;

// The step product's one extra Product value in the cache key, and the
// number of product values (Product's five and this one).
constexpr int kRecurrentStep = -1;
constexpr size_t kProducts = 6;

// The cached times for `key`, measured by time_both(repeats) -> Times for
// `repeats` runs of each the first time. Small products repeat until a run
// of them takes ~0.2 ms, so that timer resolution and one-off noise do not
// decide.
template <typename Measure>
Times cached_times(const Key& key, const Measure& time_both) {
  // Each thread remembers the last times per product, so that a loop of
  // calls of one shape (a cell stepped by a decoder) takes no lock.
  thread_local std::array<std::pair<Key, Times>, kProducts> last{};
  auto& mine = last[static_cast<size_t>(std::get<0>(key) - kRecurrentStep)];
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
      static_cast<int64_t>(2e-4 / std::max(1e-9, std::min(once.own, once.blas))), 1, 1000);
  Times t = time_both(repeats);
  const Times t2 = time_both(repeats);
  t = {std::min(t.own, t2.own) / repeats, std::min(t.blas, t2.blas) / repeats,
       std::min(t.own_setup, t2.own_setup) / repeats};
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
                b_transposed, at::get_num_threads(), at::in_parallel_region()};
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

template <typename S>
Times step_times(int64_t B, int64_t grain, int64_t n, int64_t K) {
  const Key key{kRecurrentStep, static_cast<int>(sizeof(S)), B, n, K, false, true,
                at::get_num_threads(), at::in_parallel_region()};
  std::vector<S> h, w, out, packed;
  return cached_times(key, [&](int64_t repeats) {
    if (h.empty()) {
      h.assign(B * K, S(0.5)), w.assign(n * K, S(0.25)), out.assign(B * n, S(0));
      packed.resize(packed_size<S>(K, n));
    }
    const double pack = seconds_of(
        repeats, [&] { pack_rhs<S>(w.data(), K, n, /*transpose=*/true, packed.data()); });
    const Packed<S> w_t{packed.data(), K, n};
    auto tiles = [&](bool blas) {
      return seconds_of(repeats, [&] {
        at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
          const S* rows = h.data() + b0 * K;
          S* dst = out.data() + b0 * n;
          if (blas) {
            blas_gemm<S>(b1 - b0, n, K, rows, K, false, w.data(), true, dst, n, false);
          } else {
            small_gemm<S>(b1 - b0, rows, K, w_t, 0, K, dst, n, /*accumulate=*/false);
          }
        });
      });
    };
    const double own = tiles(false);
    return Times{own, tiles(true), pack};
  });
}

template <typename S>
bool prefer_blas_step(int64_t B, int64_t grain, int64_t n, int64_t K, int64_t steps) {
  bool blas;
  if (products_pinned(&blas)) return blas;
  const Times t = step_times<S>(B, grain, n, K);
  // The loop packs W_hh once per call for its `steps` products. BLAS must win
  // by 10% here: the sample repeats one product with nothing between, where
  // the loop's gate passes evict what MKL packs per call (at B = 64, H = 1024
  // a tie in the sample, 105 against 107 GFLOP/s, ran the loop 10% slower).
  return steps * t.blas < 0.9 * (steps * t.own + t.own_setup);
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
template bool prefer_blas_step<float>(int64_t, int64_t, int64_t, int64_t, int64_t);
template Times product_times<float>(Product, int64_t, int64_t, int64_t, bool, bool, bool);
template Times product_times<double>(Product, int64_t, int64_t, int64_t, bool, bool, bool);
template Times step_times<float>(int64_t, int64_t, int64_t, int64_t);
template Times step_times<double>(int64_t, int64_t, int64_t, int64_t);
template bool prefer_blas_step<double>(int64_t, int64_t, int64_t, int64_t, int64_t);

}  // namespace fastrnn::cpu
