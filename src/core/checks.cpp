#include "shoal/core/checks.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "shoal/core/error.hpp"

namespace shoal::detail {
namespace {

/// The shape checks of a view of `rows` rows of `dim` floats `stride` apart at `data`.
/// `what` and `suffix` name the matrix in the errors (the suffix, here rather than joined by the caller,
/// keeps the path that passes free of allocations).
void check_layout(const float* data, std::size_t rows, std::size_t dim, std::size_t stride, const char* what,
                  const char* suffix = "") {
  SHOAL_CHECK(stride >= dim, what, suffix, " row stride ", stride, " is smaller than its dimension ", dim);
  SHOAL_CHECK(rows == 0 || data != nullptr, what, suffix, " has ", rows, " rows but no data");
  constexpr std::size_t limit = static_cast<std::size_t>(std::numeric_limits<std::ptrdiff_t>::max()) / sizeof(float);
  SHOAL_CHECK(rows <= 1 || (dim <= limit && stride <= (limit - dim) / (rows - 1)), what, suffix, " has ", rows,
              " rows of stride ", stride, ", which span past the address space");
}

}  // namespace

double squared_norm(const float* row, std::size_t dim) noexcept {
  double sum = 0.0;
  for (std::size_t j = 0; j < dim; ++j) sum += static_cast<double>(row[j]) * row[j];
  return sum;
}

void check_vectors(matrix_view<const float> v, std::size_t dim, const char* what) {
  SHOAL_CHECK_CODE(v.dim == dim, errc::dimension_mismatch, what, " has dimension ", v.dim, ", expected ", dim);
  check_layout(v.data, v.rows, v.dim, v.stride, what);
  // Components below 2^32 in magnitude keep a squared norm below dim · 2^64, inside the bound below for
  // any dimension under 2^58; a row with a larger one (or Inf / NaN: an all-ones exponent) is looked at
  // closely.
  constexpr std::uint32_t large_exponent = (127u + 32u) << 23;
  for (std::size_t i = 0; i < v.rows; ++i) {
    const float* row = v.row(i);
    // A branch-free pass that vectorises; the row is searched for the culprit only when it has one. The
    // early-exit loop cost 1.2% of an in-cache HNSW query.
    std::uint32_t special = 0;
    for (std::size_t j = 0; j < v.dim; ++j) {
      std::uint32_t bits = 0;
      std::memcpy(&bits, row + j, sizeof bits);
      special |= (bits & 0x7f800000u) >= large_exponent ? 1u : 0u;
    }
    if (special == 0) [[likely]]
      continue;
    double squared_norm = 0;
    for (std::size_t j = 0; j < v.dim; ++j) {
      SHOAL_CHECK_CODE(std::isfinite(row[j]), errc::non_finite, what, " row ", i, " has a non-finite value (", row[j],
                       ") at component ", j);
      squared_norm += static_cast<double>(row[j]) * row[j];
    }
    check_squared_norm(squared_norm, what, " row ", i);
  }
}

void check_dimension(std::size_t dim, const char* what) {
  SHOAL_CHECK(dim >= 1 && dim <= max_dim, what, ": dimension ", dim, " is outside [1, ", max_dim, "]");
}

namespace {
/// How far a stored cosine row's squared norm may lie from 1: rows normalised in double and rounded to
/// float are within about 2·2⁻²⁴ of it (relative rounding per component), whatever the dimension.
constexpr double unit_norm_tolerance = 1e-4;

/// The first row of `v` whose squared norm is not 1 (within the tolerance), and that norm; v.rows if none.
std::pair<std::size_t, double> first_non_unit_row(matrix_view<const float> v) noexcept {
  for (std::size_t i = 0; i < v.rows; ++i) {
    const double squared = squared_norm(v.row(i), v.dim);
    if (!(std::abs(squared - 1.0) <= unit_norm_tolerance)) return {i, squared};
  }
  return {v.rows, 1.0};
}
}  // namespace

void check_loaded_vectors(matrix_view<const float> v, const std::string& file, const char* what, metric m) {
  try {
    check_vectors(v, v.dim, what);
  } catch (const error& e) {
    throw_error(errc::corrupt_file, str(file, ": ", e.message()));
  }
  if (m != metric::cosine) return;
  const auto [row, squared_norm] = first_non_unit_row(v);
  SHOAL_CHECK_CODE(row == v.rows, errc::corrupt_file, file, ": ", what, " row ", row, " has squared norm ",
                   squared_norm, " under cosine, where the index stores unit vectors");
}

bool vectors_pass(matrix_view<const float> v, metric m) noexcept {
  try {
    check_vectors(v, v.dim, "");
  } catch (...) {
    return false;
  }
  return m != metric::cosine || first_non_unit_row(v).first == v.rows;
}

void check_metric(metric m, const char* what) {
  SHOAL_CHECK(m == metric::l2 || m == metric::inner_product || m == metric::cosine, what, ": unknown metric ",
              static_cast<int>(m), " (expected l2, inner_product or cosine)");
}

void check_squared_norm(double squared_norm, const char* what, const char* part, std::size_t row) {
  // With every squared norm at most FLT_MAX / 8, each float distance stays within FLT_MAX / 2, a
  // margin for rounding: ‖q − x‖² ≤ 2‖q‖² + 2‖x‖², |⟨q, x⟩| ≤ ‖q‖‖x‖, and each term of the GEMM form
  // ‖q‖² + ‖x‖² − 2⟨q, x⟩ too. Beyond it a distance can overflow to ±inf (or NaN, inf − inf), and
  // results would be lost without a word (a batched flat search returned empty rows).
  static_assert(max_squared_norm == static_cast<double>(std::numeric_limits<float>::max()) / 8);
  if (squared_norm <= max_squared_norm) [[likely]]
    return;
  const std::string where = part == nullptr ? std::string(what) : str(what, part, row);
  throw_error(errc::non_finite, str(where, " has norm ", std::sqrt(squared_norm), ", above the ",
                                    std::sqrt(max_squared_norm), " that keeps its float distances finite"));
}

void check_ids(std::span<const vector_id> ids, std::size_t rows, const char* what) {
  SHOAL_CHECK(ids.size() == rows, what, ": ", rows, " vectors but ", ids.size(), " ids");
  for (const vector_id id : ids)
    SHOAL_CHECK(id != no_id, what, ": id ", id, " is reserved (shoal::no_id marks a missing result)");
}

void check_result_buffer(std::size_t rows, neighbors_view out, const char* what) {
  SHOAL_CHECK(out.k > 0, what, ": k must be at least 1");
  SHOAL_CHECK(out.rows == rows, what, ": result buffer has ", out.rows, " rows for ", rows, " queries");
  SHOAL_CHECK(rows == 0 || (out.ids != nullptr && out.distances != nullptr), what, ": null result buffer");
}

void check_output(matrix_view<float> out, std::size_t rows, std::size_t dim, const char* what) {
  SHOAL_CHECK_CODE(out.dim == dim, errc::dimension_mismatch, what, ": output has dimension ", out.dim, ", expected ",
                   dim);
  SHOAL_CHECK(out.rows == rows, what, ": output has ", out.rows, " rows for ", rows);
  check_layout(out.data, out.rows, out.dim, out.stride, what, ": output");
}

void check_codes(const void* codes, std::size_t rows, const char* what) {
  SHOAL_CHECK(rows == 0 || codes != nullptr, what, ": no codes for ", rows, " rows");
}

bool views_overlap(matrix_view<const float> a, matrix_view<const float> b) noexcept {
  if (a.rows == 0 || b.rows == 0) return false;
  const auto begin_a = reinterpret_cast<std::uintptr_t>(a.data), begin_b = reinterpret_cast<std::uintptr_t>(b.data);
  const std::uintptr_t end_a = begin_a + ((a.rows - 1) * a.stride + a.dim) * sizeof(float);
  const std::uintptr_t end_b = begin_b + ((b.rows - 1) * b.stride + b.dim) * sizeof(float);
  return begin_a < end_b && begin_b < end_a;
}

void check_stored_id(vector_id id, bool fresh, const std::string& file) {
  SHOAL_CHECK_CODE(id != no_id, errc::corrupt_file, file, ": a stored id is ", id, ", the reserved shoal::no_id");
  SHOAL_CHECK_CODE(fresh, errc::corrupt_file, file, ": id ", id, " is stored twice");
}

centred_rows centred_copy(matrix_view<const float> x) {
  centred_rows out{std::vector<float>(x.dim, 0.0f), matrix<float>(x.rows, x.dim)};
  if (x.rows > 0) {
    std::vector<float> column(x.rows);
    const auto middle = column.begin() + static_cast<std::ptrdiff_t>((x.rows - 1) / 2);
    for (std::size_t j = 0; j < x.dim; ++j) {
      for (std::size_t r = 0; r < x.rows; ++r) column[r] = x.row(r)[j];
      std::nth_element(column.begin(), middle, column.end());
      out.centre[j] = *middle;
    }
  }
  bool within = true;
  for (std::size_t r = 0; r < x.rows; ++r) {
    double squared = 0.0;
    for (std::size_t j = 0; j < x.dim; ++j) {
      const float v = x.row(r)[j] - out.centre[j];
      out.rows.row(r)[j] = v;
      squared += static_cast<double>(v) * v;
    }
    within = within && squared <= max_squared_norm;
  }
  if (!within) {
    std::fill(out.centre.begin(), out.centre.end(), 0.0f);
    for (std::size_t r = 0; r < x.rows; ++r) std::copy_n(x.row(r), x.dim, out.rows.row(r));
  }
  return out;
}

namespace {
/// Row `i` of `v`'s squared norm, in double: a float sum of squares underflows for tiny components (a
/// row of 3e-23 came out 0.8 long, 1e-23 as "zero") and overflows for huge ones. Throws when the row
/// cannot be normalised.
double normalizable_squared_norm(matrix_view<const float> v, std::size_t i, const char* what) {
  const double squared = squared_norm(v.row(i), v.dim);
  SHOAL_CHECK(squared > 0 && std::isfinite(squared), what, " row ", i,
              " has zero norm and cannot be normalised for the cosine metric");
  return squared;
}
}  // namespace

void check_normalizable(matrix_view<const float> v, const char* what) {
  for (std::size_t i = 0; i < v.rows; ++i) (void)normalizable_squared_norm(v, i, what);
}

void check_rows_to_add(matrix_view<const float> v, std::size_t dim, metric m, const char* what) {
  check_vectors(v, dim, what);
  if (m == metric::cosine) check_normalizable(v, what);
}

matrix<float> normalized_copy(matrix_view<const float> v, const char* what) {
  // In double, every finite non-zero float row normalises to unit length, each component rounded once;
  // the pass is cheap next to a search. A row already of unit length up to that rounding (its squared
  // norm within 2⁻²³ + 2⁻²⁸ of 1: the rounding moves it by at most 2⁻²³ + 2⁻⁴⁸, the double sum by far
  // less than 2⁻²⁸ at any dimension) is copied as it is, so that normalising twice changes nothing: a
  // rebalancing collection re-adds the unit rows its shards return, and normalising them again moved
  // components by one unit in the last place, away from what one index over the same vectors holds (a
  // review). No wider: a row kept as given is as far from unit length as the window (2⁻²² doubled the
  // distance error of rows normalised in float by the caller; a review).
  constexpr double unit_slack = 0x1p-23 + 0x1p-28;
  matrix<float> out(v.rows, v.dim);
  for (std::size_t i = 0; i < v.rows; ++i) {
    const float* row = v.row(i);
    const double squared_norm = normalizable_squared_norm(v, i, what);
    if (std::abs(squared_norm - 1.0) <= unit_slack) {
      std::copy_n(row, v.dim, out.row(i));
      continue;
    }
    const double scale = 1.0 / std::sqrt(squared_norm);
    for (std::size_t j = 0; j < v.dim; ++j) out.row(i)[j] = static_cast<float>(row[j] * scale);
  }
  return out;
}

}  // namespace shoal::detail
