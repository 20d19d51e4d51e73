#include "report.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <stdexcept>
#include <utility>
#include <vector>

namespace shoal::bench {
namespace {

std::string csv_field(std::string_view text) {
  if (text.find_first_of(",\"\n") == std::string_view::npos) return std::string(text);
  std::string quoted = "\"";
  for (const char c : text) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + '"';
}

std::string fixed(double value, int decimals) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", decimals, value);
  return buffer;
}

}  // namespace

std::filesystem::path find_gnuplot() {
  const char* path = std::getenv("PATH");
  std::string_view dirs = path != nullptr ? path : "";
  while (!dirs.empty()) {
    const std::size_t colon = dirs.find(':');
    const std::filesystem::path candidate = std::filesystem::path(dirs.substr(0, colon)) / "gnuplot";
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    dirs.remove_prefix(colon == std::string_view::npos ? dirs.size() : colon + 1);
  }
  return {};
}

namespace {

/// `text` as a single-quoted shell word.
std::string shell_quoted(std::string_view text) {
  std::string quoted = "'";
  for (const char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

/// `text` as a gnuplot single-quoted string (where only '' needs escaping).
std::string gnuplot_quoted(std::string_view text) {
  std::string quoted = "'";
  for (const char c : text) quoted += c == '\'' ? std::string("''") : std::string(1, c);
  return quoted + "'";
}

bool by_qps(const result_row& a, const result_row& b) { return a.qps < b.qps; }
bool by_recall(const result_row& a, const result_row& b) { return a.recall < b.recall; }

/// Deletes the temporary files of one plot however the plot ends.
/// The plot's data and script, in a directory of their own that mkdtemp(3) creates with an
/// unpredictable name, readable by this user only: fixed names in the shared temporary directory would
/// let another user plant a link there that the files are then written through.
struct temp_files {
  std::filesystem::path dir, data, script;
  temp_files() {
    std::string pattern = (std::filesystem::temp_directory_path() / "shoal-ann-bench-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr)
      throw std::runtime_error("cannot create a temporary directory for the plot files like " + pattern);
    dir = pattern;
    data = dir / "plot.dat";
    script = dir / "plot.gp";
  }
  temp_files(const temp_files&) = delete;
  temp_files& operator=(const temp_files&) = delete;
  ~temp_files() {
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
};

}  // namespace

std::string csv_line(const result_row& row) {
  return csv_field(row.library) + ',' + csv_field(row.index) + ',' + csv_field(row.search_params) + ',' +
         fixed(row.build_s, 3) + ',' + std::to_string(row.index_bytes) + ',' + fixed(row.recall, 4) + ',' +
         fixed(row.qps, 1) + ',' + fixed(row.p50_ms, 4) + ',' + fixed(row.p99_ms, 4) + ',' +
         std::to_string(row.threads);
}

void write_plot(const std::filesystem::path& png, std::span<const result_row> rows, std::string_view title) {
  if (rows.empty()) return;
  const std::filesystem::path gnuplot = find_gnuplot();
  if (gnuplot.empty()) throw std::runtime_error("gnuplot not found on PATH, no plot written to " + png.string());
  // One line per (library, index), its points in recall order, as ann-benchmarks draws them.
  std::map<std::pair<std::string, std::string>, std::vector<std::pair<double, double>>> series;
  for (const result_row& row : rows) series[{row.library, row.index}].emplace_back(row.recall, row.qps);

  // Explicit ranges (whole decades of QPS, recall up to 1): gnuplot cannot autoscale a single point.
  const auto [lowest, highest] = std::minmax_element(rows.begin(), rows.end(), by_qps);
  const double y_lo = std::pow(10.0, std::floor(std::log10(std::max(lowest->qps, 1e-3) / 1.5)));
  const double y_hi = std::pow(10.0, std::ceil(std::log10(std::max(highest->qps, 1e-3) * 1.5)));
  const double min_recall = std::min_element(rows.begin(), rows.end(), by_recall)->recall;
  const double x_lo = std::max(0.0, std::floor((min_recall - 0.05) * 20.0) / 20.0);

  const temp_files temp;
  std::ofstream data(temp.data);
  std::ofstream script(temp.script);
  script << "set terminal pngcairo size 1000,650 noenhanced font 'sans,10'\n"
         << "set output " << gnuplot_quoted(png.string()) << '\n'
         << "set title " << gnuplot_quoted(title) << '\n'
         << "set xlabel 'recall'\nset ylabel 'queries per second (1/s)'\nset logscale y\nset grid\n"
         << "set key outside right top\n"
         << "set xrange [" << x_lo << ":1.01]\nset yrange [" << y_lo << ":" << y_hi << "]\n"
         << "plot";
  std::size_t block = 0;
  for (auto& [key, points] : series) {
    std::sort(points.begin(), points.end());
    for (const auto& [recall, qps] : points) data << recall << ' ' << qps << '\n';
    data << "\n\n";  // gnuplot data blocks are separated by two blank lines, addressed by `index`
    script << (block == 0 ? " " : ", ") << gnuplot_quoted(temp.data.string()) << " index " << block
           << " with linespoints pointsize 1.5 title " << gnuplot_quoted(key.first + " " + key.second);
    ++block;
  }
  script << '\n';
  data.close();
  script.close();
  if (!data || !script)
    throw std::runtime_error("cannot write the temporary plot files in " + temp.data.parent_path().string());

  const std::string command = shell_quoted(gnuplot.string()) + ' ' + shell_quoted(temp.script.string());
  if (std::system(command.c_str()) != 0) throw std::runtime_error("gnuplot failed to draw " + png.string());
  std::cerr << "shoal-ann-bench: plot written to " << png.string() << '\n';
}

}  // namespace shoal::bench
