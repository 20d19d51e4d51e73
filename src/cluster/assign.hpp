#pragma once
// Internal: the unchecked nearest-centroid search behind shoal::assign, k-means and the IVF coarse pass.

#include <cstddef>
#include <cstdint>

#include "shoal/core/types.hpp"

namespace shoal::detail {

/// For each row of `points`, its `count` nearest rows of `centroids` (nearest first, ties to the smaller
/// index) into `labels[i * count + j]` and `distances[i * count + j]`, as `shoal::assign` defines them.
/// `centroid_norms` holds ‖c‖² per centroid; it is read under `metric::l2` only (and may be null
/// otherwise). Inputs are trusted: same dims, finite values, 1 ≤ count ≤ centroids.rows. Parallel over
/// fixed blocks of points, so results do not depend on the number of threads.
void assign_nearest(matrix_view<const float> points, matrix_view<const float> centroids, const float* centroid_norms,
                    metric m, std::size_t count, std::uint32_t* labels, float* distances);

}  // namespace shoal::detail
