// A collection of IVF shards under a selective filter (a review of session 46; its program, kept): 40,000
// clustered 64-d rows (`make_clustered(40200, 64, 50, 7)`, the last 200 as queries), a filter passing 0.2%
// of the ids, k 10, one thread; one IVF128,Flat against 8 hash shards of IVF128,Flat, at nprobe 4 and 128.
// No peer: FAISS has no sharded collection. Built and run (docs/collection.md):
//   g++ -std=c++20 -O2 -DNDEBUG -Iinclude -Ibuild/include benchmarks/results/collection-ivf-widen.cpp
//       build/libshoal.a -ltbb -o /tmp/coll-widen && /tmp/coll-widen
#include <tbb/task_arena.h>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <random>
#include <set>
#include <shoal/shoal.hpp>
#include <vector>
using namespace shoal;
using clk = std::chrono::steady_clock;
int main() {
  const std::size_t N = 40000, D = 64, NQ = 200, K = 10;
  matrix<float> all = make_clustered(N + NQ, D, 50, 7);
  matrix_view<const float> base{all.values.data(), N, D}, queries{all.values.data() + N * D, NQ, D};
  std::vector<vector_id> ids(N);
  std::iota(ids.begin(), ids.end(), vector_id{0});
  std::vector<std::uint8_t> acc(N, 0);
  std::mt19937_64 rng(3);
  for (std::size_t i = 0; i < N; ++i) acc[i] = rng() % 500 == 0;  // 0.2%: ~80 ids
  tbb::task_arena one(1);
  const std::uint8_t* a = acc.data();
  search_params p{.nprobe = 4};
  p.filter = [a](vector_id id) { return a[id] != 0; };
  any_index single = make_index("IVF128,Flat", D, metric::l2);
  single.train(base);
  single.add(base, ids);
  collection_options o;
  o.dim = D;
  o.metric = metric::l2;
  o.index = "IVF128,Flat";
  o.shards = 8;
  o.policy = sharding::hash;
  collection c(o);
  c.train(base);
  c.add(base, ids);
  const auto timed = [&](auto&& run) {
    double best = 1e9;
    one.execute([&] {
      for (int r = 0; r < 3; ++r) {
        auto t = clk::now();
        run();
        best = std::min(best, std::chrono::duration<double>(clk::now() - t).count());
      }
    });
    return best * 1e6 / NQ;
  };
  neighbors r1(1, 1), r2(1, 1);
  const double t1 = timed([&] { r1 = single.search(queries, K, p); });
  const double t2 = timed([&] { r2 = c.search(queries, K, p); });
  search_params all_lists = p;
  all_lists.nprobe = 128;
  const double t3 = timed([&] { (void)single.search(queries, K, all_lists); });
  const double t4 = timed([&] { (void)c.search(queries, K, all_lists); });
  std::printf(
      "0.2%% filter (%zu ids), k 10, nprobe 4: one IVF128 %.1f us/query; 8 hash shards of IVF128 %.1f us/query\n",
      std::size_t(std::count(acc.begin(), acc.end(), 1)), t1, t2);
  std::printf("  at nprobe 128 (every list): one IVF128 %.1f, 8 shards %.1f\n", t3, t4);
}
