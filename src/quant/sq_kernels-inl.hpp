// Scalar-quantizer distance kernels, compiled once per SIMD level: included by pq_scalar.cpp,
// pq_avx2.cpp and pq_avx512.cpp right after pq_kernels-inl.hpp, with the same SHOAL_PQ_NS /
// SHOAL_PQ_LEVEL / SHOAL_PQ_ISA definitions (see there). The AVX-512 level runs the AVX2 code for SQ8:
// that kernel streams `dim` bytes per call, and 256-bit registers already keep up with the loads; fp16
// has a 512-bit kernel of its own (see fp16_distance_avx512).
//
// fp16 is widened with F16C's vcvtph2ps at the AVX2 and AVX-512 levels (which require F16C), and in
// the scalar reference with integer operations: the 15 low bits shifted into place and scaled by 2^112
// re-bias the exponent exactly (subnormal halves become normal floats), Inf/NaN get the all-ones
// exponent, and the sign is or-ed back. Both conversions are exact, so decoded fp16 values are identical
// at every level (NaN payloads aside).
//
// SQ8 components are decoded as fma(code, step, min), one rounding, written out at every level (and in
// `scalar_quantizer::decode`): a separate multiply and add would be fused by GCC in the -mfma objects
// (-ffp-contract=fast, the GNU dialect's default) but not at the baseline, and round differently.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "distance/widen_sum.hpp"
#include "shoal/quant/sq.hpp"

#if SHOAL_PQ_ISA > 0
#include <immintrin.h>
#endif

namespace shoal::detail::SHOAL_PQ_NS {
namespace {

inline float widen_half(std::uint16_t h) noexcept {
  const std::uint32_t em = h & 0x7fffu;
  std::uint32_t bits = em << 13;
  float f = 0.0f;
  std::memcpy(&f, &bits, sizeof f);
  f *= 0x1.0p112f;
  std::memcpy(&bits, &f, sizeof f);
  if (em >= 0x7c00u) bits |= 0x7f800000u;
  bits |= static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

#if SHOAL_PQ_ISA > 0
inline __m256 widen8_u8(const std::uint8_t* c) noexcept {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c))));
}
inline __m256 widen8_half(const std::uint8_t* c) noexcept {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c)));
}
#endif

/// Σ over d of Term(q_d, decoded_d); `Decode8` widens 8 components, `Decode1` one.
template <bool L2, class Decode8, class Decode1>
inline float sq_sum(const float* q, std::size_t dim, const Decode8& decode8, const Decode1& decode1) noexcept {
  std::size_t d = 0;
  float sum = 0.0f;
#if SHOAL_PQ_ISA > 0
  const auto term = [&](std::size_t at, __m256 acc) {
    const __m256 x = decode8(at), y = _mm256_loadu_ps(q + at);
    if constexpr (L2) {
      const __m256 e = _mm256_sub_ps(y, x);
      return _mm256_fmadd_ps(e, e, acc);
    } else {
      return _mm256_fmadd_ps(y, x, acc);
    }
  };
  sum = sum8x4(dim, d, term);
#else
  (void)decode8;
#endif
  for (; d < dim; ++d) {
    const float x = decode1(d);
    sum += L2 ? (q[d] - x) * (q[d] - x) : q[d] * x;
  }
  return sum;
}

template <bool L2>
float sq8_distance(const float* q, const std::uint8_t* code, const float* min, const float* step,
                   std::size_t dim) noexcept {
#if SHOAL_PQ_ISA > 0
  const auto decode8 = [&](std::size_t d) {
    return _mm256_fmadd_ps(widen8_u8(code + d), _mm256_loadu_ps(step + d), _mm256_loadu_ps(min + d));
  };
#else
  const auto decode8 = [](std::size_t) { return 0; };
#endif
  const auto decode1 = [&](std::size_t d) { return std::fma(static_cast<float>(code[d]), step[d], min[d]); };
  return sq_sum<L2>(q, dim, decode8, decode1);
}

#if SHOAL_PQ_ISA == 512
/// The AVX-512 fp16 kernel: 16 halves widened per vcvtph2ps, four accumulators, a masked tail. Full scans
/// of many rows that sit in cache (the IVF coarse prefilter over every centroid) are bound by the
/// widening and the FMAs here, not by loads, so the wider registers pay (unlike the SQ8 kernel).
template <bool L2>
float fp16_distance_avx512(const float* q, const std::uint8_t* code, std::size_t dim) noexcept {
  const auto step = [&](std::size_t d, __mmask16 m, __m512 acc) {
    const __m512 x = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, code + 2 * d));
    const __m512 y = _mm512_maskz_loadu_ps(m, q + d);
    if constexpr (L2) {
      const __m512 e = _mm512_sub_ps(y, x);
      return _mm512_fmadd_ps(e, e, acc);
    } else {
      return _mm512_fmadd_ps(y, x, acc);
    }
  };
  return sum16x4(dim, step);
}
#endif

template <bool L2>
float fp16_distance(const float* q, const std::uint8_t* code, std::size_t dim) noexcept {
#if SHOAL_PQ_ISA == 512
  return fp16_distance_avx512<L2>(q, code, dim);
#else
#if SHOAL_PQ_ISA > 0
  const auto decode8 = [&](std::size_t d) { return widen8_half(code + 2 * d); };
#else
  const auto decode8 = [](std::size_t) { return 0; };
#endif
  const auto decode1 = [&](std::size_t d) {
    return widen_half(static_cast<std::uint16_t>(code[2 * d] | (code[2 * d + 1] << 8)));
  };
  return sq_sum<L2>(q, dim, decode8, decode1);
#endif
}

}  // namespace

const sq_kernels& sq_table() noexcept {
  static constexpr sq_kernels k{
      .level = SHOAL_PQ_LEVEL,
      .sq8_l2 = sq8_distance<true>,
      .sq8_ip = sq8_distance<false>,
      .fp16_l2 = fp16_distance<true>,
      .fp16_ip = fp16_distance<false>,
  };
  return k;
}

}  // namespace shoal::detail::SHOAL_PQ_NS
