#pragma once
// Helpers shared by the test files: error matchers and a reference brute-force search.

#include <algorithm>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "shoal/core/topk.hpp"
#include "shoal/distance/distance.hpp"

namespace shoal::test {

/// Matches a shoal::error with the given code whose message contains `fragment`.
class error_matcher : public Catch::MatcherBase<shoal::error> {
 public:
  error_matcher(errc code, std::string fragment) : code_(code), fragment_(std::move(fragment)) {}
  bool match(const shoal::error& e) const override {
    return e.code() == code_ && std::string(e.what()).find(fragment_) != std::string::npos;
  }
  std::string describe() const override {
    return std::string("is a shoal::error with code ") + errc_name(code_) + " mentioning \"" + fragment_ + "\"";
  }

 private:
  errc code_;
  std::string fragment_;
};

inline error_matcher fails_with(errc code, std::string fragment = "") { return {code, std::move(fragment)}; }

/// Every (distance, id) of `base` for `query`, computed pairwise with the active kernels the way the
/// flat index defines its distances (cosine on normalised copies), sorted by (distance, id).
inline std::vector<scored_id> brute_force(matrix_view<const float> base, const std::vector<vector_id>& ids,
                                          const float* query, metric m) {
  const distance_kernels& k = active_kernels();
  std::vector<scored_id> all;
  const std::size_t d = base.dim;
  if (m == metric::cosine) {
    const matrix<float> nb = detail::normalized_copy(base, "base");
    const matrix<float> nq = detail::normalized_copy({query, 1, d}, "query");
    for (std::size_t i = 0; i < base.rows; ++i)
      all.push_back({1.0f - k.inner_product(nq.row(0), nb.row(i), d), ids[i]});
  } else {
    for (std::size_t i = 0; i < base.rows; ++i) {
      const float dist = m == metric::l2 ? k.l2sqr(query, base.row(i), d) : -k.inner_product(query, base.row(i), d);
      all.push_back({dist, ids[i]});
    }
  }
  std::sort(all.begin(), all.end());
  return all;
}

}  // namespace shoal::test
