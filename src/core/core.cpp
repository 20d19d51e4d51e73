// Out-of-line pieces of core/: error plumbing and metric names.

#include <algorithm>
#include <cctype>
#include <new>
#include <string>

#ifdef __linux__
#include <sys/mman.h>
#endif

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

namespace {
constexpr std::size_t huge_page = std::size_t{2} << 20;
constexpr std::size_t alignment_for(std::size_t bytes) noexcept {
  return bytes >= detail::huge_page_threshold ? huge_page : 64;
}
}  // namespace

void* detail::allocate_aligned(std::size_t bytes) {
  const std::size_t align = alignment_for(bytes);
  void* p = ::operator new (bytes, std::align_val_t{align});
#ifdef MADV_HUGEPAGE
  // Advice only: without transparent huge pages the call fails harmlessly and 4 KiB pages serve.
  if (align == huge_page) (void)::madvise(p, bytes / huge_page * huge_page, MADV_HUGEPAGE);
#endif
  return p;
}

void detail::deallocate_aligned(void* p, std::size_t bytes) noexcept {
  ::operator delete (p, std::align_val_t{alignment_for(bytes)});
}

void detail::throw_error(errc code, const std::string& message) { throw error(code, "shoal: " + message); }

std::string detail::printable(std::string_view text) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f && c != '\\') {
      out.push_back(c);
    } else {
      out += "\\x";
      out.push_back(hex[u >> 4]);
      out.push_back(hex[u & 0xf]);
    }
  }
  return out;
}

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
  // In any case, as SHOAL_SIMD: "L2" and "IP" were taken, "COS" and "Cosine" refused (a user-eyes review).
  const auto is = [&](std::string_view known) {
    return std::equal(name.begin(), name.end(), known.begin(), known.end(),
                      [](char a, char b) { return std::tolower(static_cast<unsigned char>(a)) == b; });
  };
  if (is("l2")) return metric::l2;
  if (is("ip") || is("inner_product")) return metric::inner_product;
  if (is("cos") || is("cosine")) return metric::cosine;
  SHOAL_CHECK(false, "unknown metric '", name, "' (use l2, ip or cos)");
  return metric::l2;  // unreachable
}

}  // namespace shoal
