#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <thread>
#include <unordered_map>
#include <vector>

#include <tbb/task_arena.h>

#include <catch2/catch.hpp>

#include "shoal/eval/eval.hpp"
#include "shoal/index/flat.hpp"
#include "test_support.hpp"

using namespace shoal;
using shoal::test::brute_force;
using shoal::test::fails_with;

namespace {

constexpr std::size_t dim = 37;

/// Clustered base whose last rows duplicate earlier ones under other ids (exact distance ties), with
/// scattered 64-bit ids; queries include stored vectors (distance-0 ties).
struct fixture {
  matrix<float> base;
  std::vector<vector_id> ids;
  matrix<float> queries;

  fixture(std::size_t n, std::size_t nq, std::uint64_t seed) : base(make_clustered(n, dim, 8, seed)), ids(n) {
    for (std::size_t i = n - n / 10; i < n; ++i) std::copy_n(base.row(i - n / 2), dim, base.row(i));
    splitmix64 rng(seed + 1);
    for (vector_id& id : ids) id = rng.next() >> 1;
    const matrix<float> fresh = make_clustered(nq, dim, 8, seed);  // same centres, other points
    queries = matrix<float>(nq, dim);
    for (std::size_t q = 0; q < nq; ++q)
      std::copy_n(q % 4 == 0 ? base.row(q * 7 % n) : fresh.row(q), dim, queries.row(q));
  }

  [[nodiscard]] flat_index build(metric m) const {
    flat_index index(dim, m);
    index.add(base.view(), ids);
    return index;
  }
};

/// The reference's first k, padded with the sentinel, restricted to ids `keep` accepts.
template <class Keep>
void check_matches_reference(const fixture& f, metric m, const neighbors& got, std::size_t k, Keep keep) {
  for (std::size_t q = 0; q < got.rows(); ++q) {
    std::vector<scored_id> want = brute_force(f.base.view(), f.ids, f.queries.row(q), m);
    std::erase_if(want, [&](const scored_id& s) { return !keep(s.id); });
    for (std::size_t j = 0; j < k; ++j) {
      CAPTURE(q, j);
      REQUIRE(got.id(q, j) == (j < want.size() ? want[j].id : no_id));
      REQUIRE(got.distance(q, j) == (j < want.size() ? want[j].distance : no_distance));
    }
  }
}

}  // namespace

TEST_CASE("flat search equals the reference brute force, both paths, every metric", "[flat]") {
  const fixture f(1500, 80, 7);
  for (const metric m : {metric::l2, metric::inner_product, metric::cosine}) {
    const flat_index index = f.build(m);
    for (const std::size_t k : {1, 10, 50}) {
      CAPTURE(metric_name(m), k);
      // 5 queries take the streaming path, 80 the GEMM path.
      const neighbors few = index.search(f.queries.view().slice(0, 5), k);
      const neighbors many = index.search(f.queries.view(), k);
      check_matches_reference(f, m, few, k, [](vector_id) { return true; });
      check_matches_reference(f, m, many, k, [](vector_id) { return true; });
    }
  }
}

TEST_CASE("flat batches stay exact on data far from the origin", "[flat]") {
  // Unit-spread clusters shifted by a constant offset: ‖x‖² and 2q·x are huge next to their difference,
  // so the GEMM scores' rounding can reorder the true neighbours (a 32-query batch once lost 193 of the
  // 320 true top-10 at offset 1,000). Every batch row must equal the single-query answer.
  for (const float offset : {0.0f, 300.0f, 1000.0f, 1.0e5f}) {
    CAPTURE(offset);
    matrix<float> base = make_clustered(3000, dim, 8, 3, 1.0f);
    matrix<float> queries = make_clustered(32, dim, 8, 3, 1.0f);
    for (float& v : base.values) v += offset;
    for (float& v : queries.values) v += offset;
    std::vector<vector_id> ids(base.rows);
    std::iota(ids.begin(), ids.end(), vector_id{0});
    for (const metric m : {metric::l2, metric::inner_product, metric::cosine}) {
      CAPTURE(metric_name(m));
      flat_index index(dim, m);
      index.add(base.view(), ids);
      const neighbors batch = index.search(queries.view(), 10);  // 32 queries: the GEMM path
      for (std::size_t q = 0; q < queries.rows; ++q) {
        const neighbors one = index.search(queries.view().slice(q, 1), 10);  // the streaming path
        CAPTURE(q);
        CHECK(std::equal(one.ids().begin(), one.ids().end(), batch.row_ids(q).begin()));
        CHECK(std::equal(one.distances().begin(), one.distances().end(), batch.row_distances(q).begin()));
      }
    }
  }
}

TEST_CASE("flat batches equal single queries where the pairwise distances tie", "[flat]") {
  // Vectors near 1 whose true distances from a query at 1,000 differ by about 1.4e-3, less than the
  // float spacing at 998,001: the pairwise kernel rounds them all to one value, and the single-query
  // answer is the smallest id. The GEMM scores proved the left-out vectors farther, but not by more
  // than that rounding: the batch once answered id 968 where the single query answers 961.
  matrix<float> base(40, 1);
  std::vector<vector_id> ids(40);
  for (std::size_t i = 0; i < 40; ++i) {
    base.row(i)[0] = 1.0f - static_cast<float>(i) * 7e-7f;
    ids[i] = 1000 - i;
  }
  flat_index index(1, metric::l2);
  index.add(base.view(), ids);
  matrix<float> queries(16, 1);
  std::fill(queries.values.begin(), queries.values.end(), 1000.0f);
  const neighbors one = index.search(queries.view().slice(0, 1), 1);
  const neighbors batch = index.search(queries.view(), 1);  // 16 queries: the GEMM path
  REQUIRE(one.id(0, 0) == 961);
  for (std::size_t q = 0; q < 16; ++q) {
    CHECK(batch.id(q, 0) == one.id(0, 0));
    CHECK(batch.distance(q, 0) == one.distance(0, 0));
  }
}

TEST_CASE("flat search pads with the sentinel when fewer than k vectors exist", "[flat]") {
  const fixture f(6, 20, 3);
  const flat_index index = f.build(metric::l2);
  const neighbors result = index.search(f.queries.view(), 10);
  for (std::size_t q = 0; q < 20; ++q) {
    for (std::size_t j = 0; j < 6; ++j) CHECK(result.id(q, j) != no_id);
    for (std::size_t j = 6; j < 10; ++j) {
      CHECK(result.id(q, j) == no_id);
      CHECK(result.distance(q, j) == no_distance);
    }
  }
  const flat_index empty(dim);
  const neighbors none = empty.search(f.queries.view().slice(0, 2), 3);
  CHECK(std::all_of(none.ids().begin(), none.ids().end(), [](vector_id id) { return id == no_id; }));
}

TEST_CASE("flat search applies the per-call filter and stays k long", "[flat]") {
  const fixture f(1200, 40, 11);
  const flat_index index = f.build(metric::l2);
  const auto odd = [](vector_id id) { return id % 2 == 1; };
  search_params params;
  params.filter = odd;
  check_matches_reference(f, metric::l2, index.search(f.queries.view(), 10, params), 10, odd);
  check_matches_reference(f, metric::l2, index.search(f.queries.view().slice(0, 3), 10, params), 10, odd);
  // A filter that passes only three ids leaves the rest of the row as the sentinel.
  const std::vector<vector_id> few = {f.ids[5], f.ids[50], f.ids[500]};
  const auto only_few = [&](vector_id id) { return std::find(few.begin(), few.end(), id) != few.end(); };
  params.filter = only_few;
  check_matches_reference(f, metric::l2, index.search(f.queries.view(), 10, params), 10, only_few);
}

TEST_CASE("flat: an id_set filter scores its ids' rows, bit for bit as the same predicate", "[flat]") {
  // Looked up rather than tested on every row, for a single query too; ids not stored are skipped.
  const fixture f(3000, 20, 19);
  std::vector<vector_id> chosen;
  for (std::size_t i = 0; i < f.ids.size(); i += 97) chosen.push_back(f.ids[i]);
  chosen.push_back(12345);  // not stored (the fixture's ids are random 63-bit)
  const id_set few(chosen);
  const auto keep = [&](vector_id id) { return few.contains(id); };
  for (const metric m : {metric::l2, metric::inner_product, metric::cosine}) {
    CAPTURE(metric_name(m));
    flat_index index = f.build(m);
    search_params listed;
    listed.filter = few;
    search_params predicate;
    predicate.filter = keep;
    for (const std::size_t rows : {std::size_t{1}, f.queries.rows}) {
      const matrix_view<const float> q = f.queries.view().slice(0, rows);
      const neighbors got = index.search(q, 10, listed);
      test::require_identical(got, index.search(q, 10, predicate));
      check_matches_reference(f, m, got, 10, keep);
    }
    index.remove(chosen[0]);  // gone from the index, still in the set: skipped
    const neighbors after = index.search(f.queries.view(), 10, listed);
    CHECK(std::find(after.ids().begin(), after.ids().end(), chosen[0]) == after.ids().end());
    test::require_identical(after, index.search(f.queries.view(), 10, predicate));
  }
}

TEST_CASE("flat batches under a filter that accepts few rows score only those, as single queries do", "[flat]") {
  // The filter runs once per stored row for the batch (it cannot depend on the query); a GEMM over
  // every row then tested each query's candidates against it one by one, most rows for most queries
  // while the heap was not full.
  const fixture f(3000, 40, 13);
  std::size_t calls = 0;  // searches below run in a one-thread arena: a plain counter
  std::vector<std::uint8_t> accepted(f.ids.size(), 0);
  splitmix64 rng(3);
  for (std::uint8_t& a : accepted) a = rng.uniform() < 0.02 ? 1 : 0;
  std::unordered_map<vector_id, std::uint8_t> by_id;
  for (std::size_t i = 0; i < f.ids.size(); ++i) by_id.emplace(f.ids[i], accepted[i]);
  const auto counted = [&](vector_id id) {
    ++calls;
    return by_id.at(id) != 0;
  };
  const auto keep = [&](vector_id id) { return by_id.at(id) != 0; };
  tbb::task_arena one(1);
  for (const metric m : {metric::l2, metric::inner_product, metric::cosine}) {
    CAPTURE(metric_name(m));
    const flat_index index = f.build(m);
    search_params params;
    params.filter = counted;
    calls = 0;
    const neighbors batch = one.execute([&] { return index.search(f.queries.view(), 10, params); });
    CHECK(calls == 1024 + f.ids.size());  // a sample of 1,024, then once per row for the whole batch
    check_matches_reference(f, m, batch, 10, keep);
    for (std::size_t q = 0; q < f.queries.rows; ++q) {  // bit for bit the single-query (streaming) rows
      const neighbors single = index.search(f.queries.view().slice(q, 1), 10, params);
      for (std::size_t j = 0; j < 10; ++j) {
        CHECK(batch.id(q, j) == single.id(0, j));
        CHECK(batch.distance(q, j) == single.distance(0, j));
      }
    }
  }
  // A filter that passes every row: the sample (1,024 calls) says so, and the GEMM tests only its
  // candidates; listing every row first cost a call per row more (a review).
  const fixture big(20000, 16, 17);
  const flat_index index = big.build(metric::l2);
  search_params params;
  params.filter = [&calls](vector_id) {
    ++calls;
    return true;
  };
  calls = 0;
  (void)one.execute([&] { return index.search(big.queries.view(), 10, params); });
  CHECK(calls < big.ids.size() / 2);
}

TEST_CASE("flat remove deletes for good and re-add works", "[flat]") {
  fixture f(900, 30, 5);
  flat_index index = f.build(metric::inner_product);
  std::vector<vector_id> removed;
  for (std::size_t i = 0; i < f.ids.size(); i += 3) {
    index.remove(f.ids[i]);
    removed.push_back(f.ids[i]);
  }
  CHECK(index.size() == f.ids.size() - removed.size());
  for (const vector_id id : removed) CHECK_FALSE(index.contains(id));
  const auto kept = [&](vector_id id) { return std::find(removed.begin(), removed.end(), id) == removed.end(); };
  check_matches_reference(f, metric::inner_product, index.search(f.queries.view(), 10), 10, kept);
  REQUIRE_THROWS_MATCHES(index.remove(removed.front()), shoal::error, fails_with(errc::not_found, "is not stored"));
  // Put everything back: results equal a fresh build again.
  for (std::size_t i = 0; i < f.ids.size(); i += 3) index.add({f.base.row(i), 1, dim}, std::span(&f.ids[i], 1));
  check_matches_reference(f, metric::inner_product, index.search(f.queries.view(), 10), 10,
                          [](vector_id) { return true; });
  const auto stored = index.vector(f.ids[4]);
  CHECK(std::equal(stored.begin(), stored.end(), f.base.row(4)));
}

TEST_CASE("flat add copies rows that point into the index's own storage", "[flat]") {
  // `vector()` points into the storage that `add` grows: a stored vector added again under a new id
  // must be copied before the storage moves (under ASan: a heap-use-after-free before the fix; in a
  // plain build the freed block of this size is unmapped, so the read faults or copies garbage).
  fixture f(4000, 1, 6);
  for (const metric m : {metric::l2, metric::inner_product}) {
    flat_index index = f.build(m);
    const std::vector<vector_id> fresh{1, 2};
    const auto stored = index.vector(f.ids[10]);
    const std::vector<float> want(stored.begin(), stored.end());
    index.add({stored.data(), 1, dim}, std::span(fresh.data(), 1));
    const auto again = index.vector(f.ids[20]);
    const std::vector<float> want20(again.begin(), again.end());
    index.add({again.data(), 1, dim}, std::span(fresh.data() + 1, 1));
    const auto got = index.vector(1);
    CHECK(std::equal(got.begin(), got.end(), want.begin(), want.end()));
    const auto got20 = index.vector(2);
    CHECK(std::equal(got20.begin(), got20.end(), want20.begin(), want20.end()));
    if (m == metric::l2) {  // the original and its copy, both at distance 0
      const neighbors n = index.search({want.data(), 1, dim}, 2);
      CHECK(n.distance(0, 0) == 0.0f);
      CHECK(n.distance(0, 1) == 0.0f);
    }
  }
}

TEST_CASE("flat range search returns exactly the vectors within the radius", "[flat]") {
  const fixture f(700, 25, 13);
  for (const metric m : {metric::l2, metric::inner_product, metric::cosine}) {
    CAPTURE(metric_name(m));
    const flat_index index = f.build(m);
    // A radius around the 20th neighbour's distance, so each query has a non-trivial answer.
    const float radius = brute_force(f.base.view(), f.ids, f.queries.row(1), m)[20].distance;
    const range_result r = index.range_search(f.queries.view(), radius);
    REQUIRE(r.rows() == 25);
    for (std::size_t q = 0; q < 25; ++q) {
      std::vector<scored_id> want = brute_force(f.base.view(), f.ids, f.queries.row(q), m);
      std::erase_if(want, [&](const scored_id& s) { return !(s.distance < radius); });
      REQUIRE(r.row_ids(q).size() == want.size());
      for (std::size_t j = 0; j < want.size(); ++j) {
        CHECK(r.row_ids(q)[j] == want[j].id);
        CHECK(r.row_distances(q)[j] == want[j].distance);
      }
    }
  }
}

TEST_CASE("concurrent searches agree with a single-threaded search", "[flat]") {
  const fixture f(2000, 64, 17);
  const flat_index index = f.build(metric::l2);
  const neighbors expected = index.search(f.queries.view(), 10);
  std::vector<neighbors> got(4);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < got.size(); ++t)
    threads.emplace_back([&, t] { got[t] = index.search(f.queries.view().slice(0, t % 2 == 0 ? 64 : 7), 10); });
  for (std::thread& t : threads) t.join();
  for (std::size_t t = 0; t < got.size(); ++t)
    for (std::size_t q = 0; q < got[t].rows(); ++q)
      for (std::size_t j = 0; j < 10; ++j) CHECK(got[t].id(q, j) == expected.id(q, j));
}

TEST_CASE("flat index rejects bad input with clear errors and changes nothing", "[flat]") {
  const fixture f(50, 4, 19);
  flat_index index = f.build(metric::cosine);
  const matrix<float> wrong_dim = make_uniform(2, dim + 1, 1);
  REQUIRE_THROWS_MATCHES(flat_index(0), shoal::error, fails_with(errc::invalid_argument, "dimension"));
  // Above what a file can record (the index could be saved but never loaded).
  REQUIRE_THROWS_MATCHES(flat_index(max_dim + 1), shoal::error,
                         fails_with(errc::invalid_argument, "dimension 16777217 is outside"));
  REQUIRE_THROWS_MATCHES(index.add(wrong_dim.view(), std::vector<vector_id>{1, 2}), shoal::error,
                         fails_with(errc::dimension_mismatch, "has dimension 38, expected 37"));
  REQUIRE_THROWS_MATCHES(index.search(wrong_dim.view(), 3), shoal::error,
                         fails_with(errc::dimension_mismatch, "query has dimension 38"));
  matrix<float> bad = make_uniform(3, dim, 2);
  bad.row(2)[5] = std::numeric_limits<float>::quiet_NaN();
  REQUIRE_THROWS_MATCHES(index.add(bad.view(), std::vector<vector_id>{1001, 1002, 1003}), shoal::error,
                         fails_with(errc::non_finite, "row 2 has a non-finite value"));
  bad.row(2)[5] = std::numeric_limits<float>::infinity();
  REQUIRE_THROWS_MATCHES(index.search(bad.view(), 3), shoal::error, fails_with(errc::non_finite, "component 5"));
  shoal::test::check_common_input_errors(index, f.queries.view(), f.ids[3]);
  REQUIRE_THROWS_MATCHES(index.vector(12345), shoal::error, fails_with(errc::not_found, "12345"));
  CHECK(index.size() == 50);  // every failed add left the index as it was
  CHECK(index.memory_bytes() >= 50 * dim * sizeof(float));
}
