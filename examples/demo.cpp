// shoal-demo: build an index, search it, report recall and latency.
//
//   shoal-demo                                   seeded clustered data (20,000 x 256, 1,000 queries)
//   shoal-demo BASE QUERY [GT] [--metric l2|ip|cos] [--k K]
//                                                real vectors: .fvecs / .bvecs / .npy; GT: .ivecs / .npy
//
// The index is exact (Flat) for now; approximate indexes join the demo as they land.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "shoal/distance/distance.hpp"
#include "shoal/eval/eval.hpp"
#include "shoal/index/flat.hpp"
#include "shoal/io/vecs.hpp"
#include "shoal/version.hpp"

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

struct options {
  std::vector<std::string> files;
  shoal::metric metric = shoal::metric::l2;
  std::size_t k = 10;
};

options parse(int argc, char** argv) {
  options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if ((arg == "--metric" || arg == "--k") && i + 1 < argc) {
      const std::string value = argv[++i];
      if (arg == "--metric")
        opt.metric = shoal::parse_metric(value);
      else
        opt.k = std::stoul(value);
    } else if (arg == "-h" || arg == "--help") {
      std::puts("usage: shoal-demo [BASE QUERY [GT]] [--metric l2|ip|cos] [--k K]");
      std::exit(0);
    } else {
      opt.files.push_back(arg);
    }
  }
  if (opt.files.size() == 1 || opt.files.size() > 3)
    throw std::invalid_argument("give no files (generated data), or BASE QUERY [GT]");
  return opt;
}

}  // namespace

int main(int argc, char** argv) try {
  const options opt = parse(argc, argv);
  shoal::matrix<float> base, queries;
  std::optional<shoal::matrix<std::int32_t>> truth;
  if (opt.files.empty()) {
    // Base and queries drawn in one call so that they share cluster centres.
    constexpr std::size_t n = 20000, nq = 1000, dim = 256;
    const shoal::matrix<float> all = shoal::make_clustered(n + nq, dim, 64, 2026);
    base = shoal::matrix<float>(n, dim);
    queries = shoal::matrix<float>(nq, dim);
    std::copy_n(all.values.begin(), n * dim, base.values.begin());
    std::copy_n(all.values.begin() + static_cast<std::ptrdiff_t>(n * dim), nq * dim, queries.values.begin());
    std::printf("data: generated, %zu base + %zu queries, %zu-d, 64 clusters (seed 2026)\n", n, nq, dim);
  } else {
    base = shoal::io::read_vectors(opt.files[0]);
    queries = shoal::io::read_vectors(opt.files[1]);
    if (opt.files.size() == 3) truth = shoal::io::read_ids(opt.files[2]);
    std::printf("data: %s (%zu x %zu), %s (%zu queries)\n", opt.files[0].c_str(), base.rows, base.dim,
                opt.files[1].c_str(), queries.rows);
  }
  std::printf("shoal %s, kernels: %s, metric: %s, k = %zu\n", SHOAL_VERSION_STRING, shoal::simd_level_name(),
              shoal::metric_name(opt.metric), opt.k);

  auto start = clock_type::now();
  shoal::flat_index index(base.dim, opt.metric);
  std::vector<shoal::vector_id> ids(base.rows);
  std::iota(ids.begin(), ids.end(), shoal::vector_id{0});
  index.add(base.view(), ids);
  std::printf("index: Flat, %zu vectors, %.1f MiB, built in %.3f s\n", index.size(),
              static_cast<double>(index.memory_bytes()) / (1 << 20), seconds_since(start));

  // One query at a time: the latency a request sees.
  shoal::neighbors single(queries.rows, opt.k);
  std::vector<double> latency_ms(queries.rows);
  start = clock_type::now();
  for (std::size_t q = 0; q < queries.rows; ++q) {
    const auto t0 = clock_type::now();
    index.search(queries.view().slice(q, 1), single.view().slice(q, 1));
    latency_ms[q] = seconds_since(t0) * 1e3;
  }
  const double single_s = seconds_since(start);
  std::sort(latency_ms.begin(), latency_ms.end());

  // The whole set as one batch: the throughput of an offline job.
  start = clock_type::now();
  const shoal::neighbors batched = index.search(queries.view(), opt.k);
  const double batch_s = seconds_since(start);

  if (!truth) {
    start = clock_type::now();
    const shoal::neighbors exact = shoal::ground_truth(base.view(), queries.view(), opt.k, opt.metric);
    std::printf("ground truth: computed exactly in %.3f s\n", seconds_since(start));
    std::printf("recall@%zu: single %.4f, batched %.4f\n", opt.k, shoal::recall_at_k(single, exact, opt.k),
                shoal::recall_at_k(batched, exact, opt.k));
  } else {
    std::printf("recall@%zu: single %.4f, batched %.4f\n", opt.k, shoal::recall_at_k(single, truth->view(), opt.k),
                shoal::recall_at_k(batched, truth->view(), opt.k));
  }
  const auto pct = [&](double p) {
    return latency_ms[static_cast<std::size_t>(p * static_cast<double>(latency_ms.size() - 1))];
  };
  std::printf("single query: %.1f QPS, latency p50 %.3f ms, p99 %.3f ms\n",
              static_cast<double>(queries.rows) / single_s, pct(0.50), pct(0.99));
  std::printf("batched:      %.1f QPS (%zu queries in %.3f s)\n", static_cast<double>(queries.rows) / batch_s,
              queries.rows, batch_s);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "shoal-demo: %s\n", e.what());
  return 1;
}
