#pragma once
// Internal: lock-free latency histograms and the Prometheus text writer behind collection::metrics_text.

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace shoal::detail {

/// Whether `text` is well-formed UTF-8 (what the Prometheus text format requires of label values).
[[nodiscard]] bool valid_utf8(std::string_view text) noexcept;

/// Latency histogram with fixed exponential buckets: upper bounds 1 µs · 2^i, i = 0 .. 24 (1 µs to
/// about 16.8 s), plus +Inf. Recording is two relaxed atomic adds and a relaxed maximum (a CAS loop
/// only when the sample is the largest yet), so any number of threads record concurrently without a
/// lock; readers see a consistent-enough snapshot for monitoring (a count, its sum and the maximum may
/// be a sample apart: a quantile read then may come out low, never above the slowest call).
class latency_histogram {
 public:
  static constexpr std::size_t finite_buckets = 25;

  /// Upper bound of bucket `i` in seconds (i < finite_buckets).
  [[nodiscard]] static constexpr double bound_seconds(std::size_t i) noexcept {
    return 1e-6 * static_cast<double>(std::uint64_t{1} << i);
  }

  void record(std::chrono::nanoseconds elapsed) noexcept;
  /// Forgets every sample (not atomic with concurrent `record`s: for a histogram no other thread sees yet).
  void reset() noexcept;

  /// Snapshot of the counts (cumulative per Prometheus `le` bucket), total count and sum.
  struct snapshot {
    std::array<std::uint64_t, finite_buckets + 1> cumulative{};
    std::uint64_t count = 0;
    double sum_seconds = 0;
    double max_seconds = 0;  ///< the slowest sample
    /// The q-quantile (0 < q < 1) by linear interpolation inside its bucket, at most `max_seconds` (a
    /// bucket spans a factor of two: interpolated alone, a p99 of 2.0 ms came out of calls that took
    /// 1.4 ms in all; a review); 0 without samples.
    [[nodiscard]] double quantile(double q) const noexcept;

   private:
    [[nodiscard]] double interpolated(double q) const noexcept;
  };
  [[nodiscard]] snapshot read() const noexcept;

 private:
  std::array<std::atomic<std::uint64_t>, finite_buckets + 1> counts_{};
  std::atomic<std::uint64_t> sum_ns_{0};
  std::atomic<std::uint64_t> max_ns_{0};
};

/// Appends Prometheus text exposition (0.0.4) to a string: `# HELP` / `# TYPE` once per family, then
/// samples with labels. Label values are escaped (\\, ", newline).
class prometheus_writer {
 public:
  explicit prometheus_writer(std::string& out) : out_(out) {}
  /// Starts a metric family (`type`: counter, gauge, histogram).
  void family(std::string_view name, std::string_view type, std::string_view help);
  /// One sample `name{labels} value`; `labels` is already formatted (`a="x",b="y"`), may be empty.
  void sample(std::string_view name, std::string_view labels, double value);
  /// The `_bucket`, `_sum` and `_count` samples of a histogram.
  void histogram(std::string_view name, std::string_view labels, const latency_histogram::snapshot& s);

  /// `key="value"` with the value escaped.
  [[nodiscard]] static std::string label(std::string_view key, std::string_view value);

 private:
  std::string& out_;
};

}  // namespace shoal::detail
