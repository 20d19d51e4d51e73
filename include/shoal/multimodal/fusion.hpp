#pragma once
/// \file
/// Late fusion: combines the candidate lists that several modalities (or several indexes) return for one
/// query into one ranking. Three rules:
///  - `reciprocal_rank_fusion`: score = Σ_i w_i / (rrf_k + rank_i) (Cormack, Clarke & Büttcher, 2009);
///    uses ranks only, so lists whose distances are on unrelated scales combine without tuning;
///  - `weighted_score_fusion`: score = Σ_i w_i · normalised similarity_i, with per-list normalisation;
///  - `intersection_fusion`: only ids found by every list, ranked by their weighted rank sum.
///
/// Common rules of all three:
///  - A list is ids with distances, as every shoal search reports them (smaller = better). Slots holding
///    `no_id` (the padding of a result row) are ignored, whatever their distance.
///  - The rank of an id in a list is its 1-based position once the list's valid entries are ordered by
///    (distance, id) — the order shoal's searches already use — so unsorted input is ranked correctly.
///  - `weights` has one entry per list, or is empty for weight 1 each; weights are finite and ≥ 0.
///  - The result holds the best min(k, candidates) ids with their fused score, highest score first,
///    ties broken by the smaller id. Scores are computed in double precision, list by list in the order
///    the lists are given.
///  - Errors (`shoal::error`): `errc::invalid_argument` when `lists` is empty, k = 0, `weights` has the
///    wrong length or a negative / NaN / infinite weight, a list's ids and distances differ in length,
///    or `rrf_k` is negative or not finite; `errc::non_finite` for a NaN/Inf distance of a valid id;
///    `errc::duplicate_id` when an id occurs twice in one list.
///  - Thread safety: pure functions of their arguments.

#include <cstddef>
#include <span>
#include <vector>

#include "shoal/core/types.hpp"

namespace shoal {

/// One modality's candidates for one query: `ids[j]` at `distances[j]` (equal lengths), e.g. one row of
/// a `neighbors` result: `{result.row_ids(r), result.row_distances(r)}`. A non-owning view.
struct candidate_list {
  std::span<const vector_id> ids;
  std::span<const float> distances;
};

/// One fused result: larger `score` is better (unlike a distance).
struct fused_id {
  vector_id id;
  double score;
  friend bool operator==(const fused_id&, const fused_id&) = default;
};

/// How `weighted_score_fusion` puts each list's scores on a common scale. Distances are first turned
/// into similarities s = −distance; then, over the valid entries of that one list:
enum class score_normalization {
  none,     ///< s as is: only meaningful when every list reports distances on the same scale
  min_max,  ///< (s − min) / (max − min), in [0, 1], best = 1; every entry 1 when all s are equal
  z_score,  ///< (s − mean) / std (population standard deviation); every entry 0 when all s are equal
};

/// Reciprocal-rank fusion over the union of the lists' ids: score(id) = Σ_i w_i / (rrf_k + rank_i(id)),
/// the sum over the lists that contain the id (a list without it adds nothing). rrf_k = 60 is the
/// original paper's constant: larger values flatten the advantage of the very first ranks.
[[nodiscard]] std::vector<fused_id> reciprocal_rank_fusion(std::span<const candidate_list> lists, std::size_t k,
                                                           std::span<const float> weights = {}, double rrf_k = 60.0);

/// Weighted sum of normalised similarities over the union of the lists' ids: score(id) =
/// Σ_i w_i · n_i(id), where n_i is list i's normalised similarity (see `score_normalization`). An id
/// that list i does not hold gets that list's worst normalised score present, as if it ranked last
/// there — not 0, which under `z_score` would rate an absent id above the list's below-average
/// entries. When every entry of a list ties (a one-entry list, say), its entries score 1 (`min_max`)
/// or 0 (`z_score`) and absent ids 0 or −1: below them, so that the list still counts. (Under `none`
/// absent ids get the tied score.) A list without valid entries contributes nothing.
[[nodiscard]] std::vector<fused_id> weighted_score_fusion(
    std::span<const candidate_list> lists, std::size_t k,
    score_normalization normalization = score_normalization::min_max, std::span<const float> weights = {});

/// Ids present in every list, score(id) = −Σ_i w_i · rank_i(id): the negated weighted rank sum, so
/// that, as with the other rules, a higher score is better (the best possible, with unit weights, is
/// −number of lists). Ranks ignore absolute distances and so compare across modalities. Empty when no
/// id is in every list.
[[nodiscard]] std::vector<fused_id> intersection_fusion(std::span<const candidate_list> lists, std::size_t k,
                                                        std::span<const float> weights = {});

}  // namespace shoal
