// R@10 of coded indexes under cosine on rows crowded into a narrow cone (session 44: SQ8 / SQ4 scored as
// ‖q − x̂‖² / 2 instead of 1 − ⟨q, x̂⟩, docs/hnsw.md "Cosine", docs/pq.md "Re-rank"). A review's data:
// 20,000 × 48 clustered Gaussian rows (400 centres of N(0, 4), points N(0, 1) around them), 300 queries,
// every component offset by 0 / 10 / 100 / 1,000; R@10 against a brute force in double. No peer.
// Linked against the library before (an install of a63315a) and after:
//   g++ -std=c++20 -O2 -DNDEBUG -Iinclude -Ibuild/include benchmarks/results/cosine-codes-recall.cpp
//       build/libshoal.a -ltbb -o /tmp/cosine-new   (one command; the same against the older install)
//   /tmp/cosine-old; /tmp/cosine-new

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <string_view>
#include <shoal/eval/eval.hpp>
#include <shoal/index/factory.hpp>
#include <utility>
#include <vector>

namespace {

using namespace shoal;

matrix<float> clustered(std::size_t n, std::size_t d, unsigned seed, float offset) {
  std::mt19937 centre_rng(7);
  std::normal_distribution<float> normal;
  std::vector<float> centres(400 * d);
  for (float& v : centres) v = 2.0f * normal(centre_rng);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::size_t> pick(0, 399);
  matrix<float> x(n, d);
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t c = pick(rng);
    for (std::size_t j = 0; j < d; ++j) x.row(i)[j] = centres[c * d + j] + normal(rng) + offset;
  }
  return x;
}

/// The k nearest rows of every query by 1 − cos in double.
matrix<std::int32_t> truth(const matrix<float>& base, const matrix<float>& queries, std::size_t k) {
  const auto norm = [&](const float* x) {
    double s = 0.0;
    for (std::size_t j = 0; j < base.dim; ++j) s += static_cast<double>(x[j]) * x[j];
    return std::sqrt(s);
  };
  std::vector<double> norms(base.rows);
  for (std::size_t r = 0; r < base.rows; ++r) norms[r] = norm(base.row(r));
  matrix<std::int32_t> out(queries.rows, k);
  std::vector<std::pair<double, std::int32_t>> all(base.rows);
  for (std::size_t q = 0; q < queries.rows; ++q) {
    const double qn = norm(queries.row(q));
    for (std::size_t r = 0; r < base.rows; ++r) {
      double dot = 0.0;
      for (std::size_t j = 0; j < base.dim; ++j) dot += static_cast<double>(queries.row(q)[j]) * base.row(r)[j];
      all[r] = {1.0 - dot / (qn * norms[r]), static_cast<std::int32_t>(r)};
    }
    std::partial_sort(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(k), all.end());
    for (std::size_t j = 0; j < k; ++j) out.row(q)[j] = all[j].second;
  }
  return out;
}

}  // namespace

int main() {
  for (const float offset : {0.0f, 10.0f, 100.0f, 1000.0f}) {
    const matrix<float> base = clustered(20000, 48, 11, offset), queries = clustered(300, 48, 12, offset);
    const matrix<std::int32_t> gt = truth(base, queries, 10);
    std::vector<vector_id> ids(base.rows);
    std::iota(ids.begin(), ids.end(), vector_id{0});
    for (const char* spec : {"HNSW16", "HNSW16,SQ8", "HNSW16,SQ4", "IVF256,PQ24,Refine(SQ8)"}) {
      any_index x = make_index(spec, base.dim, metric::cosine);
      x.train(base.view());
      x.add(base.view(), ids);
      for (const std::size_t rf : {0, 4}) {
        search_params p;
        p.ef = 32;
        p.nprobe = 32;
        p.refine_factor = rf;
        if (rf == 0 && std::string_view(spec).starts_with("HNSW")) continue;
        std::printf("offset %-6g %-24s ef 32 / nprobe 32, refine %zu: R@10 %.3f\n", offset, spec, rf,
                    recall_at_k(x.search(queries.view(), 10, p), gt.view(), 10));
      }
    }
  }
}
