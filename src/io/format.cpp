// The shoal index file: header and section table, the atomic writer, the checking reader, the mapping.
// Layout and rules: docs/format.md. Every multi-byte field is little-endian; the header is encoded and
// decoded field by field (byte-exact on any host), the arrays are copied as they are in memory, which
// file_util.hpp's static_assert ties to little-endian hosts.

#include "io/format.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdio>
#include <utility>

namespace shoal {
namespace detail {
namespace {
std::atomic<save_hook> current_save_hook{nullptr};
}  // namespace
void set_save_hook(save_hook hook) noexcept { current_save_hook.store(hook); }
}  // namespace detail

const char* index_kind_name(index_kind kind) noexcept {
  switch (kind) {
    case index_kind::flat:
      return "flat";
    case index_kind::ivf_flat:
      return "ivf_flat";
    case index_kind::hnsw:
      return "hnsw";
    case index_kind::ivf_pq:
      return "ivf_pq";
    case index_kind::collection:
      return "collection";
    case index_kind::refine:
      return "refine";
  }
  return "unknown";
}

index_file_info read_index_file_info(const std::string& path, verify_level verify) {
  io::detail::check_verify_level(verify);
  const io::detail::index_file_reader reader(
      path, {.mmap = false, .verify = verify == verify_level::none ? verify_level::none : verify_level::header});
  return reader.info();
}

namespace io::detail {
namespace {

// Field offsets of the 128-byte header (docs/format.md).
constexpr std::size_t at_major = 8;
constexpr std::size_t at_minor = 10;
constexpr std::size_t at_endian = 12;
constexpr std::size_t at_header_bytes = 16;
constexpr std::size_t at_kind = 20;
constexpr std::size_t at_metric = 24;
constexpr std::size_t at_section_count = 28;
constexpr std::size_t at_dim = 32;
constexpr std::size_t at_count = 40;
constexpr std::size_t at_file_bytes = 48;
constexpr std::size_t at_table_offset = 56;
constexpr std::size_t at_entry_bytes = 64;
constexpr std::size_t at_header_crc = 68;
constexpr std::size_t reserved_from = 72;

template <class T>
void store_le(std::byte* at, T value) noexcept {
  static_assert(std::is_unsigned_v<T>);
  for (std::size_t i = 0; i < sizeof(T); ++i) at[i] = static_cast<std::byte>((value >> (8 * i)) & 0xFFu);
}

template <class T>
[[nodiscard]] T load_le(const std::byte* at) noexcept {
  static_assert(std::is_unsigned_v<T>);
  T value = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) value |= static_cast<T>(static_cast<T>(at[i]) << (8 * i));
  return value;
}

// Metrics by stable numbers, not by the enum's values.
std::uint32_t metric_code(metric m) noexcept {
  switch (m) {
    case metric::l2:
      return 0;
    case metric::inner_product:
      return 1;
    case metric::cosine:
      return 2;
  }
  return 0;
}

bool known_kind(std::uint32_t kind) noexcept { return kind >= 1 && kind <= 6; }

// The header's checksum: its 128 bytes with the checksum field zeroed, then the section table.
std::uint32_t header_checksum(const std::byte* header, std::span<const std::byte> table) noexcept {
  std::array<std::byte, header_bytes> copy{};
  std::memcpy(copy.data(), header, header_bytes);
  store_le<std::uint32_t>(copy.data() + at_header_crc, 0);
  return crc32c(table.data(), table.size(), crc32c(copy.data(), copy.size()));
}

constexpr std::size_t zero_block_bytes = 4096;
constexpr std::array<std::byte, zero_block_bytes> zero_block{};

std::uint32_t crc_of_zeros(std::uint64_t bytes, std::uint32_t crc) noexcept {
  while (bytes > 0) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(bytes, zero_block_bytes));
    crc = crc32c(zero_block.data(), n, crc);
    bytes -= n;
  }
  return crc;
}

void write_zeros(atomic_writer& out, std::uint64_t bytes) {
  while (bytes > 0) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(bytes, zero_block_bytes));
    out.write(zero_block.data(), n);
    bytes -= n;
  }
}

}  // namespace

std::string tag_name(std::uint32_t tag) {
  std::string name;
  for (int i = 0; i < 4; ++i) {
    const auto c = static_cast<unsigned char>((tag >> (8 * i)) & 0xFFu);
    if (std::isprint(c) == 0) {
      std::array<char, 16> hex{};
      std::snprintf(hex.data(), hex.size(), "0x%08x", tag);
      return hex.data();
    }
    name.push_back(static_cast<char>(c));
  }
  return name;
}

std::uint64_t checked_mul(std::uint64_t a, std::uint64_t b, const std::string& file, const char* what) {
  std::uint64_t product = 0;
  SHOAL_CHECK_CODE(!__builtin_mul_overflow(a, b, &product), errc::corrupt_file, file, ": ", what, " (", a, " x ", b,
                   ") overflows 64 bits");
  return product;
}

// ------------------------------------------------------------------------------------------ mapping
file_mapping::file_mapping(int fd, std::size_t bytes, const std::string& name) : bytes_(bytes) {
  if (bytes == 0) return;
  void* p = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
  SHOAL_CHECK_CODE(p != MAP_FAILED, errc::io_error, name, ": cannot map ", bytes, " bytes: ", errno_text(errno));
  data_ = static_cast<const std::byte*>(p);
}

file_mapping::~file_mapping() {
  if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), bytes_);
}

void file_mapping::release_resident() const noexcept {
  if (data_ != nullptr) (void)::madvise(const_cast<std::byte*>(data_), bytes_, MADV_DONTNEED);
}

// ------------------------------------------------------------------------------------------- writer
index_file_writer::index_file_writer(std::filesystem::path path, const index_header& header)
    : path_(std::move(path)), header_(header) {}

void index_file_writer::begin_section(std::uint32_t tag, std::uint32_t flags) {
  sections_.push_back({tag, flags, {}, 0});
}

void index_file_writer::append(const void* data, std::size_t bytes) {
  if (bytes == 0) return;
  section& s = sections_.back();
  s.pieces.push_back({static_cast<const std::byte*>(data), bytes});
  s.size += bytes;
}

void index_file_writer::append_zeros(std::size_t bytes) {
  if (bytes == 0) return;
  section& s = sections_.back();
  s.pieces.push_back({nullptr, bytes});
  s.size += bytes;
}

void index_file_writer::commit() {
  const std::size_t n = sections_.size();
  // Layout and checksums first: the header at offset 0 holds them.
  std::vector<section_entry> entries(n);
  std::uint64_t end = align_up(header_bytes + n * section_entry_bytes, section_alignment);
  for (std::size_t i = 0; i < n; ++i) {
    const section& s = sections_[i];
    const std::uint64_t alignment = alignment_of_section(s.size);
    entries[i].tag = s.tag;
    entries[i].flags = s.flags;
    entries[i].offset = align_up(end, alignment);
    entries[i].size = s.size;
    std::uint32_t crc = 0;
    for (const piece& p : s.pieces) crc = p.data == nullptr ? crc_of_zeros(p.bytes, crc) : crc32c(p.data, p.bytes, crc);
    entries[i].crc = crc;
    end = entries[i].offset + s.size;
  }
  const std::uint64_t file_bytes = end;

  std::vector<std::byte> head(header_bytes + n * section_entry_bytes);
  std::memcpy(head.data(), file_magic.data(), file_magic.size());
  store_le<std::uint16_t>(head.data() + at_major, format_version_major);
  store_le<std::uint16_t>(head.data() + at_minor, format_version_minor);
  store_le<std::uint32_t>(head.data() + at_endian, endian_tag);
  store_le<std::uint32_t>(head.data() + at_header_bytes, header_bytes);
  store_le<std::uint32_t>(head.data() + at_kind, static_cast<std::uint32_t>(header_.kind));
  store_le<std::uint32_t>(head.data() + at_metric, metric_code(header_.metric));
  store_le<std::uint32_t>(head.data() + at_section_count, static_cast<std::uint32_t>(n));
  store_le<std::uint64_t>(head.data() + at_dim, header_.dim);
  store_le<std::uint64_t>(head.data() + at_count, header_.count);
  store_le<std::uint64_t>(head.data() + at_file_bytes, file_bytes);
  store_le<std::uint64_t>(head.data() + at_table_offset, header_bytes);
  store_le<std::uint32_t>(head.data() + at_entry_bytes, section_entry_bytes);
  for (std::size_t i = 0; i < n; ++i) {
    std::byte* e = head.data() + header_bytes + i * section_entry_bytes;
    store_le<std::uint32_t>(e, entries[i].tag);
    store_le<std::uint32_t>(e + 4, entries[i].flags);
    store_le<std::uint64_t>(e + 8, entries[i].offset);
    store_le<std::uint64_t>(e + 16, entries[i].size);
    store_le<std::uint32_t>(e + 24, entries[i].crc);
  }
  store_le<std::uint32_t>(head.data() + at_header_crc,
                          header_checksum(head.data(), std::span(head).subspan(header_bytes)));

  const shoal::detail::save_hook hook = shoal::detail::current_save_hook.load();
  atomic_writer out(path_);
  out.write(head.data(), head.size());
  std::uint64_t at = head.size();
  for (std::size_t i = 0; i < n; ++i) {
    write_zeros(out, entries[i].offset - at);
    for (const piece& p : sections_[i].pieces) {
      if (p.data == nullptr)
        write_zeros(out, p.bytes);
      else
        out.write(p.data, p.bytes);
    }
    at = entries[i].offset + entries[i].size;
    if (hook != nullptr) {
      out.flush();
      hook(out.bytes_written());
    }
  }
  try {
    out.commit();
  } catch (...) {
    replaced_ = out.renamed();
    throw;
  }
  replaced_ = true;
}

void check_writable(const file_mapping* mapping, const char* what) {
  SHOAL_CHECK_CODE(mapping == nullptr, errc::unsupported, what,
                   ": the index was loaded with mmap and is read-only (load it without mmap to modify it)");
}

// ------------------------------------------------------------------------------------------- reader
void check_verify_level(verify_level verify) {
  // A value cast from an integer read as `header`: section checksums (and a mapping's value check)
  // skipped, silently (a user-eyes review).
  SHOAL_CHECK(verify == verify_level::none || verify == verify_level::header || verify == verify_level::full,
              "load: unknown verify level ", static_cast<int>(verify), " (expected none, header or full)");
}

index_file_reader::index_file_reader(const std::filesystem::path& path, const load_options& options) : file_(path) {
  check_verify_level(options.verify);
  const std::string& name = file_.name();
  const std::uint64_t size = file_.size();
  std::array<std::byte, header_bytes> head{};
  SHOAL_CHECK_CODE(size > 0, errc::corrupt_file, name, ": truncated: the file is empty");
  const std::size_t got = static_cast<std::size_t>(std::min<std::uint64_t>(size, header_bytes));
  file_.read_at(0, head.data(), got);
  SHOAL_CHECK_CODE(std::memcmp(head.data(), file_magic.data(), std::min(got, file_magic.size())) == 0,
                   errc::corrupt_file, name, ": not a shoal index file (wrong magic at offset 0)");
  SHOAL_CHECK_CODE(size >= header_bytes, errc::corrupt_file, name, ": truncated: ", size, " bytes, shorter than the ",
                   header_bytes, "-byte header");

  version_major_ = load_le<std::uint16_t>(head.data() + at_major);
  version_minor_ = load_le<std::uint16_t>(head.data() + at_minor);
  SHOAL_CHECK_CODE(version_major_ != 0, errc::corrupt_file, name, ": invalid format version 0.", version_minor_);
  SHOAL_CHECK_CODE(version_major_ <= format_version_major, errc::unsupported, name, ": format version ", version_major_,
                   ".", version_minor_, " is newer than this build of shoal reads (", format_version_major,
                   ".x); upgrade shoal to load it");
  const auto endian = load_le<std::uint32_t>(head.data() + at_endian);
  SHOAL_CHECK_CODE(endian == endian_tag, errc::corrupt_file, name, ": wrong endianness tag ", endian,
                   " (a big-endian file, or a damaged header)");
  SHOAL_CHECK_CODE(load_le<std::uint32_t>(head.data() + at_header_bytes) == header_bytes &&
                       load_le<std::uint64_t>(head.data() + at_table_offset) == header_bytes &&
                       load_le<std::uint32_t>(head.data() + at_entry_bytes) == section_entry_bytes,
                   errc::corrupt_file, name, ": malformed header (header, table or entry size)");
  const auto count = load_le<std::uint32_t>(head.data() + at_section_count);
  SHOAL_CHECK_CODE(count <= max_sections, errc::corrupt_file, name, ": malformed header: ", count, " sections");
  table_end_ = header_bytes + std::uint64_t{count} * section_entry_bytes;
  SHOAL_CHECK_CODE(size >= table_end_, errc::corrupt_file, name, ": truncated: ", size, " bytes, shorter than the ",
                   table_end_, " bytes of header and section table");
  std::vector<std::byte> table(table_end_ - header_bytes);
  file_.read_at(header_bytes, table.data(), table.size());
  if (options.verify != verify_level::none) {
    const auto stored = load_le<std::uint32_t>(head.data() + at_header_crc);
    SHOAL_CHECK_CODE(header_checksum(head.data(), table) == stored, errc::corrupt_file, name,
                     ": header checksum mismatch (the header or section table is damaged)");
  }
  file_bytes_ = load_le<std::uint64_t>(head.data() + at_file_bytes);
  SHOAL_CHECK_CODE(size >= file_bytes_, errc::corrupt_file, name, ": truncated: ", size, " bytes of the ", file_bytes_,
                   " the header announces");
  SHOAL_CHECK_CODE(size == file_bytes_, errc::corrupt_file, name, ": ", size, " bytes, but the header announces ",
                   file_bytes_, " (trailing data)");
  for (std::size_t i = reserved_from; i < header_bytes; ++i)
    SHOAL_CHECK_CODE(head[i] == std::byte{0}, errc::corrupt_file, name, ": malformed header (reserved byte ", i,
                     " is not zero)");

  const auto kind = load_le<std::uint32_t>(head.data() + at_kind);
  SHOAL_CHECK_CODE(known_kind(kind), errc::unsupported, name, ": unknown index kind ", kind,
                   " (written by a newer shoal?)");
  header_.kind = static_cast<index_kind>(kind);
  const auto metric = load_le<std::uint32_t>(head.data() + at_metric);
  SHOAL_CHECK_CODE(metric <= 2, errc::corrupt_file, name, ": unknown metric ", metric);
  header_.metric = metric == 0 ? metric::l2 : metric == 1 ? metric::inner_product : metric::cosine;
  header_.dim = load_le<std::uint64_t>(head.data() + at_dim);
  header_.count = load_le<std::uint64_t>(head.data() + at_count);
  SHOAL_CHECK_CODE(header_.dim >= 1 && header_.dim <= max_dim, errc::corrupt_file, name, ": dimension ", header_.dim,
                   " outside [1, ", max_dim, "]");
  // No index stores more vectors than the file has bytes.
  SHOAL_CHECK_CODE(header_.count <= size, errc::corrupt_file, name, ": ", header_.count,
                   " vectors cannot fit in a file of ", size, " bytes");

  sections_.resize(count);
  for (std::size_t i = 0; i < count; ++i) {
    const std::byte* e = table.data() + i * section_entry_bytes;
    section_entry& s = sections_[i];
    s.tag = load_le<std::uint32_t>(e);
    s.flags = load_le<std::uint32_t>(e + 4);
    s.offset = load_le<std::uint64_t>(e + 8);
    s.size = load_le<std::uint64_t>(e + 16);
    s.crc = load_le<std::uint32_t>(e + 24);
    const std::string tag = tag_name(s.tag);
    SHOAL_CHECK_CODE(load_le<std::uint32_t>(e + 28) == 0, errc::corrupt_file, name, ": section ", tag,
                     ": reserved field is not zero");
    // Only bit 0 (required) has a meaning so far; a later minor that gives another one its meaning is
    // refused here rather than misread (docs/format.md, "Versioning").
    SHOAL_CHECK_CODE((s.flags & ~section_required) == 0, errc::corrupt_file, name, ": section ", tag,
                     " has unknown flags ", s.flags);
    const std::uint64_t alignment = alignment_of_section(s.size);
    SHOAL_CHECK_CODE(s.offset % alignment == 0 && s.offset >= table_end_, errc::corrupt_file, name, ": section ", tag,
                     " at offset ", s.offset, " is misplaced (must be ", alignment, "-byte aligned, after byte ",
                     table_end_, ")");
    SHOAL_CHECK_CODE(s.offset <= file_bytes_ && s.size <= file_bytes_ - s.offset, errc::corrupt_file, name,
                     ": section ", tag, " (", s.size, " bytes at ", s.offset, ") extends beyond the end of the file (",
                     file_bytes_, " bytes)");
    for (std::size_t j = 0; j < i; ++j)
      SHOAL_CHECK_CODE(sections_[j].tag != s.tag, errc::corrupt_file, name, ": section ", tag, " appears twice");
  }
  std::vector<const section_entry*> by_offset;
  by_offset.reserve(count);
  for (const section_entry& s : sections_) by_offset.push_back(&s);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (std::size_t i = 1; i < by_offset.size(); ++i)
    SHOAL_CHECK_CODE(by_offset[i - 1]->offset + by_offset[i - 1]->size <= by_offset[i]->offset, errc::corrupt_file,
                     name, ": sections ", tag_name(by_offset[i - 1]->tag), " and ", tag_name(by_offset[i]->tag),
                     " overlap");

  if (options.verify == verify_level::full) verify_sections();
  if (options.mmap) mapping_ = std::make_shared<const file_mapping>(file_.fd(), static_cast<std::size_t>(size), name);
  checks_values_ = !options.mmap || options.verify == verify_level::full;
}

index_file_reader::~index_file_reader() {
  if (mapping_ && checks_values_) mapping_->release_resident();
}

void index_file_reader::verify_sections() const {
  // Read through the page cache (not a mapping), so that verifying a mapped load leaves it unresident.
  std::vector<std::byte> buffer(static_cast<std::size_t>(std::min<std::uint64_t>(chunk_bytes, file_bytes_)));
  std::vector<const section_entry*> by_offset;
  for (const section_entry& s : sections_) by_offset.push_back(&s);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  auto check_zeros = [&](std::uint64_t from, std::uint64_t to) {
    for (std::uint64_t at = from; at < to;) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(to - at, buffer.size()));
      file_.read_at(at, buffer.data(), n);
      SHOAL_CHECK_CODE(std::all_of(buffer.begin(), buffer.begin() + static_cast<std::ptrdiff_t>(n),
                                   [](std::byte b) { return b == std::byte{0}; }),
                       errc::corrupt_file, name(), ": checksum mismatch: padding between bytes ", from, " and ", to,
                       " is not zero");
      at += n;
    }
  };
  std::uint64_t end = table_end_;
  for (const section_entry* s : by_offset) {
    check_zeros(end, s->offset);
    std::uint32_t crc = 0;
    for (std::uint64_t done = 0; done < s->size;) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(s->size - done, buffer.size()));
      file_.read_at(s->offset + done, buffer.data(), n);
      crc = crc32c(buffer.data(), n, crc);
      done += n;
    }
    SHOAL_CHECK_CODE(crc == s->crc, errc::corrupt_file, name(), ": checksum mismatch in section ", tag_name(s->tag),
                     " (", s->size, " bytes at offset ", s->offset, ")");
    end = s->offset + s->size;
  }
  check_zeros(end, file_bytes_);
}

index_file_info index_file_reader::info() const noexcept {
  return {header_.kind, header_.metric, header_.dim, header_.count, version_major_, version_minor_, file_bytes_};
}

void index_file_reader::expect_kind(index_kind expected, const char* who) const {
  SHOAL_CHECK_CODE(header_.kind == expected, errc::invalid_argument, who, ": ", name(), " holds an index of kind ",
                   index_kind_name(header_.kind), ", not ", index_kind_name(expected));
}

void index_file_reader::check_known(std::initializer_list<std::uint32_t> known,
                                    std::span<const std::uint32_t> more) const {
  for (const section_entry& s : sections_)
    SHOAL_CHECK_CODE((s.flags & section_required) == 0 || std::find(known.begin(), known.end(), s.tag) != known.end() ||
                         std::find(more.begin(), more.end(), s.tag) != more.end(),
                     errc::unsupported, name(), ": required section ", tag_name(s.tag),
                     " is unknown to this build of shoal (format ", version_major_, ".", version_minor_, ")");
}

void index_file_reader::advise_random(std::uint32_t tag) const noexcept {
  const section_entry* e = find(tag);
  if (mapping_ == nullptr || e == nullptr || e->size == 0) return;
  // madvise wants a page-aligned start; big sections start on a page, small ones share theirs.
  const auto start = reinterpret_cast<std::uintptr_t>(mapping_->data()) + e->offset;
  const std::uintptr_t page = start / page_alignment * page_alignment;
  (void)::madvise(reinterpret_cast<void*>(page), static_cast<std::size_t>(start + e->size - page), MADV_RANDOM);
}

const section_entry* index_file_reader::find(std::uint32_t tag) const noexcept {
  for (const section_entry& s : sections_)
    if (s.tag == tag) return &s;
  return nullptr;
}

std::uint64_t index_file_reader::section_size(std::uint32_t tag) const {
  const section_entry* e = find(tag);
  SHOAL_CHECK_CODE(e != nullptr, errc::corrupt_file, name(), ": section ", tag_name(tag), " is missing");
  return e->size;
}

const section_entry& index_file_reader::expect_size(std::uint32_t tag, std::uint64_t count,
                                                    std::size_t element_bytes) const {
  const section_entry* e = find(tag);
  SHOAL_CHECK_CODE(e != nullptr, errc::corrupt_file, name(), ": section ", tag_name(tag), " is missing");
  const std::uint64_t want = checked_mul(count, element_bytes, name(), "section size");
  SHOAL_CHECK_CODE(e->size == want, errc::corrupt_file, name(), ": section ", tag_name(tag), " has ", e->size,
                   " bytes, expected ", want);
  return *e;
}

void index_file_reader::read_bytes(const section_entry& e, void* dst) const {
  if (mapping_ != nullptr)
    std::memcpy(dst, mapping_->data() + e.offset, static_cast<std::size_t>(e.size));
  else
    file_.read_at(e.offset, dst, static_cast<std::size_t>(e.size));
}

void index_file_reader::read_range(std::uint32_t tag, std::uint64_t first, void* dst, std::size_t bytes) const {
  const section_entry* e = find(tag);
  SHOAL_CHECK_CODE(e != nullptr, errc::corrupt_file, name(), ": section ", tag_name(tag), " is missing");
  SHOAL_CHECK_CODE(first <= e->size && bytes <= e->size - first, errc::corrupt_file, name(), ": section ",
                   tag_name(tag), " is too short (", e->size, " bytes)");
  if (bytes == 0) return;
  if (mapping_ != nullptr)
    std::memcpy(dst, mapping_->data() + e->offset + first, bytes);
  else
    file_.read_at(e->offset + first, dst, bytes);
}

std::vector<std::byte> index_file_reader::small_section(std::uint32_t tag) const {
  const std::uint64_t bytes = section_size(tag);
  SHOAL_CHECK_CODE(bytes <= (std::uint64_t{64} << 10), errc::corrupt_file, name(), ": section ", tag_name(tag), " has ",
                   bytes, " bytes, too many for a parameter section");
  std::vector<std::byte> out(static_cast<std::size_t>(bytes));
  read_bytes(*find(tag), out.data());
  return out;
}

}  // namespace io::detail
}  // namespace shoal
