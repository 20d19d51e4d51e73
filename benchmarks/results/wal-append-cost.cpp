// The cost of a collection's write-ahead-log checks per write call (session 45: each append fstats its log
// to refuse writes into a deleted one, docs/collection.md). One-vector adds to a 2-shard Flat collection of
// 16-d rows with a directory: 20,000 under wal_sync::os_buffered (or 2,000 under every_write with `every`).
// No peer. Built against an install of the library before and after the change, run alternating:
//   cmake --install build --prefix /tmp/shoal-after
//   g++ -std=c++20 -O2 -DNDEBUG -I/tmp/shoal-after/include benchmarks/results/wal-append-cost.cpp
//       /tmp/shoal-after/lib/libshoal.a -ltbb -o /tmp/wal-after   (one command; likewise /tmp/wal-before)
//   for i in 1 2 3; do /tmp/wal-before os; /tmp/wal-after os; done
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <shoal/collection/collection.hpp>
#include <shoal/eval/eval.hpp>
int main(int argc, char** argv) {
  const bool buffered = argc > 1 && std::string(argv[1]) == "os";
  const std::filesystem::path dir = "/tmp/shoal-wal-append-cost";
  std::filesystem::remove_all(dir);
  shoal::collection_options o;
  o.dim = 16;
  o.index = "Flat";
  o.shards = 2;
  o.directory = dir;
  o.sync = buffered ? shoal::wal_sync::os_buffered : shoal::wal_sync::every_write;
  shoal::collection c(o);
  const auto v = shoal::make_uniform(20000, 16, 1);
  const std::size_t n = buffered ? 20000 : 2000;
  const auto t0 = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < n; ++i) {
    shoal::vector_id id = i;
    c.add(v.view().slice(i, 1), std::span<const shoal::vector_id>(&id, 1));
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%s: %zu single adds, %.2f us each\n", buffered ? "os_buffered" : "every_write", n, s / n * 1e6);
}
