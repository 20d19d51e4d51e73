// shoal-kmeans-bench: times shoal's k-means against FAISS's Clustering (when built in) on the same data,
// k, iterations, subsampling cap and thread count, and prints the final objective of each and the
// imbalance factor of its partition of the whole base (k · Σ size² / n², 1 when every cluster holds n / k:
// the factor by which an IVF query scans more codes than the mean list, for queries drawn like the data),
// both partitions made by shoal::assign so that they are counted alike.
//
//   shoal-kmeans-bench BASE K ITERATIONS [THREADS] [MAX_BASE] [BOUNDS]
//
// BOUNDS picks shoal's bounded iterations (kmeans_params::triangle_bounds / bound_groups): `auto` (the
// default), `off` (every iteration a full GEMM step), or a number of centroid groups (k: Elkan's bounds).
//
// Both run random initialisation (FAISS's only one) with at most 256 points per centroid. FAISS threads
// with OpenMP and its BLAS (`use_faiss_threads` caps both), shoal on a oneTBB arena of the same size.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include <tbb/task_arena.h>

#include "args.hpp"
#include "shoal/cluster/kmeans.hpp"
#include "shoal/distance/distance.hpp"
#include "shoal/io/vecs.hpp"

#ifdef SHOAL_BENCH_HAVE_FAISS
#include <faiss/Clustering.h>
#include <faiss/IndexFlat.h>

#include "../faiss_threads.hpp"
#endif

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double imbalance(const shoal::matrix<float>& base, shoal::matrix_view<const float> centroids) {
  std::vector<double> sizes(centroids.rows, 0.0);
  for (const std::uint32_t label : shoal::assign(base.view(), centroids).labels) sizes[label] += 1.0;
  double squares = 0.0;
  for (const double s : sizes) squares += s * s;
  const auto n = static_cast<double>(base.rows);
  return static_cast<double>(centroids.rows) * squares / (n * n);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4 || argc > 7) {
    std::fprintf(stderr, "usage: shoal-kmeans-bench BASE K ITERATIONS [THREADS] [MAX_BASE] [auto|off|GROUPS]\n");
    return 2;
  }
  using shoal::examples::whole_number;
  constexpr auto any = static_cast<std::size_t>(-1);
  try {
    const std::size_t k = whole_number("K", argv[2], 1, any);
    // Bounded: "-1" once ran 2^64 - 1 iterations, silently (a user-eyes review).
    const std::size_t iterations = whole_number("ITERATIONS", argv[3], 1, 100'000);
    const int threads = argc > 4 ? static_cast<int>(whole_number("THREADS", argv[4], 1, 4096)) : 1;
    const std::size_t max_base = argc > 5 ? whole_number("MAX_BASE", argv[5], 0, any) : 0;
    const std::string bounds = argc > 6 ? argv[6] : "auto";
    const std::size_t groups =
        bounds == "off" || bounds == "auto" ? 0 : whole_number("BOUNDS (auto, off or groups)", bounds, 1, any);
    const shoal::matrix<float> base = shoal::io::read_vectors(argv[1], max_base);
    std::printf("library,k,iterations,points,dim,threads,simd,seconds,objective,bounds,imbalance\n");

    shoal::kmeans_params params;
    params.k = k;
    params.iterations = iterations;
    params.init = shoal::kmeans_init::random;
    params.max_points_per_centroid = 256;
    params.triangle_bounds = bounds != "off";
    params.bound_groups = groups;
    shoal::kmeans_result result;
    const auto start = std::chrono::steady_clock::now();
    tbb::task_arena(threads).execute([&] { result = shoal::kmeans(base.view(), params); });
    const double seconds = seconds_since(start);
    std::printf("shoal,%zu,%zu,%zu,%zu,%d,%s,%.3f,%.6g,%s,%.3f\n", k, iterations, result.training_points, base.dim,
                threads, shoal::simd_level_name(), seconds, result.objective.back(), bounds.c_str(),
                imbalance(base, result.centroids.view()));

#ifdef SHOAL_BENCH_HAVE_FAISS
    shoal::bench::use_faiss_threads(static_cast<std::size_t>(threads));
    faiss::ClusteringParameters cp;
    cp.niter = static_cast<int>(iterations);
    cp.max_points_per_centroid = 256;
    faiss::Clustering clustering(static_cast<int>(base.dim), static_cast<int>(k), cp);
    faiss::IndexFlatL2 assigner(static_cast<faiss::Index::idx_t>(base.dim));
    const auto faiss_start = std::chrono::steady_clock::now();
    clustering.train(static_cast<faiss::Index::idx_t>(base.rows), base.values.data(), assigner);
    const double faiss_seconds = seconds_since(faiss_start);
    // FAISS records the objective of each iteration's assignment, as shoal does.
    const shoal::matrix_view<const float> faiss_centroids{clustering.centroids.data(), k, base.dim, base.dim};
    std::printf("faiss,%zu,%zu,%zu,%zu,%d,-,%.3f,%.6g,-,%.3f\n", k, iterations,
                std::min(base.rows, k * std::size_t{256}), base.dim, threads, faiss_seconds,
                static_cast<double>(clustering.iteration_stats.back().obj), imbalance(base, faiss_centroids));
#endif
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shoal-kmeans-bench: %s\n", e.what());
    return 1;
  }
}
