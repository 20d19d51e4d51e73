// The accumulation loops shared by the kernels that widen narrow codes (uint8, fp16) to floats and sum
// one term per component: included only by the per-level kernel files, each compiled with its ISA flags.
#pragma once

#include <cstddef>

#if defined(__AVX2__)
#include <immintrin.h>

namespace shoal::detail {
namespace {

/// Sum of the eight lanes of `v`.
inline float hsum(__m256 v) noexcept {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

/// Σ of `step(at, acc)` — which adds the terms of the 8 components from `at` to `acc` — over the first
/// `dim / 8 * 8` components, with four independent accumulators (32 components per iteration: two
/// would leave the FMA ports waiting on the FMA latency), then one register at a time. Sets `d` to the
/// first component not summed (the caller's scalar tail).
template <class Step>
inline float sum8x4(std::size_t dim, std::size_t& d, const Step& step) noexcept {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
  for (d = 0; d + 32 <= dim; d += 32) {
    acc0 = step(d, acc0);
    acc1 = step(d + 8, acc1);
    acc2 = step(d + 16, acc2);
    acc3 = step(d + 24, acc3);
  }
  for (; d + 8 <= dim; d += 8) acc0 = step(d, acc0);
  return hsum(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
}

#if defined(__AVX512F__)
/// The AVX-512 form: `step(at, mask, acc)` adds the terms of the (up to) 16 components from `at` that
/// `mask` selects; four accumulators, then one register at a time, then one masked step for the tail, so
/// there is no scalar tail (a chain of dependent scalar FMAs that can cost as much as the rest).
template <class Step>
inline float sum16x4(std::size_t dim, const Step& step) noexcept {
  constexpr __mmask16 all = 0xffff;
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
  std::size_t d = 0;
  for (; d + 64 <= dim; d += 64) {
    acc0 = step(d, all, acc0);
    acc1 = step(d + 16, all, acc1);
    acc2 = step(d + 32, all, acc2);
    acc3 = step(d + 48, all, acc3);
  }
  for (; d + 16 <= dim; d += 16) acc0 = step(d, all, acc0);
  if (d < dim) acc1 = step(d, static_cast<__mmask16>((1u << (dim - d)) - 1u), acc1);
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
}
#endif

}  // namespace
}  // namespace shoal::detail

#endif
