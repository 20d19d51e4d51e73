#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include <catch2/catch.hpp>

#include "shoal/distance/distance.hpp"
#include "shoal/eval/eval.hpp"
#include "test_support.hpp"

using namespace shoal;
using shoal::test::fails_with;

namespace {

/// A neighbors result holding the given rows of ids.
neighbors result_of(const std::vector<std::vector<vector_id>>& rows) {
  neighbors n(rows.size(), rows.front().size());
  for (std::size_t r = 0; r < rows.size(); ++r)
    for (std::size_t j = 0; j < rows[r].size(); ++j) n.view().row_ids(r)[j] = rows[r][j];
  return n;
}

}  // namespace

TEST_CASE("recall_at_k counts the overlap of the first k ids per query", "[eval]") {
  const std::vector<std::int32_t> truth = {0, 1, 2, 3,  //
                                           4, 5, 6, 7};
  const matrix_view<const std::int32_t> gt(truth.data(), 2, 4);
  const neighbors got = result_of({{2, 9, 0, 1}, {7, 6, 5, no_id}});
  CHECK(recall_at_k(got, gt, 1) == Approx(0.0));                      // 2 ∉ {0}, 7 ∉ {4}
  CHECK(recall_at_k(got, gt, 3) == Approx((2.0 / 3 + 2.0 / 3) / 2));  // {2,0} of {0,1,2}; {6,5} of {4,5,6}
  CHECK(recall_at_k(got, gt, 4) == Approx((3.0 / 4 + 3.0 / 4) / 2));
  CHECK(recall_at_k(got, result_of({{0, 1, 2, 3}, {4, 5, 6, 7}}), 4) == Approx(0.75));
  // A set intersection: a result that repeats a true id counts it once (a faulty index returning one
  // id k times must not score 1).
  CHECK(recall_at_k(result_of({{0, 0, 0, 0}, {5, 5, 4, 4}}), gt, 4) == Approx((1.0 / 4 + 2.0 / 4) / 2));
  REQUIRE_THROWS_MATCHES(recall_at_k(got, gt, 0), shoal::error, fails_with(errc::invalid_argument, "at least 1"));
  REQUIRE_THROWS_MATCHES(recall_at_k(got, gt, 5), shoal::error, fails_with(errc::invalid_argument, "exceeds"));
  REQUIRE_THROWS_MATCHES(recall_at_k(got, matrix_view<const std::int32_t>(truth.data(), 1, 4), 2), shoal::error,
                         fails_with(errc::invalid_argument, "2 result rows but 1 ground-truth rows"));
  REQUIRE_THROWS_MATCHES(recall_at_k(got, matrix_view<const std::int32_t>(truth.data(), 2, 4, 0), 2), shoal::error,
                         fails_with(errc::invalid_argument, "stride 0 is smaller than its 4 ids"));
  REQUIRE_THROWS_MATCHES(recall_at_k(got, matrix_view<const std::int32_t>(nullptr, 2, 4), 2), shoal::error,
                         fails_with(errc::invalid_argument, "2 ground-truth rows but no data"));
  // A ground truth that lists one id twice is damaged (even exact search would score below 1); missing
  // neighbours (-1) may repeat, and only the first k ids count.
  const std::vector<std::int32_t> twice = {0, 1, 2, 3,  //
                                           4, 5, 5, 7};
  REQUIRE_THROWS_MATCHES(recall_at_k(got, matrix_view<const std::int32_t>(twice.data(), 2, 4), 3), shoal::error,
                         fails_with(errc::invalid_argument, "ground-truth row 1 lists the id 5 more than once"));
  REQUIRE_THROWS_MATCHES(recall_at_k(got, result_of({{0, 1, 2, 3}, {4, 4, 6, 7}}), 2), shoal::error,
                         fails_with(errc::invalid_argument, "row 1 lists the id 4 more than once in its first 2"));
  CHECK(recall_at_k(got, matrix_view<const std::int32_t>(twice.data(), 2, 4), 2) == Approx(0.0));
  // check_ground_truth: the same refusal before any search, and ids the base does not hold.
  const matrix_view<const std::int32_t> view(twice.data(), 2, 4);
  REQUIRE_THROWS_MATCHES(
      check_ground_truth(view, 3, 100, "gt.ivecs"), shoal::error,
      fails_with(errc::invalid_argument, "gt.ivecs: row 1 lists the id 5 more than once in its first 3"));
  CHECK_NOTHROW(check_ground_truth(view, 2, 100, "gt.ivecs"));
  REQUIRE_THROWS_MATCHES(check_ground_truth(view, 2, 5, "gt.ivecs"), shoal::error,
                         fails_with(errc::invalid_argument, "row 1 holds the id 5, outside the 5 base vectors"));
  const std::vector<std::int32_t> negative = {0, -2};
  REQUIRE_THROWS_MATCHES(check_ground_truth(matrix_view<const std::int32_t>(negative.data(), 1, 2), 2, 5, "gt"),
                         shoal::error, fails_with(errc::invalid_argument, "row 0 holds the id -2"));
  const std::vector<std::int32_t> missing = {0, 1, -1, -1,  //
                                             4, 5, 6,  7};
  CHECK(recall_at_k(got, matrix_view<const std::int32_t>(missing.data(), 2, 4), 4) == Approx((2.0 / 4 + 3.0 / 4) / 2));
  REQUIRE_THROWS_MATCHES(make_clustered(4, 4, 2, 1, std::nanf("")), shoal::error,
                         fails_with(errc::invalid_argument, "spread must be finite"));
}

TEST_CASE("recall_at_k compares ids, not distances", "[eval]") {
  // Rows 0 and 1 are copies: both lie at the true nearest distance of a query equal to them, but the
  // ground truth lists one id (the smaller), and a result holding the other scores 0, where
  // ann-benchmarks (distance within the k-th true distance + 1e-3) would count it.
  matrix<float> base = make_clustered(50, 8, 2, 7);
  std::copy_n(base.row(0), base.dim, base.row(1));
  const neighbors gt = ground_truth(base.view(), base.view().slice(0, 1), 1, metric::l2);
  REQUIRE(gt.id(0, 0) == 0);
  CHECK(recall_at_k(result_of({{1}}), gt, 1) == 0.0);
  CHECK(recall_at_k(result_of({{0}}), gt, 1) == 1.0);
}

TEST_CASE("ground truth of the data itself is the data", "[eval]") {
  const matrix<float> base = make_clustered(300, 24, 5, 3);
  const neighbors gt = ground_truth(base.view(), base.view().slice(0, 40), 5, metric::l2);
  for (std::size_t q = 0; q < 40; ++q) {
    CHECK(gt.id(q, 0) == q);
    CHECK(gt.distance(q, 0) == 0.0f);
    CHECK(gt.distance(q, 1) >= gt.distance(q, 0));
  }
  CHECK(recall_at_k(gt, gt, 5) == 1.0);
}

TEST_CASE("ground truth made under another metric is refused by the metric it fits", "[eval]") {
  const matrix<float> base = make_clustered(400, 16, 4, 1);
  const matrix<float> queries = make_clustered(30, 16, 4, 2);
  const auto truth = [&](const matrix<float>& b, metric m, std::size_t k = 5) {
    return ground_truth_ids(ground_truth(b.view(), queries.view(), k, m));
  };
  const auto check = [&](const matrix<float>& b, const matrix<std::int32_t>& t, metric m, std::size_t k = 5,
                         std::size_t sample = 100) {
    return check_ground_truth_metric(b.view(), queries.view(), t.view(), k, m, "gt.ivecs", sample);
  };
  const matrix<std::int32_t> l2 = truth(base, metric::l2), ip = truth(base, metric::inner_product);
  CHECK(check(base, l2, metric::l2).empty());
  CHECK(check(base, ip, metric::inner_product).empty());
  REQUIRE_THROWS_MATCHES(check(base, l2, metric::inner_product), shoal::error,
                         fails_with(errc::invalid_argument,
                                    "gt.ivecs fits the metric l2, not inner_product: of the "
                                    "neighbours it lists for its first 30 queries, 1 are"));
  REQUIRE_THROWS_MATCHES(check(base, ip, metric::l2, 5, 10), shoal::error,
                         fails_with(errc::invalid_argument,
                                    "gt.ivecs fits the metric inner_product, not l2: of the "
                                    "neighbours it lists for its first 10"));
  // On unit vectors every metric orders alike: ground truth made under any of them fits the others.
  const auto normalised = [](matrix<float> m) {
    for (std::size_t r = 0; r < m.rows; ++r) {
      float* row = m.row(r);
      const float norm = std::sqrt(std::inner_product(row, row + m.dim, row, 0.0f));
      std::transform(row, row + m.dim, row, [norm](float x) { return x / norm; });
    }
    return m;
  };
  matrix<float> unit = normalised(base);
  for (const metric m : {metric::l2, metric::inner_product, metric::cosine})
    CHECK(check(unit, truth(unit, metric::l2), m).empty());
  // Ties broken the other way count as fitting (ids only refused a genuine file: near-duplicates at k = 1,
  // a review). Each query's nearest row gets a twin, the same direction scaled and normalised again;
  // the file lists the twin where exact search finds the row, or the row where it finds the twin.
  const matrix<std::int32_t> nearest = truth(unit, metric::cosine, 1);
  matrix<float> twinned(unit.rows + queries.rows, unit.dim);
  std::copy(unit.values.begin(), unit.values.end(), twinned.values.begin());
  for (std::size_t q = 0; q < queries.rows; ++q) {
    const float* row = unit.row(static_cast<std::size_t>(nearest.row(q)[0]));
    std::transform(row, row + unit.dim, twinned.row(unit.rows + q), [](float x) { return 3.0f * x; });
  }
  twinned = normalised(std::move(twinned));
  matrix<std::int32_t> swapped = truth(twinned, metric::cosine, 1);
  for (std::size_t q = 0; q < queries.rows; ++q) {
    const auto twin = static_cast<std::int32_t>(unit.rows + q);
    swapped.row(q)[0] = swapped.row(q)[0] == twin ? nearest.row(q)[0] : twin;
  }
  for (const metric m : {metric::l2, metric::inner_product, metric::cosine}) {
    CAPTURE(m);
    CHECK(check(twinned, swapped, m, 1).empty());
  }
  // l2 ground truth another tool computed in the GEMM form ‖q‖² + ‖x‖² − 2⟨q, x⟩ (FAISS's BLAS path)
  // rounds on the scale of the norms: over near-duplicate unit vectors its near-ties fit l2 as they fit
  // inner product (a review: refused as "fits inner_product, not l2").
  splitmix64 rng(5);
  matrix<float> crowded(1000 + 100 * 20, 32);
  for (std::size_t r = 0; r < 1000; ++r)
    for (std::size_t j = 0; j < 32; ++j) crowded.row(r)[j] = rng.normal();
  for (std::size_t c = 0; c < 100; ++c)
    for (std::size_t i = 0; i < 20; ++i)
      for (std::size_t j = 0; j < 32; ++j) crowded.row(1000 + c * 20 + i)[j] = crowded.row(c)[j] + 3e-3f * rng.normal();
  crowded = normalised(std::move(crowded));
  matrix<float> near_queries(30, 32);  // the clusters' first rows, moved a little
  for (std::size_t q = 0; q < 30; ++q)
    for (std::size_t j = 0; j < 32; ++j) near_queries.row(q)[j] = crowded.row(q)[j] + 1e-3f * rng.normal();
  near_queries = normalised(std::move(near_queries));
  matrix<float> gemm(30, crowded.rows);
  distances_many(metric::l2, near_queries.view(), crowded.view(), gemm.values.data(), crowded.rows);
  matrix<std::int32_t> gemm_truth(30, 10);
  for (std::size_t q = 0; q < 30; ++q) {
    std::vector<std::int32_t> order(crowded.rows);
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + 10, order.end(),
                      [&](std::int32_t a, std::int32_t b) { return gemm.row(q)[a] < gemm.row(q)[b]; });
    std::copy_n(order.begin(), 10, gemm_truth.row(q));
  }
  for (const metric m : {metric::l2, metric::inner_product, metric::cosine}) {
    CAPTURE(m);
    CHECK_NOTHROW(check_ground_truth_metric(crowded.view(), near_queries.view(), gemm_truth.view(), 10, m, "gt"));
  }
  // Arguments the scan would read past.
  REQUIRE_THROWS_MATCHES(check(base, l2, metric::l2, 6), shoal::error,
                         fails_with(errc::invalid_argument, "gt.ivecs: k = 6 exceeds its 5 ids per row"));
  const matrix<float> narrow = make_clustered(30, 8, 4, 2);
  REQUIRE_THROWS_MATCHES(check_ground_truth_metric(base.view(), narrow.view(), l2.view(), 5, metric::l2, "gt"),
                         shoal::error,
                         fails_with(errc::dimension_mismatch, "gt: queries have dimension 8, the base 16"));
  // Ground truth over other vectors fits no metric: a warning, not a refusal.
  CHECK_THAT(check(make_clustered(400, 16, 4, 9), l2, metric::l2),
             Catch::Contains("gt.ivecs: only 0") && Catch::Contains("are exact neighbours under l2"));
  // NaN values (which an index refuses) leave no judgement.
  matrix<float> with_nan = base;
  with_nan.row(7)[3] = std::nanf("");
  CHECK(check(with_nan, l2, metric::inner_product).empty());
}

TEST_CASE("ground_truth_ids: row numbers as int32, a missing neighbour as -1, no id past 2^31 - 1", "[eval]") {
  neighbors n(1, 3);
  n.view().row_ids(0)[0] = 5;
  n.view().row_ids(0)[1] = no_id;
  n.view().row_ids(0)[2] = 7;
  const matrix<std::int32_t> ids = ground_truth_ids(n);
  CHECK(std::vector<std::int32_t>(ids.values.begin(), ids.values.end()) == std::vector<std::int32_t>{5, -1, 7});
  n.view().row_ids(0)[2] = vector_id{1} << 31;
  REQUIRE_THROWS_MATCHES(ground_truth_ids(n), shoal::error,
                         fails_with(errc::invalid_argument, "id 2147483648 does not fit the 32 bits"));
}

TEST_CASE("splitmix64 is the reference generator and the data is reproducible", "[eval]") {
  splitmix64 rng(0);
  CHECK(rng.next() == 0xE220A8397B1DCDAFULL);  // published first output for seed 0
  CHECK(rng.next() == 0x6E789E6AA1B965F4ULL);
  const matrix<float> a = make_clustered(100, 16, 4, 42);
  const matrix<float> b = make_clustered(100, 16, 4, 42);
  const matrix<float> c = make_clustered(100, 16, 4, 43);
  CHECK(a.values == b.values);
  CHECK(a.values != c.values);
  double sum = 0, sum_sq = 0;
  splitmix64 normal(9);
  constexpr int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double x = normal.normal();
    sum += x;
    sum_sq += x * x;
  }
  CHECK(std::abs(sum / n) < 0.01);
  CHECK(std::abs(sum_sq / n - 1.0) < 0.01);
}

TEST_CASE("clustered data has near neighbours inside its cluster", "[eval]") {
  // With spread 0.35 around N(0,1) centres in 32-d, the nearest other point shares the centre: its
  // distance is far below the typical distance between centres.
  const matrix<float> base = make_clustered(400, 32, 10, 5);
  const neighbors nn = ground_truth(base.view(), base.view().slice(0, 50), 2, metric::l2);
  for (std::size_t q = 0; q < 50; ++q) CHECK(nn.distance(q, 1) < 0.5f * 2.0f * 32.0f);
  REQUIRE_THROWS_MATCHES(make_clustered(1, 2, 0, 1), shoal::error, fails_with(errc::invalid_argument, "clusters"));
}
