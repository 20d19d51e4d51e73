#include "shoal/cluster/kmeans.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>
#include <span>

#include "cluster/assign.hpp"
#include "core/parallel.hpp"
#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "shoal/core/topk.hpp"
#include "shoal/distance/distance.hpp"
#include "shoal/eval/eval.hpp"

namespace shoal {
namespace {

/// GEMM tile of the assignment: 256 points meet up to 512 centroids at a time (a 512 KiB tile, as in the
/// flat index). Point blocks are fixed by index, never by thread count, so each point's distances come
/// out of the same GEMM shape whatever the arena — the root of k-means' thread-count independence.
constexpr std::size_t block_points = 256;
constexpr std::size_t block_centroids = 512;
/// Points per task of the k-means++ distance update.
constexpr std::size_t seeding_block = 4096;
/// Relative size of the nudge that separates a split centroid from its twin (FAISS uses 1/1024).
constexpr float split_epsilon = 1.0f / 1024.0f;

/// Uniform double in [0, 1) with 53 bits.
double uniform_double(splitmix64& rng) noexcept { return static_cast<double>(rng.next() >> 11) * 0x1.0p-53; }

/// The first `m` entries of a seeded Fisher–Yates shuffle of [0, n).
std::vector<std::size_t> draw_without_replacement(std::size_t n, std::size_t m, splitmix64& rng) {
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  for (std::size_t i = 0; i < m; ++i) std::swap(order[i], order[i + rng.below(n - i)]);
  order.resize(m);
  return order;
}

void copy_row(const float* from, std::size_t dim, float* to) noexcept { std::copy_n(from, dim, to); }

/// Scales `c` to unit norm; a zero row stays zero (it has no direction to keep).
void normalize(float* c, std::size_t dim) noexcept {
  double sum = 0.0;
  for (std::size_t j = 0; j < dim; ++j) sum += static_cast<double>(c[j]) * c[j];
  if (sum <= 0.0) return;
  const auto scale = static_cast<float>(1.0 / std::sqrt(sum));
  for (std::size_t j = 0; j < dim; ++j) c[j] *= scale;
}

/// k-means++ seeding: each next centroid is a point drawn with probability ∝ its squared distance to
/// the nearest centroid so far. The running minima are updated in parallel (each point on its own), the
/// draw is sequential in point order, so the choice does not depend on the thread count.
void seed_plus_plus(matrix_view<const float> x, matrix<float>& centroids, splitmix64& rng) {
  const distance_kernels& kern = active_kernels();
  const std::size_t n = x.rows;
  const std::size_t dim = x.dim;
  std::vector<float> nearest(n, std::numeric_limits<float>::infinity());
  std::size_t chosen = rng.below(n);
  for (std::size_t c = 0; c < centroids.rows; ++c) {
    copy_row(x.row(chosen), dim, centroids.row(c));
    if (c + 1 == centroids.rows) break;
    const float* centre = centroids.row(c);
    detail::parallel_for((n + seeding_block - 1) / seeding_block, [&](std::size_t b) {
      const std::size_t first = b * seeding_block;
      const std::size_t count = std::min(seeding_block, n - first);
      std::vector<float> d(count);
      kern.l2sqr_one_to_many(centre, x.row(first), count, dim, x.stride, d.data());
      for (std::size_t i = 0; i < count; ++i) nearest[first + i] = std::min(nearest[first + i], d[i]);
    });
    double total = 0.0;
    for (const float d : nearest) total += d;
    if (!(total > 0.0)) {  // every point coincides with a centroid: any point will do
      chosen = rng.below(n);
      continue;
    }
    const double target = uniform_double(rng) * total;
    double running = 0.0;
    chosen = n - 1;
    for (std::size_t i = 0; i < n; ++i) {
      running += nearest[i];
      if (running > target && nearest[i] > 0.0f) {
        chosen = i;
        break;
      }
    }
  }
}

/// Empty cluster `empty` takes half of the largest cluster (ties to the smaller index): a copy of its
/// centroid, the two nudged apart in opposite directions by a seeded sign per component.
void split_largest(matrix<float>& centroids, std::vector<std::size_t>& sizes, std::size_t empty, bool spherical,
                   splitmix64& rng) {
  const std::size_t dim = centroids.dim;
  const auto largest =
      static_cast<std::size_t>(std::distance(sizes.begin(), std::max_element(sizes.begin(), sizes.end())));
  float* from = centroids.row(largest);
  float* to = centroids.row(empty);
  // A relative nudge like FAISS's, plus a floor so that zero components (or a zero centroid) split too.
  double mean_abs = 0.0;
  for (std::size_t j = 0; j < dim; ++j) mean_abs += std::abs(from[j]);
  const float floor = static_cast<float>(mean_abs / static_cast<double>(dim)) * 1e-3f + 1e-7f;
  for (std::size_t j = 0; j < dim; ++j) {
    const float sign = (rng.next() & 1U) != 0U ? 1.0f : -1.0f;
    const float delta = sign * split_epsilon * (std::abs(from[j]) + floor);
    to[j] = from[j] + delta;
    from[j] -= delta;
  }
  if (spherical) {
    normalize(from, dim);
    normalize(to, dim);
  }
  sizes[empty] = sizes[largest] / 2;
  sizes[largest] -= sizes[empty];
}

/// Nearest centroids a balanced assignment considers per point before falling back to a full scan.
constexpr std::size_t balance_candidates = 32;

/// The balanced assignment step (`kmeans_params::balance`): each point's nearest candidates, then
/// (point, centroid) pairs handed out in order of distance (ties by point, then candidate rank) to
/// clusters that still have room; a point left over goes to the nearest centroid with room. Fills
/// `labels` and `distances` (to the centroid taken) as the plain step does. Sequential after the
/// parallel candidate search, so the result does not depend on the thread count.
void assign_balanced(matrix_view<const float> x, const matrix<float>& centroids, const float* centroid_norms,
                     metric rank_by, std::size_t cap, std::uint32_t* labels, float* distances) {
  const std::size_t n = x.rows;
  const std::size_t k = centroids.rows;
  const std::size_t count = std::min(k, balance_candidates);
  std::vector<std::uint32_t> cand(n * count);
  std::vector<float> cand_distance(n * count);
  detail::assign_nearest(x, centroids.view(), centroid_norms, rank_by, count, cand.data(), cand_distance.data());
  std::vector<std::size_t> order(n * count);
  std::iota(order.begin(), order.end(), std::size_t{0});
  // NaN never occurs here (inputs are checked finite), so the order is strict and total.
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return cand_distance[a] != cand_distance[b] ? cand_distance[a] < cand_distance[b] : a < b;
  });
  constexpr std::uint32_t unassigned = std::numeric_limits<std::uint32_t>::max();
  std::fill_n(labels, n, unassigned);
  std::vector<std::size_t> taken(k, 0);
  for (const std::size_t pair : order) {
    const std::size_t i = pair / count;
    const std::uint32_t c = cand[pair];
    if (labels[i] != unassigned || taken[c] >= cap) continue;
    labels[i] = c;
    distances[i] = cand_distance[pair];
    ++taken[c];
  }
  // Every candidate of these points was full (only when k > balance_candidates): the nearest with room,
  // scored as the assignment scores (‖x − c‖², or −⟨x, c⟩ when spherical). cap · k ≥ n: room exists.
  const distance_kernels& kern = active_kernels();
  for (std::size_t i = 0; i < n; ++i) {
    if (labels[i] != unassigned) continue;
    float best = std::numeric_limits<float>::infinity();
    std::uint32_t best_c = unassigned;
    for (std::size_t c = 0; c < k; ++c) {
      if (taken[c] >= cap) continue;
      const float d = rank_by == metric::l2 ? kern.l2sqr(x.row(i), centroids.row(c), x.dim)
                                            : -kern.inner_product(x.row(i), centroids.row(c), x.dim);
      if (d < best || best_c == unassigned) {
        best = d;
        best_c = static_cast<std::uint32_t>(c);
      }
    }
    labels[i] = best_c;
    distances[i] = best;
    ++taken[best_c];
  }
}

/// Elkan's bounds (k-means' bounded iterations) cost one float per (training point, centroid): above
/// this many, plain Lloyd iterations run instead (2^26 floats: 256 MiB, e.g. 65,536 points × 1,024).
constexpr std::size_t max_bound_entries = std::size_t{1} << 26;
/// Below this dimension a bounded iteration saves little: per (point, centroid) it still updates and
/// tests a bound, about what the GEMM spends on a 16-long dot product (PQ codebooks of 2-8 dimensions:
/// same times within noise).
constexpr std::size_t min_bound_dim = 16;

/// Lower and upper bounds on distances are widened by this relative slack, so that float rounding (of
/// the GEMM's ‖x‖² + ‖c‖² − 2⟨x, c⟩, of a summed ‖x − c‖², of the bounds' own updates) never makes a
/// bound claim more than the exact distance allows: about dim · 2⁻²² (the dot product's worst-case
/// relative error, doubled), and at least 10⁻⁵ for what 25+ iterations of updates add.
float bound_slack(std::size_t dim) noexcept { return std::max(1e-5f, static_cast<float>(dim) * 0x1.0p-22f); }

/// Elkan's accelerated assignment (Elkan 2003, "Using the triangle inequality to accelerate k-means").
/// Per training point it keeps a lower bound on its distance to every centroid (`lower`, n × k, Euclidean
/// not squared); after an update moves centroid j by δ_j, each bound to j drops by δ_j. A point is
/// then re-scored against centroid j only if both its bound to j and half the distance between its
/// centroid and j (`half`) are below its exact distance to its own centroid — every other centroid
/// provably lies farther. Same labels as a full Lloyd step, up to float ties (the kept distances come
/// from the pairwise kernel, exactly as `l2sqr`); per point independent, so thread-count independent.
class elkan_bounds {
 public:
  elkan_bounds(std::size_t n, std::size_t k, std::size_t dim)
      : k_(k),
        dim_(dim),
        slack_(bound_slack(dim)),
        lower_(n * k),
        half_(k * k),
        nearest_half_(k),
        shift_(k),
        old_(k * dim),
        norms_(k) {}

  /// Rank scores of the first (GEMM) assignment → lower bounds, each shrunk by the GEMM's error.
  [[nodiscard]] float* scores() noexcept { return lower_.data(); }
  void start(std::span<const float> point_norms, std::span<const float> centroid_norms) {
    detail::parallel_for(point_norms.size(), [&](std::size_t i) {
      float* l = lower_.data() + i * k_;
      for (std::size_t j = 0; j < k_; ++j) l[j] = gemm_lower(point_norms[i] + l[j], point_norms[i] + centroid_norms[j]);
    });
  }

  /// Keeps the centroids before an update, to measure how far each moves.
  void remember(const matrix<float>& centroids) {
    std::copy(centroids.values.begin(), centroids.values.end(), old_.begin());
  }

  /// After the update (and any repair): each centroid's shift, and half the distance between every two
  /// — from one k × k GEMM, shrunk by its error, as the first step's bounds.
  void moved(const matrix<float>& centroids) {
    const distance_kernels& kern = active_kernels();
    for (std::size_t j = 0; j < k_; ++j)
      shift_[j] = std::sqrt(kern.l2sqr(old_.data() + j * dim_, centroids.row(j), dim_)) * (1.0f + slack_);
    kern.squared_norms(centroids.values.data(), k_, dim_, dim_, norms_.data());
    kern.inner_product_many(centroids.values.data(), k_, dim_, centroids.values.data(), k_, dim_, dim_, half_.data(),
                            k_);
    detail::parallel_for(k_, [&](std::size_t a) {
      float* row = half_.data() + a * k_;
      float nearest = std::numeric_limits<float>::infinity();
      for (std::size_t j = 0; j < k_; ++j) {
        const float sum = norms_[a] + norms_[j];
        row[j] = j == a ? 0.0f : 0.5f * gemm_lower(sum - 2.0f * row[j], sum);
        if (j != a) nearest = std::min(nearest, row[j]);
      }
      nearest_half_[a] = nearest;
    });
  }

  /// One bounded assignment step: `labels` (the previous ones on entry) and `distances` (‖x − c‖² to
  /// the centroid taken) for every row of `x`. One pass over a point's bounds: each is lowered by its
  /// centroid's shift, then tested.
  void assign(matrix_view<const float> x, const matrix<float>& centroids, std::uint32_t* labels, float* distances) {
    const distance_kernels& kern = active_kernels();
    detail::parallel_for((x.rows + block_points - 1) / block_points, [&](std::size_t b) {
      const std::size_t end = std::min(x.rows, (b + 1) * block_points);
      for (std::size_t i = b * block_points; i < end; ++i) {
        float* l = lower_.data() + i * k_;
        const std::uint32_t previous = labels[i];
        std::uint32_t a = previous;
        float best2 = kern.l2sqr(x.row(i), centroids.row(a), dim_);
        float reach = std::sqrt(best2) * (1.0f + slack_);  // an upper bound on the exact distance to a
        // Within half the distance to its nearest other centroid, a point keeps its centroid.
        const bool settled = reach <= nearest_half_[a];
        for (std::size_t j = 0; j < k_; ++j) {
          if (j == previous) {
            l[j] = std::sqrt(best2) * (1.0f - slack_);
            continue;
          }
          l[j] = std::max(0.0f, l[j] - shift_[j]);
          if (settled || l[j] >= reach || half_[a * k_ + j] >= reach) continue;
          const float d2 = kern.l2sqr(x.row(i), centroids.row(j), dim_);
          l[j] = std::sqrt(d2) * (1.0f - slack_);
          if (d2 < best2 || (d2 == best2 && j < a)) {
            a = static_cast<std::uint32_t>(j);
            best2 = d2;
            reach = std::sqrt(d2) * (1.0f + slack_);
          }
        }
        labels[i] = a;
        distances[i] = best2;
      }
    });
  }

 private:
  std::size_t k_;
  std::size_t dim_;
  float slack_;
  std::vector<float> lower_;         // n × k lower bounds on ‖x − c‖
  std::vector<float> half_;          // k × k: half of ‖c_a − c_j‖, shrunk
  std::vector<float> nearest_half_;  // per centroid: the smallest of its row of `half_`
  std::vector<float> shift_;         // per centroid: how far the last update moved it, grown
  std::vector<float> old_;           // the centroids before the last update
  std::vector<float> norms_;         // ‖c‖² of the centroids after the last update

  /// A lower bound on the distance whose square a GEMM computed as `approx_sq` from a sum of squared
  /// norms `norms_sum`: its rounding error is below slack · norms_sum.
  [[nodiscard]] float gemm_lower(float approx_sq, float norms_sum) const noexcept {
    return std::sqrt(std::max(0.0f, approx_sq - slack_ * norms_sum)) * (1.0f - slack_);
  }
};

}  // namespace

namespace detail {

void assign_nearest(matrix_view<const float> points, matrix_view<const float> centroids, const float* centroid_norms,
                    metric m, std::size_t count, std::uint32_t* labels, float* distances, float* scores) {
  const distance_kernels& kern = active_kernels();
  const std::size_t n = points.rows;
  const std::size_t nc = centroids.rows;
  const std::size_t tile_cols = std::min(block_centroids, nc);
  const bool l2 = m == metric::l2;
  detail::parallel_for((n + block_points - 1) / block_points, [&](std::size_t b) {
    const std::size_t first = b * block_points;
    const std::size_t rows = std::min(block_points, n - first);
    const matrix_view<const float> block = points.slice(first, rows);
    std::vector<float> tile(rows * tile_cols);
    // count == 1 (k-means, IVF add) keeps a running best per point; larger counts (the IVF coarse pass)
    // keep a bounded heap per point. Both order by (score, centroid index).
    std::vector<float> best(count == 1 ? rows : 0, std::numeric_limits<float>::infinity());
    std::vector<std::uint32_t> best_label(count == 1 ? rows : 0, 0);
    std::vector<topk_heap> heaps(count == 1 ? 0 : rows, topk_heap(count));
    for (std::size_t c0 = 0; c0 < nc; c0 += tile_cols) {
      const std::size_t cols = std::min(tile_cols, nc - c0);
      if (rows >= gemm_min_points) {
        kern.inner_product_many(block.data, rows, block.stride, centroids.row(c0), cols, centroids.stride, points.dim,
                                tile.data(), tile_cols);
      } else {
        for (std::size_t i = 0; i < rows; ++i)
          kern.inner_product_one_to_many(block.row(i), centroids.row(c0), cols, points.dim, centroids.stride,
                                         tile.data() + i * tile_cols);
      }
      for (std::size_t i = 0; i < rows; ++i) {
        const float* ip = tile.data() + i * tile_cols;
        if (count == 1) {
          float* all = scores == nullptr ? nullptr : scores + (first + i) * nc + c0;
          for (std::size_t j = 0; j < cols; ++j) {
            const float score = rank_score(l2, l2 ? centroid_norms[c0 + j] : 0.0f, ip[j]);
            if (all != nullptr) all[j] = score;
            if (score < best[i]) {
              best[i] = score;
              best_label[i] = static_cast<std::uint32_t>(c0 + j);
            }
          }
        } else {
          topk_heap& heap = heaps[i];
          for (std::size_t j = 0; j < cols; ++j) {
            // NaN ranks last (rank_score), so the heap still fills with `count` entries for the caller.
            const float score = rank_score(l2, l2 ? centroid_norms[c0 + j] : 0.0f, ip[j]);
            if (score <= heap.worst()) heap.push(score, c0 + j);
          }
        }
      }
    }
    std::vector<float> point_norms(l2 ? rows : 0);
    if (l2) kern.squared_norms(block.data, rows, block.dim, block.stride, point_norms.data());
    // Scores become the metric's distances: ‖x‖² + (‖c‖² − 2⟨x,c⟩), −⟨x,c⟩, or 1 − ⟨x,c⟩.
    const auto finish = [&](std::size_t i, float score) {
      if (l2) return std::max(0.0f, point_norms[i] + score);
      return m == metric::cosine ? 1.0f + score : score;
    };
    for (std::size_t i = 0; i < rows; ++i) {
      std::uint32_t* out_labels = labels + (first + i) * count;
      float* out_distances = distances + (first + i) * count;
      if (count == 1) {
        out_labels[0] = best_label[i];
        out_distances[0] = finish(i, best[i]);
        continue;
      }
      const std::vector<scored_id> sorted = heaps[i].take_sorted();
      for (std::size_t j = 0; j < count; ++j) {
        out_labels[j] = static_cast<std::uint32_t>(sorted[j].id);
        out_distances[j] = finish(i, sorted[j].distance);
      }
    }
  });
}

}  // namespace detail

centroid_assignment assign(matrix_view<const float> points, matrix_view<const float> centroids, metric m,
                           std::size_t count) {
  SHOAL_CHECK(centroids.rows > 0, "assign: no centroids");
  SHOAL_CHECK(count > 0 && count <= centroids.rows, "assign: count ", count, " must be in [1, ", centroids.rows, "]");
  SHOAL_CHECK(centroids.rows <= std::numeric_limits<std::uint32_t>::max(), "assign: too many centroids");
  detail::check_vectors(centroids, centroids.dim, "assign: centroid");
  detail::check_vectors(points, centroids.dim, "assign: point");
  std::vector<float> norms(centroids.rows);
  active_kernels().squared_norms(centroids.data, centroids.rows, centroids.dim, centroids.stride, norms.data());
  centroid_assignment out;
  out.count = count;
  out.labels.resize(points.rows * count);
  out.distances.resize(points.rows * count);
  detail::assign_nearest(points, centroids, norms.data(), m, count, out.labels.data(), out.distances.data());
  return out;
}

kmeans_result kmeans(matrix_view<const float> points, const kmeans_params& params) {
  SHOAL_CHECK(params.k > 0, "kmeans: k must be at least 1");
  SHOAL_CHECK(params.iterations > 0, "kmeans: iterations must be at least 1");
  SHOAL_CHECK(points.dim > 0, "kmeans: dimension must be at least 1");
  SHOAL_CHECK(params.k <= std::numeric_limits<std::uint32_t>::max(), "kmeans: k = ", params.k, " is too large");
  detail::check_vectors(points, points.dim, "kmeans: point");
  SHOAL_CHECK(params.k <= points.rows, "kmeans: k = ", params.k, " exceeds the ", points.rows, " training points");
  SHOAL_CHECK(params.balance == 0 || params.balance >= 1, "kmeans: balance must be 0 (off) or at least 1, got ",
              params.balance);

  const distance_kernels& kern = active_kernels();
  const std::size_t dim = points.dim;
  const std::size_t k = params.k;
  splitmix64 rng(params.seed);

  // Subsample: a uniform draw without replacement, kept in point order for locality.
  std::optional<matrix<float>> sample;
  matrix_view<const float> x = points;
  if (params.max_points_per_centroid > 0 && points.rows / params.max_points_per_centroid >= k &&
      points.rows > k * params.max_points_per_centroid) {
    std::vector<std::size_t> pick = draw_without_replacement(points.rows, k * params.max_points_per_centroid, rng);
    std::sort(pick.begin(), pick.end());
    sample.emplace(pick.size(), dim);
    for (std::size_t i = 0; i < pick.size(); ++i) copy_row(points.row(pick[i]), dim, sample->row(i));
    x = sample->view();
  }
  const std::size_t n = x.rows;

  kmeans_result result;
  result.training_points = n;
  result.centroids = matrix<float>(k, dim);
  matrix<float>& centroids = result.centroids;
  if (params.init == kmeans_init::random) {
    const std::vector<std::size_t> pick = draw_without_replacement(n, k, rng);
    for (std::size_t c = 0; c < k; ++c) copy_row(x.row(pick[c]), dim, centroids.row(c));
  } else {
    seed_plus_plus(x, centroids, rng);
  }
  if (params.spherical)
    for (std::size_t c = 0; c < k; ++c) normalize(centroids.row(c), dim);

  std::vector<float> point_norms(n);
  kern.squared_norms(x.data, n, dim, x.stride, point_norms.data());
  std::vector<float> centroid_norms(k);
  std::vector<std::uint32_t> labels(n);
  std::vector<float> distances(n);
  std::vector<std::size_t> sizes(k);
  std::vector<std::size_t> offsets(k + 1);
  std::vector<std::size_t> members(n);
  const metric rank_by = params.spherical ? metric::inner_product : metric::l2;
  result.objective.reserve(params.iterations);
  // A cluster's cap on points; n (no cap) without balance or when the cap would not bind.
  const double cap_points = std::ceil(params.balance * static_cast<double>(n) / static_cast<double>(k));
  const std::size_t cap =
      params.balance > 0 && cap_points < static_cast<double>(n) ? static_cast<std::size_t>(cap_points) : n;

  // Plain L2 Lloyd iterations after the first run bounded (see elkan_bounds) where the bounds fit.
  std::optional<elkan_bounds> bounds;
  if (params.triangle_bounds && cap == n && !params.spherical && params.iterations > 1 && k > 1 &&
      dim >= min_bound_dim && n * k <= max_bound_entries)
    bounds.emplace(n, k, dim);

  for (std::size_t it = 0; it < params.iterations; ++it) {
    kern.squared_norms(centroids.values.data(), k, dim, dim, centroid_norms.data());
    if (cap < n) {
      assign_balanced(x, centroids, centroid_norms.data(), rank_by, cap, labels.data(), distances.data());
    } else if (bounds && it > 0) {
      bounds->assign(x, centroids, labels.data(), distances.data());
    } else {
      detail::assign_nearest(x, centroids.view(), centroid_norms.data(), rank_by, 1, labels.data(), distances.data(),
                             bounds ? bounds->scores() : nullptr);
      if (bounds) bounds->start(point_norms, centroid_norms);
    }

    // Objective and cluster sizes, summed in point order.
    double objective = 0.0;
    std::fill(sizes.begin(), sizes.end(), std::size_t{0});
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint32_t l = labels[i];
      ++sizes[l];
      // Spherical ranking reported −⟨x,c⟩; turn it into ‖x − c‖² = ‖x‖² + ‖c‖² − 2⟨x,c⟩ as well.
      objective += params.spherical
                       ? std::max(0.0, static_cast<double>(point_norms[i]) + centroid_norms[l] + 2.0 * distances[i])
                       : static_cast<double>(distances[i]);
    }
    result.objective.push_back(objective);
    result.cluster_sizes = sizes;

    // Members of each cluster in point order (a counting sort), then each mean in parallel over clusters.
    offsets[0] = 0;
    for (std::size_t c = 0; c < k; ++c) offsets[c + 1] = offsets[c] + sizes[c];
    {
      std::vector<std::size_t> next(offsets.begin(), offsets.end() - 1);
      for (std::size_t i = 0; i < n; ++i) members[next[labels[i]]++] = i;
    }
    if (bounds) bounds->remember(centroids);
    detail::parallel_for(k, [&](std::size_t c) {
      if (sizes[c] == 0) return;
      std::vector<double> sum(dim, 0.0);
      for (std::size_t m = offsets[c]; m < offsets[c + 1]; ++m) {
        const float* row = x.row(members[m]);
        for (std::size_t j = 0; j < dim; ++j) sum[j] += row[j];
      }
      const double inv = 1.0 / static_cast<double>(sizes[c]);
      float* centroid = centroids.row(c);
      for (std::size_t j = 0; j < dim; ++j) centroid[j] = static_cast<float>(sum[j] * inv);
      if (params.spherical) normalize(centroid, dim);
    });
    for (std::size_t c = 0; c < k; ++c) {
      if (sizes[c] != 0) continue;
      split_largest(centroids, sizes, c, params.spherical, rng);
      ++result.empty_cluster_repairs;
    }
    if (bounds && it + 1 < params.iterations) bounds->moved(centroids);
  }
  return result;
}

}  // namespace shoal
