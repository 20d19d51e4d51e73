#pragma once
// A cap on the size of one allocation, for tests that must show a damaged input is refused before it
// makes the library allocate what the input claims, or that a call's work stays the size of its data;
// and one failed allocation at a chosen point, for tests of what a call leaves when it runs out of memory.
// Linked into a test executable, it replaces the global operator new (tests/allocation_cap.cpp); outside
// an `allocation_cap` scope nothing changes.

#include <cstddef>

namespace shoal::test {

/// While alive, any single allocation of more than `max_bytes` on this thread — or, with
/// `every_thread`, on any thread (for work a call hands to thread pools, such as a collection's shards;
/// one such cap at a time) — throws std::bad_alloc.
class allocation_cap {
 public:
  explicit allocation_cap(std::size_t max_bytes, bool every_thread = false) noexcept;
  ~allocation_cap();
  allocation_cap(const allocation_cap&) = delete;
  allocation_cap& operator=(const allocation_cap&) = delete;

 private:
  std::size_t previous_;
  bool every_thread_;
};

/// While alive, the allocation after the first `count` on this thread — or, with `every_thread`, on any
/// thread (one such failure at a time) — throws std::bad_alloc (once): an out-of-memory failure injected
/// at each point of a call in turn.
class allocation_failure {
 public:
  explicit allocation_failure(std::size_t count, bool every_thread = false) noexcept;
  ~allocation_failure();
  allocation_failure(const allocation_failure&) = delete;
  allocation_failure& operator=(const allocation_failure&) = delete;
  /// Whether the failure was injected.
  [[nodiscard]] bool happened() const noexcept;

 private:
  bool every_thread_;
};

}  // namespace shoal::test
