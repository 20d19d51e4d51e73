#pragma once
/// \file
/// What the micro-benchmark files share: counters and the registration entry points main() calls.

#include <benchmark/benchmark.h>

namespace shoal::bench {

/// Reports bytes/s (`SetBytesProcessed`) and, when `flops_per_iteration` > 0, GFLOP/s as the rate
/// counter "GFLOPs" (a multiply-add counts as 2 flops).
inline void set_rates(benchmark::State& state, double bytes_per_iteration, double flops_per_iteration) {
  const auto iterations = static_cast<double>(state.iterations());
  if (bytes_per_iteration > 0) state.SetBytesProcessed(static_cast<std::int64_t>(iterations * bytes_per_iteration));
  if (flops_per_iteration > 0)
    state.counters["GFLOPs"] = benchmark::Counter(iterations * flops_per_iteration * 1e-9, benchmark::Counter::kIsRate);
}

/// Every float kernel at every available SIMD level (kernels.cpp).
void register_kernel_benchmarks();
/// flat_index single-query and batched search (flat_scan.cpp).
void register_flat_benchmarks();
/// Machine ceilings: streaming read bandwidth and peak FMA rate (ceilings.cpp).
void register_ceiling_benchmarks();
/// The PQ scan kernels, 4-bit fast-scan and 8-bit ADC, at every SIMD level (pq_scan.cpp).
void register_pq_benchmarks();

}  // namespace shoal::bench
