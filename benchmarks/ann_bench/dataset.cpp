#include "dataset.hpp"

#include <algorithm>
#include <chrono>
#include <iomanip>
#include <iostream>
#include <limits>

#include "shoal/eval/eval.hpp"
#include "shoal/io/vecs.hpp"

namespace shoal::bench {
namespace {

std::string dataset_name(const std::filesystem::path& base) {
  std::string name = base.stem().string();
  constexpr std::string_view suffix = "_base";
  if (name.size() > suffix.size() && name.ends_with(suffix)) name.resize(name.size() - suffix.size());
  return name;
}

/// Exact ground truth as int32 ids, timed and announced on stderr.
matrix<std::int32_t> computed_truth(const dataset& d, const options& o) {
  std::cerr << "shoal-ann-bench: no --gt given, computing exact ground truth (flat, k=" << o.k << ") ... "
            << std::flush;
  const auto start = std::chrono::steady_clock::now();
  matrix<std::int32_t> truth = ground_truth_ids(ground_truth(d.base, d.queries, o.k, o.metric));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cerr << "done in " << std::fixed << std::setprecision(3) << seconds << " s\n" << std::defaultfloat;
  return truth;
}

void check_truth(const dataset& d, const options& o) {
  const matrix<std::int32_t>& t = d.truth;
  const std::string file = o.gt.string();
  if (t.rows != d.queries.rows)
    throw config_error("ground truth " + file + " has " + std::to_string(t.rows) + " rows for " +
                       std::to_string(d.queries.rows) + " queries");
  if (t.dim < o.k)
    throw config_error("ground truth " + file + " has " + std::to_string(t.dim) +
                       " neighbours per query, fewer than --k " + std::to_string(o.k));
  // Only the first k columns count towards recall@k; ids beyond the base (e.g. after --max-base) would
  // silently lower it. -1 is FAISS's padding where a query has fewer than k neighbours: a missing one,
  // which recall_at_k counts as a neighbour no result finds.
  // Refused here, before any index is built, rather than by recall_at_k after the first one is.
  try {
    check_ground_truth(t.view(), o.k, d.base.rows, "ground truth " + file);
  } catch (const shoal::error& e) {
    const bool outside = e.message().find(" base vectors") != std::string_view::npos;
    throw config_error(std::string(e.message()) +
                       (outside && o.max_base != 0 ? " (--max-base cuts the base: omit --gt to compute it)" : ""));
  }
  try {
    const std::string warning =
        check_ground_truth_metric(d.base, d.queries, t.view(), o.k, o.metric, "ground truth " + file);
    if (!warning.empty()) std::cerr << "shoal-ann-bench: warning: " << warning << '\n';
  } catch (const shoal::error& e) {
    throw config_error(std::string(e.message()) + " (check --metric)");
  }
}

}  // namespace

dataset load_vectors(const options& o) {
  dataset d;
  d.name = dataset_name(o.base);
  d.base = io::read_vectors(o.base, o.max_base);
  d.queries = io::read_vectors(o.query, o.max_query);
  if (d.base.rows == 0) throw config_error("the base file " + o.base.string() + " has no rows");
  if (d.queries.rows == 0) throw config_error("the query file " + o.query.string() + " has no rows");
  if (d.base.dim != d.queries.dim)
    throw config_error("base vectors have dimension " + std::to_string(d.base.dim) + ", queries " +
                       std::to_string(d.queries.dim));
  if (o.k > d.base.rows)
    throw config_error("--k " + std::to_string(o.k) + " exceeds the " + std::to_string(d.base.rows) + " base vectors");
  if (d.base.rows > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()))
    throw config_error("more base vectors than 32-bit ground-truth ids can name");
  return d;
}

void load_truth(dataset& d, const options& o) {
  if (o.gt.empty()) {
    d.truth = computed_truth(d, o);
  } else {
    d.truth = io::read_ids(o.gt, o.max_query);
    check_truth(d, o);
  }
}

}  // namespace shoal::bench
