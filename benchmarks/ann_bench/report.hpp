#pragma once
/// \file
/// Output of shoal-ann-bench: CSV rows (stdout and --csv) and the recall/QPS plot (--plot).

#include <cstddef>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

namespace shoal::bench {

/// One sweep point of one index: a CSV row.
struct result_row {
  std::string library;
  std::string index;
  std::string search_params;
  double build_s = 0;
  std::size_t index_bytes = 0;
  double recall = 0;
  double qps = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  std::size_t threads = 1;
};

/// The header line; the contract other tools parse.
inline constexpr std::string_view csv_header =
    "library,index,search_params,build_s,index_bytes,recall,qps,p50_ms,p99_ms,threads";

/// A row as CSV (RFC 4180 quoting for fields holding commas or quotes, e.g. `IVF1024,PQ32x4fs`).
[[nodiscard]] std::string csv_line(const result_row& row);

/// `gnuplot` on the PATH, or empty.
[[nodiscard]] std::filesystem::path find_gnuplot();

/// Draws recall (x) against QPS (log y), one line per library and index, with gnuplot into `png`.
/// Throws `std::runtime_error` if gnuplot is not on the PATH (`--plot` checks that before a run) or
/// fails.
void write_plot(const std::filesystem::path& png, std::span<const result_row> rows, std::string_view title);

}  // namespace shoal::bench
