// Per-removal cost of hnsw_index::remove: mean, median, 99th percentile and max over REMOVALS removals
// from an N x 64 index (make_clustered, 64 clusters, each row scaled by 10^(u*E), u uniform in [-1, 1]),
// removal order random, "hubs" (largest norms first) or "oldest"; build on all threads, remove on one.
// Not part of the build. Written by a review (session 35). Usage, for example:
//   g++ -std=c++20 -O2 -Iinclude -Isrc benchmarks/results/hnsw-remove-cost.cpp build/libshoal.a -ltbb -o /tmp/cost
//   /tmp/cost N ip|l2|cos E random|hubs|oldest REMOVALS [M]      e.g. /tmp/cost 20000 ip 1 random 1000 2
#include <tbb/task_arena.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <shoal/eval/eval.hpp>
#include <shoal/index/hnsw.hpp>
#include <string>
using namespace shoal;
int main(int argc, char** argv) {
  const std::size_t n = std::strtoul(argv[1], nullptr, 10), dim = 64;
  const std::string ms = argv[2];
  const float expo = std::strtof(argv[3], nullptr);
  const std::string order_kind = argv[4];
  const std::size_t removals = std::strtoul(argv[5], nullptr, 10);
  const metric m = ms == "ip" ? metric::inner_product : ms == "l2" ? metric::l2 : metric::cosine;
  matrix<float> data = make_clustered(n, dim, 64, 1, 0.35f);
  splitmix64 rng(7);
  std::vector<float> norm(n);
  for (std::size_t i = 0; i < n; ++i) {
    const float s = std::pow(10.0f, (rng.uniform() * 2 - 1) * expo);
    norm[i] = s;
    for (std::size_t j = 0; j < dim; ++j) data.row(i)[j] *= s;
  }
  std::vector<vector_id> ids(n);
  std::iota(ids.begin(), ids.end(), vector_id{0});
  const std::size_t M = argc > 6 ? std::strtoul(argv[6], nullptr, 10) : 16;
  hnsw_index index(dim, m, {.M = M});
  auto t0 = std::chrono::steady_clock::now();
  index.add(data.view(), ids);
  std::printf("build %.1f s\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  std::vector<vector_id> order = ids;
  if (order_kind == "hubs")
    std::sort(order.begin(), order.end(), [&](auto a, auto b) { return norm[a] > norm[b]; });
  else if (order_kind == "oldest") {
  } else
    for (std::size_t i = n; i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
  std::vector<double> us;
  tbb::task_arena one(1);
  one.execute([&] {
    for (std::size_t r = 0; r < removals; ++r) {
      const auto a = std::chrono::steady_clock::now();
      index.remove(order[r]);
      us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - a).count());
    }
  });
  std::size_t over2 = 0;
  for (std::size_t i = 0; i < us.size(); ++i) {
    over2 += us[i] > 2000 ? 1 : 0;
    if (us[i] > 50000)
      std::printf("  removal #%zu (id %llu): %.1f ms\n", i, (unsigned long long)order[i], us[i] / 1000);
  }
  std::printf("  removals over 2 ms: %zu (a full walk every n/16 = %zu changes would give about %zu)\n", over2, n / 16,
              us.size() * 16 / n + 1);
  std::vector<double> s = us;
  std::sort(s.begin(), s.end());
  const double mean = std::accumulate(s.begin(), s.end(), 0.0) / s.size();
  std::size_t over = 0;
  for (double x : s) over += x > 100000 ? 1 : 0;
  std::printf(
      "M %zu %s n %zu norms 10^+-%g order %s: %zu removals, mean %.0f us, median %.0f, p99 %.0f, max %.0f us (%zu over "
      "100 ms)\n",
      M, ms.c_str(), n, expo, order_kind.c_str(), s.size(), mean, s[s.size() / 2], s[s.size() * 99 / 100], s.back(),
      over);
}
