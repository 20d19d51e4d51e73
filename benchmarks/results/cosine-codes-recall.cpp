// R@10 of coded indexes under cosine on rows crowded into a narrow cone (session 44: SQ8 / SQ4 / F16 scored
// as ‖q − x̂‖² / 2 instead of 1 − ⟨q, x̂⟩, docs/hnsw.md "Cosine", docs/pq.md "Re-rank"). Two reviews' data,
// R@10 against a brute force in double, no peer:
//  - no argument: 20,000 × 48 clustered Gaussian rows (400 centres of N(0, 4), points N(0, 1) around
//    them), 300 queries, every component offset by 0 / 10 / 100 / 1,000; HNSW16 full precision, SQ8 and
//    SQ4 at ef 32, IVF256,PQ24,Refine(SQ8) at nprobe 32 without and with a re-rank of 4;
//  - `tight OFFSET`: 20,000 × 48 rows in 60 clusters (centres N(0, 1), spread 0.3), 200 queries, every
//    component offset by OFFSET; HNSW16 full precision, F16, SQ8 and SQ4 at ef 16 and 32.
// Linked against the library before (an install of a63315a) and after:
//   g++ -std=c++20 -O2 -DNDEBUG -Iinclude -Ibuild/include benchmarks/results/cosine-codes-recall.cpp
//       build/libshoal.a -ltbb -o /tmp/cosine-new   (one command; the same against the older install)
//   /tmp/cosine-old; /tmp/cosine-new; /tmp/cosine-old tight 100; /tmp/cosine-new tight 100; (and 300)

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <shoal/eval/eval.hpp>
#include <shoal/index/factory.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

using namespace shoal;

/// The first review's rows: `n` points around 400 centres of N(0, 4), each component + `offset`.
matrix<float> spread_clusters(std::size_t n, std::size_t d, unsigned seed, float offset) {
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

/// The second review's rows: base and queries drawn in turn from one generator, 60 centres of N(0, 1),
/// spread 0.3, each component + `offset`.
std::pair<matrix<float>, matrix<float>> tight_clusters(std::size_t n, std::size_t nq, std::size_t d, float offset) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<float> centres(60 * d);
  for (float& v : centres) v = normal(rng);
  std::pair<matrix<float>, matrix<float>> out{matrix<float>(n, d), matrix<float>(nq, d)};
  for (matrix<float>* x : {&out.first, &out.second})
    for (std::size_t i = 0; i < x->rows; ++i) {
      const float* c = centres.data() + rng() % 60 * d;
      for (std::size_t j = 0; j < d; ++j) x->row(i)[j] = c[j] + 0.3f * normal(rng) + offset;
    }
  return out;
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

/// Builds `spec` under cosine over `base` and prints R@10 of `queries` (true neighbours `gt`) at each
/// (ef = nprobe, refine).
void measure(const std::string& label, const matrix<float>& base, const matrix<float>& queries,
             const matrix<std::int32_t>& gt, const char* spec,
             std::initializer_list<std::pair<std::size_t, std::size_t>> settings) {
  std::vector<vector_id> ids(base.rows);
  std::iota(ids.begin(), ids.end(), vector_id{0});
  any_index x = make_index(spec, base.dim, metric::cosine);
  x.train(base.view());
  x.add(base.view(), ids);
  for (const auto& [ef, refine] : settings) {
    search_params p;
    p.ef = ef;
    p.nprobe = ef;
    p.refine_factor = refine;
    std::printf("%s %-24s ef / nprobe %zu, refine %zu: R@10 %.3f\n", label.c_str(), spec, ef, refine,
                recall_at_k(x.search(queries.view(), 10, p), gt.view(), 10));
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string_view(argv[1]) == "tight") {
    const float offset = std::stof(argv[2]);
    const auto [base, queries] = tight_clusters(20000, 200, 48, offset);
    const matrix<std::int32_t> gt = truth(base, queries, 10);
    for (const char* spec : {"HNSW16", "HNSW16,F16", "HNSW16,SQ8", "HNSW16,SQ4"})
      measure("tight, offset " + std::string(argv[2]), base, queries, gt, spec, {{16, 0}, {32, 0}});
    return 0;
  }
  for (const float offset : {0.0f, 10.0f, 100.0f, 1000.0f}) {
    const matrix<float> base = spread_clusters(20000, 48, 11, offset), queries = spread_clusters(300, 48, 12, offset);
    const matrix<std::int32_t> gt = truth(base, queries, 10);
    const std::string label = "offset " + std::to_string(static_cast<int>(offset));
    for (const char* spec : {"HNSW16", "HNSW16,SQ8", "HNSW16,SQ4"}) measure(label, base, queries, gt, spec, {{32, 4}});
    measure(label, base, queries, gt, "IVF256,PQ24,Refine(SQ8)", {{32, 0}, {32, 4}});
  }
}
