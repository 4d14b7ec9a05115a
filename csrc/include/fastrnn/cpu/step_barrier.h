// The per-step barrier of threads that share one time loop by splitting the
// hidden units (see for_each_part in steps.h): step t+1 reads every unit of
// h_t, which each thread produced only a slice of.
//
// Counting, not sense-reversing: the counter only grows, and a thread's k-th
// wait returns once k * parts arrivals have been counted. A thread arrives with
// the number of parts it runs (at::parallel_for may hand one thread several
// adjacent parts when its team is smaller than asked for), so the total per
// step is always `parts`, however the parts landed on threads.
//
// Waiting spins briefly (a step of a split loop takes microseconds) and then
// yields: on an oversubscribed machine the thread being waited for may be
// descheduled, and spinning would only keep it off the core longer.
#pragma once

#include <stdint.h>

#include <atomic>
#include <thread>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace fastrnn::cpu {

class StepBarrier {
 public:
  explicit StepBarrier(int64_t parts) : parts_(parts) {}

  // One thread's handle: its own count of completed waits.
  class Member {
   public:
    Member(StepBarrier* barrier, int64_t weight) : barrier_(barrier), weight_(weight) {}
    // Returns when every part has arrived as often as this member has; a
    // no-op for a member that runs all parts itself (or without a barrier).
    void wait() {
      if (barrier_ == nullptr || weight_ == barrier_->parts_) return;
      barrier_->arrive_and_wait(weight_, ++waits_);
    }

   private:
    StepBarrier* barrier_;
    int64_t weight_;
    int64_t waits_ = 0;
  };

 private:
  static constexpr int kSpins = 4000;  // ~ tens of microseconds of pause

  void arrive_and_wait(int64_t weight, int64_t round) {
    // acq_rel: this thread's writes of the step are released to the others,
    // and their writes acquired once the count shows they arrived.
    arrived_.fetch_add(weight, std::memory_order_acq_rel);
    const int64_t target = round * parts_;
    for (int spins = 0; arrived_.load(std::memory_order_acquire) < target;) {
      if (++spins < kSpins) {
#if defined(__x86_64__) || defined(_M_X64)
        _mm_pause();
#endif
      } else {
        std::this_thread::yield();
      }
    }
  }

  alignas(64) std::atomic<int64_t> arrived_{0};
  alignas(64) const int64_t parts_;
};

}  // namespace fastrnn::cpu
