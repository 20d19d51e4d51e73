#pragma once
// Internal: the file sections the IVF kinds share (docs/format.md, kinds 2 and 4) — list sizes, list ids
// (the coarse quantizer writes its own: index/coarse_quantizer.hpp) — and sections of per-list runs
// (LVEC, LCOD, LIDS): list after list, each run 64-byte aligned and zero-padded in the padded sections,
// so that a memory-mapped list is searched in place.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <vector>

#include "index/coarse_quantizer.hpp"
#include "index/inverted_lists.hpp"
#include "io/format.hpp"
#include "shoal/core/error.hpp"
#include "shoal/core/types.hpp"

namespace shoal::io::detail {

inline constexpr std::uint32_t tag_list_sizes = make_tag("LSIZ");
inline constexpr std::uint32_t tag_list_rows = make_tag("LVEC");
inline constexpr std::uint32_t tag_list_ids = make_tag("LIDS");

/// The tags an IVF kind may write: its own (`own`) and its coarse quantizer's.
[[nodiscard]] inline std::vector<std::uint32_t> ivf_tags(std::initializer_list<std::uint32_t> own) {
  std::vector<std::uint32_t> tags(own);
  const std::span<const std::uint32_t> coarse = shoal::detail::coarse_quantizer::tags();
  tags.insert(tags.end(), coarse.begin(), coarse.end());
  return tags;
}

/// Appends one list's run of `bytes` bytes to a padded section, zero-filled up to the next 64 bytes.
inline void append_padded_run(index_file_writer& out, const void* data, std::size_t bytes) {
  out.append(data, bytes);
  out.append_zeros(static_cast<std::size_t>(align_up(bytes, section_alignment)) - bytes);
}

/// Writes LSIZ (each list's entry count).
template <class List>
void write_list_sizes(index_file_writer& out, std::span<const std::unique_ptr<List>> lists) {
  out.begin_section(tag_list_sizes);
  for (const auto& l : lists) out.append_value(std::uint64_t{l->count()});
}

/// Writes LIDS: every list's ids, list after list, unpadded.
template <class List>
void write_list_ids(index_file_writer& out, std::span<const std::unique_ptr<List>> lists) {
  out.begin_section(tag_list_ids);
  for (const auto& l : lists) out.append(std::span<const vector_id>(l->id_data(), l->count()));
}

/// Reads LSIZ (nlist entry counts) and checks that they add up to the header's vector count.
[[nodiscard]] inline aligned_vector<std::uint64_t> read_list_sizes(const index_file_reader& in, std::uint64_t nlist) {
  const std::string& name = in.name();
  const std::uint64_t count = in.header().count;
  aligned_vector<std::uint64_t> sizes = in.read_vector<std::uint64_t>(tag_list_sizes, nlist);
  std::uint64_t total = 0;
  for (const std::uint64_t s : sizes) {
    SHOAL_CHECK_CODE(s <= count - total, errc::corrupt_file, name, ": the list sizes add up to more than the ", count,
                     " stored vectors");
    total += s;
  }
  SHOAL_CHECK_CODE(total == count, errc::corrupt_file, name, ": the list sizes add up to ", total, ", not to the ",
                   count, " stored vectors");
  return sizes;
}

/// A section of per-list runs, handed out list by list. The constructor checks the section's size
/// against the list sizes (before anything is allocated); `next` then gives the following list's run,
/// as a pointer into the mapping of a mapped load, or else read into the list's own storage.
class list_runs {
 public:
  /// `run_bytes(n)`: bytes of a list of n entries, before padding; `padded`: each run starts at a
  /// multiple of 64 bytes within the section.
  template <class RunBytes>
  list_runs(const index_file_reader& in, std::uint32_t tag, std::span<const std::uint64_t> sizes, bool padded,
            RunBytes run_bytes)
      : in_(in), tag_(tag) {
    const std::string& name = in.name();
    runs_.reserve(sizes.size());
    std::uint64_t total = 0;
    for (const std::uint64_t n : sizes) {
      const std::uint64_t bytes = run_bytes(n);
      const std::uint64_t stride = padded ? align_up(bytes, section_alignment) : bytes;
      SHOAL_CHECK_CODE(stride >= bytes && !__builtin_add_overflow(total, stride, &total), errc::corrupt_file, name,
                       ": the list sizes overflow");
      runs_.push_back({bytes, stride});
    }
    SHOAL_CHECK_CODE(in.section_size(tag) == total, errc::corrupt_file, name, ": section ", tag_name(tag), " has ",
                     in.section_size(tag), " bytes, expected ", total);
    if (in.mapped()) mapped_ = in.map<std::byte>(tag, static_cast<std::size_t>(total)).data();
  }

  /// Whether runs are handed out from a mapping.
  [[nodiscard]] bool mapped() const noexcept { return mapped_ != nullptr; }

  /// The next list's run as `T`s: inside the mapping when mapped (`owned` is left alone), else read into
  /// `owned`, resized to hold it.
  template <class T>
  const T* next(aligned_vector<T>& owned) {
    const run& r = runs_[next_++];
    const std::uint64_t at = offset_;
    offset_ += r.stride;
    if (mapped_ != nullptr) return reinterpret_cast<const T*>(mapped_ + at);
    owned.resize(static_cast<std::size_t>(r.bytes / sizeof(T)));
    in_.read_range(tag_, at, owned.data(), static_cast<std::size_t>(r.bytes));
    return owned.data();
  }

 private:
  struct run {
    std::uint64_t bytes;
    std::uint64_t stride;
  };
  const index_file_reader& in_;
  std::uint32_t tag_;
  std::vector<run> runs_;
  const std::byte* mapped_ = nullptr;
  std::size_t next_ = 0;
  std::uint64_t offset_ = 0;
};

/// The runs of LVEC: each list's full vectors (n x dim floats), padded.
[[nodiscard]] inline list_runs vector_runs(const index_file_reader& in, std::span<const std::uint64_t> sizes) {
  const std::uint64_t row_bytes = in.header().dim * sizeof(float);
  return {in, tag_list_rows, sizes, true,
          [&](std::uint64_t n) { return checked_mul(n, row_bytes, in.name(), "list size"); }};
}

/// The runs of LIDS: each list's ids, unpadded.
[[nodiscard]] inline list_runs id_runs(const index_file_reader& in, std::span<const std::uint64_t> sizes) {
  return {in, tag_list_ids, sizes, false,
          [&](std::uint64_t n) { return checked_mul(n, sizeof(vector_id), in.name(), "id count"); }};
}

/// Gives `list` its next `n` entries from `codes` and `ids`: pointers into the mapping, or owned copies.
template <class Code>
void load_list(shoal::detail::inverted_list<Code>& list, std::size_t n, list_runs& codes, list_runs& ids) {
  const Code* c = codes.next(list.codes);
  const vector_id* i = ids.next(list.ids);
  list.mapped = codes.mapped();
  if (list.mapped) {
    list.mapped_count = n;
    list.mapped_codes = c;
    list.mapped_ids = i;
  }
}

}  // namespace shoal::io::detail
