#pragma once
/// \file
/// Scalar quantizers: every component of a vector is stored on its own in fewer bits.
///  - `sq_type::sq8`: one byte per component, uniform over a per-dimension range learnt in training
///    (`train`: the extremes, or a narrower range for heavy tails): x_d ≈ min_d + code_d · step_d (one
///    fused multiply-add), step_d = (max_d − min_d) / 255, values outside the range clamped to its ends;
///  - `sq_type::fp16`: IEEE half precision (round to nearest even), no training.
/// Distances go from a float query to the codes without decoding to memory.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "shoal/core/types.hpp"
#include "shoal/distance/distance.hpp"

namespace shoal {

/// Code format of a `scalar_quantizer`.
enum class sq_type { sq8, fp16 };

/// Scalar quantizer of `dim`-dimensional vectors.
///
/// Thread safety: `train` needs exclusive access; every const member may be called concurrently.
class scalar_quantizer {
 public:
  /// Throws `shoal::error` if dim is 0.
  scalar_quantizer(std::size_t dim, sq_type type);

  [[nodiscard]] std::size_t dim() const noexcept { return dim_; }
  [[nodiscard]] sq_type type() const noexcept { return type_; }
  /// Bytes per encoded vector: dim (sq8) or 2 · dim (fp16).
  [[nodiscard]] std::size_t code_size() const noexcept { return type_ == sq_type::sq8 ? dim_ : 2 * dim_; }
  /// fp16 needs no training; sq8 is trained once `train` has seen data.
  [[nodiscard]] bool is_trained() const noexcept { return type_ == sq_type::fp16 || !step_.empty(); }

  /// An sq8 quantizer with the given per-dimension minima and steps (as `mins()` / `steps()` return
  /// them, e.g. read back from a file). Throws `shoal::error` if the sizes differ or are 0, `top_code` is
  /// outside 1-255, a value is not finite, a step is negative, or a dimension's range ends (code 0 or `top_code`: 15
  /// for 4-bit codes sharing these ranges) past the vector norm bound (`errc::non_finite`) — what no vector an index
  /// accepts has, so training on accepted vectors never gives it.
  [[nodiscard]] static scalar_quantizer sq8_with_ranges(std::vector<float> mins, std::vector<float> steps,
                                                        unsigned top_code = 255);

  /// sq8: learns each dimension's range from `vectors`, `top_code` steps over it (255; 15 for 4-bit
  /// codes that share these ranges, as `hnsw_index`'s SQ4 does): [min, max], except where heavy tails or
  /// a few outliers stretch it so far that clamping them to a narrower range costs less squared error
  /// than the coarse steps cost every other value (by the model of `detail::code_range_model`, src/quant/sq_range.hpp;
  /// kept only where it cuts that error at least 4-fold, so light-tailed data keeps [min, max] exactly). A constant
  /// dimension gets step 0 and decodes to its value. fp16: only checks the input. Throws `shoal::error` on a dimension
  /// mismatch, NaN/Inf, a row whose norm exceeds `check_vectors`' bound (≈ 6.5e18, which keeps every max − min and step
  /// finite), no rows, or `top_code` outside 1-255.
  void train(matrix_view<const float> vectors, unsigned top_code = 255);

  /// Codes of `vectors` into `codes` (rows · code_size bytes; fp16 as little-endian 16-bit words).
  /// sq8 clamps values outside the trained range (codes 0 to `top_code()`), fp16 values beyond ±`max_half`. Throws
  /// `shoal::error` if untrained, on a dimension mismatch or NaN/Inf.
  void encode(matrix_view<const float> vectors, std::uint8_t* codes) const;
  /// Reconstructions of `n` codes into `out` (n x dim). Throws `shoal::error` if untrained or on a bad
  /// output shape.
  void decode(const std::uint8_t* codes, std::size_t n, matrix_view<float> out) const;

  /// Distances (smaller is closer: ‖q − x̂‖² under L2, −⟨q, x̂⟩ under inner product, and under cosine,
  /// for a unit query and codes of unit vectors, ‖q − x̂‖² / 2, which is 1 − ⟨q, x⟩ for x̂ = x) from
  /// `query` (dim floats) to the reconstructions x̂ of the `n` codes at `codes`, into `out`. Why not
  /// 1 − ⟨q, x̂⟩ under cosine: a code's error e = x̂ − x moves that by ⟨q, e⟩, mostly e's part along x
  /// (the reconstruction's length off 1), which ‖q − x̂‖² / 2 cancels to first order (it adds
  /// (‖x̂‖² − 1) / 2 ≈ ⟨x, e⟩). Where rows lie in a narrow cone (embeddings far from the origin, cosine
  /// distances near 1e-5) that error was larger than the gaps between neighbours: an IVF-PQ re-rank
  /// with `Refine(SQ8)` halved R@10 against the codes alone (a review: 0.906 → 0.459, rows offset by
  /// 100). Unchecked apart from training (precondition); active SIMD level.
  void distances(const float* query, metric m, const std::uint8_t* codes, std::size_t n, float* out) const noexcept;

  /// Per-dimension minimum and step of sq8 (empty for fp16 or before training).
  [[nodiscard]] const std::vector<float>& mins() const noexcept { return min_; }
  [[nodiscard]] const std::vector<float>& steps() const noexcept { return step_; }
  /// The largest sq8 code (the `top_code` of `train` or `sq8_with_ranges`; 255 before either).
  [[nodiscard]] unsigned top_code() const noexcept { return top_; }

 private:
  std::size_t dim_;
  sq_type type_;
  std::vector<float> min_;
  std::vector<float> step_;
  unsigned top_ = 255;
};

/// fp16 bits of `x`, round to nearest even (overflow to ±Inf, NaN to a quiet NaN of its sign: 0x7e00 or
/// 0xfe00), and back. Exact inverses on every half value but NaNs (whose payloads are not kept).
[[nodiscard]] std::uint16_t float_to_half(float x) noexcept;
[[nodiscard]] float half_to_float(std::uint16_t h) noexcept;
/// The largest finite half-precision value: fp16 codes saturate at ±max_half (an Inf code would make
/// every distance to it Inf, and the vector drop out of every top-k).
inline constexpr float max_half = 65504.0f;

/// Scalar-quantizer kernels of one SIMD level: distances from a float query to one code (pair form).
///  - `sq8_l2`: Σ_d (q_d − (min_d + c_d · step_d))²;  `sq8_ip`: Σ_d q_d · (min_d + c_d · step_d);
///  - `fp16_l2`: Σ_d (q_d − half(c_d))²;               `fp16_ip`: Σ_d q_d · half(c_d).
/// Float sums: the order differs between levels (tests compare against a double-precision reference with
/// a tolerance); decoded components are identical at every level and to `scalar_quantizer::decode`'s
/// (SQ8: fma(c_d, step_d, min_d), rounded once; fp16: exact), tested bit for bit.
struct sq_kernels {
  simd_level level;
  float (*sq8_l2)(const float* q, const std::uint8_t* code, const float* min, const float* step,
                  std::size_t dim) noexcept;
  float (*sq8_ip)(const float* q, const std::uint8_t* code, const float* min, const float* step,
                  std::size_t dim) noexcept;
  /// fp16 codes as bytes: little-endian 16-bit words, any alignment.
  float (*fp16_l2)(const float* q, const std::uint8_t* code, std::size_t dim) noexcept;
  float (*fp16_ip)(const float* q, const std::uint8_t* code, std::size_t dim) noexcept;
};

/// The SQ kernels of `level`; throws `shoal::error` (`errc::unsupported`) if the CPU cannot run it.
[[nodiscard]] const sq_kernels& scalar_quant_kernels(simd_level level);
/// The SQ kernels of the active level.
[[nodiscard]] const sq_kernels& active_scalar_quant_kernels();

}  // namespace shoal
