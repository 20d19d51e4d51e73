#pragma once
/// \file
/// Linear maps between embedding spaces: `projection` carries one modality's vectors (e.g. 768-d text)
/// into a shared space (e.g. a 512-d image space) so that a query of one modality can search another
/// modality's index. Fitted from paired examples by ridge regression or orthogonal Procrustes, or given.

#include <cstddef>
#include <filesystem>
#include <span>
#include <vector>

#include "shoal/core/types.hpp"

namespace shoal {

/// The affine map y = W·x + b from an `in_dim`-dimensional space to an `out_dim`-dimensional one; W is
/// out_dim x in_dim, row-major, b has out_dim entries. Every value is finite (checked wherever a
/// projection is made: construction, fitting, loading, deserialisation).
///
/// Fitting works on centred data in double precision and streams the training matrices in blocks, so
/// memory is O(in_dim · (in_dim + out_dim)) beyond the inputs, whatever the number of pairs.
///
/// Thread safety: a projection is an immutable value once made; `const` members may run concurrently.
class projection {
 public:
  /// W = `weights` (out_dim x in_dim, row-major: out_dim · in_dim values) and b = `bias` (out_dim
  /// values; empty: zero). Throws `shoal::error`: `errc::invalid_argument` when a dimension is 0 or
  /// above 2^24, `errc::dimension_mismatch` when `weights` or `bias` has the wrong size,
  /// `errc::non_finite` on NaN/Inf.
  projection(std::size_t in_dim, std::size_t out_dim, std::vector<float> weights, std::vector<float> bias = {});

  /// The identity map of `dim`-dimensional vectors (W = I, b = 0): a modality already in the shared space.
  /// Throws `shoal::error` if dim is 0 or above 2^24. W is held dense, dim² floats (4 GiB at 32,768
  /// dimensions): beyond memory, `std::bad_alloc`.
  [[nodiscard]] static projection identity(std::size_t dim);

  /// Ridge regression from paired rows (x_i ↦ y_i): W minimises Σ‖y_i − W·x_i − b‖² + λ‖W‖²_F.
  /// With `fit_bias`, x and y are centred first and b = ȳ − W·x̄ (b is not regularised); otherwise
  /// b = 0 and nothing is centred. Solves (XᵀX + λI)·Wᵀ = XᵀY with a Cholesky (LDLᵀ) factorisation in
  /// double precision. λ is not scaled by the number of rows: it is in the units of XᵀX, a sum over
  /// rows of squared x values. λ = 0 is ordinary least squares and needs XᵀX of full rank.
  ///
  /// Throws `shoal::error`: `errc::invalid_argument` if x and y have different row counts, there are
  /// fewer than 2 rows (1 without `fit_bias`), λ is negative, NaN or infinite, or XᵀX + λI is singular
  /// or nearly so (λ = 0 with fewer independent rows than in_dim: use λ > 0); `errc::non_finite` on
  /// NaN/Inf in x or y.
  [[nodiscard]] static projection fit_ridge(matrix_view<const float> x, matrix_view<const float> y, float lambda,
                                            bool fit_bias = true);

  /// Orthogonal Procrustes from paired rows: W is the orthogonal matrix minimising Σ‖y_i − W·x_i − b‖²,
  /// W = V·Uᵀ from the SVD XᵀY = U·Σ·Vᵀ (Eigen's BDCSVD, double precision). W preserves distances and
  /// angles, so a metric means the same in both spaces; it may be a reflection (det W = −1), which
  /// the problem allows. With `fit_bias`, x and y are centred and b = ȳ − W·x̄; otherwise b = 0. With
  /// too few independent rows, W is one of several minimisers, still orthogonal.
  ///
  /// Throws `shoal::error`: `errc::dimension_mismatch` unless x.dim == y.dim, `errc::invalid_argument`
  /// if x and y have different row counts or there are fewer than 2 rows (1 without `fit_bias`),
  /// `errc::non_finite` on NaN/Inf.
  [[nodiscard]] static projection fit_procrustes(matrix_view<const float> x, matrix_view<const float> y,
                                                 bool fit_bias = true);

  [[nodiscard]] std::size_t in_dim() const noexcept { return in_dim_; }
  [[nodiscard]] std::size_t out_dim() const noexcept { return out_dim_; }
  /// W: out_dim x in_dim values, row-major (row i holds the coefficients of output component i).
  [[nodiscard]] std::span<const float> weights() const noexcept { return weights_; }
  /// b: out_dim values.
  [[nodiscard]] std::span<const float> bias() const noexcept { return bias_; }

  /// Maps each row of `in` (rows x in_dim) into the row of `out` with the same index (rows x out_dim):
  /// one GEMM per call, in single precision. `in` and `out` may overlap (in place: the product goes
  /// through a temporary then). Throws `shoal::error`: `errc::dimension_mismatch` when `in` does not
  /// have in_dim columns or `out` not out_dim, `errc::invalid_argument` when the row counts differ or a
  /// view is malformed, `errc::non_finite` on NaN/Inf in `in` or a row of `in` above the norm bound
  /// every index applies to its vectors (sqrt(FLT_MAX / 8) ≈ 6.5e18), and `errc::non_finite` too when a
  /// finite row projects to one past that bound, Inf or NaN (weights or inputs near float's range; `out`
  /// then holds the product as computed).
  void apply(matrix_view<const float> in, matrix_view<float> out) const;
  /// Allocating form of `apply`: a rows x out_dim matrix.
  [[nodiscard]] matrix<float> apply(matrix_view<const float> in) const;
  /// One vector: `out` (out_dim values) = W·`in` (in_dim values) + b. Equals the batched result up to
  /// float rounding. `in` and `out` may overlap. Throws `shoal::error` (`errc::dimension_mismatch`,
  /// `errc::non_finite`) like the batched form.
  void apply(std::span<const float> in, std::span<float> out) const;

  /// Writes W as a 2-D float32 `.npy` (out_dim x in_dim) to `weights_path` and b as a 1 x out_dim
  /// float32 `.npy` to `bias_path`, each atomically. Throws `shoal::error` (`errc::io_error`;
  /// `invalid_argument` for an empty path or a directory, before anything is written).
  void save_npy(const std::filesystem::path& weights_path, const std::filesystem::path& bias_path) const;
  /// Reads W from a 2-D `.npy` (out_dim x in_dim, any dtype `io::read_npy` converts to float) and b
  /// from `bias_path` — 1 x out_dim, out_dim x 1 or 1-D with out_dim entries — or zero when
  /// `bias_path` is empty (the NumPy convention W @ x of a bias-free map). Throws `shoal::error`: the
  /// errors of `io::read_npy`, `errc::dimension_mismatch` for 1-D weights or a bias of the wrong shape,
  /// `errc::non_finite` (naming the file) for a NaN/Inf value, and those of the constructor. Every
  /// projection `save_npy` wrote loads back.
  [[nodiscard]] static projection load_npy(const std::filesystem::path& weights_path,
                                           const std::filesystem::path& bias_path = {});

  /// A compact, self-checking binary form, for storing a projection inside other files (a collection's
  /// directory): fixed-width little-endian fields —
  ///   magic "SHOALPRJ" (8 bytes), u16 format major (1), u16 format minor (0), u32 reserved (0),
  ///   u64 in_dim, u64 out_dim, f32 W[out_dim · in_dim] (row-major), f32 b[out_dim],
  ///   u32 CRC-32C of every preceding byte —
  /// 36 + 4 · out_dim · (in_dim + 1) bytes in all. The format version is this encoding's own.
  [[nodiscard]] std::vector<std::byte> serialize() const;
  /// Reads the bytes of `serialize`, exactly (no trailing bytes). Throws `shoal::error`:
  /// `errc::corrupt_file` when they are truncated, too long, have a bad magic, a non-zero reserved
  /// field, a dimension out of range, a checksum mismatch or a NaN/Inf value; `errc::unsupported` for a
  /// newer major version.
  [[nodiscard]] static projection deserialize(std::span<const std::byte> bytes);

  /// Same dimensions and equal values (compared as floats).
  friend bool operator==(const projection&, const projection&) = default;

 private:
  std::size_t in_dim_;
  std::size_t out_dim_;
  std::vector<float> weights_;
  std::vector<float> bias_;
};

}  // namespace shoal
