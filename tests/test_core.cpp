#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "core/phase_fair_mutex.hpp"  // src/: the lock every index's readers and writers share
#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "shoal/core/id_set.hpp"
#include "shoal/core/neighbors.hpp"
#include "shoal/core/params.hpp"
#include "shoal/core/topk.hpp"
#include "shoal/core/types.hpp"
#include "test_support.hpp"

using namespace shoal;
using shoal::test::fails_with;

TEST_CASE("SHOAL_CHECK throws shoal::error with code and formatted message", "[core]") {
  int evaluated = 0;
  auto message_part = [&] {
    ++evaluated;
    return 42;
  };
  REQUIRE_NOTHROW([&] { SHOAL_CHECK(true, "never built ", message_part()); }());
  CHECK(evaluated == 0);  // the message is only built on failure
  REQUIRE_THROWS_MATCHES([&] { SHOAL_CHECK(1 + 1 == 3, "value ", message_part(), " is odd"); }(), shoal::error,
                         fails_with(errc::invalid_argument, "shoal: value 42 is odd"));
  REQUIRE_THROWS_MATCHES([] { SHOAL_CHECK_CODE(false, errc::not_found, "id ", 7, " missing"); }(), shoal::error,
                         fails_with(errc::not_found, "id 7 missing"));
  CHECK(std::string(errc_name(errc::corrupt_file)) == "corrupt_file");
  CHECK(std::string(errc_name(errc::dimension_mismatch)) == "dimension_mismatch");
}

TEST_CASE("metric names round-trip and unknown names are rejected", "[core]") {
  for (const metric m : {metric::l2, metric::inner_product, metric::cosine}) CHECK(parse_metric(metric_name(m)) == m);
  CHECK(parse_metric("ip") == metric::inner_product);
  CHECK(parse_metric("cos") == metric::cosine);
  CHECK(parse_metric("COS") == metric::cosine);
  CHECK(parse_metric("Cosine") == metric::cosine);
  CHECK(parse_metric("INNER_PRODUCT") == metric::inner_product);
  CHECK(parse_metric("L2") == metric::l2);
  CHECK_THROWS_AS(parse_metric("l"), shoal::error);
  CHECK_THROWS_AS(parse_metric("cosines"), shoal::error);
  REQUIRE_THROWS_MATCHES(parse_metric("hamming"), shoal::error, fails_with(errc::invalid_argument, "hamming"));
}

TEST_CASE("cosine normalisation gives unit rows at every scale and refuses only zero rows", "[core]") {
  // A float sum of squares lost tiny rows: (3e-23, 0, 0, 0) came out 0.80 long, (1e-23, ...) as "zero".
  for (const float x : {1e-21f, 3e-23f, 1e-23f, 1e-40f, 1.0f, 1e18f, 3e38f}) {
    CAPTURE(x);
    const std::vector<float> row{x, x / 2, 0.0f, -x};
    const matrix<float> unit = detail::normalized_copy({row.data(), 1, row.size()}, "row");
    double squared = 0;
    for (const float v : unit.values) squared += static_cast<double>(v) * v;
    CHECK(std::abs(squared - 1.0) < 1e-6);
    CHECK(unit.values[0] == unit.values[3] * -1.0f);
  }
  const std::vector<float> zero(4, 0.0f);
  REQUIRE_THROWS_MATCHES(detail::normalized_copy({zero.data(), 1, zero.size()}, "row"), shoal::error,
                         fails_with(errc::invalid_argument, "row row 0 has zero norm"));
}

TEST_CASE("matrix_view addresses strided rows and converts to const", "[core]") {
  std::vector<float> data(5 * 4);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<float>(i);
  const matrix_view<float> v(data.data(), 5, 3, 4);
  const matrix_view<const float> cv = v;
  CHECK(cv.row(2)[0] == 8.0f);
  CHECK(cv.row_span(4).size() == 3);
  const auto s = cv.slice(1, 2);
  CHECK(s.rows == 2);
  CHECK(s.row(1)[2] == 10.0f);
  matrix<float> m(3, 5);
  CHECK(reinterpret_cast<std::uintptr_t>(m.values.data()) % 64 == 0);
  CHECK(m.view().stride == 5);
}

TEST_CASE("neighbors start as the sentinel", "[core]") {
  const neighbors n(2, 3);
  for (std::size_t r = 0; r < 2; ++r)
    for (std::size_t j = 0; j < 3; ++j) {
      CHECK(n.id(r, j) == no_id);
      CHECK(n.distance(r, j) == no_distance);
    }
}

TEST_CASE("result and matrix sizes that cannot exist are refused, not wrapped around", "[core]") {
  // 3 x 6148914691236517206 is 2 modulo 2^64: unchecked, a 2-entry buffer would pose as a huge one.
  constexpr std::size_t wraps = 6148914691236517206ULL;
  REQUIRE_THROWS_MATCHES(neighbors(3, wraps), shoal::error,
                         fails_with(errc::invalid_argument, "neighbors: rows x k: 3 x 6148914691236517206"));
  REQUIRE_THROWS_MATCHES(matrix<float>(std::size_t{1} << 32, std::size_t{1} << 32), shoal::error,
                         fails_with(errc::invalid_argument, "matrix: 4294967296 x 4294967296"));
  CHECK(neighbors(0, wraps).ids().empty());
  CHECK(detail::checked_elements<float>(3, 5, "m") == 15);
}

TEST_CASE("topk_heap keeps the k smallest by (distance, id)", "[core]") {
  topk_heap heap(3);
  CHECK(heap.worst() == no_distance);
  heap.push(5.0f, 1);
  heap.push(1.0f, 9);
  heap.push(1.0f, 4);
  heap.push(1.0f, 2);  // ties at 1.0 resolve to the smaller ids: 2 and 4 stay, 9 leaves
  heap.push(0.5f, 100);
  CHECK(heap.worst() == 1.0f);
  std::vector<vector_id> ids(4);
  std::vector<float> dist(4);
  heap.write_sorted(ids, dist);
  CHECK(ids == std::vector<vector_id>{100, 2, 4, no_id});
  CHECK(dist == std::vector<float>{0.5f, 1.0f, 1.0f, no_distance});
  CHECK(heap.size() == 0);
}

TEST_CASE("topk_heap refuses k = 0", "[core]") {
  // A heap of nothing is always full, and its worst entry would be read from an empty array.
  REQUIRE_THROWS_MATCHES(topk_heap(0), shoal::error, fails_with(errc::invalid_argument, "topk_heap: k"));
  topk_heap heap(2);
  REQUIRE_THROWS_MATCHES(heap.reset(0), shoal::error, fails_with(errc::invalid_argument, "topk_heap: k"));
  heap.push(1.0f, 3);
  CHECK(heap.capacity() == 2);
  CHECK(heap.size() == 1);
}

TEST_CASE("topk_heap with a k far above what it is offered takes memory for what it keeps", "[core]") {
  topk_heap heap(std::size_t{1} << 40);  // reserving k entries up front would need 16 TiB
  for (vector_id i = 0; i < 5000; ++i) heap.push(static_cast<float>(5000 - i), i);
  CHECK(heap.size() == 5000);
  const std::span<const scored_id> kept = heap.sort();
  CHECK(kept.front().id == 4999);
  CHECK(kept.back().id == 0);
  heap.reset(std::size_t{1} << 41);
  CHECK(heap.size() == 0);
  CHECK(heap.capacity() == std::size_t{1} << 41);
}

TEST_CASE("id_filter wraps any predicate and an empty filter accepts all", "[core]") {
  const id_filter none;
  CHECK_FALSE(static_cast<bool>(none));
  CHECK(none.accepts(123));
  const auto even = [](vector_id id) { return id % 2 == 0; };
  const id_filter f = even;
  CHECK(static_cast<bool>(f));
  CHECK(f.accepts(4));
  CHECK_FALSE(f.accepts(5));
}

TEST_CASE("id_set: lookups of its ids, repeats once, no_id refused, and a filter made from it lists it", "[core]") {
  const std::vector<vector_id> given = {5, 3, 5, vector_id{1} << 40, 0, 3};
  const id_set s(given);
  CHECK(s.size() == 4);
  CHECK(std::vector<vector_id>(s.ids().begin(), s.ids().end()) == std::vector<vector_id>{0, 3, 5, vector_id{1} << 40});
  for (const vector_id id : given) CHECK(s.contains(id));
  for (const vector_id id : {vector_id{1}, vector_id{4}, (vector_id{1} << 40) + 1, no_id - 1, no_id})
    CHECK_FALSE(s.contains(id));
  const id_set none;
  CHECK(none.empty());
  CHECK_FALSE(none.contains(0));
  CHECK_FALSE(id_set(std::vector<vector_id>{}).contains(0));
  // Many ids, against a std::set, members and others.
  splitmix64 rng(9);
  std::vector<vector_id> many(20000);
  for (vector_id& id : many) id = rng.next() % 100000;
  const id_set big(many);
  const std::set<vector_id> reference(many.begin(), many.end());
  CHECK(big.size() == reference.size());
  for (vector_id id = 0; id < 100000; ++id) REQUIRE(big.contains(id) == reference.contains(id));
  REQUIRE_THROWS_MATCHES(id_set(std::vector<vector_id>{1, no_id}), shoal::error,
                         fails_with(errc::invalid_argument, "no_id"));
  // As a filter: referenced (a temporary set would be gone), and listed for the indexes.
  const id_filter f = s;
  CHECK(f.listed() == &s);
  CHECK(f.accepts(3));
  CHECK_FALSE(f.accepts(4));
  const id_filter other = [](vector_id id) { return id == 3; };
  CHECK(other.listed() == nullptr);
  CHECK(id_filter().listed() == nullptr);
  STATIC_REQUIRE_FALSE(std::is_constructible_v<id_filter, id_set&&>);
}

bool below_ten(vector_id id) { return id < 10; }

TEST_CASE("id_filter holds small predicates by value, so a temporary may be stored, and others must outlive it",
          "[core]") {
  // A temporary lambda capturing a reference, stored and then called after its statement ended (it was
  // held by address: a read of a dead stack object, which ASan reported).
  const vector_id limit = 3;
  search_params params;
  params.filter = [&limit](vector_id id) { return id < limit; };
  const id_filter copy = params.filter;
  params.filter = {};
  CHECK(copy.accepts(2));
  CHECK_FALSE(copy.accepts(3));
  const id_filter function = below_ten;
  CHECK(function.accepts(9));
  CHECK_FALSE(function.accepts(10));
  // A null function pointer is an empty filter (it was called: a jump to address 0).
  bool (*none)(vector_id) = nullptr;
  const id_filter null_function = none;
  CHECK_FALSE(static_cast<bool>(null_function));
  CHECK(null_function.accepts(10));
  // So is an empty std::function (referenced, so tested when called: it threw std::bad_function_call).
  std::function<bool(vector_id)> later;
  const id_filter empty_function = later;
  CHECK(empty_function.accepts(10));
  later = below_ten;
  CHECK_FALSE(empty_function.accepts(10));
  CHECK(empty_function.accepts(9));
  // Only a std::function: another predicate's operator bool means what its type says (an empty
  // allow-list rejects every id; a review found it accepting every one).
  struct allow_list {
    std::vector<vector_id> ids;
    explicit operator bool() const { return !ids.empty(); }
    bool operator()(vector_id id) const { return std::find(ids.begin(), ids.end(), id) != ids.end(); }
  };
  const allow_list nobody;
  const id_filter none_allowed = nobody;
  CHECK_FALSE(none_allowed.accepts(3));
  struct named_filter : std::function<bool(vector_id)> {};  // a std::function still
  const named_filter unset;
  const id_filter from_derived = unset;
  CHECK(from_derived.accepts(3));
  // A predicate too large or not trivially copyable is referenced: an lvalue converts, a temporary does
  // not compile.
  const std::vector<vector_id> allowed{1, 7};
  const auto listed = [allowed](vector_id id) {
    return std::find(allowed.begin(), allowed.end(), id) != allowed.end();
  };
  STATIC_REQUIRE(std::is_convertible_v<decltype(listed)&, id_filter>);
  STATIC_REQUIRE(std::is_convertible_v<const decltype(listed)&, id_filter>);
  STATIC_REQUIRE_FALSE(std::is_convertible_v<decltype(listed), id_filter>);
  STATIC_REQUIRE(std::is_convertible_v<decltype([](vector_id) { return true; }), id_filter>);
  const id_filter by_reference = listed;
  CHECK(by_reference.accepts(7));
  CHECK_FALSE(by_reference.accepts(2));
}

TEST_CASE("phase_fair_mutex: readers that wait for a writer go before the next writer", "[core][concurrency]") {
  // Writer A holds the lock; reader R comes, then writer B. When A lets go, R must get in before B. The
  // writer-first lock this replaced let B in first (a writer was pending), and a thread writing without
  // pause starved every reader that way.
  detail::phase_fair_mutex mutex;
  std::mutex log_mutex;
  std::string order;
  const auto note = [&](char c) {
    const std::lock_guard lock(log_mutex);
    order += c;
  };
  std::atomic<int> started{0};
  const auto settle = [] { std::this_thread::sleep_for(std::chrono::milliseconds(200)); };
  mutex.lock();  // A
  std::thread reader([&] {
    started.fetch_add(1);
    const std::shared_lock lock(mutex);
    note('R');
  });
  while (started.load() < 1) std::this_thread::yield();
  settle();  // R waits inside lock_shared (it only needs to have arrived before A lets go)
  std::thread writer([&] {
    started.fetch_add(1);
    const std::lock_guard lock(mutex);
    note('B');
  });
  while (started.load() < 2) std::this_thread::yield();
  settle();
  note('A');
  mutex.unlock();
  reader.join();
  writer.join();
  CHECK(order == "ARB");
}

TEST_CASE("phase_fair_mutex: a thread writing without pause does not starve a reader, nor readers a writer",
          "[core][concurrency]") {
  // Writes as long as an HNSW removal (hundreds of microseconds) back to back: under the writer-first
  // lock the woken reader found the writer locked again and got in not once in 1,000 writes (3 runs;
  // 14,000 removals from a 100,000-vector HNSW index let a searching thread through 7 times in 10 s).
  detail::phase_fair_mutex mutex;
  constexpr int writes = 1000;
  std::atomic<bool> writing{true};
  std::atomic<int> reads{0};
  std::thread reader([&] {
    while (writing.load()) {
      const std::shared_lock lock(mutex);
      reads.fetch_add(1);
    }
  });
  for (int w = 0; w < writes; ++w) {
    const std::lock_guard lock(mutex);
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  const int reads_during_writes = reads.load();
  writing = false;
  reader.join();
  CAPTURE(reads_during_writes);
  CHECK(reads_during_writes >= writes / 10);

  // Two readers whose holds overlap without pause, and one writer: every write gets its turn (under
  // glibc's reader-preferring rwlock the writer waited as long as the readers ran).
  std::atomic<bool> reading{true};
  const auto read_on = [&] {
    while (reading.load()) {
      const std::shared_lock lock(mutex);
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  };
  std::thread r1(read_on), r2(read_on);
  for (int w = 0; w < 200; ++w) const std::lock_guard lock(mutex);
  reading = false;
  r1.join();
  r2.join();
  SUCCEED("200 writes done beside two readers without pause");
}
