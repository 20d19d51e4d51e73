#pragma once
/// \file
/// What the peer adapters share: how they see vectors under the cosine metric.

#include "shoal/core/checks.hpp"
#include "shoal/core/types.hpp"

namespace shoal::bench {

/// Rows as a peer indexes or searches them. Peers have no cosine metric: under `metric::cosine` they
/// get unit-normalised copies (and run inner product), the way ann-benchmarks runs them; otherwise the
/// rows themselves. Normalising queries happens inside the timed search call, as it does in shoal.
class peer_rows {
 public:
  peer_rows(matrix_view<const float> rows, shoal::metric m)
      : copy_(m == shoal::metric::cosine ? detail::normalized_copy(rows, "vector") : matrix<float>{}),
        view_(m == shoal::metric::cosine ? copy_.view() : rows) {}

  /// Contiguous rows (stride == dim) when normalised; the caller's layout otherwise.
  [[nodiscard]] matrix_view<const float> view() const noexcept { return view_; }

 private:
  matrix<float> copy_;
  matrix_view<const float> view_;
};

}  // namespace shoal::bench
