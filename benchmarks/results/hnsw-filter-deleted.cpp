// A filtered HNSW search over a graph most of whose slots are free (a review of session 46; its program,
// kept): N clustered 16-d rows (`make_clustered(N + 200, 16, 20, 3)`, default N 60,000), HNSW16, all but
// every (N / keep)-th removed (default keep 600), 200 queries, k 10, one thread; filters passing 1/2 and
// 1/10 of the live ids; the search as shipped against the walk alone (`filter_scan = false`), and a fresh
// index of the same live rows. No peer (hnswlib 0.6.2 has no filtered search). Built and run
// (docs/hnsw.md, "Filters that accept few nodes"):
//   g++ -std=c++20 -O2 -DNDEBUG -Iinclude -Ibuild/include benchmarks/results/hnsw-filter-deleted.cpp
//       build/libshoal.a -ltbb -o /tmp/hnsw-deleted && /tmp/hnsw-deleted [N keep]
#include <tbb/task_arena.h>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <shoal/shoal.hpp>
#include <vector>
using namespace shoal;
using clk = std::chrono::steady_clock;
int main(int argc, char** argv) {
  const std::size_t N = argc > 1 ? std::stoul(argv[1]) : 60000, keep = argc > 2 ? std::stoul(argv[2]) : 600;
  const std::size_t D = 16, NQ = 200, K = 10;
  matrix<float> all = make_clustered(N + NQ, D, 20, 3);
  matrix_view<const float> base{all.values.data(), N, D}, queries{all.values.data() + N * D, NQ, D};
  std::vector<vector_id> ids(N);
  std::iota(ids.begin(), ids.end(), vector_id{0});
  hnsw_params hp;
  hp.M = 16;
  hnsw_index h(D, metric::l2, hp);
  auto t0 = clk::now();
  h.add(base, ids);
  std::printf("built %zu in %.1f s\n", N, std::chrono::duration<double>(clk::now() - t0).count());
  t0 = clk::now();
  // keep every (N/keep)-th id
  const std::size_t step = N / keep;
  for (std::size_t i = 0; i < N; ++i)
    if (i % step != 0) h.remove(i);
  std::printf("removed down to %zu live in %.1f s\n", h.size(), std::chrono::duration<double>(clk::now() - t0).count());
  // a fresh index of the same live rows, for comparison
  std::vector<float> lv;
  std::vector<vector_id> lid;
  for (std::size_t i = 0; i < N; i += step) {
    lv.insert(lv.end(), base.row(i), base.row(i) + D);
    lid.push_back(i);
  }
  hnsw_index fresh(D, metric::l2, hp);
  fresh.add(matrix_view<const float>{lv.data(), lid.size(), D}, lid);
  tbb::task_arena one(1);
  for (std::size_t mod : {std::size_t{2}, std::size_t{10}}) {  // filter accepts 1/mod of live ids
    search_params p;
    p.filter = [step, mod](vector_id id) { return (id / step) % mod == 0; };
    search_params walk = p;
    walk.filter_scan = false;
    const auto timed = [&](const hnsw_index& x, const search_params& sp) {
      double best = 1e9;
      one.execute([&] {
        for (int r = 0; r < 3; ++r) {
          auto a = clk::now();
          (void)x.search(queries, K, sp);
          best = std::min(best, std::chrono::duration<double>(clk::now() - a).count());
        }
      });
      return best * 1e6 / NQ;
    };
    std::printf(
        "filter 1/%zu of live: deleted-heavy index: as shipped %.1f us/query, walk alone %.1f | fresh index of the "
        "same %zu rows: as shipped %.1f, walk alone %.1f\n",
        mod, timed(h, p), timed(h, walk), lid.size(), timed(fresh, p), timed(fresh, walk));
  }
}
