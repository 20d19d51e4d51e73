// Counts HNSW nodes that no search can reach (not found by their own vector even at ef 3,000 > n),
// as docs/hnsw.md "Concurrency" reports. Not part of the build; from the repository root, after
// `cmake --preset release && cmake --build build`:
//
//   g++ -std=c++20 -O2 -Iinclude -Ibuild/include benchmarks/results/hnsw-orphans.cpp build/libshoal.a -ltbb
//       -o /tmp/hnsw-orphans
//   /tmp/hnsw-orphans one-call   # 2,400 vectors in one add call on the machine's worker threads
//   /tmp/hnsw-orphans scenario   # the TSan test's scenario: 1,200 vectors, then two adders, a remover
//                                # and an upserter in parallel (TBB limited to one worker per call)
//
// 30 builds each (seeds 100..129): prints per build the self-search hits at the default ef and the
// nodes missing even at ef 3,000, then the total of the latter.
#include <oneapi/tbb/global_control.h>

#include <cstdio>
#include <memory>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "shoal/eval/eval.hpp"
#include "shoal/index/hnsw.hpp"

using namespace shoal;

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "one-call";
  constexpr std::size_t d = 16, n = 1200;
  const matrix<float> data = make_clustered(2 * n, d, 10, 71);
  std::unique_ptr<tbb::global_control> one_worker;
  if (mode == "scenario")
    one_worker = std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism, 1);
  std::size_t orphans = 0;
  for (int trial = 0; trial < 30; ++trial) {
    hnsw_params p;
    p.M = 8;
    p.ef_construction = 40;
    p.seed = 100 + static_cast<std::uint64_t>(trial);
    hnsw_index index(d, metric::l2, p);
    const auto ids_from = [](vector_id first, std::size_t count) {
      std::vector<vector_id> ids(count);
      std::iota(ids.begin(), ids.end(), first);
      return ids;
    };
    if (mode == "one-call") {
      index.add(data.view(), ids_from(0, 2 * n));
    } else {
      index.add(data.view().slice(0, n), ids_from(0, n));
      std::vector<std::thread> threads;
      for (std::size_t t = 0; t < 2; ++t)
        threads.emplace_back([&, t] {
          for (std::size_t b = n + t * (n / 2); b < n + (t + 1) * (n / 2); b += 50)
            index.add(data.view().slice(b, 50), ids_from(b, 50));
        });
      threads.emplace_back([&] {
        for (vector_id id = 0; id < n / 2; id += 2) index.remove(id);
      });
      threads.emplace_back([&] {
        for (vector_id id = n / 2; id < 3 * n / 4; id += 3) index.upsert(data.view().slice(2 * n - 1 - id, 1), id);
      });
      for (std::thread& t : threads) t.join();
    }
    std::size_t found = 0, probes = 0, missing = 0;
    for (vector_id id = 0; id < 2 * n; ++id) {
      if (!index.contains(id)) continue;
      const std::vector<float> v = index.vector(id);
      const auto hit = [&](const neighbors& got) { return got.id(0, 0) == id || got.distance(0, 0) == 0.0f; };
      ++probes;
      if (hit(index.search({v.data(), 1, d}, 1))) {
        ++found;
      } else if (!hit(index.search({v.data(), 1, d}, 1, {.ef = 3000}))) {
        ++missing;
      }
    }
    orphans += missing;
    std::printf("%s build %d: self-search %zu/%zu at the default ef, %zu unreachable\n", mode.c_str(), trial, found,
                probes, missing);
  }
  std::printf("%s: %zu unreachable nodes over 30 builds\n", mode.c_str(), orphans);
}
