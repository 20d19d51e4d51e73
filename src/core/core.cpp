// Out-of-line pieces of core/: error plumbing and metric names.

#include <string>

#include "shoal/core/error.hpp"
#include "shoal/core/types.hpp"

namespace shoal {

const char* errc_name(errc code) noexcept {
  switch (code) {
    case errc::invalid_argument:
      return "invalid_argument";
    case errc::dimension_mismatch:
      return "dimension_mismatch";
    case errc::non_finite:
      return "non_finite";
    case errc::not_found:
      return "not_found";
    case errc::duplicate_id:
      return "duplicate_id";
    case errc::io_error:
      return "io_error";
    case errc::corrupt_file:
      return "corrupt_file";
    case errc::unsupported:
      return "unsupported";
  }
  return "unknown";
}

void detail::throw_error(errc code, const std::string& message) { throw error(code, "shoal: " + message); }

const char* metric_name(metric m) noexcept {
  switch (m) {
    case metric::l2:
      return "l2";
    case metric::inner_product:
      return "inner_product";
    case metric::cosine:
      return "cosine";
  }
  return "unknown";
}

metric parse_metric(std::string_view name) {
  if (name == "l2" || name == "L2") return metric::l2;
  if (name == "ip" || name == "inner_product" || name == "IP") return metric::inner_product;
  if (name == "cos" || name == "cosine") return metric::cosine;
  SHOAL_CHECK(false, "unknown metric '", name, "' (use l2, ip or cos)");
  return metric::l2;  // unreachable
}

}  // namespace shoal
