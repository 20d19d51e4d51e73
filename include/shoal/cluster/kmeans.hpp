#pragma once
/// \file
/// k-means clustering (Lloyd's algorithm) and nearest-centroid assignment: the coarse quantizer of the
/// IVF indexes and the codebook trainer of the product quantizers.

#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "shoal/core/types.hpp"

namespace shoal {

/// How the first centroids are chosen.
enum class kmeans_init {
  kmeans_plus_plus,  ///< D² sampling (Arthur & Vassilvitskii): better starts, costs one extra pass per centroid
  random,            ///< k distinct training points drawn uniformly (what FAISS does)
};

/// `kmeans` refuses points whose mean square per component (of the deviations from their mean; of the
/// points themselves for spherical k-means) is below this and not 0: their float distances and
/// products underflow, every point would tie with every centroid.
inline constexpr double kmeans_min_mean_square = static_cast<double>(std::numeric_limits<float>::min()) * 1e4;

/// Settings of one k-means run.
struct kmeans_params {
  /// Number of centroids, 1 ≤ k ≤ number of (subsampled) training points.
  std::size_t k = 0;
  /// Lloyd iterations (assignment + update), at least 1.
  std::size_t iterations = 25;
  /// Seeds subsampling, initialisation and empty-cluster repair: same seed and data → same centroids,
  /// whatever the number of threads.
  std::uint64_t seed = 1234;
  kmeans_init init = kmeans_init::kmeans_plus_plus;
  /// Training uses at most `k * max_points_per_centroid` points, drawn uniformly without replacement
  /// (FAISS's default, 256, loses nothing measurable); 0 uses every point.
  std::size_t max_points_per_centroid = 256;
  /// Spherical k-means for inner-product / cosine data: points are assigned by largest ⟨x, c⟩ and every
  /// centroid is scaled to unit norm after each update.
  bool spherical = false;
  /// Balanced k-means: when > 0 (it must then be ≥ 1), no cluster takes more than
  /// ⌈balance · n / k⌉ of the n training points at an assignment step. Points are handed out greedily
  /// in order of their distance to each of their nearest centroids (up to 32 of them, nearest first);
  /// a point whose candidates are all full goes to the nearest centroid with room. The centroids then
  /// drift towards a partition of about equal sizes, at some cost in the objective, which is no longer
  /// guaranteed to fall at every iteration. Used by the collection's semantic router, whose shards
  /// should hold similar numbers of vectors; 0 (the default) is plain Lloyd.
  double balance = 0;
  /// Triangle-inequality bounds that spare most of each assignment step's distances once the centroids
  /// settle: each point keeps a lower bound on its distance to every group of centroids, lowered by how
  /// far the group's members moved, and only groups those bounds (and half the distance between
  /// centroids) cannot rule out are scored. Two kinds, by `bound_groups`:
  /// - one group per centroid: Elkan's bounds (Elkan 2003) after a first GEMM step, re-scoring single
  ///   (point, centroid) pairs with the pairwise kernel (fashion-mnist, k 256, 10 iterations: 3.5 s →
  ///   1.5 s);
  /// - fewer groups of nearby centroids: Yinyang's grouped bounds (Ding et al. 2015), computing what a
  ///   step still needs in GEMM tiles of a block of same-cluster points × a group (a 262,144 × 128
  ///   sample, k 1,024: 10 iterations 12.3 s → 7.8 s, 25 iterations 30.2 s → 11.1 s; BENCHMARKS.md).
  /// Same assignments as full GEMM steps up to float ties. Costs one float per (training point, group);
  /// used only for plain L2 k-means (not spherical, not balanced) at dim ≥ 16 (below, the bookkeeping
  /// costs about what it saves); elsewhere every iteration is a full GEMM step. false: always full steps.
  bool triangle_bounds = true;
  /// Centroid groups of those bounds: 0 (automatic) gives one per centroid at dim ≥ 192 while
  /// n · k ≤ 2²⁶ (256 MiB of bounds); else groups of 4-16 centroids (wider at lower dim), at most
  /// ⌊2²⁶ / n⌋ of them, and no bounds (plain steps) when that leaves fewer than 32 groups or groups more
  /// than twice as wide (measured where each kind pays: src/cluster/kmeans.cpp); any other value asks
  /// for that many groups whatever the memory (at most k, which gives Elkan's; fewer than 8 groups of
  /// several centroids give none).
  std::size_t bound_groups = 0;
};

/// Outcome of `kmeans`.
struct kmeans_result {
  /// k x dim centroids (unit rows when spherical).
  matrix<float> centroids;
  /// Σ ‖x − c(x)‖² over the training points at the assignment step of each iteration, in double
  /// precision; non-increasing except right after an empty-cluster repair (and under `balance`).
  std::vector<double> objective;
  /// Number of points actually trained on (after subsampling).
  std::size_t training_points = 0;
  /// How many times an empty cluster was repaired by splitting the widest one, over all iterations.
  std::size_t empty_cluster_repairs = 0;
  /// Training points per cluster at the last assignment step (before any repair).
  std::vector<std::size_t> cluster_sizes;
};

/// Clusters the rows of `points` into `params.k` groups.
///
/// Each iteration assigns every point to its nearest centroid through the dispatched GEMM kernel
/// (argmin ‖c‖² − 2⟨x, c⟩, or argmax ⟨x, c⟩ when spherical) — after the first, usually through
/// `triangle_bounds` instead — in parallel over fixed blocks of points on the caller's oneTBB arena; then recomputes
/// each centroid as the mean of its points, summed in point order in double precision, so the result does not depend on
/// the thread count. An empty cluster takes half of the cluster with the widest spread (Σ ‖x − c‖² around its
/// updated centroid; never one whose points all coincide): it gets a copy of that centroid, and both are nudged
/// apart by a tiny seeded perturbation (as in FAISS, which splits the largest cluster instead).
///
/// Points far from the origin (the squared norm of their mean above 4 times their mean squared distance
/// from it) are clustered minus their mean, which is added back to the centroids: the GEMM form cancels
/// there (docs/ivf.md), and k-means does not depend on the origin. That takes a copy of the points when
/// no subsample was drawn. Spherical k-means, which clusters directions, runs on the points as given.
///
/// Throws `shoal::error` if k = 0, k exceeds the training points, iterations = 0, `points` has dim 0 or
/// a NaN/Inf value, or `balance` is neither 0 nor ≥ 1.
[[nodiscard]] kmeans_result kmeans(matrix_view<const float> points, const kmeans_params& params);

/// Nearest centroids of each point: point i's `count` nearest are `labels[i * count + j]`, j < count,
/// nearest first (ties to the smaller centroid index), at `distances[i * count + j]`.
struct centroid_assignment {
  std::vector<std::uint32_t> labels;
  std::vector<float> distances;
  std::size_t count = 0;
};

/// The `count` nearest of `centroids` to each row of `points`, through the dispatched GEMM kernel (in
/// blocks of 256 points; a block of fewer than 8, such as a single query, through the one-to-many
/// inner-product kernel, which skips the GEMM's packing of the centroids).
///  - `metric::l2`: ranks by ‖c‖² − 2⟨x, c⟩ and reports ‖x − c‖² computed as ‖x‖² + ‖c‖² − 2⟨x, c⟩
///    (clamped at 0), so distances round slightly differently from the pairwise kernel;
///  - `metric::inner_product`: ranks by and reports −⟨x, c⟩;
///  - `metric::cosine`: reports 1 − ⟨x, c⟩ and expects unit rows on both sides (it does not normalise).
/// Parallel over blocks of points on the caller's oneTBB arena. Throws `shoal::error` if `centroids` is
/// empty, the dims differ, `count` is 0 or exceeds the centroids, or an input holds NaN/Inf.
[[nodiscard]] centroid_assignment assign(matrix_view<const float> points, matrix_view<const float> centroids,
                                         metric m = metric::l2, std::size_t count = 1);

}  // namespace shoal
