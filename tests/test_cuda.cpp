// The CUDA component end to end. Tests tagged [gpu] compare the device with the CPU when a device is
// present; without one they check the error path only (and say so), which is what CI runs.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string_view>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "shoal/cuda/coarse_quantizer.hpp"
#include "shoal/cuda/device.hpp"
#include "shoal/cuda/flat.hpp"
#include "shoal/distance/distance.hpp"
#include "shoal/eval/eval.hpp"
#include "shoal/index/flat.hpp"
#include "shoal/index/ivf_flat.hpp"
#include "test_support.hpp"

using namespace shoal;
using shoal::test::fails_with;
using shoal::test::require_same_up_to_ties;

namespace {

/// Whether a device is there to test. Without one the tests check the error path only (what CI runs),
/// unless SHOAL_REQUIRE_GPU is set (benchmarks/gpu/device-check.sh sets it): a GPU machine whose driver
/// cannot start CUDA passed every test (a review).
bool have_device() {
  if (cuda::device_count() > 0) return true;
  const char* required = std::getenv("SHOAL_REQUIRE_GPU");
  if (required != nullptr && *required != '\0' && std::string_view(required) != "0")
    FAIL("SHOAL_REQUIRE_GPU is set and CUDA has no device: " << cuda::no_device_reason());
  WARN(cuda::no_device_reason() << ": checking the error path only");
  return false;
}

}  // namespace

TEST_CASE("CUDA l2sqr kernel matches the CPU kernel, or reports no device", "[gpu]") {
  const matrix<float> x = make_uniform(1000, 100, 4);
  const matrix<float> q = make_uniform(1, 100, 5);
  // Bad arguments are refused by name, before the device is looked for (a stride below the dimension
  // was taken).
  REQUIRE_THROWS_MATCHES(cuda::l2sqr_one_to_many(q.row(0), matrix_view<const float>(x.values.data(), 10, 100, 50)),
                         shoal::error, fails_with(errc::invalid_argument, "stride 50 is smaller than its dimension"));
  REQUIRE_THROWS_MATCHES(cuda::l2sqr_one_to_many(nullptr, x.view()), shoal::error,
                         fails_with(errc::invalid_argument, "null query"));
  if (!have_device()) {
    // The error says why there is no device: "no CUDA device", or the runtime's reason (here: a driver
    // older than the runtime, or none), which it hid.
    const std::string reason = cuda::no_device_reason();
    CHECK_THAT(reason, Catch::StartsWith("no CUDA device"));
    REQUIRE_THROWS_MATCHES(cuda::l2sqr_one_to_many(q.row(0), x.view()), shoal::error,
                           fails_with(errc::unsupported, reason));
    REQUIRE_THROWS_MATCHES(cuda::device_name(0), shoal::error, fails_with(errc::unsupported, reason));
    return;
  }
  CHECK(cuda::no_device_reason().empty());
  INFO(cuda::device_name(0));
  const std::vector<float> got = cuda::l2sqr_one_to_many(q.row(0), x.view());
  REQUIRE(got.size() == 1000);
  for (std::size_t i = 0; i < 1000; ++i) CHECK(got[i] == Approx(l2sqr(q.row(0), x.row(i), 100)).epsilon(1e-5));
}

TEST_CASE("CUDA flat index returns the CPU flat index's neighbours up to ties", "[gpu]") {
  const test::clustered_set data(3000, 300, 64, 20, 21, 0.5f, 5);
  if (!have_device()) {
    REQUIRE_THROWS_MATCHES(cuda::flat_index(data.base.view(), metric::l2), shoal::error,
                           fails_with(errc::unsupported, "no CUDA device"));
    REQUIRE_THROWS_MATCHES(cuda::coarse_quantizer(data.base.view(), metric::l2), shoal::error,
                           fails_with(errc::unsupported, "no CUDA device"));
    return;
  }
  for (const metric m : {metric::l2, metric::inner_product, metric::cosine}) {
    CAPTURE(metric_name(m));
    const cuda::flat_index gpu(data.base.view(), m);
    CHECK(gpu.size() == 3000);
    CHECK(gpu.device_bytes() >= 3000 * 64 * sizeof(float));
    const flat_index cpu = test::row_numbered_flat(data.base, m);
    // The GEMM form (‖q‖² + ‖x‖² − 2⟨q, x⟩) and the device's summation order round differently from the CPU's
    // pairwise kernel: allow 2e-5 of the largest squared norm (64 terms of fp32 error, with margin).
    const float tol = 2e-5f * 2.0f * (m == metric::cosine ? 1.0f : test::max_squared_norm(data.base));
    for (const std::size_t k : {1, 10, 100, 1024}) {
      CAPTURE(k);
      require_same_up_to_ties(gpu.search(data.queries.view(), k), cpu.search(data.queries.view(), k), tol);
    }
  }
}

TEST_CASE("CUDA flat index: many chunks and batches give the one-tile results", "[gpu][heavy]") {
  // 1 MiB score tiles (the smallest) over 20,000 rows and 150 queries: batches of 64 queries, chunks of
  // 4,096 rows, so every query's top-k is merged across five chunks, in three batches.
  const test::clustered_set data(20000, 150, 16, 50, 41, 0.5f, 4);
  if (!have_device()) return;
  const cuda::flat_index chunked(data.base.view(), metric::l2, 0, {.tile_bytes = 1});
  const cuda::flat_index whole(data.base.view(), metric::l2, 0, {.tile_bytes = std::size_t{256} << 20});
  // cuBLAS may pick another kernel for another tile shape, so allow a few ulps of the distances.
  const float tol = 1e-5f * test::max_squared_norm(data.base);
  for (const std::size_t k : {1, 32, 1024}) {
    CAPTURE(k);
    require_same_up_to_ties(chunked.search(data.queries.view(), k), whole.search(data.queries.view(), k), tol);
  }
}

TEST_CASE("CUDA flat index: strided queries, and rows without distances, give the dense results", "[gpu]") {
  // The batch goes up in a pitched copy (cudaMemcpy2D): rows with a stride must land where dense ones do.
  const test::clustered_set data(5000, 70, 24, 20, 43, 0.5f, 4);
  if (!have_device()) return;
  const std::size_t dim = 24, stride = 29;
  std::vector<float> wide(data.queries.rows * stride, NAN);  // the gaps hold NaN: read, they would show
  for (std::size_t q = 0; q < data.queries.rows; ++q) std::copy_n(data.queries.row(q), dim, wide.data() + q * stride);
  const matrix_view<const float> strided(wide.data(), data.queries.rows, dim, stride);
  const cuda::flat_index gpu(data.base.view(), metric::l2, 0, {.tile_bytes = 1});
  const neighbors dense = gpu.search(data.queries.view(), 20);
  const neighbors pitched = gpu.search(strided, 20);
  std::vector<std::uint32_t> rows_only(dense.rows() * 20);  // null distances: the rows alone
  gpu.search(strided, 20, rows_only.data(), nullptr);
  for (std::size_t q = 0; q < dense.rows(); ++q)
    for (std::size_t j = 0; j < 20; ++j) {
      REQUIRE(pitched.id(q, j) == dense.id(q, j));
      REQUIRE(pitched.distance(q, j) == dense.distance(q, j));
      REQUIRE(rows_only[q * 20 + j] == dense.id(q, j));
    }
}

namespace {

/// Under inner product, rows r · (1, …, 1) score −r · Σq: with q > 0 every later row beats every earlier
/// one, the select's worst case. The answer is the last k rows, last first.
void check_falling_scores(std::size_t n) {
  if (!have_device()) return;
  const std::size_t dim = 8;
  matrix<float> x(n, dim);
  for (std::size_t r = 0; r < n; ++r) std::fill_n(x.row(r), dim, static_cast<float>(r) / 1024.0f);
  matrix<float> q(2, dim);
  std::fill_n(q.row(0), 2 * dim, 1.0f);
  const cuda::flat_index gpu(x.view(), metric::inner_product, 0, {.tile_bytes = 1});
  for (const std::size_t k : {10, 1024}) {
    const neighbors got = gpu.search(q.view(), k);
    for (std::size_t i = 0; i < 2; ++i)
      for (std::size_t j = 0; j < k; ++j) REQUIRE(got.id(i, j) == n - 1 - j);
  }
}

}  // namespace

TEST_CASE("CUDA flat index: rows in falling score order (every round of the select merges)", "[gpu][heavy]") {
  check_falling_scores(9000);
}

TEST_CASE("CUDA flat index: rows in falling score order, small enough for racecheck", "[gpu]") {
  // compute-sanitizer's racecheck was cut inside the 9,000-row case on the H200 (device-check.sh runs
  // the tests not tagged [heavy] under it).
  check_falling_scores(3000);
}

TEST_CASE("CUDA flat index: searches from several threads at once give the single-thread results", "[gpu]") {
  // One mutex per index serialises the device work; every thread must still get its own batch's answer.
  const test::clustered_set data(4000, 64, 32, 20, 47, 0.5f, 4);
  if (!have_device()) return;
  const cuda::flat_index gpu(data.base.view(), metric::l2, 0, {.tile_bytes = 1});
  const neighbors want = gpu.search(data.queries.view(), 16);
  std::vector<int> same(4, 0);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (std::size_t round = 0; round < 20; ++round) {
        const std::size_t first = (t * 16 + round) % 48;  // threads search overlapping slices
        const neighbors got = gpu.search(data.queries.view().slice(first, 16), 16);
        bool equal = true;
        for (std::size_t q = 0; q < 16; ++q)
          for (std::size_t j = 0; j < 16; ++j)
            equal = equal && got.id(q, j) == want.id(first + q, j) && got.distance(q, j) == want.distance(first + q, j);
        same[t] += equal ? 1 : 0;
      }
    });
  for (std::thread& t : threads) t.join();
  CHECK(same == std::vector<int>(4, 20));
}

TEST_CASE("CUDA flat index: more than 65,535 queries, and max_batch, give the CPU's results", "[gpu][heavy]") {
  // A batch holds at most 65,535 queries (a grid of one block per query): 70,000 run in two or more.
  const test::clustered_set data(500, 70000, 8, 10, 53, 0.5f, 4);
  if (!have_device()) return;
  const flat_index cpu = test::row_numbered_flat(data.base, metric::l2);
  const neighbors want = cpu.search(data.queries.view(), 4);
  const float tol = 2e-5f * 2.0f * test::max_squared_norm(data.base);
  require_same_up_to_ties(cuda::flat_index(data.base.view(), metric::l2).search(data.queries.view(), 4), want, tol);
  // Seven queries per batch at most: 10,000 batches, each merged over the one chunk.
  const cuda::flat_index small(data.base.view(), metric::l2, 0, {.max_batch = 7});
  require_same_up_to_ties(small.search(data.queries.view().slice(0, 700), 4),
                          cpu.search(data.queries.view().slice(0, 700), 4), tol);
}

TEST_CASE("CUDA flat index: rows stored centred with set_query_offset give the CPU's distances", "[gpu]") {
  // Rows near 1,000 in every component: stored minus 1,000 with the offset 1,000, the device ranks and
  // measures ‖q − x‖² as the CPU does on the original rows (the uncentred GEMM form would not: its error
  // is relative to ‖x‖² ≈ 1.6e7).
  test::clustered_set data(3000, 200, 16, 20, 59, 0.5f, 4);
  if (!have_device()) return;
  for (float& v : data.base.values) v += 1000.0f;
  for (float& v : data.queries.values) v += 1000.0f;
  matrix<float> centred = data.base;  // exactly the rows minus 1,000 (both within a factor 2 of it)
  for (float& v : centred.values) v -= 1000.0f;
  cuda::flat_index gpu(centred.view(), metric::l2);
  gpu.set_query_offset(std::vector<float>(16, 1000.0f));
  const flat_index cpu = test::row_numbered_flat(data.base, metric::l2);
  const float tol = 2e-5f * 2.0f * test::max_squared_norm(centred) + 1e-3f;
  require_same_up_to_ties(gpu.search(data.queries.view(), 10), cpu.search(data.queries.view(), 10), tol);
}

TEST_CASE("CUDA flat index: ties go to the smaller row, fewer rows than k leave sentinels", "[gpu]") {
  if (!have_device()) return;
  matrix<float> x(6, 4);
  for (std::size_t r = 0; r < 6; ++r)
    for (std::size_t j = 0; j < 4; ++j) x.row(r)[j] = r < 4 ? 1.0f : 2.0f;  // rows 0..3 identical
  const cuda::flat_index gpu(x.view(), metric::l2);
  const matrix<float> q = [] {
    matrix<float> m(1, 4);
    std::fill_n(m.row(0), 4, 1.0f);
    return m;
  }();
  const neighbors got = gpu.search(q.view(), 8);
  for (std::size_t j = 0; j < 6; ++j) CHECK(got.id(0, j) == j);
  CHECK(got.id(0, 6) == no_id);
  CHECK(got.distance(0, 7) == no_distance);
}

TEST_CASE("CUDA coarse quantizer drives an IVF search to the CPU pass's results", "[gpu]") {
  const test::clustered_set data(4000, 400, 32, 40, 31, 0.5f, 4);
  if (!have_device()) return;
  for (const metric m : {metric::l2, metric::inner_product, metric::cosine}) {
    CAPTURE(metric_name(m));
    ivf_flat_index index(32, m, 64);
    index.train(data.base.view());
    index.add(data.base.view(), data.ids);
    const cuda::coarse_quantizer gpu(index.centroids(), m, 0, 1);
    const cuda::coarse_quantizer tf32(index.centroids(), m, 0, 1, {.precision = cuda::gemm_precision::tf32});
    search_params cpu_params;
    cpu_params.nprobe = 8;
    search_params gpu_params = cpu_params;
    gpu_params.coarse = &gpu;
    const neighbors a = index.search(data.queries.view(), 10, gpu_params);
    const neighbors b = index.search(data.queries.view(), 10, cpu_params);
    // The same lists but where two centroids nearly tie for a query's last probe.
    CHECK(recall_at_k(a, b, 10) >= 0.99);
    // TF32 rounds the inputs to 10-bit mantissas: more near-ties swap, the lists stay nearly the same.
    gpu_params.coarse = &tf32;
    CHECK(recall_at_k(index.search(data.queries.view(), 10, gpu_params), b, 10) >= 0.97);
  }
}

TEST_CASE("CUDA coarse quantizer far from the origin picks the CPU pass's lists", "[gpu]") {
  // 1,000 + clustered data: the uncentred GEMM form picked other lists for most queries; both passes
  // now score in the centroids' centred frame.
  test::clustered_set data(4000, 400, 16, 40, 33, 0.5f, 4);
  for (float& v : data.base.values) v += 1000.0f;
  for (float& v : data.queries.values) v += 1000.0f;
  if (!have_device()) return;
  ivf_flat_index index(16, metric::l2, 64);
  index.train(data.base.view());
  index.add(data.base.view(), data.ids);
  const cuda::coarse_quantizer gpu(index.centroids(), metric::l2, 0, 1);
  search_params cpu_params;
  cpu_params.nprobe = 4;
  search_params gpu_params = cpu_params;
  gpu_params.coarse = &gpu;
  CHECK(recall_at_k(index.search(data.queries.view(), 10, gpu_params),
                    index.search(data.queries.view(), 10, cpu_params), 10) >= 0.99);
}

TEST_CASE("CUDA coarse quantizer checks the centroids as the CPU pass does, before looking for a device", "[gpu]") {
  // Centroids of norm 6e18, within check_vectors' bound B = sqrt(FLT_MAX / 8) ≈ 6.5e18, which the CPU pass
  // takes. Centred on μ = (−6e18, 0), the coordinate-wise median, row 0 would reach 1.2e19, past B, so
  // centred_copy keeps the rows as they are (centre 0), and the device scores them so.
  const std::vector<float> valid = {6e18f, 0.0f, -6e18f, 0.0f, -6e18f, 0.0f};
  const matrix_view<const float> centroids(valid.data(), 3, 2);
  const bool device = have_device();
  for (const metric m : {metric::l2, metric::inner_product}) {
    CAPTURE(metric_name(m));
    if (!device) {
      REQUIRE_THROWS_MATCHES(cuda::coarse_quantizer(centroids, m), shoal::error,
                             fails_with(errc::unsupported, "no CUDA device"));
      continue;
    }
    const cuda::coarse_quantizer gpu(centroids, m);
    std::vector<std::uint32_t> probes(3);
    gpu.probe(centroids.slice(0, 1), 3, probes.data());  // L2 −3.6e37, 1.08e38, 1.08e38 (IP ∓3.6e37): finite
    CHECK(probes == std::vector<std::uint32_t>{0, 1, 2});
  }
  // What the CPU pass refuses is refused by name, before the device is looked for.
  const std::vector<float> far = {1.0f, 0.0f, 7e18f, 0.0f};
  REQUIRE_THROWS_MATCHES(cuda::coarse_quantizer(matrix_view<const float>(far.data(), 2, 2), metric::l2), shoal::error,
                         fails_with(errc::non_finite, "cuda::coarse_quantizer: centroid row 1 has norm"));
  const std::vector<float> nan = {std::nanf(""), 0.0f};
  REQUIRE_THROWS_MATCHES(cuda::coarse_quantizer(matrix_view<const float>(nan.data(), 1, 2), metric::inner_product),
                         shoal::error,
                         fails_with(errc::non_finite, "cuda::coarse_quantizer: centroid row 0 has a non-finite value"));
}

TEST_CASE("CUDA flat index rejects bad input", "[gpu]") {
  const matrix<float> x = make_uniform(100, 8, 1);
  if (!have_device()) return;
  const cuda::flat_index gpu(x.view(), metric::l2);
  const matrix<float> wrong = make_uniform(2, 7, 2);
  REQUIRE_THROWS_MATCHES(gpu.search(x.view(), 0), shoal::error, fails_with(errc::invalid_argument, "k must"));
  REQUIRE_THROWS_MATCHES(gpu.search(x.view(), cuda::flat_index::max_k + 1), shoal::error,
                         fails_with(errc::invalid_argument, "k must"));
  REQUIRE_THROWS_AS(gpu.search(wrong.view(), 5), shoal::error);
  matrix<float> nan = make_uniform(1, 8, 3);
  nan.row(0)[2] = std::nanf("");
  REQUIRE_THROWS_AS(gpu.search(nan.view(), 5), shoal::error);
  std::vector<float> distances(5);  // rows are required; distances alone are not enough
  REQUIRE_THROWS_MATCHES(gpu.search(x.view().slice(0, 1), 5, nullptr, distances.data()), shoal::error,
                         fails_with(errc::invalid_argument, "null result buffer"));
  REQUIRE_THROWS_MATCHES(cuda::flat_index(x.view(), metric::l2, cuda::device_count()), shoal::error,
                         fails_with(errc::unsupported, "no CUDA device"));
  cuda::flat_index offset(x.view(), metric::l2);
  const std::vector<float> seven(7, 1.0f), inf(8, INFINITY);
  REQUIRE_THROWS_MATCHES(offset.set_query_offset(seven), shoal::error, fails_with(errc::dimension_mismatch, "offset"));
  REQUIRE_THROWS_MATCHES(offset.set_query_offset(inf), shoal::error, fails_with(errc::non_finite, "offset"));
  cuda::flat_index ip(x.view(), metric::inner_product);
  REQUIRE_THROWS_MATCHES(ip.set_query_offset(std::vector<float>(8, 1.0f)), shoal::error,
                         fails_with(errc::invalid_argument, "needs the L2 metric"));
  const cuda::coarse_quantizer coarse(x.view(), metric::l2);
  std::vector<std::uint32_t> probes(200);
  REQUIRE_THROWS_MATCHES(coarse.probe(x.view(), 101, probes.data()), shoal::error,
                         fails_with(errc::invalid_argument, "nprobe"));
  // A moved-from index holds nothing and says so (its accessors dereferenced a null state).
  const cuda::flat_index moved(std::move(offset));
  CHECK(moved.size() == 100);
  CHECK(offset.size() == 0);  // NOLINT(bugprone-use-after-move): what a moved-from index reports
  CHECK(offset.device() == -1);
  REQUIRE_THROWS_MATCHES(offset.search(x.view(), 5), shoal::error, fails_with(errc::invalid_argument, "moved from"));
}
