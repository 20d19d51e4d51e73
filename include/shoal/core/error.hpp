#pragma once
/// \file
/// shoal's one exception type and the check macro that raises it at API boundaries.

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace shoal {

/// What kind of problem an error reports; stable, so callers can branch on it.
enum class errc {
  invalid_argument = 1,  ///< a parameter is out of range or malformed (k = 0, bad spec, ...)
  dimension_mismatch,    ///< a vector or matrix has the wrong dimension
  non_finite,            ///< input contains NaN or Inf
  not_found,             ///< an id is not in the index
  duplicate_id,          ///< an id is already in the index
  io_error,              ///< the operating system refused a read or write
  corrupt_file,          ///< a file is truncated, malformed or inconsistent
  unsupported,           ///< valid request the build or the CPU cannot serve
};

/// Short lowercase name of a code ("invalid_argument", ...).
[[nodiscard]] const char* errc_name(errc code) noexcept;

/// Every failure shoal reports is a `shoal::error`: `what()` names the problem in words, `code()` classifies it.
class error : public std::runtime_error {
 public:
  error(errc code, const std::string& message) : std::runtime_error(message), code_(code) {}
  [[nodiscard]] errc code() const noexcept { return code_; }
  /// `what()` without its leading "shoal: ": the problem alone, to wrap in another message.
  [[nodiscard]] std::string_view message() const noexcept {
    std::string_view m = what();
    if (m.starts_with("shoal: ")) m.remove_prefix(7);
    return m;
  }

 private:
  errc code_;
};

namespace detail {

/// Concatenates anything streamable; only called on the failure path of SHOAL_CHECK.
template <class... Parts>
[[nodiscard]] std::string str(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}

[[noreturn]] void throw_error(errc code, const std::string& message);

/// `text` fit to quote in a message: printable ASCII as it is, any other byte as \xNN (bytes read from a
/// damaged file would otherwise end or garble the message: a NUL cuts it short in C strings).
[[nodiscard]] std::string printable(std::string_view text);

}  // namespace detail
}  // namespace shoal

/// Throws `shoal::error{code, message}` unless `cond` holds. The message is a comma-separated list of
/// streamable parts, built only when the check fails: `SHOAL_CHECK_CODE(d == dim_, errc::dimension_mismatch,
/// "query has dimension ", d, ", index has ", dim_)`.
#define SHOAL_CHECK_CODE(cond, code, ...)                                      \
  do {                                                                         \
    if (!(cond)) [[unlikely]]                                                  \
      ::shoal::detail::throw_error((code), ::shoal::detail::str(__VA_ARGS__)); \
  } while (false)

/// `SHOAL_CHECK_CODE` with `errc::invalid_argument`, the common case.
#define SHOAL_CHECK(cond, ...) SHOAL_CHECK_CODE(cond, ::shoal::errc::invalid_argument, __VA_ARGS__)
