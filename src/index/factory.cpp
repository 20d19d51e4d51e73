// Factory strings (the grammar is in include/shoal/index/factory.hpp) and the any-kind file loader.
//
// The parser reads the whole spec into a description first — components, their parameters and where
// each token stands — and only then decides whether it can be built. So a malformed spec is reported as
// such (errc::invalid_argument, pointing at the bad token) even when an earlier component is merely not
// built yet, and adding an index type means adding a case to `build`, not touching the parser.

#include "shoal/index/factory.hpp"

#include <cctype>
#include <cstdint>
#include <limits>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "shoal/distance/distance.hpp"
#include "shoal/index/flat.hpp"
#include "shoal/index/hnsw.hpp"
#include "shoal/index/ivf_flat.hpp"
#include "shoal/index/ivf_pq.hpp"
#include "shoal/index/refine.hpp"

namespace shoal {
namespace {

/// One comma-separated component and its offset in the full spec.
struct token {
  std::string_view text;
  std::size_t pos = 0;
};

enum class structure_kind { flat, hnsw, ivf };
enum class encoding_kind { flat, sq8, sq4, sqfp16, pq };

struct encoding {
  encoding_kind kind = encoding_kind::flat;
  std::size_t pq_m = 0;
  std::size_t pq_bits = 8;
  bool fast_scan = false;
  token where;
};

struct parsed_spec {
  std::optional<token> transform;  // OPQ / PCA
  /// OPQ<M> without an output dimension: M, as a number (`OPQ08` is `OPQ8`); 0 for anything else.
  std::size_t opq_m = 0;
  structure_kind structure = structure_kind::flat;
  token structure_token;
  std::size_t hnsw_m = 0;         // HNSW<M>
  std::size_t nlist = 0;          // IVF<nlist>
  std::size_t coarse_hnsw_m = 0;  // IVF<nlist>_HNSW<M>: 0 = flat coarse quantizer
  std::optional<encoding> storage;
  std::optional<token> refine;
  /// What the refinement asks for: "RFlat", or "Refine(<inside>)" with spaces around the inside trimmed.
  std::string refine_text;
};

class parser {
 public:
  explicit parser(std::string_view full) : full_(full) {}

  /// Parses `spec`, which starts at offset `base` of the full spec.
  [[nodiscard]] parsed_spec parse(std::string_view spec, std::size_t base) const {
    const std::vector<token> tokens = split(spec, base);
    std::size_t i = 0;
    parsed_spec out;
    const auto next = [&]() -> const token* { return i < tokens.size() ? &tokens[i] : nullptr; };

    if (is_transform(tokens[i])) {
      out.opq_m = check_transform(tokens[i]);
      out.transform = tokens[i++];
    }
    const token* t = next();
    if (t == nullptr) fail_at_end(spec, base, "expected Flat, HNSW<M> or IVF<nlist> after the transform");
    parse_structure(*t, out);
    ++i;
    if (out.structure == structure_kind::ivf) {
      t = next();
      const std::string need = "IVF" + std::to_string(out.nlist) +
                               " needs a list encoding: Flat, SQ8, SQ4, SQfp16 (F16) or PQ<M>[x<bits>][fs]";
      if (t == nullptr) fail_at_end(spec, base, need);
      if (is_refine(*t)) fail(*t, need + ", before the refinement");
      out.storage = parse_encoding(*t, "an IVF list encoding");
      ++i;
    } else if (out.structure == structure_kind::hnsw && next() != nullptr && !is_refine(*next())) {
      out.storage = parse_encoding(*next(), "an HNSW storage (Flat, SQ8, SQ4, F16 or PQ<M>) or Refine(...)");
      ++i;
    }
    if (next() != nullptr && is_refine(*next())) {
      const token& r = *next();
      out.refine_text = r.text;
      if (r.text != "RFlat") {  // validate the inside: a whole spec, or the encoding of a re-rank copy
        const auto [first, last] = trimmed(r.text, 7, r.text.size() - 1);  // inside the parentheses
        const std::string_view inside = r.text.substr(first, last - first);
        // One level: a refinement holds an index or an encoding, never another refinement (nor a spec
        // nested deep enough to exhaust the stack of a parser that recursed into it).
        if (inside.find("Refine(") != std::string_view::npos || inside.find("RFlat") != std::string_view::npos)
          fail(r, "a refinement cannot hold another refinement");
        // An encoding (a re-rank copy: SQ8 builds for IVF-PQ, the others are reported as not built yet),
        // or else a whole spec.
        if (inside == "SQ8" || inside == "SQ4" || inside == "F16" || inside == "SQfp16" || inside.starts_with("PQ"))
          (void)parse_encoding(token{inside, r.pos + first}, "a re-rank encoding");
        else
          (void)parse(inside, r.pos + first);
        out.refine_text = "Refine(" + std::string(inside) + ")";
      }
      out.refine = r;
      ++i;
    }
    if (const token* extra = next())
      fail(*extra, out.refine ? "nothing may follow the refinement"
                              : "unexpected component (expected a refinement, Refine(...) or RFlat, or the end)");
    return out;
  }

  [[noreturn]] void fail(const token& t, const std::string& why) const {
    detail::throw_error(errc::invalid_argument, detail::str("make_index: invalid spec \"", full_, "\" at position ",
                                                            t.pos, " (\"", t.text, "\"): ", why));
  }

  [[noreturn]] void not_built(const token& t, const char* what) const {
    detail::throw_error(errc::unsupported, detail::str("make_index: \"", full_, "\": ", what, " (\"", t.text,
                                                       "\" at position ", t.pos, ") is recognised but not built yet"));
  }

 private:
  [[noreturn]] void fail_at_end(std::string_view spec, std::size_t base, const std::string& why) const {
    fail(token{"", base + spec.size()}, why);
  }

  /// Where `text[from, to)` begins and ends without the spaces around it.
  static std::pair<std::size_t, std::size_t> trimmed(std::string_view text, std::size_t from, std::size_t to) {
    while (from < to && std::isspace(static_cast<unsigned char>(text[from])) != 0) ++from;
    while (to > from && std::isspace(static_cast<unsigned char>(text[to - 1])) != 0) --to;
    return {from, to};
  }

  /// Splits at top-level commas (not inside parentheses), trimming spaces around each component.
  std::vector<token> split(std::string_view spec, std::size_t base) const {
    std::vector<token> tokens;
    int depth = 0;
    std::size_t open_at = 0;
    std::size_t start = 0;
    const auto push = [&](std::size_t end) {
      const auto [b, e] = trimmed(spec, start, end);
      const token t{spec.substr(b, e - b), base + b};
      if (t.text.empty()) fail(t, "empty component");
      tokens.push_back(t);
    };
    for (std::size_t i = 0; i < spec.size(); ++i) {
      if (spec[i] == '(') {
        if (depth++ == 0) open_at = i;
      } else if (spec[i] == ')') {
        if (depth-- == 0) fail(token{spec.substr(i, 1), base + i}, "unbalanced ')'");
      } else if (spec[i] == ',' && depth == 0) {
        push(i);
        start = i + 1;
      }
    }
    if (depth > 0) fail(token{spec.substr(open_at, 1), base + open_at}, "unbalanced '('");
    push(spec.size());
    return tokens;
  }

  /// Reads the decimal number at `text[at...]` into `value`; returns the index after it (== at if none).
  std::size_t number(const token& t, std::size_t at, std::size_t& value) const {
    std::size_t end = at;
    value = 0;
    while (end < t.text.size() && std::isdigit(static_cast<unsigned char>(t.text[end])) != 0) {
      const auto digit = static_cast<std::size_t>(t.text[end] - '0');
      if (value > (std::numeric_limits<std::uint32_t>::max() - digit) / 10) fail(t, "number too large");
      value = value * 10 + digit;
      ++end;
    }
    return end;
  }

  /// `prefix` followed by a number (and nothing else unless `rest` receives the remainder).
  bool prefixed_number(const token& t, std::string_view prefix, std::size_t& value, std::string_view* rest,
                       const char* what) const {
    if (!t.text.starts_with(prefix)) return false;
    const std::size_t end = number(t, prefix.size(), value);
    if (end == prefix.size()) fail(t, std::string(prefix) + " needs " + what + ", e.g. " + std::string(prefix) + "32");
    if (rest != nullptr)
      *rest = t.text.substr(end);
    else if (end != t.text.size())
      fail(t, "unexpected \"" + std::string(t.text.substr(end)) + "\" after " + std::string(prefix) +
                  std::to_string(value));
    return true;
  }

  [[nodiscard]] static bool is_transform(const token& t) noexcept {
    return t.text.starts_with("OPQ") || t.text.starts_with("PCA");
  }
  [[nodiscard]] static bool is_refine(const token& t) noexcept {
    return t.text == "RFlat" || (t.text.starts_with("Refine(") && t.text.ends_with(")"));
  }

  /// OPQ<M>[_<D>] or PCA<D>. Returns M for OPQ<M> without an output dimension, else 0.
  [[nodiscard]] std::size_t check_transform(const token& t) const {
    std::size_t value = 0;
    std::string_view rest;
    if (prefixed_number(t, "PCA", value, nullptr, "the output dimension")) {
      if (value < 1) fail(t, "PCA needs an output dimension of at least 1");
      return 0;
    }
    (void)prefixed_number(t, "OPQ", value, &rest, "the number of sub-quantizers");
    if (value < 1) fail(t, "OPQ needs at least 1 sub-quantizer");
    if (rest.empty()) return value;
    const token out_dim{rest, t.pos + (t.text.size() - rest.size())};
    std::size_t dim = 0;
    if (!prefixed_number(out_dim, "_", dim, nullptr, "the output dimension")) fail(t, "expected OPQ<M> or OPQ<M>_<D>");
    if (dim < 1) fail(t, "OPQ needs an output dimension of at least 1");
    return 0;
  }

  void parse_structure(const token& t, parsed_spec& out) const {
    out.structure_token = t;
    std::size_t value = 0;
    std::string_view rest;
    if (is_transform(t)) fail(t, "only one transform may come first");
    if (t.text == "Flat") {
      out.structure = structure_kind::flat;
    } else if (prefixed_number(t, "HNSW", value, nullptr, "the number of links M")) {
      if (value < 2 || value > 256) fail(t, "HNSW M must be in [2, 256]");
      out.structure = structure_kind::hnsw;
      out.hnsw_m = value;
    } else if (prefixed_number(t, "IVF", value, &rest, "the number of lists")) {
      if (value < 1) fail(t, "IVF needs at least 1 list");
      out.structure = structure_kind::ivf;
      out.nlist = value;
      if (!rest.empty()) {
        const token coarse{rest, t.pos + (t.text.size() - rest.size())};
        std::size_t m = 0;
        if (!prefixed_number(coarse, "_HNSW", m, nullptr, "the number of links M"))
          fail(coarse, "expected _HNSW<M> (an HNSW coarse quantizer) or a comma after IVF" + std::to_string(value));
        if (m < 2 || m > 256) fail(coarse, "HNSW M must be in [2, 256]");
        out.coarse_hnsw_m = m;
      }
    } else {
      fail(t, "expected Flat, HNSW<M> or IVF<nlist> (optionally after OPQ<M> or PCA<D>)");
    }
  }

  encoding parse_encoding(const token& t, const char* expected) const {
    encoding e;
    e.where = t;
    std::string_view rest;
    if (t.text == "Flat") {
      e.kind = encoding_kind::flat;
    } else if (t.text == "SQ8") {
      e.kind = encoding_kind::sq8;
    } else if (t.text == "SQ4") {
      e.kind = encoding_kind::sq4;
    } else if (t.text == "SQfp16" || t.text == "F16") {
      e.kind = encoding_kind::sqfp16;
    } else if (prefixed_number(t, "PQ", e.pq_m, &rest, "the number of sub-quantizers")) {
      e.kind = encoding_kind::pq;
      if (e.pq_m < 1) fail(t, "PQ needs at least 1 sub-quantizer");
      if (rest.starts_with("x")) {
        const token bits{rest, t.pos + (t.text.size() - rest.size())};
        const std::size_t end = number(bits, 1, e.pq_bits);
        if (end == 1 || (e.pq_bits != 4 && e.pq_bits != 8)) fail(t, "PQ code bits (x<bits>) must be 4 or 8");
        rest = rest.substr(end);
      }
      if (rest == "fs") {
        if (e.pq_bits != 4) fail(t, "fast-scan (fs) needs 4-bit codes: PQ<M>x4fs");
        e.fast_scan = true;
      } else if (!rest.empty()) {
        fail(t, "unexpected \"" + std::string(rest) + "\" in a PQ encoding (expected PQ<M>[x<bits>][fs])");
      }
    } else {
      fail(t, std::string("expected ") + expected);
    }
    return e;
  }

  std::string_view full_;
};

/// `[OPQ<m>,]IVF<nlist>[_HNSW<M>],PQ<m>[x4fs][,Refine(Flat)|,RFlat|,Refine(SQ8)]`: the OPQ rotation and the exact
/// re-rank are options of ivf_pq_index itself (same m for OPQ and PQ; re-rank from the index's own full vectors).
any_index build_ivf_pq(const parser& p, const parsed_spec& s, std::size_t dim, metric m) {
  const encoding& e = *s.storage;
  if (e.pq_bits != 8 && !(e.pq_bits == 4 && e.fast_scan)) p.not_built(e.where, "PQ other than 8 bits or x4fs");
  if (!e.fast_scan && e.pq_bits == 4) p.not_built(e.where, "4-bit PQ without fast-scan");
  ivf_pq_params params{.nlist = s.nlist,
                       .m = e.pq_m,
                       .nbits = e.pq_bits,
                       .refine = false,
                       .opq = false,
                       .coarse_hnsw_m = s.coarse_hnsw_m};
  if (s.transform) {
    if (s.opq_m != e.pq_m) p.not_built(*s.transform, "a transform other than OPQ with the PQ's own m");
    params.opq = true;
  }
  if (s.refine) {
    if (s.refine_text == "Refine(SQ8)")
      params.refine_sq8 = true;
    else if (s.refine_text != "RFlat" && s.refine_text != "Refine(Flat)")
      p.not_built(*s.refine, "a refinement other than Refine(Flat) or Refine(SQ8)");
    else
      params.refine = true;
  }
  return any_index(ivf_pq_index(dim, m, params));
}

any_index build(const parser& p, const parsed_spec& s, std::size_t dim, metric m) {
  if (s.structure == structure_kind::ivf && s.storage->kind == encoding_kind::pq) return build_ivf_pq(p, s, dim, m);
  if (s.transform) p.not_built(*s.transform, "an OPQ/PCA transform");
  if (s.refine) {  // two stages: this structure proposes, a flat index over the same ids re-ranks
    if (s.refine_text != "RFlat" && s.refine_text != "Refine(Flat)")
      p.not_built(*s.refine, "a refinement other than Refine(Flat)");
    parsed_spec coarse = s;
    coarse.refine.reset();
    return any_index(refine_index(build(p, coarse, dim, m), flat_index(dim, m)));
  }
  switch (s.structure) {
    case structure_kind::flat:
      return any_index(flat_index(dim, m));
    case structure_kind::hnsw: {
      hnsw_params params;
      params.M = s.hnsw_m;
      if (s.storage && s.storage->kind == encoding_kind::sq8)
        params.codes = hnsw_codes::sq8;
      else if (s.storage && s.storage->kind == encoding_kind::sq4)
        params.codes = hnsw_codes::sq4;
      else if (s.storage && s.storage->kind == encoding_kind::sqfp16)
        params.codes = hnsw_codes::fp16;
      else if (s.storage && s.storage->kind != encoding_kind::flat)
        p.not_built(s.storage->where, "HNSW over PQ codes");
      return any_index(hnsw_index(dim, m, params));
    }
    case structure_kind::ivf:
      if (s.storage->kind != encoding_kind::flat) p.not_built(s.storage->where, "IVF over scalar-quantized codes");
      return any_index(ivf_flat_index(dim, m, s.nlist, s.coarse_hnsw_m));
  }
  p.fail(s.structure_token, "unknown structure");
}

}  // namespace

any_index make_index(std::string_view spec, std::size_t dim, metric m) {
  detail::check_dimension(dim, "make_index");
  detail::check_metric(m, "make_index");
  const parser p(spec);
  const parsed_spec parsed = p.parse(spec, 0);
  // A bad SHOAL_SIMD is the environment's error, not the spec's: raised before the rewrapping below.
  (void)active_simd_level();
  try {
    return build(p, parsed, dim, m);
  } catch (const error& e) {
    if (e.code() != errc::invalid_argument) throw;
    // A well-formed spec whose index refuses its parameters (PQ m not dividing the dimension, nlist out of
    // range): the spec in the message, as for a malformed one.
    detail::throw_error(errc::invalid_argument,
                        detail::str("make_index: invalid spec \"", spec, "\" at dimension ", dim, ": ", e.message()));
  }
}

any_index load_index(const std::string& path, const load_options& options) {
  const index_file_info info = read_index_file_info(path, options.verify);
  switch (info.kind) {
    case index_kind::flat:
      return any_index(flat_index::load(path, options));
    case index_kind::ivf_flat:
      return any_index(ivf_flat_index::load(path, options));
    case index_kind::hnsw:
      return any_index(hnsw_index::load(path, options));
    case index_kind::ivf_pq:
      return any_index(ivf_pq_index::load(path, options));
    case index_kind::refine:
      return any_index(refine_index::load(path, options));
    case index_kind::collection:
      detail::throw_error(errc::invalid_argument,
                          detail::str("load_index: ", path,
                                      " is the manifest of a collection, not an index: open its directory with "
                                      "collection::open"));
  }
  detail::throw_error(errc::unsupported, detail::str("load_index: ", path, ": loading an index of kind ",
                                                     index_kind_name(info.kind), " is not built yet"));
}

}  // namespace shoal
