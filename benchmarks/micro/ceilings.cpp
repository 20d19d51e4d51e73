// Machine ceilings measured in the same binary as the kernels, so that kernel GB/s and GFLOP/s can be
// read against them: single-thread streaming read bandwidth over 1 GiB, and peak FMA rate (independent
// chains in registers). Registered only for the ISAs this CPU runs.
#include <cstddef>
#include <string>

#include "micro/common.hpp"
#include "shoal/core/types.hpp"
#include "shoal/distance/distance.hpp"

#ifdef SHOAL_HAVE_X86_KERNELS
#include "micro/ceiling.hpp"
#endif

namespace shoal::bench {
namespace {

#ifdef SHOAL_HAVE_X86_KERNELS
struct ceiling_level {
  simd_level level;
  const char* fma_benchmark;
  const ceiling_functions* functions;
};

const ceiling_level levels[] = {
    {simd_level::avx2, "BM_ceiling_fma_avx2", &avx2_ceilings},
    {simd_level::avx512, "BM_ceiling_fma_avx512", &avx512_ceilings},
};

constexpr std::size_t read_bytes = std::size_t{1} << 30;
constexpr std::size_t fma_rounds = std::size_t{1} << 16;

/// 1 GiB of floats, 64-byte aligned and touched once (so page faults stay out of the measurement).
const aligned_vector<float>& read_buffer() {
  static const aligned_vector<float> data(read_bytes / sizeof(float), 1.0f);
  return data;
}

void bm_read_bandwidth(benchmark::State& state, const ceiling_level& l, bool prefetch) {
  const aligned_vector<float>& data = read_buffer();
  const auto sum = prefetch ? l.functions->read_sum_prefetch : l.functions->read_sum;
  for (auto _ : state) benchmark::DoNotOptimize(sum(data.data(), data.size()));
  set_rates(state, static_cast<double>(read_bytes), 0);
}

void bm_fma(benchmark::State& state, const ceiling_level& l) {
  float seed = 1.0f;
  for (auto _ : state) {
    benchmark::DoNotOptimize(seed);  // an opaque seed: the chains cannot be folded at compile time
    benchmark::DoNotOptimize(l.functions->fma_chains(fma_rounds, seed));
  }
  set_rates(state, 0, static_cast<double>(fma_rounds * l.functions->fma_flops_per_iteration));
}
#endif

#ifdef SHOAL_HAVE_AMX_KERNELS
void bm_amx(benchmark::State& state) {
  constexpr std::size_t rounds = std::size_t{1} << 14;
  float seed = 1.0f;
  for (auto _ : state) {
    benchmark::DoNotOptimize(seed);
    benchmark::DoNotOptimize(amx_ceilings.products(rounds, seed));
  }
  set_rates(state, 0, static_cast<double>(rounds * amx_ceilings.flops_per_iteration));
}
#endif

}  // namespace

void register_ceiling_benchmarks() {
#ifdef SHOAL_HAVE_X86_KERNELS
  for (const ceiling_level& l : levels) {
    if (!simd_level_available(l.level)) continue;
    for (const bool prefetch : {false, true}) {
      const std::string read_name =
          std::string(prefetch ? "BM_ceiling_read_bandwidth_prefetch/" : "BM_ceiling_read_bandwidth/") +
          simd_level_name(l.level);
      benchmark::RegisterBenchmark(read_name.c_str(), [&l, prefetch](benchmark::State& state) {
        bm_read_bandwidth(state, l, prefetch);
      })->Unit(benchmark::kMillisecond);
    }
    benchmark::RegisterBenchmark(l.fma_benchmark, [&l](benchmark::State& state) { bm_fma(state, l); });
  }
#endif
#ifdef SHOAL_HAVE_AMX_KERNELS
  if (simd_level_available(simd_level::amx)) benchmark::RegisterBenchmark("BM_ceiling_amx_bf16", bm_amx);
#endif
}

}  // namespace shoal::bench
