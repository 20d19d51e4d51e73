#pragma once
/// \file
/// Distance kernels and their run-time SIMD dispatch.
///
/// Every kernel exists at three levels: a portable scalar reference, AVX2+FMA+F16C and AVX-512
/// (F/BW/DQ/VL); a fourth, amx, runs the GEMM on Intel's AMX tiles where the CPU and OS have them. The
/// level is chosen once per process from CPUID — the best the CPU and OS support —
/// unless the environment variable `SHOAL_SIMD=scalar|avx2|avx512|amx` names one (an unavailable or unknown
/// name is an error, reported by the first call that needs the level). The free functions below use the
/// active level; `kernels(level)` returns the table of one level, which tests and benchmarks use to run
/// every level side by side.
///
/// All kernels are `noexcept`, thread-safe and take unaligned pointers. Float kernels accumulate in
/// float32 with a fixed order per level, so a given level returns bit-identical results for the same
/// inputs whether called pairwise or one-to-many; integer kernels are exact at every level.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "shoal/core/types.hpp"

namespace shoal {

/// Instruction-set level of the kernels.
/// `amx` is `avx512` with the GEMM (`inner_product_many`) on the AMX tile unit, each float split into up
/// to three bfloat16 parts (src/distance/amx.cpp): float32-class accuracy, within a float summation
/// bound; every other kernel is avx512's.
enum class simd_level { scalar, avx2, avx512, amx };

/// "scalar", "avx2", "avx512" or "amx".
[[nodiscard]] const char* simd_level_name(simd_level level) noexcept;
/// Name of the level in use (see `active_simd_level`).
[[nodiscard]] const char* simd_level_name();
/// The level this process runs: the best available, or `SHOAL_SIMD`. Throws `shoal::error`
/// (`errc::unsupported` / `errc::invalid_argument`) when `SHOAL_SIMD` names a level the CPU lacks or no level.
[[nodiscard]] simd_level active_simd_level();
/// Whether this CPU (and OS) can run `level`.
[[nodiscard]] bool simd_level_available(simd_level level) noexcept;
/// Every level this CPU can run, scalar first.
[[nodiscard]] std::vector<simd_level> available_simd_levels();

/// Function table of one SIMD level. Shapes:
///  - pair: `f(a, b, dim)`;
///  - one-to-many: `f(q, x, n, dim, stride, out)`: out[i] = f(q, x + i * stride) for i < n;
///  - `inner_product_many`: `c[i * ldc + j] = ⟨a_i, b_j⟩` for i < na, j < nb (a blocked GEMM, a·bᵀ);
///  - `squared_norms`: out[i] = ‖x_i‖².
/// `cosine_distance` is 1 − ⟨a,b⟩ / (‖a‖‖b‖), and 1 when either vector is zero.
struct distance_kernels {
  simd_level level;
  float (*l2sqr)(const float* a, const float* b, std::size_t dim) noexcept;
  float (*inner_product)(const float* a, const float* b, std::size_t dim) noexcept;
  float (*cosine_distance)(const float* a, const float* b, std::size_t dim) noexcept;
  void (*l2sqr_one_to_many)(const float* q, const float* x, std::size_t n, std::size_t dim, std::size_t stride,
                            float* out) noexcept;
  void (*inner_product_one_to_many)(const float* q, const float* x, std::size_t n, std::size_t dim, std::size_t stride,
                                    float* out) noexcept;
  void (*cosine_distance_one_to_many)(const float* q, const float* x, std::size_t n, std::size_t dim,
                                      std::size_t stride, float* out) noexcept;
  /// out[i] = pair(q, xs[i]) for vectors scattered in memory (graph neighbours), bit-identical to the pair
  /// kernel; each vector is prefetched whole a couple of rows before it is scored.
  void (*l2sqr_gather)(const float* q, const float* const* xs, std::size_t n, std::size_t dim, float* out) noexcept;
  void (*inner_product_gather)(const float* q, const float* const* xs, std::size_t n, std::size_t dim,
                               float* out) noexcept;
  /// Σ a_j · c_j of int16 coefficients and uint8 codes (the inner loop of scalar-quantized distances,
  /// with the query's coefficients rounded to integers), its gather form, and its one-to-many form over n
  /// rows of `dim` codes stored back to back. Exact, so identical at
  /// every level, when every |a_j| ≤ `dot_u8_i16_limit(dim)`; beyond that the sum wraps modulo 2^32.
  std::int32_t (*dot_u8_i16)(const std::int16_t* a, const std::uint8_t* c, std::size_t dim) noexcept;
  void (*dot_u8_i16_gather)(const std::int16_t* a, const std::uint8_t* const* codes, std::size_t n, std::size_t dim,
                            std::int32_t* out) noexcept;
  void (*dot_u8_i16_one_to_many)(const std::int16_t* a, const std::uint8_t* codes, std::size_t n, std::size_t dim,
                                 std::int32_t* out) noexcept;
  /// The same over 4-bit codes packed by `pack_u4` (`u4_code_bytes(dim)` bytes a row), under the same
  /// coefficient limit.
  std::int32_t (*dot_u4_i16)(const std::int16_t* a, const std::uint8_t* c, std::size_t dim) noexcept;
  void (*dot_u4_i16_gather)(const std::int16_t* a, const std::uint8_t* const* codes, std::size_t n, std::size_t dim,
                            std::int32_t* out) noexcept;
  void (*squared_norms)(const float* x, std::size_t n, std::size_t dim, std::size_t stride, float* out) noexcept;
  void (*inner_product_many)(const float* a, std::size_t na, std::size_t lda, const float* b, std::size_t nb,
                             std::size_t ldb, std::size_t dim, float* c, std::size_t ldc) noexcept;
  /// The nearest of a row of centroids, from a GEMM row of inner products `ip` (n of them): rank scores
  /// s_j = norms[j] − 2 · ip[j] (‖c‖² − 2⟨x, c⟩, the L2 ranking) or −ip[j] when `norms` is null, NaN
  /// ranked as +∞; when the smallest is below `*best`, it goes to `*best` and its first position to
  /// `*at` (unless `at` is null: then only the minimum is wanted, and no position is searched for). Exact,
  /// so identical at every level (2 · ip needs no rounding, a minimum none).
  void (*rank_argmin)(const float* ip, const float* norms, std::size_t n, float* best, std::uint32_t* at) noexcept;
  /// The rank scores of a GEMM row (as `rank_argmin` defines them, NaN as +∞) that are at most `bound`:
  /// their positions, ascending, into `at` and the scores into `scores` (room for n each); returns their
  /// count. The IVF coarse pass keeps its nprobe best with it, passing its heap's current threshold.
  /// Exact, so identical at every level.
  std::size_t (*rank_filter)(const float* ip, const float* norms, std::size_t n, float bound, std::uint32_t* at,
                             float* scores) noexcept;
  /// Squared L2 and inner product of 8-bit vectors: exact for dim ≤ `int_kernel_max_dim` (33,025:
  /// 255² · dim < 2³¹); longer sums wrap modulo 2³².
  std::uint32_t (*l2sqr_u8)(const std::uint8_t* a, const std::uint8_t* b, std::size_t dim) noexcept;
  std::int32_t (*inner_product_u8)(const std::uint8_t* a, const std::uint8_t* b, std::size_t dim) noexcept;
  std::uint32_t (*l2sqr_i8)(const std::int8_t* a, const std::int8_t* b, std::size_t dim) noexcept;
  std::int32_t (*inner_product_i8)(const std::int8_t* a, const std::int8_t* b, std::size_t dim) noexcept;
};

/// The table of `level`; throws `shoal::error` (`errc::unsupported`) if the CPU cannot run it.
[[nodiscard]] const distance_kernels& kernels(simd_level level);
/// The table of the active level (resolved once, then a pointer load).
[[nodiscard]] const distance_kernels& active_kernels();

/// Pairwise kernels at the active level.
[[nodiscard]] float l2sqr(const float* a, const float* b, std::size_t dim);
[[nodiscard]] float inner_product(const float* a, const float* b, std::size_t dim);
[[nodiscard]] float cosine_distance(const float* a, const float* b, std::size_t dim);

/// The longest 8-bit vectors whose integer kernels (`l2sqr_u8`, `inner_product_u8`, `l2sqr_i8`,
/// `inner_product_i8`) are exact: every product is at most 255² in magnitude, and 255² · 33,025 < 2³¹.
inline constexpr std::size_t int_kernel_max_dim = 33025;

/// The largest |a_j| for which `dot_u8_i16` over `dim` components is exact: (2^31 − 1) / (255 · dim),
/// capped at the int16 range (10,741 at 784 dimensions, a relative rounding step of 5·10⁻⁵).
[[nodiscard]] constexpr std::int32_t dot_u8_i16_limit(std::size_t dim) noexcept {
  const std::size_t limit = dim == 0 ? 32767 : std::size_t{2147483647} / (255 * dim);
  return static_cast<std::int32_t>(limit < 32767 ? limit : 32767);
}

/// Bytes of `dim` 4-bit codes as `pack_u4` packs them: 16 per block of 32 components (the last block
/// padded with zero codes).
[[nodiscard]] constexpr std::size_t u4_code_bytes(std::size_t dim) noexcept { return (dim + 31) / 32 * 16; }

/// Component j of 4-bit codes packed by `pack_u4`.
[[nodiscard]] constexpr std::uint8_t u4_code(const std::uint8_t* packed, std::size_t j) noexcept {
  const std::uint8_t byte = packed[j / 32 * 16 + j % 16];
  return static_cast<std::uint8_t>(j % 32 < 16 ? byte & 0x0fu : byte >> 4);
}

/// Packs `dim` codes in [0, 15] into `u4_code_bytes(dim)` bytes at `out`: in each block of 32
/// components, byte b holds component b (low nibble) and component 16 + b (high nibble), the layout
/// `dot_u4_i16` reads with one load per block. Codes above 15 lose their high bits.
constexpr void pack_u4(const std::uint8_t* codes, std::size_t dim, std::uint8_t* out) noexcept {
  for (std::size_t b = 0; b < u4_code_bytes(dim); ++b) out[b] = 0;
  for (std::size_t j = 0; j < dim; ++j)
    out[j / 32 * 16 + j % 16] |= static_cast<std::uint8_t>((codes[j] & 0x0fu) << (j % 32 < 16 ? 0 : 4));
}

/// `metric`'s distance (see `shoal::metric`) between two vectors at the active level. For cosine it
/// normalises on the fly, so it needs no pre-normalised inputs. Throws `shoal::error`
/// (`errc::invalid_argument`) for a metric outside the enumeration; values are not checked.
[[nodiscard]] float distance(metric m, const float* a, const float* b, std::size_t dim);

/// Many-to-many distances: out[i * ldo + j] = distance(m, a_i, b_j), computed blockwise through the
/// GEMM kernel (‖a‖² − 2⟨a,b⟩ + ‖b‖² for L2). Rounding therefore differs slightly from the pairwise
/// kernels. Throws `shoal::error`: `errc::dimension_mismatch` if the dims differ, `errc::invalid_argument`
/// for `ldo < b.rows`, an unknown metric, a null `out` or one whose rows overlap `a` or `b` (when there is
/// a distance to write), `errc::non_finite` for a NaN/Inf value or a row past the norm bound every index
/// applies (the GEMM form would report such rows at distance 0).
void distances_many(metric m, matrix_view<const float> a, matrix_view<const float> b, float* out, std::size_t ldo);

}  // namespace shoal
