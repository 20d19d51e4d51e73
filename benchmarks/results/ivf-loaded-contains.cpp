// `contains` on a loaded IVF-PQ index (session 42). The id locator is not in the file; before this
// session only a write built it, so every `contains` on a loaded index scanned all lists' ids. Now the
// first `contains` builds it. The program builds SPEC over N clustered vectors of DIM (one batch), saves
// it, then for a copied and a mapped load times the first `contains` and 20,000 more (half stored ids,
// half absent). Against the library before (HEAD~ ivf_pq.cpp compiled alone, linked ahead of libshoal.a):
//   git show f3ad73d:src/index/ivf_pq.cpp > /tmp/old42/ivf_pq.cpp
//   g++ -std=c++20 -O3 -DNDEBUG -Iinclude -Ibuild/include -Isrc -c /tmp/old42/ivf_pq.cpp -o /tmp/old_ivf_pq.o
//   g++ -std=c++20 -O3 -DNDEBUG -Iinclude -Ibuild/include benchmarks/results/ivf-loaded-contains.cpp
//       [/tmp/old_ivf_pq.o] build/libshoal.a -ltbb -o /tmp/contains-old|new   (one command)
//   /tmp/contains-old "IVF256,PQ16x4fs" 64 300000 /tmp/ix.shoal; /tmp/contains-new ... (the same)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <string>

#include "shoal/eval/eval.hpp"
#include "shoal/index/factory.hpp"
#include "shoal/index/ivf_pq.hpp"

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s SPEC DIM N FILE\n", argv[0]);
    return 2;
  }
  const auto dim = static_cast<std::size_t>(std::atol(argv[2]));
  const auto n = static_cast<std::size_t>(std::atol(argv[3]));
  {
    const shoal::matrix<float> data = shoal::make_clustered(n, dim, 16, 7, 1.0f);
    shoal::any_index index = shoal::make_index(argv[1], dim);
    index.train(data.view().slice(0, std::min<std::size_t>(n, 20000)));
    std::vector<shoal::vector_id> ids(n);
    std::iota(ids.begin(), ids.end(), shoal::vector_id{0});
    index.add(data.view(), ids);
    index.save(argv[4]);
  }
  using clock = std::chrono::steady_clock;
  for (const bool mmap : {false, true}) {
    const auto index = shoal::ivf_pq_index::load(argv[4], {.mmap = mmap});
    auto start = clock::now();
    const bool first = index.contains(n / 2);
    const double first_s = std::chrono::duration<double>(clock::now() - start).count();
    constexpr std::size_t calls = 20000;
    std::size_t found = 0;
    start = clock::now();
    for (std::size_t r = 0; r < calls; ++r) found += index.contains(r % 2 == 0 ? r * (n / calls) : n + r) ? 1 : 0;
    const double s = std::chrono::duration<double>(clock::now() - start).count();
    std::printf(
        "%s load, %zu vectors: first contains %.3f ms (%d); %zu more %.3f s (%.2f us each, %zu found); "
        "memory %zu bytes\n",
        mmap ? "mapped" : "copied", index.size(), 1e3 * first_s, first ? 1 : 0, calls, s, 1e6 * s / calls, found,
        index.memory_bytes());
  }
}
