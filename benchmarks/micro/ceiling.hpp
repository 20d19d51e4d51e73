#pragma once
/// \file
/// Machine ceilings, one implementation per ISA (ceiling_avx2.cpp, ceiling_avx512.cpp, each compiled
/// with its own flags from ceiling-inl.hpp). Only tables of plain function pointers leave those files,
/// and callers must check `shoal::simd_level_available` before calling through one.

#include <cstddef>

namespace shoal::bench {

struct ceiling_functions {
  /// Σ data[0..n) with several independent accumulators of aligned loads: streaming read bandwidth.
  /// `data` must be 64-byte aligned.
  float (*read_sum)(const float* data, std::size_t n) noexcept;
  /// The same sum with a software prefetch 4 KiB ahead of the loads: what one core reads when it keeps
  /// more lines in flight than the hardware prefetchers do (the scan kernels stream this way).
  float (*read_sum_prefetch)(const float* data, std::size_t n) noexcept;
  /// `iterations` rounds of independent FMA chains in registers (no memory traffic); returns their sum
  /// so that the chains stay live.
  float (*fma_chains)(std::size_t iterations, float seed) noexcept;
  /// Flops of one round of fma_chains (2 per lane and chain).
  std::size_t fma_flops_per_iteration;
};

extern const ceiling_functions avx2_ceilings;
extern const ceiling_functions avx512_ceilings;

/// The AMX BF16 tile unit's peak (ceiling_amx.cpp, where the compiler has AMX).
struct amx_ceiling_functions {
  /// `iterations` rounds of four independent tile products (TDPBF16PS) in tile registers.
  float (*products)(std::size_t iterations, float seed) noexcept;
  /// Flops of one round (2 per multiply-add).
  std::size_t flops_per_iteration;
};

extern const amx_ceiling_functions amx_ceilings;

}  // namespace shoal::bench
