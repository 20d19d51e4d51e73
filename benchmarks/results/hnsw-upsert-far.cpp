// Upserts ids 7-11 to far-away vectors 400 times (1,500 x 12 clustered vectors, one thread; under inner
// product norms spread by 10^+-1), for l2 / inner product / cosine at M 2, 4, 16: after every 25, an
// exhaustive search (k = size, ef = 10 * size) from four queries must return every stored id; then a
// save / load copy must grow as the original. SPLIT=1 runs every 25th upsert as a remove and an add.
// Not part of the build. Written by a review (session 35). Usage:
//   g++ -std=c++20 -O2 -Iinclude -Isrc benchmarks/results/hnsw-upsert-far.cpp build/libshoal.a -ltbb -o /tmp/uf &&
//   /tmp/uf
#include <tbb/task_arena.h>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <set>
#include <shoal/eval/eval.hpp>
#include <shoal/index/hnsw.hpp>
using namespace shoal;
int main() {
  tbb::task_arena one(1);
  constexpr std::size_t n = 1500, d = 12;
  for (const metric m : {metric::l2, metric::inner_product, metric::cosine})
    for (const std::size_t M : {2, 4, 16}) {
      matrix<float> data = make_clustered(n + 200, d, 8, M, 0.35f);
      splitmix64 rng(M * 3 + static_cast<int>(m));
      for (std::size_t i = 0; i < n + 200; ++i) {
        const float s = m == metric::inner_product ? std::pow(10.0f, rng.uniform() * 2 - 1) : 1.f;
        for (std::size_t j = 0; j < d; ++j) data.row(i)[j] *= s;
      }
      std::vector<vector_id> ids(n + 200);
      std::iota(ids.begin(), ids.end(), vector_id{0});
      hnsw_index index(d, m, {.M = M});
      one.execute([&] { index.add(data.view().slice(0, n), std::span(ids).first(n)); });
      std::size_t bad = 0, worst = 0, rm_bad = 0, rm_worst = 0;
      const bool split = std::getenv("SPLIT") != nullptr;
      const auto missing = [&](std::size_t size) {
        std::size_t w = 0;
        splitmix64 qr(99);
        for (int q = 0; q < 4; ++q) {
          const float* qv = data.row(qr.below(n));
          std::vector<float> qq(qv, qv + d);
          if (q == 3)
            for (float& c : qq) c *= -30.f;
          const neighbors got = index.search({qq.data(), 1, d}, size, {.ef = 10 * size});
          std::set<vector_id> f;
          for (std::size_t j = 0; j < size; ++j)
            if (got.id(0, j) != no_id) f.insert(got.id(0, j));
          w = std::max(w, size - f.size());
        }
        return w;
      };
      std::printf("baseline missing %zu\n", missing(n));
      double max_ms = 0;
      for (int t = 0; t < 400; ++t) {
        std::vector<float> v(d);
        for (std::size_t j = 0; j < d; ++j)
          v[j] = (t % 2 ? 1000.f : -1000.f) * (rng.uniform() + 0.1f) + (rng.uniform() - 0.5f);
        const vector_id id = t % 3 == 0 ? 7 : 7 + t % 5;  // the same few ids over and over
        const auto a = std::chrono::steady_clock::now();
        if (split && t % 25 == 24) {
          const std::size_t pre = missing(n);
          one.execute([&] { index.remove(id); });
          const std::size_t w = missing(n - 1);
          if (w > pre) {
            ++rm_bad;
            rm_worst = std::max(rm_worst, w - pre);
          }
          one.execute([&] { index.add({v.data(), 1, d}, std::span(&id, 1)); });
        } else {
          one.execute([&] { index.upsert({v.data(), 1, d}, id); });
        }
        max_ms =
            std::max(max_ms, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
        if (t % 25 == 24) {
          for (int q = 0; q < 4; ++q) {
            const float* qv = data.row(rng.below(n));
            std::vector<float> qq(qv, qv + d);
            if (q == 3)
              for (float& c : qq) c *= -30.f;
            const neighbors got = index.search({qq.data(), 1, d}, n, {.ef = 10 * n});
            std::set<vector_id> f;
            for (std::size_t j = 0; j < n; ++j)
              if (got.id(0, j) != no_id) f.insert(got.id(0, j));
            if (f.size() < n) {
              ++bad;
              worst = std::max(worst, n - f.size());
            }
          }
        }
      }
      index.save("/tmp/hnsw-upsert-far.shoal");
      hnsw_index loaded = hnsw_index::load("/tmp/hnsw-upsert-far.shoal");
      one.execute([&] {
        index.add(data.view().slice(n, 200), std::span(ids).subspan(n, 200));
        loaded.add(data.view().slice(n, 200), std::span(ids).subspan(n, 200));
      });
      std::printf("  after a batch add of 200 (runs the reachability walk): %zu of %zu missing\n", missing(n + 200),
                  n + 200);
      const auto qa = index.search(data.view(), 10, {.ef = 16});
      const auto qb = loaded.search(data.view(), 10, {.ef = 16});
      std::size_t differ = 0;
      for (std::size_t r = 0; r < data.rows; ++r)
        for (std::size_t j = 0; j < 10; ++j) differ += qa.id(r, j) != qb.id(r, j) ? 1 : 0;
      if (split)
        std::printf("  removals alone: %zu of 16 left more ids missing than before (up to %zu more)\n", rm_bad,
                    rm_worst);
      std::printf(
          "metric %d M %zu: size %zu; %zu of 64 exhaustive searches incomplete (worst %zu missing); longest upsert "
          "%.1f ms; loaded copy differs in %zu ids\n",
          static_cast<int>(m), M, index.size() - 200, bad, worst, max_ms, differ);
    }
}
