// shoal-collection-bench: latency of a sharded collection under a mixed search / upsert load.
//
//   shoal-collection-bench BASE QUERY [--index HNSW16] [--shards 4] [--sharding hash] [--shard-probe 0]
//                          [--ef 64] [--nprobe 0] [--threads 2] [--upsert-fraction 0.1] [--seconds 10]
//                          [--k 10] [--max-base N]
//
// Builds the collection over BASE (ids = row numbers), then runs --threads client threads for --seconds:
// each operation is an upsert (a random base row's vector, slightly perturbed, under a random existing
// id) with probability --upsert-fraction, otherwise a one-query search of a random QUERY row. Prints
// the throughput (operations over the measured time) and the p50 / p99 latency of searches and of
// upserts, measured per operation with steady_clock (exact percentiles from every sample, not histogram
// buckets). --ef is read by shards whose spec holds HNSW (default 64), --nprobe by those whose spec holds
// IVF (0: the index default); either given to shards that do not read it is refused, as is an option
// given twice, and the CSV row reports 0 for a knob the shards do not read. An upsert's perturbation is symmetric noise
// of 1% of the base's value spread.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "args.hpp"
#include "shoal/collection/collection.hpp"
#include "shoal/eval/eval.hpp"
#include "shoal/io/vecs.hpp"

namespace {

using clock_type = std::chrono::steady_clock;

struct options {
  std::string base, query, index = "HNSW16", sharding = "hash";
  std::size_t shards = 4, shard_probe = 0, ef = 64, nprobe = 0, threads = 2, k = 10, max_base = 0;
  double upsert_fraction = 0.1, seconds = 10;
};

options parse(int argc, char** argv) {
  using shoal::examples::non_negative;
  using shoal::examples::whole_number;
  constexpr auto unbounded = static_cast<std::size_t>(-1);
  options o;
  std::vector<std::string> files, given;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {  // was taken for an option missing its value (a review)
      std::puts(
          "usage: shoal-collection-bench BASE QUERY [--index HNSW16] [--shards 4] [--sharding hash] "
          "[--shard-probe 0] [--ef 64] [--nprobe 0] [--threads 2] [--upsert-fraction 0.1] [--seconds 10] [--k 10] "
          "[--max-base N]");
      std::exit(0);
    }
    if (arg.rfind("--", 0) != 0) {
      files.push_back(arg);
      continue;
    }
    if (i + 1 >= argc) throw std::invalid_argument(arg + " needs a value");
    // shoal-ann-bench refuses repeats too: the last one won here, silently (a user-eyes review).
    if (std::find(given.begin(), given.end(), arg) != given.end()) throw std::invalid_argument(arg + " is given twice");
    given.push_back(arg);
    const std::string v = argv[++i];
    if (arg == "--index")
      o.index = v;
    else if (arg == "--sharding")
      o.sharding = v;
    else if (arg == "--shards")
      o.shards = whole_number(arg, v, 1, 4096);
    else if (arg == "--shard-probe")
      o.shard_probe = whole_number(arg, v, 0, unbounded);
    else if (arg == "--ef")
      o.ef = whole_number(arg, v, 0, unbounded);
    else if (arg == "--nprobe")
      o.nprobe = whole_number(arg, v, 0, unbounded);
    else if (arg == "--threads")
      o.threads = whole_number(arg, v, 1, 1024);
    else if (arg == "--k")
      o.k = whole_number(arg, v, 1, 1 << 20);
    else if (arg == "--max-base")
      o.max_base = whole_number(arg, v, 0, unbounded);
    else if (arg == "--upsert-fraction")
      o.upsert_fraction = non_negative(arg, v);
    else if (arg == "--seconds")
      o.seconds = non_negative(arg, v);
    else
      throw std::invalid_argument("unknown option " + arg);
  }
  if (files.size() != 2) throw std::invalid_argument("usage: shoal-collection-bench BASE QUERY [options]");
  // A knob the shards never read was written into the CSV row as if it had been used (a user-eyes review).
  const auto reads = [&](const char* family, const char* option, std::size_t& knob) {
    if (o.index.find(family) != std::string::npos) return;
    if (std::find(given.begin(), given.end(), option) != given.end())
      throw std::invalid_argument(std::string(option) + " has no effect on " + o.index + " shards (read by " + family +
                                  ")");
    knob = 0;
  };
  reads("HNSW", "--ef", o.ef);
  reads("IVF", "--nprobe", o.nprobe);
  if (o.upsert_fraction > 1)
    throw std::invalid_argument("--upsert-fraction needs a number in [0, 1], got " + std::to_string(o.upsert_fraction));
  if (o.seconds == 0) throw std::invalid_argument("--seconds needs a number > 0");
  const shoal::sharding policy = shoal::parse_sharding(o.sharding);
  if (o.shard_probe > 0 && policy != shoal::sharding::semantic && policy != shoal::sharding::hybrid)
    throw std::invalid_argument("--shard-probe needs semantic or hybrid sharding (" + o.sharding +
                                " searches every shard)");
  // Hybrid routing visits groups, not shards: a larger value would show in the row as if it had been used.
  const bool hybrid = policy == shoal::sharding::hybrid;
  const std::size_t routes = hybrid ? shoal::examples::hybrid_groups(o.shards) : o.shards;
  if (o.shard_probe > routes)
    throw std::invalid_argument("--shard-probe " + std::to_string(o.shard_probe) + " is more than the " +
                                std::to_string(routes) + (hybrid ? " groups" : " shards") + " a query can visit");
  o.base = files[0];
  o.query = files[1];
  return o;
}

double percentile(std::vector<double>& v, double q) {
  if (v.empty()) return 0;
  const auto at = static_cast<std::size_t>(q * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(at), v.end());
  return v[at];
}

}  // namespace

int main(int argc, char** argv) try {
  const options o = parse(argc, argv);
  const shoal::matrix<float> base = shoal::io::read_vectors(o.base, o.max_base);
  const shoal::matrix<float> queries = shoal::io::read_vectors(o.query);
  if (base.rows == 0 || queries.rows == 0) throw std::invalid_argument("the base and the queries need a vector each");
  if (queries.dim != base.dim)
    throw std::invalid_argument("queries of dimension " + std::to_string(queries.dim) + ", base of dimension " +
                                std::to_string(base.dim));
  std::vector<shoal::vector_id> ids(base.rows);
  std::iota(ids.begin(), ids.end(), shoal::vector_id{0});
  const auto [low, high] = std::minmax_element(base.values.begin(), base.values.end());
  const float noise = 0.01f * (*high - *low);

  shoal::collection_options co;
  co.dim = base.dim;
  co.index = o.index;
  co.policy = shoal::parse_sharding(o.sharding);
  co.shards = o.shards;
  if (co.policy == shoal::sharding::hybrid) co.groups = shoal::examples::hybrid_groups(o.shards);
  if (co.policy == shoal::sharding::range)
    for (std::size_t s = 1; s < o.shards; ++s) co.range_bounds.push_back(base.rows * s / o.shards);
  const auto build_start = clock_type::now();
  shoal::collection c(co);
  c.train(base.view());
  c.add(base.view(), ids);
  const double build_s = std::chrono::duration<double>(clock_type::now() - build_start).count();

  std::atomic<bool> stop{false};
  std::vector<std::vector<double>> search_ms(o.threads), upsert_ms(o.threads);
  std::exception_ptr failure;  // the first client's error: the run stops and reports it
  std::mutex failure_mutex;
  std::vector<std::thread> clients;
  const auto started = clock_type::now();
  for (std::size_t t = 0; t < o.threads; ++t)
    clients.emplace_back([&, t] {
      try {
        shoal::splitmix64 rng(100 + t);
        std::vector<float> v(base.dim);
        shoal::neighbors out(1, o.k);
        const shoal::search_params params{.ef = o.ef, .nprobe = o.nprobe, .shard_probe = o.shard_probe};
        while (!stop.load(std::memory_order_relaxed)) {
          const auto start = clock_type::now();
          if (rng.uniform() < o.upsert_fraction) {
            const shoal::vector_id id = rng.below(base.rows);
            const float* src = base.row(rng.below(base.rows));
            for (std::size_t j = 0; j < base.dim; ++j) v[j] = src[j] + noise * (2 * rng.uniform() - 1);
            c.upsert({v.data(), 1, base.dim}, std::span<const shoal::vector_id>(&id, 1));
            upsert_ms[t].push_back(std::chrono::duration<double, std::milli>(clock_type::now() - start).count());
          } else {
            c.search(queries.view().slice(rng.below(queries.rows), 1), out.view(), params);
            search_ms[t].push_back(std::chrono::duration<double, std::milli>(clock_type::now() - start).count());
          }
        }
      } catch (...) {
        const std::lock_guard lock(failure_mutex);
        if (!failure) failure = std::current_exception();
        stop.store(true);
      }
    });
  const auto until = started + std::chrono::duration<double>(o.seconds);
  while (!stop.load() && clock_type::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  stop.store(true);
  for (std::thread& t : clients) t.join();
  const double measured_s = std::chrono::duration<double>(clock_type::now() - started).count();
  if (failure) std::rethrow_exception(failure);

  std::vector<double> searches, upserts;
  for (std::size_t t = 0; t < o.threads; ++t) {
    searches.insert(searches.end(), search_ms[t].begin(), search_ms[t].end());
    upserts.insert(upserts.end(), upsert_ms[t].begin(), upsert_ms[t].end());
  }
  std::printf(
      "index,shards,sharding,shard_probe,ef,threads,upsert_fraction,build_s,ops_per_s,searches,search_p50_ms,"
      "search_p99_ms,upserts,upsert_p50_ms,upsert_p99_ms,nprobe\n");
  // The spec is quoted: it holds commas ("IVF16,PQ4"), and never a quote.
  std::printf("\"%s\",%zu,%s,%zu,%zu,%zu,%g,%.3f,%.0f,%zu,%.3f,%.3f,%zu,%.3f,%.3f,%zu\n", o.index.c_str(), o.shards,
              o.sharding.c_str(), o.shard_probe, o.ef, o.threads, o.upsert_fraction, build_s,
              static_cast<double>(searches.size() + upserts.size()) / measured_s, searches.size(),
              percentile(searches, 0.5), percentile(searches, 0.99), upserts.size(), percentile(upserts, 0.5),
              percentile(upserts, 0.99), o.nprobe);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "shoal-collection-bench: %s\n", e.what());
  return 1;
}
