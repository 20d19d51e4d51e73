#pragma once
/// \file
/// Input validation shared by every index's API boundary.

#include <cstddef>

#include "shoal/core/types.hpp"

namespace shoal::detail {

/// Throws `shoal::error` unless `v` has `dim` columns, a valid stride and data pointer, and only finite
/// values. `what` names the argument in the message ("query", "vector", ...).
void check_vectors(matrix_view<const float> v, std::size_t dim, const char* what);

/// Copies `v` into a dense matrix with every row scaled to unit L2 norm, for the cosine metric.
/// Throws `shoal::error` if a row is zero (it has no direction).
[[nodiscard]] matrix<float> normalized_copy(matrix_view<const float> v, const char* what);

}  // namespace shoal::detail
