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
///  - inner product: −⟨q, x̂⟩ = −⟨q, min⟩ − Σ q_j·step_j·c_j;
///  - cosine (unit q, codes of unit rows): half of L2's, ‖q − x̂‖² / 2, which is 1 − ⟨q, x⟩ at x̂ = x and,
///    unlike 1 − ⟨q, x̂⟩ (until session 44), cancels the error of x̂'s length to first order: on rows in
///    a narrow cone (offset from the origin) that error outweighed the gaps between neighbours, and
///    HNSW16,SQ8 traversal fell to R@10 0.164 where full precision gave 0.851 (SQ4: 0.001; a review's
///    48-d data offset by 1,000). A scorer of non-unit rows under cosine (the IVF coarse pass's
///    centroids) asks for the inner-product form.
/// The middle L2 term (halved under cosine) depends on the codes only (`term`, which a caller keeps beside
/// them). The code coefficients a_j (−2·u_j·step_j under L2, −u_j·step_j under cosine, −q_j·step_j under
/// inner product) are rounded once per query to integers i_j on a grid
/// `unit = max|a_j| / L` with L = `dot_u8_i16_limit(dim)` (10,741 at 784 dimensions), so that Σ i_j·c_j
/// is exact in int32 at every SIMD level and costs one widening and one multiply-add per 32 codes at
/// AVX-512. The rounding moves an estimate by at most unit/2 · Σ c_j — a few parts in 10⁵ of its range
/// while no coefficient dwarfs the rest.
///
/// **Two grids when one does not fit.** One dimension of a far wider range than the others (a single
/// outlier training vector) sets the grid alone and would round every other coefficient to 0 or ±1 (a
/// review measured HNSW SQ8 recall@10 fall from 0.995 to 0.21). So when most nonzero coefficients (the
/// median) lie under 64 steps of the grid — a typical coefficient known to less than 6 bits, where the
/// codes carry 8 — the residuals r_j = a_j − unit·i_j
/// are rounded again on their own grid `unit₂ = max|r_j| / L ≤ unit / 2L`, and an estimate adds
/// unit₂·Σ i₂_j·c_j: a second pass of the same exact kernel, so every SIMD level still agrees with the
/// scalar reference, at twice the integer work for such queries only. Why as few as 64 steps: L shrinks
/// with the dimension (2,741 at 3,072 dimensions), so a fixed step count is a larger share of the
/// largest coefficient there, and a first version that asked for 256 steps of three quarters of the
/// coefficients took two grids for nearly every query of ordinary 3,072-d and 4,096-d inner-product
/// data (a review: HNSW SQ8 searches 1.4-1.75x slower, recall unchanged, rounding errors averaging out
/// over thousands of dimensions). A Gaussian query's median coefficient is about a sixth of its largest,
/// under 64 steps only once L < 384, past 21,900 dimensions. (Why not float coefficients: a
/// float kernel over u8 codes would be a second family of kernels to keep equal at every level, for rare
/// data), and the rounding stays within unit₂/2 · Σ c_j ≤ unit/(4L) · Σ c_j.
class sq8_estimator {
 public:
  /// Σ (step_j·c_j)² of one code row under L2, half that under cosine, 0 under inner product.
  [[nodiscard]] static float term(const scalar_quantizer& sq, metric m, const std::uint8_t* codes);

  /// Sets the estimator up for query `q` (dim floats); `sq` must be a trained sq8 quantizer.
  void prepare(const scalar_quantizer& sq, metric m, const float* q);
  /// The query's integer coefficients, for `dot_u8_i16` / `dot_u8_i16_gather`.
  [[nodiscard]] const std::int16_t* coeffs() const noexcept { return coeffs_.data(); }
  /// Whether the query needs the second grid: then a row's estimate also takes `dot_u8_i16` of
  /// `residual_coeffs()` with its codes.
  [[nodiscard]] bool two_grids() const noexcept { return unit2_ != 0.0f; }
  /// The rounded residuals of the coefficients on the second grid (all 0 without one).
  [[nodiscard]] const std::int16_t* residual_coeffs() const noexcept { return residual_coeffs_.data(); }
  /// The estimate of a row from its `term`, its `dot_u8_i16(coeffs(), codes, dim)` and, with two grids,
  /// its `dot_u8_i16(residual_coeffs(), codes, dim)`.
  [[nodiscard]] float estimate(float row_term, std::int32_t dot, std::int32_t residual_dot = 0) const noexcept {
    return offset_ + row_term + unit_ * static_cast<float>(dot) + unit2_ * static_cast<float>(residual_dot);
  }
  /// The grid of the last rounding: an estimate is off the unrounded one by at most unit/2 · Σ c_j.
  [[nodiscard]] float unit() const noexcept { return two_grids() ? unit2_ : unit_; }
  /// The query-only part of every estimate (‖u‖² under L2).
  [[nodiscard]] float offset() const noexcept { return offset_; }

 private:
  std::vector<float> real_;  // a_j before rounding, then their residuals
  std::vector<std::int16_t> coeffs_;
  std::vector<std::int16_t> residual_coeffs_;
  float unit_ = 1.0f;
  float unit2_ = 0.0f;  // the second grid; 0 without one
  float offset_ = 0.0f;
};

}  // namespace shoal::detail
