// OPQ's rotation of a batch and of one row (session 42). `opq_rotation::apply` was one Eigen product
// (a GEMM for a batch, a GEMV for one row: different roundings); it now rotates row by row through the
// dispatched one-to-many kernel. For 192 and 768 dimensions: the best of 5 rotations of 10,000 rows, 2,000
// one-row rotations, and how many values of a row rotated alone differ from the same row in the batch.
// Against the library before (HEAD~ opq.cpp and opq.hpp; the header changed, so the old library is built
// from a checkout of the parent commit), the same source linked against each:
//   g++ -std=c++20 -O2 -DNDEBUG -Iinclude -Ibuild/include benchmarks/results/opq-rotation.cpp build/libshoal.a -ltbb
//       -o /tmp/opq-new   (one command)
#include <algorithm>
#include <chrono>
#include <cstdio>

#include "shoal/eval/eval.hpp"
#include "shoal/quant/opq.hpp"

int main() {
  for (const std::size_t d : {192, 768}) {
    const shoal::matrix<float> x = shoal::make_clustered(20000, d, 16, 7, 1.0f);
    shoal::opq_rotation r(d, d / 8, 8);
    shoal::opq_train_params p;
    p.iterations = 1;
    p.pq_iterations = 2;
    r.train(x.view().slice(0, 2000), p);
    using clock = std::chrono::steady_clock;
    shoal::matrix<float> y(10000, d);
    double batch = 1e9;
    for (int rep = 0; rep < 5; ++rep) {
      const auto t0 = clock::now();
      r.apply(x.view().slice(0, 10000), y.mutable_view());
      batch = std::min(batch, std::chrono::duration<double>(clock::now() - t0).count());
    }
    const auto t = clock::now();
    double sink = 0;
    for (std::size_t i = 0; i < 2000; ++i) sink += r.apply(x.view().slice(i, 1)).values[0];
    const double one = std::chrono::duration<double>(clock::now() - t).count();
    std::size_t differ = 0;
    for (std::size_t i = 0; i < 2000; ++i) {
      const shoal::matrix<float> s = r.apply(x.view().slice(i, 1));
      for (std::size_t j = 0; j < d; ++j) differ += s.values[j] != y.row(i)[j] ? 1 : 0;
    }
    std::printf("d %zu: batch of 10000 %.1f ms (%.2f us/row); single %.2f us/row; values differing single vs batch "
                "%zu of %zu (%g)\n",
                d, 1e3 * batch, 1e6 * batch / 10000, 1e6 * one / 2000, differ, 2000 * d, sink);
  }
}
