#pragma once
// Helpers shared by the test files: error matchers and a reference brute-force search.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "shoal/core/checks.hpp"
#include "shoal/core/coarse_probe.hpp"
#include "shoal/core/error.hpp"
#include "shoal/core/params.hpp"
#include "shoal/core/topk.hpp"
#include "shoal/distance/distance.hpp"
#include "shoal/eval/eval.hpp"
#include "shoal/index/flat.hpp"
#include "shoal/io/format.hpp"

namespace shoal::test {

/// Whether this build runs under AddressSanitizer or ThreadSanitizer (several times slower, and shadow
/// memory that no address-space cap allows).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool sanitized = true;
#elif defined(__has_feature)
inline constexpr bool sanitized = __has_feature(address_sanitizer) || __has_feature(thread_sanitizer);
#else
inline constexpr bool sanitized = false;
#endif

/// Matches a shoal::error with the given code whose message contains `fragment`.
class error_matcher : public Catch::MatcherBase<shoal::error> {
 public:
  error_matcher(errc code, std::string fragment) : code_(code), fragment_(std::move(fragment)) {}
  bool match(const shoal::error& e) const override {
    return e.code() == code_ && std::string(e.what()).find(fragment_) != std::string::npos;
  }
  std::string describe() const override {
    return std::string("is a shoal::error with code ") + errc_name(code_) + " mentioning \"" + fragment_ + "\"";
  }

 private:
  errc code_;
  std::string fragment_;
};

inline error_matcher fails_with(errc code, std::string fragment = "") { return {code, std::move(fragment)}; }

/// An outside coarse pass (`search_params::coarse`, L2) over `nlist` lists of `dim` dimensions that names
/// fixed lists: probe j of every query is `lists[j % lists.size()]`, whatever the query; it serves up to
/// `max_nprobe` lists (0: all).
class fixed_probe final : public coarse_probe {
 public:
  fixed_probe(std::size_t nlist, std::size_t dim, std::vector<std::uint32_t> lists, std::size_t max_nprobe = 0)
      : nlist_(nlist), dim_(dim), max_nprobe_(max_nprobe == 0 ? nlist : max_nprobe), lists_(std::move(lists)) {}
  [[nodiscard]] std::size_t max_nprobe() const noexcept override { return max_nprobe_; }
  [[nodiscard]] std::size_t lists() const noexcept override { return nlist_; }
  [[nodiscard]] std::size_t dim() const noexcept override { return dim_; }
  [[nodiscard]] shoal::metric metric() const noexcept override { return metric::l2; }
  [[nodiscard]] std::size_t min_batch() const noexcept override { return 1; }
  void probe(matrix_view<const float> queries, std::size_t nprobe, std::uint32_t* probes) const override {
    for (std::size_t i = 0; i < queries.rows * nprobe; ++i) probes[i] = lists_[i % nprobe % lists_.size()];
  }

 private:
  std::size_t nlist_, dim_, max_nprobe_;
  std::vector<std::uint32_t> lists_;
};

/// Searches and range searches of an IVF `index` of `nlist` lists with `params` (nprobe 3) refuse an
/// outside pass's list past the last one and a list repeated within a query, naming query, list and probe.
template <class Index>
void require_refuses_bad_outside_lists(const Index& index, matrix_view<const float> queries, search_params params,
                                       std::size_t nlist) {
  const std::string n = std::to_string(nlist);
  const fixed_probe past_end(nlist, queries.dim, {3, static_cast<std::uint32_t>(nlist)});
  const fixed_probe repeated(nlist, queries.dim, {7, 2, 7});
  params.coarse = &past_end;
  REQUIRE_THROWS_MATCHES(index.search(queries, 5, params), shoal::error,
                         fails_with(errc::invalid_argument, "query 0: search_params::coarse gave list " + n +
                                                                " (probe 1), but the index has " + n + " lists"));
  REQUIRE_THROWS_MATCHES(index.range_search(queries, 1.0f, params), shoal::error,
                         fails_with(errc::invalid_argument, "gave list " + n + " (probe 1)"));
  params.coarse = &repeated;
  REQUIRE_THROWS_MATCHES(
      index.search(queries, 5, params), shoal::error,
      fails_with(errc::invalid_argument, "query 0: search_params::coarse gave list 7 twice (probe 2)"));
  REQUIRE_THROWS_MATCHES(index.range_search(queries, 1.0f, params), shoal::error,
                         fails_with(errc::invalid_argument, "gave list 7 twice (probe 2)"));
}

/// An index's writes racing its reads. `index` holds rows [0, 1000) of `base` (ids `ids`) to start with.
/// Three reader threads loop on `search(t)` (t = 0, 1, 2; it returns that thread's result) and on
/// `contains` / `size`, while the calling thread adds rows [1000, 4000) in batches of 100, after each
/// batch removing and re-adding one of the first thousand. Returns how many result slots the readers got
/// back empty, plus how many times `contains` missed one of the first three ids, which stay stored
/// throughout (Catch asserts on the main thread only, so the readers count instead).
template <class Index, class Search>
std::size_t churn_while_searching(Index& index, const matrix<float>& base, const std::vector<vector_id>& ids,
                                  const Search& search) {
  std::atomic<bool> done{false};
  std::atomic<std::size_t> searches{0};
  std::atomic<std::size_t> empty_slots{0};
  std::vector<std::thread> readers;
  for (std::size_t t = 0; t < 3; ++t)
    readers.emplace_back([&, t] {
      while (!done.load()) {
        const neighbors r = search(t);
        for (const vector_id id : r.ids()) empty_slots.fetch_add(id == no_id ? 1 : 0);
        empty_slots.fetch_add(index.contains(ids[t]) ? 0 : 1);  // ids 0-2 are never removed
        (void)index.size();
        searches.fetch_add(1);
      }
    });
  for (std::size_t first = 1000; first < 4000; first += 100) {
    index.add(base.view().slice(first, 100), std::span(ids.data() + first, 100));
    const std::size_t victim = first / 10;
    index.remove(ids[victim]);
    index.add({base.row(victim), 1, base.dim}, std::span(&ids[victim], 1));
  }
  while (searches.load() < 10) std::this_thread::yield();
  done.store(true);
  for (std::thread& t : readers) t.join();
  return empty_slots.load();
}

/// While one thread moves id `moved` back and forth between `a` and `b` (1 x dim each: remove, then add
/// at the other one), runs `searches` calls of `search()` — each returning the ids of one query's row —
/// and returns how many rows held `moved` more than once. A search that locks one list at a time can
/// meet the vector in the list it left and again in the list it went to.
template <class Index, class Search>
std::size_t repeats_while_moving(Index& index, vector_id moved, const matrix<float>& a, const matrix<float>& b,
                                 std::size_t searches, const Search& search) {
  std::atomic<bool> done{false};
  std::thread mover([&] {
    for (bool at_a = true; !done.load(); at_a = !at_a) {
      index.remove(moved);
      index.add((at_a ? b : a).view(), std::span(&moved, 1));
    }
  });
  std::size_t repeated = 0;
  for (std::size_t i = 0; i < searches; ++i) {
    const std::vector<vector_id> row = search();
    repeated += std::count(row.begin(), row.end(), moved) > 1 ? 1 : 0;
  }
  done.store(true);
  mover.join();
  return repeated;
}

/// Two result sets equal id for id and distance for distance (the first difference is reported).
inline void require_identical(const neighbors& got, const neighbors& want) {
  REQUIRE(got.rows() == want.rows());
  REQUIRE(got.k() == want.k());
  for (std::size_t q = 0; q < got.rows(); ++q)
    for (std::size_t j = 0; j < got.k(); ++j) {
      CAPTURE(q, j);
      REQUIRE(got.id(q, j) == want.id(q, j));
      REQUIRE(got.distance(q, j) == want.distance(q, j));
    }
}

/// Two searches agree up to float rounding (a GEMM's against the pairwise kernels', say): the j-th
/// distances match within `tol`, and every neighbour of `want` clearly inside the k (more than `tol`
/// below its k-th distance) is among `got`'s.
inline void require_same_up_to_ties(const neighbors& got, const neighbors& want, float tol) {
  REQUIRE(got.rows() == want.rows());
  REQUIRE(got.k() == want.k());
  for (std::size_t r = 0; r < want.rows(); ++r) {
    CAPTURE(r);
    const std::size_t k = want.k();
    for (std::size_t j = 0; j < k; ++j) CHECK(std::abs(got.distance(r, j) - want.distance(r, j)) <= tol);
    const auto ids = got.row_ids(r);
    for (std::size_t j = 0; j < k; ++j)
      if (want.distance(r, j) < want.distance(r, k - 1) - tol)
        CHECK(std::find(ids.begin(), ids.end(), want.id(r, j)) != ids.end());
  }
}

/// A standard Cauchy value (heavy tails: no mean, no variance), capped at ±1e6.
inline float cauchy(splitmix64& rng) { return std::clamp(std::tan(3.14159265f * (rng.uniform() - 0.5f)), -1e6f, 1e6f); }

/// The largest squared norm of `x`'s rows, at least 1: the scale of a GEMM-form distance's rounding.
inline float max_squared_norm(const matrix<float>& x) {
  float largest = 1.0f;
  for (std::size_t r = 0; r < x.rows; ++r) largest = std::max(largest, inner_product(x.row(r), x.row(r), x.dim));
  return largest;
}

/// A CPU flat index over `x` whose ids are the row numbers (what a device flat index reports).
inline flat_index row_numbered_flat(const matrix<float>& x, metric m) {
  flat_index index(x.dim, m);
  std::vector<vector_id> rows(x.rows);
  for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = i;
  index.add(x.view(), rows);
  return index;
}

/// What an IVF index's search for `k` under `params` returns, from unbounded range searches (which do
/// not widen): a row that its nprobe lists leave short of k ids searches twice the lists, then twice
/// again, until it holds k or every one of the `nlist` lists was searched. `short_at_first` (when given)
/// receives how many rows the first nprobe lists left short.
template <class Index>
[[nodiscard]] neighbors widened_expectation(const Index& index, matrix_view<const float> queries, std::size_t k,
                                            search_params params, std::size_t nlist,
                                            std::size_t* short_at_first = nullptr) {
  neighbors want(queries.rows, k);
  std::vector<bool> done(queries.rows, false);
  std::size_t n = std::min(params.nprobe == 0 ? std::size_t{1} : params.nprobe, nlist);
  if (short_at_first != nullptr) *short_at_first = 0;
  for (bool first = true;; first = false, n = std::min(nlist, 2 * n)) {
    params.nprobe = n;
    const range_result all = index.range_search(queries, std::numeric_limits<float>::infinity(), params);
    for (std::size_t q = 0; q < queries.rows; ++q) {
      const std::size_t held = all.row_ids(q).size();
      if (first && held < k && short_at_first != nullptr) ++*short_at_first;
      if (done[q] || (held < k && n < nlist)) continue;
      for (std::size_t j = 0; j < k; ++j) {
        want.view().row_ids(q)[j] = j < held ? all.row_ids(q)[j] : no_id;
        want.view().row_distances(q)[j] = j < held ? all.row_distances(q)[j] : no_distance;
      }
      done[q] = true;
    }
    if (n == nlist) return want;
  }
}

/// Two range results equal row for row, id for id and distance for distance.
inline void require_identical(const range_result& got, const range_result& want) {
  REQUIRE(got.offsets == want.offsets);
  CHECK(got.ids == want.ids);
  CHECK(got.distances == want.distances);
}

/// Clustered base (`clusters` clusters, spread 1) with scattered 63-bit ids, and queries near stored
/// vectors: each query is a random stored vector plus `noise` times a standard normal per component,
/// except every `exact_every`-th query (0: none), which is the stored vector itself.
struct clustered_set {
  matrix<float> base;
  std::vector<vector_id> ids;
  matrix<float> queries;

  clustered_set(std::size_t n, std::size_t nq, std::size_t dim, std::size_t clusters, std::uint64_t seed, float noise,
                std::size_t exact_every = 0)
      : base(make_clustered(n, dim, clusters, seed, 1.0f)), ids(n), queries(nq, dim) {
    splitmix64 rng(seed + 1);
    for (vector_id& id : ids) id = rng.next() >> 1;
    for (std::size_t q = 0; q < nq; ++q) {
      const float* near = base.row(rng.below(n));
      const float scale = exact_every != 0 && q % exact_every == 0 ? 0.0f : noise;
      for (std::size_t j = 0; j < dim; ++j) queries.row(q)[j] = near[j] + scale * rng.normal();
    }
  }
};

/// `index` trained on `base` with `train_params`, then holding `base` under `ids`.
template <class Index, class TrainParams>
[[nodiscard]] Index trained_with(Index index, const matrix<float>& base, const std::vector<vector_id>& ids,
                                 const TrainParams& train_params) {
  index.train(base.view(), train_params);
  index.add(base.view(), ids);
  return index;
}

/// A child process made to be killed mid-work (crash tests). The child runs `body(fd)`, where fd is the
/// write end of a pipe to the parent, and exits with status 3 if `body` returns; the parent reads the
/// pipe (`from_child`) and ends it with `kill_and_reap`. In the child, avoid oneTBB work: its thread
/// pool does not survive `fork`.
class killable_child {
 public:
  template <class Body>
  explicit killable_child(const Body& body) {
    int fds[2] = {-1, -1};
    REQUIRE(::pipe(fds) == 0);
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      ::close(fds[0]);
      body(fds[1]);
      ::_exit(3);
    }
    ::close(fds[1]);
    from_child_ = fds[0];
  }
  killable_child(const killable_child&) = delete;
  killable_child& operator=(const killable_child&) = delete;
  ~killable_child() {
    if (from_child_ >= 0) ::close(from_child_);
  }
  [[nodiscard]] pid_t pid() const noexcept { return pid_; }
  /// The read end of the pipe from the child.
  [[nodiscard]] int from_child() const noexcept { return from_child_; }
  /// SIGKILLs the child, waits for it and checks that the signal, not an exit, ended it.
  void kill_and_reap() {
    ::kill(pid_, SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(pid_, &status, 0) == pid_);
    REQUIRE(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGKILL);
  }

 private:
  pid_t pid_ = -1;
  int from_child_ = -1;
};

/// What a command run through the shell gave: its exit status (128 + signal when a signal ended it) and
/// its stdout and stderr together.
struct outcome {
  int status = -1;
  std::string output;
};

/// Runs `command` (a shell command line) to its end.
inline outcome run_command(const std::string& command) {
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  REQUIRE(pipe != nullptr);
  outcome o;
  char buffer[4096];
  while (const std::size_t n = std::fread(buffer, 1, sizeof buffer, pipe)) o.output.append(buffer, n);
  const int raw = ::pclose(pipe);
  o.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
  return o;
}

/// Checks that `o` ended with `status` and printed `says`.
inline void check_outcome(const outcome& o, int status, const std::string& says) {
  INFO(o.output);
  CHECK(o.status == status);
  CHECK(o.output.find(says) != std::string::npos);
}

/// Ends the test process with a message and a failing status if it is still alive after 60 s: a test of
/// a would-be hang (a deadlock, a starved lock) then fails instead of waiting for ctest's timeout. Stop
/// it with `disarm()` (or by destroying it) once the work that might hang is done.
class watchdog {
 public:
  explicit watchdog(const char* hang)
      : thread_([this, hang] {
          for (int waited = 0; waited < 600 && !done_.load(); ++waited)
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
          if (!done_.load()) {
            std::fprintf(stderr, "%s: still waiting after 60 s\n", hang);
            std::_Exit(1);
          }
        }) {}
  watchdog(const watchdog&) = delete;
  watchdog& operator=(const watchdog&) = delete;
  ~watchdog() { disarm(); }
  void disarm() {
    done_ = true;
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::atomic<bool> done_{false};
  std::thread thread_;
};

/// Runs `writes()` while `threads` threads call `read(t, i)` without pause (thread t passes i = t, t + 7,
/// t + 14, ...), once the readers have made `warmup` calls between them. Readers stop after `limit`, so
/// that writes stalled behind them go on and the test ends. True when the writes returned before that:
/// a write got its turn while the reads went on.
template <class Read, class Writes>
bool writes_get_their_turn(std::size_t threads, const Read& read, const Writes& writes, std::size_t warmup,
                           std::chrono::seconds limit = std::chrono::seconds(20)) {
  std::atomic<bool> stop{false};
  std::atomic<std::size_t> reads{0};
  std::vector<std::thread> readers;
  for (std::size_t t = 0; t < threads; ++t)
    readers.emplace_back([&, t] {
      for (std::size_t i = t; !stop.load(); i += 7) {
        read(t, i);
        reads.fetch_add(1);
      }
    });
  std::thread watchdog([&] {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (!stop.load() && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    stop.store(true);
  });
  while (reads.load() < warmup) std::this_thread::yield();
  writes();
  const bool in_time = !stop.exchange(true);
  watchdog.join();
  for (std::thread& t : readers) t.join();
  return in_time;
}

/// A fresh directory under the system's temporary directory, removed with its content at scope exit.
class scratch_dir {
 public:
  explicit scratch_dir(std::string_view tag = "shoal-test") {
    static int counter = 0;
    const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
    path_ = std::filesystem::temp_directory_path() / (std::string(tag) + "-" + std::to_string(::getpid()) + "-" +
                                                      std::to_string(counter++) + "-" + std::to_string(now));
    std::filesystem::create_directories(path_);
  }
  scratch_dir(const scratch_dir&) = delete;
  scratch_dir& operator=(const scratch_dir&) = delete;
  ~scratch_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  /// `name` inside the directory, as a string (what the save/load APIs take).
  [[nodiscard]] std::string operator/(std::string_view name) const { return (path_ / name).string(); }
  [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }

 private:
  std::filesystem::path path_;
};

/// Every (distance, id) of `base` for `query`, computed pairwise with the active kernels the way the
/// flat index defines its distances (cosine on normalised copies), sorted by (distance, id).
inline std::vector<scored_id> brute_force(matrix_view<const float> base, const std::vector<vector_id>& ids,
                                          const float* query, metric m) {
  const distance_kernels& k = active_kernels();
  std::vector<scored_id> all;
  const std::size_t d = base.dim;
  if (m == metric::cosine) {
    const matrix<float> nb = detail::normalized_copy(base, "base");
    const matrix<float> nq = detail::normalized_copy({query, 1, d}, "query");
    for (std::size_t i = 0; i < base.rows; ++i)
      all.push_back({1.0f - k.inner_product(nq.row(0), nb.row(i), d), ids[i]});
  } else {
    for (std::size_t i = 0; i < base.rows; ++i) {
      const float dist = m == metric::l2 ? k.l2sqr(query, base.row(i), d) : -k.inner_product(query, base.row(i), d);
      all.push_back({dist, ids[i]});
    }
  }
  std::sort(all.begin(), all.end());
  return all;
}

/// The add / search / range_search input errors every index reports alike. `index` is a cosine index
/// that stores `stored` but not the ids 99 and 77; `queries` has 4 rows of the index's dimension. Each
/// rejected add must leave the index unchanged.
template <class Index>
void check_common_input_errors(Index& index, matrix_view<const float> queries, vector_id stored) {
  const std::size_t dim = queries.dim;
  const std::size_t size = index.size();
  const matrix<float> good = make_uniform(2, dim, 3);
  REQUIRE_THROWS_MATCHES(index.add(good.view(), std::vector<vector_id>{5}), shoal::error,
                         fails_with(errc::invalid_argument, "2 vectors but 1 ids"));
  REQUIRE_THROWS_MATCHES(index.add(good.view(), std::vector<vector_id>{stored, 99}), shoal::error,
                         fails_with(errc::duplicate_id, "already stored"));
  REQUIRE_THROWS_MATCHES(index.add(good.view(), std::vector<vector_id>{99, 99}), shoal::error,
                         fails_with(errc::duplicate_id, "twice"));
  // A larger batch too (IVF-PQ checks small batches id by id, larger ones by one pass over its ids).
  const matrix<float> many = make_uniform(40, dim, 4);
  std::vector<vector_id> many_ids(40);
  for (std::size_t i = 0; i < many_ids.size(); ++i) many_ids[i] = (vector_id{1} << 40) + i;
  many_ids[25] = stored;
  REQUIRE_THROWS_MATCHES(index.add(many.view(), many_ids), shoal::error,
                         fails_with(errc::duplicate_id, "already stored"));
  const matrix<float> zero(1, dim);
  REQUIRE_THROWS_MATCHES(index.add(zero.view(), std::vector<vector_id>{77}), shoal::error,
                         fails_with(errc::invalid_argument, "zero"));
  // Rows 2^62 floats apart: row 1 sits 2^64 bytes on, which wrapped back onto row 0.
  const matrix_view<const float> wrapping{good.values.data(), 2, dim, std::size_t{1} << 62};
  REQUIRE_THROWS_MATCHES(index.add(wrapping, std::vector<vector_id>{98, 99}), shoal::error,
                         fails_with(errc::invalid_argument, "span past the address space"));
  REQUIRE_THROWS_MATCHES(index.search(wrapping, 1), shoal::error,
                         fails_with(errc::invalid_argument, "span past the address space"));
  REQUIRE_THROWS_MATCHES(index.search(queries, 0), shoal::error, fails_with(errc::invalid_argument, "k must"));
  REQUIRE_THROWS_MATCHES(index.range_search(queries, std::nanf("")), shoal::error,
                         fails_with(errc::invalid_argument, "NaN"));
  neighbors out(3, 5);
  REQUIRE_THROWS_MATCHES(index.search(queries, out.view()), shoal::error,
                         fails_with(errc::invalid_argument, "3 rows for 4 queries"));
  CHECK(index.size() == size);
  CHECK_FALSE(index.contains(99));
  CHECK_FALSE(index.contains(77));
  CHECK_FALSE(index.contains(vector_id{1} << 40));
}

/// Writes `bytes` to `path`, replacing it.
inline void write_bytes(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

/// The in-memory (little-endian) bytes of values.
template <class T>
std::string raw(const std::vector<T>& values) {
  return {reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T)};
}
template <class T>
std::string raw_value(T value) {
  return raw(std::vector<T>{value});
}

/// A .npy file by hand: magic, version `major`.0, header length (2 bytes for 1.0, else 4), `dict` + '\n', data.
inline std::string npy_file(int major, std::string_view dict, const std::string& data) {
  std::string header(dict);
  header += '\n';
  std::string out("\x93NUMPY", 6);
  out += static_cast<char>(major);
  out += '\0';
  out += major == 1 ? raw_value(static_cast<std::uint16_t>(header.size()))
                    : raw_value(static_cast<std::uint32_t>(header.size()));
  return out + header + data;
}

/// The bytes of the file `path`.
inline std::vector<char> slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// Replaces the file `path` with `bytes`.
inline void spit(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::uint32_t get_u32(const std::vector<char>& bytes, std::size_t at) {
  std::uint32_t v = 0;
  std::memcpy(&v, bytes.data() + at, sizeof v);
  return v;
}

/// Recomputes the header checksum as docs/format.md defines it: CRC-32C of the 128 header bytes with the
/// checksum field (bytes 68..71) zeroed, continued over the section table (32 bytes per section).
inline void reseal_header(std::vector<char>& bytes) {
  const std::uint32_t sections = get_u32(bytes, 28);
  std::vector<char> head(bytes.begin(), bytes.begin() + 128);
  std::fill(head.begin() + 68, head.begin() + 72, char{0});
  std::uint32_t crc = crc32c(head.data(), head.size());
  crc = crc32c(bytes.data() + 128, sections * std::size_t{32}, crc);
  std::memcpy(bytes.data() + 68, &crc, sizeof crc);
}

/// Writes `value` at byte `at` of `bytes`.
template <class T>
void put(std::vector<char>& bytes, std::size_t at, T value) {
  std::memcpy(bytes.data() + at, &value, sizeof value);
}

/// One section of an index file: its table entry's tag and flags, and its bytes.
struct file_section {
  std::string tag;
  std::uint32_t flags = 0;
  std::vector<char> content;
};

/// The sections of the index file `bytes`, in table order.
inline std::vector<file_section> sections_of(const std::vector<char>& bytes) {
  std::vector<file_section> out;
  for (std::uint32_t s = 0; s < get_u32(bytes, 28); ++s) {
    const std::size_t entry = 128 + std::size_t{32} * s;
    std::uint64_t offset = 0;
    std::uint64_t size = 0;
    std::memcpy(&offset, bytes.data() + entry + 8, sizeof offset);
    std::memcpy(&size, bytes.data() + entry + 16, sizeof size);
    const auto first = bytes.begin() + static_cast<std::ptrdiff_t>(offset);
    out.push_back({std::string(bytes.data() + entry, 4), get_u32(bytes, entry + 4),
                   std::vector<char>(first, first + static_cast<std::ptrdiff_t>(size))});
  }
  return out;
}

/// The file of `bytes`' header (version, kind, metric, dim, count) holding `sections` instead of its own,
/// laid out, checksummed and sealed as docs/format.md says (with `big_alignment` instead of 4096 for the
/// sections of 64 KiB or more, to make a misplaced one).
inline std::vector<char> with_sections(const std::vector<char>& bytes, const std::vector<file_section>& sections,
                                       std::size_t big_alignment = 4096) {
  std::vector<std::size_t> offsets;
  std::size_t end = 128 + 32 * sections.size();
  for (const file_section& x : sections) {
    const std::size_t alignment = x.content.size() >= (std::size_t{64} << 10) ? big_alignment : 64;
    offsets.push_back((end + alignment - 1) / alignment * alignment);
    end = offsets.back() + x.content.size();
  }
  std::vector<char> out(end, 0);
  std::copy_n(bytes.begin(), 128, out.begin());
  put(out, 28, static_cast<std::uint32_t>(sections.size()));
  put(out, 48, static_cast<std::uint64_t>(end));
  for (std::size_t s = 0; s < sections.size(); ++s) {
    const std::vector<char>& content = sections[s].content;
    const std::size_t entry = 128 + 32 * s;
    std::copy_n(sections[s].tag.begin(), 4, out.begin() + static_cast<std::ptrdiff_t>(entry));
    put(out, entry + 4, sections[s].flags);
    put(out, entry + 8, static_cast<std::uint64_t>(offsets[s]));
    put(out, entry + 16, static_cast<std::uint64_t>(content.size()));
    put(out, entry + 24, crc32c(content.data(), content.size()));
    std::copy(content.begin(), content.end(), out.begin() + static_cast<std::ptrdiff_t>(offsets[s]));
  }
  reseal_header(out);
  return out;
}

}  // namespace shoal::test
