#pragma once
/// \file
/// The timing loop of shoal-ann-bench: one function measures every adapter, shoal's and the peers'.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "adapter.hpp"
#include "shoal/core/types.hpp"

namespace shoal::bench {

/// How searches are issued.
struct run_settings {
  std::size_t k = 10;
  /// Single-query mode: this many worker threads, each searching one query per call. Batch mode: the
  /// whole query set is one call, run in a oneTBB arena of this many threads.
  std::size_t threads = 1;
  bool batch = false;
  /// Each sweep point repeats passes over the queries until at least this long has elapsed.
  double min_time_s = 1.0;
};

/// The raw timings of one sweep point; rounds of the same point add up (`+=`) before `summarise`.
struct point_timing {
  double recall = 0;                ///< recall@k of the first full pass (of the first round)
  std::vector<double> latencies_s;  ///< one per search call
  std::size_t queries = 0;          ///< queries searched, all passes
  double wall_s = 0;
  point_timing& operator+=(const point_timing& later);
};

/// What one sweep point measured.
struct sweep_result {
  double recall = 0;  ///< recall@k over all queries of the first full pass
  double qps = 0;     ///< queries executed / wall seconds, over all passes
  double p50_ms = 0;  ///< latency percentiles of one search call: one query, or the whole batch (--batch)
  double p99_ms = 0;
};

/// Builds `index` over `base` inside an arena of `threads` threads; returns the wall seconds it took.
[[nodiscard]] double timed_build(index_adapter& index, matrix_view<const float> base, std::size_t threads);

/// Loads `index` from `path` (--load, mapped / verified as `options` say) instead of building it; returns the wall
/// seconds it took.
[[nodiscard]] double timed_load(index_adapter& index, const std::string& path, const load_options& options,
                                matrix_view<const float> base);

/// Measures `index` with its current search parameters: a warm-up pass over min(100, rows) queries, then
/// passes over all `queries` until `settings.min_time_s` has elapsed (at least one full pass). `truth`
/// holds per query at least k true ids (base row numbers), nearest first.
[[nodiscard]] point_timing measure(const index_adapter& index, matrix_view<const float> queries,
                                   matrix_view<const std::int32_t> truth, const run_settings& settings);

/// QPS (queries / wall seconds) and latency percentiles of `timing` (whose latencies get partially sorted).
[[nodiscard]] sweep_result summarise(point_timing& timing);

}  // namespace shoal::bench
