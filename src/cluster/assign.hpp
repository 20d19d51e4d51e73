#pragma once
// Internal: the unchecked nearest-centroid search behind shoal::assign, k-means and the IVF coarse pass.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "shoal/core/types.hpp"

namespace shoal::detail {

/// Batches of fewer points than this are scored with the one-to-many inner-product kernel (bit-identical
/// to the pairwise one) instead of the GEMM, which would cost more to pack the centroids than it saves.
inline constexpr std::size_t gemm_min_points = 8;

/// How the assignment ranks centroid c for a point from their inner product: ‖c‖² − 2⟨x, c⟩ under L2 (‖x‖²
/// is the same for every c), −⟨x, c⟩ otherwise. Overflowing inputs can make it NaN, which no comparison
/// admits: ranked last (+∞) instead, so a bounded result still fills.
[[nodiscard]] inline float rank_score(bool l2, float centroid_norm, float ip) noexcept {
  const float s = l2 ? centroid_norm - 2.0f * ip : -ip;
  return std::isnan(s) ? std::numeric_limits<float>::infinity() : s;
}

/// For each row of `points`, its `count` nearest rows of `centroids` (nearest first, ties to the smaller
/// index) into `labels[i * count + j]` and `distances[i * count + j]`, as `shoal::assign` defines them.
/// `centroid_norms` holds ‖c‖² per centroid; it is read under `metric::l2` only (and may be null
/// otherwise). Inputs are trusted: same dims, finite values, 1 ≤ count ≤ centroids.rows. Parallel over
/// fixed blocks of points and, when there are fewer blocks than threads, over ranges of whole GEMM tiles
/// of centroids, so results do not depend on the number of threads. With count == 1, a
/// non-null `scores` also receives every (point, centroid) rank score (`rank_score`), row-major with
/// `centroids.rows` per point: k-means' bounded iterations start from them.
void assign_nearest(matrix_view<const float> points, matrix_view<const float> centroids, const float* centroid_norms,
                    metric m, std::size_t count, std::uint32_t* labels, float* distances, float* scores = nullptr);

}  // namespace shoal::detail
