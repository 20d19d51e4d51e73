#pragma once
/// \file
/// The shoal index file (layout in docs/format.md): which index a file holds, how to load it (copy or
/// memory-map, how much to verify), a look at a file's header without loading it, and the CRC-32C that
/// checksums every section.

#include <cstddef>
#include <cstdint>
#include <string>

#include "shoal/core/types.hpp"

namespace shoal {

/// Version of the file format, independent of the library's version. A reader loads every file of its
/// major version (minor versions only add optional sections or give meaning to reserved fields) and
/// refuses a newer major with `errc::unsupported`.
inline constexpr std::uint16_t format_version_major = 1;
inline constexpr std::uint16_t format_version_minor = 9;

/// Which index a file holds. The values are stored in files: never renumber, only append.
enum class index_kind : std::uint32_t {
  flat = 1,        ///< `flat_index`
  ivf_flat = 2,    ///< `ivf_flat_index`
  hnsw = 3,        ///< `hnsw_index`
  ivf_pq = 4,      ///< `ivf_pq_index`
  collection = 5,  ///< the manifest of a `collection` directory (not an index: `collection::open` reads it)
  refine = 6,      ///< `refine_index`: its coarse stage's sections and its exact (flat) stage's in one file
};

/// "flat", "ivf_flat", "hnsw", "ivf_pq", "collection", "refine" ("unknown" for any other value).
[[nodiscard]] const char* index_kind_name(index_kind kind) noexcept;

/// How much of a file is checked against its checksums when it is loaded. Structure is always
/// checked — magic, version, kind, file size, every section inside the file and of the size the header
/// implies, ids unique — so a damaged file never makes a load read out of bounds, whatever the level.
enum class verify_level {
  none,    ///< structure only: the fastest load; flipped bits inside arrays go unnoticed
  header,  ///< also the header and section table checksum
  full,    ///< also every section's checksum and the zero padding between sections: every byte
};

/// Options of `X::load(path, options)` and `load_index`.
struct load_options {
  /// Map the file read-only and search its big arrays (vectors, inverted lists) in place instead of
  /// copying them: loading costs almost nothing, pages are read on first touch and shared through the
  /// page cache. The loaded index keeps the mapping alive and is read-only: `add`, `remove` and `train`
  /// throw `errc::unsupported`. Full verification (the default) reads the file through the page cache
  /// for its checksums and checks the stored vectors' values through the mapping, then gives those
  /// pages back: resident memory stays small, and a file refused by a copied load is refused mapped
  /// too. That check reads the vector sections a second time (from the page cache when the file fits
  /// there, else from the device again). Below full verification a mapped load trusts the values and
  /// reads no vector pages (IVF-PQ's 8-bit codes under L2 and cosine are still read once, for their
  /// row terms: docs/pq.md; so are the codes of a cosine HNSW SQ8 / SQ4 file written before format 1.9,
  /// for theirs: docs/format.md `HSQH`).
  bool mmap = false;
  verify_level verify = verify_level::full;
};

/// What a file's header says.
struct index_file_info {
  index_kind kind;
  shoal::metric metric;
  std::uint64_t dim;
  std::uint64_t count;  ///< stored vectors
  std::uint16_t version_major;
  std::uint16_t version_minor;
  std::uint64_t file_bytes;
};

/// Reads and checks (magic, version, header checksum, file size) the header of an index file;
/// `verify_level::none` skips the header checksum (`full` checks no more than `header` here: the
/// sections are not read). Throws `shoal::error`: `errc::io_error` if it cannot be read,
/// `errc::corrupt_file` if it is not a shoal index file or is damaged, `errc::unsupported` for a newer
/// major version.
[[nodiscard]] index_file_info read_index_file_info(const std::string& path, verify_level verify = verify_level::header);

/// CRC-32C (Castagnoli) of `bytes` bytes at `data`, continuing from `crc` (the CRC of the preceding
/// bytes; 0 to start): crc32c("123456789") = 0xE3069283. SSE4.2's crc32 instruction where the CPU has
/// it (unless `SHOAL_SIMD=scalar`), a table-driven slicing-by-8 loop otherwise.
[[nodiscard]] std::uint32_t crc32c(const void* data, std::size_t bytes, std::uint32_t crc = 0) noexcept;

namespace detail {
/// Internal (src/index/index_sections.hpp): how an index type writes its sections into a file and reads
/// them back, so that one file can hold more than one index (a refine file holds both stages).
template <class Index>
struct index_sections;

/// The table-driven CRC-32C, whatever the CPU (exposed to test it against the hardware path).
[[nodiscard]] std::uint32_t crc32c_portable(const void* data, std::size_t bytes, std::uint32_t crc = 0) noexcept;

/// Test hook: when set, every index save calls it with the number of bytes of the temporary file
/// written so far (and flushed to the OS), after each section. A test sets one that stops the process
/// mid-save to check that an interrupted save leaves the old file intact. Not for production use.
using save_hook = void (*)(std::uint64_t bytes_written);
void set_save_hook(save_hook hook) noexcept;
}  // namespace detail

}  // namespace shoal
