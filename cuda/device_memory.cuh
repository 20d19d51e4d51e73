#pragma once
// Internal to shoal::cuda: checked CUDA calls and device memory that frees itself.

#include <cuda_runtime.h>

#include <cstddef>

#include "shoal/core/error.hpp"

namespace shoal::cuda::detail {

/// Throws `shoal::error` (`errc::io_error`) naming `what` unless `status` is success.
inline void check(cudaError_t status, const char* what) {
  SHOAL_CHECK_CODE(status == cudaSuccess, errc::io_error, "CUDA ", what, " failed: ", cudaGetErrorString(status));
}

/// Throws `errc::unsupported` unless device `device` exists; makes it current.
void use_device(int device);

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
    if (ptr_ != nullptr) (void)cudaFree(ptr_);
    ptr_ = nullptr;
  }
  T* ptr_ = nullptr;
  std::size_t count_ = 0;
};

}  // namespace shoal::cuda::detail
