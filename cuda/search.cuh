#pragma once
// The search of shoal::cuda::flat_index, written once against a backend. cuda/flat.cu's backend is the
// device: cuBLAS, kernel launches, copies. tests/test_cuda_select.cpp's is the CPU: a reference GEMM
// with cuBLAS's argument conventions, and the block emulator for the kernels. So CI checks the whole
// loop without a device: batches, chunks, the GEMM's column-major layout, the merge's arguments and the
// distances' offsets. Only the backend's forwarding calls are left to the `[gpu]` tests.
//
// A backend provides, over buffers it owns (device memory on the device):
//   std::size_t rows(), dim();  shoal::metric kind();  std::size_t tile_floats(), max_batch();
//   const float* vectors();     the n × dim stored rows, dense (unit length under cosine)
//   const float* norms();       their n squared norms under L2, else null
//   void reserve(const tile_plan& plan, std::uint32_t k);   scratch for one batch
//   float* batch();  float* tile();
//   void upload(const float* first, std::size_t stride, std::size_t count);   count × dim queries → batch()
//   std::span<const float> query_offset();   L2 only: o (dim floats) searched as q − o, or empty
//   void shift(std::size_t count);           batch() rows −= query_offset(), on the device (`subtract_offset`)
//   void sgemm_tn(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc);
//       C = Aᵀ · B, column-major throughout: cublasSgemm(T, N, m, n, k, 1, a, lda, b, ldb, 0, c, ldc)
//   void merge(unsigned blocks, const float* tile, std::size_t ld, std::size_t len, const float* norms,
//              std::uint32_t row0, std::uint32_t k, bool fresh);   merge_chunk into the batch's top-k
//   void download(std::size_t count, std::uint32_t k, std::uint32_t* rows, float* scores);   that top-k → host
//       (scores null: the rows alone)

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "select.cuh"
#include "shoal/core/checks.hpp"
#include "shoal/core/neighbors.hpp"
#include "shoal/core/types.hpp"
#include "shoal/distance/distance.hpp"

namespace shoal::cuda::detail {

/// Squared norms of n rows of `dim` floats, one thread per row (once, at construction).
__global__ void row_norms(const float* x, std::size_t n, std::size_t dim, float* out) {
  const std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float* row = x + i * dim;
  float acc = 0.0f;
  for (std::size_t j = 0; j < dim; ++j) acc = fmaf(row[j], row[j], acc);
  out[i] = acc;
}
constexpr unsigned norm_threads = 256;

/// rows[r · dim + j] −= offset[j] for r < count, one thread per component: the query batch moved into
/// the frame of rows stored minus `offset` (the coarse quantizer's centred frame, docs/ivf.md).
__global__ void subtract_offset(float* rows, std::size_t count, std::size_t dim, const float* offset) {
  const std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
  if (i >= count * dim) return;
  rows[i] -= offset[i % dim];
}
constexpr unsigned offset_threads = 256;

/// The rows as the device keeps them: dense, and unit length under cosine.
inline matrix<float> stored_rows(matrix_view<const float> vectors, metric m) {
  if (m == metric::cosine) return shoal::detail::normalized_copy(vectors, "cuda::flat_index: vector");
  matrix<float> copy(vectors.rows, vectors.dim);
  for (std::size_t r = 0; r < vectors.rows; ++r) std::copy_n(vectors.row(r), vectors.dim, copy.row(r));
  return copy;
}

/// The k nearest rows of each query into rows / distances (queries.rows × k): row numbers (no_row past
/// the backend's rows) and shoal's distances; null `distances` asks for the rows alone. The caller has
/// checked the arguments (1 ≤ k ≤ select_max_k, finite queries of the backend's dim). `host_row` /
/// `host_score` are host scratch.
template <class Backend>
void search_tiles(Backend& backend, matrix_view<const float> queries, std::size_t k, std::uint32_t* rows,
                  float* distances, std::vector<std::uint32_t>& host_row, std::vector<float>& host_score) {
  std::fill(rows, rows + queries.rows * k, no_row);
  if (distances != nullptr) std::fill(distances, distances + queries.rows * k, no_distance);
  const std::size_t n = backend.rows(), dim = backend.dim();
  if (queries.rows == 0 || n == 0) return;
  const metric m = backend.kind();
  const std::span<const float> offset = backend.query_offset();
  const matrix<float> normalized = m == metric::cosine
                                       ? shoal::detail::normalized_copy(queries, "cuda::flat_index::search: query")
                                       : matrix<float>();
  const matrix_view<const float> q = m == metric::cosine ? normalized.view() : queries;
  const auto kk = static_cast<std::uint32_t>(std::min(k, n));
  // The batch of queries on the device stays within the tile's budget too (batch × dim ≤ tile floats):
  // a very wide dimension shrinks the batch instead of asking for gigabytes of query buffer.
  std::size_t max_batch = std::max<std::size_t>(1, backend.tile_floats() / dim);
  if (backend.max_batch() > 0) max_batch = std::min(max_batch, backend.max_batch());
  const tile_plan plan = plan_tiles(q.rows, n, backend.tile_floats(), max_batch);
  backend.reserve(plan, kk);
  host_row.resize(plan.batch * kk);
  host_score.resize(plan.batch * kk);
  for (std::size_t first = 0; first < q.rows; first += plan.batch) {
    const std::size_t count = std::min(plan.batch, q.rows - first);
    backend.upload(q.row(first), q.stride, count);
    if (!offset.empty()) backend.shift(count);
    for (std::size_t row0 = 0; row0 < n; row0 += plan.chunk) {
      const std::size_t len = std::min(plan.chunk, n - row0);
      // Column-major view: tile (len × count, leading len) = chunkᵀ (len × dim) · queries (dim × count),
      // i.e. the row-major count × len matrix of inner products.
      backend.sgemm_tn(static_cast<int>(len), static_cast<int>(count), static_cast<int>(dim),
                       backend.vectors() + row0 * dim, static_cast<int>(dim), backend.batch(), static_cast<int>(dim),
                       backend.tile(), static_cast<int>(len));
      backend.merge(static_cast<unsigned>(count), backend.tile(), len, len,
                    backend.norms() != nullptr ? backend.norms() + row0 : nullptr, static_cast<std::uint32_t>(row0), kk,
                    row0 == 0);
    }
    backend.download(count, kk, host_row.data(), distances != nullptr ? host_score.data() : nullptr);
    if (distances == nullptr) {
      for (std::size_t i = 0; i < count; ++i) std::copy_n(host_row.data() + i * kk, kk, rows + (first + i) * k);
      continue;
    }
    for (std::size_t i = 0; i < count; ++i) {
      const float* query = q.row(first + i);
      // ‖q − o‖² under L2 (ranks do not need it), 1 under cosine.
      float base = m == metric::cosine ? 1.0f : 0.0f;
      if (m == metric::l2 && offset.empty()) base = shoal::inner_product(query, query, dim);
      if (m == metric::l2 && !offset.empty()) {
        double sum = 0.0;
        for (std::size_t j = 0; j < dim; ++j) {
          const float v = query[j] - offset[j];  // as subtract_offset computes it
          sum += static_cast<double>(v) * v;
        }
        base = static_cast<float>(sum);
      }
      for (std::size_t j = 0; j < kk; ++j) {
        rows[(first + i) * k + j] = host_row[i * kk + j];
        distances[(first + i) * k + j] = host_score[i * kk + j] + base;
      }
    }
  }
}

}  // namespace shoal::cuda::detail
