// shoal-ann-bench: an ann-benchmarks-style recall/QPS sweep of one shoal index, with hnswlib and FAISS
// measured beside it by the same timing loop (--peers). `shoal-ann-bench --help` lists the options.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "adapter.hpp"
#include "dataset.hpp"
#include "options.hpp"
#include "report.hpp"
#include "runner.hpp"
#include "shoal/core/error.hpp"
#include "shoal/distance/distance.hpp"
#include "shoal/index/factory.hpp"
#include "shoal/io/vecs.hpp"

namespace shoal::bench {
namespace {

/// Validates every sweep point against `index` before the data is read (only its dimension) or anything
/// built.
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
/// the same spec and parameters (the others are skipped with a note). All get the spec as
/// `resolve_spec` gives it at the data's dimension `dim`: a spec written another way than the bench's
/// grammar (RFlat, spaces, ...) runs, and shows in the index column, as the factory's canonical form.
std::vector<std::unique_ptr<index_adapter>> make_adapters(const options& o, const std::vector<param_list>& points,
                                                          std::size_t dim) {
  const index_request request{resolve_spec(o.index, dim, o.metric), o.metric, o.build_params, o.k};
  // An index of the spec at the data's dimension, built empty and dropped: what the dimension refuses
  // (PQ m not dividing it) ends the run before the data is read, not after.
  (void)make_index(request.spec, dim, o.metric);
  std::vector<std::unique_ptr<index_adapter>> adapters;
  adapters.push_back(o.shards > 0 ? make_collection_adapter(request, {o.shards, o.sharding, o.replicas, o.groups}, dim)
                                  : make_shoal_adapter(request));
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

/// Whether `a` and `b` name one file: the same file where both exist (links and other spellings
/// included), else the same normalised absolute path (made absolute first: `weakly_canonical` leaves a
/// relative path none of whose parts exist as it is, so `out` and `./out` differed; a review). A path
/// that cannot be normalised names no other.
bool same_file(const std::filesystem::path& a, const std::filesystem::path& b) {
  std::error_code ec;
  if (std::filesystem::exists(a, ec) && std::filesystem::exists(b, ec)) return std::filesystem::equivalent(a, b, ec);
  const auto normal = [](const std::filesystem::path& p, std::error_code& error) {
    const std::filesystem::path absolute = std::filesystem::absolute(p, error);
    return error ? std::filesystem::path() : std::filesystem::weakly_canonical(absolute, error);
  };
  std::error_code ea, eb;
  const std::filesystem::path na = normal(a, ea), nb = normal(b, eb);
  return !ea && !eb && na == nb;
}

/// --csv, --plot and --save write once everything is measured (or built): a directory that does not
/// exist, or a target that is a directory, would otherwise end the run only then. A target that is an
/// input or another target would be overwritten without a word (--csv naming the --query file replaced
/// it with the CSV; --csv and --plot naming one file left only the plot; a review).
void check_output_dirs(const options& o) {
  const std::pair<const char*, const std::filesystem::path*> outputs[] = {
      {"--csv", &o.csv}, {"--plot", &o.plot}, {"--save", &o.save}};
  const std::pair<const char*, const std::filesystem::path*> inputs[] = {
      {"--base", &o.base}, {"--query", &o.query}, {"--gt", &o.gt}, {"--load", &o.load}};
  for (std::size_t i = 0; i < std::size(outputs); ++i) {
    const auto& [option, path] = outputs[i];
    if (path->empty()) continue;
    const std::filesystem::path dir = path->has_parent_path() ? path->parent_path() : ".";
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec))
      throw config_error(std::string(option) + " " + path->string() + ": no directory " + dir.string());
    if (std::filesystem::is_directory(*path, ec))
      throw config_error(std::string(option) + " " + path->string() + " is a directory; it needs a file name");
    for (const auto& [input, file] : inputs)  // --save over the --load file rewrites it, atomically
      if (!file->empty() && !(path == &o.save && file == &o.load) && same_file(*path, *file))
        throw config_error(std::string(option) + " " + path->string() + " is the " + input +
                           " file: it would be overwritten");
    for (std::size_t j = 0; j < i; ++j)
      if (!outputs[j].second->empty() && same_file(*path, *outputs[j].second))
        throw config_error(std::string(option) + " and " + outputs[j].first + " name the same file " + path->string());
  }
  if (!o.plot.empty() && find_gnuplot().empty())
    throw config_error("--plot " + o.plot.string() + ": gnuplot is not on the PATH (Debian: gnuplot-nox)");
}

/// --csv: the rows go to FILE.partial, which replaces FILE once every row is measured. A run that fails
/// removes FILE.partial and leaves an earlier FILE as it was (its rows are on stdout either way).
class results_file {
 public:
  /// Opens FILE.partial for `target` (nothing when `target` is empty); throws `std::runtime_error`.
  explicit results_file(const std::filesystem::path& target) : target_(target) {
    if (target_.empty()) return;
    partial_ = target_;
    partial_ += ".partial";
    out_.open(partial_);
    if (!out_) throw std::runtime_error("cannot open --csv file " + partial_.string());
  }
  results_file(const results_file&) = delete;
  results_file& operator=(const results_file&) = delete;
  ~results_file() {
    if (partial_.empty()) return;
    out_.close();
    std::error_code ignored;
    std::filesystem::remove(partial_, ignored);
  }

  void write_line(std::string_view line) {
    if (out_.is_open()) out_ << line << std::endl;  // flushed: the rows so far can be watched
  }

  /// Renames FILE.partial to FILE; throws `std::runtime_error` when the rows could not be written.
  void commit() {
    if (partial_.empty()) return;
    out_.close();
    if (!out_) throw std::runtime_error("cannot write --csv file " + partial_.string());
    std::error_code ec;
    std::filesystem::rename(partial_, target_, ec);
    if (ec)
      throw std::runtime_error("cannot rename " + partial_.string() + " to " + target_.string() + ": " + ec.message());
    partial_.clear();
  }

 private:
  std::filesystem::path target_;
  std::filesystem::path partial_;  ///< empty: no --csv, or committed
  std::ofstream out_;
};

void print_header(const options& o, const dataset& d) {
  std::cerr << "shoal-ann-bench: base " << o.base.string() << " (" << d.base.rows << " x " << d.base.dim
            << "), queries " << o.query.string() << " (" << d.queries.rows << " x " << d.queries.dim << ")\n"
            << "shoal-ann-bench: metric " << metric_name(o.metric) << ", k " << o.k << ", simd " << simd_level_name()
            << ", threads " << o.threads << ", " << (o.batch ? "batch" : "single-query") << " mode, min-time "
            << o.min_time_s << " s\n";
}

/// The --load file's header against --metric and the base's dimension `dim`, before the data is read
/// and the ground truth computed: a missing or mismatched file was reported only after both (14.6 s
/// on fashion-mnist; a user-eyes review). The spec and the vector count are checked once it is loaded.
void check_load_header(const options& o, std::size_t dim) {
  if (o.load.empty()) return;
  const std::string path = o.load.string();
  const index_file_info info =
      read_index_file_info(path, o.verify == verify_level::none ? verify_level::none : verify_level::header);
  check_load_metric(path, info.metric, o.metric);
  if (info.dim != dim)
    throw config_error("--load: " + path + " holds vectors of dimension " + std::to_string(info.dim) + ", --base " +
                       std::to_string(dim) + " (recall would be scored against other vectors)");
}

int run(const options& o) {
  const std::vector<param_list> points = sweep_points(o.sweeps);
  check_output_dirs(o);
  // The base's first row gives the dimension that specs and the collection layout are checked at.
  const std::size_t dim = io::read_vectors(o.base, 1).dim;
  std::vector<std::unique_ptr<index_adapter>> adapters = make_adapters(o, points, dim);
  check_load_header(o, dim);
  results_file csv(o.csv);
  dataset d = load_vectors(o);
  print_header(o, d);
  load_truth(d, o);

  const run_settings settings{o.k, o.threads, o.batch, o.min_time_s};
  std::vector<result_row> rows;
  std::cout << csv_header << std::endl;
  csv.write_line(csv_header);
  const auto emit = [&](const index_adapter& index, double build_s, const param_list& point, point_timing& timing) {
    const sweep_result r = summarise(timing);
    rows.push_back({std::string(index.library()), index.description(), format_params(point), build_s,
                    index.memory_bytes(), r.recall, r.qps, r.p50_ms, r.p99_ms, o.threads});
    std::cout << csv_line(rows.back()) << std::endl;
    csv.write_line(csv_line(rows.back()));
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
  csv.commit();

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
  } catch (const shoal::error& e) {
    // A value the index or the data rejects (alpha out of range, more IVF lists than base vectors, a file
    // of unknown type) is a bad parameter as much as one the bench rejects itself.
    const bool bad_parameter = e.code() == shoal::errc::invalid_argument;
    std::cerr << "shoal-ann-bench: " << (bad_parameter ? "" : "error: ") << error_text(e) << '\n';
    return bad_parameter ? 2 : 1;
  } catch (const std::exception& e) {
    std::cerr << "shoal-ann-bench: error: " << e.what() << '\n';
    return 1;
  }
}
