// Distance kernels, written once and compiled once per SIMD level.
//
// Deliberately not include-guarded: each of scalar.cpp, avx2.cpp and avx512.cpp defines
//   SHOAL_KERNEL_NS      the namespace (under shoal::detail) that holds this level's code, and
//   SHOAL_KERNEL_ARCH    the xsimd architecture (absent for the scalar reference),
// then includes this file with its own ISA flags. Everything here lives in that per-level namespace, so
// no function compiled with AVX-512 flags shares a symbol with one the linker could pick for an AVX2 or
// scalar caller. Eigen, used for the GEMM, is renamed per level for the same reason (its templates would
// otherwise be merged across levels). Only the `distance_kernels` table of plain function pointers
// leaves the file; no SIMD type crosses a file boundary.
//
// Accumulation order: pairwise and one-to-many forms share `dot_like`, so for one level they return
// bit-identical results; different levels sum in different orders (tests compare them with a
// double-precision reference and a tolerance). Integer kernels are exact everywhere.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "distance/stream_tuning.hpp"
#include "distance/widen_sum.hpp"
#include "shoal/distance/distance.hpp"

#ifdef SHOAL_KERNEL_ARCH
#include <xsimd/xsimd.hpp>
#define Eigen SHOAL_KERNEL_EIGEN_NS  // NOLINT: see above, one Eigen per level
#include <Eigen/Core>
#endif

namespace shoal::detail::SHOAL_KERNEL_NS {
namespace {

#ifdef SHOAL_KERNEL_ARCH
/// Lanes of one SIMD register of the level.
struct lanes {
  using batch = xsimd::batch<float, SHOAL_KERNEL_ARCH>;
  static constexpr std::size_t width = batch::size;
  static batch zero() noexcept { return batch(0.0f); }
  static batch load(const float* p) noexcept { return batch::load_unaligned(p); }
  /// `load`, a 512-bit register as two 256-bit halves (the same lanes): from DRAM on Zen 4 these stream
  /// faster than one 512-bit load (`stream_tuning::half_loads`).
  static batch load_halves(const float* p) noexcept {
#if defined(__AVX512F__)
    if constexpr (width == 16) {
      const __m256d lo = _mm256_castps_pd(_mm256_loadu_ps(p)), hi = _mm256_castps_pd(_mm256_loadu_ps(p + 8));
      return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(lo), hi, 1));
    }
#endif
    return load(p);
  }
  static batch fma(batch a, batch b, batch c) noexcept { return xsimd::fma(a, b, c); }
  /// One lane's a · b + c, always fused: left to the compiler, the contraction of a scalar tail may differ
  /// between two inlined copies of the same loop (it did between `dot_like` and `dot_like2`).
  static float fma1(float a, float b, float c) noexcept { return std::fma(a, b, c); }
  static float sum(batch b) noexcept { return xsimd::hadd(b); }
};
#else
/// The scalar reference: one lane, multiply then add (no FMA instruction at the baseline ISA).
struct lanes {
  using batch = float;
  static constexpr std::size_t width = 1;
  static batch zero() noexcept { return 0.0f; }
  static batch load(const float* p) noexcept { return *p; }
  static batch load_halves(const float* p) noexcept { return *p; }
  static batch fma(batch a, batch b, batch c) noexcept { return a * b + c; }
  static float fma1(float a, float b, float c) noexcept { return a * b + c; }
  static float sum(batch b) noexcept { return b; }
};
#endif

using batch = lanes::batch;
constexpr std::size_t W = lanes::width;

/// Squared difference term: acc += (a − b)².
struct l2_term {
  static batch step(batch a, batch b, batch acc) noexcept {
    const batch d = a - b;
    return lanes::fma(d, d, acc);
  }
  static float step1(float a, float b, float acc) noexcept { return lanes::fma1(a - b, a - b, acc); }
};

/// Product term: acc += a · b.
struct ip_term {
  static batch step(batch a, batch b, batch acc) noexcept { return lanes::fma(a, b, acc); }
  static float step1(float a, float b, float acc) noexcept { return lanes::fma1(a, b, acc); }
};

/// Σ term(a_i, b_i) with four independent accumulators (to hide FMA latency), then one register at a
/// time, then a scalar tail. The single definition of the accumulation order for float kernels.
/// `BHalves`: b's registers loaded by `load_halves` (the same values, so the same result).
template <class Term, bool BHalves = false>
inline float dot_like(const float* a, const float* b, std::size_t dim) noexcept {
  const auto load_b = [b](std::size_t i) { return BHalves ? lanes::load_halves(b + i) : lanes::load(b + i); };
  batch acc0 = lanes::zero(), acc1 = lanes::zero(), acc2 = lanes::zero(), acc3 = lanes::zero();
  std::size_t i = 0;
  for (; i + 4 * W <= dim; i += 4 * W) {
    acc0 = Term::step(lanes::load(a + i), load_b(i), acc0);
    acc1 = Term::step(lanes::load(a + i + W), load_b(i + W), acc1);
    acc2 = Term::step(lanes::load(a + i + 2 * W), load_b(i + 2 * W), acc2);
    acc3 = Term::step(lanes::load(a + i + 3 * W), load_b(i + 3 * W), acc3);
  }
  for (; i + W <= dim; i += W) acc0 = Term::step(lanes::load(a + i), load_b(i), acc0);
  float tail = 0.0f;
  for (; i < dim; ++i) tail = Term::step1(a[i], b[i], tail);
  return lanes::sum((acc0 + acc1) + (acc2 + acc3)) + tail;
}

/// `dot_like` of `a` against two rows at once, each summed in exactly `dot_like`'s order (so bit-identical
/// to it): the loads of `a` serve both rows and the two rows' dependency chains overlap. A one-to-many
/// scan of rows already in cache (an IVF coarse pass over 100 centroids: ~11 ns per 128-d row one at a
/// time) is bound by the chains' latency, not by loads.
template <class Term>
inline void dot_like2(const float* a, const float* b0, const float* b1, std::size_t dim, float* out) noexcept {
  batch x0 = lanes::zero(), x1 = lanes::zero(), x2 = lanes::zero(), x3 = lanes::zero();
  batch y0 = lanes::zero(), y1 = lanes::zero(), y2 = lanes::zero(), y3 = lanes::zero();
  std::size_t i = 0;
  for (; i + 4 * W <= dim; i += 4 * W) {
    const batch a0 = lanes::load(a + i), a1 = lanes::load(a + i + W);
    const batch a2 = lanes::load(a + i + 2 * W), a3 = lanes::load(a + i + 3 * W);
    x0 = Term::step(a0, lanes::load(b0 + i), x0);
    y0 = Term::step(a0, lanes::load(b1 + i), y0);
    x1 = Term::step(a1, lanes::load(b0 + i + W), x1);
    y1 = Term::step(a1, lanes::load(b1 + i + W), y1);
    x2 = Term::step(a2, lanes::load(b0 + i + 2 * W), x2);
    y2 = Term::step(a2, lanes::load(b1 + i + 2 * W), y2);
    x3 = Term::step(a3, lanes::load(b0 + i + 3 * W), x3);
    y3 = Term::step(a3, lanes::load(b1 + i + 3 * W), y3);
  }
  for (; i + W <= dim; i += W) {
    const batch a0 = lanes::load(a + i);
    x0 = Term::step(a0, lanes::load(b0 + i), x0);
    y0 = Term::step(a0, lanes::load(b1 + i), y0);
  }
  float tx = 0.0f, ty = 0.0f;
  for (; i < dim; ++i) {
    tx = Term::step1(a[i], b0[i], tx);
    ty = Term::step1(a[i], b1[i], ty);
  }
  out[0] = lanes::sum((x0 + x1) + (x2 + x3)) + tx;
  out[1] = lanes::sum((y0 + y1) + (y2 + y3)) + ty;
}

float l2sqr(const float* a, const float* b, std::size_t dim) noexcept { return dot_like<l2_term>(a, b, dim); }

float inner_product(const float* a, const float* b, std::size_t dim) noexcept { return dot_like<ip_term>(a, b, dim); }

/// `cosine_distance` summed in double: every finite float vector's squared norm is a normal double, so
/// this is right where the float sums underflow (norms below about 1e-19) or overflow (above 1e19).
float cosine_distance_wide(const float* a, const float* b, std::size_t dim) noexcept {
  double ab = 0.0, aa = 0.0, bb = 0.0;
  for (std::size_t i = 0; i < dim; ++i) {
    ab += static_cast<double>(a[i]) * b[i];
    aa += static_cast<double>(a[i]) * a[i];
    bb += static_cast<double>(b[i]) * b[i];
  }
  if (aa <= 0.0 || bb <= 0.0) return 1.0f;
  return static_cast<float>(1.0 - ab / (std::sqrt(aa) * std::sqrt(bb)));
}

/// 1 − ⟨a,b⟩/(‖a‖‖b‖) from one pass over both vectors.
float cosine_distance(const float* a, const float* b, std::size_t dim) noexcept {
  batch ab = lanes::zero(), aa = lanes::zero(), bb = lanes::zero();
  std::size_t i = 0;
  for (; i + W <= dim; i += W) {
    const batch x = lanes::load(a + i);
    const batch y = lanes::load(b + i);
    ab = lanes::fma(x, y, ab);
    aa = lanes::fma(x, x, aa);
    bb = lanes::fma(y, y, bb);
  }
  float s_ab = lanes::sum(ab), s_aa = lanes::sum(aa), s_bb = lanes::sum(bb);
  for (; i < dim; ++i) {
    s_ab += a[i] * b[i];
    s_aa += a[i] * a[i];
    s_bb += b[i] * b[i];
  }
  // A squared norm that underflowed (a tiny non-zero vector would read as zero) or overflowed: in double.
  if (!std::isnormal(s_aa) || !std::isnormal(s_bb)) return cosine_distance_wide(a, b, dim);
  // ‖a‖²‖b‖² underflows or overflows float for norms beyond about 1e±10 (e.g. a = b = {1e-12}: −inf):
  // then the roots one at a time.
  const float product = s_aa * s_bb;
  return 1.0f - s_ab / (std::isnormal(product) ? std::sqrt(product) : std::sqrt(s_aa) * std::sqrt(s_bb));
}

/// Rows of a one-to-many scan whose block spans at least this many bytes are streamed one at a time as
/// the CPU's `stream_tuning` says: such a block is not in L1, and is most likely in DRAM (a flat scan, a
/// large inverted list). Not two rows at a time as in cache: two interleaved streams read DRAM at less
/// than half the rate on Zen 4 (session 38, `dot_like2` tried here).
constexpr std::size_t stream_min_bytes = std::size_t{64} << 10;

/// out[i] = Pair(q, row i). `Term`, when given, is Pair's `dot_like` term: rows in cache then go two at
/// a time through `dot_like2`, and streamed rows may load by halves (both bit-identical to Pair).
template <float (*Pair)(const float*, const float*, std::size_t) noexcept, class Term = void>
void one_to_many(const float* q, const float* x, std::size_t n, std::size_t dim, std::size_t stride,
                 float* out) noexcept {
  const std::size_t row_bytes = stride * sizeof(float);
  if (n * row_bytes < stream_min_bytes) {
    std::size_t i = 0;
    if constexpr (!std::is_void_v<Term>)
      for (; i + 2 <= n; i += 2) dot_like2<Term>(q, x + i * stride, x + (i + 1) * stride, dim, out + i);
    for (; i < n; ++i) out[i] = Pair(q, x + i * stride, dim);
    return;
  }
  const stream_tuning tuning = current_stream_tuning();
  const auto score = [&](const float* row) {
    if constexpr (!std::is_void_v<Term>)
      if (tuning.half_loads) return dot_like<Term, true>(q, row, dim);
    return Pair(q, row, dim);
  };
  if (tuning.prefetch_bytes == 0) {
    for (std::size_t i = 0; i < n; ++i) out[i] = score(x + i * stride);
    return;
  }
  // Each row prefetches the lines `prefetch_bytes` beyond it, never past the block's end (a prefetch
  // cannot fault, but lines outside the block are bandwidth taken from the scan).
  const char* const end = reinterpret_cast<const char*>(x + n * stride);
  for (std::size_t i = 0; i < n; ++i) {
    const char* ahead = reinterpret_cast<const char*>(x + i * stride) + tuning.prefetch_bytes;
    const char* const stop = std::min(ahead + row_bytes, end);
    for (; ahead < stop; ahead += 64) __builtin_prefetch(ahead, 0, 3);
    out[i] = score(x + i * stride);
  }
}

/// Prefetches every line of `bytes` bytes at `p` (into L1).
inline void prefetch_row(const void* p, std::size_t bytes) noexcept {
  const char* row = static_cast<const char*>(p);
  for (std::size_t b = 0; b < bytes; b += 64) __builtin_prefetch(row + b);
}

/// How many rows ahead of the one being scored the gather kernels prefetch. Two keeps a 784-float row
/// (49 lines) in flight while another is scored without overflowing the L1 miss buffers; measured on
/// fashion-mnist HNSW traversal, 0 → 2 saves about 8% of the query time, more gains nothing.
constexpr std::size_t gather_ahead = 2;

/// out[i] = score(q, rows[i]) over rows scattered in memory, each prefetched whole `ahead` rows before
/// it is scored.
template <class Row, class Out, class Score>
void gather_rows(const Row* const* rows, std::size_t n, std::size_t row_bytes, Out* out, const Score& score,
                 std::size_t ahead = gather_ahead) noexcept {
  for (std::size_t i = 0; i < std::min(ahead, n); ++i) prefetch_row(rows[i], row_bytes);
  for (std::size_t i = 0; i < n; ++i) {
    if (i + ahead < n) prefetch_row(rows[i + ahead], row_bytes);
    out[i] = score(rows[i]);
  }
}

/// out[i] = score of rows[i], four rows at a time by `four(rows + i, out + i)` (the last n % 4 by
/// `one`), each group of four prefetched whole while the one before is scored.
template <class Four, class One>
void gather_fours(const std::uint8_t* const* rows, std::size_t n, std::size_t row_bytes, std::int32_t* out,
                  const Four& four, const One& one) noexcept {
  for (std::size_t i = 0; i < std::min<std::size_t>(4, n); ++i) prefetch_row(rows[i], row_bytes);
  std::size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (std::size_t j = i + 4; j < std::min(i + 8, n); ++j) prefetch_row(rows[j], row_bytes);
    four(rows + i, out + i);
  }
  for (; i < n; ++i) out[i] = one(rows[i]);
}

template <float (*Pair)(const float*, const float*, std::size_t) noexcept>
void gather(const float* q, const float* const* xs, std::size_t n, std::size_t dim, float* out) noexcept {
  gather_rows(xs, n, dim * sizeof(float), out, [&](const float* x) { return Pair(q, x, dim); });
}

#if defined(__AVX2__)
/// The sum of the eight int32 lanes of `acc`.
inline std::int32_t hsum_epi32(__m256i acc) noexcept {
  const __m128i h = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
  const __m128i q = _mm_add_epi32(h, _mm_unpackhi_epi64(h, h));
  return _mm_cvtsi128_si32(_mm_add_epi32(q, _mm_shuffle_epi32(q, 1)));
}

/// out[r] = the sum of the int32 lanes of acc[r] for r < 4, reduced together: three vphaddd leave, per
/// 128-bit half, the four rows' partial sums in row order, and one add of the halves finishes them.
inline void store_hsums4(const __m256i (&acc)[4], std::int32_t* out) noexcept {
  const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(acc[0], acc[1]), _mm256_hadd_epi32(acc[2], acc[3]));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out),
                   _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1)));
}
#endif

/// a + b modulo 2³²: the integer dot products wrap past their coefficient limit instead of overflowing
/// (undefined behaviour in int32).
inline std::int32_t wrapping_add(std::int32_t a, std::int32_t b) noexcept {
  return static_cast<std::int32_t>(static_cast<std::uint32_t>(a) + static_cast<std::uint32_t>(b));
}

/// Σ a_j · c_j of int16 coefficients and uint8 codes, exact in int32 as long as Σ |a_j| · 255 fits (the
/// caller's bound, `dot_u8_i16_limit`: then no partial sum in any order overflows, so every level returns
/// the same value). Codes are widened to 16 bits and multiplied pairwise into 32-bit sums (vpmaddwd): 32
/// components per three instructions at AVX-512, where widening uint8 to float took six per 16. Measured
/// on a Sapphire Rapids VM at 784 dimensions: gather over 64 rows in L2 47 -> 41 ns per row, fashion-mnist
/// HNSW16,SQ8 traversal ~8% more QPS (medians of five interleaved runs), recall unchanged.
std::int32_t dot_u8_i16(const std::int16_t* a, const std::uint8_t* c, std::size_t dim) noexcept {
  std::size_t i = 0;
  std::uint32_t sum = 0;  // wraps past the limit instead of overflowing (UB)
#if defined(__AVX512F__)
  const auto step = [&](std::size_t at, __mmask32 m, __m512i acc) {
    const __m512i x = _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(m, c + at));
    return _mm512_add_epi32(acc, _mm512_madd_epi16(x, _mm512_maskz_loadu_epi16(m, a + at)));
  };
  __m512i acc = _mm512_setzero_si512();
  for (; i + 32 <= dim; i += 32) acc = step(i, ~__mmask32{0}, acc);
  if (i < dim) acc = step(i, static_cast<__mmask32>((std::uint64_t{1} << (dim - i)) - 1u), acc);
  return _mm512_reduce_add_epi32(acc);
#elif defined(__AVX2__)
  __m256i acc = _mm256_setzero_si256();
  for (; i + 16 <= dim; i += 16) {
    const __m256i x = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + i)));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(x, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i))));
  }
  sum = static_cast<std::uint32_t>(hsum_epi32(acc));
#endif
  for (; i < dim; ++i) sum += static_cast<std::uint32_t>(static_cast<std::int32_t>(a[i]) * c[i]);
  return static_cast<std::int32_t>(sum);  // modulo 2^32 past the limit, as the vector lanes wrap
}

#if defined(__AVX2__) && !defined(__AVX512F__)
/// `dot_u8_i16` of four rows at once (dim >= 16; AVX2 only — AVX-512, not available on the machine this
/// was measured on, keeps the row-at-a-time loop): four accumulators, whose horizontal sums are then
/// reduced together (three vphaddd and one add of halves for four rows, where one row's reduction took
/// four instructions alone: a quarter of the gather's time at 128 dimensions). Exact as `dot_u8_i16` is.
void dot_u8_i16_x4(const std::int16_t* a, const std::uint8_t* const* c, std::size_t dim, std::int32_t* out) noexcept {
  __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
  std::size_t i = 0;
  for (; i + 16 <= dim; i += 16) {
    const __m256i coeff = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i));
    for (std::size_t r = 0; r < 4; ++r) {
      const __m256i x = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c[r] + i)));
      acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(x, coeff));
    }
  }
  store_hsums4(acc, out);
  for (; i < dim; ++i)
    for (std::size_t r = 0; r < 4; ++r) out[r] = wrapping_add(out[r], static_cast<std::int32_t>(a[i]) * c[r][i]);
}
#endif

void dot_u8_i16_gather(const std::int16_t* a, const std::uint8_t* const* codes, std::size_t n, std::size_t dim,
                       std::int32_t* out) noexcept {
#if defined(__AVX2__) && !defined(__AVX512F__)
  // Groups of four rows, each group prefetched whole while the one before is scored. Only for short rows:
  // at 784 dimensions the reduction is a small part of a row, and four 13-line rows in flight at once
  // made fashion-mnist HNSW16,SQ8 3-11% slower (AMD Zen 3, 8 alternating runs), where bigann10k's
  // 128-byte rows gained 10-19% (15 runs).
  if (dim >= 16 && dim <= 256) {
    gather_fours(
        codes, n, dim, out, [&](const std::uint8_t* const* c, std::int32_t* o) { dot_u8_i16_x4(a, c, dim, o); },
        [&](const std::uint8_t* c) { return dot_u8_i16(a, c, dim); });
    return;
  }
#endif
  gather_rows(codes, n, dim, out, [&](const std::uint8_t* c) { return dot_u8_i16(a, c, dim); });
}

/// `dot_u8_i16` of n rows stored back to back (a table of codes streamed in order, e.g. the IVF
/// prefilter's centroid codes): at AVX2, four rows at a time through `dot_u8_i16_x4` with no software
/// prefetch (the hardware one follows a sequential stream). IVF4096 over 1M generated 128-d vectors
/// (AMD Zen 3, alternating runs): four rows at a time through the gather form gave 5-6.5% more
/// single-query QPS than one row at a time, this form without its prefetches 3-5% more again.
void dot_u8_i16_one_to_many(const std::int16_t* a, const std::uint8_t* c, std::size_t n, std::size_t dim,
                            std::int32_t* out) noexcept {
  std::size_t i = 0;
#if defined(__AVX2__) && !defined(__AVX512F__)
  if (dim >= 16) {
    for (; i + 4 <= n; i += 4) {
      const std::uint8_t* const rows[4] = {c + i * dim, c + (i + 1) * dim, c + (i + 2) * dim, c + (i + 3) * dim};
      dot_u8_i16_x4(a, rows, dim, out + i);
    }
  }
#endif
  for (; i < n; ++i) out[i] = dot_u8_i16(a, c + i * dim, dim);
}

/// Σ a_j · c_j over 4-bit codes packed as `pack_u4` lays them out: in each block of 32 components, byte
/// b holds component b in its low nibble and component 16 + b in its high one. So one 16-byte load
/// widened to 16-bit lanes gives both halves of a block — the low nibbles by a mask, the high ones by a
/// shift — each in component order for one vpmaddwd against the coefficients, seven instructions per 32
/// codes where 8-bit codes take six. The 256-bit form serves the AVX-512 level too (a row of 784 codes
/// is 25 blocks; its cost is the memory, not these instructions). Exact under `dot_u8_i16_limit`, as
/// codes are at most 15.
std::int32_t dot_u4_i16(const std::int16_t* a, const std::uint8_t* c, std::size_t dim) noexcept {
  std::size_t i = 0;
  std::uint32_t sum = 0;  // wraps past the limit instead of overflowing (UB)
#if defined(__AVX2__)
  const __m256i low = _mm256_set1_epi16(0x0f);
  __m256i acc = _mm256_setzero_si256();
  for (; i + 16 <= dim; i += 32) {
    const __m256i x = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + i / 2)));
    acc = _mm256_add_epi32(
        acc, _mm256_madd_epi16(_mm256_and_si256(x, low), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i))));
    if (i + 32 > dim) {  // a last block of 16 to 31 components: its low half only
      i += 16;
      break;
    }
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_srli_epi16(x, 4),
                                                  _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i + 16))));
  }
  sum = static_cast<std::uint32_t>(hsum_epi32(acc));
#endif
  for (; i < dim; ++i) sum += static_cast<std::uint32_t>(static_cast<std::int32_t>(a[i]) * u4_code(c, i));
  return static_cast<std::int32_t>(sum);  // modulo 2^32 past the limit, as the vector lanes wrap
}

#if defined(__AVX2__)
/// `dot_u4_i16` of four rows at once (dim >= 16), with their horizontal sums reduced together as in
/// `dot_u8_i16_x4`. Exact as `dot_u4_i16` is.
void dot_u4_i16_x4(const std::int16_t* a, const std::uint8_t* const* c, std::size_t dim, std::int32_t* out) noexcept {
  const __m256i low = _mm256_set1_epi16(0x0f);
  __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
  const auto codes = [&](std::size_t r, std::size_t i) {
    return _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c[r] + i / 2)));
  };
  std::size_t i = 0;
  for (; i + 32 <= dim; i += 32) {
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i));
    const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i + 16));
    for (std::size_t r = 0; r < 4; ++r) {
      const __m256i x = codes(r, i);
      acc[r] = _mm256_add_epi32(acc[r], _mm256_add_epi32(_mm256_madd_epi16(_mm256_and_si256(x, low), lo),
                                                         _mm256_madd_epi16(_mm256_srli_epi16(x, 4), hi)));
    }
  }
  if (i + 16 <= dim) {  // a last block of 16 to 31 components: its low half here, the rest below
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i));
    for (std::size_t r = 0; r < 4; ++r)
      acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(_mm256_and_si256(codes(r, i), low), lo));
    i += 16;
  }
  store_hsums4(acc, out);
  for (; i < dim; ++i)
    for (std::size_t r = 0; r < 4; ++r)
      out[r] = wrapping_add(out[r], static_cast<std::int32_t>(a[i]) * u4_code(c[r], i));
}
#endif

/// Rows of up to two lines (dim <= 256) four at a time, as the SQ8 gather; longer rows one at a time,
/// prefetched four rows ahead: at 784 dimensions (7 lines a row) two rows ahead left the memory
/// system idle (fashion-mnist HNSW32,SQ4, five alternating runs: three ahead +3..+7%, four +4..+14%;
/// six against four +1% to -25%).
void dot_u4_i16_gather(const std::int16_t* a, const std::uint8_t* const* codes, std::size_t n, std::size_t dim,
                       std::int32_t* out) noexcept {
  const std::size_t bytes = u4_code_bytes(dim);
#if defined(__AVX2__)
  if (dim >= 16 && bytes <= 128) {
    gather_fours(
        codes, n, bytes, out, [&](const std::uint8_t* const* c, std::int32_t* o) { dot_u4_i16_x4(a, c, dim, o); },
        [&](const std::uint8_t* c) { return dot_u4_i16(a, c, dim); });
    return;
  }
#endif
  gather_rows(
      codes, n, bytes, out, [&](const std::uint8_t* c) { return dot_u4_i16(a, c, dim); }, 4);
}

void squared_norms(const float* x, std::size_t n, std::size_t dim, std::size_t stride, float* out) noexcept {
  for (std::size_t i = 0; i < n; ++i) out[i] = dot_like<ip_term>(x + i * stride, x + i * stride, dim);
}

void inner_product_many(const float* a, std::size_t na, std::size_t lda, const float* b, std::size_t nb,
                        std::size_t ldb, std::size_t dim, float* c, std::size_t ldc) noexcept {
#ifdef SHOAL_KERNEL_ARCH
  // Eigen's GEMM packs panels into cache-sized blocks and runs a register-blocked FMA micro-kernel.
  using row_major = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using stride = Eigen::OuterStride<>;
  const Eigen::Map<const row_major, 0, stride> ma(a, static_cast<Eigen::Index>(na), static_cast<Eigen::Index>(dim),
                                                  stride(static_cast<Eigen::Index>(lda)));
  const Eigen::Map<const row_major, 0, stride> mb(b, static_cast<Eigen::Index>(nb), static_cast<Eigen::Index>(dim),
                                                  stride(static_cast<Eigen::Index>(ldb)));
  Eigen::Map<row_major, 0, stride> mc(c, static_cast<Eigen::Index>(na), static_cast<Eigen::Index>(nb),
                                      stride(static_cast<Eigen::Index>(ldc)));
  mc.noalias() = ma * mb.transpose();
#else
  for (std::size_t i = 0; i < na; ++i)
    for (std::size_t j = 0; j < nb; ++j) c[i * ldc + j] = inner_product(a + i * lda, b + j * ldb, dim);
#endif
}

/// Rank score of centroid j (see distance_kernels::rank_argmin). Never −0: 0 − ip, not −ip, which gave
/// −0 for ip = +0 at the scalar and AVX2 levels where xsimd's AVX-512 negation (a subtraction from 0)
/// gave +0 (a review: `assign` reported zero distances of either sign by level).
float rank_at(const float* ip, const float* norms, std::size_t j) noexcept {
  const float s = norms != nullptr ? norms[j] - (ip[j] + ip[j]) : 0.0f - ip[j];
  return s != s ? std::numeric_limits<float>::infinity() : s;
}

#ifdef SHOAL_KERNEL_ARCH
/// Rank scores of centroids j .. j + W − 1, as `rank_at` computes them.
batch rank_lanes(const float* ip, const float* norms, std::size_t j) noexcept {
  const batch x = lanes::load(ip + j);
  const batch s = norms != nullptr ? lanes::load(norms + j) - (x + x) : batch(0.0f) - x;
  return xsimd::select(xsimd::isnan(s), batch(std::numeric_limits<float>::infinity()), s);
}
#endif

void rank_argmin(const float* ip, const float* norms, std::size_t n, float* best, std::uint32_t* at) noexcept {
  constexpr float inf = std::numeric_limits<float>::infinity();
  float low = inf;
  std::size_t j = 0;
#ifdef SHOAL_KERNEL_ARCH
  // The smallest score lane-wise (a minimum is exact in any order), then the first position that holds it.
  // Two running minima: each min waits on the one before it, so one chain would run at its latency.
  batch m(inf), m2(inf);
  for (; j + 2 * W <= n; j += 2 * W) {
    m = xsimd::min(m, rank_lanes(ip, norms, j));
    m2 = xsimd::min(m2, rank_lanes(ip, norms, j + W));
  }
  if (j + W <= n) {
    m = xsimd::min(m, rank_lanes(ip, norms, j));
    j += W;
  }
  m = xsimd::min(m, m2);
  alignas(64) float part[W];
  m.store_aligned(part);
  for (const float v : part) low = std::min(low, v);
#endif
  for (; j < n; ++j) low = std::min(low, rank_at(ip, norms, j));
  if (!(low < *best)) return;
  *best = low;
  if (at == nullptr) return;
  j = 0;
#ifdef SHOAL_KERNEL_ARCH
  for (; j + W <= n && !xsimd::any(rank_lanes(ip, norms, j) == batch(low)); j += W) {
  }
#endif
  while (rank_at(ip, norms, j) != low) ++j;
  *at = static_cast<std::uint32_t>(j);
}

std::size_t rank_filter(const float* ip, const float* norms, std::size_t n, float bound, std::uint32_t* at,
                        float* scores) noexcept {
  std::size_t m = 0;
  std::size_t j = 0;
  const auto keep = [&](std::size_t pos, float s) {
    at[m] = static_cast<std::uint32_t>(pos);
    scores[m] = s;
    m += s <= bound ? 1 : 0;
  };
#ifdef SHOAL_KERNEL_ARCH
  // Most lanes fail once a bound is set: one compare and one test per W scores, and only a lane group
  // with a survivor is written out.
  const batch limit(bound);
  for (; j + W <= n; j += W) {
    const batch s = rank_lanes(ip, norms, j);
    if (!xsimd::any(s <= limit)) continue;
    alignas(64) float part[W];
    s.store_aligned(part);
    for (std::size_t l = 0; l < W; ++l) keep(j + l, part[l]);
  }
#endif
  for (; j < n; ++j) keep(j, rank_at(ip, norms, j));
  return m;
}

// Integer kernels: exact sums, written as plain loops that the compiler vectorises with this file's ISA
// flags (widening multiply-adds). Each product is at most 255² in magnitude, so the 32-bit sums are exact up
// to 33,025 dimensions (`int_kernel_max_dim`); beyond, they wrap (unsigned arithmetic: no undefined behaviour).
template <class T>
std::uint32_t l2sqr_int(const T* a, const T* b, std::size_t dim) noexcept {
  std::uint32_t acc = 0;
  for (std::size_t i = 0; i < dim; ++i) {
    const std::int32_t d = static_cast<std::int32_t>(a[i]) - static_cast<std::int32_t>(b[i]);
    acc += static_cast<std::uint32_t>(d * d);
  }
  return acc;
}

template <class T>
std::int32_t inner_product_int(const T* a, const T* b, std::size_t dim) noexcept {
  std::uint32_t acc = 0;
  for (std::size_t i = 0; i < dim; ++i)
    acc += static_cast<std::uint32_t>(static_cast<std::int32_t>(a[i]) * static_cast<std::int32_t>(b[i]));
  return static_cast<std::int32_t>(acc);
}

}  // namespace

const distance_kernels& table() noexcept {
  static constexpr distance_kernels k{
      .level = SHOAL_KERNEL_LEVEL,
      .l2sqr = l2sqr,
      .inner_product = inner_product,
      .cosine_distance = cosine_distance,
      .l2sqr_one_to_many = one_to_many<l2sqr, l2_term>,
      .inner_product_one_to_many = one_to_many<inner_product, ip_term>,
      .cosine_distance_one_to_many = one_to_many<cosine_distance>,
      .l2sqr_gather = gather<l2sqr>,
      .inner_product_gather = gather<inner_product>,
      .dot_u8_i16 = dot_u8_i16,
      .dot_u8_i16_gather = dot_u8_i16_gather,
      .dot_u8_i16_one_to_many = dot_u8_i16_one_to_many,
      .dot_u4_i16 = dot_u4_i16,
      .dot_u4_i16_gather = dot_u4_i16_gather,
      .squared_norms = squared_norms,
      .inner_product_many = inner_product_many,
      .rank_argmin = rank_argmin,
      .rank_filter = rank_filter,
      .l2sqr_u8 = l2sqr_int<std::uint8_t>,
      .inner_product_u8 = inner_product_int<std::uint8_t>,
      .l2sqr_i8 = l2sqr_int<std::int8_t>,
      .inner_product_i8 = inner_product_int<std::int8_t>,
  };
  return k;
}

}  // namespace shoal::detail::SHOAL_KERNEL_NS
