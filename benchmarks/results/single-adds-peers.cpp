// One-vector adds into FAISS and hnswlib, the peers of benchmarks/results/ivf-single-adds.cpp (same data:
// shoal::make_clustered(N, DIM, 16, 7, 1.0), the first 10,000 rows to train; N adds of one vector each,
// timed in four quarters). Session 37:
//   g++ -std=c++20 -O3 -DNDEBUG -fopenmp -Iinclude -Ibuild/include benchmarks/results/single-adds-peers.cpp
//       build/libshoal.a -lfaiss -llapack -lblas -ltbb -o /tmp/adds-peers
//   /tmp/adds-peers IVFFlat 128 40000; /tmp/adds-peers IVFPQFastScan 16 100000; /tmp/adds-peers HNSW 16 100000
// (IVFFlat: 4 lists; IVFPQFastScan: 4 lists, 4 sub-quantizers of 4 bits; HNSW: hnswlib, M 16,
// ef_construction 200; IVFPQ, since session 41: 4 lists, 4 sub-quantizers of 8 bits, and 2,000 one-id
// removes after the adds.) FAISS runs with one OpenMP thread (OMP_NUM_THREADS=1 in the runs reported).
#include <faiss/IndexFlat.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/IndexIVFPQFastScan.h>
#include <faiss/impl/IDSelector.h>
#include <hnswlib/hnswlib.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>

#include "shoal/eval/eval.hpp"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s IVFFlat|IVFPQ|IVFPQFastScan|HNSW DIM N\n", argv[0]);
    return 2;
  }
  const std::string kind = argv[1];
  const auto dim = static_cast<std::size_t>(std::atol(argv[2]));
  const auto n = static_cast<std::size_t>(std::atol(argv[3]));
  const shoal::matrix<float> data = shoal::make_clustered(n, dim, 16, 7, 1.0f);
  const auto d = static_cast<faiss::Index::idx_t>(dim);
  faiss::IndexFlatL2 quantizer(d);
  std::unique_ptr<faiss::Index> ivf;
  std::unique_ptr<hnswlib::L2Space> space;
  std::unique_ptr<hnswlib::HierarchicalNSW<float>> graph;
  std::function<void(std::size_t)> add;
  if (kind == "HNSW") {
    space = std::make_unique<hnswlib::L2Space>(dim);
    graph = std::make_unique<hnswlib::HierarchicalNSW<float>>(space.get(), n, 16, 200, 100);
    add = [&](std::size_t i) { graph->addPoint(data.row(i), i); };
  } else {
    if (kind == "IVFFlat")
      ivf = std::make_unique<faiss::IndexIVFFlat>(&quantizer, d, 4);
    else if (kind == "IVFPQ")
      ivf = std::make_unique<faiss::IndexIVFPQ>(&quantizer, d, 4, 4, 8);
    else
      ivf = std::make_unique<faiss::IndexIVFPQFastScan>(&quantizer, d, 4, 4, 4);
    ivf->train(static_cast<faiss::Index::idx_t>(std::min<std::size_t>(n, 10000)), data.row(0));
    add = [&](std::size_t i) { ivf->add(1, data.row(i)); };
  }
  const std::size_t quarter = n / 4;
  double total = 0;
  for (std::size_t part = 0; part < 4; ++part) {
    const auto start = std::chrono::steady_clock::now();
    for (std::size_t i = part * quarter; i < (part + 1) * quarter; ++i) add(i);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    total += s;
    std::printf("adds %zu-%zu: %.3f s (%.2f us per add)\n", part * quarter, (part + 1) * quarter, s, 1e6 * s / quarter);
  }
  std::printf("%s d %zu: %zu one-vector adds in %.3f s\n", kind.c_str(), dim, 4 * quarter, total);
  if (!ivf || kind == "IVFPQFastScan") return 0;  // hnswlib marks deletions; FAISS's fast-scan lists remove none
  // Since session 41: one-id removes spread over the index (FAISS: `remove_ids`, which visits every list).
  constexpr std::size_t removes = 2000;
  const auto start = std::chrono::steady_clock::now();
  for (std::size_t r = 0; r < removes; ++r) {
    const auto id = static_cast<faiss::Index::idx_t>(r * (n / removes));
    if (ivf->remove_ids(faiss::IDSelectorBatch(1, &id)) != 1) return 1;
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%zu one-id removes: %.3f s (%.2f us per remove)\n", removes, s, 1e6 * s / removes);
}
