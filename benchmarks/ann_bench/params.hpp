#pragma once
/// \file
/// Named index parameters of shoal-ann-bench: build knobs (`--build-param NAME=V`) and the search knobs
/// of each sweep point (`--sweep NAME=v1,v2,...`). Values stay strings until an adapter parses them, so
/// every index (shoal's or a peer's) decides for itself which names and values it accepts.

#include <cstddef>
#include <cstdint>
#include <exception>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "shoal/index/hnsw.hpp"

namespace shoal::bench {

/// A configuration that cannot be served: an unknown index spec, parameter name or value. For shoal it
/// ends the run with exit code 2; a peer that throws it is skipped with a note on stderr.
class config_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// `e.what()` without the "shoal: " that begins every `shoal::error` message, for messages that say where
/// they come from themselves.
[[nodiscard]] std::string_view error_text(const std::exception& e) noexcept;

/// One `NAME=VALUE` setting.
struct param {
  std::string name;
  std::string value;
};
/// Settings in command-line order.
using param_list = std::vector<param>;

/// One axis of the sweep: `--sweep NAME=v1,v2,...`.
struct sweep_axis {
  std::string name;
  std::vector<std::string> values;
};

/// Parses `NAME=VALUE` (both non-empty); throws `config_error` naming `option`.
[[nodiscard]] param parse_param(std::string_view text, std::string_view option);
/// Parses `NAME=v1,v2,...` (no empty value); throws `config_error`.
[[nodiscard]] sweep_axis parse_sweep(std::string_view text);

/// The sweep points: the Cartesian product of the axes, first axis outermost. Without axes, one point
/// with no parameters.
[[nodiscard]] std::vector<param_list> sweep_points(std::span<const sweep_axis> axes);

/// The search_params column: `ef=64`, `nprobe=8;refine=4`, or `-` when empty.
[[nodiscard]] std::string format_params(const param_list& params);

/// Appends `item` to the `separator`-separated `list`.
void append_item(std::string& list, std::string_view item, std::string_view separator);

/// The parts of an `IVF<nlist>[_HNSW<M>],Flat` spec.
struct ivf_flat_spec {
  std::size_t nlist = 0;
  std::size_t coarse_hnsw_m = 0;  ///< `_HNSW<M>`: an HNSW graph over the centroids picks the lists (0: none)
};
/// The parts of an `IVF<nlist>[_HNSW<M>],Flat` spec (e.g. `IVF1024,Flat`, `IVF4096_HNSW32,Flat`), or
/// nothing for any other spec.
[[nodiscard]] std::optional<ivf_flat_spec> ivf_flat(std::string_view spec);

/// The parts of an `IVF<nlist>,PQ<m>[x4fs][,Refine(Flat)]` spec.
struct ivf_pq_spec {
  std::size_t nlist = 0;
  std::size_t m = 0;
  bool fast_scan = false;         ///< `x4fs`: 4-bit codes scanned by the fast-scan kernel (else 8-bit codes)
  bool refine = false;            ///< `,Refine(Flat)`: full vectors kept for an exact re-rank
  bool refine_sq8 = false;        ///< `,Refine(SQ8)`: an SQ8 copy kept for the re-rank
  std::size_t opq = 0;            ///< `OPQ<m>,` in front: an OPQ rotation for m sub-spaces (0: none)
  std::size_t coarse_hnsw_m = 0;  ///< `IVF<nlist>_HNSW<M>`: an HNSW coarse quantizer (0: none)
};
/// The parts of an `[OPQ<m>,]IVF<nlist>[_HNSW<M>],PQ<m>[x4fs][,Refine(Flat)]` spec (e.g.
/// `IVF980,PQ392x4fs,Refine(Flat)`), or nothing for any other spec.
[[nodiscard]] std::optional<ivf_pq_spec> ivf_pq(std::string_view spec);

/// M of an `HNSW<M>` spec (e.g. 32 for `HNSW32`), or nothing for any other spec.
[[nodiscard]] std::optional<std::size_t> hnsw_m(std::string_view spec);

/// An `HNSW<M>`, `HNSW<M>,SQ8` or `HNSW<M>,F16` spec: M and the codes traversal uses.
struct hnsw_spec {
  std::size_t m;
  hnsw_codes codes;
};
[[nodiscard]] std::optional<hnsw_spec> parse_hnsw_spec(std::string_view spec);

/// `p.value` as an integer in [1, 2^31); throws `config_error` naming the parameter and `index` otherwise.
[[nodiscard]] std::size_t parse_positive(const param& p, std::string_view index);
/// `p.value` as an integer in [0, 2^31); throws `config_error` naming the parameter and `index` otherwise.
[[nodiscard]] std::size_t parse_count(const param& p, std::string_view index);
/// `p.value` as the search knob `refine` (the re-rank depth, k · refine) of `index`: an integer in [0, 2^31),
/// 0 (no re-rank) only for an IVF-PQ spec (`ivf_pq`). A two-stage `<first>,Refine(Flat)` spec
/// (`refine_index`) would read 0 as its default depth and run under a `refine=0` label that says none, so
/// it needs a positive value; throws `config_error` saying so.
[[nodiscard]] std::size_t parse_refine(const param& p, std::string_view index);
/// `p.value` as a seed: any integer in [0, 2^64); throws `config_error` naming the parameter and `index` otherwise.
[[nodiscard]] std::uint64_t parse_seed(const param& p, std::string_view index);
/// `p.value` as a finite number; throws `config_error` naming the parameter and `index` otherwise.
[[nodiscard]] double parse_number(const param& p, std::string_view index);

/// Throws `config_error` ("unknown <kind> parameter 'x' for index <index> (known: a, b)") unless every
/// name in `params` is in `known`. `kind` is "build" or "search".
void check_param_names(const param_list& params, std::span<const std::string_view> known, std::string_view kind,
                       std::string_view index);

/// The value of the one knob `name` that `params` may set (a positive integer), or `fallback` when it
/// is absent; throws `config_error` for any other name or a bad value. `kind` is "build" or "search".
[[nodiscard]] std::size_t single_knob(const param_list& params, std::string_view name, std::size_t fallback,
                                      std::string_view kind, std::string_view index);

}  // namespace shoal::bench
