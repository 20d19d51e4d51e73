#pragma once
// Internal to shoal::cuda: checked CUDA calls and device memory that frees itself.

#include <cuda_runtime.h>

#include <cstddef>

#include "shoal/core/error.hpp"

namespace shoal::cuda::detail {

/// Throws `shoal::error` naming `what` unless `status` is success: `errc::unsupported` when the device ran
/// out of memory (as `require_free` says it; free memory can shrink between that check and the call, or
/// fall short by the allocation granularity), `errc::io_error` otherwise. A failed call also leaves its
/// error pending on the thread, where the next launch check (`cudaGetLastError`) would report it as
/// that launch's own: it is taken off first (an error that corrupts the context stays anyway).
inline void check(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  (void)cudaGetLastError();
  ::shoal::detail::throw_error(status == cudaErrorMemoryAllocation ? errc::unsupported : errc::io_error,
                               ::shoal::detail::str("CUDA ", what, " failed: ", cudaGetErrorString(status), " (",
                                                    cudaGetErrorName(status), ")"));
}

/// Makes device `device` current for the scope (throws `errc::unsupported` unless it exists, naming why
/// there is none: `no_device_reason`) and gives
/// the thread its previous device back at the end: a search must not move the caller's own CUDA work to
/// the index's device, and an index must release its memory and cuBLAS handle on the device that holds
/// them. An error left pending on the thread by the caller's own CUDA work is cleared on entry, so that
/// the scope's launch checks report only their own.
class device_scope {
 public:
  explicit device_scope(int device);
  ~device_scope();
  device_scope(const device_scope&) = delete;
  device_scope& operator=(const device_scope&) = delete;

 private:
  int previous_ = -1;  // -1: none to give back (the thread's device could not be read, or is `device`)
};

/// Throws `errc::unsupported` unless device memory has `bytes` free (checked before every allocation, so
/// that running out is a clear error rather than a failed cudaMalloc deep inside a search).
void require_free(std::size_t bytes, const char* what);

/// `count` elements of T in device memory (on the current device), released on destruction.
template <class T>
class device_buffer {
 public:
  device_buffer() = default;
  explicit device_buffer(std::size_t count, const char* what = "buffer") : count_(count) {
    if (count == 0) return;
    require_free(count * sizeof(T), what);
    check(cudaMalloc(reinterpret_cast<void**>(&ptr_), count * sizeof(T)), "cudaMalloc");
  }
  device_buffer(device_buffer&& other) noexcept : ptr_(other.ptr_), count_(other.count_) {
    other.ptr_ = nullptr;
    other.count_ = 0;
  }
  device_buffer& operator=(device_buffer&& other) noexcept {
    if (this != &other) {
      release();
      ptr_ = other.ptr_;
      count_ = other.count_;
      other.ptr_ = nullptr;
      other.count_ = 0;
    }
    return *this;
  }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  ~device_buffer() { release(); }

  [[nodiscard]] T* get() const noexcept { return ptr_; }
  [[nodiscard]] std::size_t size() const noexcept { return count_; }

 private:
  void release() noexcept {
    if (ptr_ != nullptr && cudaFree(ptr_) != cudaSuccess) (void)cudaGetLastError();  // see check
    ptr_ = nullptr;
  }
  T* ptr_ = nullptr;
  std::size_t count_ = 0;
};

}  // namespace shoal::cuda::detail
