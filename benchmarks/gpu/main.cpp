// shoal-gpu-bench: the CUDA coarse pass against cuBLAS's GEMM alone, over the grid of issue 8
// (queries nq in {1, 64, 1024, 16384}, lists nlist in {1024, 16384, 65536}, dim d in {128, 512, 768}).
//
//   BM_cublas_sgemm/nq/nlist/d    the nq x nlist x d SGEMM on device buffers: the rate the coarse pass is
//                                 held against (the target: the whole pass at >= 70% of it);
//   BM_coarse_probe/nq/nlist/d    cuda::coarse_quantizer::probe, nprobe 32: queries to the device, GEMM
//                                 tiles fused with the top-nprobe select (each tile within half of L2),
//                                 lists back to the host (everything a search pays);
//   BM_coarse_unfused/nq/nlist/d  the same search with 256 MiB score tiles: the GEMM writes the tile to
//                                 device memory and the select reads it back, i.e. cuBLAS GEMM + a
//                                 separate top-k, the baseline the fused pass is held against.
// Counters: GFLOP/s (2·nq·nlist·d per call) and GB/s (the inputs, the score tile written and read, the
// results), to read against the device's peak fp32 rate and memory bandwidth. Without a CUDA device it
// says so and measures nothing (exit status 0).
#include <benchmark/benchmark.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "shoal/core/types.hpp"
#include "shoal/cuda/coarse_quantizer.hpp"
#include "shoal/cuda/device.hpp"
#include "shoal/cuda/flat.hpp"
#include "shoal/eval/eval.hpp"

namespace {

constexpr std::size_t nprobe = 32;

void require(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("shoal-gpu-bench: ") + what + " failed");
}

void set_rates(benchmark::State& state, std::size_t nq, std::size_t nlist, std::size_t dim) {
  const double flops = 2.0 * static_cast<double>(nq) * static_cast<double>(nlist) * static_cast<double>(dim);
  const double bytes = 4.0 * (static_cast<double>((nq + nlist) * dim) + 2.0 * static_cast<double>(nq * nlist) +
                              2.0 * static_cast<double>(nq * nprobe));
  const auto iterations = static_cast<double>(state.iterations());
  state.counters["GFLOPs"] = benchmark::Counter(flops * iterations * 1e-9, benchmark::Counter::kIsRate);
  state.counters["GBps"] = benchmark::Counter(bytes * iterations * 1e-9, benchmark::Counter::kIsRate);
}

void bm_cublas_sgemm(benchmark::State& state) {
  const auto nq = static_cast<std::size_t>(state.range(0));
  const auto nlist = static_cast<std::size_t>(state.range(1));
  const auto dim = static_cast<std::size_t>(state.range(2));
  float *a = nullptr, *b = nullptr, *c = nullptr;
  require(cudaMalloc(reinterpret_cast<void**>(&a), nq * dim * sizeof(float)) == cudaSuccess, "cudaMalloc");
  require(cudaMalloc(reinterpret_cast<void**>(&b), nlist * dim * sizeof(float)) == cudaSuccess, "cudaMalloc");
  require(cudaMalloc(reinterpret_cast<void**>(&c), nq * nlist * sizeof(float)) == cudaSuccess, "cudaMalloc");
  require(cudaMemset(a, 0, nq * dim * sizeof(float)) == cudaSuccess, "cudaMemset");
  require(cudaMemset(b, 0, nlist * dim * sizeof(float)) == cudaSuccess, "cudaMemset");
  cublasHandle_t handle = nullptr;
  require(cublasCreate(&handle) == CUBLAS_STATUS_SUCCESS, "cublasCreate");
  const float one = 1.0f, zero = 0.0f;
  for (auto _ : state) {
    require(cublasSgemm(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(nlist), static_cast<int>(nq),
                        static_cast<int>(dim), &one, b, static_cast<int>(dim), a, static_cast<int>(dim), &zero, c,
                        static_cast<int>(nlist)) == CUBLAS_STATUS_SUCCESS,
            "cublasSgemm");
    require(cudaDeviceSynchronize() == cudaSuccess, "cudaDeviceSynchronize");
  }
  set_rates(state, nq, nlist, dim);
  (void)cublasDestroy(handle);
  (void)cudaFree(a);
  (void)cudaFree(b);
  (void)cudaFree(c);
}

/// The coarse pass over nlist uniform centroids, through `probe` (a callable taking the queries and the
/// nprobe lists out).
template <class Probe>
void run_probe(benchmark::State& state, const shoal::matrix<float>& queries, std::size_t nlist, Probe probe) {
  std::vector<std::uint32_t> probes(queries.rows * nprobe);
  for (auto _ : state) {
    probe(queries.view(), probes.data());
    benchmark::DoNotOptimize(probes.data());
  }
  set_rates(state, queries.rows, nlist, queries.dim);
}

void bm_coarse_probe(benchmark::State& state) {
  const auto nq = static_cast<std::size_t>(state.range(0));
  const auto nlist = static_cast<std::size_t>(state.range(1));
  const auto dim = static_cast<std::size_t>(state.range(2));
  const shoal::matrix<float> centroids = shoal::make_uniform(nlist, dim, 1);
  const shoal::cuda::coarse_quantizer coarse(centroids.view(), shoal::metric::l2, 0, 1);
  run_probe(state, shoal::make_uniform(nq, dim, 2), nlist,
            [&](shoal::matrix_view<const float> q, std::uint32_t* probes) { coarse.probe(q, nprobe, probes); });
}

void bm_coarse_unfused(benchmark::State& state) {
  const auto nq = static_cast<std::size_t>(state.range(0));
  const auto nlist = static_cast<std::size_t>(state.range(1));
  const auto dim = static_cast<std::size_t>(state.range(2));
  const shoal::matrix<float> centroids = shoal::make_uniform(nlist, dim, 1);
  const shoal::cuda::flat_index flat(centroids.view(), shoal::metric::l2, 0, std::size_t{256} << 20);
  std::vector<float> distances(nq * nprobe);
  run_probe(state, shoal::make_uniform(nq, dim, 2), nlist,
            [&](shoal::matrix_view<const float> q, std::uint32_t* probes) {
              flat.search(q, nprobe, probes, distances.data());
            });
}

void grid(benchmark::internal::Benchmark* b) {
  for (const std::int64_t d : {128, 512, 768})
    for (const std::int64_t nlist : {1024, 16384, 65536})
      for (const std::int64_t nq : {1, 64, 1024, 16384}) b->Args({nq, nlist, d});
  b->ArgNames({"nq", "nlist", "d"})->Unit(benchmark::kMicrosecond)->UseRealTime();
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (shoal::cuda::device_count() == 0) {
    std::puts("shoal-gpu-bench: no CUDA device; nothing measured");
    return 0;
  }
  benchmark::AddCustomContext("device", shoal::cuda::device_name(0));
  benchmark::RegisterBenchmark("BM_cublas_sgemm", bm_cublas_sgemm)->Apply(grid);
  benchmark::RegisterBenchmark("BM_coarse_probe", bm_coarse_probe)->Apply(grid);
  benchmark::RegisterBenchmark("BM_coarse_unfused", bm_coarse_unfused)->Apply(grid);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
