// Machine-ceiling loops, written once and compiled once per ISA. Deliberately not include-guarded:
// ceiling_avx2.cpp and ceiling_avx512.cpp define
//   SHOAL_CEILING_NS            the namespace (avx2 / avx512) of this ISA's definitions,
//   SHOAL_CEILING_TABLE         the ceiling_functions table they fill (avx2_ceilings / avx512_ceilings),
//   SHOAL_CEILING_ARCH          the xsimd architecture,
//   SHOAL_CEILING_FMA_CHAINS    independent FMA chains: enough to cover FMA latency x FMA ports, few
//                               enough to stay in registers (16 ymm for AVX2, 32 zmm for AVX-512),
// then include this file with their own ISA flags.

#include <array>
#include <cstddef>

#include <xsimd/xsimd.hpp>

#include "micro/ceiling.hpp"

namespace shoal::bench {
namespace SHOAL_CEILING_NS {
namespace {

using batch = xsimd::batch<float, SHOAL_CEILING_ARCH>;
constexpr std::size_t width = batch::size;
constexpr std::size_t read_accumulators = 8;
constexpr std::size_t fma_chain_count = SHOAL_CEILING_FMA_CHAINS;

template <std::size_t N>
float sum_of(const std::array<batch, N>& acc) noexcept {
  batch total = acc[0];
  for (std::size_t j = 1; j < N; ++j) total += acc[j];
  return xsimd::hadd(total);
}

template <bool Prefetch>
float read_sum(const float* data, std::size_t n) noexcept {
  constexpr std::size_t ahead = 4096 / sizeof(float);
  std::array<batch, read_accumulators> acc;
  acc.fill(batch(0.0f));
  std::size_t i = 0;
  for (; i + read_accumulators * width <= n; i += read_accumulators * width) {
    if constexpr (Prefetch)
      for (std::size_t b = 0; b < read_accumulators * width; b += 64 / sizeof(float))
        __builtin_prefetch(data + i + ahead + b, 0, 3);
    for (std::size_t j = 0; j < read_accumulators; ++j) acc[j] += batch::load_aligned(data + i + j * width);
  }
  float tail = 0.0f;
  for (; i < n; ++i) tail += data[i];
  return sum_of(acc) + tail;
}

float fma_chains(std::size_t iterations, float seed) noexcept {
  // x ← x·m + c converges to c / (1 − m): values stay normal, so no denormal slow path.
  const batch m(1.0f - seed * 1e-7f);
  const batch c(seed * 1e-3f);
  std::array<batch, fma_chain_count> acc;
  for (std::size_t j = 0; j < fma_chain_count; ++j) acc[j] = batch(seed + static_cast<float>(j));
  for (std::size_t i = 0; i < iterations; ++i)
    for (std::size_t j = 0; j < fma_chain_count; ++j) acc[j] = xsimd::fma(acc[j], m, c);
  return sum_of(acc);
}

}  // namespace
}  // namespace SHOAL_CEILING_NS

extern const ceiling_functions SHOAL_CEILING_TABLE = {SHOAL_CEILING_NS::read_sum<false>,
                                                      SHOAL_CEILING_NS::read_sum<true>, SHOAL_CEILING_NS::fma_chains,
                                                      2 * SHOAL_CEILING_NS::width* SHOAL_CEILING_NS::fma_chain_count};

}  // namespace shoal::bench
