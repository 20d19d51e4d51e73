// The first CUDA kernel: one query against many vectors, one thread per vector. Small on purpose: it
// proves the toolchain end to end (nvcc, device link, runtime, install export) and gives the GPU tests
// a reference point; the batched search and the coarse pass are in flat.cu (docs/cuda.md).

#include <cuda_runtime.h>

#include <string>

#include "device_memory.cuh"
#include "shoal/core/checks.hpp"
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

}  // namespace

std::vector<float> l2sqr_one_to_many(const float* query, matrix_view<const float> x) {
  SHOAL_CHECK(query != nullptr, "cuda::l2sqr_one_to_many: null query");
  // The rows' layout and values (a stride below the dimension was taken), then the query's, before
  // the device is looked for.
  shoal::detail::check_vectors(x, x.dim, "cuda::l2sqr_one_to_many: vector");
  shoal::detail::check_vectors({query, 1, x.dim}, x.dim, "cuda::l2sqr_one_to_many: query");
  const detail::device_scope on(0);
  std::vector<float> out(x.rows);
  if (x.rows == 0) return out;
  const std::size_t rows_floats = (x.rows - 1) * x.stride + x.dim;
  const detail::device_buffer<float> d_query(x.dim), d_x(rows_floats), d_out(x.rows);
  detail::check(cudaMemcpy(d_query.get(), query, x.dim * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
  detail::check(cudaMemcpy(d_x.get(), x.data, rows_floats * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
  constexpr unsigned threads = 256;
  const auto blocks = static_cast<unsigned>((x.rows + threads - 1) / threads);
  l2sqr_kernel<<<blocks, threads>>>(d_query.get(), d_x.get(), x.rows, x.dim, x.stride, d_out.get());
  detail::check(cudaGetLastError(), "kernel launch");
  detail::check(cudaMemcpy(out.data(), d_out.get(), x.rows * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
  return out;
}

}  // namespace shoal::cuda
