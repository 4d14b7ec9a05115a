// Cached large blocks (contract: fastrnn/cpu/block_cache.h).
#include "fastrnn/cpu/block_cache.h"

#if __has_include(<sys/mman.h>)
#include <sys/mman.h>  // madvise, MADV_HUGEPAGE
#endif

#include <c10/util/accumulate.h>

#include <cstdlib>
#include <map>
#include <mutex>

namespace fastrnn::cpu {
namespace {

// From 2 MiB (a huge page, so a block's capacity is under twice its request):
// below glibc's mmap threshold (128 KiB at first, raised to each mapped block
// freed, at most 32 MiB) a block comes from the heap, but the heap's free top
// goes back to the system past twice that threshold, so whether a 2-32 MiB
// buffer is faulted in afresh on each call depended on the process's
// history: a bfloat16 LSTM training call at B = 64, H = 256, T = 64 faulted
// in its 21 MiB workspace and 16 MiB projection (9184 pages) on every call
// in some processes and never in others.
constexpr size_t kMinBytes = size_t{2} << 20;
constexpr size_t kAlign = size_t{2} << 20;      // x86-64's huge page

size_t cache_limit() {
  const char* env = std::getenv("FASTRNN_CPU_CACHE_MB");
  return (env != nullptr && *env != '\0' ? std::strtoull(env, nullptr, 10) : 1024) << 20;
}

class BlockCache {
 public:
  // A block of at least `bytes`: the smallest cached one of at most twice
  // that, else a new one (capacity rounded up to huge pages).
  void* take(size_t bytes, size_t* capacity) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      const auto found = free_.lower_bound(bytes);
      if (found != free_.end() && found->first <= 2 * bytes) {
        void* block = found->second;
        *capacity = found->first;
        cached_ -= found->first;
        free_.erase(found);
        return block;
      }
    }
    *capacity = (bytes + kAlign - 1) / kAlign * kAlign;
    void* block = nullptr;
    if (posix_memalign(&block, kAlign, *capacity) != 0) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    madvise(block, *capacity, MADV_HUGEPAGE);  // before the first touch; a no-op where THP is off
#endif
    return block;
  }

  void give(void* block, size_t capacity) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (cached_ + capacity <= limit_) {
        free_.emplace(capacity, block);
        cached_ += capacity;
        return;
      }
    }
    std::free(block);
  }

  size_t limit() const { return limit_; }

 private:
  const size_t limit_ = cache_limit();
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;  // capacity -> unused block
  size_t cached_ = 0;
};

// Never destroyed: tensors freed during interpreter shutdown still give back.
BlockCache& cache() {
  static BlockCache* instance = new BlockCache();
  return *instance;
}

}  // namespace

at::Tensor cached_empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  const size_t bytes = static_cast<size_t>(c10::multiply_integers(sizes)) * opts.dtype().itemsize();
  if (bytes < kMinBytes || cache().limit() == 0) return at::empty(sizes, opts);
  size_t capacity = 0;
  void* block = cache().take(bytes, &capacity);
  return at::from_blob(
      block, sizes, [capacity](void* p) { cache().give(p, capacity); }, opts);
}

}  // namespace fastrnn::cpu
