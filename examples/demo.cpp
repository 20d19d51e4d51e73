// shoal-demo: build indexes over one data set, search them, report recall, throughput and latency.
//
//   shoal-demo                                   seeded clustered data (20,000 x 256, 1,000 queries)
//   shoal-demo BASE QUERY [GT] [--metric l2|ip|cos] [--k K]
//                                                real vectors: .fvecs / .bvecs / .npy; GT: .ivecs / .npy
//   [--index SPEC]...                            factory specs (shoal/index/factory.hpp); default: Flat,
//                                                HNSW32 and IVF<√n>,PQ<dim/2>x4fs,RFlat
//   [--ef N] [--nprobe N] [--refine N]           search knobs: HNSW ef (64), IVF lists probed (nlist / 8,
//                                                at least 8), re-rank depth of a refinement (10)
//
// Each index is searched one query at a time (the latency a request sees) and with all queries in one
// batch (the throughput of an offline job), against exact ground truth (computed when not given).

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <limits>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "args.hpp"
#include "shoal/distance/distance.hpp"
#include "shoal/eval/eval.hpp"
#include "shoal/index/factory.hpp"
#include "shoal/io/vecs.hpp"
#include "shoal/version.hpp"

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

/// Queries searched one call each for the latency columns: an exact scan of a large query set one query
/// at a time would take most of the demo's run.
constexpr std::size_t single_queries = 1000;

struct options {
  std::vector<std::string> files;
  std::vector<std::string> specs;
  shoal::metric metric = shoal::metric::l2;
  std::size_t k = 10;
  std::size_t ef = 64;
  std::size_t nprobe = 0;  // 0: from the index's nlist
  std::size_t refine = 10;
};

/// A whole positive number, or an error naming the option.
std::size_t count(const std::string& option, const std::string& value) {
  return shoal::examples::whole_number(option, value, 1, std::numeric_limits<std::size_t>::max());
}

options parse(int argc, char** argv) {
  options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool valued = arg == "--metric" || arg == "--k" || arg == "--index" || arg == "--ef" || arg == "--nprobe" ||
                        arg == "--refine";
    if (valued && i + 1 < argc) {
      const std::string value = argv[++i];
      if (arg == "--metric")
        opt.metric = shoal::parse_metric(value);
      else if (arg == "--index")
        opt.specs.push_back(value);
      else
        (arg == "--k"        ? opt.k
         : arg == "--ef"     ? opt.ef
         : arg == "--nprobe" ? opt.nprobe
                             : opt.refine) = count(arg, value);
    } else if (arg == "-h" || arg == "--help") {
      std::puts(
          "usage: shoal-demo [BASE QUERY [GT]] [--metric l2|ip|cos] [--k K] [--index SPEC]... [--ef N] [--nprobe N] "
          "[--refine N]");
      std::exit(0);
    } else if (valued || arg.starts_with("--")) {
      throw std::invalid_argument("unknown option or missing value: " + arg);
    } else {
      opt.files.push_back(arg);
    }
  }
  if (opt.files.size() == 1 || opt.files.size() > 3)
    throw std::invalid_argument("give no files (generated data), or BASE QUERY [GT]");
  return opt;
}

/// The default line-up: exact, a graph, and compressed lists re-ranked from the full vectors.
std::vector<std::string> default_specs(std::size_t n, std::size_t dim) {
  const auto nlist = std::clamp<std::size_t>(static_cast<std::size_t>(std::sqrt(static_cast<double>(n))), 1, 4096);
  const std::size_t m = dim % 2 == 0 ? dim / 2 : dim;  // two dimensions per 4-bit code
  return {"Flat", "HNSW32", "IVF" + std::to_string(nlist) + ",PQ" + std::to_string(m) + "x4fs,RFlat"};
}

/// Search knobs for `index`: ef for graphs, nprobe for IVF (from its nlist unless given), a re-rank
/// depth where the index keeps full vectors to re-rank from.
shoal::search_params params_for(const shoal::any_index& index, const options& opt) {
  shoal::search_params p;
  p.ef = opt.ef;
  const std::string d = index.description();
  if (const auto at = d.find("IVF"); at != std::string::npos) {
    const std::size_t nlist = std::stoul(d.substr(at + 3));
    p.nprobe = opt.nprobe > 0 ? opt.nprobe : std::max<std::size_t>(8, nlist / 8);
  }
  if (d.find("Refine(") != std::string::npos) p.refine_factor = opt.refine;
  return p;
}

std::string describe(const shoal::search_params& p, const std::string& description) {
  std::string out;
  if (description.find("HNSW") != std::string::npos) out += "ef " + std::to_string(p.ef);
  if (p.nprobe > 0) out += (out.empty() ? "" : ", ") + std::string("nprobe ") + std::to_string(p.nprobe);
  if (p.refine_factor > 0) out += (out.empty() ? "" : ", ") + std::string("refine ") + std::to_string(p.refine_factor);
  return out.empty() ? "-" : out;
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
    if (queries.rows > 0 && queries.dim != base.dim)  // named by file, not by the first search's message
      throw std::invalid_argument(opt.files[0] + " holds vectors of dimension " + std::to_string(base.dim) + ", " +
                                  opt.files[1] + " queries of dimension " + std::to_string(queries.dim));
  }
  if (queries.rows == 0)  // recall and latency percentiles of no queries mean nothing
    throw std::invalid_argument(opt.files[1] + ": no query vectors");
  // Recall@k needs k true neighbours: with fewer base vectors even exact search would score below 1.
  if (opt.k > base.rows)
    throw std::invalid_argument("--k " + std::to_string(opt.k) + " exceeds the " + std::to_string(base.rows) +
                                " base vectors");
  if (truth && (truth->dim < opt.k || truth->rows != queries.rows))  // found before any index is built
    throw std::invalid_argument(opt.files[2] + ": " + std::to_string(truth->rows) + " rows of " +
                                std::to_string(truth->dim) + " ids, recall@" + std::to_string(opt.k) + " of " +
                                std::to_string(queries.rows) + " queries needs " + std::to_string(queries.rows) +
                                " rows of at least " + std::to_string(opt.k));
  // Ids past the base would score every index 0, and an id listed twice is refused by recall_at_k only
  // once the first index has been built (a user-eyes review).
  // So would ground truth made under another metric, plausibly (exact search scored 0.972).
  if (truth) {
    shoal::check_ground_truth(truth->view(), opt.k, base.rows, opt.files[2]);
    const std::string warning =
        shoal::check_ground_truth_metric(base.view(), queries.view(), truth->view(), opt.k, opt.metric, opt.files[2]);
    if (!warning.empty()) std::printf("warning: %s\n", warning.c_str());
  }
  // Every spec checked before the ground truth is computed and the table begins (a bad one was reported
  // only after both; a user-eyes review): an empty index is cheap. One that cannot train on so few base
  // vectors is refused here when asked for, and left out of the default line-up (a few vectors ended the
  // run at IVF-PQ's training, after the other rows).
  std::vector<std::string> specs;
  for (const std::string& spec : opt.specs.empty() ? default_specs(base.rows, base.dim) : opt.specs) {
    const std::size_t needs = shoal::make_index(spec, base.dim, opt.metric).min_training_rows();
    if (needs <= base.rows)
      specs.push_back(spec);
    else if (opt.specs.empty())
      std::printf("left out: %s, which trains on at least %zu vectors\n", spec.c_str(), needs);
    else
      throw std::invalid_argument(spec + " trains on at least " + std::to_string(needs) + " vectors; the base holds " +
                                  std::to_string(base.rows));
  }
  std::printf("shoal %s, kernels: %s, metric: %s, k = %zu\n", SHOAL_VERSION_STRING, shoal::simd_level_name(),
              shoal::metric_name(opt.metric), opt.k);

  auto start = clock_type::now();
  const shoal::neighbors exact =
      truth ? shoal::neighbors() : shoal::ground_truth(base.view(), queries.view(), opt.k, opt.metric);
  if (!truth) std::printf("ground truth: computed exactly in %.3f s\n", seconds_since(start));
  const auto recall = [&](const shoal::neighbors& got) {
    return truth ? shoal::recall_at_k(got, truth->view(), opt.k) : shoal::recall_at_k(got, exact, opt.k);
  };
  std::vector<shoal::vector_id> ids(base.rows);
  std::iota(ids.begin(), ids.end(), shoal::vector_id{0});

  std::printf("\n%-30s %-22s %8s %9s %9s %11s %11s %8s %8s\n", "index", "search", "build s", "MiB", "recall@k",
              "batch QPS", "single QPS", "p50 ms", "p99 ms");
  const std::size_t singles = std::min(queries.rows, single_queries);
  for (const std::string& spec : specs) {
    start = clock_type::now();
    shoal::any_index index = shoal::make_index(spec, base.dim, opt.metric);
    if (!index.is_trained()) index.train(base.view());
    index.add(base.view(), ids);
    const double build_s = seconds_since(start);
    const shoal::search_params params = params_for(index, opt);

    // The whole set as one batch: the throughput of an offline job.
    start = clock_type::now();
    const shoal::neighbors batched = index.search(queries.view(), opt.k, params);
    const double batch_s = seconds_since(start);

    // One query at a time (the first `singles`): the latency a request sees. Each answer is the query's
    // row of the batch.
    shoal::neighbors single(singles, opt.k);
    std::vector<double> latency_ms(singles);
    start = clock_type::now();
    for (std::size_t q = 0; q < singles; ++q) {
      const auto t0 = clock_type::now();
      index.search(queries.view().slice(q, 1), single.view().slice(q, 1), params);
      latency_ms[q] = seconds_since(t0) * 1e3;
    }
    const double single_s = seconds_since(start);
    std::sort(latency_ms.begin(), latency_ms.end());
    const auto pct = [&](double p) {
      return latency_ms[static_cast<std::size_t>(p * static_cast<double>(latency_ms.size() - 1))];
    };
    std::size_t differ = 0;
    for (std::size_t q = 0; q < singles; ++q)
      differ += std::equal(single.row_ids(q).begin(), single.row_ids(q).end(), batched.row_ids(q).begin()) ? 0 : 1;

    std::printf("%-30s %-22s %8.2f %9.1f %9.4f %11.0f %11.0f %8.3f %8.3f\n", index.description().c_str(),
                describe(params, index.description()).c_str(), build_s,
                static_cast<double>(index.memory_bytes()) / (1 << 20), recall(batched),
                static_cast<double>(queries.rows) / batch_s, static_cast<double>(singles) / single_s, pct(0.50),
                pct(0.99));
    if (differ > 0) std::printf("  %zu single-query answers differ from their rows of the batch\n", differ);
  }
  std::printf("\nbatch: all %zu queries in one call; single: the first %zu, one call each\n", queries.rows, singles);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "shoal-demo: %s\n", e.what());
  return 1;
}
