#pragma once
// Internal: rows of a matrix copied out into a dense one.

#include <algorithm>
#include <cstddef>
#include <span>

#include "shoal/core/types.hpp"

namespace shoal::detail {

/// Rows `rows` of `v`, in that order, as a dense matrix.
[[nodiscard]] inline matrix<float> gather(matrix_view<const float> v, std::span<const std::size_t> rows) {
  matrix<float> out(rows.size(), v.dim);
  for (std::size_t i = 0; i < rows.size(); ++i) std::copy_n(v.row(rows[i]), v.dim, out.row(i));
  return out;
}

}  // namespace shoal::detail
