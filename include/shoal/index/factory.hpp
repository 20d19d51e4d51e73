#pragma once
/// \file
/// Indexes by name: `make_index` builds an empty index from a factory string (FAISS's notation), and
/// `load_index` reads any index file into an `any_index`.
///
/// Grammar (components separated by commas, case-sensitive, spaces around components ignored):
/// ```
/// spec      := [transform ","] structure ["," refine]
/// transform := "OPQ" M ["_" D] | "PCA" D
/// structure := "Flat"
///            | "HNSW" M ["," storage]                  storage  := "Flat" | "SQ8" | "SQ4" | "F16" | pq
///            | "IVF" nlist ["_HNSW" M] "," encoding    encoding := "Flat" | "SQ8" | "SQ4" | "F16" | pq
/// pq        := "PQ" M ["x" bits] ["fs"]                (bits 4 or 8; "fs", fast-scan, needs x4)
/// refine    := "Refine(" (spec | encoding) ")" | "RFlat"   (RFlat = Refine(Flat); SQfp16 = F16)
/// ```
/// Built today: `Flat`, `HNSW<M>` (and `HNSW<M>,Flat`), `HNSW<M>,SQ8` / `HNSW<M>,SQ4` / `HNSW<M>,F16`
/// (8-bit, 4-bit or half-precision traversal codes, exact re-rank), `IVF<nlist>[_HNSW<M>],Flat`, and
/// IVF-PQ: `[OPQ<M>,]IVF<nlist>[_HNSW<M>],PQ<M>[x4fs][,Refine(Flat)|,RFlat|,Refine(SQ8)]` (the OPQ
/// rotation with the PQ's own M; 8-bit or 4-bit fast-scan codes; re-rank from full vectors kept in the
/// index, or from an SQ8 copy of them; `_HNSW<M>`: an HNSW graph over the centroids picks the lists). All of them save
/// and load (`any_index::save`, `load_index`). `,Refine(Flat)` / `,RFlat` after any other structure builds a
/// `refine_index` (that structure proposes, a flat index re-ranks; one file holds both stages). The two kinds of
/// refinement differ at `search_params::refine_factor` 0: a `refine_index` then re-ranks at its default depth,
/// IVF-PQ's own re-rank not at all (approximate distances; set refine_factor to use it). Recognised and reported
/// as `errc::unsupported` ("not built yet"): other transforms (PCA, OPQ with another M or an output dimension), SQ
/// encodings in IVF, PQ storage in HNSW, 4-bit PQ without fast-scan, refinement by anything but
/// Refine(Flat) (and, for IVF-PQ, Refine(SQ8)).

#include <cstddef>
#include <string>
#include <string_view>

#include "shoal/core/types.hpp"
#include "shoal/index/any_index.hpp"
#include "shoal/io/format.hpp"

namespace shoal {

/// An empty index of `dim`-dimensional vectors under `m`, as `spec` describes (grammar above), with
/// default build parameters (HNSW: ef_construction 200). Throws `shoal::error`: `errc::invalid_argument`
/// for a malformed spec — the message quotes the spec, the offending token and its position ("at
/// position 8: "Flt": expected ...") — or dim = 0; `errc::unsupported` for a valid spec whose index is
/// not built yet.
[[nodiscard]] any_index make_index(std::string_view spec, std::size_t dim, metric m = metric::l2);

/// Loads an index file of any kind: flat, IVF-Flat, HNSW, IVF-PQ, refine (see `X::load` for the errors;
/// a collection's manifest is `errc::invalid_argument`, a kind this build does not know
/// `errc::unsupported`).
[[nodiscard]] any_index load_index(const std::string& path, const load_options& options = {});

}  // namespace shoal
