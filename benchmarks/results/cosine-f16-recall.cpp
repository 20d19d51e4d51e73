// R@10 of HNSW16 under cosine with full-precision, F16, SQ8 and SQ4 traversal on tight clusters offset
// from the origin (session 44's review: F16 was left scoring 1 − ⟨q, x̂⟩ when SQ8 moved to ‖q − x̂‖² / 2).
// 20,000 × 48 rows in 60 clusters (centres N(0, 1), spread 0.3), 200 queries, every component offset by
// argv[1]; R@10 against a brute force in double. Codes printed as hnsw_codes: 0 none, 1 SQ8, 2 F16, 3 SQ4.
// No peer. Linked against the library before (an install of a63315a) and after:
//   g++ -std=c++20 -O2 -DNDEBUG -Iinclude -Ibuild/include benchmarks/results/cosine-f16-recall.cpp
//       build/libshoal.a -ltbb -o /tmp/f16-new        (the same against the older install for /tmp/f16-old)
//   /tmp/f16-old 100; /tmp/f16-new 100; /tmp/f16-old 300; /tmp/f16-new 300
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <set>
#include <shoal/shoal.hpp>
using namespace shoal;
int main(int argc, char** argv) {
  const float off = std::stof(argv[1]);
  const std::size_t n = 20000, dim = 48, k = 10, nq = 200;
  matrix<float> base(n, dim), q(nq, dim);
  std::mt19937 rng(argc > 2 ? std::stoi(argv[2]) : 7);
  std::normal_distribution<float> g;
  // clustered
  std::vector<std::vector<float>> cent(60, std::vector<float>(dim));
  for (auto& c : cent)
    for (auto& v : c) v = g(rng);
  for (std::size_t i = 0; i < n; ++i) {
    auto& c = cent[rng() % 60];
    for (std::size_t j = 0; j < dim; ++j) base.row(i)[j] = c[j] + 0.3f * g(rng) + off;
  }
  for (std::size_t i = 0; i < nq; ++i) {
    auto& c = cent[rng() % 60];
    for (std::size_t j = 0; j < dim; ++j) q.row(i)[j] = c[j] + 0.3f * g(rng) + off;
  }
  std::vector<std::set<vector_id>> t(nq);
  for (std::size_t i = 0; i < nq; ++i) {
    std::vector<std::pair<double, vector_id>> d;
    double qn = 0;
    for (std::size_t j = 0; j < dim; ++j) qn += double(q.row(i)[j]) * q.row(i)[j];
    for (std::size_t r = 0; r < n; ++r) {
      double dot = 0, bn = 0;
      for (std::size_t j = 0; j < dim; ++j) {
        dot += double(q.row(i)[j]) * base.row(r)[j];
        bn += double(base.row(r)[j]) * base.row(r)[j];
      }
      d.push_back({1 - dot / std::sqrt(qn * bn), r});
    }
    std::partial_sort(d.begin(), d.begin() + k, d.end());
    for (std::size_t j = 0; j < k; ++j) t[i].insert(d[j].second);
  }
  std::vector<vector_id> ids(n);
  for (std::size_t i = 0; i < n; ++i) ids[i] = i;
  for (auto c : {hnsw_codes::none, hnsw_codes::fp16, hnsw_codes::sq8, hnsw_codes::sq4}) {
    hnsw_params p;
    p.codes = c;
    p.M = 16;
    hnsw_index h(dim, metric::cosine, p);
    h.add(base.view(), ids);
    for (std::size_t ef : {16, 32}) {
      search_params sp;
      sp.ef = ef;
      auto r = h.search(q.view(), k, sp);
      std::size_t hit = 0;
      for (std::size_t i = 0; i < nq; ++i)
        for (std::size_t j = 0; j < k; ++j) hit += t[i].count(r.id(i, j));
      std::printf("off %g codes %d ef %zu R@10 %.3f\n", off, (int)c, ef, double(hit) / (nq * k));
    }
  }
}
