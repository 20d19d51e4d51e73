#pragma once

#include <cstddef>

namespace shoal::detail {

/// How the one-to-many kernels stream a block too large for cache (a flat scan, a long inverted list, a
/// coarse pass over many centroids). Neither choice changes a result: both change only how the same rows
/// reach the registers, so every level's scan stays bit-identical to its pair kernel.
///
/// Chosen once per process from the CPU's vendor (dispatch.cpp), because the two vendors measured want
/// opposite things (docs/kernels.md, "Streaming scans"):
/// - Intel's Sapphire Rapids: a 4 KiB prefetch lifted a single-query flat scan from 79% to 85-90% of the
///   read ceiling (BENCHMARKS.md, session 6).
/// - AMD's Zen 4 (session 38): the same prefetch cost the scan a quarter to a third of its rate, and the
///   AVX-512 level's 512-bit loads streamed DRAM a fifth slower than two 256-bit loads of the same lines.
struct stream_tuning {
  /// Bytes ahead of the row being scored that each row prefetches; 0: none.
  std::size_t prefetch_bytes = 4096;
  /// Whether a level with 512-bit registers loads each register of a streamed row as two 256-bit halves.
  bool half_loads = false;
};

/// The tuning in force: the CPU's, unless a test replaced it.
stream_tuning current_stream_tuning() noexcept;

/// Puts `tuning` in force and returns the one it replaces. For tests, which check every streaming path
/// whatever CPU runs them; not while scans run on other threads (they may see either tuning, never a
/// wrong result).
stream_tuning replace_stream_tuning(stream_tuning tuning) noexcept;

}  // namespace shoal::detail
