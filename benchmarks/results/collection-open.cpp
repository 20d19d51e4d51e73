// collection::open of 4 IVF-PQ shards holding N vectors in all (build once, then time opens). Session 41:
// open checked each routed id with the shard's `contains`, which on a loaded IVF-PQ index scans every
// list (quadratic); now against the shard's sorted ids. Against the library at db47a7d (its libshoal.a
// copied aside, with that commit's include/shoal/index/ivf_pq.hpp found first):
//   g++ -std=c++20 -O3 -DNDEBUG -Iinclude -Ibuild/include benchmarks/results/collection-open.cpp
//       build/libshoal.a -ltbb -o /tmp/open-new   (one command)
//   /tmp/open-new build /tmp/c 200000; /tmp/open-old open /tmp/c 0; /tmp/open-new open /tmp/c 0

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <string>

#include "shoal/collection/collection.hpp"
#include "shoal/eval/eval.hpp"
int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s build|open DIR N\n", argv[0]);
    return 2;
  }
  const std::string what = argv[1], dir = argv[2];
  const auto n = static_cast<std::size_t>(std::atol(argv[3]));
  if (what == "build") {
    shoal::collection_options o;
    o.dim = 32;
    o.metric = shoal::metric::l2;
    o.index = "IVF64,PQ8x4fs";
    o.policy = shoal::sharding::hash;
    o.shards = 4;
    o.directory = dir;
    shoal::collection c(o);
    const shoal::matrix<float> v = shoal::make_clustered(n, 32, 16, 7, 1.0f);
    c.train(v.view().slice(0, 20000));
    std::vector<shoal::vector_id> ids(n);
    std::iota(ids.begin(), ids.end(), shoal::vector_id{0});
    c.add(v.view(), ids);
    c.checkpoint();
    return 0;
  }
  const auto t = std::chrono::steady_clock::now();
  const shoal::collection c = shoal::collection::open(dir);
  std::printf("open of %zu vectors in 4 IVF-PQ shards: %.3f s\n", c.size(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count());
}
