// The first CUDA kernel: one query against many vectors, one thread per vector. Small on purpose: it
// proves the toolchain end to end (nvcc, device link, runtime, install export) and gives the GPU tests
// a reference point; the real coarse-pass kernels come with the CUDA issue.

#include <cuda_runtime.h>

#include <string>

#include "shoal/core/error.hpp"
#include "shoal/cuda/device.hpp"

namespace shoal::cuda {
namespace {

__global__ void l2sqr_kernel(const float* query, const float* x, std::size_t n, std::size_t dim, std::size_t stride,
                             float* out) {
  const std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float* row = x + i * stride;
  float acc = 0.0f;
  for (std::size_t j = 0; j < dim; ++j) {
    const float d = query[j] - row[j];
    acc = fmaf(d, d, acc);
  }
  out[i] = acc;
}

void check(cudaError_t status, const char* what) {
  SHOAL_CHECK_CODE(status == cudaSuccess, errc::io_error, "CUDA ", what, " failed: ", cudaGetErrorString(status));
}

/// Device memory that frees itself.
struct device_buffer {
  float* ptr = nullptr;
  explicit device_buffer(std::size_t count) { check(cudaMalloc(&ptr, count * sizeof(float)), "cudaMalloc"); }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  ~device_buffer() { cudaFree(ptr); }
};

}  // namespace

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
  check(cudaGetDeviceProperties(&prop, index), "cudaGetDeviceProperties");
  return std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ")";
}

std::vector<float> l2sqr_one_to_many(const float* query, matrix_view<const float> x) {
  SHOAL_CHECK_CODE(device_count() > 0, errc::unsupported, "no CUDA device available");
  SHOAL_CHECK(query != nullptr && (x.rows == 0 || x.data != nullptr), "l2sqr_one_to_many: null input");
  std::vector<float> out(x.rows);
  if (x.rows == 0) return out;
  const std::size_t rows_floats = (x.rows - 1) * x.stride + x.dim;
  device_buffer d_query(x.dim), d_x(rows_floats), d_out(x.rows);
  check(cudaMemcpy(d_query.ptr, query, x.dim * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
  check(cudaMemcpy(d_x.ptr, x.data, rows_floats * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
  constexpr unsigned threads = 256;
  const auto blocks = static_cast<unsigned>((x.rows + threads - 1) / threads);
  l2sqr_kernel<<<blocks, threads>>>(d_query.ptr, d_x.ptr, x.rows, x.dim, x.stride, d_out.ptr);
  check(cudaGetLastError(), "kernel launch");
  check(cudaMemcpy(out.data(), d_out.ptr, x.rows * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
  return out;
}

}  // namespace shoal::cuda
