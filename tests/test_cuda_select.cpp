// The CUDA search on the CPU, so that it runs everywhere, device or not. tests/cuda_emulator.hpp runs the
// kernels' blocks on real threads that meet at barriers.
//  - The top-k kernel (cuda/select.cuh) is checked exactly against a sort.
//  - The whole search loop (cuda/search.cuh) is checked against the CPU's flat index (ids in its order
//    wherever it has no near-tie), through a backend with a reference GEMM that takes cuBLAS's arguments.
// The [gpu] tests in test_cuda.cpp run the same code on a device.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <vector>

#include <catch2/catch.hpp>

// The emulator right before the kernel source: it defines the CUDA keywords that source uses.
#include "cuda_emulator.hpp"
// (kept apart so that include sorting leaves the order alone)
#include "../cuda/search.cuh"
// (after the emulator as well)
#include "shoal/eval/eval.hpp"
#include "shoal/index/flat.hpp"
#include "test_support.hpp"

using namespace shoal::cuda::detail;
using shoal::metric;

namespace {

struct top_k {
  std::vector<float> score;
  std::vector<std::uint32_t> row;
};

/// Inner products of `queries` queries with n rows (row-major, queries × n) and, under L2, the rows' norms.
struct tile {
  std::size_t queries = 0;
  std::size_t n = 0;
  std::vector<float> ip;
  std::vector<float> norms;  // empty: rank by −ip
};

/// The score the kernel ranks row j of query q by, computed here rather than by select.cuh's `score_of`,
/// so that a kernel ranking NaN anywhere but last fails: ‖x‖² − 2⟨q, x⟩ under L2, −⟨q, x⟩ otherwise, NaN
/// as +inf.
float reference_score(const tile& t, std::size_t q, std::size_t j) {
  const float ip = t.ip[q * t.n + j];
  const float s = t.norms.empty() ? -ip : t.norms[j] - 2.0f * ip;
  return std::isnan(s) ? INFINITY : s;
}

/// The reference: every row's score sorted by (score, row), the first k, empty slots past n.
top_k sorted_top(const tile& t, std::uint32_t k) {
  top_k out{std::vector<float>(t.queries * k, INFINITY), std::vector<std::uint32_t>(t.queries * k, no_row)};
  for (std::size_t q = 0; q < t.queries; ++q) {
    std::vector<std::pair<float, std::uint32_t>> all(t.n);
    for (std::size_t j = 0; j < t.n; ++j) all[j] = {reference_score(t, q, j), static_cast<std::uint32_t>(j)};
    std::sort(all.begin(), all.end());
    for (std::size_t i = 0; i < std::min<std::size_t>(k, t.n); ++i) {
      out.score[q * k + i] = all[i].first;
      out.row[q * k + i] = all[i].second;
    }
  }
  return out;
}

/// What flat.cu does on the device, one merge_chunk launch per chunk of `chunk` rows (here the chunks are
/// views of one wide tile, so the row stride is n, not the chunk's width).
top_k merged_top(const tile& t, std::uint32_t k, std::size_t chunk) {
  top_k out{std::vector<float>(t.queries * k), std::vector<std::uint32_t>(t.queries * k)};
  for (std::size_t row0 = 0; row0 < t.n; row0 += chunk)
    shoal::emulate::launch(static_cast<unsigned>(t.queries), select_threads, merge_shared_bytes(k), merge_chunk,
                           t.ip.data() + row0, t.n, std::min(chunk, t.n - row0),
                           t.norms.empty() ? nullptr : t.norms.data() + row0, static_cast<std::uint32_t>(row0), k,
                           row0 == 0, out.score.data(), out.row.data());
  return out;
}

tile random_tile(std::size_t queries, std::size_t n, bool l2, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  tile t{queries, n, std::vector<float>(queries * n), {}};
  for (float& v : t.ip) v = normal(rng);
  if (l2) {
    t.norms.resize(n);
    for (float& v : t.norms) v = 4.0f + normal(rng);
  }
  return t;
}

void require_merged_equals_sorted(const tile& t, std::uint32_t k, std::size_t chunk) {
  CAPTURE(t.n, k, chunk, t.norms.empty());
  const top_k want = sorted_top(t, k);
  const top_k got = merged_top(t, k, chunk);
  REQUIRE(got.row == want.row);
  REQUIRE(got.score == want.score);  // NaN is mapped to +inf, so == is exact here
}

}  // namespace

TEST_CASE("merge_chunk keeps the exact top-k of random scores across chunks", "[cuda_select]") {
  for (const bool l2 : {false, true}) {
    const tile t = random_tile(5, 5000, l2, l2 ? 11 : 12);
    require_merged_equals_sorted(t, 10, 5000);  // one chunk: several rounds of one block
    require_merged_equals_sorted(t, 10, 1500);  // chunks not a multiple of a round
    require_merged_equals_sorted(t, 1, 1024);
    require_merged_equals_sorted(t, 100, 777);
    require_merged_equals_sorted(t, 10, candidates_per_round + 1);  // a round and one score
    require_merged_equals_sorted(t, 1024, candidates_per_round);    // the largest k, one whole round
  }
}

TEST_CASE("merge_chunk: ties go to the smaller row, NaN ranks last, k beyond n leaves empty slots", "[cuda_select]") {
  SECTION("many ties") {
    tile t = random_tile(4, 3000, true, 21);
    std::mt19937 rng(22);
    for (float& v : t.ip) v = static_cast<float>(rng() % 4);
    std::fill(t.norms.begin(), t.norms.end(), 1.0f);
    require_merged_equals_sorted(t, 50, 3000);
    require_merged_equals_sorted(t, 50, 600);
  }
  SECTION("NaN and infinite scores") {
    tile t = random_tile(3, 2100, false, 23);
    for (std::size_t i = 0; i < t.ip.size(); i += 3) t.ip[i] = std::numeric_limits<float>::quiet_NaN();
    for (std::size_t i = 1; i < t.ip.size(); i += 7) t.ip[i] = -INFINITY;  // score +inf
    require_merged_equals_sorted(t, 1024, 2100);  // the k reach into NaN and +inf scores: real rows, by row
    require_merged_equals_sorted(t, 10, 700);
  }
  SECTION("fewer rows than k") {
    const tile t = random_tile(3, 50, true, 24);
    const top_k got = merged_top(t, 100, 20);
    require_merged_equals_sorted(t, 100, 20);
    for (std::size_t q = 0; q < 3; ++q)
      for (std::size_t i = 50; i < 100; ++i) REQUIRE(got.row[q * 100 + i] == no_row);
  }
}

TEST_CASE("merge_chunk: scores that fall in scan order merge every round", "[cuda_select]") {
  // The worst case for the threshold: under inner product, rising inner products are falling scores, so
  // every score of every round beats the k-th so far.
  tile t{2, 4100, std::vector<float>(2 * 4100), {}};
  for (std::size_t q = 0; q < 2; ++q)
    for (std::size_t j = 0; j < t.n; ++j) t.ip[q * t.n + j] = static_cast<float>(j) * (q == 0 ? 1.0f : 0.5f);
  require_merged_equals_sorted(t, 10, 4100);
  require_merged_equals_sorted(t, 1024, 1500);
}

TEST_CASE("plan_tiles keeps the tile within budget, chunks wide and batches within the grid", "[cuda_select]") {
  const std::size_t budget = (std::size_t{25} << 20) / sizeof(float);
  for (const std::size_t queries :
       {std::size_t{1}, std::size_t{64}, std::size_t{1024}, std::size_t{16384}, std::size_t{200000}})
    for (const std::size_t rows : {std::size_t{1}, std::size_t{1000}, std::size_t{65536}, std::size_t{10000000}}) {
      CAPTURE(queries, rows);
      const tile_plan p = plan_tiles(queries, rows, budget);
      REQUIRE(p.batch >= 1);
      REQUIRE(p.batch <= std::min<std::size_t>(queries, 65535));
      REQUIRE(p.chunk >= 1);
      REQUIRE(p.chunk <= rows);
      REQUIRE(p.batch * p.chunk <= budget);
      REQUIRE(p.chunk >= std::min(rows, min_chunk));
      if (p.batch < std::min<std::size_t>(queries, 65535)) REQUIRE(p.chunk == std::min(rows, min_chunk));
    }
  // A budget smaller than one wide chunk still makes progress: one query, as many rows as fit.
  const tile_plan tiny = plan_tiles(100, 65536, 1000);
  REQUIRE(tiny.batch == 1);
  REQUIRE(tiny.chunk == 1000);
  // max_batch bounds the batch, and the chunks widen to fill the budget instead.
  const tile_plan wide = plan_tiles(16384, 65536, budget, 1024);
  REQUIRE(plan_tiles(16384, 65536, budget).batch > 1024);
  REQUIRE(wide.batch == 1024);
  REQUIRE(wide.chunk == budget / 1024);
  REQUIRE(plan_tiles(100, 65536, budget, 1024).batch == 100);    // fewer queries than the bound
  REQUIRE(plan_tiles(16384, 2000, budget, 1024).chunk == 2000);  // never beyond the rows
}

namespace {

/// The CPU backend of search_tiles (the calls are listed in cuda/search.cuh): host buffers, a reference
/// GEMM with cuBLAS's column-major (T, N) conventions, the kernels on the emulator.
class cpu_backend {
 public:
  cpu_backend(shoal::matrix_view<const float> vectors, metric m, std::size_t tile_floats, std::size_t max_batch = 0)
      : n_(vectors.rows),
        dim_(vectors.dim),
        metric_(m),
        tile_floats_(tile_floats),
        max_batch_(max_batch),
        vectors_(stored_rows(vectors, m)) {
    if (m != metric::l2) return;
    norms_.resize(n_);
    shoal::emulate::launch(static_cast<unsigned>((n_ + norm_threads - 1) / norm_threads), norm_threads, 0, row_norms,
                           vectors_.values.data(), n_, dim_, norms_.data());
  }

  [[nodiscard]] std::size_t rows() const { return n_; }
  [[nodiscard]] std::size_t dim() const { return dim_; }
  [[nodiscard]] metric kind() const { return metric_; }
  [[nodiscard]] std::size_t tile_floats() const { return tile_floats_; }
  [[nodiscard]] std::size_t max_batch() const { return max_batch_; }
  [[nodiscard]] const float* vectors() const { return vectors_.values.data(); }
  [[nodiscard]] const float* norms() const { return norms_.empty() ? nullptr : norms_.data(); }
  [[nodiscard]] float* batch() { return batch_.data(); }
  [[nodiscard]] float* tile() { return tile_.data(); }

  void reserve(const tile_plan& plan, std::uint32_t k) {
    largest_batch = std::max(largest_batch, plan.batch * dim_);
    batch_.assign(plan.batch * dim_, NAN);  // garbage where nothing was written, as on a device
    tile_.assign(plan.batch * plan.chunk, NAN);
    best_score_.assign(plan.batch * k, NAN);
    best_row_.assign(plan.batch * k, 0xdeadbeef);
  }
  void upload(const float* first, std::size_t stride, std::size_t count) {
    for (std::size_t r = 0; r < count; ++r) std::copy_n(first + r * stride, dim_, batch_.data() + r * dim_);
  }
  void set_query_offset(std::vector<float> offset) { offset_ = std::move(offset); }
  [[nodiscard]] std::span<const float> query_offset() const { return offset_; }
  void shift(std::size_t count) {
    const std::size_t values = count * dim_;
    shoal::emulate::launch(static_cast<unsigned>((values + offset_threads - 1) / offset_threads), offset_threads, 0,
                           subtract_offset, batch_.data(), count, dim_, static_cast<const float*>(offset_.data()));
    ++shifts;
  }
  /// C (m × n, column-major, leading ldc) = Aᵀ B, A k × m (leading lda), B k × n (leading ldb).
  void sgemm_tn(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc) {
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < m; ++i) {
        float acc = 0.0f;
        for (int p = 0; p < k; ++p) acc = std::fma(a[p + std::size_t(i) * lda], b[p + std::size_t(j) * ldb], acc);
        c[i + std::size_t(j) * ldc] = acc;
      }
    ++gemms;
  }
  void merge(unsigned blocks, const float* tile, std::size_t ld, std::size_t len, const float* norms,
             std::uint32_t row0, std::uint32_t k, bool fresh) {
    shoal::emulate::launch(blocks, select_threads, merge_shared_bytes(k), merge_chunk, tile, ld, len, norms, row0, k,
                           fresh, best_score_.data(), best_row_.data());
  }
  void download(std::size_t count, std::uint32_t k, std::uint32_t* rows_out, float* scores_out) {
    std::copy_n(best_row_.data(), count * k, rows_out);
    if (scores_out != nullptr) std::copy_n(best_score_.data(), count * k, scores_out);
    ++batches;
  }

  std::size_t gemms = 0;          // one per chunk per batch
  std::size_t batches = 0;        // one download per batch
  std::size_t largest_batch = 0;  // floats of query batch reserved, at most
  std::size_t shifts = 0;         // query batches moved by the offset

 private:
  std::size_t n_, dim_;
  metric metric_;
  std::size_t tile_floats_;
  std::size_t max_batch_;
  shoal::matrix<float> vectors_;
  std::vector<float> norms_, batch_, tile_, best_score_, offset_;
  std::vector<std::uint32_t> best_row_;
};

/// search_tiles through the CPU backend, as flat_index::search returns it.
shoal::neighbors emulated_search(cpu_backend& backend, shoal::matrix_view<const float> queries, std::size_t k) {
  std::vector<std::uint32_t> rows(queries.rows * k), host_row;
  std::vector<float> host_score;
  shoal::neighbors result(queries.rows, k);
  search_tiles(backend, queries, k, rows.data(), result.view().distances, host_row, host_score);
  for (std::size_t i = 0; i < rows.size(); ++i) result.view().ids[i] = rows[i] == no_row ? shoal::no_id : rows[i];
  return result;
}

/// Holds the loop's result `got` to `all`, the CPU flat index's ranking of every stored row for the same
/// queries (k = n), beyond what require_same_up_to_ties checks: each query's distances never fall, each
/// id's distance is within `tol` of that row's reference distance, the j-th id is the reference's
/// wherever the reference's j-th distance lies more than 2·tol from its neighbours' (rounding within `tol`
/// cannot reorder it there, which holds for at least half the slots), and the slots past n are empty.
void require_reference_order(const shoal::neighbors& got, const shoal::neighbors& all, float tol) {
  REQUIRE(got.rows() == all.rows());
  const std::size_t n = all.k(), k = got.k(), filled = std::min(k, n);
  std::size_t untied = 0;
  std::vector<float> reference(n);  // by row number
  for (std::size_t r = 0; r < got.rows(); ++r) {
    CAPTURE(r);
    for (std::size_t j = 0; j < n; ++j) reference[all.id(r, j)] = all.distance(r, j);
    for (std::size_t j = 0; j < filled; ++j) {
      CAPTURE(j);
      const shoal::vector_id id = got.id(r, j);
      REQUIRE(id < n);
      CHECK(std::abs(got.distance(r, j) - reference[id]) <= tol);
      if (j > 0) CHECK(got.distance(r, j - 1) <= got.distance(r, j));
      if ((j == 0 || all.distance(r, j) - all.distance(r, j - 1) > 2 * tol) &&
          (j + 1 == n || all.distance(r, j + 1) - all.distance(r, j) > 2 * tol)) {
        CHECK(id == all.id(r, j));
        ++untied;
      }
    }
    for (std::size_t j = filled; j < k; ++j) {
      CHECK(got.id(r, j) == shoal::no_id);
      CHECK(got.distance(r, j) == shoal::no_distance);
    }
  }
  CHECK(2 * untied >= got.rows() * filled);  // near-ties did not leave the order unchecked
}

}  // namespace

TEST_CASE("the device search loop, on the CPU, returns the CPU flat index's neighbours up to ties", "[cuda_select]") {
  // Tiles of 16,384 floats over 6,000 rows and 10 queries: batches of 4 queries, chunks of 4,096 rows, so
  // each query's top-k is merged across two chunks, in three batches (the last one short).
  const shoal::test::clustered_set data(6000, 10, 16, 30, 51, 0.5f, 4);
  for (const metric m : {metric::l2, metric::inner_product, metric::cosine}) {
    CAPTURE(shoal::metric_name(m));
    cpu_backend backend(data.base.view(), m, std::size_t{1} << 14);
    const shoal::flat_index cpu = shoal::test::row_numbered_flat(data.base, m);
    const float tol = 1e-5f * (m == metric::cosine ? 1.0f : shoal::test::max_squared_norm(data.base));
    const shoal::neighbors all = cpu.search(data.queries.view(), data.base.rows);
    for (const std::size_t k : {1, 10, 100}) {
      CAPTURE(k);
      const std::size_t gemms = backend.gemms, batches = backend.batches;
      const shoal::neighbors got = emulated_search(backend, data.queries.view(), k);
      shoal::test::require_same_up_to_ties(got, cpu.search(data.queries.view(), k), tol);
      require_reference_order(got, all, tol);
      CHECK(backend.gemms - gemms == 6);
      CHECK(backend.batches - batches == 3);
      // Batches of at most 2 queries (so chunks of 6,000 rows, the whole set): the same neighbours.
      cpu_backend narrow(data.base.view(), m, std::size_t{1} << 14, 2);
      const shoal::neighbors narrow_got = emulated_search(narrow, data.queries.view(), k);
      shoal::test::require_same_up_to_ties(narrow_got, cpu.search(data.queries.view(), k), tol);
      require_reference_order(narrow_got, all, tol);
      CHECK(narrow.gemms == 5);
      // Rows alone (null distances, as the coarse pass asks): the rows above.
      std::vector<std::uint32_t> rows(data.queries.rows * k), host_row;
      std::vector<float> host_score;
      search_tiles(backend, data.queries.view(), k, rows.data(), nullptr, host_row, host_score);
      for (std::size_t i = 0; i < rows.size(); ++i) REQUIRE(rows[i] == got.id(i / k, i % k));
    }
  }
}

TEST_CASE("the device search loop, on the CPU: rows stored centred, queries offset, far from the origin",
          "[cuda_select]") {
  // 1,000 + clustered data: rows stored minus their mean μ and queries searched as q − μ rank as the
  // rows themselves (the CPU flat index, which takes q − x directly), with the same distances. Stored
  // as they are, the GEMM form ‖x‖² − 2⟨q, x⟩ loses the digits that tell the neighbours apart.
  shoal::test::clustered_set data(3000, 12, 16, 20, 57, 0.5f, 4);
  for (float& v : data.base.values) v += 1000.0f;
  for (float& v : data.queries.values) v += 1000.0f;
  const shoal::detail::centred_rows centred = shoal::detail::centred_copy(data.base.view());
  const shoal::flat_index cpu = shoal::test::row_numbered_flat(data.base, metric::l2);
  const shoal::neighbors want = cpu.search(data.queries.view(), 10);
  cpu_backend backend(centred.rows.view(), metric::l2, std::size_t{1} << 14);
  backend.set_query_offset(centred.centre);
  const shoal::neighbors got = emulated_search(backend, data.queries.view(), 10);
  shoal::test::require_same_up_to_ties(got, want, 1e-3f);
  require_reference_order(got, cpu.search(data.queries.view(), data.base.rows), 1e-3f);
  CHECK(backend.shifts == backend.batches);
  // The same rows without the frame: other neighbours.
  cpu_backend raw(data.base.view(), metric::l2, std::size_t{1} << 14);
  CHECK(shoal::recall_at_k(emulated_search(raw, data.queries.view(), 10), want, 10) < 0.9);
}

TEST_CASE("the device search loop, on the CPU: a wide dimension shrinks the query batch to the tile", "[cuda_select]") {
  // Tiles of 16,384 floats at dim 4,096: at most 4 queries a batch, whatever the chunk rule allows
  // (16,384 / 300 rows would be 54), so 10 queries take 3 batches and the batch never outgrows the tile.
  const shoal::test::clustered_set data(300, 10, 4096, 5, 55, 0.5f, 4);
  cpu_backend backend(data.base.view(), metric::l2, std::size_t{1} << 14);
  const shoal::flat_index cpu = shoal::test::row_numbered_flat(data.base, metric::l2);
  const float tol = 1e-4f * shoal::test::max_squared_norm(data.base);
  const shoal::neighbors got = emulated_search(backend, data.queries.view(), 5);
  shoal::test::require_same_up_to_ties(got, cpu.search(data.queries.view(), 5), tol);
  require_reference_order(got, cpu.search(data.queries.view(), data.base.rows), tol);
  CHECK(backend.batches == 3);
  CHECK(backend.largest_batch <= std::size_t{1} << 14);
}

TEST_CASE("the device search loop, on the CPU: fewer rows than k leave empty slots", "[cuda_select]") {
  const shoal::matrix<float> queries = shoal::make_uniform(3, 16, 53);
  const shoal::matrix<float> few = shoal::make_uniform(5, 16, 52);
  cpu_backend backend(few.view(), metric::l2, std::size_t{1} << 18);
  const shoal::neighbors got = emulated_search(backend, queries.view(), 8);
  const shoal::flat_index cpu = shoal::test::row_numbered_flat(few, metric::l2);
  require_reference_order(got, cpu.search(queries.view(), 5), 1e-5f * shoal::test::max_squared_norm(few));
  // Rows alone: each query's five rows, then no_row, at the query's own k slots.
  std::vector<std::uint32_t> rows(queries.rows * 8), host_row;
  std::vector<float> host_score;
  search_tiles(backend, queries.view(), 8, rows.data(), nullptr, host_row, host_score);
  for (std::size_t q = 0; q < got.rows(); ++q)
    for (std::size_t j = 0; j < 8; ++j) {
      CAPTURE(q, j);
      REQUIRE(rows[q * 8 + j] == (j < 5 ? got.id(q, j) : no_row));
    }
}
