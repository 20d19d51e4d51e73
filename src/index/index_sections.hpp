#pragma once
// Internal: each index type's file sections (docs/format.md), written into and read from a file that may
// hold other sections too. A standalone index file holds one index's sections; a refine file (kind 6)
// holds its coarse stage's under their usual tags and its exact (flat) stage's under the tags RVEC, RNRM,
// RIDS. `save_index_file` / `load_index_file` are every index's `save` / `load`.
//
// `index_sections<Index>` (declared in shoal/io/format.hpp, a friend of each index) provides:
//   static constexpr index_kind kind;                       the kind of its standalone file
//   static std::span<const std::uint32_t> known();         every tag it may write
//   [[nodiscard]] static <lock> write(const Index&, index_file_writer&);
//       appends the sections; the bulk arrays are referenced, not copied, so the returned lock (the
//       index's writer lock, or a token where the index has none) must be held until the file is
//       committed, and `size()` read under it is the count that agrees with the sections;
//   static Index read(const index_file_reader&);
//       reads them back (dim, metric and count from the file's header), in place when mapped.

#include <array>
#include <cstdint>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <string>
#include <variant>

#include "index/hnsw_file.hpp"
#include "io/format.hpp"
#include "shoal/index/flat.hpp"
#include "shoal/index/hnsw.hpp"
#include "shoal/index/ivf_flat.hpp"
#include "shoal/index/ivf_pq.hpp"
#include "shoal/io/format.hpp"

namespace shoal::detail {

/// The tags of a flat index's three sections.
struct flat_section_tags {
  std::uint32_t vectors, norms, ids;
};

template <>
struct index_sections<flat_index> {
  static constexpr index_kind kind = index_kind::flat;
  /// A standalone flat index file.
  static constexpr flat_section_tags file_tags{io::detail::make_tag("VECS"), io::detail::make_tag("NORM"),
                                               io::detail::make_tag("IDS ")};
  [[nodiscard]] static std::span<const std::uint32_t> known();
  /// A flat index has no writer lock (its writes need exclusive access): the token is empty.
  [[nodiscard]] static std::monostate write(const flat_index& index, io::detail::index_file_writer& out,
                                            const flat_section_tags& tags = file_tags);
  [[nodiscard]] static flat_index read(const io::detail::index_file_reader& in,
                                       const flat_section_tags& tags = file_tags);
};

template <>
struct index_sections<hnsw_index> {
  static constexpr index_kind kind = index_kind::hnsw;
  [[nodiscard]] static std::span<const std::uint32_t> known();
  [[nodiscard]] static hnsw_write_lock write(const hnsw_index& index, io::detail::index_file_writer& out);
  [[nodiscard]] static hnsw_index read(const io::detail::index_file_reader& in);
};

template <>
struct index_sections<ivf_flat_index> {
  static constexpr index_kind kind = index_kind::ivf_flat;
  [[nodiscard]] static std::span<const std::uint32_t> known();
  [[nodiscard]] static std::shared_lock<std::shared_mutex> write(const ivf_flat_index& index,
                                                                 io::detail::index_file_writer& out);
  [[nodiscard]] static ivf_flat_index read(const io::detail::index_file_reader& in);
};

template <>
struct index_sections<ivf_pq_index> {
  static constexpr index_kind kind = index_kind::ivf_pq;
  [[nodiscard]] static std::span<const std::uint32_t> known();
  [[nodiscard]] static std::unique_lock<std::mutex> write(const ivf_pq_index& index,
                                                          io::detail::index_file_writer& out);
  [[nodiscard]] static ivf_pq_index read(const io::detail::index_file_reader& in);
};

/// Writes `index`'s standalone file atomically.
template <class Index>
void save_index_file(const Index& index, const std::string& path) {
  io::detail::index_file_writer out(path, {index_sections<Index>::kind, index.metric(), index.dim(), 0});
  [[maybe_unused]] const auto lock = index_sections<Index>::write(index, out);
  out.set_count(index.size());
  out.commit();
}

/// Reads a standalone file of `Index`'s kind; `who` prefixes the wrong-kind error.
template <class Index>
[[nodiscard]] Index load_index_file(const std::string& path, const load_options& options, const char* who) {
  const io::detail::index_file_reader in(path, options);
  in.expect_kind(index_sections<Index>::kind, who);
  in.check_known({}, index_sections<Index>::known());
  return index_sections<Index>::read(in);
}

}  // namespace shoal::detail
