// The float kernels of every SIMD level this CPU runs, side by side: pairwise (L2, inner product,
// cosine), L2 one-to-many over an L1-resident and a DRAM-sized set, and the inner-product GEMM.
// Flops per element: L2 3 (subtract, multiply-add), inner product 2, cosine 6 (three multiply-adds).
#include <algorithm>
#include <cstddef>
#include <string>
#include <vector>

#include "micro/common.hpp"
#include "shoal/distance/distance.hpp"
#include "shoal/eval/eval.hpp"

namespace shoal::bench {
namespace {

constexpr std::size_t l1_set_bytes = std::size_t{16} << 10;     // well inside a 32 KiB L1d
constexpr std::size_t dram_set_bytes = std::size_t{256} << 20;  // beyond any L3
constexpr std::size_t gemm_rows_a = 256;                        // queries
constexpr std::size_t gemm_rows_b = 1024;                       // stored vectors

/// Seeded uniform floats shared by every kernel benchmark: the DRAM-sized set plus room for queries.
const float* pool() {
  static const aligned_vector<float> values = [] {
    aligned_vector<float> v(dram_set_bytes / sizeof(float) + 4096);
    splitmix64 rng(42);
    for (float& x : v) x = rng.uniform() * 2.0f - 1.0f;
    return v;
  }();
  return values.data();
}

std::size_t dim_of(const benchmark::State& state) { return static_cast<std::size_t>(state.range(0)); }

/// A pairwise kernel of the table; two vectors that stay in L1.
template <auto Kernel, int FlopsPerElement>
void bm_pair(benchmark::State& state, const distance_kernels& k) {
  const std::size_t dim = dim_of(state);
  const float* a = pool();
  const float* b = a + dim;
  for (auto _ : state) benchmark::DoNotOptimize((k.*Kernel)(a, b, dim));
  set_rates(state, 2.0 * static_cast<double>(dim * sizeof(float)), FlopsPerElement * static_cast<double>(dim));
}

/// One query against the vectors of a `SetBytes`-sized set.
template <std::size_t SetBytes>
void bm_l2sqr_one_to_many(benchmark::State& state, const distance_kernels& k) {
  const std::size_t dim = dim_of(state);
  const std::size_t n = std::max<std::size_t>(1, SetBytes / (dim * sizeof(float)));
  const float* x = pool();
  const float* q = x + n * dim;
  std::vector<float> out(n);
  for (auto _ : state) {
    k.l2sqr_one_to_many(q, x, n, dim, dim, out.data());
    benchmark::ClobberMemory();
  }
  set_rates(state, static_cast<double>(n * dim * sizeof(float)), 3.0 * static_cast<double>(n * dim));
}

/// The blocked GEMM c = a·bᵀ; bytes are those of the two input matrices.
void bm_inner_product_many(benchmark::State& state, const distance_kernels& k) {
  const std::size_t dim = dim_of(state);
  const float* a = pool();
  const float* b = a + gemm_rows_a * dim;
  std::vector<float> c(gemm_rows_a * gemm_rows_b);
  for (auto _ : state) {
    k.inner_product_many(a, gemm_rows_a, dim, b, gemm_rows_b, dim, dim, c.data(), gemm_rows_b);
    benchmark::ClobberMemory();
  }
  set_rates(state, static_cast<double>((gemm_rows_a + gemm_rows_b) * dim * sizeof(float)),
            2.0 * static_cast<double>(gemm_rows_a * gemm_rows_b * dim));
}

struct kernel_benchmark {
  const char* name;
  void (*run)(benchmark::State&, const distance_kernels&);
};

constexpr kernel_benchmark benchmarks[] = {
    {"BM_l2sqr", bm_pair<&distance_kernels::l2sqr, 3>},
    {"BM_inner_product", bm_pair<&distance_kernels::inner_product, 2>},
    {"BM_cosine_distance", bm_pair<&distance_kernels::cosine_distance, 6>},
    {"BM_l2sqr_one_to_many_l1", bm_l2sqr_one_to_many<l1_set_bytes>},
    {"BM_l2sqr_one_to_many_dram", bm_l2sqr_one_to_many<dram_set_bytes>},
    {"BM_inner_product_many", bm_inner_product_many},
};

}  // namespace

void register_kernel_benchmarks() {
  for (const kernel_benchmark& b : benchmarks) {
    for (const simd_level level : available_simd_levels()) {
      const distance_kernels& k = kernels(level);
      const std::string name = std::string(b.name) + "/" + simd_level_name(level);
      benchmark::RegisterBenchmark(name.c_str(), [run = b.run, &k](benchmark::State& state) { run(state, k); })
          ->ArgName("dim")
          ->Arg(100)  // not a multiple of any SIMD width: the tail path
          ->Arg(128)
          ->Arg(784)
          ->Arg(960);
    }
  }
}

}  // namespace shoal::bench
