#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <vector>

#include <tbb/task_arena.h>
#include <catch2/catch.hpp>

#include "shoal/cluster/kmeans.hpp"
#include "shoal/eval/eval.hpp"
#include "shoal/index/ivf_flat.hpp"
#include "test_support.hpp"

using namespace shoal;
using shoal::test::fails_with;

namespace {

/// make_clustered's points with the centre each was drawn around: the same draws in the same order
/// (checked against make_clustered itself, so a change of the generator fails loudly here).
struct planted {
  matrix<float> points;
  std::vector<std::size_t> label;

  planted(std::size_t n, std::size_t dim, std::size_t clusters, std::uint64_t seed, float spread = 0.35f)
      : points(make_clustered(n, dim, clusters, seed, spread)), label(n) {
    splitmix64 rng(seed);
    std::vector<float> centres(clusters * dim);
    for (float& c : centres) c = rng.normal();
    bool same = true;
    for (std::size_t i = 0; i < n; ++i) {
      label[i] = rng.below(clusters);
      for (std::size_t j = 0; j < dim; ++j)
        same &= points.row(i)[j] == centres[label[i] * dim + j] + spread * rng.normal();
    }
    REQUIRE(same);  // the replay reproduced make_clustered
  }
};

/// Fraction of points whose k-means cluster's majority planted label is their own.
double purity(const planted& data, const centroid_assignment& a, std::size_t k) {
  std::vector<std::map<std::size_t, std::size_t>> votes(k);
  for (std::size_t i = 0; i < data.label.size(); ++i) ++votes[a.labels[i]][data.label[i]];
  std::size_t agree = 0;
  for (const auto& v : votes) {
    std::size_t best = 0;
    for (const auto& [label, count] : v) best = std::max(best, count);
    agree += best;
  }
  return static_cast<double>(agree) / static_cast<double>(data.label.size());
}

bool non_increasing(const std::vector<double>& objective) {
  for (std::size_t i = 1; i < objective.size(); ++i)
    if (objective[i] > objective[i - 1] * (1.0 + 1e-6)) return false;
  return true;
}

}  // namespace

TEST_CASE("k-means recovers planted clusters with a non-increasing objective", "[kmeans]") {
  constexpr std::size_t n = 3000, dim = 16, clusters = 10;
  const planted data(n, dim, clusters, 42, 0.15f);
  // The objective of the planted partition (each point to the mean of its own cluster).
  double planted_objective = 0.0;
  {
    std::vector<double> sum(clusters * dim, 0.0);
    std::vector<double> count(clusters, 0.0);
    for (std::size_t i = 0; i < n; ++i) {
      count[data.label[i]] += 1.0;
      for (std::size_t j = 0; j < dim; ++j) sum[data.label[i] * dim + j] += data.points.row(i)[j];
    }
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < dim; ++j) {
        const double d = data.points.row(i)[j] - sum[data.label[i] * dim + j] / count[data.label[i]];
        planted_objective += d * d;
      }
  }
  for (const kmeans_init init : {kmeans_init::kmeans_plus_plus, kmeans_init::random}) {
    CAPTURE(init == kmeans_init::random);
    kmeans_params params;
    params.k = clusters;
    params.iterations = 20;
    params.init = init;
    params.seed = 2;
    params.max_points_per_centroid = 0;  // all 3000 points
    const kmeans_result r = kmeans(data.points.view(), params);
    REQUIRE(r.centroids.rows == clusters);
    REQUIRE(r.centroids.dim == dim);
    REQUIRE(r.objective.size() == 20);
    CHECK(r.training_points == n);
    CHECK(r.empty_cluster_repairs == 0);
    CHECK(non_increasing(r.objective));
    CHECK(r.objective.back() < r.objective.front());
    const centroid_assignment a = assign(data.points.view(), r.centroids.view());
    const double p = purity(data, a, clusters);
    CAPTURE(p, r.objective.back(), planted_objective);
    if (init == kmeans_init::kmeans_plus_plus) {
      // Well-separated clusters and k-means++ seeding: the planted partition, found exactly.
      CHECK(p == 1.0);
      CHECK(r.objective.back() == Approx(planted_objective).epsilon(1e-4));
    } else {
      // Random seeding can leave two centroids in one cluster (a local optimum Lloyd cannot leave).
      CHECK(p >= 0.7);
    }
  }
}

TEST_CASE("k-means far from the origin finds what it finds at the origin", "[kmeans]") {
  // The GEMM form cancels on points far from the origin: 10,000 + planted clusters in 16-d gave other
  // clusters and a noisy objective before k-means centred its points.
  constexpr std::size_t n = 2000, dim = 16, clusters = 8;
  const planted data(n, dim, clusters, 7, 0.15f);
  matrix<float> far = data.points;
  for (float& v : far.values) v += 10'000.0f;
  kmeans_params params;
  params.k = clusters;
  params.iterations = 10;
  params.seed = 3;
  params.max_points_per_centroid = 0;
  const kmeans_result near_origin = kmeans(data.points.view(), params);
  const kmeans_result offset = kmeans(far.view(), params);
  matrix<float> moved_back = offset.centroids;
  for (float& v : moved_back.values) v -= 10'000.0f;
  const double p = purity(data, assign(data.points.view(), near_origin.centroids.view()), clusters);
  CHECK(p >= 0.85);
  CHECK(purity(data, assign(data.points.view(), moved_back.view()), clusters) == p);
  // The float rounding of 10,000 + x (about 5e-4 a component) is all that separates the two runs.
  CHECK(offset.objective.back() == Approx(near_origin.objective.back()).epsilon(1e-2));
  for (std::size_t c = 0; c < clusters; ++c)
    for (std::size_t j = 0; j < dim; ++j)
      CHECK(moved_back.row(c)[j] == Approx(near_origin.centroids.row(c)[j]).margin(1e-2));
}

TEST_CASE("k-means is deterministic for a seed, whatever the thread count", "[kmeans]") {
  const matrix<float> points = make_clustered(2000, 24, 20, 5);
  kmeans_params params;
  params.k = 30;
  params.iterations = 8;
  params.seed = 11;
  params.max_points_per_centroid = 50;  // subsampling takes part too
  // Elkan's bounds (one group per centroid) and grouped bounds.
  for (const std::size_t groups : {std::size_t{30}, std::size_t{8}}) {
    CAPTURE(groups);
    params.bound_groups = groups;
    params.seed = 11;
    const kmeans_result a = kmeans(points.view(), params);
    CHECK(a.training_points == 1500);
    kmeans_result b;
    tbb::task_arena(1).execute([&] { b = kmeans(points.view(), params); });
    CHECK(a.centroids.values == b.centroids.values);
    CHECK(a.objective == b.objective);
    params.seed = 12;
    const kmeans_result c = kmeans(points.view(), params);
    CHECK(a.centroids.values != c.centroids.values);
  }
}

TEST_CASE("k-means with triangle bounds assigns every point to its nearest centroid", "[kmeans]") {
  // Bounded iterations re-score a point only against centroids its bounds cannot rule out. A bound that
  // claimed too much would leave points with a farther centroid: the step's objective would exceed the
  // best assignment's. So at every iteration m, the objective reported must be the exact (double)
  // minimum over the centroids after m updates (those of a run of m iterations: a run is a prefix of a
  // longer one), up to rounding. (Comparing against full GEMM steps bit for bit does not work: both
  // round, and near-ties — such as a split cluster's twins — go either way.)
  struct setup {
    std::size_t n, dim, k, clusters;
    float spread;
    kmeans_init init;
  };
  // Both kinds: Elkan's (one group per centroid) and grouped bounds (k / 5 groups), whose steps compute
  // distances in GEMM tiles rather than pairwise.
  constexpr std::size_t iterations = 12;
  for (const setup c : {setup{3000, 32, 40, 12, 0.35f, kmeans_init::random},
                        setup{2000, 64, 100, 5, 1.0f, kmeans_init::kmeans_plus_plus},
                        setup{2500, 16, 250, 250, 0.05f, kmeans_init::random}})
    for (const bool grouped : {false, true}) {
      CAPTURE(c.n, c.dim, c.k, grouped);
      const matrix<float> points = make_clustered(c.n, c.dim, c.clusters, 77, c.spread);
      kmeans_params params;
      params.k = c.k;
      params.init = c.init;
      params.max_points_per_centroid = 0;
      params.iterations = iterations;
      params.bound_groups = grouped ? c.k / 5 : c.k;
      const kmeans_result run = kmeans(points.view(), params);
      std::size_t repairs = 0;
      for (std::size_t m = 1; m < iterations; ++m) {
        CAPTURE(m);
        params.iterations = m;
        const kmeans_result prefix = kmeans(points.view(), params);
        repairs = prefix.empty_cluster_repairs;
        double best = 0.0;
        for (std::size_t i = 0; i < c.n; ++i) {
          double nearest = std::numeric_limits<double>::infinity();
          for (std::size_t j = 0; j < c.k; ++j) {
            double d = 0.0;
            for (std::size_t t = 0; t < c.dim; ++t) {
              const double e = static_cast<double>(points.row(i)[t]) - prefix.centroids.row(j)[t];
              d += e * e;
            }
            nearest = std::min(nearest, d);
          }
          best += nearest;
        }
        CHECK(run.objective[m] == Approx(best).epsilon(1e-6));
      }
      if (c.k == 250) CHECK(repairs > 0);  // the twins of split clusters are covered too
      // Off: the same iterations as full GEMM steps, to the same objective up to ties.
      params.iterations = iterations;
      params.triangle_bounds = false;
      CHECK(kmeans(points.view(), params).objective.back() == Approx(run.objective.back()).epsilon(1e-4));
    }
}

TEST_CASE("k-means repairs empty clusters by splitting the widest", "[kmeans]") {
  // Eight well-separated locations, each repeated 32 times: random initialisation all but surely picks
  // two copies of one location, whose twin centroids leave a cluster empty until it is repaired.
  constexpr std::size_t locations = 8, copies = 32, dim = 5;
  matrix<float> points(locations * copies, dim);
  for (std::size_t i = 0; i < points.rows; ++i)
    for (std::size_t j = 0; j < dim; ++j)
      points.row(i)[j] = j == (i % locations) % dim ? 10.0f * static_cast<float>(1 + i % locations) : 0.0f;
  kmeans_params params;
  params.k = locations;
  params.iterations = 15;
  params.init = kmeans_init::random;
  params.seed = 7;
  const kmeans_result r = kmeans(points.view(), params);
  CHECK(r.empty_cluster_repairs > 0);
  // Repaired: every location has a centroid of its own, which sits on it.
  const centroid_assignment a = assign(points.view(), r.centroids.view());
  std::vector<std::size_t> sizes(locations);
  for (const std::uint32_t l : a.labels) ++sizes[l];
  CHECK(std::all_of(sizes.begin(), sizes.end(), [](std::size_t s) { return s == copies; }));
  CHECK(r.objective.back() <= 1e-3);
  CHECK(r.objective.front() > 100.0);
}

TEST_CASE("k-means repairs empty clusters at any scale of the data", "[kmeans]") {
  // Half the points on one spot, half Gaussian, at scale 1e-12: a repair nudged the halves of a split
  // by a fixed 1e-10, far outside the data, so the twin came back empty every iteration (303 repairs,
  // 12 of 16 centroids scattered away, the objective 30,000x its start). The nudge now scales with the
  // split cluster's spread, and the result is the one at scale 1 scaled.
  constexpr std::size_t n = 4000, dim = 4;
  const auto run = [&](float scale) {
    matrix<float> points(n, dim);
    splitmix64 rng(5);
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < dim; ++j) points.row(i)[j] = (i < n / 2 ? 0.5f : rng.normal()) * scale;
    kmeans_params params;
    params.k = 16;
    params.init = kmeans_init::random;
    params.seed = 3;
    return kmeans(points.view(), params);
  };
  const kmeans_result unit = run(1.0f), tiny = run(1e-12f);
  CHECK(tiny.empty_cluster_repairs == unit.empty_cluster_repairs);
  CHECK(tiny.objective.back() <= tiny.objective.front());
  for (std::size_t c = 0; c < 16; ++c) {
    CHECK(tiny.cluster_sizes[c] > 0);
    for (std::size_t j = 0; j < dim; ++j) CHECK(std::abs(tiny.centroids.row(c)[j]) < 1e-11f);
  }
}

TEST_CASE("k-means never splits a cluster of coinciding points", "[kmeans]") {
  // Three quarters of the points sit exactly on the origin (as blank pixels do in PQ sub-spaces), so
  // random initialisation draws the origin many times over. Splitting the largest cluster — the origin's
  // — gives a twin that none of its points can prefer, empty again at the next step, every step: most
  // centroids ended wasted. Splitting only clusters with spread puts every centroid to use.
  constexpr std::size_t n = 4000, dim = 2, k = 64;
  matrix<float> points = make_clustered(n, dim, 40, 31, 0.5f);
  for (std::size_t i = 0; i < 3 * n / 4; ++i) std::fill_n(points.row(i), dim, 0.0f);
  for (const bool spherical : {false, true}) {
    CAPTURE(spherical);
    kmeans_params params;
    params.k = k;
    params.iterations = 20;
    params.init = kmeans_init::random;
    params.max_points_per_centroid = 0;
    params.spherical = spherical;
    params.seed = 3;
    const kmeans_result r = kmeans(points.view(), params);
    CHECK(r.empty_cluster_repairs > 0);
    CHECK(std::count(r.cluster_sizes.begin(), r.cluster_sizes.end(), std::size_t{0}) == 0);
  }
  // Spherical: copies of one vector of norm 10 share one direction, so they have no spread either (the
  // spread was once measured around the unit centroid, which made them the widest cluster: every repair
  // split them, and up to 8 of 40 centroids ended empty).
  constexpr std::size_t sdim = 8;
  matrix<float> sphere(1300, sdim);
  splitmix64 rng(42);
  for (std::size_t i = 0; i < sphere.rows; ++i) {
    float* row = sphere.row(i);
    if (i < 300) {
      row[0] = 10.0f;
      continue;
    }
    double norm2 = 0.0;
    for (std::size_t j = 0; j < sdim; ++j) {
      row[j] = rng.normal();
      norm2 += static_cast<double>(row[j]) * row[j];
    }
    for (std::size_t j = 0; j < sdim; ++j) row[j] /= static_cast<float>(std::sqrt(norm2));
    row[0] = -std::abs(row[0]);  // away from the copies' direction
  }
  for (const std::uint64_t seed : {1, 2, 3}) {
    CAPTURE(seed);
    kmeans_params sp;
    sp.k = 40;
    sp.iterations = 25;
    sp.init = kmeans_init::random;
    sp.spherical = true;
    sp.seed = seed;
    const kmeans_result r = kmeans(sphere.view(), sp);
    CHECK(std::count(r.cluster_sizes.begin(), r.cluster_sizes.end(), std::size_t{0}) == 0);
    std::size_t on_copies = 0;
    for (std::size_t c = 0; c < sp.k; ++c) on_copies += r.centroids.row(c)[0] > 0.9999f ? 1 : 0;
    CHECK(on_copies == 1);
  }

  // With fewer distinct points than centroids, the clusters left over stay empty (nothing to split).
  matrix<float> few(100, dim);
  for (std::size_t i = 0; i < few.rows; ++i) {
    few.row(i)[0] = static_cast<float>(i % 3);
    few.row(i)[1] = 1.0f;
  }
  kmeans_params params;
  params.k = 5;
  params.iterations = 10;
  params.init = kmeans_init::random;
  const kmeans_result r = kmeans(few.view(), params);
  CHECK(std::count(r.cluster_sizes.begin(), r.cluster_sizes.end(), std::size_t{0}) == 2);
  CHECK(r.objective.back() == 0.0);
}

TEST_CASE("k-means repairs several empty clusters in one step without splitting a twin of one point", "[kmeans]") {
  // Two lone points and 18 copies of a third: with 5 to 8 centroids drawn at random most start empty,
  // and the repairs of one step split the clusters with spread, then their twins. A twin of a one-point
  // cluster held size 0 and half its spread: splitting it divided by that size and gave infinite
  // centroids (a review), which an IVF index then saved into a file its loader refused.
  matrix<float> points(20, 2);
  points.row(1)[0] = 1.0f;
  for (std::size_t i = 2; i < points.rows; ++i) std::fill_n(points.row(i), 2, 100.0f);
  std::size_t repairs = 0;
  for (const std::size_t k : {5, 6, 7, 8})
    for (std::uint64_t seed = 1; seed <= 40; ++seed) {
      CAPTURE(k, seed);
      kmeans_params params;
      params.k = k;
      params.iterations = 1;
      params.seed = seed;
      params.init = kmeans_init::random;
      const kmeans_result r = kmeans(points.view(), params);
      repairs += r.empty_cluster_repairs;
      CHECK(
          std::all_of(r.centroids.values.begin(), r.centroids.values.end(), [](float v) { return std::isfinite(v); }));
    }
  CHECK(repairs > 0);
  const test::scratch_dir dir;
  for (const std::uint64_t seed : {1, 2, 3}) {
    ivf_flat_index index(2, metric::l2, 7);
    ivf_train_params tp;
    tp.seed = seed;
    index.train(points.view(), tp);
    index.save(dir / "twins.shoal");
    CHECK(ivf_flat_index::load(dir / "twins.shoal").nlist() == 7);
  }
}

TEST_CASE("spherical k-means keeps unit centroids", "[kmeans]") {
  const matrix<float> points = make_clustered(1500, 20, 10, 9);
  kmeans_params params;
  params.k = 10;
  params.iterations = 10;
  params.spherical = true;
  const kmeans_result r = kmeans(points.view(), params);
  for (std::size_t c = 0; c < r.centroids.rows; ++c) {
    double norm = 0.0;
    for (std::size_t j = 0; j < r.centroids.dim; ++j) norm += double{r.centroids.row(c)[j]} * r.centroids.row(c)[j];
    CHECK(std::sqrt(norm) == Approx(1.0).epsilon(1e-5));
  }
  if (r.empty_cluster_repairs == 0) CHECK(non_increasing(r.objective));
  // Points whose directions cancel have no mean direction: the centroid keeps a unit row (it became 0).
  const std::vector<float> cross{1, 0, -1, 0, 0, 1, 0, -1};
  kmeans_params one;
  one.k = 1;
  one.spherical = true;
  const kmeans_result c = kmeans({cross.data(), 4, 2}, one);
  CHECK(std::hypot(c.centroids.row(0)[0], c.centroids.row(0)[1]) == Approx(1.0f));
  // Zero points (inner product accepts them) have no direction: seeded from one, a centroid stayed zero
  // (5 of 10 did, with 995 zero points of 1,000), and so did an IVF index's inner-product centroids.
  matrix<float> mostly_zero = make_clustered(1000, 8, 5, 3);
  for (std::size_t i = 5; i < mostly_zero.rows; ++i) std::fill_n(mostly_zero.row(i), 8, 0.0f);
  for (const kmeans_init init : {kmeans_init::random, kmeans_init::kmeans_plus_plus}) {
    kmeans_params ten;
    ten.k = 10;
    ten.spherical = true;
    ten.init = init;
    const kmeans_result z = kmeans(mostly_zero.view(), ten);
    for (std::size_t row = 0; row < 10; ++row) {
      double norm = 0.0;
      for (std::size_t j = 0; j < 8; ++j) norm += double{z.centroids.row(row)[j]} * z.centroids.row(row)[j];
      CHECK(std::sqrt(norm) == Approx(1.0).epsilon(1e-5));
    }
  }
  const matrix<float> zeros(20, 8);
  REQUIRE_THROWS_MATCHES(kmeans(zeros.view(), one), shoal::error,
                         fails_with(errc::invalid_argument, "every training point is zero"));
}

TEST_CASE("balanced k-means caps every cluster and splits a crowded region", "[kmeans]") {
  // Two regions far apart, 3000 points near the origin and 1000 far away: plain k-means keeps the
  // far region in one cluster whatever k; a cap forces the crowded region to be shared out.
  constexpr std::size_t dim = 8;
  matrix<float> points = make_clustered(4000, dim, 12, 21, 0.5f);
  for (std::size_t i = 3000; i < 4000; ++i)
    for (std::size_t j = 0; j < dim; ++j) points.row(i)[j] = points.row(i)[j] * 0.05f + 40.0f;
  for (const bool spherical : {false, true}) {
    // k = 40 exceeds the 32 candidates a point is offered, so full points fall back to a scan too.
    for (const std::size_t k : {std::size_t{4}, std::size_t{40}}) {
      CAPTURE(spherical, k);
      kmeans_params params;
      params.k = k;
      params.iterations = 15;
      params.seed = 8;
      params.spherical = spherical;
      params.max_points_per_centroid = 0;
      const kmeans_result plain = kmeans(points.view(), params);
      params.balance = 1.0;
      const kmeans_result balanced = kmeans(points.view(), params);
      const std::size_t cap = 4000 / k;
      REQUIRE(balanced.cluster_sizes.size() == k);
      CHECK(std::accumulate(balanced.cluster_sizes.begin(), balanced.cluster_sizes.end(), std::size_t{0}) == 4000);
      CHECK(*std::max_element(balanced.cluster_sizes.begin(), balanced.cluster_sizes.end()) <= cap);
      CHECK(*std::max_element(plain.cluster_sizes.begin(), plain.cluster_sizes.end()) > cap);
      // Routing by nearest centroid afterwards is close to balanced as well.
      const centroid_assignment a =
          assign(points.view(), balanced.centroids.view(), spherical ? metric::inner_product : metric::l2);
      std::vector<std::size_t> routed(k, 0);
      for (const std::uint32_t l : a.labels) ++routed[l];
      CAPTURE(routed);
      if (!spherical) CHECK(*std::max_element(routed.begin(), routed.end()) <= 2 * cap);
      // The same partition on one thread.
      kmeans_result one;
      tbb::task_arena(1).execute([&] { one = kmeans(points.view(), params); });
      CHECK(one.centroids.values == balanced.centroids.values);
    }
  }
  // A cap of 1.2 on data that is balanced already loses nothing: the planted clusters are found.
  const planted data(3000, 16, 10, 42, 0.15f);
  kmeans_params params;
  params.k = 10;
  params.iterations = 20;
  params.seed = 2;
  params.balance = 1.2;
  const kmeans_result r = kmeans(data.points.view(), params);
  CHECK(purity(data, assign(data.points.view(), r.centroids.view()), 10) >= 0.99);
}

TEST_CASE("assign returns the nearest centroids in order", "[kmeans]") {
  const matrix<float> points = make_uniform(300, 13, 1);
  const matrix<float> centroids = make_uniform(40, 13, 2);
  for (const metric m : {metric::l2, metric::inner_product}) {
    CAPTURE(metric_name(m));
    const centroid_assignment a = assign(points.view(), centroids.view(), m, 5);
    REQUIRE(a.count == 5);
    REQUIRE(a.labels.size() == 300 * 5);
    for (std::size_t i = 0; i < points.rows; ++i) {
      std::vector<scored_id> all;
      for (std::size_t c = 0; c < centroids.rows; ++c)
        all.push_back({distance(m, points.row(i), centroids.row(c), 13), c});
      std::sort(all.begin(), all.end());
      for (std::size_t j = 0; j < 5; ++j) {
        CAPTURE(i, j);
        // The GEMM form rounds differently from the pairwise kernel: compare distances, not ranks.
        CHECK(a.distances[i * 5 + j] == Approx(all[j].distance).margin(1e-4));
        if (j > 0) CHECK(a.distances[i * 5 + j - 1] <= a.distances[i * 5 + j]);
      }
    }
    // A batch of three takes the one-to-many path: same centroids, distances within rounding.
    const centroid_assignment few = assign(points.view().slice(0, 3), centroids.view(), m, 5);
    for (std::size_t i = 0; i < 3 * 5; ++i) {
      CHECK(few.labels[i] == a.labels[i]);
      CHECK(few.distances[i] == Approx(a.distances[i]).margin(1e-4));
    }
  }
}

TEST_CASE("assign of a small batch on many threads: split over centroids, same results as one thread", "[kmeans]") {
  // 40 points are one block: on an arena of 8 the centroids are ranked in ranges by parallel tasks and
  // merged. Every label and distance must be the one-thread result's, bit for bit, ties included: a
  // centroid repeated in a later range (and a few coinciding points) must lose to its first copy.
  matrix<float> centroids = make_uniform(5000, 24, 3);
  std::copy_n(centroids.row(7), 24, centroids.row(4000));
  std::copy_n(centroids.row(1100), 24, centroids.row(4999));
  matrix<float> points = make_uniform(40, 24, 4);
  std::copy_n(centroids.row(7), 24, points.row(0));
  std::copy_n(centroids.row(1100), 24, points.row(1));
  for (const metric m : {metric::l2, metric::inner_product, metric::cosine}) {
    for (const std::size_t count : {std::size_t{1}, std::size_t{32}, std::size_t{1500}}) {
      for (const std::size_t rows : {std::size_t{3}, std::size_t{40}}) {  // one-to-many and GEMM paths
        CAPTURE(metric_name(m), count, rows);
        centroid_assignment one, many;
        const auto run = [&] { return assign(points.view().slice(0, rows), centroids.view(), m, count); };
        tbb::task_arena(1).execute([&] { one = run(); });
        tbb::task_arena(8).execute([&] { many = run(); });
        REQUIRE(many.labels == one.labels);
        REQUIRE(many.distances == one.distances);
        if (m == metric::l2) {
          CHECK(one.labels[0] == 7);  // the first copy of a repeated centroid
          CHECK(one.labels[count] == 1100);
        }
      }
    }
  }
  // Centroid counts that do not split evenly into whole tiles (2,049 on 2 threads once ranked only
  // [0, 1024) and [1024, 2048)): every centroid is ranked, the last one too.
  for (const std::size_t nc : {2049, 3073, 3074, 4097, 4099, 5121, 6147}) {
    const matrix<float> many_centroids = make_uniform(nc, 8, nc);
    matrix<float> near_last = make_uniform(20, 8, 5);
    for (std::size_t i = 0; i < 20; i += 2) std::copy_n(many_centroids.row(nc - 1 - i / 2), 8, near_last.row(i));
    for (const std::size_t threads : {2, 3, 4, 8}) {
      CAPTURE(nc, threads);
      centroid_assignment one, many;
      const auto run = [&] { return assign(near_last.view(), many_centroids.view(), metric::l2, 1); };
      tbb::task_arena(1).execute([&] { one = run(); });
      tbb::task_arena(static_cast<int>(threads)).execute([&] { many = run(); });
      REQUIRE(many.labels == one.labels);
      REQUIRE(many.distances == one.distances);
      for (std::size_t i = 0; i < 20; i += 2) CHECK(many.labels[i] == nc - 1 - i / 2);
    }
  }
  // No points: nothing to split, nothing returned.
  tbb::task_arena(8).execute([&] {
    const centroid_assignment none = assign(points.view().slice(0, 0), centroids.view(), metric::l2, 4);
    CHECK(none.labels.empty());
    CHECK(none.distances.empty());
  });
}

TEST_CASE("k-means and assign reject bad input", "[kmeans]") {
  const matrix<float> points = make_uniform(20, 4, 3);
  kmeans_params params;
  REQUIRE_THROWS_MATCHES(kmeans(points.view(), params), shoal::error, fails_with(errc::invalid_argument, "k must"));
  params.k = 21;
  REQUIRE_THROWS_MATCHES(kmeans(points.view(), params), shoal::error,
                         fails_with(errc::invalid_argument, "exceeds the 20 training points"));
  params.k = 3;
  params.iterations = 0;
  REQUIRE_THROWS_MATCHES(kmeans(points.view(), params), shoal::error, fails_with(errc::invalid_argument, "iterations"));
  params.iterations = 5;
  params.init = static_cast<kmeans_init>(7);  // was run as k-means++
  REQUIRE_THROWS_MATCHES(kmeans(points.view(), params), shoal::error,
                         fails_with(errc::invalid_argument, "init = 7 is not a kmeans_init"));
  params.init = kmeans_init::random;
  {
    // Spread so small that every squared distance underflows float: every point tied with every centroid
    // and the centroids meant nothing. Coinciding points (no spread at all) still cluster.
    matrix<float> tiny = points;
    for (float& v : tiny.values) v *= 1e-25f;
    REQUIRE_THROWS_MATCHES(kmeans(tiny.view(), params), shoal::error,
                           fails_with(errc::invalid_argument, "points spread by only"));
    const matrix<float> same(20, 4);
    CHECK(kmeans(same.view(), params).centroids.rows == 3);
    // Spherical: points this short gave centroids of inf and NaN (the reciprocal of a norm below ~3e-39
    // overflows float) without an error, and an IVF index under inner product saved a file it could
    // not load.
    kmeans_params sp = params;
    sp.spherical = true;
    for (float& v : tiny.values) v *= 1e-16f;
    REQUIRE_THROWS_MATCHES(kmeans(tiny.view(), sp), shoal::error,
                           fails_with(errc::invalid_argument, "points measure only"));
  }
  params.balance = 0.5;
  REQUIRE_THROWS_MATCHES(kmeans(points.view(), params), shoal::error,
                         fails_with(errc::invalid_argument, "balance must be 0 (off) or at least 1"));
  params.balance = 0;
  matrix<float> bad = points;
  bad.row(7)[2] = std::numeric_limits<float>::quiet_NaN();
  REQUIRE_THROWS_MATCHES(kmeans(bad.view(), params), shoal::error, fails_with(errc::non_finite, "row 7"));
  const matrix<float> centroids = make_uniform(3, 5, 4);
  REQUIRE_THROWS_MATCHES(assign(points.view(), centroids.view()), shoal::error,
                         fails_with(errc::dimension_mismatch, "has dimension 4, expected 5"));
  const matrix<float> good = make_uniform(3, 4, 4);
  REQUIRE_THROWS_MATCHES(assign(points.view(), good.view(), metric::l2, 4), shoal::error,
                         fails_with(errc::invalid_argument, "count 4"));
  REQUIRE_THROWS_MATCHES(assign(bad.view(), good.view()), shoal::error, fails_with(errc::non_finite, "row 7"));
  // A metric cast from an integer assigned as inner product; centroids of dimension 0 gave results.
  REQUIRE_THROWS_MATCHES(assign(points.view(), good.view(), static_cast<metric>(7)), shoal::error,
                         fails_with(errc::invalid_argument, "assign"));
  const matrix<float> none(3, 0), no_points(20, 0);
  REQUIRE_THROWS_MATCHES(assign(no_points.view(), none.view()), shoal::error,
                         fails_with(errc::invalid_argument, "assign: dimension 0"));
}
