#pragma once
/// \file
/// Evaluation: recall against ground truth, exact ground truth, and seeded synthetic data that does not
/// depend on the standard library's distributions (splitmix64, no `std::*_distribution`): uniform data is
/// bit-identical everywhere; normal draws go through `std::log` / `std::cos`, whose last bit may differ
/// between C math libraries.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "shoal/core/neighbors.hpp"
#include "shoal/core/types.hpp"

namespace shoal {

/// Recall@k by ids: |ids of the returned top-k ∩ ids of the true top-k| / k, averaged over queries (an
/// id the result repeats counts once). `truth` holds per query at least k true ids, nearest first (e.g.
/// an `.ivecs` ground-truth file); a negative id (FAISS's −1 padding where fewer than k exist) is a
/// missing one, which no result matches.
///
/// This is not ann-benchmarks' recall, which recomputes each returned vector's distance and counts every
/// one within the k-th true distance + 1e-3 (Euclidean, not squared, for L2). The two differ where a
/// base vector outside the true top-k lies within that margin of the k-th true distance — an exact
/// duplicate of a true neighbour, say: a result holding it instead of the listed id scores lower here —
/// and where a result repeats an id: ann-benchmarks counts each repeat, this counts it once.
/// `.ivecs` ids are int32: for bases beyond 2³¹ − 1 rows use the `neighbors` overload.
/// Throws `shoal::error` if k is 0, exceeds `result.k()` or `truth.dim`, the row counts differ, or a
/// ground-truth row lists an id more than once among its first k (missing neighbours, -1 or `no_id`,
/// may repeat).
[[nodiscard]] double recall_at_k(const neighbors& result, matrix_view<const std::int32_t> truth, std::size_t k);
/// Throws `shoal::error` (`errc::invalid_argument`, prefixed by `what`) unless each row of `truth` holds,
/// among its first k ids, only base row numbers below `base_rows` or -1 (a missing neighbour: FAISS's
/// padding), none twice. `recall_at_k` refuses a repeated id itself, but only once an index has been
/// built and searched: the demo and the bench call this first.
void check_ground_truth(matrix_view<const std::int32_t> truth, std::size_t k, std::size_t base_rows,
                        std::string_view what);
/// The same with ids in a `neighbors` (e.g. from `ground_truth`).
[[nodiscard]] double recall_at_k(const neighbors& result, const neighbors& truth, std::size_t k);

/// Checks that `truth` (already checked by `check_ground_truth`) was made under `m`, on its first
/// `sample` rows (at most): a listed id fits a metric when its distance under it is within rounding
/// (10⁻⁵ of ‖q‖² + ‖x‖² for l2, of ‖q‖‖x‖ for inner product, of 1 for cosine) of the k-th smallest over
/// `base`, so that ties and near-ties broken another way
/// (double precision, another library) still fit. Throws `shoal::error` (`errc::invalid_argument`,
/// prefixed by `what`) when another metric fits at least 99.9% of the listed ids and `m` clearly fewer
/// (by 0.5% and two ids): against the wrong metric's file exact search still scores a plausible recall
/// (a user-eyes review: 0.972 under inner product and 0.991 under cosine on bigann10k's l2 file), so a
/// mistyped metric went unseen. Returns a warning for the caller to show when fewer than 99% fit `m`
/// and no other metric fits (ground truth over other vectors, or padded with -1), else an empty string;
/// also empty when a distance is NaN (NaN values, which the index will refuse).
/// Scans `base` in place (no copy) once per metric tried, on the caller's oneTBB arena. Throws
/// `shoal::error` for queries of another dimension than `base`, k above `truth`'s ids per row, or a
/// stride below its row.
[[nodiscard]] std::string check_ground_truth_metric(matrix_view<const float> base, matrix_view<const float> queries,
                                                    matrix_view<const std::int32_t> truth, std::size_t k, metric m,
                                                    std::string_view what, std::size_t sample = 100);

/// The ids of `n` as `.ivecs` ground truth holds them (int32, row numbers). Throws `shoal::error` for an
/// id past 2³¹ − 1 (`no_id`, a missing neighbour, becomes -1).
[[nodiscard]] matrix<std::int32_t> ground_truth_ids(const neighbors& n);

/// Exact k nearest neighbours of `queries` among `base` (ids = row numbers), via the flat index.
[[nodiscard]] neighbors ground_truth(matrix_view<const float> base, matrix_view<const float> queries, std::size_t k,
                                     metric m);

/// splitmix64: tiny, fast, and the same sequence everywhere.
class splitmix64 {
 public:
  explicit constexpr splitmix64(std::uint64_t seed) noexcept : state_(seed) {}
  constexpr std::uint64_t next() noexcept {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  /// Uniform in [0, 1) with 24 bits of precision.
  constexpr float uniform() noexcept { return static_cast<float>(next() >> 40) * 0x1.0p-24f; }
  /// Standard normal (Box–Muller).
  float normal() noexcept;
  /// Uniform integer in [0, n), n > 0.
  constexpr std::uint64_t below(std::uint64_t n) noexcept { return next() % n; }

 private:
  std::uint64_t state_;
};

/// `rows` vectors of `dim` drawn around `clusters` Gaussian centres (centres ~ N(0, 1) per component,
/// points = centre + `spread` · N(0, 1)): the shape of real embeddings, where ANN structure matters.
/// Same seed → same matrix (with the same C math library). Throws `shoal::error` if `clusters` is 0 or
/// `spread` is not finite.
[[nodiscard]] matrix<float> make_clustered(std::size_t rows, std::size_t dim, std::size_t clusters, std::uint64_t seed,
                                           float spread = 0.35f);
/// `rows` x `dim` values uniform in [−1, 1).
[[nodiscard]] matrix<float> make_uniform(std::size_t rows, std::size_t dim, std::uint64_t seed);

}  // namespace shoal
