#pragma once
// Internal: an HNSW graph's file sections (docs/format.md, kind 3), written and read under a chosen set
// of tags so that the same graph layout serves a standalone HNSW file (`HPAR`, `HVEC`, ...) and the
// coarse quantizer embedded in an IVF file (`QPAR`, `QVEC`, ...).

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>

#include "core/phase_fair_mutex.hpp"
#include "io/format.hpp"
#include "shoal/index/hnsw.hpp"

namespace shoal::detail {

/// The tags of a graph's sections. `legacy_codes` is the code section of format 1.0/1.1 (each row an f32
/// term, then the codes), read and converted but no longer written; `codes` and `terms` replace it.
/// `frame`: F16 codes' centre and exponent (format 1.6).
/// `half_terms` (format 1.9, optional): a cosine SQ8 / SQ4 graph's terms, whose `terms` section holds zeros.
struct hnsw_section_tags {
  std::uint32_t params, vectors, links0, legacy_codes, state, ids, upper, ranges, alpha, codes, terms, frame, walk,
      half_terms;
};

/// A standalone HNSW index file.
inline constexpr hnsw_section_tags hnsw_file_tags{
    io::detail::make_tag("HPAR"), io::detail::make_tag("HVEC"), io::detail::make_tag("HLK0"),
    io::detail::make_tag("HCOD"), io::detail::make_tag("HSTA"), io::detail::make_tag("HIDS"),
    io::detail::make_tag("HUPL"), io::detail::make_tag("HSQR"), io::detail::make_tag("HALP"),
    io::detail::make_tag("HCDR"), io::detail::make_tag("HSQT"), io::detail::make_tag("HF16"),
    io::detail::make_tag("HWLK"), io::detail::make_tag("HSQH")};

/// The HNSW coarse quantizer of an IVF file (never coded: its codes, ranges and frame tags are never written).
inline constexpr hnsw_section_tags coarse_graph_tags{
    io::detail::make_tag("QPAR"), io::detail::make_tag("QVEC"), io::detail::make_tag("QLK0"),
    io::detail::make_tag("QCOD"), io::detail::make_tag("QSTA"), io::detail::make_tag("QIDS"),
    io::detail::make_tag("QUPL"), io::detail::make_tag("QSQR"), io::detail::make_tag("QALP"),
    io::detail::make_tag("QCDR"), io::detail::make_tag("QSQT"), io::detail::make_tag("QF16"),
    io::detail::make_tag("QWLK"), io::detail::make_tag("QSQH")};

/// A graph's two writer locks (hnsw.cpp's `adding` and `structure`), held exclusively in that order.
struct hnsw_write_lock {
  std::unique_lock<phase_fair_mutex> adding;
  std::unique_lock<phase_fair_mutex> structure;
};

struct hnsw_sections {
  /// Appends the graph's sections to `out`. The bulk arrays are referenced, not copied: the returned
  /// locks (the graph's writer locks, exclusive) keep every writer out and must be held until
  /// `out.commit()` returns.
  [[nodiscard]] static hnsw_write_lock write(const hnsw_index& index, io::detail::index_file_writer& out,
                                             const hnsw_section_tags& tags);
  /// Reads a graph written by `write` from `in`: `dim`, `m` and `count` (live nodes) as the caller's
  /// header says; `what` names the graph in errors ("hnsw", "coarse hnsw"). With a mapped reader the
  /// bulk arrays are used in place and the graph is read-only. Throws `errc::corrupt_file` as
  /// `hnsw_index::load` does.
  [[nodiscard]] static hnsw_index read(const io::detail::index_file_reader& in, const hnsw_section_tags& tags,
                                       std::size_t dim, metric m, std::uint64_t count, const char* what);
};

}  // namespace shoal::detail
