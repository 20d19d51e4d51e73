// Device discovery and the checked helpers every shoal::cuda source uses.

#include <cuda_runtime.h>

#include <string>
#include <utility>

#include "device_memory.cuh"
#include "shoal/core/error.hpp"
#include "shoal/cuda/device.hpp"

namespace shoal::cuda {

namespace {

/// cudaGetDeviceCount's status and count (the count 0 unless it succeeded).
std::pair<cudaError_t, int> count_devices() noexcept {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status == cudaSuccess) return {status, count};
  (void)cudaGetLastError();  // clear the error it leaves pending (where the runtime lets it be cleared)
  return {status, 0};
}

}  // namespace

int device_count() noexcept { return count_devices().second; }

std::string no_device_reason() noexcept {
  try {
    const auto [status, count] = count_devices();
    if (count > 0) return {};
    if (status == cudaSuccess || status == cudaErrorNoDevice) return "no CUDA device";
    // No driver at all reads as one too old for the runtime (error 35): the driver's version tells them
    // apart, 0 where there is none (as on CI's machines, with the toolkit and no GPU).
    int driver = 0;
    if (status == cudaErrorInsufficientDriver && cudaDriverGetVersion(&driver) == cudaSuccess && driver == 0)
      return "no CUDA device: no CUDA driver is installed";
    // A driver or runtime problem hides the devices: say which (a user with a GPU and an old driver was
    // told there was no device, a review).
    return std::string("no CUDA device usable: ") + cudaGetErrorString(status) + " (" + cudaGetErrorName(status) + ")";
  } catch (...) {  // no memory for the text
    return {};
  }
}

std::string device_name(int index) {
  SHOAL_CHECK_CODE(device_count() > 0, errc::unsupported, no_device_reason());
  SHOAL_CHECK_CODE(index >= 0 && index < device_count(), errc::unsupported, "no CUDA device ", index,
                   " (devices: ", device_count(), ")");
  cudaDeviceProp prop{};
  detail::check(cudaGetDeviceProperties(&prop, index), "cudaGetDeviceProperties");
  return std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ")";
}

namespace detail {

device_scope::device_scope(int device) {
  SHOAL_CHECK_CODE(device_count() > 0, errc::unsupported, no_device_reason());
  SHOAL_CHECK_CODE(device >= 0 && device < device_count(), errc::unsupported, "no CUDA device ", device,
                   " (devices: ", device_count(), ")");
  // An error the caller's own CUDA work left pending on this thread would be read by our first launch
  // check (`cudaGetLastError`) as that launch's: it is taken off here (a review). An error that broke
  // the context still shows in the calls that follow.
  (void)cudaGetLastError();
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
