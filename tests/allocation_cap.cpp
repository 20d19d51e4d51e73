// The global operator new and delete, replaced to honour `shoal::test::allocation_cap`.

#include "allocation_cap.hpp"

#include <atomic>
#include <cstdlib>
#include <limits>
#include <new>

namespace {
thread_local std::size_t cap = std::numeric_limits<std::size_t>::max();
constexpr std::size_t no_failure = std::numeric_limits<std::size_t>::max();
thread_local std::size_t allocations_before_failure = no_failure;
thread_local bool failure_happened = false;
std::atomic<std::size_t> every_thread_allocations_before_failure{no_failure};
std::atomic<bool> every_thread_failure_happened{false};
std::atomic<std::size_t> every_thread_cap{std::numeric_limits<std::size_t>::max()};

void* allocate(std::size_t bytes, std::size_t align) {
  if (bytes > cap || bytes > every_thread_cap.load(std::memory_order_relaxed)) throw std::bad_alloc();
  if (allocations_before_failure != no_failure && allocations_before_failure-- == 0) {
    allocations_before_failure = no_failure;
    failure_happened = true;
    throw std::bad_alloc();
  }
  if (every_thread_allocations_before_failure.load(std::memory_order_relaxed) != no_failure) {
    std::size_t left = every_thread_allocations_before_failure.load(std::memory_order_relaxed);
    while (left != no_failure && !every_thread_allocations_before_failure.compare_exchange_weak(
                                     left, left == 0 ? no_failure : left - 1, std::memory_order_relaxed)) {
    }
    if (left == 0) {
      every_thread_failure_happened.store(true);
      throw std::bad_alloc();
    }
  }
  if (bytes == 0) bytes = 1;
  void* p = nullptr;
  if (align <= alignof(std::max_align_t)) {
    p = std::malloc(bytes);
  } else if (posix_memalign(&p, align, bytes) != 0) {
    p = nullptr;
  }
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
}  // namespace

namespace shoal::test {
allocation_cap::allocation_cap(std::size_t max_bytes, bool every_thread) noexcept
    : previous_(every_thread ? every_thread_cap.exchange(max_bytes) : cap), every_thread_(every_thread) {
  if (!every_thread) cap = max_bytes;
}
allocation_cap::~allocation_cap() {
  if (every_thread_)
    every_thread_cap.store(previous_);
  else
    cap = previous_;
}
allocation_failure::allocation_failure(std::size_t count, bool every_thread) noexcept : every_thread_(every_thread) {
  if (every_thread) {
    every_thread_failure_happened.store(false);
    every_thread_allocations_before_failure.store(count);
  } else {
    allocations_before_failure = count;
    failure_happened = false;
  }
}
allocation_failure::~allocation_failure() {
  if (every_thread_)
    every_thread_allocations_before_failure.store(no_failure);
  else
    allocations_before_failure = no_failure;
}
bool allocation_failure::happened() const noexcept {
  return every_thread_ ? every_thread_failure_happened.load() : failure_happened;
}
}  // namespace shoal::test

// Every form is replaced, so that one allocator serves them all: a sanitizer's runtime would otherwise
// serve the forms left out, and report its allocations freed here as mismatched.
void* operator new(std::size_t bytes) { return allocate(bytes, alignof(std::max_align_t)); }
void* operator new[](std::size_t bytes) { return allocate(bytes, alignof(std::max_align_t)); }
void* operator new(std::size_t bytes, std::align_val_t align) {
  return allocate(bytes, static_cast<std::size_t>(align));
}
void* operator new[](std::size_t bytes, std::align_val_t align) {
  return allocate(bytes, static_cast<std::size_t>(align));
}
void* operator new(std::size_t bytes, const std::nothrow_t& /*tag*/) noexcept {
  try {
    return allocate(bytes, alignof(std::max_align_t));
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
}
void* operator new[](std::size_t bytes, const std::nothrow_t& tag) noexcept { return operator new(bytes, tag); }
void* operator new(std::size_t bytes, std::align_val_t align, const std::nothrow_t& /*tag*/) noexcept {
  try {
    return allocate(bytes, static_cast<std::size_t>(align));
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
}
void* operator new[](std::size_t bytes, std::align_val_t align, const std::nothrow_t& tag) noexcept {
  return operator new(bytes, align, tag);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t /*bytes*/) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t /*bytes*/) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t /*align*/) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t /*align*/) noexcept { std::free(p); }
void operator delete(void* p, std::size_t /*bytes*/, std::align_val_t /*align*/) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t /*bytes*/, std::align_val_t /*align*/) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t& /*tag*/) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t& /*tag*/) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t /*align*/, const std::nothrow_t& /*tag*/) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t /*align*/, const std::nothrow_t& /*tag*/) noexcept { std::free(p); }
