#include "shoal/eval/eval.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>
#include <vector>

#include <tbb/task_arena.h>

#include "core/parallel.hpp"
#include "shoal/core/error.hpp"
#include "shoal/core/topk.hpp"
#include "shoal/distance/distance.hpp"
#include "shoal/index/flat.hpp"

namespace shoal {
namespace {

/// Σ over queries of |first k of `got` ∩ first k of `want`| / k, averaged: a set intersection, so an id
/// that a result repeats counts once (an index returning one true id k times scores 1/k, not 1).
template <class Want>
double mean_overlap(const neighbors& result, std::size_t rows, std::size_t k, Want want) {
  if (rows == 0) return 1.0;
  double total = 0.0;
  std::vector<vector_id> truth(k);
  std::vector<vector_id> got(k);
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t j = 0; j < k; ++j) truth[j] = want(r, j);
    std::sort(truth.begin(), truth.end());
    // A true neighbour listed twice is a damaged ground truth: it would cap even exact search below 1.
    const auto twice =
        std::adjacent_find(truth.begin(), truth.end(), [](vector_id a, vector_id b) { return a == b && a != no_id; });
    SHOAL_CHECK(twice == truth.end(), "recall_at_k: ground-truth row ", r, " lists the id ",
                twice == truth.end() ? 0 : *twice, " more than once in its first ", k);
    std::copy_n(result.row_ids(r).begin(), k, got.begin());
    std::sort(got.begin(), got.end());
    std::size_t hits = 0;
    for (auto it = got.begin(); it != got.end(); it = std::upper_bound(it, got.end(), *it))
      if (*it != no_id && std::binary_search(truth.begin(), truth.end(), *it)) ++hits;
    total += static_cast<double>(hits) / static_cast<double>(k);
  }
  return total / static_cast<double>(rows);
}

void check_recall_args(const neighbors& result, std::size_t truth_rows, std::size_t truth_k, std::size_t k) {
  SHOAL_CHECK(k > 0, "recall_at_k: k must be at least 1");
  SHOAL_CHECK(k <= result.k(), "recall_at_k: k = ", k, " exceeds the ", result.k(), " results per query");
  SHOAL_CHECK(k <= truth_k, "recall_at_k: k = ", k, " exceeds the ", truth_k, " ground-truth ids per query");
  SHOAL_CHECK(truth_rows == result.rows(), "recall_at_k: ", result.rows(), " result rows but ", truth_rows,
              " ground-truth rows");
}

}  // namespace

void check_ground_truth(matrix_view<const std::int32_t> truth, std::size_t k, std::size_t base_rows,
                        std::string_view what) {
  std::vector<std::int32_t> ids;
  for (std::size_t r = 0; r < truth.rows; ++r) {
    const std::int32_t* row = truth.row(r);
    ids.assign(row, row + std::min(k, truth.dim));
    for (const std::int32_t id : ids) {
      SHOAL_CHECK(id >= -1, what, ": row ", r, " holds the id ", id,
                  " (ids are base row numbers, or -1 for a missing neighbour)");
      SHOAL_CHECK(id < 0 || static_cast<std::size_t>(id) < base_rows, what, ": row ", r, " holds the id ", id,
                  ", outside the ", base_rows, " base vectors");
    }
    std::sort(ids.begin(), ids.end());
    const auto twice =
        std::adjacent_find(ids.begin(), ids.end(), [](std::int32_t a, std::int32_t b) { return a == b && a >= 0; });
    SHOAL_CHECK(twice == ids.end(), what, ": row ", r, " lists the id ", twice == ids.end() ? 0 : *twice,
                " more than once in its first ", k);
  }
}

double recall_at_k(const neighbors& result, matrix_view<const std::int32_t> truth, std::size_t k) {
  check_recall_args(result, truth.rows, truth.dim, k);
  SHOAL_CHECK(truth.stride >= truth.dim, "recall_at_k: ground-truth row stride ", truth.stride, " is smaller than its ",
              truth.dim, " ids per row");
  SHOAL_CHECK(truth.rows == 0 || truth.data != nullptr, "recall_at_k: ", truth.rows, " ground-truth rows but no data");
  return mean_overlap(result, truth.rows, k, [&](std::size_t r, std::size_t j) {
    const std::int32_t id = truth.row(r)[j];
    return id < 0 ? no_id : static_cast<vector_id>(id);
  });
}

double recall_at_k(const neighbors& result, const neighbors& truth, std::size_t k) {
  check_recall_args(result, truth.rows(), truth.k(), k);
  return mean_overlap(result, truth.rows(), k, [&](std::size_t r, std::size_t j) { return truth.id(r, j); });
}

neighbors ground_truth(matrix_view<const float> base, matrix_view<const float> queries, std::size_t k, metric m) {
  flat_index index(base.dim, m);
  std::vector<vector_id> ids(base.rows);
  std::iota(ids.begin(), ids.end(), vector_id{0});
  index.add(base, ids);
  return index.search(queries, k);
}

namespace {

/// The best and the k-th smallest distance of a query to the base.
struct nearest_bounds {
  float best;
  float kth;
};

/// Per row of `queries`: its best and k-th smallest `m`-distance over `base`'s rows, scored by the
/// pairwise kernel (as flat search scores them: the GEMM form's cancellation would blur near-ties), the
/// base scanned in blocks that stay in cache across a share of the queries; nothing when a distance is
/// NaN (NaN values).
std::optional<std::vector<nearest_bounds>> nearest(matrix_view<const float> base, matrix_view<const float> queries,
                                                   std::size_t k, metric m) {
  std::vector<nearest_bounds> out(queries.rows);
  std::atomic<bool> undefined{false};
  const std::size_t parts = std::clamp<std::size_t>(static_cast<std::size_t>(tbb::this_task_arena::max_concurrency()),
                                                    1, std::max<std::size_t>(queries.rows, 1));
  detail::parallel_for(parts, [&](std::size_t part) {
    const std::size_t begin = queries.rows * part / parts, end = queries.rows * (part + 1) / parts;
    std::vector<topk_heap> heaps(end - begin, topk_heap(k));
    constexpr std::size_t block = 64;
    for (std::size_t b0 = 0; b0 < base.rows && !undefined.load(std::memory_order_relaxed); b0 += block)
      for (std::size_t q = begin; q < end; ++q)
        for (std::size_t b = b0; b < std::min(base.rows, b0 + block); ++b) {
          const float d = distance(m, queries.row(q), base.row(b), base.dim);
          if (std::isnan(d))  // kept out of the heap, whose order NaN breaks
            undefined.store(true, std::memory_order_relaxed);
          else
            heaps[q - begin].push(d, b);
        }
    for (std::size_t q = begin; q < end; ++q) {
      const std::span<const scored_id> kept = heaps[q - begin].sort();
      if (!kept.empty()) out[q] = {kept.front().distance, kept.back().distance};
    }
  });
  if (undefined.load()) return std::nullopt;
  return out;
}

}  // namespace

std::string check_ground_truth_metric(matrix_view<const float> base, matrix_view<const float> queries,
                                      matrix_view<const std::int32_t> truth, std::size_t k, metric m,
                                      std::string_view what, std::size_t sample) {
  // The reads below trust these (recall_at_k and the flat index checked them for the first version).
  SHOAL_CHECK_CODE(queries.dim == base.dim, errc::dimension_mismatch, what, ": queries have dimension ", queries.dim,
                   ", the base ", base.dim);
  SHOAL_CHECK(k <= truth.dim, what, ": k = ", k, " exceeds its ", truth.dim, " ids per row");
  SHOAL_CHECK(truth.stride >= truth.dim && queries.stride >= queries.dim && base.stride >= base.dim, what,
              ": a row stride is smaller than its row");
  const std::size_t rows = std::min({sample, queries.rows, truth.rows});
  if (rows == 0 || k == 0 || base.rows == 0) return {};
  SHOAL_CHECK(queries.data != nullptr && truth.data != nullptr && base.data != nullptr, what, ": no data");
  const matrix_view<const float> first{queries.data, rows, queries.dim, queries.stride};
  const auto listed_ids = static_cast<double>(rows * k);
  // The share of listed ids that fit `under`; nothing when a distance is NaN.
  const auto fit = [&](metric under) -> std::optional<double> {
    const std::optional<std::vector<nearest_bounds>> bounds = nearest(base, first, std::min(k, base.rows), under);
    if (!bounds) return std::nullopt;
    std::size_t fitting = 0;
    for (std::size_t q = 0; q < rows; ++q) {
      const nearest_bounds& b = (*bounds)[q];
      const float* query = first.row(q);
      const float qq = inner_product(query, query, base.dim);
      const std::int32_t* row = truth.row(q);
      for (std::size_t j = 0; j < k; ++j) {
        if (row[j] < 0) continue;
        const float* x = base.row(static_cast<std::size_t>(row[j]));
        // Rounding on the scale another tool's arithmetic works at: ‖q‖² + ‖x‖² for l2 (the GEMM form
        // FAISS's BLAS path uses; near-duplicates' own distances are far smaller), ‖q‖‖x‖ for inner
        // product, 1 for cosine's 1 − cos (steps of 6e-8 however close the pair). A review found l2
        // files refused on unit vectors when l2 alone took the distances' own scale.
        const float xx = inner_product(x, x, base.dim);
        const float scale = std::max({std::abs(b.best), std::abs(b.kth),
                                      under == metric::l2              ? qq + xx
                                      : under == metric::inner_product ? std::sqrt(qq * xx)
                                                                       : 1.0f});
        if (distance(under, query, x, base.dim) <= b.kth + 1e-5f * scale) ++fitting;
      }
    }
    return static_cast<double>(fitting) / listed_ids;
  };
  constexpr double fits = 0.999, warn_below = 0.99, margin = 0.005;
  const std::optional<double> asked = fit(m);
  if (!asked || *asked >= fits) return {};
  for (const metric other : {metric::l2, metric::inner_product, metric::cosine}) {
    if (other == m) continue;
    const std::optional<double> share = fit(other);
    if (!share) continue;
    const bool clearly = *share - *asked >= margin && (*share - *asked) * listed_ids >= 2;
    SHOAL_CHECK(*share < fits || !clearly, what, " fits the metric ", metric_name(other), ", not ", metric_name(m),
                ": of the neighbours it lists for its first ", rows, " queries, ", *share,
                " are exact neighbours under ", metric_name(other), ", ", *asked, " under ", metric_name(m));
  }
  if (*asked >= warn_below) return {};
  return detail::str(what, ": only ", *asked, " of the neighbours it lists for its first ", rows,
                     " queries are exact neighbours under ", metric_name(m),
                     ": was it made over other base vectors, or padded?");
}

matrix<std::int32_t> ground_truth_ids(const neighbors& n) {
  matrix<std::int32_t> ids(n.rows(), n.k());
  std::transform(n.ids().begin(), n.ids().end(), ids.values.begin(), [](vector_id id) {
    if (id == no_id) return std::int32_t{-1};
    SHOAL_CHECK(id <= static_cast<vector_id>(std::numeric_limits<std::int32_t>::max()), "ground_truth_ids: id ", id,
                " does not fit the 32 bits of a ground-truth id");
    return static_cast<std::int32_t>(id);
  });
  return ids;
}

float splitmix64::normal() noexcept {
  // Box–Muller; u1 in (0, 1] keeps the logarithm finite.
  const float u1 = 1.0f - uniform();
  const float u2 = uniform();
  return std::sqrt(-2.0f * std::log(u1)) * std::cos(6.2831853071795864769f * u2);
}

matrix<float> make_clustered(std::size_t rows, std::size_t dim, std::size_t clusters, std::uint64_t seed,
                             float spread) {
  SHOAL_CHECK(clusters > 0, "make_clustered: clusters must be at least 1");
  SHOAL_CHECK(std::isfinite(spread), "make_clustered: spread must be finite, got ", spread);
  splitmix64 rng(seed);
  matrix<float> centres(clusters, dim);
  for (float& v : centres.values) v = rng.normal();
  matrix<float> out(rows, dim);
  for (std::size_t i = 0; i < rows; ++i) {
    const float* c = centres.row(rng.below(clusters));
    for (std::size_t j = 0; j < dim; ++j) out.row(i)[j] = c[j] + spread * rng.normal();
  }
  return out;
}

matrix<float> make_uniform(std::size_t rows, std::size_t dim, std::uint64_t seed) {
  splitmix64 rng(seed);
  matrix<float> out(rows, dim);
  for (float& v : out.values) v = 2.0f * rng.uniform() - 1.0f;
  return out;
}

}  // namespace shoal
