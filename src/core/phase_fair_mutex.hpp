#pragma once
// A reader-writer lock under which neither readers nor writers starve (phase-fair), and a shared_ptr slot
// that threads load and replace.

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>

namespace shoal::detail {

/// A phase-fair reader-writer lock: read and write phases alternate. A writer waits for the readers
/// that came before it and holds off those that come after; when it lets go, every reader that waited
/// gets in before the next writer does, and writers take turns in the order they came. So a stream of
/// readers cannot starve a writer, nor a stream of writers the readers.
///
/// Both have happened with simpler locks. glibc's rwlock (`std::shared_mutex`) prefers readers: with a
/// few threads searching without pause their shared holds overlap, the count of readers never reaches
/// zero, and a write waited as long as the searches went on (a remove on an HNSW index under four
/// searching threads had not returned after 30 s, an IVF-Flat remove 60 s; six threads writing to a
/// collection kept a checkpoint waiting for more than 120 s). The writer-first lock that replaced it
/// (new readers waited while any writer was pending) turned that around: one thread removing without
/// pause kept a searching thread to 7 searches in 10 s (100,000 × 64, HNSW, l2; session 36,
/// `benchmarks/results/hnsw-walk-stall.cpp`), because the remover locked again before the woken
/// readers got in.
///
/// The algorithm is Brandenburg and Anderson's ticket-based phase-fair lock (PF-T, "Reader-writer
/// synchronization for shared-memory multiprocessor real-time systems", ECRTS 2009), with blocking
/// waits (C++20 atomic wait / notify: a write can hold the lock for a reachability walk) in place of
/// spinning. `rin_` counts arriving readers in its upper bits and carries the writer's presence and
/// phase bits in its low two; `rout_` counts departing readers; `win_` / `wout_` are the writers' ticket
/// counters. A reader adds itself to `rin_` (one atomic add: the only write a shared locker makes
/// besides its add to `rout_` on the way out) and enters unless a writer is present; then it waits for
/// the writer bits to change, which the writer's unlock does. A writer takes a ticket, waits its turn,
/// sets its bits in `rin_` (phase = ticket parity, so the next writer's bits differ) and waits until
/// as many readers have left as had arrived. The counters wrap; only equality is compared.
///
/// Not recursive in shared mode: a thread that holds it shared and locks it shared again waits forever
/// once a writer is waiting. shoal takes these locks once per public call (an IVF search its probed
/// lists in ascending order, beside one writer at a time), and its parallel loops are isolated
/// (core/parallel.hpp), so a thread waiting inside one never runs another call's task.
class phase_fair_mutex {
 public:
  void lock() {
    const std::uint32_t ticket = win_.fetch_add(1, std::memory_order_relaxed);
    for (std::uint32_t w = wout_.load(std::memory_order_acquire); w != ticket;
         w = wout_.load(std::memory_order_acquire))
      wout_.wait(w, std::memory_order_acquire);
    const std::uint32_t arrived = rin_.fetch_add(present | (ticket & phase)) & ~writer_bits;
    for (std::uint32_t left = rout_.load(); left != arrived; left = rout_.load()) rout_.wait(left);
  }
  void unlock() {
    rin_.fetch_and(~writer_bits, std::memory_order_release);
    rin_.notify_all();
    wout_.fetch_add(1, std::memory_order_release);
    wout_.notify_all();
  }
  void lock_shared() {
    const std::uint32_t writer = rin_.fetch_add(reader, std::memory_order_acquire) & writer_bits;
    if (writer == 0) return;
    for (std::uint32_t in = rin_.load(std::memory_order_acquire); (in & writer_bits) == writer;
         in = rin_.load(std::memory_order_acquire))
      rin_.wait(in, std::memory_order_acquire);
  }
  void unlock_shared() {
    rout_.fetch_add(reader);
    // Sequentially consistent with the writer's add to `rin_` and its read of `rout_`: either this sees
    // the writer present and wakes it, or the writer's read sees this departure.
    if ((rin_.load() & present) != 0) rout_.notify_all();
  }

 private:
  static constexpr std::uint32_t reader = 0x100;  // one reader in `rin_` / `rout_`
  static constexpr std::uint32_t present = 0x2, phase = 0x1, writer_bits = present | phase;
  std::atomic<std::uint32_t> rin_{0}, rout_{0}, win_{0}, wout_{0};
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
