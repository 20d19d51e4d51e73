#include "shoal/core/checks.hpp"

#include <cmath>

#include "shoal/core/error.hpp"
#include "shoal/distance/distance.hpp"

namespace shoal::detail {

void check_vectors(matrix_view<const float> v, std::size_t dim, const char* what) {
  SHOAL_CHECK_CODE(v.dim == dim, errc::dimension_mismatch, what, " has dimension ", v.dim, ", expected ", dim);
  SHOAL_CHECK(v.stride >= v.dim, what, " row stride ", v.stride, " is smaller than its dimension ", v.dim);
  SHOAL_CHECK(v.rows == 0 || v.data != nullptr, what, " has ", v.rows, " rows but no data");
  for (std::size_t i = 0; i < v.rows; ++i) {
    const float* row = v.row(i);
    for (std::size_t j = 0; j < v.dim; ++j)
      SHOAL_CHECK_CODE(std::isfinite(row[j]), errc::non_finite, what, " row ", i, " has a non-finite value (", row[j],
                       ") at component ", j);
  }
}

matrix<float> normalized_copy(matrix_view<const float> v, const char* what) {
  matrix<float> out(v.rows, v.dim);
  const distance_kernels& k = active_kernels();
  for (std::size_t i = 0; i < v.rows; ++i) {
    const float norm = std::sqrt(k.inner_product(v.row(i), v.row(i), v.dim));
    SHOAL_CHECK(norm > 0.0f && std::isfinite(norm), what, " row ", i,
                " has zero (or overflowing) norm and cannot be normalised for the cosine metric");
    const float scale = 1.0f / norm;
    for (std::size_t j = 0; j < v.dim; ++j) out.row(i)[j] = v.row(i)[j] * scale;
  }
  return out;
}

}  // namespace shoal::detail
