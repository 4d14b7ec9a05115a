// Own blocks or BLAS, measured (contract: fastrnn/cpu/product_choice.h).
#include "fastrnn/cpu/product_choice.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "fastrnn/cpu/gemm.h"

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

template <typename S>
bool prefer_blas(Product product, int64_t M, int64_t n, int64_t K, bool a_transposed,
                 bool b_transposed, bool tokens_in_m) {
  const Pin pin = pinned();
  if (pin != Pin::Auto) return pin == Pin::Blas;
  // The sample: the token dimension rounded up to a power of two, at most 512
  // (a product of 512 tokens already runs at its large-size rate).
  int64_t& tokens = tokens_in_m ? M : K;
  int64_t bucket = 1;
  while (bucket < std::min<int64_t>(tokens, 512)) bucket *= 2;
  tokens = bucket;
  const Key key{static_cast<int>(product), static_cast<int>(sizeof(S)), M, n, K, a_transposed,
                b_transposed, at::get_num_threads(), at::in_parallel_region()};
  static std::mutex mutex;
  static std::map<Key, bool> chosen;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    const auto found = chosen.find(key);
    if (found != chosen.end()) return found->second;
  }
  // Operands of the sample's shape, filled (values do not change the speed of
  // either implementation; denormals would, so none).
  std::vector<S> a(M * K, S(0.5)), b(K * n, S(0.25)), c(M * n, S(0));
  const int64_t lda = a_transposed ? M : K;
  auto run = [&](bool blas) {
    const auto start = std::chrono::steady_clock::now();
    gemm_on<S>(blas, M, n, K, a.data(), lda, a_transposed, b.data(), b_transposed, c.data(), n,
               false);
    return seconds(start);
  };
  // One warm-up each, then the best of two, alternated.
  run(false), run(true);
  double own = run(false), blas = run(true);
  own = std::min(own, run(false)), blas = std::min(blas, run(true));
  const std::lock_guard<std::mutex> lock(mutex);
  return chosen.emplace(key, blas < own).first->second;
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

}  // namespace fastrnn::cpu
