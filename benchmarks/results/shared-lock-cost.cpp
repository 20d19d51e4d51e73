// Shared-lock cost: T threads each take and release the lock shared N times, no writer. Session 36, the
// phase-fair lock against the writer-first lock it replaced (docs/hnsw.md, "Neither side starves"):
//   git show 5ab137f:src/core/writer_first_mutex.hpp > /tmp/old.hpp
//   g++ -std=c++20 -O2 -I/tmp -DLOCK_HEADER='"old.hpp"' -DLOCK_TYPE=writer_first_mutex
//       benchmarks/results/shared-lock-cost.cpp -o /tmp/old
//   g++ -std=c++20 -O2 -Isrc -DLOCK_HEADER='"core/phase_fair_mutex.hpp"' -DLOCK_TYPE=phase_fair_mutex
//       benchmarks/results/shared-lock-cost.cpp -o /tmp/new
//   /tmp/old 1 20000000; /tmp/new 1 20000000; /tmp/old 2 10000000; /tmp/new 2 10000000
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <vector>
#include LOCK_HEADER
using namespace shoal::detail;
int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s THREADS N\n", argv[0]);
    return 2;
  }
  const int threads = std::atoi(argv[1]);
  const long n = std::atol(argv[2]);
  LOCK_TYPE mutex;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&] {
      for (long i = 0; i < n; ++i) {
        mutex.lock_shared();
        mutex.unlock_shared();
      }
    });
  for (auto& t : pool) t.join();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%d threads x %ld shared lock+unlock: %.1f ns per pair per thread\n", threads, n, s * 1e9 / n);
  return 0;
}
