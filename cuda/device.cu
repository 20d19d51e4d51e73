// Device discovery and the checked helpers every shoal::cuda source uses.

#include <cuda_runtime.h>

#include <string>

#include "device_memory.cuh"
#include "shoal/core/error.hpp"
#include "shoal/cuda/device.hpp"

namespace shoal::cuda {

int device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return count;
}

std::string device_name(int index) {
  SHOAL_CHECK_CODE(index >= 0 && index < device_count(), errc::unsupported, "no CUDA device ", index,
                   " (devices: ", device_count(), ")");
  cudaDeviceProp prop{};
  detail::check(cudaGetDeviceProperties(&prop, index), "cudaGetDeviceProperties");
  return std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ")";
}

namespace detail {

device_scope::device_scope(int device) {
  SHOAL_CHECK_CODE(device_count() > 0, errc::unsupported, "no CUDA device available");
  SHOAL_CHECK_CODE(device >= 0 && device < device_count(), errc::unsupported, "no CUDA device ", device,
                   " (devices: ", device_count(), ")");
  int current = -1;
  if (cudaGetDevice(&current) != cudaSuccess) {
    (void)cudaGetLastError();
    current = -1;
  }
  check(cudaSetDevice(device), "cudaSetDevice");
  if (current != device) previous_ = current;
}

device_scope::~device_scope() {
  if (previous_ >= 0 && cudaSetDevice(previous_) != cudaSuccess) (void)cudaGetLastError();
}

void require_free(std::size_t bytes, const char* what) {
  std::size_t free = 0, total = 0;
  check(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
  SHOAL_CHECK_CODE(bytes <= free, errc::unsupported, "CUDA device memory: the ", what, " needs ", bytes,
                   " bytes, the device has ", free, " of ", total, " free");
}

}  // namespace detail

}  // namespace shoal::cuda
