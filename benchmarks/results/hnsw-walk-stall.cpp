// How long searches wait while removals run: one thread removes REMOVALS ids of an N x 64 index
// (make_clustered, 64 clusters; random order) while another runs single-query searches (k 10, ef 64) back
// to back; prints the search latencies (median, 99th, 99.9th percentile, max, count over 10 ms) and the
// removals over 5 ms. Every N / 16 removals the reachability walk runs; until session 36 it ran under the
// removal's exclusive lock, and every search waited for it (to measure that, make `finish_exclusive_change`
// in src/index/hnsw.cpp walk whenever `count_changes` says one is due). Under the writer-first lock of
// sessions 7-35 the searching thread hardly ran at all (7 searches in 10 s at 100000 l2 14000).
// Not part of the build. Written in session 36; results in docs/hnsw.md ("Session 36"):
//   g++ -std=c++20 -O2 -Iinclude -Isrc benchmarks/results/hnsw-walk-stall.cpp build/libshoal.a -ltbb -o /tmp/stall
//   /tmp/stall N l2|ip REMOVALS                                e.g. /tmp/stall 100000 l2 14000
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <shoal/eval/eval.hpp>
#include <shoal/index/hnsw.hpp>
#include <string>
#include <thread>
#include <vector>
using namespace shoal;
using clock_type = std::chrono::steady_clock;

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s N l2|ip REMOVALS\n", argv[0]);
    return 2;
  }
  const std::size_t n = std::strtoul(argv[1], nullptr, 10), dim = 64;
  const metric m = std::string(argv[2]) == "ip" ? metric::inner_product : metric::l2;
  const std::size_t removals = std::min<std::size_t>(std::strtoul(argv[3], nullptr, 10), n);
  const matrix<float> data = make_clustered(n, dim, 64, 1, 0.35f);
  std::vector<vector_id> ids(n);
  std::iota(ids.begin(), ids.end(), vector_id{0});
  hnsw_index index(dim, m, {.M = 16});
  const auto t0 = clock_type::now();
  index.add(data.view(), ids);
  std::printf("build %.1f s\n", std::chrono::duration<double>(clock_type::now() - t0).count());
  splitmix64 rng(7);
  std::vector<vector_id> order = ids;
  for (std::size_t i = n; i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);

  std::atomic<bool> done{false};
  std::vector<double> search_us, remove_us;
  std::thread searcher([&] {
    splitmix64 pick(11);
    search_params sp;
    sp.ef = 64;
    while (!done.load(std::memory_order_relaxed)) {
      const std::size_t row = pick.below(n);
      const auto a = clock_type::now();
      (void)index.search(data.view().slice(row, 1), 10, sp);
      search_us.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - a).count());
    }
  });
  const auto r0 = clock_type::now();
  for (std::size_t r = 0; r < removals; ++r) {
    const auto a = clock_type::now();
    index.remove(order[r]);
    remove_us.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - a).count());
    if (remove_us.back() > 5000) std::printf("  removal #%zu: %.1f ms\n", r, remove_us.back() / 1000);
  }
  const double seconds = std::chrono::duration<double>(clock_type::now() - r0).count();
  done = true;
  searcher.join();

  const auto at = [](std::vector<double> v, double q) {
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<std::size_t>(q * static_cast<double>(v.size())))];
  };
  const auto over = std::count_if(search_us.begin(), search_us.end(), [](double us) { return us > 10000; });
  std::printf(
      "%zu removals in %.1f s; %zu searches: p50 %.0f us, p99 %.0f us, p99.9 %.0f us, max %.1f ms, %lld over 10 ms\n",
      removals, seconds, search_us.size(), at(search_us, 0.5), at(search_us, 0.99), at(search_us, 0.999),
      at(search_us, 1.0) / 1000, static_cast<long long>(over));
  std::sort(remove_us.begin(), remove_us.end());
  std::printf("removals: p50 %.0f us, max %.1f ms, next %.1f ms\n", remove_us[remove_us.size() / 2],
              remove_us.back() / 1000, remove_us[remove_us.size() - 2] / 1000);
  return 0;
}
