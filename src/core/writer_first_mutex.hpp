#pragma once
// A shared mutex whose exclusive lockers cannot be starved by a stream of shared ones, and a shared_ptr
// slot that threads load and replace.

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <utility>

namespace shoal::detail {

/// Once an exclusive locker waits, new shared lockers wait until no exclusive locker is pending, while
/// the present ones drain. std::shared_mutex is glibc's rwlock, which prefers readers: with a few
/// threads searching without pause their shared holds overlap, the count of readers never reaches
/// zero, and a write waited for as long as the searches went on (a remove on an HNSW index under four
/// searching threads had not returned after 30 s, an IVF-Flat remove 60 s; six threads writing to a
/// collection kept a checkpoint waiting for more than 120 s).
///
/// A shared locker reads one atomic count before it takes the rwlock (no write to a shared cache line
/// beyond the rwlock's own: an inverted list's scan takes one per probed list); it sleeps on the count
/// (C++20 atomic wait) while a writer is pending. Not recursive in shared mode: a thread that holds it
/// shared and locks it shared again waits forever once a writer is pending. shoal takes these locks once
/// per public call (an IVF search its probed lists in ascending order, beside one writer at a time),
/// and its parallel loops are isolated (core/parallel.hpp), so a thread waiting inside one never runs
/// another call's task.
class writer_first_mutex {
 public:
  void lock() {
    pending_.fetch_add(1, std::memory_order_acq_rel);
    inner_.lock();
  }
  void unlock() {
    inner_.unlock();
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_all();
  }
  void lock_shared() {
    for (std::uint32_t p = pending_.load(std::memory_order_acquire); p != 0;
         p = pending_.load(std::memory_order_acquire))
      pending_.wait(p, std::memory_order_acquire);
    inner_.lock_shared();
  }
  void unlock_shared() { inner_.unlock_shared(); }

 private:
  std::atomic<std::uint32_t> pending_{0};  // exclusive lockers waiting or holding
  std::shared_mutex inner_;
};

/// A shared_ptr that threads load and replace, under a mutex of its own. std::atomic<std::shared_ptr>
/// in libstdc++ 12 releases its internal lock with a relaxed store after a load, so a load and the next
/// store race in ThreadSanitizer's model (a collection search against take_down or a rebalance's swap).
template <class T>
class shared_slot {
 public:
  [[nodiscard]] std::shared_ptr<T> load() const {
    const std::lock_guard lock(mutex_);
    return value_;
  }
  void store(std::shared_ptr<T> value) {
    {
      const std::lock_guard lock(mutex_);
      value_.swap(value);
    }
    // The previous value is released here, outside the lock (its destructor may be long).
  }

 private:
  mutable std::mutex mutex_;
  std::shared_ptr<T> value_;
};

}  // namespace shoal::detail
