// shoal-ann-bench: an ann-benchmarks-style recall/QPS sweep of one shoal index, with hnswlib and FAISS
// measured beside it by the same timing loop (--peers). `shoal-ann-bench --help` lists the options.
#include <algorithm>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "adapter.hpp"
#include "dataset.hpp"
#include "options.hpp"
#include "report.hpp"
#include "runner.hpp"
#include "shoal/distance/distance.hpp"
#include "shoal/index/factory.hpp"

namespace shoal::bench {
namespace {

/// Validates every sweep point against `index` before anything is built or read.
void check_sweep(index_adapter& index, const std::vector<param_list>& points) {
  for (const param_list& point : points) index.set_search_params(point);
}

/// A sweep point without the collection-only knob `shard_probe`, for indexes that are not collections.
param_list for_one_index(const param_list& point) {
  param_list out;
  for (const param& p : point)
    if (p.name != "shard_probe") out.push_back(p);
  return out;
}

/// shoal's adapter (a bad spec or parameter ends the run) and, with --peers, every peer that can serve
/// the same spec and parameters (the others are skipped with a note).
/// shoal's adapter for `request`; a spec the bench does not know as written may be another way of writing
/// one it knows (RFlat for Refine(Flat), PQ<m>x8, spaces around commas, ...): then the factory's
/// canonical form of it, as any_index::description() gives it, is used (and shown in the index column).
std::unique_ptr<index_adapter> make_shoal_index(index_request request, std::size_t dim) {
  try {
    return make_shoal_adapter(request);
  } catch (const config_error& unknown) {
    std::string canonical;
    try {
      canonical = make_index(request.spec, dim, request.metric).description();
    } catch (const shoal::error& e) {  // the factory's message names the bad token
      throw config_error(std::string(unknown.what()) + "; make_index says: " + e.what());
    }
    if (canonical == request.spec) throw;
    request.spec = canonical;
    return make_shoal_adapter(request);
  }
}

std::vector<std::unique_ptr<index_adapter>> make_adapters(const options& o, const std::vector<param_list>& points,
                                                          std::size_t dim) {
  const index_request request{o.index, o.metric, o.build_params};
  std::vector<std::unique_ptr<index_adapter>> adapters;
  adapters.push_back(o.shards > 0 ? make_collection_adapter(request, {o.shards, o.sharding, o.replicas, o.groups})
                                  : make_shoal_index(request, dim));
  check_sweep(*adapters.back(), points);
  if (!o.peers) return adapters;
  if (peer_libraries().empty()) std::cerr << "shoal-ann-bench: note: no peer library was found at configure time\n";
  for (const std::string& name : o.peer_names)
    if (std::none_of(peer_libraries().begin(), peer_libraries().end(),
                     [&](const peer_library& peer) { return peer.name == name; }))
      throw config_error("--peer " + name + ": no such peer library in this build");
  for (const peer_library& peer : peer_libraries()) {
    if (!o.peer_names.empty() && std::find(o.peer_names.begin(), o.peer_names.end(), peer.name) == o.peer_names.end())
      continue;
    try {
      auto adapter = peer.make(request);
      for (const param_list& point : points) adapter->set_search_params(for_one_index(point));
      adapters.push_back(std::move(adapter));
    } catch (const config_error& e) {
      std::cerr << "shoal-ann-bench: note: skipping peer " << peer.name << ": " << e.what() << '\n';
    }
  }
  return adapters;
}

void print_header(const options& o, const dataset& d) {
  std::cerr << "shoal-ann-bench: base " << o.base.string() << " (" << d.base.rows << " x " << d.base.dim
            << "), queries " << o.query.string() << " (" << d.queries.rows << " x " << d.queries.dim << ")\n"
            << "shoal-ann-bench: metric " << metric_name(o.metric) << ", k " << o.k << ", simd " << simd_level_name()
            << ", threads " << o.threads << ", " << (o.batch ? "batch" : "single-query") << " mode, min-time "
            << o.min_time_s << " s\n";
}

int run(const options& o) {
  const std::vector<param_list> points = sweep_points(o.sweeps);
  dataset d = load_vectors(o);
  // After the data: a spec written another way is resolved through the factory at the data's dimension.
  std::vector<std::unique_ptr<index_adapter>> adapters = make_adapters(o, points, d.base.dim);
  print_header(o, d);
  load_truth(d, o);
  std::ofstream csv;  // opened (and an earlier file emptied) only once the inputs have loaded
  if (!o.csv.empty()) {
    csv.open(o.csv);
    if (!csv) throw std::runtime_error("cannot open --csv file " + o.csv.string());
  }

  const run_settings settings{o.k, o.threads, o.batch, o.min_time_s};
  std::vector<result_row> rows;
  std::cout << csv_header << std::endl;
  if (csv) csv << csv_header << std::endl;
  const auto emit = [&](const index_adapter& index, double build_s, const param_list& point, point_timing& timing) {
    const sweep_result r = summarise(timing);
    rows.push_back({std::string(index.library()), index.description(), format_params(point), build_s,
                    index.memory_bytes(), r.recall, r.qps, r.p50_ms, r.p99_ms, o.threads});
    std::cout << csv_line(rows.back()) << std::endl;
    if (csv) csv << csv_line(rows.back()) << std::endl;
  };
  // With --rounds R > 1 every index stays built until all R rounds have measured each of its points.
  struct kept {
    std::unique_ptr<index_adapter> index;
    double build_s;
    std::vector<param_list> points;
    std::vector<point_timing> timings;
  };
  std::vector<kept> built;
  for (std::unique_ptr<index_adapter>& index : adapters) {
    // --load / --save apply to shoal's index; peers are always built.
    const bool shoal_index = index->library() == "shoal";
    const double build_s = shoal_index && !o.load.empty()
                               ? timed_load(*index, o.load.string(), {.mmap = o.mmap, .verify = o.verify}, d.base)
                               : timed_build(*index, d.base, o.threads);
    if (shoal_index && !o.save.empty()) index->save(o.save.string());
    // Peers are single indexes: shard_probe applies to the shoal collection only (each remaining point once).
    std::vector<param_list> own_points;
    for (const param_list& full_point : points) {
      param_list point = shoal_index ? full_point : for_one_index(full_point);
      if (std::none_of(own_points.begin(), own_points.end(),
                       [&](const param_list& p) { return format_params(p) == format_params(point); }))
        own_points.push_back(std::move(point));
    }
    if (o.rounds > 1) {
      const std::size_t count = own_points.size();
      built.push_back({std::move(index), build_s, std::move(own_points), std::vector<point_timing>(count)});
      continue;
    }
    for (const param_list& point : own_points) {
      index->set_search_params(point);
      point_timing timing = measure(*index, d.queries, d.truth, settings);
      emit(*index, build_s, point, timing);
    }
    index.reset();  // free its memory before the next library builds
  }
  run_settings round_settings = settings;
  round_settings.min_time_s = settings.min_time_s / static_cast<double>(o.rounds);
  for (std::size_t round = 0; round < o.rounds && !built.empty(); ++round)
    for (kept& entry : built) {
      for (std::size_t p = 0; p < entry.points.size(); ++p) {
        entry.index->set_search_params(entry.points[p]);
        const point_timing timing = measure(*entry.index, d.queries, d.truth, round_settings);
        if (round == 0)
          entry.timings[p] = timing;
        else
          entry.timings[p] += timing;
      }
    }
  for (kept& entry : built)
    for (std::size_t p = 0; p < entry.points.size(); ++p)
      emit(*entry.index, entry.build_s, entry.points[p], entry.timings[p]);
  if (csv && !csv.flush()) throw std::runtime_error("cannot write --csv file " + o.csv.string());

  if (!o.plot.empty()) {
    const std::string title = d.name + " (" + std::to_string(d.base.rows) + " x " + std::to_string(d.base.dim) + ", " +
                              metric_name(o.metric) + "): recall@" + std::to_string(o.k) + " vs QPS, " +
                              std::to_string(o.threads) + (o.threads == 1 ? " thread" : " threads") +
                              (o.batch ? ", batch" : ", single-query");
    write_plot(o.plot, rows, title);
  }
  return 0;
}

}  // namespace
}  // namespace shoal::bench

int main(int argc, char** argv) {
  using namespace shoal::bench;
  try {
    const options o = parse_options(std::span<const char* const>(argv + 1, static_cast<std::size_t>(argc - 1)));
    if (o.help) {
      print_usage(std::cout);
      return 0;
    }
    return run(o);
  } catch (const usage_error& e) {
    std::cerr << "shoal-ann-bench: " << e.what() << " (see --help)\n";
    return 2;
  } catch (const config_error& e) {
    std::cerr << "shoal-ann-bench: " << e.what() << '\n';
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "shoal-ann-bench: error: " << e.what() << '\n';
    return 1;
  }
}
