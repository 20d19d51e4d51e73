// The flat scan: flat_index search with k = 10 over 60000 x 784 clustered vectors (the size of MNIST),
// one query per call (GB/s of stored vectors streamed) and batches of 1000 queries (GFLOP/s of the
// GEMM path, 2 · n · d per query), at the active SIMD level.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <thread>
#include <vector>

#include <tbb/task_arena.h>

#include "micro/common.hpp"
#include "shoal/distance/distance.hpp"
#include "shoal/eval/eval.hpp"
#include "shoal/index/flat.hpp"

namespace shoal::bench {
namespace {

constexpr std::size_t base_rows = 60000;
constexpr std::size_t dim = 784;
constexpr std::size_t query_rows = 1000;
constexpr std::size_t k = 10;

struct flat_fixture {
  flat_index index{dim};
  matrix<float> queries{query_rows, dim};
};

/// Built on first use; queries are further draws from the same clusters as the base.
const flat_fixture& fixture() {
  static const flat_fixture f = [] {
    flat_fixture out;
    const matrix<float> data = make_clustered(base_rows + query_rows, dim, 100, 7);
    std::vector<vector_id> ids(base_rows);
    std::iota(ids.begin(), ids.end(), vector_id{0});
    out.index.add(data.view().slice(0, base_rows), ids);
    std::copy(data.row(base_rows), data.row(base_rows) + query_rows * dim, out.queries.values.begin());
    return out;
  }();
  return f;
}

void bm_flat_search_single(benchmark::State& state) {
  const flat_fixture& f = fixture();
  neighbors out(1, k);
  std::size_t q = 0;
  for (auto _ : state) {
    f.index.search(f.queries.view().slice(q, 1), out.view());
    q = (q + 1) % query_rows;
    benchmark::ClobberMemory();
  }
  state.SetLabel(simd_level_name());
  set_rates(state, static_cast<double>(base_rows * dim * sizeof(float)), 0);
}

/// All queries in one call, on an arena of `range(0)` threads.
void bm_flat_search_batch(benchmark::State& state) {
  const flat_fixture& f = fixture();
  neighbors out(query_rows, k);
  tbb::task_arena arena(static_cast<int>(state.range(0)));
  for (auto _ : state) {
    arena.execute([&] { f.index.search(f.queries.view(), out.view()); });
    benchmark::ClobberMemory();
  }
  state.SetLabel(simd_level_name());
  set_rates(state, 0, 2.0 * static_cast<double>(base_rows * dim * query_rows));
}

}  // namespace

void register_flat_benchmarks() {
  benchmark::RegisterBenchmark("BM_flat_search_single", bm_flat_search_single)->UseRealTime();
  const auto hardware = static_cast<std::int64_t>(std::max(1u, std::thread::hardware_concurrency()));
  auto* batch = benchmark::RegisterBenchmark("BM_flat_search_batch", bm_flat_search_batch)->ArgName("threads")->Arg(1);
  if (hardware > 1) batch->Arg(hardware);
  batch->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace shoal::bench
