#pragma once
// Command-line helpers for the examples, shoal-collection-bench and shoal-kmeans-bench. Numbers: the whole text must be
// the number, within the option's range, or the error names the option (std::stoul takes "-1" as 2^64 - 1 and "5x" as
// 5).

#include <charconv>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <system_error>

namespace shoal::examples {

/// `value` as a whole number in [min, max], or std::invalid_argument naming `option`.
inline std::size_t whole_number(const std::string& option, const std::string& value, std::size_t min, std::size_t max) {
  std::size_t n = 0;
  const char* last = value.data() + value.size();
  const auto [end, ec] = std::from_chars(value.data(), last, n);
  if (value.empty() || ec != std::errc{} || end != last || n < min || n > max)
    throw std::invalid_argument(option + " needs a whole number " +
                                (max == static_cast<std::size_t>(-1)
                                     ? "of at least " + std::to_string(min)
                                     : "in [" + std::to_string(min) + ", " + std::to_string(max) + "]") +
                                ", got '" + value + "'");
  return n;
}

/// `value` as a finite number ≥ 0, or std::invalid_argument naming `option`.
inline double non_negative(const std::string& option, const std::string& value) {
  double x = 0;
  const char* last = value.data() + value.size();
  const auto [end, ec] = std::from_chars(value.data(), last, x);
  if (value.empty() || ec != std::errc{} || end != last || !(x >= 0) || x > 1e300)
    throw std::invalid_argument(option + " needs a number >= 0, got '" + value + "'");
  return x;
}

/// Hybrid sharding's groups over `shards` shards: the most groups of at least 2 shards each (1 group for
/// a prime count), so that the groups divide the shards as the collection requires.
inline std::size_t hybrid_groups(std::size_t shards) {
  for (std::size_t g = shards / 2; g > 1; --g)
    if (shards % g == 0) return g;
  return 1;
}

}  // namespace shoal::examples
