// shoal-gpu-bench: the CUDA coarse pass against cuBLAS's GEMM alone, over the grid of issue 8
// (queries nq in {1, 64, 1024, 16384}, lists nlist in {1024, 16384, 65536}, dim d in {128, 512, 768}).
//
//   BM_cublas_sgemm/nq/nlist/d    the nq x nlist x d SGEMM on device buffers: the rate the coarse pass is
//                                 held against (the target: the whole pass at >= 70% of it);
//   BM_cublas_sgemm_tf32/…        the same GEMM in TF32 on the tensor cores;
//   BM_coarse_probe/nq/nlist/d    cuda::coarse_quantizer::probe, nprobe 32: queries to the device, GEMM
//                                 tiles fused with the top-nprobe select (each tile within half of L2),
//                                 lists back to the host (everything a search pays);
//   BM_coarse_probe_tf32/…        the same with the GEMM in TF32 on the tensor cores;
//   BM_coarse_unfused/nq/nlist/d  the same search with 256 MiB score tiles: the GEMM writes the tile to
//                                 device memory and the select reads it back, i.e. cuBLAS GEMM + a
//                                 separate top-k, the baseline the fused pass is held against.
//   BM_probe_transfer/nq/nlist/d  the copies a probe call makes and nothing else: nq queries up (from pageable
//                                 host memory, as a caller hands them over), nprobe lists and distances
//                                 down. BM_coarse_probe less this is the device's own share of the pass.
//   BM_probe_transfer_pitched/…   the same with the queries' copy made by cudaMemcpy2D (the pitched copy the
//                                 search makes for queries with a row stride), at a few points.
//   BM_coarse_probe_tile/nq/nlist/d/MiB  the fp32 pass with the score tile bounded by MiB instead of half
//                                 of L2 (the default), at the largest points of the grid: where the
//                                 default tile sits between too-narrow GEMMs and tiles that spill L2.
//   BM_coarse_probe_batch/nq/nlist/d/max_batch  the fp32 pass with at most max_batch queries per batch
//                                 (device_options::max_batch), so wider chunks in the same tile, at nq
//                                 16,384: the default made 144 small GEMM + select steps at nlist 65,536.
//   BM_ivf_search/nq/gpu          end to end: an IVF-Flat search (262,144 clustered vectors, d 128, nlist
//                                 16,384, nprobe 32, k 10) with the coarse pass on the CPU (gpu 0) or on
//                                 the device (gpu 1: fp32, gpu 2: TF32); the list scans run on the CPU's
//                                 cores either way.
//                                 The target: the device's coarse pass wins from nq >= 256.
// Counters, against the roofline of the device (its fp32 FMA peak and DRAM bandwidth, from the device
// attributes, printed in the context lines):
//   GFLOPs         2·nq·nlist·d per call;
//   GBps           the bytes the benchmark's scheme must move through DRAM: the GEMM reads both inputs and
//                  writes the score matrix; the fused pass reads the inputs and writes the lists (its tiles
//                  stay in L2); the unfused pass also writes and reads back the score matrix;
//   pct_fp32_peak  GFLOPs / the fp32 peak (TF32 rows may pass 100%: the tensor cores are faster);
//   pct_roofline   GFLOPs / min(fp32 peak, arithmetic intensity × bandwidth), with the intensity of the
//                  bytes above: how close the kernel comes to what its own traffic allows.
// Without a CUDA device it says so and measures nothing (exit status 0).
#include <benchmark/benchmark.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "shoal/core/types.hpp"
#include "shoal/cuda/coarse_quantizer.hpp"
#include "shoal/cuda/device.hpp"
#include "shoal/cuda/flat.hpp"
#include "shoal/eval/eval.hpp"
#include "shoal/index/ivf_flat.hpp"

namespace {

constexpr std::size_t nprobe = 32;

void require(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("shoal-gpu-bench: ") + what + " failed");
}

/// The device's roofline: fp32 FMA peak and DRAM bandwidth, from its attributes.
struct roofline {
  double gflops = 0;
  double gbps = 0;
};

roofline device_roofline(int device) {
  const auto attribute = [device](cudaDeviceAttr a) {
    int value = 0;
    require(cudaDeviceGetAttribute(&value, a, device) == cudaSuccess, "cudaDeviceGetAttribute");
    return value;
  };
  const int sms = attribute(cudaDevAttrMultiProcessorCount), clock_khz = attribute(cudaDevAttrClockRate);
  const int memory_khz = attribute(cudaDevAttrMemoryClockRate), bus_bits = attribute(cudaDevAttrGlobalMemoryBusWidth);
  const int major = attribute(cudaDevAttrComputeCapabilityMajor), minor = attribute(cudaDevAttrComputeCapabilityMinor);
  // fp32 lanes per SM: 64 on Volta and the A100 (7.x, 8.0), 128 from the 8.6 parts on (Hopper included).
  const int lanes = major < 8 || (major == 8 && minor == 0) ? 64 : 128;
  roofline r;
  r.gflops = 2.0 * sms * lanes * clock_khz * 1e-6;            // FMA = 2 flops
  r.gbps = 2.0 * memory_khz * 1e3 * (bus_bits / 8.0) * 1e-9;  // double data rate
  return r;
}

roofline peak;  // of device 0, set in main before any benchmark runs

/// What a benchmark must move through DRAM per call (see the counters above).
enum class traffic { gemm, fused, unfused };

void set_rates(benchmark::State& state, std::size_t nq, std::size_t nlist, std::size_t dim, traffic t) {
  const double flops = 2.0 * static_cast<double>(nq) * static_cast<double>(nlist) * static_cast<double>(dim);
  const double inputs = 4.0 * static_cast<double>((nq + nlist) * dim);
  const double scores = 4.0 * static_cast<double>(nq * nlist);
  const double lists = 8.0 * static_cast<double>(nq * nprobe);  // list number and distance
  const double bytes = t == traffic::gemm    ? inputs + scores
                       : t == traffic::fused ? inputs + lists
                                             : inputs + 2.0 * scores + lists;
  const auto iterations = static_cast<double>(state.iterations());
  const double attainable = std::min(peak.gflops, flops / bytes * peak.gbps);
  state.counters["GFLOPs"] = benchmark::Counter(flops * iterations * 1e-9, benchmark::Counter::kIsRate);
  state.counters["GBps"] = benchmark::Counter(bytes * iterations * 1e-9, benchmark::Counter::kIsRate);
  state.counters["pct_fp32_peak"] =
      benchmark::Counter(100.0 * flops * iterations * 1e-9 / peak.gflops, benchmark::Counter::kIsRate);
  state.counters["pct_roofline"] =
      benchmark::Counter(100.0 * flops * iterations * 1e-9 / attainable, benchmark::Counter::kIsRate);
}

/// One point of the grid: nq uniform queries and nlist uniform centroids of `dim`, the same data for
/// every benchmark (tensor cores also run faster on zeros than on real data).
struct grid_point {
  std::size_t nq, nlist, dim;
  shoal::matrix<float> queries, centroids;
  explicit grid_point(const benchmark::State& state)
      : nq(static_cast<std::size_t>(state.range(0))),
        nlist(static_cast<std::size_t>(state.range(1))),
        dim(static_cast<std::size_t>(state.range(2))),
        queries(shoal::make_uniform(nq, dim, 2)),
        centroids(shoal::make_uniform(nlist, dim, 1)) {}
};

void bm_cublas_sgemm(benchmark::State& state, shoal::cuda::gemm_precision precision) {
  const grid_point g(state);
  const std::size_t nq = g.nq, nlist = g.nlist, dim = g.dim;
  float *a = nullptr, *b = nullptr, *c = nullptr;
  require(cudaMalloc(reinterpret_cast<void**>(&a), nq * dim * sizeof(float)) == cudaSuccess, "cudaMalloc");
  require(cudaMalloc(reinterpret_cast<void**>(&b), nlist * dim * sizeof(float)) == cudaSuccess, "cudaMalloc");
  require(cudaMalloc(reinterpret_cast<void**>(&c), nq * nlist * sizeof(float)) == cudaSuccess, "cudaMalloc");
  require(cudaMemcpy(a, g.queries.values.data(), nq * dim * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess,
          "cudaMemcpy");
  require(cudaMemcpy(b, g.centroids.values.data(), nlist * dim * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess,
          "cudaMemcpy");
  cublasHandle_t handle = nullptr;
  require(cublasCreate(&handle) == CUBLAS_STATUS_SUCCESS, "cublasCreate");
  require(cublasSetMathMode(handle, precision == shoal::cuda::gemm_precision::tf32
                                        ? CUBLAS_TF32_TENSOR_OP_MATH
                                        : CUBLAS_DEFAULT_MATH) == CUBLAS_STATUS_SUCCESS,
          "cublasSetMathMode");
  const float one = 1.0f, zero = 0.0f;
  for (auto _ : state) {
    require(cublasSgemm(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(nlist), static_cast<int>(nq),
                        static_cast<int>(dim), &one, b, static_cast<int>(dim), a, static_cast<int>(dim), &zero, c,
                        static_cast<int>(nlist)) == CUBLAS_STATUS_SUCCESS,
            "cublasSgemm");
    require(cudaDeviceSynchronize() == cudaSuccess, "cudaDeviceSynchronize");
  }
  set_rates(state, nq, nlist, dim, traffic::gemm);
  (void)cublasDestroy(handle);
  (void)cudaFree(a);
  (void)cudaFree(b);
  (void)cudaFree(c);
}

/// The coarse pass over the point's centroids, through `probe` (a callable taking the queries and the
/// nprobe lists out).
template <class Probe>
void run_probe(benchmark::State& state, const grid_point& g, traffic t, Probe probe) {
  std::vector<std::uint32_t> probes(g.nq * nprobe);
  for (auto _ : state) {
    probe(g.queries.view(), probes.data());
    benchmark::DoNotOptimize(probes.data());
  }
  set_rates(state, g.nq, g.nlist, g.dim, t);
}

void bm_coarse_probe(benchmark::State& state, shoal::cuda::gemm_precision precision) {
  const grid_point g(state);
  const shoal::cuda::coarse_quantizer coarse(g.centroids.view(), shoal::metric::l2, 0, 1, {.precision = precision});
  run_probe(state, g, traffic::fused,
            [&](shoal::matrix_view<const float> q, std::uint32_t* probes) { coarse.probe(q, nprobe, probes); });
}

void bm_coarse_unfused(benchmark::State& state) {
  const grid_point g(state);
  const shoal::cuda::flat_index flat(g.centroids.view(), shoal::metric::l2, 0, {.tile_bytes = std::size_t{256} << 20});
  std::vector<float> distances(g.nq * nprobe);
  run_probe(state, g, traffic::unfused, [&](shoal::matrix_view<const float> q, std::uint32_t* probes) {
    flat.search(q, nprobe, probes, distances.data());
  });
}

void bm_probe_transfer(benchmark::State& state, bool pitched) {
  const grid_point g(state);
  float* batch = nullptr;
  float* lists = nullptr;
  const std::size_t list_floats = 2 * g.nq * nprobe;  // list numbers and distances, 4 bytes each
  require(cudaMalloc(reinterpret_cast<void**>(&batch), g.nq * g.dim * sizeof(float)) == cudaSuccess, "cudaMalloc");
  require(cudaMalloc(reinterpret_cast<void**>(&lists), list_floats * sizeof(float)) == cudaSuccess, "cudaMalloc");
  std::vector<float> host(list_floats);
  for (auto _ : state) {
    const std::size_t row_bytes = g.dim * sizeof(float);
    require(
        (pitched ? cudaMemcpy2D(batch, row_bytes, g.queries.values.data(), row_bytes, row_bytes, g.nq,
                                cudaMemcpyHostToDevice)
                 : cudaMemcpy(batch, g.queries.values.data(), g.nq * row_bytes, cudaMemcpyHostToDevice)) == cudaSuccess,
        "cudaMemcpy");
    require(cudaMemcpy(host.data(), lists, list_floats * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess,
            "cudaMemcpy");
  }
  set_rates(state, g.nq, g.nlist, g.dim, traffic::fused);
  (void)cudaFree(batch);
  (void)cudaFree(lists);
}

void bm_coarse_probe_tile(benchmark::State& state) {
  const grid_point g(state);
  const shoal::cuda::coarse_quantizer coarse(g.centroids.view(), shoal::metric::l2, 0, 1,
                                             {.tile_bytes = static_cast<std::size_t>(state.range(3)) << 20});
  run_probe(state, g, traffic::fused,
            [&](shoal::matrix_view<const float> q, std::uint32_t* probes) { coarse.probe(q, nprobe, probes); });
}

void bm_coarse_probe_batch(benchmark::State& state) {
  const grid_point g(state);
  const shoal::cuda::coarse_quantizer coarse(g.centroids.view(), shoal::metric::l2, 0, 1,
                                             {.max_batch = static_cast<std::size_t>(state.range(3))});
  run_probe(state, g, traffic::fused,
            [&](shoal::matrix_view<const float> q, std::uint32_t* probes) { coarse.probe(q, nprobe, probes); });
}

/// The end-to-end fixture, built once: training 16,384 lists on the CPU takes a while.
struct ivf_fixture {
  static constexpr std::size_t rows = 262144, dim = 128, lists = 16384;
  shoal::matrix<float> base = shoal::make_clustered(rows, dim, 4096, 7, 1.0f);
  shoal::ivf_flat_index index{dim, shoal::metric::l2, lists};
  std::unique_ptr<shoal::cuda::coarse_quantizer> gpu;
  std::unique_ptr<shoal::cuda::coarse_quantizer> gpu_tf32;

  ivf_fixture() {
    shoal::ivf_train_params train;
    train.iterations = 5;
    train.max_points_per_centroid = 16;
    index.train(base.view(), train);
    std::vector<shoal::vector_id> ids(rows);
    for (std::size_t i = 0; i < rows; ++i) ids[i] = i;
    index.add(base.view(), ids);
    gpu = std::make_unique<shoal::cuda::coarse_quantizer>(index.centroids(), shoal::metric::l2, 0, 1);
    gpu_tf32 = std::make_unique<shoal::cuda::coarse_quantizer>(
        index.centroids(), shoal::metric::l2, 0, 1,
        shoal::cuda::device_options{.precision = shoal::cuda::gemm_precision::tf32});
  }
  static const ivf_fixture& get() {
    static const ivf_fixture fixture;
    return fixture;
  }
};

void bm_ivf_search(benchmark::State& state) {
  const auto nq = static_cast<std::size_t>(state.range(0));
  const ivf_fixture& f = ivf_fixture::get();
  // Queries near stored vectors, as a search workload has them.
  shoal::matrix<float> queries = shoal::make_uniform(nq, ivf_fixture::dim, 3);
  for (std::size_t q = 0; q < nq; ++q)
    for (std::size_t j = 0; j < ivf_fixture::dim; ++j)
      queries.row(q)[j] = f.base.row((q * 7919) % ivf_fixture::rows)[j] + 0.05f * queries.row(q)[j];
  shoal::search_params params;
  params.nprobe = nprobe;
  if (state.range(1) != 0) params.coarse = state.range(1) == 1 ? f.gpu.get() : f.gpu_tf32.get();
  for (auto _ : state) benchmark::DoNotOptimize(f.index.search(queries.view(), 10, params));
  state.counters["QPS"] = benchmark::Counter(static_cast<double>(nq) * static_cast<double>(state.iterations()),
                                             benchmark::Counter::kIsRate);
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
    std::printf("shoal-gpu-bench: %s; nothing measured\n", shoal::cuda::no_device_reason().c_str());
    return 0;
  }
  benchmark::AddCustomContext("device", shoal::cuda::device_name(0));
  peak = device_roofline(0);
  benchmark::AddCustomContext("fp32_peak_gflops", std::to_string(peak.gflops));
  benchmark::AddCustomContext("dram_peak_gbps", std::to_string(peak.gbps));
  // End to end first: its target matters most, and the grid below may be cut short by the device check's limit.
  benchmark::RegisterBenchmark("BM_ivf_search", bm_ivf_search)
      ->ArgsProduct({{64, 256, 1024, 4096}, {0, 1, 2}})
      ->ArgNames({"nq", "gpu"})
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  benchmark::RegisterBenchmark("BM_cublas_sgemm", bm_cublas_sgemm, shoal::cuda::gemm_precision::fp32)->Apply(grid);
  benchmark::RegisterBenchmark("BM_cublas_sgemm_tf32", bm_cublas_sgemm, shoal::cuda::gemm_precision::tf32)->Apply(grid);
  benchmark::RegisterBenchmark("BM_coarse_probe", bm_coarse_probe, shoal::cuda::gemm_precision::fp32)->Apply(grid);
  benchmark::RegisterBenchmark("BM_coarse_probe_tf32", bm_coarse_probe, shoal::cuda::gemm_precision::tf32)->Apply(grid);
  benchmark::RegisterBenchmark("BM_coarse_unfused", bm_coarse_unfused)->Apply(grid);
  benchmark::RegisterBenchmark("BM_probe_transfer", bm_probe_transfer, false)->Apply(grid);
  benchmark::RegisterBenchmark("BM_probe_transfer_pitched", bm_probe_transfer, true)
      ->ArgsProduct({{1024, 16384}, {65536}, {128, 768}})
      ->ArgNames({"nq", "nlist", "d"})
      ->Unit(benchmark::kMicrosecond)
      ->UseRealTime();
  benchmark::RegisterBenchmark("BM_coarse_probe_tile", bm_coarse_probe_tile)
      ->ArgsProduct({{1024, 16384}, {65536}, {128, 768}, {4, 8, 16, 64, 128}})
      ->ArgNames({"nq", "nlist", "d", "MiB"})
      ->Unit(benchmark::kMicrosecond)
      ->UseRealTime();
  benchmark::RegisterBenchmark("BM_coarse_probe_batch", bm_coarse_probe_batch)
      ->ArgsProduct({{16384}, {16384, 65536}, {128, 768}, {256, 512, 1024, 4096}})
      ->ArgNames({"nq", "nlist", "d", "max_batch"})
      ->Unit(benchmark::kMicrosecond)
      ->UseRealTime();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
