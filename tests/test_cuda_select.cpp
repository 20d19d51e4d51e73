// The CUDA top-k kernel (cuda/select.cuh) on the CPU: tests/cuda_emulator.hpp runs its blocks on real
// threads that meet at barriers, so these tests run everywhere, device or not, and check the kernel's
// results exactly against a sort. The [gpu] tests in test_cuda.cpp check the same kernel on a device.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

// The emulator right before the kernel source: it defines the CUDA keywords that source uses.
#include "cuda_emulator.hpp"
// (kept apart so that include sorting leaves the order alone)
#include "../cuda/select.cuh"

using namespace shoal::cuda::detail;

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

/// The reference: every row's score sorted by (score, row), the first k, empty slots past n.
top_k sorted_top(const tile& t, std::uint32_t k) {
  top_k out{std::vector<float>(t.queries * k, INFINITY), std::vector<std::uint32_t>(t.queries * k, no_row)};
  const float* norms = t.norms.empty() ? nullptr : t.norms.data();
  for (std::size_t q = 0; q < t.queries; ++q) {
    std::vector<std::pair<float, std::uint32_t>> all(t.n);
    for (std::size_t j = 0; j < t.n; ++j)
      all[j] = {score_of(t.ip.data() + q * t.n, norms, j), static_cast<std::uint32_t>(j)};
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
    require_merged_equals_sorted(t, 1024, 2048);  // the largest k: the top-k fills a whole round's buffer
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
}
