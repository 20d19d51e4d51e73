#pragma once
// Internal: asymmetric SQ8 distance estimates — a float query against 8-bit codes, without decoding them —
// on the exact integer kernel `dot_u8_i16`. Shared by the HNSW index's SQ8 traversal and the IVF flat
// coarse quantizer's prefilter.

#include <cstdint>
#include <vector>

#include "shoal/core/types.hpp"
#include "shoal/quant/sq.hpp"

namespace shoal::detail {

/// With x̂ = min + step ⊙ c (the sq8 reconstruction of codes c):
///  - L2: ‖q − x̂‖² = ‖u‖² + Σ (step_j·c_j)² − 2 Σ u_j·step_j·c_j, u = q − min;
///  - inner product: −⟨q, x̂⟩ = −⟨q, min⟩ − Σ q_j·step_j·c_j (cosine adds 1).
/// The middle L2 term depends on the codes only (`term`, stored beside them). The code coefficients a_j
/// (−2·u_j·step_j, or −q_j·step_j) are rounded once per query to integers i_j on a grid
/// `unit = max|a_j| / L` with L = `dot_u8_i16_limit(dim)` (10,741 at 784 dimensions), so that Σ i_j·c_j
/// is exact in int32 at every SIMD level and costs one widening and one multiply-add per 32 codes at
/// AVX-512. The rounding moves an estimate by at most unit/2 · Σ c_j — a few parts in 10⁵ of its range,
/// far below the codes' own error, while no coefficient dwarfs the rest; one dimension of a far wider
/// range than the others sets the grid alone and rounds the others to 0 or ±1 (docs/hnsw.md: known).
class sq8_estimator {
 public:
  /// Σ (step_j·c_j)² of one code row under L2; 0 under inner product and cosine.
  [[nodiscard]] static float term(const scalar_quantizer& sq, metric m, const std::uint8_t* codes);

  /// Sets the estimator up for query `q` (dim floats); `sq` must be a trained sq8 quantizer.
  void prepare(const scalar_quantizer& sq, metric m, const float* q);
  /// The query's integer coefficients, for `dot_u8_i16` / `dot_u8_i16_gather`.
  [[nodiscard]] const std::int16_t* coeffs() const noexcept { return coeffs_.data(); }
  /// The estimate of a row from its `term` and its `dot_u8_i16(coeffs(), codes, dim)`.
  [[nodiscard]] float estimate(float row_term, std::int32_t dot) const noexcept {
    return offset_ + row_term + unit_ * static_cast<float>(dot);
  }
  /// The grid of the rounded coefficients: an estimate is off the unrounded one by at most unit/2 · Σ c_j.
  [[nodiscard]] float unit() const noexcept { return unit_; }
  /// The query-only part of every estimate (‖u‖² under L2).
  [[nodiscard]] float offset() const noexcept { return offset_; }

 private:
  std::vector<float> real_;  // a_j before rounding
  std::vector<std::int16_t> coeffs_;
  float unit_ = 1.0f;
  float offset_ = 0.0f;
};

}  // namespace shoal::detail
