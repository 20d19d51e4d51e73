#include "runner.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include <tbb/task_arena.h>

#include "shoal/eval/eval.hpp"

namespace shoal::bench {
namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

/// How a pass over the queries is cut into search calls and spread over threads.
struct work_shape {
  std::size_t call_rows;         ///< queries per search call
  std::size_t workers;           ///< std::threads issuing calls
  std::size_t threads_per_call;  ///< size of each worker's oneTBB arena
};

work_shape shape_for(std::size_t rows, const run_settings& settings) {
  if (settings.batch) return {rows, 1, settings.threads};
  return {1, settings.threads, 1};
}

/// Workers claim call numbers from a shared counter; call c searches the c-th slice of `queries` (mod the
/// number of slices). Calls of the first pass write their slice of `first_pass`, later calls a scratch
/// buffer. Workers stop once every slice has been claimed and `min_time_s` has elapsed.
point_timing run_loop(const index_adapter& index, matrix_view<const float> queries, neighbors_view first_pass,
                      const work_shape& shape, double min_time_s) {
  const std::size_t calls_per_pass = (queries.rows + shape.call_rows - 1) / shape.call_rows;
  std::atomic<std::size_t> next_call{0};
  std::vector<point_timing> per_worker(shape.workers);
  std::exception_ptr failure;
  std::mutex failure_mutex;
  std::atomic<bool> failed{false};

  const auto start = clock_type::now();
  const auto work = [&](point_timing& stats) {
    neighbors scratch(shape.call_rows, first_pass.k);
    index.use_threads(shape.threads_per_call);
    for (;;) {
      const std::size_t call = next_call.fetch_add(1, std::memory_order_relaxed);
      const auto t0 = clock_type::now();
      if (failed.load(std::memory_order_relaxed)) break;
      if (call >= calls_per_pass && std::chrono::duration<double>(t0 - start).count() >= min_time_s) break;
      const std::size_t first = (call % calls_per_pass) * shape.call_rows;
      const std::size_t count = std::min(shape.call_rows, queries.rows - first);
      const neighbors_view out =
          call < calls_per_pass ? first_pass.slice(first, count) : scratch.view().slice(0, count);
      index.search(queries.slice(first, count), out);
      stats.latencies_s.push_back(seconds_since(t0));
      stats.queries += count;
    }
  };
  {
    std::vector<std::jthread> workers;
    for (std::size_t w = 0; w < shape.workers; ++w) {
      workers.emplace_back([&, w] {
        try {
          tbb::task_arena arena(static_cast<int>(shape.threads_per_call));
          arena.execute([&] { work(per_worker[w]); });
        } catch (...) {
          const std::lock_guard lock(failure_mutex);
          if (!failure) failure = std::current_exception();
          failed = true;
        }
      });
    }
  }
  if (failure) std::rethrow_exception(failure);

  point_timing total;
  total.wall_s = seconds_since(start);
  for (const point_timing& stats : per_worker) {
    total.latencies_s.insert(total.latencies_s.end(), stats.latencies_s.begin(), stats.latencies_s.end());
    total.queries += stats.queries;
  }
  return total;
}

/// Nearest-rank percentile `p` (0..100) of `values`, in milliseconds (`values` gets partially sorted).
double percentile_ms(std::vector<double>& values, double p) {
  const auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(values.size())));
  const auto nth = values.begin() + static_cast<std::ptrdiff_t>(std::clamp<std::size_t>(rank, 1, values.size()) - 1);
  std::nth_element(values.begin(), nth, values.end());
  return *nth * 1e3;
}

}  // namespace

double timed_build(index_adapter& index, matrix_view<const float> base, std::size_t threads) {
  tbb::task_arena arena(static_cast<int>(threads));
  const auto start = clock_type::now();
  arena.execute([&] {
    index.use_threads(threads);
    index.build(base);
  });
  return seconds_since(start);
}

double timed_load(index_adapter& index, const std::string& path, const load_options& options,
                  matrix_view<const float> base) {
  const auto start = clock_type::now();
  index.load(path, options, base);
  return seconds_since(start);
}

point_timing& point_timing::operator+=(const point_timing& later) {
  latencies_s.insert(latencies_s.end(), later.latencies_s.begin(), later.latencies_s.end());
  queries += later.queries;
  wall_s += later.wall_s;
  return *this;
}

point_timing measure(const index_adapter& index, matrix_view<const float> queries,
                     matrix_view<const std::int32_t> truth, const run_settings& settings) {
  const std::size_t warm_rows = std::min<std::size_t>(100, queries.rows);
  neighbors warm(warm_rows, settings.k);
  static_cast<void>(run_loop(index, queries.slice(0, warm_rows), warm.view(), shape_for(warm_rows, settings), 0.0));

  neighbors result(queries.rows, settings.k);
  point_timing timing = run_loop(index, queries, result.view(), shape_for(queries.rows, settings), settings.min_time_s);
  timing.recall = recall_at_k(result, truth, settings.k);
  return timing;
}

sweep_result summarise(point_timing& timing) {
  return {timing.recall, static_cast<double>(timing.queries) / timing.wall_s, percentile_ms(timing.latencies_s, 50),
          percentile_ms(timing.latencies_s, 99)};
}

}  // namespace shoal::bench
