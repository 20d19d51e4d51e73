#include "shoal/core/checks.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>

#include "shoal/core/error.hpp"
#include "shoal/distance/distance.hpp"

namespace shoal::detail {

void check_vectors(matrix_view<const float> v, std::size_t dim, const char* what) {
  SHOAL_CHECK_CODE(v.dim == dim, errc::dimension_mismatch, what, " has dimension ", v.dim, ", expected ", dim);
  SHOAL_CHECK(v.stride >= v.dim, what, " row stride ", v.stride, " is smaller than its dimension ", v.dim);
  SHOAL_CHECK(v.rows == 0 || v.data != nullptr, what, " has ", v.rows, " rows but no data");
  for (std::size_t i = 0; i < v.rows; ++i) {
    const float* row = v.row(i);
    // A branch-free pass that vectorises (an all-ones exponent is Inf or NaN); the row is searched
    // for the culprit only when it has one. The early-exit loop cost 1.2% of an in-cache HNSW query.
    std::uint32_t special = 0;
    for (std::size_t j = 0; j < v.dim; ++j) {
      std::uint32_t bits = 0;
      std::memcpy(&bits, row + j, sizeof bits);
      special |= (bits & 0x7f800000u) == 0x7f800000u ? 1u : 0u;
    }
    if (special == 0) [[likely]]
      continue;
    for (std::size_t j = 0; j < v.dim; ++j)
      SHOAL_CHECK_CODE(std::isfinite(row[j]), errc::non_finite, what, " row ", i, " has a non-finite value (", row[j],
                       ") at component ", j);
  }
}

void check_ids(std::span<const vector_id> ids, std::size_t rows, const char* what) {
  SHOAL_CHECK(ids.size() == rows, what, ": ", rows, " vectors but ", ids.size(), " ids");
  for (const vector_id id : ids)
    SHOAL_CHECK(id != no_id, what, ": id ", id, " is reserved (shoal::no_id marks a missing result)");
}

void check_stored_id(vector_id id, bool fresh, const std::string& file) {
  SHOAL_CHECK_CODE(id != no_id, errc::corrupt_file, file, ": a stored id is ", id, ", the reserved shoal::no_id");
  SHOAL_CHECK_CODE(fresh, errc::corrupt_file, file, ": id ", id, " is stored twice");
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
