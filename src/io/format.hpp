#pragma once
// Internal: writing and reading shoal index files (the layout is docs/format.md).
//  - index_file_writer: sections are described as pieces (pointers into the index's own arrays, zero
//    padding, small owned values), laid out and checksummed in memory, then streamed once into an
//    atomic_writer (temporary file, fsync, rename);
//  - index_file_reader: checks the header and section table (always: structure; by level: checksums),
//    then hands out sections by tag, either read into the caller's arrays or as spans of a read-only
//    mapping of the whole file.

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <filesystem>
#include <initializer_list>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "io/file_util.hpp"
#include "shoal/core/error.hpp"
#include "shoal/core/types.hpp"
#include "shoal/io/format.hpp"

namespace shoal::io::detail {

/// Offset 0 of every index file. 0x89 (not ASCII) and CR LF catch text-mode transfers, as PNG's does.
inline constexpr std::array<unsigned char, 8> file_magic = {0x89, 'S', 'H', 'O', 'A', 'L', '\r', '\n'};
/// Stored as a little-endian u32: a big-endian writer would produce 01 02 03 04.
inline constexpr std::uint32_t endian_tag = 0x01020304u;
inline constexpr std::size_t header_bytes = 128;
inline constexpr std::size_t section_entry_bytes = 32;
/// Every section starts at a multiple of this...
inline constexpr std::uint64_t section_alignment = 64;
/// ... and sections of at least `page_align_threshold` bytes at a multiple of a page.
inline constexpr std::uint64_t page_alignment = 4096;
inline constexpr std::uint64_t page_align_threshold = std::uint64_t{64} << 10;
/// Where a section of `bytes` bytes may start: writers place it there, readers refuse it anywhere else.
[[nodiscard]] constexpr std::uint64_t alignment_of_section(std::uint64_t bytes) noexcept {
  return bytes >= page_align_threshold ? page_alignment : section_alignment;
}
/// More sections than any index needs; bounds the table a damaged header can ask to read.
inline constexpr std::uint32_t max_sections = 4096;
/// Section flag: a reader that does not know the tag must refuse the file.
inline constexpr std::uint32_t section_required = 1u;

/// A section tag from its four characters ('VECS' → bytes V E C S in the file).
constexpr std::uint32_t make_tag(const char (&name)[5]) noexcept {
  return static_cast<std::uint32_t>(static_cast<unsigned char>(name[0])) |
         static_cast<std::uint32_t>(static_cast<unsigned char>(name[1])) << 8 |
         static_cast<std::uint32_t>(static_cast<unsigned char>(name[2])) << 16 |
         static_cast<std::uint32_t>(static_cast<unsigned char>(name[3])) << 24;
}
/// The tag's characters, or its hex value when they are not printable.
[[nodiscard]] std::string tag_name(std::uint32_t tag);

[[nodiscard]] constexpr std::uint64_t align_up(std::uint64_t value, std::uint64_t alignment) noexcept {
  return (value + alignment - 1) / alignment * alignment;
}

/// `a * b`, or `errc::corrupt_file` naming `file` and `what` when it overflows 64 bits.
[[nodiscard]] std::uint64_t checked_mul(std::uint64_t a, std::uint64_t b, const std::string& file, const char* what);

/// What the fixed header says about the index.
struct index_header {
  index_kind kind = index_kind::flat;
  shoal::metric metric = shoal::metric::l2;
  std::uint64_t dim = 0;
  std::uint64_t count = 0;
};

/// A whole file mapped read-only; the spans an index hands out point into it.
class file_mapping {
 public:
  /// Maps `bytes` bytes of the open file `fd`. Throws `errc::io_error`.
  file_mapping(int fd, std::size_t bytes, const std::string& name);
  file_mapping(const file_mapping&) = delete;
  file_mapping& operator=(const file_mapping&) = delete;
  ~file_mapping();
  [[nodiscard]] const std::byte* data() const noexcept { return data_; }
  [[nodiscard]] std::size_t size() const noexcept { return bytes_; }
  /// Drops the mapping's pages from this process's resident set (`MADV_DONTNEED`: the page cache keeps
  /// them; the next read faults them in again). The mapping is read-only, so nothing is lost.
  void release_resident() const noexcept;

 private:
  const std::byte* data_ = nullptr;
  std::size_t bytes_ = 0;
};

/// Throws `errc::unsupported` ("`what`: the index was loaded with mmap and is read-only ...") when
/// `mapping` is set: an index searched in place from a read-only mapping cannot change.
void check_writable(const file_mapping* mapping, const char* what);

/// Builds an index file. Sections are appended in order; their bytes are only referenced (`append`)
/// and must stay valid and unchanged until `commit` returns.
class index_file_writer {
 public:
  index_file_writer(std::filesystem::path path, const index_header& header);

  /// Starts a new section (the previous one ends).
  void begin_section(std::uint32_t tag, std::uint32_t flags = section_required);
  /// Appends `bytes` bytes at `data` (referenced, not copied) to the current section.
  void append(const void* data, std::size_t bytes);
  template <class T>
  void append(std::span<const T> values) {
    static_assert(std::is_trivially_copyable_v<T>);
    append(values.data(), values.size_bytes());
  }
  /// Appends zero bytes (padding inside a section).
  void append_zeros(std::size_t bytes);
  /// Appends a copy of one little-endian value.
  template <class T>
  void append_value(const T& value) {
    static_assert(std::is_trivially_copyable_v<T>);
    auto& copy = owned_.emplace_back(sizeof(T));
    std::memcpy(copy.data(), &value, sizeof(T));
    append(copy.data(), copy.size());
  }

  /// Sets the header's vector count (an index's sections are written under its writer lock, and the
  /// count is read under it too, so that header and sections agree).
  void set_count(std::uint64_t count) noexcept { header_.count = count; }

  /// Appends a copy of `values` (for data that will not outlive the call, such as a temporary array).
  template <class T>
  void append_copy(std::span<const T> values) {
    static_assert(std::is_trivially_copyable_v<T>);
    auto& copy = owned_.emplace_back(values.size_bytes());
    if (!values.empty()) std::memcpy(copy.data(), values.data(), values.size_bytes());
    append(copy.data(), copy.size());
  }

  /// Lays the sections out, checksums them, and writes the file atomically (temporary in the same
  /// directory, fsync, rename, fsync of the directory). Throws `errc::io_error`; on a failure before the
  /// rename the old file, if any, is untouched (`replaced()` false).
  void commit();
  /// Whether `commit` renamed the new file over the target: true once it returned, and when it failed
  /// only in persisting the rename.
  [[nodiscard]] bool replaced() const noexcept { return replaced_; }

 private:
  struct piece {
    const std::byte* data;  // nullptr: zeros
    std::size_t bytes;
  };
  struct section {
    std::uint32_t tag;
    std::uint32_t flags;
    std::vector<piece> pieces;
    std::uint64_t size = 0;
  };

  std::filesystem::path path_;
  index_header header_;
  std::vector<section> sections_;
  std::deque<std::vector<std::byte>> owned_;
  bool replaced_ = false;
};

/// One entry of the section table.
struct section_entry {
  std::uint32_t tag = 0;
  std::uint32_t flags = 0;
  std::uint64_t offset = 0;
  std::uint64_t size = 0;
  std::uint32_t crc = 0;
};

/// Throws `shoal::error` (`errc::invalid_argument`) unless `verify` is one of the `verify_level` values.
void check_verify_level(verify_level verify);

/// Opens, checks and (optionally) maps an index file; the constructor throws `shoal::error` that says
/// what is wrong (see `load_options` and `verify_level`).
class index_file_reader {
 public:
  index_file_reader(const std::filesystem::path& path, const load_options& options);
  /// With a mapping whose values were checked (`checks_values`), gives back the pages the checks read
  /// (`file_mapping::release_resident`): a mapped load stays unresident until searches touch it.
  ~index_file_reader();
  index_file_reader(const index_file_reader&) = delete;
  index_file_reader& operator=(const index_file_reader&) = delete;

  [[nodiscard]] const index_header& header() const noexcept { return header_; }
  [[nodiscard]] const std::string& name() const noexcept { return file_.name(); }
  [[nodiscard]] index_file_info info() const noexcept;
  [[nodiscard]] bool mapped() const noexcept { return mapping_ != nullptr; }
  /// The mapping (null unless loaded with `mmap`).
  [[nodiscard]] const std::shared_ptr<const file_mapping>& mapping() const noexcept { return mapping_; }
  /// Whether the load checks stored values as `add` checks its input (`check_loaded_vectors`): a copied
  /// load always; a mapped one at `verify_level::full`, whose checksums read every byte already (the
  /// values are then read again, through the mapping); below that a mapping is trusted, so that loading
  /// reads no vector pages. One file gets one verdict, accepted or refused, mapped or not.
  [[nodiscard]] bool checks_values() const noexcept { return checks_values_; }

  /// Throws `errc::invalid_argument` ("holds an index of kind <kind>, not <expected>") unless the file
  /// holds `expected`; `who` prefixes the message.
  void expect_kind(index_kind expected, const char* who) const;
  /// Throws `errc::unsupported` if the file has a required section whose tag is neither in `known` nor in
  /// `more`.
  void check_known(std::initializer_list<std::uint32_t> known, std::span<const std::uint32_t> more = {}) const;

  [[nodiscard]] bool has(std::uint32_t tag) const noexcept { return find(tag) != nullptr; }
  /// Size in bytes of section `tag`; throws `errc::corrupt_file` if it is missing.
  [[nodiscard]] std::uint64_t section_size(std::uint32_t tag) const;

  /// Section `tag` as `count` values of T, copied into `dst`. Throws `errc::corrupt_file` if the section
  /// is missing or not exactly `count * sizeof(T)` bytes.
  template <class T>
  void read(std::uint32_t tag, T* dst, std::size_t count) const {
    static_assert(std::is_trivially_copyable_v<T>);
    const section_entry& e = expect_size(tag, count, sizeof(T));
    if (count > 0) read_bytes(e, dst);
  }
  /// The same into a new aligned vector.
  template <class T>
  [[nodiscard]] aligned_vector<T> read_vector(std::uint32_t tag, std::size_t count) const {
    (void)expect_size(tag, count, sizeof(T));  // before allocating anything
    aligned_vector<T> out(count);
    read(tag, out.data(), count);
    return out;
  }
  /// Section `tag` as a span of the mapping (`mapped()` must hold); same checks as `read`.
  template <class T>
  [[nodiscard]] std::span<const T> map(std::uint32_t tag, std::size_t count) const {
    static_assert(std::is_trivially_copyable_v<T>);
    const section_entry& e = expect_size(tag, count, sizeof(T));
    static_assert(alignof(T) <= section_alignment);
    return {reinterpret_cast<const T*>(mapping_->data() + e.offset), count};
  }
  /// With a mapping: tells the kernel that section `tag` is read at random (graph vectors and links,
  /// the rows a re-rank fetches), so that a page fault reads that page instead of the device's whole
  /// read-ahead window (often megabytes) — resident memory then follows what searches touch. A no-op
  /// without a mapping, for a missing section or where the kernel declines.
  void advise_random(std::uint32_t tag) const noexcept;
  /// Copies `bytes` bytes of section `tag` from `first` (bytes into the section) to `dst`; throws
  /// `errc::corrupt_file` if the range is not inside the section.
  void read_range(std::uint32_t tag, std::uint64_t first, void* dst, std::size_t bytes) const;
  /// The raw bytes of a small section (at most 64 KiB), copied.
  [[nodiscard]] std::vector<std::byte> small_section(std::uint32_t tag) const;

 private:
  [[nodiscard]] const section_entry* find(std::uint32_t tag) const noexcept;
  const section_entry& expect_size(std::uint32_t tag, std::uint64_t count, std::size_t element_bytes) const;
  void read_bytes(const section_entry& e, void* dst) const;
  void verify_sections() const;

  input_file file_;
  index_header header_;
  std::uint16_t version_major_ = 0;
  std::uint16_t version_minor_ = 0;
  std::uint64_t file_bytes_ = 0;
  std::uint64_t table_end_ = 0;
  std::vector<section_entry> sections_;
  std::shared_ptr<const file_mapping> mapping_;
  bool checks_values_ = true;
};

}  // namespace shoal::io::detail
