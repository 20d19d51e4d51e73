#include "shoal/multimodal/fusion.hpp"

#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "shoal/core/error.hpp"
#include "shoal/core/topk.hpp"

namespace shoal {
namespace {

/// The validated input of a fusion: per list its valid entries ordered by (distance, id) — entry j has
/// rank j + 1 — and one weight per list.
struct prepared {
  std::vector<std::vector<scored_id>> lists;
  std::vector<double> weights;
};

prepared prepare(std::span<const candidate_list> lists, std::size_t k, std::span<const float> weights,
                 const char* what) {
  SHOAL_CHECK(!lists.empty(), what, ": no candidate lists");
  SHOAL_CHECK(k >= 1, what, ": k must be at least 1");
  SHOAL_CHECK(weights.empty() || weights.size() == lists.size(), what, ": ", weights.size(), " weights for ",
              lists.size(), " lists (give one per list, or none for equal weights)");
  prepared p;
  p.weights.assign(lists.size(), 1.0);
  for (std::size_t i = 0; i < weights.size(); ++i) {
    SHOAL_CHECK(std::isfinite(weights[i]) && weights[i] >= 0.0f, what, ": weight ", i, " is ", weights[i],
                "; weights must be finite and >= 0");
    p.weights[i] = weights[i];
  }
  p.lists.resize(lists.size());
  std::vector<vector_id> ids;
  for (std::size_t i = 0; i < lists.size(); ++i) {
    const candidate_list& list = lists[i];
    SHOAL_CHECK(list.ids.size() == list.distances.size(), what, ": list ", i, " has ", list.ids.size(), " ids but ",
                list.distances.size(), " distances");
    std::vector<scored_id>& entries = p.lists[i];
    for (std::size_t j = 0; j < list.ids.size(); ++j) {
      if (list.ids[j] == no_id) continue;
      SHOAL_CHECK_CODE(std::isfinite(list.distances[j]), errc::non_finite, what, ": list ", i, " gives id ",
                       list.ids[j], " the non-finite distance ", list.distances[j]);
      entries.push_back({list.distances[j], list.ids[j]});
    }
    ids.resize(entries.size());
    std::transform(entries.begin(), entries.end(), ids.begin(), [](const scored_id& e) { return e.id; });
    std::sort(ids.begin(), ids.end());
    const auto twice = std::adjacent_find(ids.begin(), ids.end());
    SHOAL_CHECK_CODE(twice == ids.end(), errc::duplicate_id, what, ": list ", i, " holds id ", *twice, " twice");
    std::sort(entries.begin(), entries.end());
  }
  return p;
}

/// The best min(k, n) of `all`: highest score first, ties by smaller id.
std::vector<fused_id> top(std::vector<fused_id> all, std::size_t k) {
  const auto better = [](const fused_id& a, const fused_id& b) {
    return a.score > b.score || (a.score == b.score && a.id < b.id);
  };
  const std::size_t keep = std::min(k, all.size());
  std::partial_sort(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(keep), all.end(), better);
  all.resize(keep);
  return all;
}

/// Ids of every list, each once, in order of first appearance; `slot` maps an id to its position.
struct id_union {
  std::vector<vector_id> ids;
  std::unordered_map<vector_id, std::size_t> slot;

  explicit id_union(const prepared& p) {
    for (const auto& entries : p.lists)
      for (const scored_id& e : entries)
        if (slot.try_emplace(e.id, ids.size()).second) ids.push_back(e.id);
  }
};

/// List entries' similarities −distance, normalised over the list.
std::vector<double> normalised_scores(const std::vector<scored_id>& entries, score_normalization normalization) {
  std::vector<double> s(entries.size());
  std::transform(entries.begin(), entries.end(), s.begin(),
                 [](const scored_id& e) { return -static_cast<double>(e.distance); });
  if (s.empty()) return s;
  switch (normalization) {
    case score_normalization::none:
      break;
    case score_normalization::min_max: {
      const auto [lo, hi] = std::minmax_element(s.begin(), s.end());
      const double min = *lo;
      const double range = *hi - *lo;
      for (double& v : s) v = range > 0.0 ? (v - min) / range : 1.0;
      break;
    }
    case score_normalization::z_score: {
      double mean = 0.0;
      for (const double v : s) mean += v;
      mean /= static_cast<double>(s.size());
      double var = 0.0;
      for (const double v : s) var += (v - mean) * (v - mean);
      const double sd = std::sqrt(var / static_cast<double>(s.size()));
      for (double& v : s) v = sd > 0.0 ? (v - mean) / sd : 0.0;
      break;
    }
  }
  return s;
}

}  // namespace

std::vector<fused_id> reciprocal_rank_fusion(std::span<const candidate_list> lists, std::size_t k,
                                             std::span<const float> weights, double rrf_k) {
  constexpr const char* what = "reciprocal_rank_fusion";
  SHOAL_CHECK(std::isfinite(rrf_k) && rrf_k >= 0.0, what, ": rrf_k must be finite and >= 0, got ", rrf_k);
  const prepared p = prepare(lists, k, weights, what);
  const id_union all(p);
  std::vector<fused_id> fused(all.ids.size());
  for (std::size_t u = 0; u < fused.size(); ++u) fused[u] = {all.ids[u], 0.0};
  for (std::size_t i = 0; i < p.lists.size(); ++i)
    for (std::size_t j = 0; j < p.lists[i].size(); ++j)
      fused[all.slot.at(p.lists[i][j].id)].score += p.weights[i] / (rrf_k + static_cast<double>(j + 1));
  return top(std::move(fused), k);
}

std::vector<fused_id> weighted_score_fusion(std::span<const candidate_list> lists, std::size_t k,
                                            score_normalization normalization, std::span<const float> weights) {
  constexpr const char* what = "weighted_score_fusion";
  SHOAL_CHECK(normalization == score_normalization::none || normalization == score_normalization::min_max ||
                  normalization == score_normalization::z_score,
              what, ": unknown score normalization ", static_cast<int>(normalization));
  const prepared p = prepare(lists, k, weights, what);
  const id_union all(p);
  std::vector<fused_id> fused(all.ids.size());
  for (std::size_t u = 0; u < fused.size(); ++u) fused[u] = {all.ids[u], 0.0};
  std::vector<double> own(all.ids.size());
  std::vector<bool> present(all.ids.size());
  for (std::size_t i = 0; i < p.lists.size(); ++i) {
    const std::vector<scored_id>& entries = p.lists[i];
    if (entries.empty()) continue;
    const std::vector<double> s = normalised_scores(entries, normalization);
    const auto [lo, hi] = std::minmax_element(s.begin(), s.end());
    // Absent ids rank as the list's last entry, or, when every entry ties (one entry, say), a full
    // normalised unit below them: else the list would not tell its ids from the rest.
    const bool tied = *lo == *hi && normalization != score_normalization::none;
    const double worst = !tied ? *lo : normalization == score_normalization::min_max ? 0.0 : -1.0;
    std::fill(present.begin(), present.end(), false);
    for (std::size_t j = 0; j < entries.size(); ++j) {
      const std::size_t u = all.slot.at(entries[j].id);
      present[u] = true;
      own[u] = s[j];
    }
    for (std::size_t u = 0; u < fused.size(); ++u) fused[u].score += p.weights[i] * (present[u] ? own[u] : worst);
  }
  return top(std::move(fused), k);
}

std::vector<fused_id> intersection_fusion(std::span<const candidate_list> lists, std::size_t k,
                                          std::span<const float> weights) {
  constexpr const char* what = "intersection_fusion";
  const prepared p = prepare(lists, k, weights, what);
  const id_union all(p);
  std::vector<fused_id> fused(all.ids.size());
  for (std::size_t u = 0; u < fused.size(); ++u) fused[u] = {all.ids[u], 0.0};
  std::vector<std::size_t> seen(all.ids.size(), 0);
  for (std::size_t i = 0; i < p.lists.size(); ++i)
    for (std::size_t j = 0; j < p.lists[i].size(); ++j) {
      const std::size_t u = all.slot.at(p.lists[i][j].id);
      ++seen[u];
      fused[u].score -= p.weights[i] * static_cast<double>(j + 1);
    }
  std::vector<fused_id> common;
  for (std::size_t u = 0; u < fused.size(); ++u)
    if (seen[u] == p.lists.size()) common.push_back(fused[u]);
  return top(std::move(common), k);
}

}  // namespace shoal
