#include "shoal/cluster/kmeans.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
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
/// Centroids per `rank_filter` call of the coarse pass: short enough that the threshold it is handed
/// tightens often while the heap fills, long enough to amortise the call.
constexpr std::size_t filter_stretch = 64;
/// Points per task of the k-means++ distance update, and per kernel call within it (a stack buffer).
constexpr std::size_t seeding_block = 4096;
constexpr std::size_t seeding_chunk = 256;
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
  const double sum = detail::squared_norm(c, dim);
  if (sum <= 0.0) return;
  // Divided in double: for a row of norm below ~3e-39 the reciprocal overflows float (to inf).
  const double norm = std::sqrt(sum);
  for (std::size_t j = 0; j < dim; ++j) c[j] = static_cast<float>(c[j] / norm);
}

/// k-means++ seeding: each next centroid is a point drawn with probability ∝ its squared distance to
/// the nearest centroid so far. The running minima are updated in parallel (each point on its own), the
/// draw is sequential in point order, so the choice does not depend on the thread count.
void seed_plus_plus(matrix_view<const float> x, matrix<float>& centroids, splitmix64& rng) {
  const distance_kernels& kern = active_kernels();
  const std::size_t n = x.rows;
  const std::size_t dim = x.dim;
  const std::size_t blocks = (n + seeding_block - 1) / seeding_block;
  std::vector<float> nearest(n, std::numeric_limits<float>::infinity());
  // Per block of points, the sum of their squared distances: the draw finds its block from these, then
  // its point within the block, instead of two more passes over every point per centroid.
  std::vector<double> block_sums(blocks);
  std::size_t chosen = rng.below(n);
  for (std::size_t c = 0; c < centroids.rows; ++c) {
    copy_row(x.row(chosen), dim, centroids.row(c));
    if (c + 1 == centroids.rows) break;
    const float* centre = centroids.row(c);
    detail::parallel_for(blocks, [&](std::size_t b) {
      const std::size_t first = b * seeding_block;
      const std::size_t count = std::min(seeding_block, n - first);
      float d[seeding_chunk];
      double sum = 0.0;
      for (std::size_t i = 0; i < count; i += seeding_chunk) {
        const std::size_t rows = std::min(seeding_chunk, count - i);
        kern.l2sqr_one_to_many(centre, x.row(first + i), rows, dim, x.stride, d);
        for (std::size_t r = 0; r < rows; ++r) {
          float& near = nearest[first + i + r];
          near = std::min(near, d[r]);
          sum += near;
        }
      }
      block_sums[b] = sum;
    });
    double total = 0.0;
    for (const double s : block_sums) total += s;
    if (!(total > 0.0)) {  // every point coincides with a centroid: any point will do
      chosen = rng.below(n);
      continue;
    }
    const double target = uniform_double(rng) * total;
    double running = 0.0;
    chosen = n - 1;
    for (std::size_t b = 0; b < blocks; ++b) {
      if (running + block_sums[b] <= target && b + 1 < blocks) {
        running += block_sums[b];
        continue;
      }
      const std::size_t end = std::min(n, (b + 1) * seeding_block);
      for (std::size_t i = b * seeding_block; i < end; ++i) {
        running += nearest[i];
        if (running > target && nearest[i] > 0.0f) {
          chosen = i;
          break;
        }
      }
      break;
    }
  }
}

/// Empty cluster `empty` takes half of the cluster with the widest spread (`spread`: Σ ‖x − c‖² over its
/// points, around its updated centroid; ties to the smaller index) among those of at least two points: a
/// copy of its centroid, the two nudged apart in opposite directions by a seeded sign per component. A
/// cluster whose points all coincide has no spread and is never split — its twin could not take any of
/// them and would come back empty at every iteration (splitting the largest cluster did exactly that on
/// data with many duplicate points, such as PQ sub-spaces of fashion-mnist's blank border pixels: 207 of
/// 256 centroids ended empty). Nor is a cluster of one point (a twin made by an earlier split in the same
/// step can hold size 0 or 1 with half its parent's spread: splitting it divided by its size 0 and made
/// both centroids infinite, a review). Returns false, leaving `empty` empty, when no cluster qualifies
/// (fewer distinct points than centroids).
bool split_widest(matrix<float>& centroids, std::vector<std::size_t>& sizes, std::vector<double>& spread,
                  std::size_t empty, bool spherical, splitmix64& rng) {
  const std::size_t dim = centroids.dim;
  std::size_t widest = spread.size();
  for (std::size_t c = 0; c < spread.size(); ++c)
    if (sizes[c] >= 2 && spread[c] > 0.0 && (widest == spread.size() || spread[c] > spread[widest])) widest = c;
  if (widest == spread.size()) return false;
  float* from = centroids.row(widest);
  float* to = centroids.row(empty);
  // A relative nudge like FAISS's, plus a floor so that zero components (or a zero centroid) split too:
  // for unit (spherical) centroids a small fixed one; otherwise the cluster's own RMS spread per
  // component, as a fixed floor (1e-7) scattered both halves outside data of spread below 1e-10.
  double mean_abs = 0.0;
  for (std::size_t j = 0; j < dim; ++j) mean_abs += std::abs(from[j]);
  const auto floor = spherical
                         ? static_cast<float>(mean_abs / static_cast<double>(dim)) * 1e-3f + 1e-7f
                         : static_cast<float>(std::sqrt(spread[widest] / static_cast<double>(sizes[widest] * dim)));
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
  sizes[empty] = sizes[widest] / 2;
  sizes[widest] -= sizes[empty];
  spread[widest] *= 0.5;
  spread[empty] = spread[widest];
  return true;
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
/// this many (2^26 floats: 256 MiB, e.g. 65,536 points × 1,024), grouped bounds take one per (point,
/// group of centroids) instead, as many groups as fit.
constexpr std::size_t max_bound_entries = std::size_t{1} << 26;
/// Centroids per group that grouped bounds aim for at least: a block of points meets a group in one GEMM
/// tile, and each (point, centroid) of a tile costs some bookkeeping besides the GEMM's dim multiply-adds.
/// Narrow groups rule out more; wide ones amortise better where dot products are short. 2,048 / dim,
/// kept within [4, 16] (measured, 10 iterations: fashion-mnist 784-d k 2,048 groups of 4 12.7 s, of 16
/// 14.9 s; 128-d k 1,024 groups of 16 7.8-8.2 s, of 4 8.8 s; BENCHMARKS.md).
[[nodiscard]] std::size_t group_size(std::size_t dim) noexcept { return std::clamp<std::size_t>(2048 / dim, 4, 16); }
/// Fewer groups than this rule out too little: plain Lloyd steps instead.
constexpr std::size_t min_bound_groups = 8;
/// The automatic choice (session 14, AMD EPYC Zen 3, one thread, 10 iterations; BENCHMARKS.md "k-means
/// training against FAISS"). Elkan's bounds pay where a dot product is long: at 256 dimensions they win
/// (fashion-mnist columns 264-519, k 256: 0.89 s against 1.19 s of plain steps), at 128 a step's
/// bookkeeping per (point, centroid) costs what it saves or more (columns 328-455, k 256: 0.70 s against
/// 0.68 s; bigann10k k 100: 0.076-0.101 s against 0.062-0.067 s; a generated 60,000 × 128 set, k 1,024:
/// 2.41 s against 2.12 s, where groups of 16 took 1.79 s). So Elkan's from this dimension on, grouped
/// bounds below it.
constexpr std::size_t min_elkan_dim = 192;
/// Grouped bounds, automatic choice: at least this many groups (16 groups of 16 on the 128-d fashion-mnist
/// columns, k 256: 0.80-0.84 s against 0.69 s of plain steps; 64 of 16 on the generated set: above) ...
constexpr std::size_t min_auto_groups = 32;
/// ... of at most this many times `group_size(dim)` centroids. Where the memory budget forces wider groups
/// the bounds rule out almost nothing (a million 128-d points, k 4,096: 64 groups of 64 still computed
/// 99% of the block-group tiles, 156.5 s against 129.0 s of plain steps).
constexpr std::size_t max_auto_group_widening = 2;
/// Below this dimension a bounded iteration saves little: per (point, centroid) it still updates and
/// tests a bound, about what the GEMM spends on a 16-long dot product (PQ codebooks of 2-8 dimensions:
/// same times within noise).
constexpr std::size_t min_bound_dim = 16;
/// Points that meet a group's centroids in one GEMM tile in a grouped-bounds step.
constexpr std::size_t group_block = 128;
/// Blocks of points per task of a grouped-bounds step (one set of buffers for all of them).
constexpr std::size_t blocks_per_task = 16;
/// Lloyd iterations of the k-means that groups centroids for grouped bounds.
constexpr std::size_t grouping_iterations = 5;
/// Centroid rows per task when the bounds measure centroid-to-centroid distances.
constexpr std::size_t block_pairs = 64;

/// Lower and upper bounds on distances are widened by this relative slack, so that float rounding (of
/// the GEMM's ‖x‖² + ‖c‖² − 2⟨x, c⟩, of a summed ‖x − c‖², of the bounds' own updates) never makes a
/// bound claim more than the exact distance allows: about dim · 2⁻²² (the dot product's worst-case
/// relative error, doubled), and at least 10⁻⁵ for what 25+ iterations of updates add.
float bound_slack(std::size_t dim) noexcept { return std::max(1e-5f, static_cast<float>(dim) * 0x1.0p-22f); }

/// A lower bound on the distance whose square a GEMM computed as `approx_sq` from a sum of squared norms
/// `norms_sum`: its rounding error is below slack · norms_sum.
[[nodiscard]] float gemm_lower(float approx_sq, float norms_sum, float slack) noexcept {
  return std::sqrt(std::max(0.0f, approx_sq - slack * norms_sum)) * (1.0f - slack);
}
/// The matching upper bound.
[[nodiscard]] float gemm_upper(float approx_sq, float norms_sum, float slack) noexcept {
  return std::sqrt(std::max(0.0f, approx_sq + slack * norms_sum)) * (1.0f + slack);
}

/// How the centroids moved in the last update, for both kinds of bounds below: each centroid's shift, and
/// half the distance from every centroid to the nearest other centroid of every group (with one group
/// per centroid: to every other centroid) — from GEMMs over blocks of centroid rows, shrunk by their error
/// as the first step's bounds.
struct centroid_motion {
  centroid_motion(std::size_t centroids, std::size_t dims, std::vector<std::uint32_t> groups_of, std::size_t count)
      : k(centroids),
        dim(dims),
        groups(count),
        slack(bound_slack(dims)),
        group_of(std::move(groups_of)),
        half(centroids * count),
        nearest_half(centroids),
        shift(centroids),
        old(centroids * dims),
        norms(centroids) {}

  /// Keeps the centroids before an update, to measure how far each moves.
  void remember(const matrix<float>& centroids) {
    std::copy(centroids.values.begin(), centroids.values.end(), old.begin());
  }

  void moved(const matrix<float>& centroids) {
    const distance_kernels& kern = active_kernels();
    for (std::size_t j = 0; j < k; ++j)
      shift[j] = std::sqrt(kern.l2sqr(old.data() + j * dim, centroids.row(j), dim)) * (1.0f + slack);
    kern.squared_norms(centroids.values.data(), k, dim, dim, norms.data());
    detail::parallel_for((k + block_pairs - 1) / block_pairs, [&](std::size_t b) {
      const std::size_t first = b * block_pairs;
      const std::size_t rows = std::min(block_pairs, k - first);
      std::vector<float> ip(rows * k);
      kern.inner_product_many(centroids.row(first), rows, dim, centroids.values.data(), k, dim, dim, ip.data(), k);
      for (std::size_t r = 0; r < rows; ++r) {
        const std::size_t a = first + r;
        float* row = half.data() + a * groups;
        std::fill_n(row, groups, std::numeric_limits<float>::infinity());
        for (std::size_t j = 0; j < k; ++j) {
          if (j == a) continue;
          const float sum = norms[a] + norms[j];
          float& h = row[group_of[j]];
          h = std::min(h, 0.5f * gemm_lower(sum - 2.0f * ip[r * k + j], sum, slack));
        }
        nearest_half[a] = *std::min_element(row, row + groups);
      }
    });
  }

  std::size_t k;
  std::size_t dim;
  std::size_t groups;
  float slack;
  std::vector<std::uint32_t> group_of;  // per centroid: its group
  std::vector<float> half;              // k × groups: half of ‖c_a − c_j‖ for the nearest j ≠ a of each group
  std::vector<float> nearest_half;      // per centroid: the smallest of its row of `half`
  std::vector<float> shift;             // per centroid: how far the last update moved it, grown
  std::vector<float> old;               // the centroids before the last update
  std::vector<float> norms;             // ‖c‖² of the centroids after the last update
};

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
      : k_(k), dim_(dim), slack_(bound_slack(dim)), lower_(n * k), motion_(k, dim, identity(k), k) {}

  /// Rank scores of the first (GEMM) assignment → lower bounds, each shrunk by the GEMM's error.
  [[nodiscard]] float* scores() noexcept { return lower_.data(); }
  void start(std::span<const float> point_norms, std::span<const float> centroid_norms) {
    detail::parallel_for(point_norms.size(), [&](std::size_t i) {
      float* l = lower_.data() + i * k_;
      for (std::size_t j = 0; j < k_; ++j)
        l[j] = gemm_lower(point_norms[i] + l[j], point_norms[i] + centroid_norms[j], slack_);
    });
  }

  void remember(const matrix<float>& centroids) { motion_.remember(centroids); }
  void moved(const matrix<float>& centroids) { motion_.moved(centroids); }

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
        const bool settled = reach <= motion_.nearest_half[a];
        for (std::size_t j = 0; j < k_; ++j) {
          if (j == previous) {
            l[j] = std::sqrt(best2) * (1.0f - slack_);
            continue;
          }
          l[j] = std::max(0.0f, l[j] - motion_.shift[j]);
          if (settled || l[j] >= reach || motion_.half[a * k_ + j] >= reach) continue;
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
  std::vector<float> lower_;  // n × k lower bounds on ‖x − c‖
  centroid_motion motion_;

  [[nodiscard]] static std::vector<std::uint32_t> identity(std::size_t k) {
    std::vector<std::uint32_t> v(k);
    std::iota(v.begin(), v.end(), std::uint32_t{0});
    return v;
  }
};

/// Yinyang's grouped bounds (Ding et al. 2015, "Yinyang K-Means"), for when n × k bounds would not fit:
/// per training point one lower bound per group of nearby centroids (a short k-means over the initial
/// centroids), on the distance to every centroid of the group but the point's own; an update lowers a
/// group's bound by the largest shift among its members. Unlike Elkan's per-pair re-scoring, the
/// distances a step still needs come from GEMM tiles: points are taken in blocks of the same cluster
/// (sorted by label), and a block meets a group's centroids in one tile unless the bounds and the
/// centroid-to-group distances rule the group out for every one of its points. Every point of the block
/// then gets the tile's distances — exact bounds for the group, and its nearest member considered — so
/// a tile computes no more than a full GEMM step would for those pairs. The first step has no bounds
/// (all zero) and is one full GEMM step in tiles that also sets them. Labels are a full GEMM step's up
/// to float ties; blocks follow the label order, not the thread count.
class group_bounds {
 public:
  group_bounds(std::size_t n, const matrix<float>& centroids, std::size_t groups, std::uint64_t seed)
      : k_(centroids.rows),
        dim_(centroids.dim),
        groups_(groups),
        slack_(bound_slack(dim_)),
        lower_(n * groups, 0.0f),
        order_(n),
        starts_(groups + 1),
        members_(k_),
        position_(k_),
        grouped_(k_, dim_),
        grouped_norms_(k_),
        shrunk_norms_(k_),
        motion_(k_, dim_, group(centroids, groups, seed), groups),
        group_shift_(groups) {
    // Members of each group in centroid order (a counting sort); a block meets a group's rows at once.
    for (const std::uint32_t g : motion_.group_of) ++starts_[g + 1];
    std::partial_sum(starts_.begin(), starts_.end(), starts_.begin());
    std::vector<std::size_t> next(starts_.begin(), starts_.end() - 1);
    for (std::size_t j = 0; j < k_; ++j) members_[next[motion_.group_of[j]]++] = static_cast<std::uint32_t>(j);
    for (std::size_t m = 0; m < k_; ++m) position_[members_[m]] = m;
    for (std::size_t g = 0; g < groups_; ++g) largest_ = std::max(largest_, starts_[g + 1] - starts_[g]);
  }

  void remember(const matrix<float>& centroids) { motion_.remember(centroids); }
  void moved(const matrix<float>& centroids) {
    motion_.moved(centroids);
    std::fill(group_shift_.begin(), group_shift_.end(), 0.0f);
    for (std::size_t j = 0; j < k_; ++j)
      group_shift_[motion_.group_of[j]] = std::max(group_shift_[motion_.group_of[j]], motion_.shift[j]);
    moved_ = true;
  }

  /// One assignment step: `labels` (the previous ones on entry; any valid ones at the first step) and
  /// `distances` (‖x − c‖² to the centroid taken, from the pairwise kernel) for every row of `x`.
  void assign(matrix_view<const float> x, std::span<const float> point_norms, const matrix<float>& centroids,
              std::uint32_t* labels, float* distances) {
    const distance_kernels& kern = active_kernels();
    const std::size_t n = x.rows;
    for (std::size_t m = 0; m < k_; ++m) std::copy_n(centroids.row(members_[m]), dim_, grouped_.row(m));
    kern.squared_norms(grouped_.values.data(), k_, dim_, dim_, grouped_norms_.data());
    for (std::size_t m = 0; m < k_; ++m) shrunk_norms_[m] = grouped_norms_[m] * (1.0f - slack_);
    // Points by label (a counting sort, point order within a label): a block holds one or two clusters,
    // whose points need about the same groups.
    std::vector<std::size_t> first(k_ + 1, 0);
    for (std::size_t i = 0; i < n; ++i) ++first[labels[i] + 1];
    std::partial_sum(first.begin(), first.end(), first.begin());
    for (std::size_t i = 0; i < n; ++i) order_[first[labels[i]]++] = i;

    // Tasks of several blocks, each with its buffers: blocks are independent, so whichever task runs one
    // gives it the same result.
    const std::size_t blocks = (n + group_block - 1) / group_block;
    detail::parallel_for((blocks + blocks_per_task - 1) / blocks_per_task, [&](std::size_t t) {
      const std::size_t width = std::max(block_centroids, largest_);
      std::vector<float> block(group_block * dim_), panel(width * dim_), tile(group_block * width);
      std::vector<std::uint32_t> a(group_block), chunk;
      std::vector<float> best2(group_block), reach(group_block), a_low(group_block);
      std::vector<char> needed(groups_);
      for (std::size_t b = t * blocks_per_task; b < std::min(blocks, (t + 1) * blocks_per_task); ++b) {
        const std::size_t begin = b * group_block;
        const std::size_t rows = std::min(group_block, n - begin);
        std::fill(needed.begin(), needed.end(), char{0});
        for (std::size_t r = 0; r < rows; ++r) {
          const std::size_t i = order_[begin + r];
          std::copy_n(x.row(i), dim_, block.data() + r * dim_);
          a[r] = labels[i];
          best2[r] = kern.l2sqr(x.row(i), centroids.row(a[r]), dim_);
          reach[r] = std::sqrt(best2[r]) * (1.0f + slack_);
          a_low[r] = std::sqrt(best2[r]) * (1.0f - slack_);
          // Within half the distance to its nearest other centroid, a point keeps its centroid.
          const bool settled = moved_ && reach[r] <= motion_.nearest_half[a[r]];
          float* l = lower_.data() + i * groups_;
          const float* half = motion_.half.data() + a[r] * groups_;
          for (std::size_t g = 0; g < groups_; ++g) {
            if (moved_) l[g] = std::max(0.0f, l[g] - group_shift_[g]);
            needed[g] |= static_cast<char>(!settled && l[g] < reach[r] && (!moved_ || half[g] < reach[r]));
          }
        }
        // The groups needed, in chunks of up to block_centroids columns: their rows copied side by side meet
        // the block in one GEMM tile.
        for (std::size_t g = 0; g < groups_;) {
          chunk.clear();
          std::size_t cols = 0;
          for (; g < groups_; ++g) {
            const std::size_t size = starts_[g + 1] - starts_[g];
            if (needed[g] == 0) continue;
            if (cols + size > width) break;
            chunk.push_back(static_cast<std::uint32_t>(g));
            cols += size;
          }
          if (cols == 0) break;
          // Consecutive groups are consecutive rows of `grouped_` already (always so where every group is
          // needed, early on): the tile reads them in place; others are copied side by side.
          const float* rows_of = grouped_.row(starts_[chunk.front()]);
          if (chunk.back() - chunk.front() + 1 != chunk.size()) {
            std::size_t at = 0;
            for (const std::uint32_t h : chunk) {
              const std::size_t size = starts_[h + 1] - starts_[h];
              std::copy_n(grouped_.row(starts_[h]), size * dim_, panel.data() + at * dim_);
              at += size;
            }
            rows_of = panel.data();
          }
          kern.inner_product_many(block.data(), rows, dim_, rows_of, cols, dim_, dim_, tile.data(), cols);
          for (std::size_t r = 0; r < rows; ++r) {
            const std::size_t i = order_[begin + r];
            const float pn = point_norms[i];
            float* l = lower_.data() + i * groups_;
            const float* ip = tile.data() + r * cols;
            for (const std::uint32_t h : chunk) {
              const std::size_t m0 = starts_[h];
              const std::size_t size = starts_[h + 1] - m0;
              const float* cn = grouped_norms_.data() + m0;
              // One pass: a lower bound on the squared distance to every member but the point's own centroid
              // (at `own` when it is here). Only when it does not exceed the point's distance may a member
              // be nearer: then the nearest member is found as a plain GEMM step ranks them (‖c‖² − 2⟨x, c⟩,
              // the kernel's first smallest) and taken if nearer than the point's centroid.
              // (pn + cn) · (1 − slack) − 2 · ip, from the rank scores of the shrunk norms.
              const float shrink = 1.0f - slack_;
              const float* shrunk = shrunk_norms_.data() + m0;
              const auto own = [&] { return motion_.group_of[a[r]] == h ? position_[a[r]] - m0 : size; };
              // The smallest rank score over the members but `skip` (ranked by `norms`), and, when `at` is
              // given, its position.
              const auto smallest = [&](const float* norms, std::size_t skip, std::size_t* at) {
                float low = std::numeric_limits<float>::infinity(), tail = low;
                std::uint32_t head_at = 0, tail_at = 0;
                kern.rank_argmin(ip, norms, skip, &low, at != nullptr ? &head_at : nullptr);
                if (skip + 1 < size)
                  kern.rank_argmin(ip + skip + 1, norms + skip + 1, size - skip - 1, &tail,
                                   at != nullptr ? &tail_at : nullptr);
                if (at != nullptr) *at = tail < low ? skip + 1 + tail_at : head_at;
                return std::min(low, tail);
              };
              const auto lowest = [&](std::size_t skip) { return smallest(shrunk, skip, nullptr); };
              float e = pn * shrink + lowest(own());
              if (e <= best2[r]) {
                std::size_t q = 0;  // the nearest member by exact norms
                (void)smallest(cn, own(), &q);
                const std::uint32_t j = members_[m0 + q];
                const float sum = pn + cn[q];
                const float d2 = sum - 2.0f * ip[q];
                if (d2 < best2[r] || (d2 == best2[r] && j < a[r])) {
                  // The centroid given up is a plain member again: its group's bound must cover it.
                  const std::uint32_t given_up = motion_.group_of[a[r]];
                  if (given_up != h) l[given_up] = std::min(l[given_up], a_low[r]);
                  a[r] = j;
                  best2[r] = std::max(0.0f, d2);
                  reach[r] = gemm_upper(d2, sum, slack_);
                  a_low[r] = gemm_lower(d2, sum, slack_);
                  e = pn * shrink + lowest(own());
                }
              }
              l[h] = std::sqrt(std::max(0.0f, e)) * shrink;
              ip += size;
            }
          }
        }
        for (std::size_t r = 0; r < rows; ++r) {
          const std::size_t i = order_[begin + r];
          distances[i] = a[r] == labels[i] ? best2[r] : kern.l2sqr(x.row(i), centroids.row(a[r]), dim_);
          labels[i] = a[r];
        }
      }
    });
  }

 private:
  std::size_t k_;
  std::size_t dim_;
  std::size_t groups_;
  float slack_;
  std::vector<float> lower_;            // n × groups lower bounds on ‖x − c‖ over each group but x's own c
  std::vector<std::size_t> order_;      // the points by label
  std::vector<std::size_t> starts_;     // groups + 1: where each group's members start in `members_`
  std::vector<std::uint32_t> members_;  // centroids by group, in centroid order within one
  std::vector<std::size_t> position_;   // per centroid: its place in `members_`
  std::size_t largest_ = 0;             // members of the largest group
  matrix<float> grouped_;               // the centroids in `members_` order
  std::vector<float> grouped_norms_;    // and their ‖c‖²
  std::vector<float> shrunk_norms_;     // and those times 1 − slack, for the bounds
  centroid_motion motion_;
  std::vector<float> group_shift_;  // per group: the largest shift of its members
  bool moved_ = false;              // no update yet: no shifts, no centroid distances, bounds all zero

  /// Groups of nearby centroids: a short k-means over them, each centroid to its nearest group centre.
  [[nodiscard]] static std::vector<std::uint32_t> group(const matrix<float>& centroids, std::size_t groups,
                                                        std::uint64_t seed) {
    kmeans_params grouping;
    grouping.k = groups;
    grouping.iterations = grouping_iterations;
    grouping.seed = seed;
    grouping.max_points_per_centroid = 0;
    grouping.triangle_bounds = false;
    const kmeans_result centres = kmeans(centroids.view(), grouping);
    std::vector<float> norms(groups);
    active_kernels().squared_norms(centres.centroids.values.data(), groups, centroids.dim, centroids.dim, norms.data());
    std::vector<std::uint32_t> group_of(centroids.rows);
    std::vector<float> unused(centroids.rows);
    detail::assign_nearest(centroids.view(), centres.centroids.view(), norms.data(), metric::l2, 1, group_of.data(),
                           unused.data());
    return group_of;
  }
};

}  // namespace

namespace detail {
namespace {

/// Fewest centroids one task of a split assignment ranks (see `centroid_ranges`).
constexpr std::size_t min_range_centroids = 1024;

constexpr std::size_t ceil_div(std::size_t a, std::size_t b) noexcept { return (a + b - 1) / b; }

/// How many ranges of centroids `assign_nearest` cuts `nc` into for `blocks` point blocks on `threads`
/// threads. With fewer blocks than threads (a small batch: 64 queries are one block, so an IVF search of
/// 64 queries with 16,384 lists ran its coarse pass on one core of the 16 an H200's host had, 87 µs a
/// query against 8.7 at 4,096 queries) each block meets the centroids range by range in parallel tasks,
/// and the ranges' winners are merged per point. A range holds at least `min_range_centroids` and
/// `count` centroids, so that a task's work outweighs its merge, and starts on a multiple of the GEMM
/// tile, so the tiles, and so every score, are the same as without ranges: the results do not depend on
/// the thread count either way.
std::size_t centroid_ranges(std::size_t blocks, std::size_t threads, std::size_t nc, std::size_t count) {
  if (blocks == 0 || blocks >= threads) return 1;
  const std::size_t wanted = (threads + blocks - 1) / blocks;
  const std::size_t fit = nc / std::max(count, min_range_centroids);
  return std::max<std::size_t>(1, std::min(wanted, fit));
}

/// The running winners of one block of points against some of the centroids, in rank scores: a best per
/// point (count == 1) or a bounded heap per point. Both order by (score, centroid index).
struct block_winners {
  std::vector<float> best;
  std::vector<std::uint32_t> best_label;
  std::vector<topk_heap> heaps;
  block_winners(std::size_t rows, std::size_t count)
      : best(count == 1 ? rows : 0, std::numeric_limits<float>::infinity()),
        best_label(count == 1 ? rows : 0, 0),
        heaps(count == 1 ? 0 : rows, topk_heap(count)) {}
};

/// Ranks the `rows` points from `first` against centroids [c_begin, c_end) into `w`; with count == 1 and a
/// non-null `scores`, also writes each rank score.
void rank_range(const distance_kernels& kern, matrix_view<const float> points, std::size_t first, std::size_t rows,
                matrix_view<const float> centroids, const float* centroid_norms, bool l2, std::size_t count,
                std::size_t c_begin, std::size_t c_end, float* scores, block_winners& w) {
  const std::size_t nc = centroids.rows;
  const std::size_t tile_cols = std::min(block_centroids, nc);
  const matrix_view<const float> block = points.slice(first, rows);
  std::vector<float> tile(rows * tile_cols);
  std::vector<std::uint32_t> passed(count == 1 ? 0 : filter_stretch);
  std::vector<float> passed_scores(count == 1 ? 0 : filter_stretch);
  for (std::size_t c0 = c_begin; c0 < c_end; c0 += tile_cols) {
    const std::size_t cols = std::min(tile_cols, c_end - c0);
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
        // The row's nearest (first of the smallest) in SIMD; Elkan's first step also keeps every score.
        const float before = w.best[i];
        std::uint32_t at = 0;
        kern.rank_argmin(ip, l2 ? centroid_norms + c0 : nullptr, cols, &w.best[i], &at);
        if (w.best[i] < before) w.best_label[i] = static_cast<std::uint32_t>(c0 + at);
        if (scores != nullptr)
          for (std::size_t j = 0; j < cols; ++j)
            scores[(first + i) * nc + c0 + j] = rank_score(l2, l2 ? centroid_norms[c0 + j] : 0.0f, ip[j]);
      } else {
        // The scores at most the heap's threshold, filtered in SIMD a stretch at a time so that the
        // threshold tightens as the heap fills; NaN ranks last (+∞), so the heap still fills with
        // `count` entries for the caller. A scalar compare per centroid was 17% of a batched IVF4096
        // search of the 1M set (nprobe 16), more than the GEMM.
        topk_heap& heap = w.heaps[i];
        for (std::size_t j = 0; j < cols; j += filter_stretch) {
          const std::size_t len = std::min(filter_stretch, cols - j);
          const std::size_t kept = kern.rank_filter(ip + j, l2 ? centroid_norms + c0 + j : nullptr, len, heap.worst(),
                                                    passed.data(), passed_scores.data());
          for (std::size_t p = 0; p < kept; ++p) heap.push(passed_scores[p], c0 + j + passed[p]);
        }
      }
    }
  }
}

/// Writes the winners of the `rows` points from `first` as the metric's distances: ‖x‖² + (‖c‖² − 2⟨x,c⟩),
/// −⟨x,c⟩, or 1 − ⟨x,c⟩ (empties `w`'s heaps).
void write_winners(const distance_kernels& kern, matrix_view<const float> points, std::size_t first, std::size_t rows,
                   metric m, std::size_t count, block_winners& w, std::uint32_t* labels, float* distances) {
  const bool l2 = m == metric::l2;
  const matrix_view<const float> block = points.slice(first, rows);
  std::vector<float> point_norms(l2 ? rows : 0);
  if (l2) kern.squared_norms(block.data, rows, block.dim, block.stride, point_norms.data());
  const auto finish = [&](std::size_t i, float score) {
    if (l2) return std::max(0.0f, point_norms[i] + score);
    return m == metric::cosine ? 1.0f + score : score;
  };
  for (std::size_t i = 0; i < rows; ++i) {
    std::uint32_t* out_labels = labels + (first + i) * count;
    float* out_distances = distances + (first + i) * count;
    if (count == 1) {
      out_labels[0] = w.best_label[i];
      out_distances[0] = finish(i, w.best[i]);
      continue;
    }
    const std::vector<scored_id> sorted = w.heaps[i].take_sorted();
    for (std::size_t j = 0; j < count; ++j) {
      out_labels[j] = static_cast<std::uint32_t>(sorted[j].id);
      out_distances[j] = finish(i, sorted[j].distance);
    }
  }
}

}  // namespace

void assign_nearest(matrix_view<const float> points, matrix_view<const float> centroids, const float* centroid_norms,
                    metric m, std::size_t count, std::uint32_t* labels, float* distances, float* scores) {
  const distance_kernels& kern = active_kernels();
  const std::size_t n = points.rows;
  const std::size_t nc = centroids.rows;
  const bool l2 = m == metric::l2;
  const std::size_t blocks = (n + block_points - 1) / block_points;
  // Ranges of whole GEMM tiles: range r is [r · per_range, min((r + 1) · per_range, nc)). per_range is
  // nc / wanted rounded up, then up to whole tiles, so the ranges cover every centroid; rounding up may
  // leave fewer (non-empty) ranges than wanted.
  const std::size_t wanted = centroid_ranges(blocks, parallelism(), nc, count);
  const std::size_t tile_cols = std::min(block_centroids, nc);
  const std::size_t per_range = wanted == 1 ? nc : ceil_div(ceil_div(nc, wanted), tile_cols) * tile_cols;
  const std::size_t ranges = wanted == 1 ? 1 : ceil_div(nc, per_range);
  if (ranges == 1) {
    detail::parallel_for(blocks, [&](std::size_t b) {
      const std::size_t first = b * block_points;
      const std::size_t rows = std::min(block_points, n - first);
      block_winners w(rows, count);
      rank_range(kern, points, first, rows, centroids, centroid_norms, l2, count, 0, nc, scores, w);
      write_winners(kern, points, first, rows, m, count, w, labels, distances);
    });
    return;
  }
  std::vector<block_winners> parts;
  parts.reserve(blocks * ranges);
  for (std::size_t b = 0; b < blocks; ++b)
    for (std::size_t r = 0; r < ranges; ++r) parts.emplace_back(std::min(block_points, n - b * block_points), count);
  detail::parallel_for(blocks * ranges, [&](std::size_t t) {
    const std::size_t b = t / ranges, r = t % ranges;
    const std::size_t first = b * block_points;
    const std::size_t c_begin = r * per_range, c_end = std::min(c_begin + per_range, nc);
    rank_range(kern, points, first, std::min(block_points, n - first), centroids, centroid_norms, l2, count, c_begin,
               c_end, scores, parts[t]);
  });
  // Each block's ranges merged into its first, in range order: a later range's winner replaces an earlier
  // one only when strictly better, which keeps ties on the smaller index.
  detail::parallel_for(blocks, [&](std::size_t b) {
    const std::size_t first = b * block_points;
    const std::size_t rows = std::min(block_points, n - first);
    block_winners& into = parts[b * ranges];
    for (std::size_t r = 1; r < ranges; ++r) {
      block_winners& from = parts[b * ranges + r];
      for (std::size_t i = 0; i < rows; ++i) {
        if (count == 1) {
          if (from.best[i] < into.best[i]) {
            into.best[i] = from.best[i];
            into.best_label[i] = from.best_label[i];
          }
          continue;
        }
        for (const scored_id& c : from.heaps[i].take_sorted()) into.heaps[i].push(c.distance, c.id);
      }
    }
    write_winners(kern, points, first, rows, m, count, into, labels, distances);
  });
}

}  // namespace detail

centroid_assignment assign(matrix_view<const float> points, matrix_view<const float> centroids, metric m,
                           std::size_t count) {
  detail::check_metric(m, "assign");
  detail::check_dimension(centroids.dim, "assign");
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
  SHOAL_CHECK(params.init == kmeans_init::kmeans_plus_plus || params.init == kmeans_init::random,
              "kmeans: init = ", static_cast<int>(params.init), " is not a kmeans_init");
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

  // Plain k-means is translation-invariant, but its GEMM form ‖x‖² + ‖c‖² − 2⟨x, c⟩ cancels when the
  // points sit far from the origin (docs/ivf.md, "centred frame"): then it runs on the points minus
  // their mean, and adds the mean back to the centroids. Not for spherical k-means (directions). Only
  // when the squared norm of the mean exceeds `centring_ratio` times the points' mean squared distance
  // from it: below, the rounding (relative to ‖x‖²) is small against the distances between nearby
  // centroids, and a copy of the points is not worth it.
  constexpr double centring_ratio = 4.0;
  // Products this small underflow float (below its smallest normal value): every point would tie with
  // every centroid, and the result mean nothing. Points that all coincide (no spread) are fine: one
  // location, any centroid on it.
  const auto check_scale = [&](double sum_of_squares, const char* what) {
    const double mean_square = sum_of_squares / static_cast<double>(n * dim);
    SHOAL_CHECK(mean_square == 0.0 || mean_square >= kmeans_min_mean_square, "kmeans: the points ", what, " only ",
                std::sqrt(mean_square), " per component (RMS): their float products underflow; scale the data up");
  };
  if (params.spherical) {
    // Directions: ⟨x, c⟩ with unit centroids is of the order of the points' components.
    double squares = 0.0;
    for (std::size_t i = 0; i < n; ++i) squares += detail::squared_norm(x.row(i), dim);
    check_scale(squares, "measure");
  }
  std::vector<float> shift;
  if (!params.spherical) {
    std::vector<double> mean(dim, 0.0);
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < dim; ++j) mean[j] += x.row(i)[j];
    for (double& m : mean) m /= static_cast<double>(n);
    double offset = 0.0, spread = 0.0;
    for (const double m : mean) offset += m * m;
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < dim; ++j) {
        const double d = x.row(i)[j] - mean[j];
        spread += d * d;
      }
    check_scale(spread, "spread by");
    if (offset > centring_ratio * spread / static_cast<double>(n)) {
      if (!sample) {
        sample.emplace(n, dim);
        for (std::size_t i = 0; i < n; ++i) copy_row(x.row(i), dim, sample->row(i));
      }
      shift.assign(mean.begin(), mean.end());
      for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < dim; ++j) sample->row(i)[j] -= shift[j];
      x = sample->view();
    }
  }

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
    for (std::size_t c = 0; c < k; ++c) {
      normalize(centroids.row(c), dim);
      // A zero point has no direction: a centroid seeded from one stayed zero (which `spherical` promises
      // never to return) and kept the zero points' cluster. It takes the next non-zero point after a
      // random one instead.
      if (detail::squared_norm(centroids.row(c), dim) > 0.0) continue;
      const std::size_t start = rng.below(n);
      std::size_t step = 0;
      while (step < n && !(detail::squared_norm(x.row((start + step) % n), dim) > 0.0)) ++step;
      SHOAL_CHECK(step < n, "kmeans: every training point is zero, which has no direction for spherical k-means");
      copy_row(x.row((start + step) % n), dim, centroids.row(c));
      normalize(centroids.row(c), dim);
    }

  std::vector<float> point_norms(n);
  kern.squared_norms(x.data, n, dim, x.stride, point_norms.data());
  std::vector<float> centroid_norms(k);
  std::vector<std::uint32_t> labels(n);
  std::vector<float> distances(n);
  std::vector<std::size_t> sizes(k);
  std::vector<std::size_t> offsets(k + 1);
  std::vector<std::size_t> members(n);
  const metric rank_by = params.spherical ? metric::inner_product : metric::l2;
  result.objective.reserve(std::min<std::size_t>(params.iterations, 1024));  // a huge count must not throw here
  // A cluster's cap on points; n (no cap) without balance or when the cap would not bind.
  const double cap_points = std::ceil(params.balance * static_cast<double>(n) / static_cast<double>(k));
  const std::size_t cap =
      params.balance > 0 && cap_points < static_cast<double>(n) ? static_cast<std::size_t>(cap_points) : n;

  // Plain L2 Lloyd iterations run bounded: Elkan's bounds after a first GEMM step while n · k of them
  // fit, grouped bounds (every step) otherwise.
  std::optional<elkan_bounds> bounds;
  std::optional<group_bounds> grouped;
  std::size_t groups = std::min(params.bound_groups, k);
  if (params.bound_groups == 0) {
    groups = std::min(max_bound_entries / n, k / group_size(dim));
    if (dim >= min_elkan_dim && n * k <= max_bound_entries)
      groups = k;
    else if (groups < min_auto_groups || k > groups * group_size(dim) * max_auto_group_widening)
      groups = 0;
  }
  if (params.triangle_bounds && cap == n && !params.spherical && params.iterations > 1 && k > 1 &&
      dim >= min_bound_dim) {
    if (groups == k)
      bounds.emplace(n, k, dim);
    else if (groups >= min_bound_groups)
      grouped.emplace(n, centroids, groups, params.seed);
  }

  for (std::size_t it = 0; it < params.iterations; ++it) {
    kern.squared_norms(centroids.values.data(), k, dim, dim, centroid_norms.data());
    if (cap < n) {
      assign_balanced(x, centroids, centroid_norms.data(), rank_by, cap, labels.data(), distances.data());
    } else if (grouped) {
      grouped->assign(x, point_norms, centroids, labels.data(), distances.data());
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
    if (grouped) grouped->remember(centroids);
    detail::parallel_for(k, [&](std::size_t c) {
      if (sizes[c] == 0) return;
      std::vector<double> sum(dim, 0.0);
      for (std::size_t m = offsets[c]; m < offsets[c + 1]; ++m) {
        const float* row = x.row(members[m]);
        for (std::size_t j = 0; j < dim; ++j) sum[j] += row[j];
      }
      const double inv = 1.0 / static_cast<double>(sizes[c]);
      float* centroid = centroids.row(c);
      if (params.spherical) {
        // Points whose directions cancel (±e1, ±e2) have no mean direction: the centroid keeps its last
        // unit row rather than become zero, which `spherical` promises never to return.
        double length = 0.0;
        for (const double s : sum) length += s * s;
        if (!(length > 0.0)) return;
      }
      for (std::size_t j = 0; j < dim; ++j) centroid[j] = static_cast<float>(sum[j] * inv);
      if (params.spherical) normalize(centroid, dim);
    });
    if (std::find(sizes.begin(), sizes.end(), std::size_t{0}) != sizes.end()) {
      // Each cluster's spread around its updated centroid, to pick which to split. Spherical k-means
      // ranks by direction alone, so there the spread is each point's distance from the centroid's line,
      // ‖x‖² − ⟨x, ĉ⟩²: points that share one direction have none, whatever their norms (measured as
      // ‖x − ĉ‖², copies of one non-unit vector looked widest of all, and every repair split them).
      std::vector<double> spread(k, 0.0);
      detail::parallel_for(k, [&](std::size_t c) {
        const float* centroid = centroids.row(c);
        double norms = 0.0;
        for (std::size_t m = offsets[c]; m < offsets[c + 1]; ++m) {
          const float* row = x.row(members[m]);
          double along = 0.0;
          double norm2 = 0.0;
          for (std::size_t j = 0; j < dim; ++j) {
            const double v = row[j];
            if (params.spherical) {
              along += v * centroid[j];
              norm2 += v * v;
            } else {
              const double e = v - centroid[j];
              spread[c] += e * e;
            }
          }
          if (params.spherical) {
            spread[c] += std::max(0.0, norm2 - along * along);
            norms += norm2;
          }
        }
        // What is left of one shared direction is the float rounding of ĉ: about 1e-7 of ‖x‖² a point.
        if (params.spherical && spread[c] <= 1e-6 * norms) spread[c] = 0.0;
      });
      for (std::size_t c = 0; c < k; ++c)
        if (sizes[c] == 0 && split_widest(centroids, sizes, spread, c, params.spherical, rng))
          ++result.empty_cluster_repairs;
    }
    if (bounds && it + 1 < params.iterations) bounds->moved(centroids);
    if (grouped && it + 1 < params.iterations) grouped->moved(centroids);
  }
  if (!shift.empty())
    for (std::size_t c = 0; c < k; ++c)
      for (std::size_t j = 0; j < dim; ++j) centroids.row(c)[j] += shift[j];
  return result;
}

}  // namespace shoal
