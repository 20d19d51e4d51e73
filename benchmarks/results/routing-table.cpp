// A collection's routing table (id -> shard): session 41 replaced std::unordered_map with
// detail::id_table (src/collection/id_table.hpp). Heap bytes (glibc mallinfo2: chunks in use and mapped
// blocks, headers included)
// and time for N inserts of random 63-bit ids, N lookups and N/2 removals, each table in its own process:
//   g++ -std=c++20 -O3 -DNDEBUG -Iinclude -Ibuild/include -Isrc benchmarks/results/routing-table.cpp -o /tmp/rt
//   /tmp/rt map 1000000; /tmp/rt table 1000000
#include <malloc.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <unordered_map>
#include <vector>

#include "collection/id_table.hpp"
#include "shoal/eval/eval.hpp"

namespace {
double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

template <class Insert, class Find, class Erase>
void run(const char* name, const std::vector<shoal::vector_id>& ids, Insert insert, Find find, Erase erase) {
  const auto heap_now = [] {
    const struct mallinfo2 m = mallinfo2();
    return m.uordblks + m.hblkhd;  // small chunks, and large ones mapped by themselves
  };
  const std::size_t heap_before = heap_now();
  auto t = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < ids.size(); ++i) insert(ids[i], static_cast<std::uint32_t>(i % 8));
  const double insert_s = seconds_since(t);
  const std::size_t heap = heap_now() - heap_before;
  t = std::chrono::steady_clock::now();
  std::size_t sum = 0;
  for (const shoal::vector_id id : ids) sum += find(id);
  const double find_s = seconds_since(t);
  t = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < ids.size(); i += 2) erase(ids[i]);
  const double erase_s = seconds_since(t);
  std::printf("%s: %zu ids, heap %.1f bytes per id, insert %.1f ns, find %.1f ns, erase %.1f ns (checksum %zu)\n", name,
              ids.size(), static_cast<double>(heap) / static_cast<double>(ids.size()),
              1e9 * insert_s / static_cast<double>(ids.size()), 1e9 * find_s / static_cast<double>(ids.size()),
              2e9 * erase_s / static_cast<double>(ids.size()), sum);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s map|table N\n", argv[0]);
    return 2;
  }
  const std::string kind = argv[1];
  std::vector<shoal::vector_id> ids(static_cast<std::size_t>(std::atol(argv[2])));
  shoal::splitmix64 rng(41);
  for (shoal::vector_id& id : ids) id = rng.next() >> 1;
  if (kind == "map") {
    std::unordered_map<shoal::vector_id, std::uint32_t> map;
    run(
        "std::unordered_map", ids, [&](shoal::vector_id id, std::uint32_t s) { map[id] = s; },
        [&](shoal::vector_id id) { return static_cast<std::size_t>(map.find(id)->second); },
        [&](shoal::vector_id id) { map.erase(id); });
  } else {
    shoal::detail::id_table table;
    run(
        "detail::id_table", ids, [&](shoal::vector_id id, std::uint32_t s) { (void)table.insert_or_assign(id, s); },
        [&](shoal::vector_id id) { return static_cast<std::size_t>(*table.find(id)); },
        [&](shoal::vector_id id) { (void)table.erase(id); });
  }
}
