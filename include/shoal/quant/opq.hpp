#pragma once
/// \file
/// Optimized product quantization (Ge, He, Ke & Sun, 2013; the non-parametric variant): an orthogonal
/// rotation R learned so that the rotated data x·R is quantized by a product quantizer with less error.
/// Correlated data (CLIP embeddings, images) spreads its variance unevenly over the sub-spaces; a
/// rotation evens it out. Distances are unchanged by an orthogonal map, so rotated vectors and queries
/// can be searched as they are.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "shoal/core/types.hpp"
#include "shoal/quant/pq.hpp"

namespace shoal {

/// How `opq_rotation::train` alternates.
struct opq_train_params {
  /// Outer iterations: PQ training on the rotated data, then the rotation's Procrustes update.
  std::size_t iterations = 8;
  /// k-means iterations of each inner PQ training.
  std::size_t pq_iterations = 4;
  /// Training vectors used (a seeded sample; 0: all).
  std::size_t max_training_vectors = 16384;
  std::uint64_t seed = 1234;
};

/// A learned dim x dim orthogonal rotation for a product quantizer with m sub-quantizers of nbits.
///
/// Training alternates (Ge et al., OPQ-NP): with R fixed, train the PQ on X·R and reconstruct Ŷ; with the
/// codes fixed, R = argmin ‖X·R − Ŷ‖ over orthogonal R, the orthogonal Procrustes problem, solved by the
/// SVD Xᵀ·Ŷ = U·Σ·Vᵀ → R = U·Vᵀ (Eigen). The alternation only refines where it starts, so it starts
/// from the better (by the first PQ's error) of two: the identity (plain PQ) and the parametric
/// solution of the same paper (eigenvalue allocation: the principal directions dealt out to the
/// sub-spaces so that their products of variances even out). Neither wins everywhere: the identity
/// on SIFT and CLIP embeddings, the allocation where the variance sits in a few dimensions (src/quant/opq.cpp
/// has the numbers). Each iteration trains its PQ afresh (seed + iteration), so the training error tends to fall but
/// may rise from one iteration to the next — by a few percent on uniform data, more than the 1% that PQ alone varies by
/// seed. `apply` may write over its input. Thread safety: `train` needs exclusive access; `apply` may run concurrently.
class opq_rotation {
 public:
  /// Throws `shoal::error` as `product_quantizer(dim, m, nbits)` does.
  opq_rotation(std::size_t dim, std::size_t m, std::size_t nbits = 8);
  /// A trained rotation with the given matrix, row-major dim x dim as `matrix_values()` returns it — e.g.
  /// read back from an index file (`errors()` is then empty). Throws `shoal::error` as the constructor
  /// does, and on a wrong size or a non-finite value.
  [[nodiscard]] static opq_rotation with_rotation(std::size_t dim, std::size_t m, std::size_t nbits,
                                                  std::vector<float> rotation);

  [[nodiscard]] std::size_t dim() const noexcept { return dim_; }
  [[nodiscard]] bool is_trained() const noexcept { return !rotation_.empty(); }
  /// The rotation, row-major dim x dim (empty before training).
  [[nodiscard]] const std::vector<float>& matrix_values() const noexcept { return rotation_; }
  /// An upper bound of ‖apply(x)‖ / ‖x‖, float rounding included: sqrt(max column L1 · max row L1) of R
  /// (a bound of its spectral norm, √dim at most for an orthogonal R), times 1 + dim · 2⁻²³. Computed
  /// from the matrix itself, so it holds for a loaded one too, orthogonal or not (0 before training).
  [[nodiscard]] double norm_gain() const noexcept { return gain_; }
  /// Mean squared reconstruction error of the training sample after each outer iteration (the first:
  /// of the start kept).
  [[nodiscard]] const std::vector<double>& errors() const noexcept { return errors_; }

  /// Learns R from `vectors`. Throws `shoal::error` on a dimension mismatch, NaN/Inf or fewer than
  /// 2^nbits vectors.
  void train(matrix_view<const float> vectors, const opq_train_params& params = {});
  /// `out` = `vectors` · R (rows x dim). Throws `shoal::error` if untrained or on a shape mismatch.
  void apply(matrix_view<const float> vectors, matrix_view<float> out) const;
  /// Allocating form of `apply`.
  [[nodiscard]] matrix<float> apply(matrix_view<const float> vectors) const;

 private:
  std::size_t dim_;
  std::size_t m_;
  std::size_t nbits_;
  std::vector<float> rotation_;
  std::vector<float> columns_;  // R transposed: `apply` scores a row against each column
  double gain_ = 0.0;           // norm_gain()
  /// Sets `rotation_`, `columns_` and `gain_`.
  void set_rotation(std::vector<float> rotation);
  std::vector<double> errors_;
};

}  // namespace shoal
