// Removals from an HNSW graph one at a time: how many stored ids a search returning everything misses
// between reachability walks, what a removal costs and the recall after (docs in src/index/hnsw.cpp,
// `keep_paths`). Not part of the build. Built against a libshoal.a and run, for example:
//   g++ -std=c++20 -O2 -Iinclude -Isrc benchmarks/results/hnsw-remove-paths.cpp build/libshoal.a -ltbb -o /tmp/paths
//   /tmp/paths reach 3000 8 1 ip 1     # N DIM SEED METRIC VARIED_NORMS: remove 30% one by one, search after each
//   /tmp/paths cost 20000 64 1 l2 0    # remove 10% one by one, timed; recall@10 of 200 queries after
// Data: make_clustered (6 clusters for `reach`, 64 for `cost`, spread 0.35), each row scaled by 10^u,
// u uniform in [-1, 1], with VARIED_NORMS 1. M 16. `reach` runs on one thread (deterministic).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include <tbb/task_arena.h>

#include "shoal/eval/eval.hpp"
#include "shoal/index/flat.hpp"
#include "shoal/index/hnsw.hpp"

using namespace shoal;

int main(int argc, char** argv) {
  if (argc != 7) {
    std::fprintf(stderr, "usage: %s reach|cost N DIM SEED ip|l2|cos VARIED_NORMS\n", argv[0]);
    return 2;
  }
  const std::string mode = argv[1];
  const std::size_t n = std::stoul(argv[2]), dim = std::stoul(argv[3]);
  const std::uint64_t seed = std::stoull(argv[4]);
  const std::string ms = argv[5];
  const bool varied = std::stoi(argv[6]) != 0;
  const metric m = ms == "ip" ? metric::inner_product : ms == "l2" ? metric::l2 : metric::cosine;
  const bool reach = mode == "reach";
  const std::size_t queries = reach ? 0 : 200;
  matrix<float> data = make_clustered(n + queries, dim, reach ? 6 : 64, seed, 0.35f);
  splitmix64 rng(seed);
  if (varied)
    for (std::size_t i = 0; i < n + queries; ++i) {
      const float s = std::pow(10.0f, static_cast<float>(rng.uniform() * 2 - 1));
      for (std::size_t j = 0; j < dim; ++j) data.row(i)[j] *= s;
    }
  std::vector<vector_id> ids(n);
  std::iota(ids.begin(), ids.end(), vector_id{0});
  std::vector<vector_id> order = ids;
  hnsw_index h(dim, m, {.M = 16});
  tbb::task_arena arena(reach ? 1 : tbb::task_arena::automatic);
  const auto t0 = std::chrono::steady_clock::now();
  arena.execute([&] { h.add(data.view().slice(0, n), ids); });
  const auto t1 = std::chrono::steady_clock::now();
  for (std::size_t i = n; i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
  if (reach) {
    std::set<vector_id> live(ids.begin(), ids.end());
    std::size_t bad = 0, most = 0;
    for (std::size_t r = 1; r <= n * 3 / 10; ++r) {
      arena.execute([&] { h.remove(order[r - 1]); });
      live.erase(order[r - 1]);
      const std::size_t size = h.size();
      neighbors got;
      arena.execute([&] { got = h.search({data.row(*live.begin()), 1, dim}, size, {.ef = 10 * size}); });
      std::size_t found = 0;
      for (std::size_t j = 0; j < size; ++j) found += got.id(0, j) != no_id ? 1 : 0;
      bad += found < size ? 1 : 0;
      most = std::max(most, size - found);
    }
    std::printf("reach %s n %zu dim %zu seed %llu%s: %zu removals, %zu states with missing ids, most at once %zu\n",
                ms.c_str(), n, dim, static_cast<unsigned long long>(seed), varied ? " varied norms" : "", n * 3 / 10,
                bad, most);
    return 0;
  }
  const std::size_t removals = n / 10;
  for (std::size_t r = 0; r < removals; ++r) h.remove(order[r]);
  const auto t2 = std::chrono::steady_clock::now();
  std::vector<char> gone(n, 0);
  for (std::size_t r = 0; r < removals; ++r) gone[order[r]] = 1;
  matrix<float> kept(n - removals, dim);
  std::vector<vector_id> kept_ids;
  for (std::size_t i = 0; i < n; ++i)
    if (gone[i] == 0) {
      std::copy_n(data.row(i), dim, kept.row(kept_ids.size()));
      kept_ids.push_back(i);
    }
  flat_index exact(dim, m);
  exact.add(kept.view(), kept_ids);
  const auto q = data.view().slice(n, queries);
  const neighbors gt = exact.search(q, 10);
  const double took = std::chrono::duration<double>(t2 - t1).count();
  std::printf("cost %s n %zu dim %zu seed %llu%s: build %.2f s, %zu removals %.3f s (%.1f us each)", ms.c_str(), n, dim,
              static_cast<unsigned long long>(seed), varied ? " varied norms" : "",
              std::chrono::duration<double>(t1 - t0).count(), removals, took, 1e6 * took / removals);
  for (const std::size_t ef : {16, 64})
    std::printf(", R@10 ef %zu %.4f", ef, recall_at_k(h.search(q, 10, {.ef = ef}), gt, 10));
  std::printf("\n");
}
