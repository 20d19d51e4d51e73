#pragma once
// A per-thread cap on the size of one allocation, for tests that must show a damaged input is refused
// before it makes the library allocate what the input claims. Linked into a test executable, it replaces
// the global operator new (tests/allocation_cap.cpp); outside an `allocation_cap` scope nothing changes.

#include <cstddef>

namespace shoal::test {

/// While alive, any single allocation of more than `max_bytes` on this thread throws std::bad_alloc.
class allocation_cap {
 public:
  explicit allocation_cap(std::size_t max_bytes) noexcept;
  ~allocation_cap();
  allocation_cap(const allocation_cap&) = delete;
  allocation_cap& operator=(const allocation_cap&) = delete;

 private:
  std::size_t previous_;
};

/// While alive, any single allocation of more than `max_bytes` on any thread throws std::bad_alloc: for
/// work a call hands to thread pools (a collection's shards). One at a time.
class allocation_cap_every_thread {
 public:
  explicit allocation_cap_every_thread(std::size_t max_bytes) noexcept;
  ~allocation_cap_every_thread();
  allocation_cap_every_thread(const allocation_cap_every_thread&) = delete;
  allocation_cap_every_thread& operator=(const allocation_cap_every_thread&) = delete;
};

}  // namespace shoal::test
