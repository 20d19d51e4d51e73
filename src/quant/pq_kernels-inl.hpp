// Product-quantization scan kernels, written once and compiled once per SIMD level.
//
// Not include-guarded, like distance/kernels-inl.hpp: each of pq_scalar.cpp, pq_avx2.cpp and
// pq_avx512.cpp defines
//   SHOAL_PQ_NS     the namespace (under shoal::detail) that holds this level's code,
//   SHOAL_PQ_LEVEL  the simd_level it reports, and
//   SHOAL_PQ_ISA    0 (scalar reference), 2 (AVX2) or 512 (AVX-512BW),
// then includes this file with its own ISA flags. Only the `pq_kernels` table of function pointers
// leaves the file.
//
// Fast-scan (4-bit codes, layout in shoal/quant/pq.hpp): the quantized tables of two sub-quantizers fill
// one 256-bit register, one per 128-bit lane, and the 32 bytes of a sub-quantizer pair in a block hold
// their codes in the same lanes, low nibble for vectors 0..15 and high nibble for vectors 16..31. A
// byte shuffle then looks the 32 codes of one nibble up in one instruction. The looked-up bytes are
// summed in 16-bit lanes: whole lanes (even byte + 256 · odd byte, wrapping mod 2^16) in one
// accumulator and the odd bytes (shifted down by 8) in another; at the flush, even = whole − 256 · odd
// (mod 2^16, exact because the true even sum fits 16 bits). No byte is ever unpacked. Each 16-bit lane receives one
// byte per iteration, so 256 iterations (at most 255 · 256 = 65280) cannot overflow; after at most 256 iterations the
// lanes are flushed into 32-bit sums. Integer sums are exact, so every level returns the scalar reference's values.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "shoal/quant/pq.hpp"

#if SHOAL_PQ_ISA > 0
#include <immintrin.h>
#elif defined(__SSE2__)
#include <emmintrin.h>  // the baseline x86-64 ISA: `quantize_saturated`'s row loops
#endif

namespace shoal::detail {

/// The saturated quantization (docs/pq.md, "outlier entries"): each row may set aside its
/// `saturated_per_row` largest entries; the widest range of what is left, `robust`, gives the scale
/// 255 / robust when it is narrower than the widest row range by more than `outlier_gain`, and the
/// entries set aside beyond it saturate at code 255.
inline constexpr std::size_t saturated_per_row = 3;
inline constexpr float outlier_gain = 16.0f;

/// Quantizes a quantizable table (see `quantize`) the saturated way when its rule holds, and returns
/// true; returns false, having written nothing, when it does not. Plain scalar code defined once (in
/// pq_scalar.cpp, without FMA contraction), which every level calls, so every level's saturated tables
/// are the reference's exactly.
bool quantize_saturated(const float* table, std::size_t m, std::uint8_t* out, float* bias_out,
                        float* scale_out) noexcept;

#if SHOAL_PQ_ISA == 0
// Row helpers of the scalar TU: the reference `quantize` and `quantize_saturated` (below) share them.
namespace {

/// The smallest and largest entries of a 16-entry row (exact: min and max round nothing).
inline void row_range(const float* row, float& lo, float& hi) noexcept {
#if defined(__SSE2__)
  __m128 a = _mm_min_ps(_mm_min_ps(_mm_loadu_ps(row), _mm_loadu_ps(row + 4)),
                        _mm_min_ps(_mm_loadu_ps(row + 8), _mm_loadu_ps(row + 12)));
  __m128 b = _mm_max_ps(_mm_max_ps(_mm_loadu_ps(row), _mm_loadu_ps(row + 4)),
                        _mm_max_ps(_mm_loadu_ps(row + 8), _mm_loadu_ps(row + 12)));
  a = _mm_min_ps(a, _mm_shuffle_ps(a, a, _MM_SHUFFLE(1, 0, 3, 2)));
  b = _mm_max_ps(b, _mm_shuffle_ps(b, b, _MM_SHUFFLE(1, 0, 3, 2)));
  lo = _mm_cvtss_f32(_mm_min_ss(a, _mm_shuffle_ps(a, a, _MM_SHUFFLE(2, 3, 0, 1))));
  hi = _mm_cvtss_f32(_mm_max_ss(b, _mm_shuffle_ps(b, b, _MM_SHUFFLE(2, 3, 0, 1))));
#else
  lo = hi = row[0];
  for (std::size_t c = 1; c < 16; ++c) {
    lo = std::min(lo, row[c]);
    hi = std::max(hi, row[c]);
  }
#endif
}

/// The fourth largest entry of a 16-entry row (ties counted: the sorted row's [12]).
inline float fourth_largest(const float* row) noexcept {
#if defined(__SSE2__)
  // Three times: the largest entry left, and how often it occurs; where that covers the entries still to
  // set aside it is the answer, else they all go (set to −∞). Branch-light: a row's order is data, and
  // an insertion walk mispredicted on it.
  __m128 v[4] = {_mm_loadu_ps(row), _mm_loadu_ps(row + 4), _mm_loadu_ps(row + 8), _mm_loadu_ps(row + 12)};
  const __m128 gone = _mm_set1_ps(-INFINITY);
  const auto largest = [&v] {
    __m128 b = _mm_max_ps(_mm_max_ps(v[0], v[1]), _mm_max_ps(v[2], v[3]));
    b = _mm_max_ps(b, _mm_shuffle_ps(b, b, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm_max_ps(b, _mm_shuffle_ps(b, b, _MM_SHUFFLE(2, 3, 0, 1)));  // in every lane
  };
  // Set bits of a 4-bit mask (a table: the baseline ISA has no popcnt, and GCC calls a libgcc routine).
  static constexpr int bits[16] = {0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4};
  int left = 3;  // entries still to set aside
  for (;;) {
    const __m128 top = largest();
    int count = 0;
    __m128 eq[4];
    for (int i = 0; i < 4; ++i) {
      eq[i] = _mm_cmpeq_ps(v[i], top);
      count += bits[_mm_movemask_ps(eq[i])];
    }
    // count = 0 only for a NaN entry, which no caller passes (they refuse NaN tables first): returned
    // rather than looping.
    if (count > left || count == 0) return _mm_cvtss_f32(top);
    left -= count;
    for (int i = 0; i < 4; ++i) v[i] = _mm_or_ps(_mm_and_ps(eq[i], gone), _mm_andnot_ps(eq[i], v[i]));
    if (left == 0) return _mm_cvtss_f32(largest());
  }
#else
  float top[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};  // descending
  for (std::size_t c = 0; c < 16; ++c) {
    if (!(row[c] > top[3])) continue;
    top[3] = row[c];
    for (std::size_t i = 3; i > 0 && top[i] > top[i - 1]; --i) std::swap(top[i], top[i - 1]);
  }
  return top[3];
#endif
}

/// out[c] = min((row[c] − lo) · scale + 0.5, 255), truncated to a byte, for the 16 entries of a row.
inline void quantize_row(const float* row, float lo, float scale, std::uint8_t* out) noexcept {
#if defined(__SSE2__)
  // The same operations as the scalar form, four lanes at a time (IEEE sub, mul, add and min round
  // alike in either; cvttps2dq truncates as the cast does), so the bytes are the reference's.
  const __m128 vlo = _mm_set1_ps(lo), vscale = _mm_set1_ps(scale);
  const __m128 half = _mm_set1_ps(0.5f), top = _mm_set1_ps(255.0f);
  __m128i q[4];
  for (std::size_t i = 0; i < 4; ++i) {
    const __m128 x = _mm_sub_ps(_mm_loadu_ps(row + 4 * i), vlo);
    // min(v, 255) as std::min(v, 255.0f): v where v < 255, else 255 (v is never NaN here).
    q[i] = _mm_cvttps_epi32(_mm_min_ps(_mm_add_ps(_mm_mul_ps(x, vscale), half), top));
  }
  const __m128i bytes = _mm_packus_epi16(_mm_packs_epi32(q[0], q[1]), _mm_packs_epi32(q[2], q[3]));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), bytes);
#else
  for (std::size_t c = 0; c < 16; ++c)
    out[c] = static_cast<std::uint8_t>(static_cast<std::int32_t>(std::min((row[c] - lo) * scale + 0.5f, 255.0f)));
#endif
}

}  // namespace
#endif

}  // namespace shoal::detail

namespace shoal::detail::SHOAL_PQ_NS {
namespace {

/// 16-bit lane flush period, in loop iterations (see above).
constexpr std::size_t flush_every = 256;

#if SHOAL_PQ_ISA == 0
void fast_scan(const std::uint8_t* packed, std::size_t nblocks, std::size_t m, const std::uint8_t* table,
               std::uint32_t* out) noexcept {
  const std::size_t pairs = (m + 1) / 2;
  const std::size_t block_bytes = 32 * pairs;
  for (std::size_t b = 0; b < nblocks; ++b) {
    const std::uint8_t* block = packed + b * block_bytes;
    std::uint32_t acc[fast_scan_block] = {};
    for (std::size_t p = 0; p < pairs; ++p) {
      const std::uint8_t* chunk = block + 32 * p;
      for (std::size_t half = 0; half < 2; ++half) {
        const std::uint8_t* t = table + (2 * p + half) * 16;
        for (std::size_t j = 0; j < 16; ++j) {
          const std::uint8_t byte = chunk[16 * half + j];
          acc[j] += t[byte & 15u];
          acc[j + 16] += t[byte >> 4];
        }
      }
    }
    std::copy_n(acc, fast_scan_block, out + b * fast_scan_block);
  }
}
#else
/// Adds the 16-bit accumulator lanes of a block to its 32 sums at `acc`. `even_lo` holds vector 2k in
/// 16-bit lane k of its low 128 bits (even sub-quantizers) and of its high 128 bits (odd ones), `odd_lo`
/// vector 2k + 1, `even_hi` and `odd_hi` the same for vectors 16..31. In registers: each half widened to
/// 32 bits (a vector's two halves may add up past 2^16), the halves added, the even and odd vectors
/// interleaved back into vector order. (Through stored lanes and a scalar loop, which the compiler
/// turned into lane extracts, this was about a quarter of a block's time at m = 64.)
inline void add_lanes(__m256i even_lo, __m256i odd_lo, __m256i even_hi, __m256i odd_hi, std::uint32_t* acc) noexcept {
  const auto widen = [](__m256i v) {
    return _mm256_add_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(v)),
                            _mm256_cvtepu16_epi32(_mm256_extracti128_si256(v, 1)));
  };
  const auto add = [&](__m256i even, __m256i odd, std::uint32_t* sums) {
    const __m256i e = widen(even), o = widen(odd);
    const __m256i lo = _mm256_unpacklo_epi32(e, o);  // vectors 0-3 | 8-11
    const __m256i hi = _mm256_unpackhi_epi32(e, o);  // vectors 4-7 | 12-15
    auto* at = reinterpret_cast<__m256i*>(sums);
    _mm256_storeu_si256(at, _mm256_add_epi32(_mm256_loadu_si256(at), _mm256_permute2x128_si256(lo, hi, 0x20)));
    _mm256_storeu_si256(at + 1, _mm256_add_epi32(_mm256_loadu_si256(at + 1), _mm256_permute2x128_si256(lo, hi, 0x31)));
  };
  add(even_lo, odd_lo, acc);
  add(even_hi, odd_hi, acc + 16);
}

/// Zeroes the 32 sums of a block (four stores; `std::fill_n` became a `rep stos`, slow to start).
inline void clear_block(std::uint32_t* acc) noexcept {
  auto* at = reinterpret_cast<__m256i*>(acc);
  for (int i = 0; i < 4; ++i) _mm256_storeu_si256(at + i, _mm256_setzero_si256());
}
#endif

#if SHOAL_PQ_ISA == 2
void fast_scan(const std::uint8_t* packed, std::size_t nblocks, std::size_t m, const std::uint8_t* table,
               std::uint32_t* out) noexcept {
  const std::size_t pairs = (m + 1) / 2;
  const std::size_t block_bytes = 32 * pairs;
  const __m256i nibble = _mm256_set1_epi8(0x0f);
  for (std::size_t b = 0; b < nblocks; ++b) {
    const std::uint8_t* block = packed + b * block_bytes;
    std::uint32_t* acc = out + b * fast_scan_block;
    clear_block(acc);
    for (std::size_t first = 0; first < pairs; first += flush_every) {
      const std::size_t last = std::min(pairs, first + flush_every);
      __m256i even_lo = _mm256_setzero_si256(), odd_lo = _mm256_setzero_si256();
      __m256i even_hi = _mm256_setzero_si256(), odd_hi = _mm256_setzero_si256();
      for (std::size_t p = first; p < last; ++p) {
        const __m256i lut = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + 32 * p));
        const __m256i codes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + 32 * p));
        const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(codes, nibble));
        const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(codes, 4), nibble));
        // Whole 16-bit lanes (even byte + 256 · odd byte, wrapping) and the odd bytes alone: the even
        // sums are recovered at the flush as whole − 256 · odd (mod 2^16), one masking op fewer per shuffle.
        even_lo = _mm256_add_epi16(even_lo, lo);
        odd_lo = _mm256_add_epi16(odd_lo, _mm256_srli_epi16(lo, 8));
        even_hi = _mm256_add_epi16(even_hi, hi);
        odd_hi = _mm256_add_epi16(odd_hi, _mm256_srli_epi16(hi, 8));
      }
      add_lanes(_mm256_sub_epi16(even_lo, _mm256_slli_epi16(odd_lo, 8)), odd_lo,
                _mm256_sub_epi16(even_hi, _mm256_slli_epi16(odd_hi, 8)), odd_hi, acc);
    }
  }
}
#elif SHOAL_PQ_ISA == 512
/// The AVX2 kernel's flush (`add_lanes`) over four 128-bit lanes: lanes 0 and 2 hold even sub-quantizers, 1 and 3 odd.
inline void flush(__m512i even_lo, __m512i odd_lo, __m512i even_hi, __m512i odd_hi, std::uint32_t* acc) noexcept {
  // Fold the upper 256 bits onto the lower ones first (16-bit sums of two lanes cannot overflow here:
  // each lane holds at most 255 · flush_every / 2 because a 512-bit iteration covers two pairs).
  const auto fold = [](__m512i v) {
    return _mm256_add_epi16(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
  };
  add_lanes(fold(even_lo), fold(odd_lo), fold(even_hi), fold(odd_hi), acc);
}

void fast_scan(const std::uint8_t* packed, std::size_t nblocks, std::size_t m, const std::uint8_t* table,
               std::uint32_t* out) noexcept {
  const std::size_t pairs = (m + 1) / 2;
  const std::size_t quads = pairs / 2;
  const std::size_t block_bytes = 32 * pairs;
  const __m512i nibble = _mm512_set1_epi8(0x0f);
  // Each 512-bit iteration adds one byte per 16-bit lane; the fold in `flush` adds two lanes, so flush
  // every 128 iterations to keep the folded sums below 2^16.
  constexpr std::size_t period = flush_every / 2;
  for (std::size_t b = 0; b < nblocks; ++b) {
    const std::uint8_t* block = packed + b * block_bytes;
    std::uint32_t* acc = out + b * fast_scan_block;
    clear_block(acc);
    for (std::size_t first = 0; first < quads; first += period) {
      const std::size_t last = std::min(quads, first + period);
      __m512i even_lo = _mm512_setzero_si512(), odd_lo = _mm512_setzero_si512();
      __m512i even_hi = _mm512_setzero_si512(), odd_hi = _mm512_setzero_si512();
      for (std::size_t q = first; q < last; ++q) {
        const __m512i lut = _mm512_loadu_si512(table + 64 * q);
        const __m512i codes = _mm512_loadu_si512(block + 64 * q);
        const __m512i lo = _mm512_shuffle_epi8(lut, _mm512_and_si512(codes, nibble));
        const __m512i hi = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(codes, 4), nibble));
        even_lo = _mm512_add_epi16(even_lo, lo);  // whole lanes, as in the AVX2 kernel
        odd_lo = _mm512_add_epi16(odd_lo, _mm512_srli_epi16(lo, 8));
        even_hi = _mm512_add_epi16(even_hi, hi);
        odd_hi = _mm512_add_epi16(odd_hi, _mm512_srli_epi16(hi, 8));
      }
      flush(_mm512_sub_epi16(even_lo, _mm512_slli_epi16(odd_lo, 8)), odd_lo,
            _mm512_sub_epi16(even_hi, _mm512_slli_epi16(odd_hi, 8)), odd_hi, acc);
    }
    if (pairs % 2 != 0) {  // the last pair alone, at 256 bits (zero-extended into the 512-bit flush)
      const std::size_t p = pairs - 1;
      const __m256i nib = _mm256_set1_epi8(0x0f);
      const __m256i lb = _mm256_set1_epi16(0x00ff);
      const __m256i lut = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + 32 * p));
      const __m256i codes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + 32 * p));
      const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(codes, nib));
      const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(codes, 4), nib));
      flush(_mm512_zextsi256_si512(_mm256_and_si256(lo, lb)), _mm512_zextsi256_si512(_mm256_srli_epi16(lo, 8)),
            _mm512_zextsi256_si512(_mm256_and_si256(hi, lb)), _mm512_zextsi256_si512(_mm256_srli_epi16(hi, 8)), acc);
    }
  }
}
#endif

/// Which fast-scan sums do not exceed `bound`: bit j of `masks[b]` for sum 32 · b + j. A list scan tests
/// its sums against the admission bound this way, one branch per block of 32 instead of one per code.
void at_most(const std::uint32_t* sums, std::size_t nblocks, std::uint32_t bound, std::uint32_t* masks) noexcept {
#if SHOAL_PQ_ISA == 0
  for (std::size_t b = 0; b < nblocks; ++b) {
    std::uint32_t mask = 0;
    for (std::size_t j = 0; j < fast_scan_block; ++j)
      mask |= static_cast<std::uint32_t>(sums[b * fast_scan_block + j] <= bound) << j;
    masks[b] = mask;
  }
#else
  // x ≤ bound ⟺ max(x, bound) = bound, unsigned (AVX2 has no unsigned compare); eight sums per mask byte.
  const __m256i limit = _mm256_set1_epi32(static_cast<int>(bound));
  for (std::size_t b = 0; b < nblocks; ++b) {
    std::uint32_t mask = 0;
    for (int q = 0; q < 4; ++q) {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sums + b * fast_scan_block + 8 * q));
      const __m256i below = _mm256_cmpeq_epi32(_mm256_max_epu32(x, limit), limit);
      mask |= static_cast<std::uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(below))) << (8 * q);
    }
    masks[b] = mask;
  }
#endif
}

/// For each of `n` rows of m 8-bit codes: from `first(i)`, + table[s · 256 + code] in sub-quantizer order,
/// then `out[i]` = `last(sum)` — the same code at every level, so the same bits. Four rows at a time so
/// that independent load chains overlap.
template <class T, class First, class Last>
void scan_rows(const T* table, const std::uint8_t* codes, std::size_t n, std::size_t m, const First& first,
               const Last& last, float* out) noexcept {
  std::size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const std::uint8_t* c0 = codes + i * m;
    const std::uint8_t* c1 = c0 + m;
    const std::uint8_t* c2 = c1 + m;
    const std::uint8_t* c3 = c2 + m;
    T s0 = first(i), s1 = first(i + 1), s2 = first(i + 2), s3 = first(i + 3);
    for (std::size_t s = 0; s < m; ++s) {
      const T* t = table + s * 256;
      s0 += t[c0[s]];
      s1 += t[c1[s]];
      s2 += t[c2[s]];
      s3 += t[c3[s]];
    }
    out[i] = last(s0);
    out[i + 1] = last(s1);
    out[i + 2] = last(s2);
    out[i + 3] = last(s3);
  }
  for (; i < n; ++i) {
    const std::uint8_t* c = codes + i * m;
    T sum = first(i);
    for (std::size_t s = 0; s < m; ++s) sum += table[s * 256 + c[s]];
    out[i] = last(sum);
  }
}

/// 8-bit ADC: plain look-ups, summed in sub-quantizer order (identical at every level).
void scan_8bit(const float* table, const std::uint8_t* codes, std::size_t n, std::size_t m, float* out) noexcept {
  scan_rows(
      table, codes, n, m, [](std::size_t) { return 0.0f; }, [](float sum) { return sum; }, out);
}

/// An L2 distance summed in double as float: at least 0 (rounding can leave −1e-16 of the terms' size),
/// +inf beyond float's range (where a float sum would have overflowed; the conversion itself is undefined
/// there).
inline float distance_as_float(double d) noexcept {
  return d <= static_cast<double>(std::numeric_limits<float>::max()) ? static_cast<float>(std::max(0.0, d))
                                                                     : std::numeric_limits<float>::infinity();
}

/// The row-term scan (`pq_kernels::scan_8bit_f64`): as `scan_8bit`, in double, from the list's offset
/// and the row's term, as a float distance (`distance_as_float`).
void scan_8bit_f64(const double* table, const std::uint8_t* codes, std::size_t n, std::size_t m, const double* terms,
                   double offset, float* out) noexcept {
  scan_rows(
      table, codes, n, m, [&](std::size_t i) { return offset + terms[i]; }, distance_as_float, out);
}

/// `pq_kernels::tables_ip_f64`: 32 codewords at a time, their accumulators in registers (four AVX-512 or
/// eight AVX2 registers) while the sub-space's components stream past; plain code the compiler
/// vectorises at each level, exact products so fused or not the same bits.
void tables_ip_f64(const float* query, const float* books_t, std::size_t m, std::size_t dsub, double* out) noexcept {
  constexpr std::size_t block = 32;
  for (std::size_t s = 0; s < m; ++s) {
    const float* q = query + s * dsub;
    const float* books = books_t + s * dsub * 256;
    for (std::size_t c = 0; c < 256; c += block) {
      double acc[block] = {};
      for (std::size_t d = 0; d < dsub; ++d) {
        const double qd = q[d];
        const float* col = books + d * 256 + c;
        for (std::size_t j = 0; j < block; ++j) acc[j] += qd * static_cast<double>(col[j]);
      }
      std::copy_n(acc, block, out + s * 256 + c);
    }
  }
}

/// One sub-space's table row: the codeword loop is innermost and contiguous, so the compiler vectorises
/// it with this file's ISA flags; `K` fixes the row length (16 or 256: whole registers, no remainder).
template <std::size_t K>
inline void table_row(const float* q, const float* books, std::size_t dsub, std::size_t ksub, bool l2,
                      float* row) noexcept {
  if constexpr (K == 0) {
    for (std::size_t c = 0; c < ksub; ++c) row[c] = 0.0f;
    for (std::size_t d = 0; d < dsub; ++d)
      for (std::size_t c = 0; c < ksub; ++c) {
        const float diff = q[d] - books[d * ksub + c];
        row[c] += l2 ? diff * diff : q[d] * books[d * ksub + c];
      }
  } else {
    // A local accumulator the compiler keeps in registers (no aliasing with `books`).
    float acc[K] = {};
    if (l2) {
      for (std::size_t d = 0; d < dsub; ++d) {
        const float qd = q[d];
        const float* col = books + d * K;
        for (std::size_t c = 0; c < K; ++c) {
          const float diff = qd - col[c];
          acc[c] += diff * diff;
        }
      }
    } else {
      for (std::size_t d = 0; d < dsub; ++d) {
        const float qd = q[d];
        const float* col = books + d * K;
        for (std::size_t c = 0; c < K; ++c) acc[c] += qd * col[c];
      }
    }
    for (std::size_t c = 0; c < K; ++c) row[c] = acc[c];
  }
}

#if SHOAL_PQ_ISA > 0
/// 16 codewords: two 256-bit accumulators per sub-space, explicit (the generic loop leaves the compiler
/// an unknown trip count over d and spills).
inline void table_rows16(const float* query, const float* books_t, std::size_t m, std::size_t dsub, bool l2,
                         float* out) noexcept {
  for (std::size_t s = 0; s < m; ++s) {
    const float* q = query + s * dsub;
    const float* books = books_t + s * dsub * 16;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (std::size_t d = 0; d < dsub; ++d) {
      const __m256 qd = _mm256_set1_ps(q[d]);
      const __m256 c0 = _mm256_loadu_ps(books + d * 16);
      const __m256 c1 = _mm256_loadu_ps(books + d * 16 + 8);
      if (l2) {
        const __m256 d0 = _mm256_sub_ps(qd, c0);
        const __m256 d1 = _mm256_sub_ps(qd, c1);
        a0 = _mm256_fmadd_ps(d0, d0, a0);
        a1 = _mm256_fmadd_ps(d1, d1, a1);
      } else {
        a0 = _mm256_fmadd_ps(qd, c0, a0);
        a1 = _mm256_fmadd_ps(qd, c1, a1);
      }
    }
    _mm256_storeu_ps(out + s * 16, a0);
    _mm256_storeu_ps(out + s * 16 + 8, a1);
  }
}
#endif

#if SHOAL_PQ_ISA > 0
// The register width of the level: its intrinsics by name (`SHOAL_TABLE_OP(loadu_ps)` is _mm512_loadu_ps or
// _mm256_loadu_ps).
#if SHOAL_PQ_ISA == 512
using table_vec = __m512;
#define SHOAL_TABLE_OP(name) _mm512_##name
#else
using table_vec = __m256;
#define SHOAL_TABLE_OP(name) _mm256_##name
#endif

/// 256 codewords (8-bit codes), four registers of codewords at a time with the component loop inside:
/// each block's accumulators stay in registers while the sub-space's dsub components stream past.
/// `table_row<256>` left the compiler all 256 accumulators at once, walking the whole row for every
/// component; this order builds the tables 1.5× faster (Zen 4, dsub 8; docs/pq.md) with the same operations
/// per entry — q − cw, then one fused multiply-add, in component order — so the same bits.
inline void table_row256(const float* q, const float* books, std::size_t dsub, bool l2, float* row) noexcept {
  constexpr std::size_t w = sizeof(table_vec) / sizeof(float);
  for (std::size_t c = 0; c < 256; c += 4 * w) {
    table_vec a0 = SHOAL_TABLE_OP(setzero_ps)(), a1 = SHOAL_TABLE_OP(setzero_ps)(), a2 = SHOAL_TABLE_OP(setzero_ps)(),
              a3 = SHOAL_TABLE_OP(setzero_ps)();
    for (std::size_t d = 0; d < dsub; ++d) {
      const table_vec qd = SHOAL_TABLE_OP(set1_ps)(q[d]);
      const float* col = books + d * 256 + c;
      const table_vec c0 = SHOAL_TABLE_OP(loadu_ps)(col), c1 = SHOAL_TABLE_OP(loadu_ps)(col + w),
                      c2 = SHOAL_TABLE_OP(loadu_ps)(col + 2 * w), c3 = SHOAL_TABLE_OP(loadu_ps)(col + 3 * w);
      if (l2) {
        const table_vec d0 = SHOAL_TABLE_OP(sub_ps)(qd, c0), d1 = SHOAL_TABLE_OP(sub_ps)(qd, c1),
                        d2 = SHOAL_TABLE_OP(sub_ps)(qd, c2), d3 = SHOAL_TABLE_OP(sub_ps)(qd, c3);
        a0 = SHOAL_TABLE_OP(fmadd_ps)(d0, d0, a0);
        a1 = SHOAL_TABLE_OP(fmadd_ps)(d1, d1, a1);
        a2 = SHOAL_TABLE_OP(fmadd_ps)(d2, d2, a2);
        a3 = SHOAL_TABLE_OP(fmadd_ps)(d3, d3, a3);
      } else {
        a0 = SHOAL_TABLE_OP(fmadd_ps)(qd, c0, a0);
        a1 = SHOAL_TABLE_OP(fmadd_ps)(qd, c1, a1);
        a2 = SHOAL_TABLE_OP(fmadd_ps)(qd, c2, a2);
        a3 = SHOAL_TABLE_OP(fmadd_ps)(qd, c3, a3);
      }
    }
    SHOAL_TABLE_OP(storeu_ps)(row + c, a0);
    SHOAL_TABLE_OP(storeu_ps)(row + c + w, a1);
    SHOAL_TABLE_OP(storeu_ps)(row + c + 2 * w, a2);
    SHOAL_TABLE_OP(storeu_ps)(row + c + 3 * w, a3);
  }
}
#undef SHOAL_TABLE_OP
#endif

void tables(const float* query, const float* books_t, std::size_t m, std::size_t dsub, std::size_t ksub, bool l2,
            float* out) noexcept {
#if SHOAL_PQ_ISA > 0
  if (ksub == 16) {
    table_rows16(query, books_t, m, dsub, l2, out);
    return;
  }
  if (ksub == 256) {
    for (std::size_t s = 0; s < m; ++s)
      table_row256(query + s * dsub, books_t + s * dsub * 256, dsub, l2, out + s * 256);
    return;
  }
#endif
  for (std::size_t s = 0; s < m; ++s) {
    const float* q = query + s * dsub;
    const float* books = books_t + s * dsub * ksub;
    float* row = out + s * ksub;
    if (ksub == 16)
      table_row<16>(q, books, dsub, ksub, l2, row);
    else if (ksub == 256)
      table_row<256>(q, books, dsub, ksub, l2, row);
    else
      table_row<0>(q, books, dsub, ksub, l2, row);
  }
}

/// Every level's test of a table after its first pass: it can be quantized when no entry is NaN (`nan`)
/// and the sum of the row minima and the widest row range are finite. An infinite entry needs no test of
/// its own: it makes its row's maximum +inf (so the range, or with an all-+inf row the bias, is not
/// finite) or its minimum −inf (the bias). Min and max may drop a NaN, so that one is looked for.
inline bool quantizable(bool nan, float bias, float widest) noexcept {
  return !nan && std::isfinite(bias) && std::isfinite(widest);
}

/// The one scale of a table whose widest row range is `widest` (finite): 255 / widest, or 1 when every
/// row is constant or the widest range is below 2^-120, where 255 / widest could overflow (255 · 2^120 <
/// FLT_MAX) and (x − min) · scale would be 0 · inf; every code is then 0, off by less than that range.
inline float table_scale(float widest) noexcept { return widest >= 0x1p-120f ? 255.0f / widest : 1.0f; }

/// Whether a table may be one that `quantize_saturated` takes: a necessary condition from the first
/// pass, `group_span` = the largest (g_s − min_s) over rows s, where g_s is the largest of the row's four
/// group minima min(x_c, x_{c+4}, x_{c+8}, x_{c+12}). Three entries set aside cannot hold a whole group,
/// so g_s is at most the row's fourth largest entry and group_span at most the robust range: when
/// outlier_gain · group_span reaches the widest range, the rule cannot hold. Exact (min, max and one
/// subtraction, as in the rule), so every level decides alike. The group minima are a by-product of the
/// SIMD row minima (their first two folds), so the test costs one more max fold per eight (AVX2) or
/// sixteen (AVX-512) rows. On ordinary data it never passes (bigann10k IVF100,PQ64x4fs, fashion-mnist
/// IVF980,PQ392x4fs, Gaussian data, and queries with one component at 10^3: 0 of 1,600 / 2,400 /
/// 16,000 / 16,000 tables), so the exact rule runs only for tables it may change.
inline bool may_saturate(float group_span, float widest) noexcept { return group_span * outlier_gain < widest; }

/// g_s − min_s of one row (see `may_saturate`), as every level computes it.
inline float row_group_span(const float* row, float lo) noexcept {
  float g = std::min(std::min(row[0], row[4]), std::min(row[8], row[12]));
  for (std::size_t c = 1; c < 4; ++c)
    g = std::max(g, std::min(std::min(row[c], row[c + 4]), std::min(row[c + 8], row[c + 12])));
  return g - lo;
}

#if SHOAL_PQ_ISA == 0
/// Quantizes an m x 16 table to bytes (see `quantize_table`): the reference.
bool quantize(const float* table, std::size_t m, std::uint8_t* out, float* bias_out, float* scale_out) noexcept {
  float bias = 0.0f;
  float widest = 0.0f;
  float group_span = 0.0f;
  bool nan = false;
  for (std::size_t s = 0; s < m; ++s) {
    const float* row = table + s * 16;
    float lo = row[0], hi = row[0];
    for (std::size_t c = 0; c < 16; ++c) {
      lo = std::min(lo, row[c]);
      hi = std::max(hi, row[c]);
      nan = nan || std::isnan(row[c]);
    }
    bias += lo;
    widest = std::max(widest, hi - lo);
    group_span = std::max(group_span, row_group_span(row, lo));
  }
  if (!quantizable(nan, bias, widest)) return false;
  const float scale = table_scale(widest);
  for (std::size_t s = 0; s < m; ++s) {
    const float* row = table + s * 16;
    // (row − lo) · scale lies in [0, 255] up to rounding; +0.5 and truncation round to nearest.
    quantize_row(row, *std::min_element(row, row + 16), scale, out + s * 16);
  }
  if (may_saturate(group_span, widest) && quantize_saturated(table, m, out, bias_out, scale_out)) return true;
  *bias_out = bias;
  *scale_out = scale;
  return true;
}
#else
#if SHOAL_PQ_ISA == 512
/// `op` (min or max) over each of 16 rows of 16 floats at once, in row order: four levels of pairwise
/// shuffles combine rows into registers (whole 256-bit halves, then 128-bit quarters, then pairs and
/// single lanes inside each quarter), so that 16 horizontal reductions cost about three instructions a
/// row instead of eight. The last level leaves row k + 4j in lane 4k + j; one permute restores the order.
/// The first two levels leave in lane c of a row's quarter op(x_c, x_{c+4}, x_{c+8}, x_{c+12}): with min,
/// the row's four group minima (`may_saturate`), which `fold_quarters` then folds with max.
struct quarters {
  __m512 v[4];
};
template <class Op>
inline quarters across_groups(const float* rows, const Op& op) noexcept {
  __m512 p[8];
  for (int i = 0; i < 8; ++i) {
    const __m512 a = _mm512_loadu_ps(rows + 32 * i), b = _mm512_loadu_ps(rows + 32 * i + 16);
    p[i] = op(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xee));  // rows 2i, 2i+1: 8 lanes each
  }
  quarters q;
  for (int i = 0; i < 4; ++i)  // rows 4i..4i+3: one quarter (4 lanes) each
    q.v[i] = op(_mm512_shuffle_f32x4(p[2 * i], p[2 * i + 1], 0x88), _mm512_shuffle_f32x4(p[2 * i], p[2 * i + 1], 0xdd));
  return q;
}
template <class Op>
inline __m512 fold_quarters(const quarters& g, const Op& op) noexcept {
  const __m512* q = g.v;
  __m512 r[2];
  for (int i = 0; i < 2; ++i)  // quarter k: rows k + 8i and k + 8i + 4, two lanes each
    r[i] = op(_mm512_shuffle_ps(q[2 * i], q[2 * i + 1], 0x44), _mm512_shuffle_ps(q[2 * i], q[2 * i + 1], 0xee));
  const __m512 t = op(_mm512_shuffle_ps(r[0], r[1], 0x88), _mm512_shuffle_ps(r[0], r[1], 0xdd));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(order, t);
}
template <class Op>
inline __m512 across_rows(const float* rows, const Op& op) noexcept {
  return fold_quarters(across_groups(rows, op), op);
}

/// The AVX-512 quantizer: the reference's arithmetic (bias summed row by row in order), except that
/// (x − min) · scale + 0.5 is one FMA (written out; GCC fused the multiply and add anyway), so a code may
/// differ from the reference's by one step. Row minima and maxima 16 rows at a time (`across_rows`), each
/// row's 16 codes in one register; NaNs looked for with one unordered compare per two rows. Measured on
/// fashion-mnist IVF980,PQ392x4fs,Refine(Flat) (Sapphire Rapids VM): 13% -> 9% of a query in perf; QPS
/// medians of five interleaved runs +8% at nprobe 6, unchanged within noise at nprobe 8.
bool quantize(const float* table, std::size_t m, std::uint8_t* out, float* bias_out, float* scale_out) noexcept {
  const auto vmin = [](__m512 a, __m512 b) { return _mm512_min_ps(a, b); };
  const auto vmax = [](__m512 a, __m512 b) { return _mm512_max_ps(a, b); };
  const std::size_t blocks = m / 16;
  float bias = 0.0f;
  __m512 widest = _mm512_setzero_ps();
  __m512 group_span16 = _mm512_setzero_ps();  // for `may_saturate`
  std::uint32_t nan = 0;                      // lanes of the unordered compares
  alignas(64) float lows[16];
  for (std::size_t b = 0; b < blocks; ++b) {
    const float* rows = table + b * 256;
    const quarters groups = across_groups(rows, vmin);
    const __m512 lo = fold_quarters(groups, vmin);
    widest = _mm512_max_ps(widest, _mm512_sub_ps(across_rows(rows, vmax), lo));
    group_span16 = _mm512_max_ps(group_span16, _mm512_sub_ps(fold_quarters(groups, vmax), lo));
    for (int i = 0; i < 16; i += 2)
      nan |= _mm512_cmp_ps_mask(_mm512_loadu_ps(rows + 16 * i), _mm512_loadu_ps(rows + 16 * i + 16), _CMP_UNORD_Q);
    _mm512_store_ps(lows, lo);
    for (const float l : lows) bias += l;
  }
  float tail_widest = 0.0f;
  float group_span = _mm512_reduce_max_ps(group_span16);
  for (std::size_t s = blocks * 16; s < m; ++s) {
    const __m512 row = _mm512_loadu_ps(table + s * 16);
    const float lo = _mm512_reduce_min_ps(row);
    bias += lo;
    tail_widest = std::max(tail_widest, _mm512_reduce_max_ps(row) - lo);
    group_span = std::max(group_span, row_group_span(table + s * 16, lo));
    nan |= _mm512_cmp_ps_mask(row, row, _CMP_UNORD_Q);
  }
  const float w = std::max(_mm512_reduce_max_ps(widest), tail_widest);
  if (!quantizable(nan != 0, bias, w)) return false;
  const float scale = table_scale(w);
  const __m512 vscale = _mm512_set1_ps(scale);
  const __m512 half = _mm512_set1_ps(0.5f);
  const __m512 top = _mm512_set1_ps(255.0f);
  const auto code = [&](std::size_t s, __m512 lo) {
    const __m512 row = _mm512_loadu_ps(table + s * 16);
    const __m512i q = _mm512_cvttps_epi32(_mm512_min_ps(_mm512_fmadd_ps(_mm512_sub_ps(row, lo), vscale, half), top));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + s * 16), _mm512_cvtepi32_epi8(q));
  };
  for (std::size_t b = 0; b < blocks; ++b) {
    const __m512 lo = across_rows(table + b * 256, vmin);
    for (int j = 0; j < 16; ++j)
      code(b * 16 + static_cast<std::size_t>(j), _mm512_permutexvar_ps(_mm512_set1_epi32(j), lo));
  }
  for (std::size_t s = blocks * 16; s < m; ++s)
    code(s, _mm512_set1_ps(_mm512_reduce_min_ps(_mm512_loadu_ps(table + s * 16))));
  if (may_saturate(group_span, w) && quantize_saturated(table, m, out, bias_out, scale_out)) return true;
  *bias_out = bias;
  *scale_out = scale;
  return true;
}
#else
/// `op` (min or max) over each of 8 rows of 16 floats at once: each row's two halves first, then three
/// levels of shuffles that fold rows together (128-bit halves, pairs, single lanes), as the AVX-512
/// `across_rows` does, instead of a horizontal reduction per row. The result holds row r in lane
/// `row_lane[r]`: rows 0, 2, 4, 6 in the low half, 1, 3, 5, 7 in the high one.
constexpr int row_lane[8] = {0, 4, 1, 5, 2, 6, 3, 7};
/// The first levels leave in lane c of a row's half op(x_c, x_{c+4}, x_{c+8}, x_{c+12}): with min, the
/// row's four group minima (`may_saturate`), which `fold_halves` then folds with max.
struct halves {
  __m256 v[4];
};
template <class Op>
inline halves across_groups(const float* rows, const Op& op) noexcept {
  halves x;
  for (int i = 0; i < 4; ++i) {  // rows 2i and 2i + 1: four lanes each
    const __m256 a = op(_mm256_loadu_ps(rows + 32 * i), _mm256_loadu_ps(rows + 32 * i + 8));
    const __m256 b = op(_mm256_loadu_ps(rows + 32 * i + 16), _mm256_loadu_ps(rows + 32 * i + 24));
    x.v[i] = op(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
  }
  return x;
}
template <class Op>
inline __m256 fold_halves(const halves& g, const Op& op) noexcept {
  const __m256* x = g.v;
  __m256 y[2];
  for (int j = 0; j < 2; ++j)  // rows 4j, 4j + 2 (low half) and 4j + 1, 4j + 3 (high half): two lanes each
    y[j] = op(_mm256_shuffle_ps(x[2 * j], x[2 * j + 1], 0x44), _mm256_shuffle_ps(x[2 * j], x[2 * j + 1], 0xee));
  return op(_mm256_shuffle_ps(y[0], y[1], 0x88), _mm256_shuffle_ps(y[0], y[1], 0xdd));
}
template <class Op>
inline __m256 across_rows(const float* rows, const Op& op) noexcept {
  return fold_halves(across_groups(rows, op), op);
}

/// The AVX2 quantizer: row minima and maxima eight rows at a time (`across_rows`); the bias sums them eight
/// at a time too (within the test's 10⁻⁵ of the reference's row-by-row sum), which also ends the chain of
/// dependent additions that one row at a time left. The minima of the first `kept_rows` rows are kept
/// for the second pass (beyond them a fold again), which turns two rows per step into 32 bytes: one FMA
/// per eight values with the row's constant 0.5 − lo · scale, and one pack chain for both rows. Measured
/// on bigann10k IVF100,PQ64x4fs (m 64, a table per probed list): see docs/pq.md. Rows past the last whole
/// eight go one by one. NaNs are looked for with one unordered compare per two registers.
constexpr std::size_t kept_rows = 512;
bool quantize(const float* table, std::size_t m, std::uint8_t* out, float* bias_out, float* scale_out) noexcept {
  const auto vmin = [](__m256 a, __m256 b) { return _mm256_min_ps(a, b); };
  const auto vmax = [](__m256 a, __m256 b) { return _mm256_max_ps(a, b); };
  const std::size_t whole = m / 8 * 8;
  const auto row_low = [&](std::size_t s) {
    const float* row = table + s * 16;
    return *std::min_element(row, row + 16);
  };
  alignas(32) float lows[kept_rows];  // row s's minimum in lows[s], s < kept_rows
  __m256 bias8 = _mm256_setzero_ps();
  __m256 widest8 = _mm256_setzero_ps();
  __m256 group_span8 = _mm256_setzero_ps();  // for `may_saturate`
  __m256 nan8 = _mm256_setzero_ps();         // all ones in a lane where a compare met a NaN
  for (std::size_t s = 0; s < whole; s += 8) {
    const float* rows = table + s * 16;
    const halves groups = across_groups(rows, vmin);
    const __m256 lo = fold_halves(groups, vmin);
    bias8 = _mm256_add_ps(bias8, lo);
    widest8 = _mm256_max_ps(widest8, _mm256_sub_ps(across_rows(rows, vmax), lo));
    group_span8 = _mm256_max_ps(group_span8, _mm256_sub_ps(fold_halves(groups, vmax), lo));
    for (int i = 0; i < 16; i += 2)
      nan8 = _mm256_or_ps(
          nan8, _mm256_cmp_ps(_mm256_loadu_ps(rows + 8 * i), _mm256_loadu_ps(rows + 8 * i + 8), _CMP_UNORD_Q));
    if (s < kept_rows) {
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, lo);
      for (std::size_t r = 0; r < 8; ++r) lows[s + r] = lanes[row_lane[r]];
    }
  }
  alignas(32) float lanes8[8];
  _mm256_store_ps(lanes8, bias8);
  float bias = 0.0f;
  for (const float b : lanes8) bias += b;
  _mm256_store_ps(lanes8, widest8);
  float w = *std::max_element(lanes8, lanes8 + 8);
  _mm256_store_ps(lanes8, group_span8);
  float group_span = *std::max_element(lanes8, lanes8 + 8);
  bool nan = _mm256_movemask_ps(nan8) != 0;
  for (std::size_t s = whole; s < m; ++s) {
    const float* row = table + s * 16;
    const float lo = row_low(s);
    bias += lo;
    w = std::max(w, *std::max_element(row, row + 16) - lo);
    group_span = std::max(group_span, row_group_span(row, lo));
    nan = nan || std::any_of(row, row + 16, [](float x) { return std::isnan(x); });
  }
  if (!quantizable(nan, bias, w)) return false;
  const float scale = table_scale(w);
  const __m256 vscale = _mm256_set1_ps(scale);
  // x · scale + (0.5 − lo · scale), truncated: (x − lo) · scale rounded to nearest, up to float rounding
  // (the reference rounds (x − lo) · scale first; a code may differ by one step, by more where |lo · scale|
  // passes 2^24 and the constant itself rounds by a step or more: docs/pq.md). A value just past 255
  // saturates in the byte pack, so no clamp is needed (the saturated path, whose entries can lie far
  // past 255, is `quantize_saturated`'s scalar code).
  const auto codes = [&](const float* row, float lo) {
    const __m256 shift = _mm256_set1_ps(0.5f - lo * scale);
    const __m256i qa = _mm256_cvttps_epi32(_mm256_fmadd_ps(_mm256_loadu_ps(row), vscale, shift));
    const __m256i qb = _mm256_cvttps_epi32(_mm256_fmadd_ps(_mm256_loadu_ps(row + 8), vscale, shift));
    return _mm256_packs_epi32(qa, qb);  // 16 words, 128-bit lanes: a0-3 b0-3 | a4-7 b4-7
  };
  const auto put_one = [&](std::size_t s, float lo) {
    const __m256i words = _mm256_permute4x64_epi64(codes(table + s * 16, lo), 0xd8);
    const __m128i bytes = _mm_packus_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + s * 16), bytes);
  };
  const auto low = [&](std::size_t s) { return s < kept_rows ? lows[s] : row_low(s); };
  const __m256i pair_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  std::size_t s = 0;
  for (; s + 2 <= whole; s += 2) {
    // Two rows' words packed to bytes in one step: 32-bit lanes hold a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7
    // d4-7 (a, b: row s's halves; c, d: row s + 1's); the lane order 0 4 1 5 2 6 3 7 restores a b c d.
    const __m256i bytes = _mm256_packus_epi16(codes(table + s * 16, low(s)), codes(table + (s + 1) * 16, low(s + 1)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + s * 16), _mm256_permutevar8x32_epi32(bytes, pair_order));
  }
  for (; s < m; ++s) put_one(s, row_low(s));
  if (may_saturate(group_span, w) && quantize_saturated(table, m, out, bias_out, scale_out)) return true;
  *bias_out = bias;
  *scale_out = scale;
  return true;
}
#endif
#endif

}  // namespace

const pq_kernels& pq_table() noexcept {
  static constexpr pq_kernels k{
      .level = SHOAL_PQ_LEVEL,
      .tables = tables,
      .quantize = quantize,
      .fast_scan = fast_scan,
      .at_most = at_most,
      .scan_8bit = scan_8bit,
      .tables_ip_f64 = tables_ip_f64,
      .scan_8bit_f64 = scan_8bit_f64,
  };
  return k;
}

}  // namespace shoal::detail::SHOAL_PQ_NS

#if SHOAL_PQ_ISA == 0
namespace shoal::detail {

bool quantize_saturated(const float* table, std::size_t m, std::uint8_t* out, float* bias_out,
                        float* scale_out) noexcept {
  static_assert(saturated_per_row == 3, "`fourth_largest` sets aside a row's three largest entries");
  // Many tables take this path where whole sub-spaces are nearly empty (cosine residual tables of
  // normalised fashion-mnist, session 38): sorting each row here took a third of a query's time. Now a
  // row's fourth largest entry is found only where the row's range could raise the robust range (that
  // entry minus the row's minimum is at most the range), and the rows are quantized four lanes at a time.
  float widest = 0.0f;
  float robust = 0.0f;
  for (std::size_t s = 0; s < m; ++s) {
    const float* row = table + s * 16;
    float lo = 0.0f, hi = 0.0f;
    row_range(row, lo, hi);
    widest = std::max(widest, hi - lo);
    if (hi - lo > robust) robust = std::max(robust, fourth_largest(row) - lo);
  }
  // Not below 2^-120, so that 255 / robust is finite (as in `table_scale`); a robust range of 0 leaves
  // nothing to resolve.
  if (!(robust >= 0x1p-120f && robust * outlier_gain < widest)) return false;
  const float scale = 255.0f / robust;
  float bias = 0.0f;
  for (std::size_t s = 0; s < m; ++s) {
    const float* row = table + s * 16;
    float lo = 0.0f, hi = 0.0f;
    row_range(row, lo, hi);
    bias += lo;
    // Clamped before the conversion: an entry set aside can lie any number of steps past 255 (Inf
    // included, where (x − lo) · scale overflows; x − lo itself is finite in a quantizable table).
    quantize_row(row, lo, scale, out + s * 16);
  }
  *bias_out = bias;
  *scale_out = scale;
  return true;
}

}  // namespace shoal::detail
#endif
