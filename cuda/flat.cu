// shoal::cuda::flat_index: the stored rows in chunks whose score tile fits in L2; per chunk one cuBLAS SGEMM
// of the query batch with the chunk, then `merge_chunk` (cuda/select.cuh) folds the tile into every query's
// running top-k while it is still in L2. The loop itself is cuda/search.cuh's; this file is its device
// backend (the impl below) and the public class around it.

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
#include "search.cuh"
#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "shoal/cuda/flat.hpp"

namespace shoal::cuda {
namespace {

using detail::check;
using detail::device_buffer;
using detail::no_row;

static_assert(flat_index::max_k == detail::select_max_k);

/// As `detail::check` for cuBLAS: out of memory (cuBLAS's workspace or handle) is `errc::unsupported`.
void check_blas(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  shoal::detail::throw_error(status == CUBLAS_STATUS_ALLOC_FAILED ? errc::unsupported : errc::io_error,
                             shoal::detail::str("cuBLAS ", what, " failed: ", cublasGetStatusString(status), " (",
                                                cublasGetStatusName(status), ")"));
}

/// Score tiles fit in half the L2 cache by default, between these bounds.
constexpr std::size_t min_tile_bytes = std::size_t{1} << 20;
constexpr std::size_t max_tile_bytes = std::size_t{256} << 20;

/// Grows `buffer` to at least `count` elements (the old one freed first; contents not kept).
template <class T>
void grow(device_buffer<T>& buffer, std::size_t count, const char* what) {
  if (buffer.size() >= count) return;
  buffer = device_buffer<T>();
  buffer = device_buffer<T>(count, what);
}

}  // namespace

/// The index's state, and the device backend of detail::search_tiles (cuda/search.cuh lists the calls).
struct flat_index::impl {
  int device = -1;  // set once the device is current; -1: nothing was allocated
  std::size_t n = 0;
  std::size_t dim_ = 0;
  shoal::metric metric = shoal::metric::l2;
  std::size_t tile_floats_ = 0;     // score tile budget
  std::size_t max_batch_ = 0;       // queries per batch at most (0: no bound but the tile's)
  device_buffer<float> vectors_;    // n x dim, dense
  device_buffer<float> norms_;      // n, under L2 only
  std::vector<float> offset_host_;  // L2: queries are searched as q − offset (set_query_offset), or empty
  device_buffer<float> offset_;
  cublasHandle_t blas = nullptr;
  std::mutex mutex;  // one search at a time on the handle, the device and the scratch below
  // Scratch kept from search to search (grown when a search needs more): the query batch, the score tile
  // and the batch's running top-k on the device, and the top-k copied back to the host.
  device_buffer<float> batch_;
  device_buffer<float> tile_;
  device_buffer<float> best_score;
  device_buffer<std::uint32_t> best_row;
  std::vector<float> host_score;
  std::vector<std::uint32_t> host_row;

  /// On the device that holds them, whichever is current: the handle and every buffer.
  ~impl() {
    if (device < 0) return;  // a constructor that failed before it chose the device
    try {
      const detail::device_scope on(device);
      if (blas != nullptr) (void)cublasDestroy(blas);
      for (device_buffer<float>* b : {&vectors_, &norms_, &offset_, &batch_, &tile_, &best_score})
        *b = device_buffer<float>();
      best_row = device_buffer<std::uint32_t>();
    } catch (...) {  // the device is gone (or no memory for the error's text): nothing left to release
    }
  }

  [[nodiscard]] std::size_t rows() const { return n; }
  [[nodiscard]] std::size_t dim() const { return dim_; }
  [[nodiscard]] shoal::metric kind() const { return metric; }
  [[nodiscard]] std::size_t tile_floats() const { return tile_floats_; }
  [[nodiscard]] std::size_t max_batch() const { return max_batch_; }
  [[nodiscard]] const float* vectors() const { return vectors_.get(); }
  [[nodiscard]] const float* norms() const { return norms_.get(); }
  [[nodiscard]] float* batch() const { return batch_.get(); }
  [[nodiscard]] float* tile() const { return tile_.get(); }

  void reserve(const detail::tile_plan& plan, std::uint32_t k) {
    grow(batch_, plan.batch * dim_, "query batch");
    grow(tile_, plan.batch * plan.chunk, "score tile");
    grow(best_score, plan.batch * k, "running top-k scores");
    grow(best_row, plan.batch * k, "running top-k rows");
  }
  void upload(const float* first, std::size_t stride, std::size_t count) {
    check(cudaMemcpy2D(batch_.get(), dim_ * sizeof(float), first, stride * sizeof(float), dim_ * sizeof(float), count,
                       cudaMemcpyHostToDevice),
          "cudaMemcpy2D");
  }
  [[nodiscard]] std::span<const float> query_offset() const { return offset_host_; }
  void shift(std::size_t count) {
    const std::size_t values = count * dim_;
    detail::subtract_offset<<<static_cast<unsigned>((values + detail::offset_threads - 1) / detail::offset_threads),
                              detail::offset_threads>>>(batch_.get(), count, dim_, offset_.get());
    check(cudaGetLastError(), "offset kernel launch");
  }
  void sgemm_tn(int m, int n_, int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc) {
    const float one = 1.0f, zero = 0.0f;
    check_blas(cublasSgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, m, n_, k, &one, a, lda, b, ldb, &zero, c, ldc),
               "cublasSgemm");
  }
  void merge(unsigned blocks, const float* tile, std::size_t ld, std::size_t len, const float* chunk_norms,
             std::uint32_t row0, std::uint32_t k, bool fresh) {
    detail::merge_chunk<<<blocks, detail::select_threads, detail::merge_shared_bytes(k)>>>(
        tile, ld, len, chunk_norms, row0, k, fresh, best_score.get(), best_row.get());
    check(cudaGetLastError(), "select kernel launch");
  }
  void download(std::size_t count, std::uint32_t k, std::uint32_t* rows_out, float* scores_out) {
    check(cudaMemcpy(rows_out, best_row.get(), count * k * sizeof(std::uint32_t), cudaMemcpyDeviceToHost),
          "cudaMemcpy");
    if (scores_out != nullptr)
      check(cudaMemcpy(scores_out, best_score.get(), count * k * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
  }
};

flat_index::flat_index(matrix_view<const float> vectors, shoal::metric m, int device, const device_options& options)
    : impl_(std::make_unique<impl>()) {
  SHOAL_CHECK(vectors.dim > 0, "cuda::flat_index: dimension must be at least 1");
  shoal::detail::check_metric(m, "cuda::flat_index");
  shoal::detail::check_vectors(vectors, vectors.dim, "cuda::flat_index: vector");
  SHOAL_CHECK(vectors.rows <= std::numeric_limits<std::uint32_t>::max() - 1 &&
                  vectors.rows <= static_cast<std::size_t>(INT_MAX) && vectors.dim <= static_cast<std::size_t>(INT_MAX),
              "cuda::flat_index: ", vectors.rows, " x ", vectors.dim, " exceeds the 32-bit sizes cuBLAS takes");
  const detail::device_scope on(device);
  impl& s = *impl_;
  s.device = device;
  s.n = vectors.rows;
  s.dim_ = vectors.dim;
  s.metric = m;
  // The handle first: its own device memory is small, and created after the vectors it could find the
  // device full when they nearly fill it (an io_error then, not the byte count `require_free` gives).
  check_blas(cublasCreate(&s.blas), "cublasCreate");
  check_blas(cublasSetMathMode(
                 s.blas, options.precision == gemm_precision::tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH),
             "cublasSetMathMode");
  // Dense rows, unit length under cosine, on the host first.
  const matrix<float> dense = detail::stored_rows(vectors, m);
  s.vectors_ = device_buffer<float>(s.n * s.dim_, "stored vectors");
  if (s.n > 0)
    check(cudaMemcpy(s.vectors_.get(), dense.values.data(), s.n * s.dim_ * sizeof(float), cudaMemcpyHostToDevice),
          "cudaMemcpy");
  if (m == shoal::metric::l2 && s.n > 0) {
    s.norms_ = device_buffer<float>(s.n, "vector norms");
    detail::row_norms<<<static_cast<unsigned>((s.n + detail::norm_threads - 1) / detail::norm_threads),
                        detail::norm_threads>>>(s.vectors_.get(), s.n, s.dim_, s.norms_.get());
    check(cudaGetLastError(), "norm kernel launch");
    check(cudaDeviceSynchronize(), "norm kernel");
  }
  std::size_t tile_bytes = options.tile_bytes;
  if (tile_bytes == 0) {
    int l2 = 0;
    check(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device), "cudaDeviceGetAttribute");
    tile_bytes = static_cast<std::size_t>(l2) / 2;
  }
  s.tile_floats_ = std::clamp(tile_bytes, min_tile_bytes, max_tile_bytes) / sizeof(float);
  s.max_batch_ = options.max_batch;
}

flat_index::~flat_index() = default;
flat_index::flat_index(flat_index&&) noexcept = default;
flat_index& flat_index::operator=(flat_index&&) noexcept = default;

// A moved-from index holds nothing: no rows, no device (a coarse_quantizer moved from then fails an IVF
// search's check of its lists instead of crashing it).
std::size_t flat_index::size() const noexcept { return impl_ ? impl_->n : 0; }
std::size_t flat_index::dim() const noexcept { return impl_ ? impl_->dim_ : 0; }
shoal::metric flat_index::metric() const noexcept { return impl_ ? impl_->metric : shoal::metric::l2; }
int flat_index::device() const noexcept { return impl_ ? impl_->device : -1; }
std::size_t flat_index::device_bytes() const noexcept {
  return impl_ ? (impl_->vectors_.size() + impl_->norms_.size() + impl_->offset_.size()) * sizeof(float) : 0;
}

flat_index::impl& flat_index::state(const char* who) const {
  SHOAL_CHECK(impl_ != nullptr, who, ": the index was moved from");
  return *impl_;
}

void flat_index::set_query_offset(std::span<const float> offset) {
  impl& s = state("cuda::flat_index::set_query_offset");
  SHOAL_CHECK(s.metric == shoal::metric::l2, "cuda::flat_index::set_query_offset: needs the L2 metric, not ",
              shoal::metric_name(s.metric));
  shoal::detail::check_vectors({offset.data(), 1, offset.size()}, s.dim_, "cuda::flat_index::set_query_offset: offset");
  const std::lock_guard lock(s.mutex);
  const detail::device_scope on(s.device);
  s.offset_ = device_buffer<float>(s.dim_, "query offset");
  check(cudaMemcpy(s.offset_.get(), offset.data(), s.dim_ * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
  s.offset_host_.assign(offset.begin(), offset.end());
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
  impl& s = state("cuda::flat_index::search");
  shoal::detail::check_vectors(queries, s.dim_, "cuda::flat_index::search: query");
  SHOAL_CHECK(queries.rows == 0 || rows != nullptr, "cuda::flat_index::search: null result buffer");
  const std::lock_guard lock(s.mutex);
  const detail::device_scope on(s.device);
  detail::search_tiles(s, queries, k, rows, distances, s.host_row, s.host_score);
}

}  // namespace shoal::cuda
