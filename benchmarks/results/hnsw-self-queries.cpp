// Self-queries missed at the default ef by shoal's HNSW and by hnswlib on the same well-separated
// clusters (the data of test_hnsw's concurrency test: make_clustered(2,400, 16-d, 10 clusters, seed 71)),
// as docs/hnsw.md "What remains" (b) reports. Not part of the build; from the repository root, after
// `cmake --preset release && cmake --build build`:
//
//   g++ -std=c++20 -O2 -march=native -Iinclude -Ibuild/include benchmarks/results/hnsw-self-queries.cpp
//       build/libshoal.a -ltbb -o /tmp/hnsw-self-queries
//   /tmp/hnsw-self-queries [M [ef_construction]]   # default M 8, ef_construction 40
//
// 20 builds (seeds 1..20) of each library, ef 64, k 1: prints per seed the queries whose own vector
// was not returned first (an exact duplicate at distance 0 counts as found).
#include <hnswlib/hnswlib.h>

#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <vector>

#include "shoal/eval/eval.hpp"
#include "shoal/index/hnsw.hpp"

using namespace shoal;

int main(int argc, char** argv) {
  constexpr std::size_t d = 16, n = 2400;
  const std::size_t M = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 8;
  const std::size_t efc = argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 40;
  const matrix<float> data = make_clustered(n, d, 10, 71);
  std::vector<vector_id> ids(n);
  std::iota(ids.begin(), ids.end(), vector_id{0});
  for (int seed = 1; seed <= 20; ++seed) {
    hnswlib::L2Space space(d);
    hnswlib::HierarchicalNSW<float> peer(&space, n, M, efc, static_cast<std::size_t>(seed));
    for (std::size_t i = 0; i < n; ++i) peer.addPoint(data.row(i), i);
    peer.setEf(64);
    int peer_missed = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const auto top = peer.searchKnn(data.row(i), 1).top();
      peer_missed += top.second != i && top.first != 0.0f ? 1 : 0;
    }
    hnsw_params p;
    p.M = M;
    p.ef_construction = efc;
    p.seed = static_cast<std::uint64_t>(seed);
    hnsw_index index(d, metric::l2, p);
    index.add(data.view(), ids);
    int missed = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const neighbors got = index.search({data.row(i), 1, d}, 1);
      missed += got.id(0, 0) != i && got.distance(0, 0) != 0.0f ? 1 : 0;
    }
    std::printf("seed %d hnswlib %d shoal %d\n", seed, peer_missed, missed);
  }
}
