#pragma once

#include <cstddef>

namespace shoal::detail {

/// How many bytes ahead of the row being scored a one-to-many scan of a large block prefetches; 0: no
/// software prefetch. Chosen once per process from the CPU's vendor (dispatch.cpp): on Intel's Sapphire
/// Rapids 4 KiB lifted a single-query flat scan from 79% to 85-90% of the read ceiling (BENCHMARKS.md,
/// session 6); on AMD's Zen 4 the same prefetch cost the scan a fifth or more of its rate (session 38:
/// the hardware prefetchers alone stream faster there), and session 3 found the AVX2 Zen VM at 94% of
/// its ceiling without it. Not compiled per level: the value is plain data, read by every level's scan.
std::size_t stream_prefetch_bytes() noexcept;

}  // namespace shoal::detail
