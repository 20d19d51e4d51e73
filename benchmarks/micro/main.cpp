// shoal-micro-bench: Google Benchmark micro-benchmarks of the distance kernels (every SIMD level), the
// flat scan, and the machine's ceilings to compare them with. Filter with --benchmark_filter=REGEX.
#include <string>

#include "micro/common.hpp"
#include "shoal/distance/distance.hpp"

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  std::string levels;
  for (const shoal::simd_level level : shoal::available_simd_levels()) {
    if (!levels.empty()) levels += ',';
    levels += shoal::simd_level_name(level);
  }
  benchmark::AddCustomContext("shoal_simd_active", shoal::simd_level_name());
  benchmark::AddCustomContext("shoal_simd_available", levels);
  shoal::bench::register_kernel_benchmarks();
  shoal::bench::register_flat_benchmarks();
  shoal::bench::register_ceiling_benchmarks();
  shoal::bench::register_pq_benchmarks();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
