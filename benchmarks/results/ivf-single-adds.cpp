// One-vector adds into an IVF index: N adds of one vector each, timed in four quarters. Session 37: an
// IVF-Flat list reserved exactly the room an add needed, so every add into a list copied the whole list
// (the quarters grew linearly); the lists now grow geometrically. Against the library before the change
// (its ivf_flat.cpp compiled alone and linked ahead of libshoal.a, which then supplies the rest):
//   mkdir -p /tmp/old/index  # the old file and the old list header it includes, found ahead of src/
//   git show a796477:src/index/ivf_flat.cpp > /tmp/old/ivf_flat.cpp
//   git show a796477:src/index/inverted_lists.hpp > /tmp/old/index/inverted_lists.hpp
//   g++ -std=c++20 -O3 -DNDEBUG -Iinclude -Ibuild/include -I/tmp/old -Isrc -c /tmp/old/ivf_flat.cpp -o
//   /tmp/old_ivf_flat.o
//   g++ -std=c++20 -O3 -DNDEBUG -Iinclude -Ibuild/include benchmarks/results/ivf-single-adds.cpp /tmp/old_ivf_flat.o
//       build/libshoal.a -ltbb -o /tmp/adds-old   (one command; so is the next)
//   g++ -std=c++20 -O3 -DNDEBUG -Iinclude -Ibuild/include benchmarks/results/ivf-single-adds.cpp build/libshoal.a -ltbb
//       -o /tmp/adds-new
//   /tmp/adds-old "IVF4,Flat" 128 40000; /tmp/adds-new "IVF4,Flat" 128 40000
// IVF-PQ checks every stored id for a duplicate of the batch's (it keeps no id map): at 1a49270 through a
// hash-set lookup per stored id, since then by a vectorised scan per batch id (batches up to 16 ids). The
// same build steps at 1a49270 and after, then:  /tmp/adds-new "IVF4,PQ4x4fs" 16 100000
// Session 41: IVF-PQ finds ids through an id locator (src/index/id_locator.hpp); the program also times
// 2,000 one-id removes and 20,000 `contains` of absent ids after the adds. Against the library at db47a7d
// (the build's libshoal.a copied aside before the change), the same source linked against each.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "shoal/eval/eval.hpp"
#include "shoal/index/any_index.hpp"
#include "shoal/index/factory.hpp"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s SPEC DIM N\n", argv[0]);
    return 2;
  }
  const std::string spec = argv[1];
  const auto dim = static_cast<std::size_t>(std::atol(argv[2]));
  const auto n = static_cast<std::size_t>(std::atol(argv[3]));
  const shoal::matrix<float> data = shoal::make_clustered(n, dim, 16, 7, 1.0f);
  shoal::any_index index = shoal::make_index(spec, dim);
  index.train(data.view().slice(0, std::min<std::size_t>(n, 10000)));
  using clock = std::chrono::steady_clock;
  const std::size_t quarter = n / 4;
  double total = 0;
  for (std::size_t part = 0; part < 4; ++part) {
    const auto start = clock::now();
    for (std::size_t i = part * quarter; i < (part + 1) * quarter; ++i) {
      const shoal::vector_id id = i;
      index.add(data.view().slice(i, 1), std::span(&id, 1));
    }
    const double s = std::chrono::duration<double>(clock::now() - start).count();
    total += s;
    std::printf("adds %zu-%zu: %.3f s (%.2f us per add)\n", part * quarter, (part + 1) * quarter, s, 1e6 * s / quarter);
  }
  std::printf("%s d %zu: %zu one-vector adds in %.3f s\n", spec.c_str(), dim, 4 * quarter, total);
  // Since session 41: one-id removes spread over the index, and `contains` of ids never stored.
  constexpr std::size_t removes = 2000;
  auto start = clock::now();
  for (std::size_t r = 0; r < removes; ++r) index.remove(r * (n / removes));
  double s = std::chrono::duration<double>(clock::now() - start).count();
  std::printf("%zu one-id removes: %.3f s (%.2f us per remove)\n", removes, s, 1e6 * s / removes);
  start = clock::now();
  std::size_t found = 0;
  for (std::size_t r = 0; r < 10 * removes; ++r) found += index.contains(n + r) ? 1 : 0;
  s = std::chrono::duration<double>(clock::now() - start).count();
  std::printf("%zu contains of absent ids: %.3f s (%.2f us each, %zu found)\n", 10 * removes, s, 1e5 * s / removes,
              found);
}
