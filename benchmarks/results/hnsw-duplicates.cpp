// HNSW over exact duplicates, shoal against hnswlib on the same data (docs/hnsw.md "What remains" (e)).
// Not part of the build; from the repository root, after `cmake --preset release && cmake --build build`:
//
//   g++ -std=c++20 -O2 -march=native -Iinclude -Ibuild/include benchmarks/results/hnsw-duplicates.cpp
//       build/libshoal.a -ltbb -o /tmp/hnsw-duplicates   (one command)
//   /tmp/hnsw-duplicates [copies [threads [M [l2|ip|cos [group]]]]]   # default 5000 1 16 l2 0
//
// make_clustered(N + 1,000, 32-d, 50 clusters, seed 12345, spread 0.35): the first N rows (N from the
// environment, default 10,000) are the base, the rest the queries; base rows 1 .. copies-1 are replaced
// by copies of row 0, or, with a group size g > 1, every row by the first row of its group of g.
// efConstruction 200; shoal builds on `threads` threads, hnswlib on one. Recall@10 counts the results
// within the 10th exact distance (copies tie, so ids alone cannot be compared). Also prints how many of
// a query at row 0 come back at its own distance, and how many of every tenth non-copy row a search
// filtered to that row alone misses (unreachable nodes).
#include <hnswlib/hnswlib.h>
#include <tbb/task_arena.h>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>
#include "shoal/eval/eval.hpp"
#include "shoal/index/hnsw.hpp"
using namespace shoal;
int main(int argc, char** argv) {
  const std::size_t copies = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 5000;
  const int threads = argc > 2 ? std::atoi(argv[2]) : 1;
  const std::size_t n = getenv("N") ? std::strtoul(getenv("N"), nullptr, 10) : 10000, d = 32, nq = 1000, k = 10;
  const std::size_t M = argc > 3 ? std::strtoul(argv[3], nullptr, 10) : 16;
  const matrix<float> all = make_clustered(n + nq, d, 50, 12345, 0.35f);
  matrix<float> base(n, d), q(nq, d);
  std::copy_n(all.row(0), n * d, base.row(0));
  std::copy_n(all.row(n), nq * d, q.row(0));
  for (std::size_t i = 1; i < copies; ++i) std::copy_n(base.row(0), d, base.row(i));
  const std::string mname = argc > 4 ? argv[4] : "l2";
  const metric m = mname == "ip" ? metric::inner_product : mname == "cos" ? metric::cosine : metric::l2;
  const std::size_t group = argc > 5 ? std::strtoul(argv[5], nullptr, 10) : 0;
  if (group > 1)
    for (std::size_t i = 0; i < n; ++i) std::copy_n(base.row(i - i % group), d, base.row(i));
  const neighbors truth = ground_truth(base.view(), q.view(), k, m);
  std::vector<vector_id> ids(n);
  std::iota(ids.begin(), ids.end(), vector_id{0});
  // results within the k-th exact distance (ties count)
  const auto recall = [&](const auto& dist_of) {
    std::size_t hit = 0;
    for (std::size_t r = 0; r < nq; ++r) {
      const float kth = truth.distance(r, k - 1);
      for (std::size_t j = 0; j < k; ++j) hit += dist_of(r, j) <= kth + 1e-5f * std::fabs(kth) + 1e-6f ? 1 : 0;
    }
    return double(hit) / double(nq * k);
  };
  hnswlib::L2Space l2s(d);
  hnswlib::InnerProductSpace ips(d);
  hnswlib::SpaceInterface<float>& space = m == metric::l2 ? static_cast<hnswlib::SpaceInterface<float>&>(l2s) : ips;
  hnswlib::HierarchicalNSW<float> peer(&space, n, M, 200, 100);
  std::vector<float> nb(base.values.begin(), base.values.end()), nqv(q.values.begin(), q.values.end());
  auto norm = [&](float* x) {
    float s2 = 0;
    for (std::size_t j = 0; j < d; ++j) s2 += x[j] * x[j];
    s2 = std::sqrt(s2);
    for (std::size_t j = 0; j < d; ++j) x[j] /= s2;
  };
  if (m == metric::cosine) {
    for (std::size_t i = 0; i < n; ++i) norm(&nb[i * d]);
    for (std::size_t i = 0; i < nq; ++i) norm(&nqv[i * d]);
  }
  for (std::size_t i = 0; i < n; ++i) peer.addPoint(&nb[i * d], i);
  hnsw_params p;
  p.M = M;
  p.ef_construction = 200;
  hnsw_index index(d, m, p);
  tbb::task_arena arena(threads);
  arena.execute([&] { index.add(base.view(), ids); });
  for (std::size_t ef : {16, 64, 128, 512}) {
    peer.setEf(ef);
    std::vector<std::vector<float>> pd(nq);
    for (std::size_t r = 0; r < nq; ++r) {
      auto top = peer.searchKnn(&nqv[r * d], k);
      std::vector<float> ds;
      while (!top.empty()) {
        ds.push_back(m == metric::inner_product ? top.top().first - 1.0f : top.top().first);  // 1 - <q, x>
        top.pop();
      }
      std::reverse(ds.begin(), ds.end());
      ds.resize(k, 1e30f);
      pd[r] = ds;
    }
    search_params sp;
    sp.ef = ef;
    const neighbors got = index.search(q.view(), k, sp);
    std::printf("ef %4zu shoal %.3f hnswlib %.3f\n", ef,
                recall([&](std::size_t r, std::size_t j) { return got.distance(r, j); }),
                recall([&](std::size_t r, std::size_t j) { return pd[r][j]; }));
  }
  // a query at the copy: k results at its own distance expected
  std::size_t same = 0;
  search_params sp;
  sp.ef = 64;
  const neighbors got = index.search(base.view().slice(0, 1), k, sp);
  for (std::size_t j = 0; j < k; ++j) same += got.distance(0, j) <= got.distance(0, 0) + 1e-6f ? 1 : 0;
  peer.setEf(64);
  auto top = peer.searchKnn(&nb[0], k);
  std::vector<float> at_copy;
  for (; !top.empty(); top.pop()) at_copy.push_back(top.top().first);
  const auto peer_at = std::count_if(at_copy.begin(), at_copy.end(),  // the queue pops the farthest first
                                     [&](float x) { return x <= at_copy.back() + 1e-6f; });
  std::printf("query at the copy: at its own distance shoal %zu hnswlib %td of %zu\n", same, peer_at, k);
  // reachability: each distinct node found by a filtered search
  std::size_t unreachable = 0;
  for (std::size_t i = copies; i < n; i += 10) {
    search_params only;
    only.ef = n;
    const vector_id want = i;
    only.filter = [want](vector_id id) { return id == want; };
    unreachable += index.search(base.view().slice(i, 1), 1, only).id(0, 0) != want ? 1 : 0;
  }
  std::printf("unreachable %zu\n", unreachable);
}
