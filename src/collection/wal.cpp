#include "collection/wal.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <string>

#include <sys/file.h>
#include <sys/stat.h>

#include "shoal/core/error.hpp"
#include "shoal/io/format.hpp"

namespace shoal::detail {
namespace {

constexpr std::array<char, 8> wal_magic = {'S', 'H', 'O', 'A', 'L', 'W', 'A', 'L'};
constexpr std::uint32_t wal_version = 1;
constexpr std::size_t header_bytes = 24;
constexpr std::size_t record_head_bytes = 8;     // payload size + crc
constexpr std::size_t payload_fixed_bytes = 16;  // sequence, op, has_keys, flags, count
constexpr std::uint16_t continued_flag = 1;      // not the last record of its write call

template <class T>
T load(const std::byte* p) noexcept {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

/// Writes `bytes` at the file offset; `what` names the write in the error ("appending to the write-ahead log").
void write_all(int fd, const std::byte* data, std::size_t bytes, const std::filesystem::path& path, const char* what) {
  while (bytes > 0) {
    const ::ssize_t put_bytes = ::write(fd, data, bytes);
    if (put_bytes < 0 && errno == EINTR) continue;
    SHOAL_CHECK_CODE(put_bytes > 0, errc::io_error, path.string(), ": ", what,
                     " failed: ", io::detail::errno_text(put_bytes < 0 ? errno : EIO));
    data += put_bytes;
    bytes -= static_cast<std::size_t>(put_bytes);
  }
}

/// The fixed head of a record's payload, and the payload size it implies.
struct record_header {
  std::uint64_t sequence;
  std::uint8_t op;  // as stored: not yet checked
  bool has_keys;
  std::uint16_t flags;  // as stored: not yet checked
  std::uint32_t count;
  std::uint64_t implied_bytes;

  /// Reads the first `payload_fixed_bytes` of a payload, for vectors of `dim` floats.
  record_header(const std::byte* p, std::size_t dim) noexcept
      : sequence(load<std::uint64_t>(p)),
        op(static_cast<std::uint8_t>(p[8])),
        has_keys(p[9] != std::byte{0}),
        flags(load<std::uint16_t>(p + 10)),
        count(load<std::uint32_t>(p + 12)),
        implied_bytes(
            payload_fixed_bytes + std::uint64_t{count} * 8 * (has_keys ? 2 : 1) +
            (op == static_cast<std::uint8_t>(wal_op::remove) ? 0 : std::uint64_t{count} * dim * sizeof(float))) {}
  [[nodiscard]] bool known_op() const noexcept { return op >= 1 && op <= 3; }
  [[nodiscard]] bool known_flags() const noexcept { return (flags & ~continued_flag) == 0; }
};

/// The highest sequence among the intact records at the start of a log's `bytes` (its header included),
/// read from the size fields alone: no dimension needed. 0 for none; stops at the first record that is
/// cut short or fails its checksum.
std::uint64_t last_intact_sequence(const std::byte* bytes, std::uint64_t size) {
  std::uint64_t last = 0;
  std::uint64_t at = header_bytes;
  while (size - at >= record_head_bytes) {
    const auto payload = load<std::uint32_t>(bytes + at);
    if (payload < payload_fixed_bytes || payload > size - at - record_head_bytes) break;
    const std::byte* p = bytes + at + record_head_bytes;
    if (crc32c(p, payload) != load<std::uint32_t>(bytes + at + 4)) break;
    last = std::max(last, load<std::uint64_t>(p));
    at += record_head_bytes + payload;
  }
  return last;
}

/// Whether a log's `bytes` begin with a header of this format (magic and version).
bool is_log(const std::byte* bytes, std::uint64_t size) {
  return size >= header_bytes && std::memcmp(bytes, wal_magic.data(), wal_magic.size()) == 0 &&
         load<std::uint32_t>(bytes + 8) == wal_version;
}

bool all_zero(const std::byte* first, const std::byte* last) {
  return std::all_of(first, last, [](std::byte b) { return b == std::byte{0}; });
}

/// Whether a log's `bytes` cannot hold a record, so that it is an empty log whatever else it shows: every
/// byte zero (a file whose size reached the disk before its data did), or no longer than a header and, up
/// to the zeros that end it, the beginning of one (a header write cut short by a crash or a full disk:
/// `write_header` empties the file first, and no record is written before the header is whole, e.g.
/// when the log is emptied after a checkpoint, whose manifest already holds every record).
bool holds_no_record(const std::vector<std::byte>& bytes) {
  std::size_t written = bytes.size();
  while (written > 0 && bytes[written - 1] == std::byte{0}) --written;
  if (written == 0) return true;
  if (bytes.size() > header_bytes) return false;
  std::array<std::byte, 12> head{};  // magic and version; the dimension may be any
  std::memcpy(head.data(), wal_magic.data(), wal_magic.size());
  std::memcpy(head.data() + wal_magic.size(), &wal_version, sizeof wal_version);
  return std::equal(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(std::min(written, head.size())),
                    head.begin());
}

/// Whether `fd` is still the file that `path` names (false when the path names no file): a lock taken on
/// a log that its holder deleted or replaced between our open and our lock guards nothing.
bool names_file(int fd, const std::filesystem::path& path) {
  struct ::stat held {};
  struct ::stat named {};
  SHOAL_CHECK_CODE(::fstat(fd, &held) == 0, errc::io_error, path.string(),
                   ": cannot stat the write-ahead log: ", io::detail::errno_text(errno));
  if (::stat(path.c_str(), &named) != 0) {
    SHOAL_CHECK_CODE(errno == ENOENT, errc::io_error, path.string(),
                     ": cannot stat the write-ahead log: ", io::detail::errno_text(errno));
    return false;
  }
  return held.st_dev == named.st_dev && held.st_ino == named.st_ino;
}

/// Opens and locks can race with a holder that deletes or replaces the log; each try that loses the race
/// starts again, up to this many.
constexpr int lock_attempts = 100;

/// flock(2) of the log `path` open as `fd` with `operation` (LOCK_EX or LOCK_SH), without waiting.
void lock_log(int fd, const std::filesystem::path& path, int operation) {
  int rc = 0;
  do rc = ::flock(fd, operation | LOCK_NB);
  while (rc != 0 && errno == EINTR);
  if (rc == 0) return;
  const int err = errno;
  SHOAL_CHECK_CODE(
      err != EWOULDBLOCK, errc::io_error, path.string(), ": the collection in ", path.parent_path().string(),
      " is open in another collection",
      operation == LOCK_EX ? " (one may write a directory, or many read it memory-mapped)" : " for writing");
  detail::throw_error(errc::io_error,
                      detail::str(path.string(), ": cannot lock the write-ahead log: ", io::detail::errno_text(err)));
}

/// The whole file `path`, read through `in`.
std::vector<std::byte> read_whole(const io::detail::input_file& in) {
  std::vector<std::byte> bytes(static_cast<std::size_t>(in.size()));
  in.read_at(0, bytes.data(), in.size());
  return bytes;
}

}  // namespace

write_ahead_log::held_log::held_log(const std::filesystem::path& dir, lock_mode mode)
    // Absolute: `check_in_place` looks the path up again, after the working directory may have changed.
    : path_(std::filesystem::absolute(dir / file_name)), shared_(mode == lock_mode::shared) {
  for (int attempt = 1;; ++attempt) {
    fd_.reset(io::detail::open_retrying(path_.c_str(), O_RDWR | O_CREAT, 0666));
    if (fd_.get() < 0 && shared_ && (errno == EACCES || errno == EROFS || errno == EPERM)) {
      // A reader of a log it may not write locks it read-only. Where there is none to lock, only a
      // read-only file system guarantees that no writer creates one (and deletes shard files a reader
      // is opening); a missing permission does not.
      const int denied = errno;
      fd_.reset(io::detail::open_retrying(path_.c_str(), O_RDONLY));
      if (fd_.get() < 0 && errno == ENOENT) {
        SHOAL_CHECK_CODE(
            denied == EROFS, errc::io_error, path_.string(),
            ": cannot create the write-ahead log to lock the directory for reading: ", io::detail::errno_text(denied));
        return;
      }
    }
    SHOAL_CHECK_CODE(fd_.get() >= 0, errc::io_error, path_.string(),
                     ": cannot open the write-ahead log: ", io::detail::errno_text(errno));
    lock_log(fd_.get(), path_, shared_ ? LOCK_SH : LOCK_EX);
    if (names_file(fd_.get(), path_)) break;
    SHOAL_CHECK_CODE(attempt < lock_attempts, errc::io_error, path_.string(),
                     ": the write-ahead log kept being replaced while it was being locked");
  }
}

write_ahead_log::write_ahead_log(held_log&& held, std::size_t dim, wal_sync sync, std::uint64_t after)
    : path_(std::move(held.path_)), dim_(dim), sync_(sync), fd_(std::move(held.fd_)), last_sequence_(after) {
  const bool shared = held.shared_;
  if (shared) refusal_ = "the log was opened for reading";
  if (fd_.get() < 0) return;  // a reader on a read-only file system, and no log there
  struct ::stat info {};
  SHOAL_CHECK_CODE(::fstat(fd_.get(), &info) == 0, errc::io_error, path_.string(),
                   ": cannot stat the write-ahead log: ", io::detail::errno_text(errno));
  if (info.st_size == 0 || !read_records(after)) {
    rewrite_ = true;
    // A log of zeros past its header's length held records once (a crash while emptying leaves no more
    // than a header): reported as dropped, like a torn tail (it read 0; a review).
    if (zeroed_ && static_cast<std::uint64_t>(info.st_size) > header_bytes)
      dropped_ = static_cast<std::uint64_t>(info.st_size);
  } else if (keep_ < static_cast<std::uint64_t>(info.st_size)) {
    dropped_ = static_cast<std::uint64_t>(info.st_size) - keep_;
  }
  // Readers change nothing: others may be reading the file under the same shared lock. The header or
  // the cut is made by the next exclusive (writing) open.
  if (!shared) repair();
}

write_ahead_log::write_ahead_log(stale_log&& locked, std::size_t dim, wal_sync sync)
    : path_(std::move(locked.held_.path_)), dim_(dim), sync_(sync), fd_(std::move(locked.held_.fd_)), rewrite_(true) {
  repair();
}

void write_ahead_log::repair() {
  if (rewrite_) {
    write_header();
    io::detail::sync_directory(path_.parent_path());  // the new log's name survives a power loss
  } else if (dropped_ != 0) {
    SHOAL_CHECK_CODE(::ftruncate(fd_.get(), static_cast<::off_t>(keep_)) == 0 && ::fsync(fd_.get()) == 0,
                     errc::io_error, path_.string(),
                     ": cannot drop the torn last write: ", io::detail::errno_text(errno));
  }
  rewrite_ = false;
  refusal_.clear();
  const ::off_t end = ::lseek(fd_.get(), 0, SEEK_END);
  SHOAL_CHECK_CODE(end >= 0, errc::io_error, path_.string(), ": seek failed: ", io::detail::errno_text(errno));
  end_ = static_cast<std::uint64_t>(end);
}

void write_ahead_log::write_header() {
  std::array<std::byte, header_bytes> head{};
  const std::array<std::uint32_t, 2> fields{wal_version, static_cast<std::uint32_t>(dim_)};
  std::memcpy(head.data(), wal_magic.data(), wal_magic.size());
  std::memcpy(head.data() + wal_magic.size(), fields.data(), sizeof fields);
  // Until the header is whole: a record must never follow a missing or partial one.
  refusal_ = "the log's header could not be written";
  SHOAL_CHECK_CODE(::ftruncate(fd_.get(), 0) == 0 && ::lseek(fd_.get(), 0, SEEK_SET) == 0, errc::io_error,
                   path_.string(), ": cannot truncate the write-ahead log: ", io::detail::errno_text(errno));
  try {
    write_all(fd_.get(), head.data(), head.size(), path_, "writing the write-ahead log's header");
    SHOAL_CHECK_CODE(::fsync(fd_.get()) == 0, errc::io_error, path_.string(),
                     ": fsync failed: ", io::detail::errno_text(errno));
  } catch (...) {
    (void)::ftruncate(fd_.get(), 0);  // best effort: a partial header is read as an empty log anyway
    throw;
  }
  end_ = header_bytes;
  refusal_.clear();
}

bool write_ahead_log::read_records(std::uint64_t after) {
  const io::detail::input_file in(path_);
  const std::uint64_t size = in.size();
  const std::string name = path_.string();
  const std::vector<std::byte> bytes = read_whole(in);
  if (holds_no_record(bytes)) {
    zeroed_ = all_zero(bytes.data(), bytes.data() + bytes.size());
    return false;
  }
  SHOAL_CHECK_CODE(size >= header_bytes, errc::corrupt_file, name, ": write-ahead log shorter than its header (", size,
                   " bytes)");
  SHOAL_CHECK_CODE(std::memcmp(bytes.data(), wal_magic.data(), wal_magic.size()) == 0, errc::corrupt_file, name,
                   ": not a shoal write-ahead log (bad magic)");
  const auto version = load<std::uint32_t>(bytes.data() + 8);
  SHOAL_CHECK_CODE(version == wal_version, errc::unsupported, name, ": write-ahead log version ", version,
                   " is not supported (this build reads version ", wal_version, ")");
  const auto dim = load<std::uint32_t>(bytes.data() + 12);
  if (dim != dim_ && last_intact_sequence(bytes.data(), size) <= after) return false;  // see stale_log
  SHOAL_CHECK_CODE(dim == dim_, errc::corrupt_file, name, ": write-ahead log of dimension ", dim, ", collection has ",
                   dim_);

  std::uint64_t at = header_bytes;
  std::uint64_t previous = 0;
  // Whether the record at `record` — cut short by the end of the file, or ending there and failing its
  // checksum — shows what a torn last write leaves: what was written of its fixed header agrees with its
  // size field `payload` and follows the previous record. Written means before the run of zeros that
  // ends the file, if any (a file extended but not all written: the zeros may begin inside the header).
  // A damaged size field that makes a middle record seem to run to the end of the file fails this, and
  // must not pass for torn: dropping it would drop every acknowledged record behind it.
  const auto torn_tail = [&](std::uint64_t record, std::uint64_t payload) {
    const std::byte* p = bytes.data() + record + record_head_bytes;
    std::uint64_t written = std::min<std::uint64_t>(payload, size - record - record_head_bytes);
    while (written > 0 && p[written - 1] == std::byte{0}) --written;
    std::array<std::byte, payload_fixed_bytes> fixed{};  // zeros past what was written
    std::copy_n(p, std::min<std::uint64_t>(written, payload_fixed_bytes), fixed.begin());
    const record_header h(fixed.data(), dim_);
    std::array<std::byte, 8> due{};  // the sequence this record should carry, as stored
    const std::uint64_t next = previous + 1;
    std::memcpy(due.data(), &next, sizeof next);
    const bool sequence_agrees =
        previous == 0 || std::equal(fixed.begin(), fixed.begin() + std::min<std::uint64_t>(written, 8), due.begin());
    if (written <= 8) return sequence_agrees;  // the op was not written
    if (written < payload_fixed_bytes) return sequence_agrees && h.known_op();
    return sequence_agrees && h.known_op() && h.implied_bytes == payload;
  };
  // Whether an intact record with a sequence after the previous one begins anywhere past byte `from`.
  // Damage that such a record follows is corruption: an acknowledged write lies behind it. Damage that
  // none follows is what a crash during the last, unacknowledged write can leave however its pages
  // reached the disk (e.g. the page holding its head, shared with the synced record before it, not
  // rewritten while later ones were): it is dropped as torn. Each candidate offset is screened by its
  // fixed header before its checksum is computed.
  const auto intact_record_after = [&](std::uint64_t from) {
    for (std::uint64_t o = from + 1; size - o >= record_head_bytes + payload_fixed_bytes; ++o) {
      const auto payload = load<std::uint32_t>(bytes.data() + o);
      if (payload < payload_fixed_bytes || payload > size - o - record_head_bytes) continue;
      const std::byte* p = bytes.data() + o + record_head_bytes;
      const record_header h(p, dim_);
      if (h.sequence <= previous || !h.known_op() || !h.known_flags() || h.implied_bytes != payload) continue;
      if (crc32c(p, payload) == load<std::uint32_t>(bytes.data() + o + 4)) return true;
    }
    return false;
  };
  // The records of the call being read, from byte `call_start`, until its last record (no "continued"
  // flag) shows that the call was written whole.
  std::vector<wal_record> call;
  std::uint64_t call_start = at;
  std::uint64_t committed_sequence = last_sequence_;
  while (at < size) {
    const std::uint64_t left = size - at;
    std::uint64_t payload = 0;
    bool torn = left < record_head_bytes;
    if (!torn) {
      payload = load<std::uint32_t>(bytes.data() + at);
      torn = payload > left - record_head_bytes;
      if (torn)
        SHOAL_CHECK_CODE(torn_tail(at, payload) || !intact_record_after(at), errc::corrupt_file, name,
                         ": write-ahead log record at byte ", at, " claims ", payload,
                         " bytes, more than the file holds, and its header disagrees and an intact record follows (a ",
                         "damaged size field, not a torn last write)");
      // A file extended but never written to (a power loss after its size reached the disk, before its
      // data did) ends in zeros: a size field of 0, whose empty payload would pass its checksum (0).
      if (!torn && payload < payload_fixed_bytes) torn = all_zero(bytes.data() + at, bytes.data() + bytes.size());
    }
    if (!torn) {
      const auto crc = load<std::uint32_t>(bytes.data() + at + 4);
      const std::byte* p = bytes.data() + at + record_head_bytes;
      const bool intact = crc32c(p, payload) == crc;
      const bool last = at + record_head_bytes + payload == size;
      if (!intact) {
        SHOAL_CHECK_CODE((last && torn_tail(at, payload)) || !intact_record_after(at), errc::corrupt_file, name,
                         ": write-ahead log record at byte ", at, " fails its checksum and an intact record follows");
        torn = true;
      } else if (payload < payload_fixed_bytes) {  // a zeroed head: size and checksum 0 pass
        SHOAL_CHECK_CODE(!intact_record_after(at), errc::corrupt_file, name, ": record at byte ", at,
                         " is too short and an intact record follows");
        torn = true;
      } else {
        const record_header h(p, dim_);
        SHOAL_CHECK_CODE(h.known_op(), errc::corrupt_file, name, ": record at byte ", at, " has unknown op ",
                         static_cast<unsigned>(h.op));
        SHOAL_CHECK_CODE(h.known_flags(), errc::corrupt_file, name, ": record at byte ", at, " has unknown flags ",
                         h.flags);
        SHOAL_CHECK_CODE(h.implied_bytes == payload, errc::corrupt_file, name, ": record at byte ", at, " holds ",
                         payload, " bytes, its header implies ", h.implied_bytes);
        wal_record r;
        r.sequence = h.sequence;
        r.op = static_cast<wal_op>(h.op);
        const bool has_keys = h.has_keys;
        const std::uint32_t count = h.count;
        const std::uint64_t vector_bytes = r.op == wal_op::remove ? 0 : std::uint64_t{count} * dim_ * sizeof(float);
        SHOAL_CHECK_CODE(r.sequence > previous, errc::corrupt_file, name, ": record at byte ", at, " has sequence ",
                         r.sequence, " after ", previous);
        // The snapshot holds every record up to `after`, and the log continues from there: a first later
        // record beyond after + 1 means records were lost in between (a manifest that did not reach the
        // disk while the log's emptying did), which replay must not skip silently.
        SHOAL_CHECK_CODE(r.sequence <= after || previous > after || r.sequence == after + 1, errc::corrupt_file, name,
                         ": record at byte ", at, " has sequence ", r.sequence,
                         " but the snapshot holds records up to ", after,
                         ": the records between are missing (or the manifest is older than the log: restored "
                         "from another copy?)");
        previous = r.sequence;
        const std::byte* q = p + payload_fixed_bytes;
        r.ids.resize(count);
        std::memcpy(r.ids.data(), q, count * sizeof(vector_id));
        q += count * sizeof(vector_id);
        if (has_keys) {
          r.keys.resize(count);
          std::memcpy(r.keys.data(), q, count * sizeof(std::uint64_t));
          q += count * sizeof(std::uint64_t);
        }
        if (r.op != wal_op::remove) {
          r.vectors = matrix<float>(count, dim_);
          std::memcpy(r.vectors.values.data(), q, vector_bytes);
        }
        if (call.empty()) call_start = at;
        call.push_back(std::move(r));
        if ((h.flags & continued_flag) == 0) {  // the call is whole
          committed_sequence = std::max(committed_sequence, call.back().sequence);
          for (wal_record& whole : call)
            if (whole.sequence > after) replay_.push_back(std::move(whole));
          call.clear();
        }
      }
    }
    if (torn) break;
    at += record_head_bytes + payload;
  }
  last_sequence_ = committed_sequence;
  // A torn record, or a call cut short (its intact records before the tear or the end of the file).
  keep_ = call.empty() ? at : call_start;
  return true;
}

std::uint64_t write_ahead_log::last_sequence() const {
  const std::lock_guard lock(mutex_);
  return last_sequence_;
}

void write_ahead_log::encode(std::uint64_t sequence, wal_op op, bool continued, std::span<const vector_id> ids,
                             std::span<const std::uint64_t> keys, matrix_view<const float> vectors) {
  const std::size_t count = ids.size();
  const std::size_t row_bytes = dim_ * sizeof(float);
  const std::size_t payload =
      payload_fixed_bytes + ids.size_bytes() + keys.size_bytes() + (op == wal_op::remove ? 0 : count * row_bytes);
  SHOAL_CHECK(payload <= 0xFFFFFFFFu, "write-ahead log: a record of ", payload, " bytes exceeds 4 GiB");
  buffer_.assign(record_head_bytes + payload, std::byte{0});
  std::byte* p = buffer_.data() + record_head_bytes;
  const auto head = std::array<std::uint64_t, 2>{sequence, static_cast<std::uint64_t>(op) |
                                                               std::uint64_t{keys.empty() ? 0u : 1u} << 8 |
                                                               std::uint64_t{continued ? continued_flag : 0u} << 16 |
                                                               std::uint64_t{static_cast<std::uint32_t>(count)} << 32};
  std::memcpy(p, head.data(), payload_fixed_bytes);
  p += payload_fixed_bytes;
  std::memcpy(p, ids.data(), ids.size_bytes());
  p += ids.size_bytes();
  if (!keys.empty()) std::memcpy(p, keys.data(), keys.size_bytes());
  p += keys.size_bytes();
  if (op != wal_op::remove)
    for (std::size_t i = 0; i < count; ++i, p += row_bytes) std::memcpy(p, vectors.row(i), row_bytes);
  const auto payload32 = static_cast<std::uint32_t>(payload);
  const std::uint32_t crc = crc32c(buffer_.data() + record_head_bytes, payload);
  std::memcpy(buffer_.data(), &payload32, 4);
  std::memcpy(buffer_.data() + 4, &crc, 4);
}

void write_ahead_log::release_large_buffer() noexcept {
  // One call of many rows makes records of up to `per_record` rows: kept, that much memory would stay
  // with the collection for its lifetime (a 64 MB add: 64 MB more resident until it closed).
  constexpr std::size_t kept_bytes = std::size_t{1} << 20;
  if (buffer_.capacity() > kept_bytes) std::vector<std::byte>().swap(buffer_);
}

std::uint64_t write_ahead_log::append(wal_op op, std::span<const vector_id> ids, std::span<const std::uint64_t> keys,
                                      matrix_view<const float> vectors, std::size_t per_record) {
  const std::lock_guard lock(mutex_);
  SHOAL_CHECK_CODE(refusal_.empty(), errc::io_error, path_.string(), ": ", refusal_,
                   "; writes are refused until the collection is reopened");
  const std::uint64_t start_sequence = last_sequence_;
  const std::uint64_t start = end_;
  try {
    for (std::size_t first = 0; first < ids.size(); first += per_record) {
      const std::size_t count = std::min(per_record, ids.size() - first);
      encode(last_sequence_ + 1, op, first + count < ids.size(), ids.subspan(first, count),
             keys.empty() ? keys : keys.subspan(first, count),
             op == wal_op::remove ? matrix_view<const float>() : vectors.slice(first, count));
      write_all(fd_.get(), buffer_.data(), buffer_.size(), path_, "appending to the write-ahead log");
      end_ += buffer_.size();
      ++last_sequence_;
    }
    if (sync_ == wal_sync::every_write)
      SHOAL_CHECK_CODE(::fdatasync(fd_.get()) == 0, errc::io_error, path_.string(),
                       ": fdatasync failed: ", io::detail::errno_text(errno));
    check_linked();  // after the records are durable: a deletion before then is seen here
    release_large_buffer();
  } catch (...) {
    release_large_buffer();
    last_sequence_ = start_sequence;
    end_ = start;
    const auto offset = static_cast<::off_t>(start);
    if (::ftruncate(fd_.get(), offset) != 0 || ::lseek(fd_.get(), offset, SEEK_SET) != offset ||
        (sync_ == wal_sync::every_write && ::fdatasync(fd_.get()) != 0))
      refusal_ = "an earlier append failed and could not be cut back";
    throw;
  }
  return last_sequence_;
}

write_ahead_log::stale_log::stale_log(const std::filesystem::path& dir, bool read_sequence)
    : held_(dir, lock_mode::exclusive) {
  if (!read_sequence) return;
  const io::detail::input_file in(held_.path_);
  const std::vector<std::byte> bytes = read_whole(in);
  if (is_log(bytes.data(), bytes.size())) last_ = last_intact_sequence(bytes.data(), bytes.size());
}

void write_ahead_log::stale_log::remove() {
  std::error_code ec;
  std::filesystem::remove(held_.path_, ec);
  SHOAL_CHECK_CODE(!ec, errc::io_error, held_.path_.string(),
                   ": cannot remove the stale write-ahead log: ", ec.message());
}

namespace {

[[noreturn]] void log_gone(const std::filesystem::path& path, const char* how) {
  throw_error(errc::io_error,
              str(path.string(), ": the write-ahead log ", how,
                  " (its directory was deleted, moved or replaced while the collection had it open): writes and "
                  "checkpoints are refused; save() the collection into another directory to keep what it holds"));
}

}  // namespace

void write_ahead_log::check_linked() const {
  struct ::stat written {};
  if (::fstat(fd_.get(), &written) != 0 || written.st_nlink == 0) log_gone(path_, "was deleted");
}

void write_ahead_log::check_in_place() const {
  struct ::stat written {};
  struct ::stat named {};
  if (::fstat(fd_.get(), &written) != 0 || written.st_nlink == 0) log_gone(path_, "was deleted");
  if (::stat(path_.c_str(), &named) != 0 || written.st_dev != named.st_dev || written.st_ino != named.st_ino)
    log_gone(path_, "is no longer at this path");
}

void write_ahead_log::reset() {
  const std::lock_guard lock(mutex_);
  write_header();
}

}  // namespace shoal::detail
