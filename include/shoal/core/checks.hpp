#pragma once
/// \file
/// Input validation shared by every index's API boundary.

#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "shoal/core/neighbors.hpp"
#include "shoal/core/types.hpp"

namespace shoal::detail {

/// The largest squared norm a vector may have: FLT_MAX / 8 (see `check_squared_norm`).
inline constexpr double max_squared_norm = 3.4028234663852886e38 / 8;

/// ‖row‖² of `dim` floats, summed in double (a float sum underflows for tiny components and overflows for
/// huge ones).
[[nodiscard]] double squared_norm(const float* row, std::size_t dim) noexcept;

/// Throws `shoal::error` unless `v` has `dim` columns, a valid stride and data pointer (its rows within
/// the address space: a stride of 2^62 would wrap row 1 back onto row 0), only finite
/// values, and rows of norm at most sqrt(FLT_MAX / 8) ≈ 6.5e18, so that every float distance between
/// them stays finite (`errc::non_finite` otherwise). `what` names the argument in the message ("query",
/// "vector", ...).
void check_vectors(matrix_view<const float> v, std::size_t dim, const char* what);

/// Throws `shoal::error` (`errc::invalid_argument`) unless 1 ≤ `dim` ≤ `max_dim`: "<what>: dimension
/// <dim> is outside [1, 16777216]".
void check_dimension(std::size_t dim, const char* what);

/// `check_vectors` for vectors a loader copied out of `file`: any value `add` would refuse (NaN/Inf,
/// a norm past the bound) is `errc::corrupt_file` "<file>: <what> row <i> has ...", and under `m` =
/// cosine so is a row not of unit length (a zero row among them: `add` refuses it and normalises the
/// rest, so a cosine index stores unit rows, and another row gave distances outside [0, 2]). Copied
/// loads, and mapped ones at `verify_level::full` (`index_file_reader::checks_values`); below that a
/// mapping is trusted, so that loading it reads no vector pages.
void check_loaded_vectors(matrix_view<const float> v, const std::string& file, const char* what, metric m = metric::l2);
/// Whether `check_loaded_vectors` accepts `v`'s values under `m` (its dimension is not compared): the
/// cheap test in front of a `check_loaded_vectors` whose `what` costs a string to build.
[[nodiscard]] bool vectors_pass(matrix_view<const float> v, metric m = metric::l2) noexcept;

/// Throws `shoal::error` (`errc::invalid_argument`) unless `m` is one of the three metrics: a value cast
/// from an integer (a config file, a binding) would otherwise search as inner product and save as L2.
void check_metric(metric m, const char* what);

/// Throws `shoal::error` (`errc::non_finite`) when a vector of squared norm `squared_norm` (NaN too)
/// would break `check_vectors`' norm bound: "<what><part><row> has norm …" (`part` null: "<what> has
/// norm …"). For what a loaded model decodes to (codebooks, quantizer ranges, centroids).
void check_squared_norm(double squared_norm, const char* what, const char* part = nullptr, std::size_t row = 0);

/// Throws `shoal::error` unless there is one id per vector (`rows`) and none is `no_id` (2⁶⁴ − 1, reserved:
/// it marks a missing result in `neighbors`, so an index cannot tell it from "nothing"). `what` names the
/// call ("flat_index::add", ...).
void check_ids(std::span<const vector_id> ids, std::size_t rows, const char* what);

/// Throws `shoal::error` unless `out` can take the answers to `rows` queries: k ≥ 1, `rows` rows and both
/// buffers present. `what` names the call ("flat_index::search", ...).
void check_result_buffer(std::size_t rows, neighbors_view out, const char* what);

/// Throws `shoal::error` unless `out` is a `rows` x `dim` view a call can write: `errc::dimension_mismatch`
/// for another dimension, `errc::invalid_argument` for other rows, a stride below the dimension, no data,
/// or rows spanning past the address space. `what` names the call ("product_quantizer::decode", ...).
void check_output(matrix_view<float> out, std::size_t rows, std::size_t dim, const char* what);

/// Throws `shoal::error` (`errc::invalid_argument`) when `rows` > 0 and `codes` is null: "<what>: no
/// codes for <rows> rows".
void check_codes(const void* codes, std::size_t rows, const char* what);

/// Whether the memory two views span meets (views that passed the checks above): a product written in
/// place must then go through a temporary.
[[nodiscard]] bool views_overlap(matrix_view<const float> a, matrix_view<const float> b) noexcept;

/// An id read from index file `file`: throws `errc::corrupt_file` when it is the reserved `no_id` or
/// `fresh` is false (the loader found it stored already).
void check_stored_id(vector_id id, bool fresh, const std::string& file);

/// Copies `v` into a dense matrix with every row scaled to unit L2 norm, for the cosine metric; a row
/// already of unit norm up to float rounding (squared norm within 2⁻²³ + 2⁻²⁸ of 1) is copied unchanged, so
/// that normalising a normalised row changes nothing. Throws `shoal::error` if a row is zero (it has
/// no direction).
[[nodiscard]] matrix<float> normalized_copy(matrix_view<const float> v, const char* what);
/// What `normalized_copy` checks, without the copy: for a caller that passes `v` on to indexes that
/// normalise it themselves, and that must name the problem as its own call.
void check_normalizable(matrix_view<const float> v, const char* what);
/// The checks every index's `add` makes of its rows: `check_vectors`, and under cosine `check_normalizable`
/// (the `check_add` members run them before what only their index can tell).
void check_rows_to_add(matrix_view<const float> v, std::size_t dim, metric m, const char* what);

/// Rows relative to a centre: the frame in which the IVF coarse pass scores centroids (docs/ivf.md).
struct centred_rows {
  std::vector<float> centre;  // the coordinate-wise median (per dimension the lower middle value), or 0
  matrix<float> rows;         // each row minus `centre`, in float
};
/// `x`'s centre and rows minus it, computed the one way that the CPU and the CUDA coarse passes share.
/// The median, not the mean: one far row (a centroid of one outlier vector at 10⁶) moved the mean so
/// far that every other centroid sat ~10⁴ from it, and the scores' cancellation sent 94% of the vectors
/// to lists other than their nearest (a review); half the rows must move for the median to. It is one
/// of the rows' own values per dimension, so no rounding; its norm is at most √2 times the largest
/// row's (at least half the rows reach each component), so ‖row − centre‖ ≤ (1 + √2) · max ‖row‖.
/// Where that passes the norm bound B = sqrt(`max_squared_norm`) for some row — rows near B whose median
/// lies farther out — the centre is 0 instead (the rows as they are): centred rows past B overflowed
/// the rank score 2⟨q − μ, c − μ⟩ to −inf for several centroids at once, which then tied, and the SQ8
/// prefilter refused to train on them (a review, session 39). So every row returned is within B when
/// `x`'s rows are: for queries within B, ‖c − μ‖² − 2⟨q − μ, c − μ⟩ stays within ±0.73·FLT_MAX.
[[nodiscard]] centred_rows centred_copy(matrix_view<const float> x);

}  // namespace shoal::detail
