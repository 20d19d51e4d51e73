#include "collection/metrics.hpp"

#include <bit>
#include <charconv>
#include <cmath>
#include <cstdio>

namespace shoal::detail {

void latency_histogram::record(std::chrono::nanoseconds elapsed) noexcept {
  const auto ns = static_cast<std::uint64_t>(std::max<std::int64_t>(elapsed.count(), 0));
  // Bucket i holds (2^(i-1), 2^i] microseconds; ceil(log2(ceil(µs))) without floating point.
  const std::uint64_t us = (ns + 999) / 1000;
  const std::size_t bucket = us <= 1 ? 0 : static_cast<std::size_t>(std::bit_width(us - 1));
  counts_[std::min(bucket, finite_buckets)].fetch_add(1, std::memory_order_relaxed);
  sum_ns_.fetch_add(ns, std::memory_order_relaxed);
  for (std::uint64_t seen = max_ns_.load(std::memory_order_relaxed);
       ns > seen && !max_ns_.compare_exchange_weak(seen, ns, std::memory_order_relaxed);) {
  }
}

void latency_histogram::reset() noexcept {
  for (std::atomic<std::uint64_t>& c : counts_) c.store(0, std::memory_order_relaxed);
  sum_ns_.store(0, std::memory_order_relaxed);
  max_ns_.store(0, std::memory_order_relaxed);
}

latency_histogram::snapshot latency_histogram::read() const noexcept {
  snapshot s;
  std::uint64_t running = 0;
  for (std::size_t i = 0; i <= finite_buckets; ++i) {
    running += counts_[i].load(std::memory_order_relaxed);
    s.cumulative[i] = running;
  }
  s.count = running;
  s.sum_seconds = static_cast<double>(sum_ns_.load(std::memory_order_relaxed)) * 1e-9;
  s.max_seconds = static_cast<double>(max_ns_.load(std::memory_order_relaxed)) * 1e-9;
  return s;
}

double latency_histogram::snapshot::quantile(double q) const noexcept {
  return count == 0 ? 0 : std::min(interpolated(q), max_seconds);
}

double latency_histogram::snapshot::interpolated(double q) const noexcept {
  const double rank = q * static_cast<double>(count);
  for (std::size_t i = 0; i <= finite_buckets; ++i) {
    if (static_cast<double>(cumulative[i]) < rank) continue;
    if (i == finite_buckets) return bound_seconds(finite_buckets - 1);  // beyond the last bound
    const double lo = i == 0 ? 0.0 : bound_seconds(i - 1);
    const double below = i == 0 ? 0.0 : static_cast<double>(cumulative[i - 1]);
    const double in_bucket = static_cast<double>(cumulative[i]) - below;
    const double fraction = in_bucket > 0 ? (rank - below) / in_bucket : 1.0;
    return lo + (bound_seconds(i) - lo) * fraction;
  }
  return bound_seconds(finite_buckets - 1);
}

void prometheus_writer::family(std::string_view name, std::string_view type, std::string_view help) {
  out_.append("# HELP ").append(name).append(" ").append(help).append("\n");
  out_.append("# TYPE ").append(name).append(" ").append(type).append("\n");
}

void prometheus_writer::sample(std::string_view name, std::string_view labels, double value) {
  out_.append(name);
  if (!labels.empty()) out_.append("{").append(labels).append("}");
  out_.append(" ");
  if (std::isinf(value)) {
    out_.append(value > 0 ? "+Inf" : "-Inf");
  } else {
    // The shortest text that reads back as the same double: counters stay exact up to 2^53 (a fixed
    // number of digits, as %.9g was, dropped the low digits of counts past a billion).
    char buffer[32];
    const std::to_chars_result r = std::to_chars(buffer, buffer + sizeof buffer, value);
    out_.append(buffer, r.ptr);
  }
  out_.append("\n");
}

void prometheus_writer::histogram(std::string_view name, std::string_view labels,
                                  const latency_histogram::snapshot& s) {
  const std::string base(name);
  const std::string prefix = labels.empty() ? std::string() : std::string(labels) + ",";
  char bound[32];
  for (std::size_t i = 0; i < latency_histogram::finite_buckets; ++i) {
    std::snprintf(bound, sizeof bound, "%.9g", latency_histogram::bound_seconds(i));
    sample(base + "_bucket", prefix + label("le", bound), static_cast<double>(s.cumulative[i]));
  }
  sample(base + "_bucket", prefix + label("le", "+Inf"), static_cast<double>(s.count));
  sample(base + "_sum", labels, s.sum_seconds);
  sample(base + "_count", labels, static_cast<double>(s.count));
}

bool valid_utf8(std::string_view text) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const auto* end = p + text.size();
  while (p < end) {
    const unsigned char c = *p;
    // Sequence length and the range its second byte must fall in: no overlong forms, no surrogates
    // (U+D800-DFFF), nothing above U+10FFFF.
    std::size_t length = 0;
    unsigned char low = 0x80, high = 0xbf;
    if (c < 0x80) {
      ++p;
      continue;
    }
    if (c >= 0xc2 && c <= 0xdf) {
      length = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      length = 3;
      if (c == 0xe0) low = 0xa0;
      if (c == 0xed) high = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      length = 4;
      if (c == 0xf0) low = 0x90;
      if (c == 0xf4) high = 0x8f;
    } else {
      return false;
    }
    if (static_cast<std::size_t>(end - p) < length || p[1] < low || p[1] > high) return false;
    for (std::size_t i = 2; i < length; ++i)
      if (p[i] < 0x80 || p[i] > 0xbf) return false;
    p += length;
  }
  return true;
}

std::string prometheus_writer::label(std::string_view key, std::string_view value) {
  std::string out(key);
  out += "=\"";
  for (const char c : value) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  out += '"';
  return out;
}

}  // namespace shoal::detail
