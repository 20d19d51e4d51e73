#pragma once
// The library's one doorway to oneTBB for data-parallel loops (internal; TBB stays out of public headers).
//
// Under ThreadSanitizer (SHOAL_SANITIZE=thread defines SHOAL_TSAN) the loops run serially on the calling
// thread: Debian's libtbb is not instrumented, so TSan cannot see the synchronisation that hands a TBB
// task between workers and drowns real reports in false ones. What TSan must check — shoal's own
// shared state under concurrent calls from many user threads — is unaffected; the bodies of these loops
// only ever write disjoint outputs.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

#ifndef SHOAL_TSAN
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>
#endif

namespace shoal::detail {

/// Calls `body(i)` for i in [0, n), in parallel on the caller's oneTBB arena. A single item runs
/// directly on the calling thread: one-query searches skip the task machinery altogether.
///
/// The loop is isolated: while the calling thread waits for its items it runs only this loop's tasks,
/// never another task of the arena. Callers often hold a lock across the loop (a search holds its graph's
/// lock shared), and a caller's own oneTBB tasks call shoal too: without isolation a waiting thread
/// could pick up the caller's `remove`, which waits for the lock that this very thread holds — a
/// deadlock that hangs the caller's `tbb::parallel_for` of searches and writes.
///
/// And it runs in a task group context of its own (isolated): a nested loop joins the caller's context
/// by default, so when another task of the caller's loop threw, oneTBB cancelled this loop too and it
/// returned normally with items never run — an `hnsw_index::add` inside a caller's `parallel_for`
/// returned with 3,125 of its 20,000 ids mapped to slots never written (a review, session 36). A
/// write must run every item or throw.
template <class Body>
void parallel_for(std::size_t n, const Body& body) {
#ifdef SHOAL_TSAN
  for (std::size_t i = 0; i < n; ++i) body(i);
#else
  if (n == 1) {
    body(std::size_t{0});
    return;
  }
  tbb::this_task_arena::isolate([&] {
    tbb::task_group_context own(tbb::task_group_context::isolated);
    tbb::parallel_for(std::size_t{0}, n, body, own);
  });
#endif
}

/// `parallel_for` over the items of `order` (a permutation of [0, n)), calling `body(order[j])`: a batch
/// searched in locality order (`probed_queries::locality_order`, HNSW's batch plan). An empty `order`
/// means input order.
template <class Body>
void parallel_for_in(std::span<const std::uint32_t> order, std::size_t n, const Body& body) {
  parallel_for(n, [&](std::size_t j) { body(order.empty() ? j : std::size_t{order[j]}); });
}

/// Threads a parallel loop may use right now (the current arena's concurrency; 1 under SHOAL_TSAN).
inline std::size_t parallelism() {
#ifdef SHOAL_TSAN
  return 1;
#else
  return static_cast<std::size_t>(tbb::this_task_arena::max_concurrency());
#endif
}

/// Runs `body()` with every parallel loop inside it on the calling thread alone (a one-thread arena), for
/// work whose result must not depend on scheduling, such as a reproducible graph build.
template <class Body>
void run_single_threaded(const Body& body) {
#ifdef SHOAL_TSAN
  body();
#else
  tbb::task_arena(1).execute(body);
#endif
}

/// Lends the calling thread's `T` (a search's work space) for one call, so that its buffers keep their
/// capacity from one query to the next instead of being allocated again for each (at tens of thousands
/// of queries a second, allocation and zeroing were a few percent of an IVF-PQ query). A nested call on
/// the same thread while the thread's `T` is lent (a filter predicate that searches again) gets a fresh
/// one. What a thread's `T` holds stays allocated until the thread ends.
template <class T>
class scratch_lease {
 public:
  scratch_lease() {
    slot& own = thread_slot();
    if (own.lent) {
      fresh_.emplace();
      item_ = &*fresh_;
    } else {
      own.lent = true;
      item_ = &own.item;
    }
  }
  ~scratch_lease() {
    if (!fresh_) thread_slot().lent = false;
  }
  scratch_lease(const scratch_lease&) = delete;
  scratch_lease& operator=(const scratch_lease&) = delete;

  [[nodiscard]] T& get() const noexcept { return *item_; }

 private:
  struct slot {
    T item;
    bool lent = false;
  };
  static slot& thread_slot() {
    thread_local slot own;
    return own;
  }
  std::optional<T> fresh_;
  T* item_ = nullptr;
};

}  // namespace shoal::detail
