// shoal::cuda::flat_index: cuBLAS SGEMM for the inner products of a query batch with every stored vector,
// then one thread block per query that selects its k best scores with a radix select and sorts only
// those k. Not fused yet: the score tile makes a round trip through device memory (the fused
// GEMM + select kernel is the planned next step, measured against this one).

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
#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "shoal/cuda/flat.hpp"

namespace shoal::cuda {
namespace {

using detail::check;
using detail::device_buffer;

void check_blas(cublasStatus_t status, const char* what) {
  SHOAL_CHECK_CODE(status == CUBLAS_STATUS_SUCCESS, errc::io_error, "cuBLAS ", what, " failed (status ",
                   static_cast<int>(status), ")");
}

constexpr unsigned select_threads = 256;  // a multiple of the warp size
constexpr std::uint32_t no_row = std::numeric_limits<std::uint32_t>::max();
/// Score tiles are cut to stay within this many bytes.
constexpr std::size_t tile_budget = std::size_t{256} << 20;

/// Maps a score to an unsigned key with the same order (NaN last, −0 as +0), for the radix select.
__device__ inline std::uint32_t order_key(float s) {
  if (isnan(s)) return 0xffffffffu;
  if (s == 0.0f) s = 0.0f;
  const std::uint32_t u = __float_as_uint(s);
  return (u & 0x80000000u) != 0 ? ~u : (u | 0x80000000u);
}

/// Rank score of stored row j from its inner product with the query: ‖x‖² − 2⟨q, x⟩ under L2 (norms
/// given), −⟨q, x⟩ otherwise; NaN (from overflow) ranks last.
__device__ inline float score_of(const float* ip, const float* norms, std::size_t j) {
  const float s = norms != nullptr ? norms[j] - 2.0f * ip[j] : -ip[j];
  return isnan(s) ? INFINITY : s;
}

__device__ inline bool before(float sa, std::uint32_t ra, float sb, std::uint32_t rb) {
  return sa < sb || (sa == sb && ra < rb);
}

/// One block per query row of `tile` (n inner products each): the k (≤ kpad, a power of two ≤ 1024,
/// k ≤ n) best rows by (score, row), sorted, into out_rows / out_scores (k per query).
///  1. Radix select, 8 bits per pass from the top: a shared histogram of the candidates that match the
///     prefix chosen so far finds the k-th smallest key exactly after four passes over the row.
///  2. Every row below that key is taken (in any order); rows equal to it are taken in row order until
///     k are held (a block-wide ballot scan), so ties go to the smaller row.
///  3. A bitonic sort of the k candidates in shared memory.
__global__ void select_rows(const float* tile, std::size_t n, const float* norms, std::uint32_t k, std::uint32_t kpad,
                            std::uint32_t* out_rows, float* out_scores) {
  extern __shared__ unsigned char shared[];
  float* cand_score = reinterpret_cast<float*>(shared);
  std::uint32_t* cand_row = reinterpret_cast<std::uint32_t*>(cand_score + kpad);
  __shared__ std::uint32_t hist[256];
  __shared__ std::uint32_t warp_counts[select_threads / 32];
  __shared__ std::uint32_t s_prefix, s_remaining, s_count, s_taken;

  const float* ip = tile + static_cast<std::size_t>(blockIdx.x) * n;
  const unsigned tid = threadIdx.x;
  std::uint32_t prefix = 0, mask = 0, remaining = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (unsigned i = tid; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (std::size_t j = tid; j < n; j += blockDim.x) {
      const std::uint32_t key = order_key(score_of(ip, norms, j));
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (tid == 0) {
      std::uint32_t below = 0, digit = 0;
      for (; digit < 255; ++digit) {
        if (below + hist[digit] >= remaining) break;
        below += hist[digit];
      }
      s_prefix = prefix | (digit << shift);
      s_remaining = remaining - below;
    }
    __syncthreads();
    prefix = s_prefix;
    remaining = s_remaining;
    mask |= 255u << shift;
    __syncthreads();  // everyone has read s_prefix before the next pass's thread 0 rewrites it
  }
  // prefix is now the k-th smallest key; `remaining` rows equal to it belong to the k.
  if (tid == 0) {
    s_count = 0;
    s_taken = 0;
  }
  __syncthreads();
  for (std::size_t j = tid; j < n; j += blockDim.x) {
    const float s = score_of(ip, norms, j);
    if (order_key(s) < prefix) {
      const std::uint32_t slot = atomicAdd(&s_count, 1u);
      cand_score[slot] = s;
      cand_row[slot] = static_cast<std::uint32_t>(j);
    }
  }
  __syncthreads();
  const std::uint32_t strict = k - remaining;
  const unsigned lane = tid & 31u, warp = tid >> 5;
  for (std::size_t base = 0; base < n; base += blockDim.x) {
    if (s_taken >= remaining) break;  // uniform: read after the barrier that ended the last round
    const std::size_t j = base + tid;
    const float s = j < n ? score_of(ip, norms, j) : INFINITY;
    const bool tie = j < n && order_key(s) == prefix;
    const unsigned ballot = __ballot_sync(0xffffffffu, tie);
    if (lane == 0) warp_counts[warp] = static_cast<std::uint32_t>(__popc(ballot));
    __syncthreads();
    std::uint32_t rank = static_cast<std::uint32_t>(__popc(ballot & ((1u << lane) - 1u)));
    for (unsigned w = 0; w < warp; ++w) rank += warp_counts[w];
    const std::uint32_t position = s_taken + rank;
    if (tie && position < remaining) {
      cand_score[strict + position] = s;
      cand_row[strict + position] = static_cast<std::uint32_t>(j);
    }
    __syncthreads();
    if (tid == 0) {
      std::uint32_t total = 0;
      for (unsigned w = 0; w < blockDim.x / 32; ++w) total += warp_counts[w];
      s_taken += total;
    }
    __syncthreads();
  }
  for (std::uint32_t i = k + tid; i < kpad; i += blockDim.x) {
    cand_score[i] = INFINITY;
    cand_row[i] = no_row;
  }
  __syncthreads();
  for (std::uint32_t size = 2; size <= kpad; size <<= 1) {
    for (std::uint32_t stride = size >> 1; stride > 0; stride >>= 1) {
      for (std::uint32_t i = tid; i < kpad; i += blockDim.x) {
        const std::uint32_t partner = i ^ stride;
        if (partner <= i) continue;
        const bool ascending = (i & size) == 0;
        const bool out_of_order = before(cand_score[partner], cand_row[partner], cand_score[i], cand_row[i]);
        if (out_of_order == ascending) {
          const float ts = cand_score[i];
          cand_score[i] = cand_score[partner];
          cand_score[partner] = ts;
          const std::uint32_t tr = cand_row[i];
          cand_row[i] = cand_row[partner];
          cand_row[partner] = tr;
        }
      }
      __syncthreads();
    }
  }
  const std::size_t out = static_cast<std::size_t>(blockIdx.x) * k;
  for (std::uint32_t i = tid; i < k; i += blockDim.x) {
    out_rows[out + i] = cand_row[i];
    out_scores[out + i] = cand_score[i];
  }
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

[[nodiscard]] std::uint32_t next_pow2(std::uint32_t v) {
  std::uint32_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

}  // namespace

struct flat_index::impl {
  int device = 0;
  std::size_t n = 0;
  std::size_t dim = 0;
  shoal::metric metric = shoal::metric::l2;
  device_buffer<float> vectors;  // n x dim, dense
  device_buffer<float> norms;    // n, under L2 only
  cublasHandle_t blas = nullptr;
  std::mutex mutex;  // one search at a time on the handle and the device

  ~impl() {
    if (blas != nullptr) (void)cublasDestroy(blas);
  }
};

flat_index::flat_index(matrix_view<const float> vectors, shoal::metric m, int device)
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
  check_blas(cublasCreate(&s.blas), "cublasCreate");
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
  const std::uint32_t kpad = next_pow2(kk);
  // Queries per batch: the score tile within budget, the grid within its 65,535 blocks.
  const std::size_t batch =
      std::clamp<std::size_t>(tile_budget / (s.n * sizeof(float)), 1, std::min<std::size_t>(q.rows, 65535));

  const std::lock_guard lock(s.mutex);
  detail::use_device(s.device);
  const device_buffer<float> d_queries(batch * s.dim, "query batch");
  const device_buffer<float> d_tile(batch * s.n, "score tile");
  const device_buffer<std::uint32_t> d_rows(batch * kk, "result rows");
  const device_buffer<float> d_scores(batch * kk, "result scores");
  std::vector<std::uint32_t> host_rows(batch * kk);
  std::vector<float> host_scores(batch * kk);
  const float one = 1.0f, zero = 0.0f;
  const std::size_t shared_bytes = std::size_t{kpad} * (sizeof(float) + sizeof(std::uint32_t));
  for (std::size_t first = 0; first < q.rows; first += batch) {
    const std::size_t count = std::min(batch, q.rows - first);
    check(cudaMemcpy2D(d_queries.get(), s.dim * sizeof(float), q.row(first), q.stride * sizeof(float),
                       s.dim * sizeof(float), count, cudaMemcpyHostToDevice),
          "cudaMemcpy2D");
    // Column-major view: tile (n x count, leading n) = vectorsᵀ(n x dim) · queries(dim x count), i.e. the
    // row-major count x n matrix of inner products.
    check_blas(cublasSgemm(s.blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(s.n), static_cast<int>(count),
                           static_cast<int>(s.dim), &one, s.vectors.get(), static_cast<int>(s.dim), d_queries.get(),
                           static_cast<int>(s.dim), &zero, d_tile.get(), static_cast<int>(s.n)),
               "cublasSgemm");
    select_rows<<<static_cast<unsigned>(count), select_threads, shared_bytes>>>(
        d_tile.get(), s.n, s.metric == shoal::metric::l2 ? s.norms.get() : nullptr, kk, kpad, d_rows.get(),
        d_scores.get());
    check(cudaGetLastError(), "select kernel launch");
    check(cudaMemcpy(host_rows.data(), d_rows.get(), count * kk * sizeof(std::uint32_t), cudaMemcpyDeviceToHost),
          "cudaMemcpy");
    check(cudaMemcpy(host_scores.data(), d_scores.get(), count * kk * sizeof(float), cudaMemcpyDeviceToHost),
          "cudaMemcpy");
    for (std::size_t i = 0; i < count; ++i) {
      const float* query = q.row(first + i);
      float offset = 0.0f;  // ‖q‖² under L2 (ranks do not need it), 1 under cosine
      if (s.metric == shoal::metric::l2)
        for (std::size_t j = 0; j < s.dim; ++j) offset = std::fma(query[j], query[j], offset);
      if (s.metric == shoal::metric::cosine) offset = 1.0f;
      for (std::size_t j = 0; j < kk; ++j) {
        rows[(first + i) * k + j] = host_rows[i * kk + j];
        distances[(first + i) * k + j] = host_scores[i * kk + j] + offset;
      }
    }
  }
}

}  // namespace shoal::cuda
