#pragma once
// A shared mutex whose exclusive lockers cannot be starved by a stream of shared ones.

#include <mutex>
#include <shared_mutex>

namespace shoal::detail {

/// Once an exclusive locker waits, new shared lockers queue behind it (at the gate) while the present
/// ones drain. std::shared_mutex is glibc's rwlock, which prefers readers: with a few threads searching
/// without pause their shared holds overlap, the count of readers never reaches zero, and a remove,
/// upsert, save or checkpoint waited for as long as the searches went on (a remove on an HNSW index
/// under four searching threads had not returned after 30 s; six threads writing to a collection kept a
/// checkpoint waiting for more than 120 s).
///
/// Not recursive in shared mode: a thread that holds it shared and locks it shared again waits forever
/// once a writer is queued. shoal takes these locks once per public call, and its parallel loops are
/// isolated (core/parallel.hpp), so a thread waiting inside one never runs another call's task.
class writer_first_mutex {
 public:
  void lock() {
    const std::lock_guard gate(gate_);  // holds off new shared lockers while the present ones drain
    inner_.lock();
  }
  void unlock() { inner_.unlock(); }
  void lock_shared() {
    { const std::lock_guard gate(gate_); }
    inner_.lock_shared();
  }
  void unlock_shared() { inner_.unlock_shared(); }

 private:
  std::mutex gate_;
  std::shared_mutex inner_;
};

}  // namespace shoal::detail
