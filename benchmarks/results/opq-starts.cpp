// OPQ's two starts (src/quant/opq.cpp): final training error after 8 alternations from the identity, a
// random orthogonal rotation and the eigenvalue allocation, on bigann10k, CLIP captions and two
// synthetic sets. A copy of the library's loop with the start as a parameter; the first error of each
// row is the start's plain PQ. Not part of the build; from the repository root, after
// `cmake --preset release && cmake --build build`:
//
//   g++ -std=c++20 -O2 -Iinclude -Ibuild/include -isystem /usr/include/eigen3 benchmarks/results/opq-starts.cpp
//       build/libshoal.a -ltbb -o /tmp/opq-starts && /tmp/opq-starts      (session 34, AMD EPYC, ~40 s)
//
// Rows printed: "<set> m=<m> nbits=<b> <start> <error after each of the 8 iterations>".

#include <Eigen/Dense>
#include <algorithm>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>
#include "shoal/eval/eval.hpp"
#include "shoal/io/vecs.hpp"
#include "shoal/quant/pq.hpp"
using namespace shoal;
using RM = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RMd = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

double pq_mse(const RM& y, size_t m, size_t nbits, uint64_t seed, RM* yhat_out) {
  size_t n = y.rows(), d = y.cols();
  product_quantizer pq(d, m, nbits);
  pq_train_params pp;
  pp.iterations = 4;
  pp.seed = seed;
  matrix_view<const float> v{y.data(), n, d};
  pq.train(v, pp);
  std::vector<uint8_t> codes(n * m);
  pq.encode(v, codes.data());
  matrix<float> rebuilt(n, d);
  pq.decode(codes.data(), n, rebuilt.mutable_view());
  Eigen::Map<const RM> yh(rebuilt.values.data(), n, d);
  if (yhat_out) *yhat_out = yh;
  return (y - yh).cast<double>().squaredNorm() / n;
}

RM init_random(size_t d, uint64_t seed) {
  splitmix64 rng(seed);
  RMd g(d, d);
  for (size_t i = 0; i < d; ++i)
    for (size_t j = 0; j < d; ++j) g(i, j) = rng.normal();
  Eigen::HouseholderQR<RMd> qr(g);
  RMd q = qr.householderQ();
  return q.cast<float>();
}

RM init_eigen(const RM& x, size_t m) {
  size_t n = x.rows(), d = x.cols(), dsub = d / m;
  RMd xd = x.cast<double>();
  Eigen::RowVectorXd mean = xd.colwise().mean();
  RMd c = xd.rowwise() - mean;
  RMd cov = c.transpose() * c / double(n);
  Eigen::SelfAdjointEigenSolver<RMd> es(cov);
  // eigenvalues ascending; take descending
  std::vector<size_t> order(d);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return es.eigenvalues()(a) > es.eigenvalues()(b); });
  // greedy: each eigenvector to the non-full bucket with smallest sum of log eigenvalues
  std::vector<double> logsum(m, 0.0);
  std::vector<std::vector<size_t>> buckets(m);
  for (size_t e : order) {
    double lam = std::max(es.eigenvalues()(e), 1e-30);
    size_t best = m;
    for (size_t b = 0; b < m; ++b)
      if (buckets[b].size() < dsub && (best == m || logsum[b] < logsum[best])) best = b;
    buckets[best].push_back(e);
    logsum[best] += std::log(lam);
  }
  RM r(d, d);
  size_t col = 0;
  for (size_t b = 0; b < m; ++b)
    for (size_t e : buckets[b]) {
      r.col(col++) = es.eigenvectors().col(e).cast<float>();
    }
  return r;
}

void run(const char* name, const RM& x, size_t m, size_t nbits) {
  size_t d = x.cols();
  for (int mode = 0; mode < 3; ++mode) {
    RM r = mode == 0 ? RM(RM::Identity(d, d)) : mode == 1 ? init_random(d, 1234) : init_eigen(x, m);
    std::vector<double> errs;
    for (int it = 0; it < 8; ++it) {
      RM y = x * r;
      RM yh;
      errs.push_back(pq_mse(y, m, nbits, 1234 + it, &yh));
      if (it == 7) break;
      RMd cross = x.cast<double>().transpose() * yh.cast<double>();
      Eigen::BDCSVD<RMd> svd(cross, Eigen::ComputeFullU | Eigen::ComputeFullV);
      r = (svd.matrixU() * svd.matrixV().transpose()).cast<float>();
    }
    std::printf("%-10s m=%zu nbits=%zu %-8s", name, m, nbits, mode == 0 ? "identity" : mode == 1 ? "random" : "eigen");
    for (double e : errs) std::printf(" %.4g", e);
    std::printf("\n");
    std::fflush(stdout);
  }
}

int main() {
  matrix<float> b = io::read_fvecs("../shared/data/bigann10k/bigann10k_base.fvecs");
  RM x = Eigen::Map<RM>(b.values.data(), b.rows, b.dim);
  run("bigann", x, 16, 8);
  run("bigann", x, 32, 4);
  run("bigann", x, 8, 8);
  matrix<float> t = io::read_fvecs("../shared/data/clip-flickr8k-100/clip-flickr8k-100_text.fvecs");
  RM xt = Eigen::Map<RM>(t.values.data(), t.rows, t.dim);
  run("clip-text", xt, 64, 4);
  run("clip-text", xt, 32, 4);
  // reviewer's skewed synthetic
  splitmix64 rng(5);
  RM s(4000, 16);
  for (int i = 0; i < 4000; ++i)
    for (int j = 0; j < 16; ++j) s(i, j) = (j < 4 ? 10.f : 0.1f) * rng.normal();
  run("skewed", s, 4, 4);
  run("skewed", s, 4, 8);
  // clustered
  matrix<float> cl = make_clustered(10000, 64, 50, 3, 0.3f);
  RM xc = Eigen::Map<RM>(cl.values.data(), cl.rows, cl.dim);
  run("clustered", xc, 16, 4);
}
