// shoal::cuda::flat_index: the stored rows in chunks whose score tile fits in L2; per chunk one cuBLAS SGEMM
// of the query batch with the chunk, then `merge_chunk` (cuda/select.cuh) folds the tile into every query's
// running top-k while it is still in L2.

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <limits>
#include <mutex>
#include <vector>

#include "device_memory.cuh"
#include "select.cuh"
#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "shoal/cuda/flat.hpp"

namespace shoal::cuda {
namespace {

using detail::check;
using detail::device_buffer;
using detail::no_row;

static_assert(flat_index::max_k == detail::select_max_k);

void check_blas(cublasStatus_t status, const char* what) {
  SHOAL_CHECK_CODE(status == CUBLAS_STATUS_SUCCESS, errc::io_error, "cuBLAS ", what, " failed (status ",
                   static_cast<int>(status), ")");
}

/// Score tiles fit in half the L2 cache by default, between these bounds.
constexpr std::size_t min_tile_bytes = std::size_t{1} << 20;
constexpr std::size_t max_tile_bytes = std::size_t{256} << 20;

/// Grows `buffer` to at least `count` elements (the old one freed first; contents not kept).
template <class T>
void reserve(device_buffer<T>& buffer, std::size_t count, const char* what) {
  if (buffer.size() >= count) return;
  buffer = device_buffer<T>();
  buffer = device_buffer<T>(count, what);
}

/// Squared norms of n rows of `dim` floats, one thread per row (once, at construction).
__global__ void row_norms(const float* x, std::size_t n, std::size_t dim, float* out) {
  const std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float* row = x + i * dim;
  float acc = 0.0f;
  for (std::size_t j = 0; j < dim; ++j) acc = fmaf(row[j], row[j], acc);
  out[i] = acc;
}

}  // namespace

struct flat_index::impl {
  int device = 0;
  std::size_t n = 0;
  std::size_t dim = 0;
  shoal::metric metric = shoal::metric::l2;
  std::size_t tile_floats = 0;   // score tile budget
  device_buffer<float> vectors;  // n x dim, dense
  device_buffer<float> norms;    // n, under L2 only
  cublasHandle_t blas = nullptr;
  std::mutex mutex;  // one search at a time on the handle, the device and the scratch below
  // Scratch kept from search to search (grown when a search needs more): the query batch, the score tile
  // and the batch's running top-k on the device, and the top-k copied back to the host.
  device_buffer<float> batch_queries;
  device_buffer<float> tile;
  device_buffer<float> best_score;
  device_buffer<std::uint32_t> best_row;
  std::vector<float> host_score;
  std::vector<std::uint32_t> host_row;

  ~impl() {
    if (blas != nullptr) (void)cublasDestroy(blas);
  }
};

flat_index::flat_index(matrix_view<const float> vectors, shoal::metric m, int device, const device_options& options)
    : impl_(std::make_unique<impl>()) {
  SHOAL_CHECK(vectors.dim > 0, "cuda::flat_index: dimension must be at least 1");
  shoal::detail::check_vectors(vectors, vectors.dim, "cuda::flat_index: vector");
  SHOAL_CHECK(vectors.rows <= std::numeric_limits<std::uint32_t>::max() - 1 &&
                  vectors.rows <= static_cast<std::size_t>(INT_MAX) && vectors.dim <= static_cast<std::size_t>(INT_MAX),
              "cuda::flat_index: ", vectors.rows, " x ", vectors.dim, " exceeds the 32-bit sizes cuBLAS takes");
  detail::use_device(device);
  impl& s = *impl_;
  s.device = device;
  s.n = vectors.rows;
  s.dim = vectors.dim;
  s.metric = m;
  // Dense rows, unit length under cosine, on the host first.
  const matrix<float> dense =
      m == shoal::metric::cosine ? shoal::detail::normalized_copy(vectors, "cuda::flat_index: vector") : [&] {
        matrix<float> copy(vectors.rows, vectors.dim);
        for (std::size_t r = 0; r < vectors.rows; ++r) std::copy_n(vectors.row(r), vectors.dim, copy.row(r));
        return copy;
      }();
  s.vectors = device_buffer<float>(s.n * s.dim, "stored vectors");
  if (s.n > 0)
    check(cudaMemcpy(s.vectors.get(), dense.values.data(), s.n * s.dim * sizeof(float), cudaMemcpyHostToDevice),
          "cudaMemcpy");
  if (m == shoal::metric::l2 && s.n > 0) {
    s.norms = device_buffer<float>(s.n, "vector norms");
    constexpr unsigned threads = 256;
    row_norms<<<static_cast<unsigned>((s.n + threads - 1) / threads), threads>>>(s.vectors.get(), s.n, s.dim,
                                                                                 s.norms.get());
    check(cudaGetLastError(), "norm kernel launch");
    check(cudaDeviceSynchronize(), "norm kernel");
  }
  std::size_t tile_bytes = options.tile_bytes;
  if (tile_bytes == 0) {
    int l2 = 0;
    check(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device), "cudaDeviceGetAttribute");
    tile_bytes = static_cast<std::size_t>(l2) / 2;
  }
  s.tile_floats = std::clamp(tile_bytes, min_tile_bytes, max_tile_bytes) / sizeof(float);
  check_blas(cublasCreate(&s.blas), "cublasCreate");
  check_blas(cublasSetMathMode(
                 s.blas, options.precision == gemm_precision::tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH),
             "cublasSetMathMode");
}

flat_index::~flat_index() = default;
flat_index::flat_index(flat_index&&) noexcept = default;
flat_index& flat_index::operator=(flat_index&&) noexcept = default;

std::size_t flat_index::size() const noexcept { return impl_->n; }
std::size_t flat_index::dim() const noexcept { return impl_->dim; }
shoal::metric flat_index::metric() const noexcept { return impl_->metric; }
int flat_index::device() const noexcept { return impl_->device; }
std::size_t flat_index::device_bytes() const noexcept {
  return (impl_->vectors.size() + impl_->norms.size()) * sizeof(float);
}

neighbors flat_index::search(matrix_view<const float> queries, std::size_t k) const {
  SHOAL_CHECK(k > 0 && k <= max_k, "cuda::flat_index::search: k must be in [1, ", max_k, "], not ", k);
  std::vector<std::uint32_t> rows(queries.rows * k);
  neighbors result(queries.rows, k);
  const neighbors_view out = result.view();
  search(queries, k, rows.data(), out.distances);
  for (std::size_t i = 0; i < rows.size(); ++i) out.ids[i] = rows[i] == no_row ? no_id : rows[i];
  return result;
}

void flat_index::search(matrix_view<const float> queries, std::size_t k, std::uint32_t* rows, float* distances) const {
  SHOAL_CHECK(k > 0 && k <= max_k, "cuda::flat_index::search: k must be in [1, ", max_k, "], not ", k);
  shoal::detail::check_vectors(queries, impl_->dim, "cuda::flat_index::search: query");
  SHOAL_CHECK(queries.rows == 0 || (rows != nullptr && distances != nullptr),
              "cuda::flat_index::search: null result buffer");
  impl& s = *impl_;
  std::fill(rows, rows + queries.rows * k, no_row);
  std::fill(distances, distances + queries.rows * k, no_distance);
  if (queries.rows == 0 || s.n == 0) return;
  const matrix<float> normalized = s.metric == shoal::metric::cosine
                                       ? shoal::detail::normalized_copy(queries, "cuda::flat_index::search: query")
                                       : matrix<float>();
  const matrix_view<const float> q = s.metric == shoal::metric::cosine ? normalized.view() : queries;
  const auto kk = static_cast<std::uint32_t>(std::min(k, s.n));
  const detail::tile_plan plan = detail::plan_tiles(q.rows, s.n, s.tile_floats);
  const float* norms = s.metric == shoal::metric::l2 ? s.norms.get() : nullptr;

  const std::lock_guard lock(s.mutex);
  detail::use_device(s.device);
  reserve(s.batch_queries, plan.batch * s.dim, "query batch");
  reserve(s.tile, plan.batch * plan.chunk, "score tile");
  reserve(s.best_score, plan.batch * kk, "running top-k scores");
  reserve(s.best_row, plan.batch * kk, "running top-k rows");
  s.host_score.resize(plan.batch * kk);
  s.host_row.resize(plan.batch * kk);
  const float one = 1.0f, zero = 0.0f;
  for (std::size_t first = 0; first < q.rows; first += plan.batch) {
    const std::size_t count = std::min(plan.batch, q.rows - first);
    check(cudaMemcpy2D(s.batch_queries.get(), s.dim * sizeof(float), q.row(first), q.stride * sizeof(float),
                       s.dim * sizeof(float), count, cudaMemcpyHostToDevice),
          "cudaMemcpy2D");
    for (std::size_t row0 = 0; row0 < s.n; row0 += plan.chunk) {
      const std::size_t len = std::min(plan.chunk, s.n - row0);
      // Column-major view: tile (len x count, leading len) = chunkᵀ(len x dim) · queries(dim x count), i.e.
      // the row-major count x len matrix of inner products.
      check_blas(
          cublasSgemm(s.blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(len), static_cast<int>(count),
                      static_cast<int>(s.dim), &one, s.vectors.get() + row0 * s.dim, static_cast<int>(s.dim),
                      s.batch_queries.get(), static_cast<int>(s.dim), &zero, s.tile.get(), static_cast<int>(len)),
          "cublasSgemm");
      detail::merge_chunk<<<static_cast<unsigned>(count), detail::select_threads, detail::merge_shared_bytes(kk)>>>(
          s.tile.get(), len, len, norms != nullptr ? norms + row0 : nullptr, static_cast<std::uint32_t>(row0), kk,
          row0 == 0, s.best_score.get(), s.best_row.get());
      check(cudaGetLastError(), "select kernel launch");
    }
    check(cudaMemcpy(s.host_row.data(), s.best_row.get(), count * kk * sizeof(std::uint32_t), cudaMemcpyDeviceToHost),
          "cudaMemcpy");
    check(cudaMemcpy(s.host_score.data(), s.best_score.get(), count * kk * sizeof(float), cudaMemcpyDeviceToHost),
          "cudaMemcpy");
    for (std::size_t i = 0; i < count; ++i) {
      const float* query = q.row(first + i);
      float offset = 0.0f;  // ‖q‖² under L2 (ranks do not need it), 1 under cosine
      if (s.metric == shoal::metric::l2)
        for (std::size_t j = 0; j < s.dim; ++j) offset = std::fma(query[j], query[j], offset);
      if (s.metric == shoal::metric::cosine) offset = 1.0f;
      for (std::size_t j = 0; j < kk; ++j) {
        rows[(first + i) * k + j] = s.host_row[i * kk + j];
        distances[(first + i) * k + j] = s.host_score[i * kk + j] + offset;
      }
    }
  }
}

}  // namespace shoal::cuda
