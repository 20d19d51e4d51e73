#include "params.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "shoal/index/refine.hpp"

namespace shoal::bench {

std::string_view error_text(const std::exception& e) noexcept {
  const auto* own = dynamic_cast<const shoal::error*>(&e);
  return own != nullptr ? own->message() : std::string_view(e.what());
}

param parse_param(std::string_view text, std::string_view option) {
  const std::size_t eq = text.find('=');
  if (eq == std::string_view::npos || eq == 0 || eq + 1 == text.size())
    throw config_error(std::string(option) + " expects NAME=VALUE, got '" + std::string(text) + "'");
  return {std::string(text.substr(0, eq)), std::string(text.substr(eq + 1))};
}

sweep_axis parse_sweep(std::string_view text) {
  const param whole = parse_param(text, "--sweep");
  sweep_axis axis{whole.name, {}};
  std::string_view rest = whole.value;
  for (;;) {
    const std::size_t comma = rest.find(',');
    const std::string_view value = rest.substr(0, comma);
    if (value.empty()) throw config_error("--sweep " + whole.name + ": empty value in '" + whole.value + "'");
    axis.values.emplace_back(value);
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  return axis;
}

std::vector<param_list> sweep_points(std::span<const sweep_axis> axes) {
  std::vector<param_list> points{param_list{}};
  for (const sweep_axis& axis : axes) {
    std::vector<param_list> next;
    next.reserve(points.size() * axis.values.size());
    for (const param_list& point : points) {
      for (const std::string& value : axis.values) {
        next.push_back(point);
        next.back().push_back({axis.name, value});
      }
    }
    points = std::move(next);
  }
  return points;
}

void append_item(std::string& list, std::string_view item, std::string_view separator) {
  if (!list.empty()) list += separator;
  list += item;
}

std::string format_params(const param_list& params) {
  if (params.empty()) return "-";
  std::string text;
  for (const param& p : params) append_item(text, p.name + "=" + p.value, ";");
  return text;
}

namespace {
/// A positive decimal integer at the start of `text`, consumed; nothing if there is none. A leading zero
/// is none: the grammar holds the canonical spelling only (`HNSW8`, not `HNSW08`), so that the spec is the
/// index column and the description a saved index reports; other spellings reach the index through
/// `resolve_spec`, as the factory's canonical form.
std::optional<std::size_t> take_count(std::string_view& text) {
  std::size_t value = 0;
  if (text.starts_with('0')) return {};
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || value == 0) return {};
  text.remove_prefix(static_cast<std::size_t>(end - text.data()));
  return value;
}

/// Consumes `IVF<nlist>[_HNSW<M>]` at the start of `text`; false if it is not there.
bool take_ivf(std::string_view& text, std::size_t& nlist, std::size_t& coarse_hnsw_m) {
  if (!text.starts_with("IVF")) return false;
  text.remove_prefix(3);
  const auto lists = take_count(text);
  if (!lists) return false;
  nlist = *lists;
  coarse_hnsw_m = 0;
  if (!text.starts_with("_HNSW")) return true;
  text.remove_prefix(5);
  const auto m = take_count(text);
  if (!m) return false;
  coarse_hnsw_m = *m;
  return true;
}
}  // namespace

std::optional<ivf_flat_spec> ivf_flat(std::string_view spec) {
  ivf_flat_spec out;
  if (!take_ivf(spec, out.nlist, out.coarse_hnsw_m) || spec != ",Flat") return {};
  return out;
}

std::optional<ivf_pq_spec> ivf_pq(std::string_view spec) {
  ivf_pq_spec out;
  if (spec.starts_with("OPQ")) {
    spec.remove_prefix(3);
    const auto opq = take_count(spec);
    if (!opq || !spec.starts_with(",")) return {};
    spec.remove_prefix(1);
    out.opq = *opq;
  }
  if (!take_ivf(spec, out.nlist, out.coarse_hnsw_m) || !spec.starts_with(",PQ")) return {};
  spec.remove_prefix(3);
  const auto m = take_count(spec);
  if (!m) return {};
  out.m = *m;
  if (spec.starts_with("x4fs")) {
    out.fast_scan = true;
    spec.remove_prefix(4);
  }
  if (spec == ",Refine(Flat)" || spec == ",Refine(SQ8)") {
    (spec == ",Refine(Flat)" ? out.refine : out.refine_sq8) = true;
    spec = {};
  }
  if (!spec.empty()) return {};
  return out;
}

std::optional<std::size_t> hnsw_m(std::string_view spec) {
  if (!spec.starts_with("HNSW")) return {};
  spec.remove_prefix(4);
  const auto m = take_count(spec);
  if (!m || !spec.empty()) return {};
  return m;
}

std::optional<hnsw_spec> parse_hnsw_spec(std::string_view spec) {
  hnsw_codes codes = hnsw_codes::none;
  for (const auto& [suffix, kind] :
       {std::pair{std::string_view(",SQ8"), hnsw_codes::sq8}, std::pair{std::string_view(",SQ4"), hnsw_codes::sq4},
        std::pair{std::string_view(",F16"), hnsw_codes::fp16}})
    if (spec.ends_with(suffix)) {
      spec.remove_suffix(suffix.size());
      codes = kind;
      break;
    }
  const std::optional<std::size_t> m = hnsw_m(spec);
  if (!m) return {};
  return hnsw_spec{*m, codes};
}

namespace {

/// `p.value` as an integer in [`least`, 2^31), else `config_error` saying it must be `what`.
std::size_t parse_integer(const param& p, std::string_view index, std::size_t least, const char* what) {
  std::size_t value = 0;
  const char* first = p.value.data();
  const char* last = first + p.value.size();
  const auto [end, ec] = std::from_chars(first, last, value);
  if (ec != std::errc{} || end != last || value < least || value >= (std::size_t{1} << 31))
    throw config_error("parameter " + p.name + "=" + p.value + " of index " + std::string(index) + " must be " + what);
  return value;
}

}  // namespace

std::size_t parse_positive(const param& p, std::string_view index) {
  return parse_integer(p, index, 1, "a positive integer");
}

std::size_t parse_count(const param& p, std::string_view index) {
  return parse_integer(p, index, 0, "a non-negative integer");
}

std::uint64_t parse_seed(const param& p, std::string_view index) {
  std::uint64_t value = 0;
  const char* first = p.value.data();
  const char* last = first + p.value.size();
  const auto [end, ec] = std::from_chars(first, last, value);
  if (ec != std::errc{} || end != last)
    throw config_error("parameter " + p.name + "=" + p.value + " of index " + std::string(index) +
                       " must be an integer in [0, 2^64)");
  return value;
}

std::size_t parse_refine(const param& p, std::string_view index) {
  const std::size_t factor = parse_count(p, index);
  if (factor == 0 && !ivf_pq(index))
    throw config_error("parameter " + p.name + "=" + p.value + " of index " + std::string(index) +
                       " must be a positive integer: a two-stage ,Refine(Flat) reads 0 as its default depth k · " +
                       std::to_string(refine_index::default_refine_factor) +
                       " (refine=1 re-ranks the first stage's k results; only IVF-PQ's own re-rank takes 0, for "
                       "none)");
  return factor;
}

double parse_number(const param& p, std::string_view index) {
  double value = 0;
  const char* first = p.value.data();
  const char* last = first + p.value.size();
  const auto [end, ec] = std::from_chars(first, last, value);
  if (ec != std::errc{} || end != last || !std::isfinite(value))
    throw config_error("parameter " + p.name + "=" + p.value + " of index " + std::string(index) + " must be a number");
  return value;
}

void check_param_names(const param_list& params, std::span<const std::string_view> known, std::string_view kind,
                       std::string_view index) {
  for (const param& p : params) {
    if (std::find(known.begin(), known.end(), p.name) != known.end()) continue;
    std::string names;
    for (const std::string_view name : known) append_item(names, name, ", ");
    throw config_error("unknown " + std::string(kind) + " parameter '" + p.name + "' for index " + std::string(index) +
                       " (known: " + (names.empty() ? "none" : names) + ")");
  }
}

std::size_t single_knob(const param_list& params, std::string_view name, std::size_t fallback, std::string_view kind,
                        std::string_view index) {
  check_param_names(params, std::span(&name, 1), kind, index);
  std::size_t value = fallback;
  for (const param& p : params) value = parse_positive(p, index);
  return value;
}

}  // namespace shoal::bench
