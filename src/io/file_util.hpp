#pragma once
// Internal to src/io: the checked file access that the .fvecs/.ivecs/.bvecs and .npy code share.
//  - input_file: open once, size once, positioned reads that either deliver every byte or throw;
//  - atomic_writer: buffered writes into a temporary beside the target, then fsync and rename, so a
//    reader never sees a half-written file and a failed write leaves the old file intact;
//  - read_values / convert_values: packed little-endian elements into a typed destination, chunked so
//    that converting a large file needs only a small buffer on top of the result.
// POSIX underneath: errno gives messages worth reading, pread needs no seek state, fsync is POSIX anyway.

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "shoal/core/error.hpp"
#include "shoal/core/types.hpp"

static_assert(std::endian::native == std::endian::little,
              "shoal's .fvecs/.ivecs/.bvecs/.npy I/O copies little-endian file data as is; a big-endian host "
              "needs byte swapping added in src/io");

namespace shoal::io::detail {

using shoal::max_dim;

/// Bytes per read or write call on the chunked paths: system-call overhead vanishes, the buffer stays in cache.
inline constexpr std::size_t chunk_bytes = std::size_t{4} << 20;

/// strerror's text without strerror's shared buffer.
inline std::string errno_text(int err) { return std::generic_category().message(err); }

/// Owns a POSIX file descriptor.
class unique_fd {
 public:
  unique_fd() = default;
  explicit unique_fd(int fd) noexcept : fd_(fd) {}
  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;
  unique_fd(unique_fd&& other) noexcept : fd_(other.release()) {}
  unique_fd& operator=(unique_fd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  ~unique_fd() { reset(); }
  [[nodiscard]] int get() const noexcept { return fd_; }
  /// Gives up ownership, e.g. to close explicitly and check the result.
  int release() noexcept { return std::exchange(fd_, -1); }
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

/// `::open` retried on EINTR.
inline int open_retrying(const char* path, int flags, ::mode_t mode = 0) noexcept {
  int fd = -1;
  do fd = ::open(path, flags | O_CLOEXEC, mode);
  while (fd < 0 && errno == EINTR);
  return fd;
}

/// A regular file opened for reading; its size is taken once, at open.
class input_file {
 public:
  /// Throws `errc::io_error` (naming the file and the OS's reason) if it cannot be opened or is not a regular file.
  explicit input_file(const std::filesystem::path& path) : name_(path.string()) {
    // O_NONBLOCK: a FIFO must not block the open; it is then refused as not a regular file.
    fd_.reset(open_retrying(path.c_str(), O_RDONLY | O_NONBLOCK));
    SHOAL_CHECK_CODE(fd_.get() >= 0, errc::io_error, name_, ": cannot open: ", errno_text(errno));
    struct ::stat info {};
    SHOAL_CHECK_CODE(::fstat(fd_.get(), &info) == 0, errc::io_error, name_, ": cannot stat: ", errno_text(errno));
    SHOAL_CHECK_CODE(S_ISREG(info.st_mode), errc::io_error, name_, ": not a regular file");
    size_ = static_cast<std::uint64_t>(info.st_size);
  }

  [[nodiscard]] std::uint64_t size() const noexcept { return size_; }
  /// The path as given, for messages.
  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  /// The open descriptor (owned by this object), e.g. to map the file.
  [[nodiscard]] int fd() const noexcept { return fd_.get(); }

  /// Reads exactly `bytes` bytes at `offset` into `dst`. Throws `errc::io_error` when the OS refuses and
  /// `errc::corrupt_file` when the file ends first (it shrank after it was opened).
  void read_at(std::uint64_t offset, void* dst, std::size_t bytes) const {
    auto* out = static_cast<std::byte*>(dst);
    while (bytes > 0) {
      const ::ssize_t got = ::pread(fd_.get(), out, bytes, static_cast<::off_t>(offset));
      if (got < 0 && errno == EINTR) continue;
      SHOAL_CHECK_CODE(got >= 0, errc::io_error, name_, ": read failed at byte ", offset, ": ", errno_text(errno));
      SHOAL_CHECK_CODE(got > 0, errc::corrupt_file, name_, ": truncated: ended at byte ", offset, " with ", bytes,
                       " bytes still expected (did it change while being read?)");
      out += got;
      offset += static_cast<std::uint64_t>(got);
      bytes -= static_cast<std::size_t>(got);
    }
  }

  /// One trivially copyable value at `offset`.
  template <class T>
  [[nodiscard]] T read_value(std::uint64_t offset) const {
    static_assert(std::is_trivially_copyable_v<T>);
    T value{};
    read_at(offset, &value, sizeof value);
    return value;
  }

 private:
  std::string name_;
  unique_fd fd_;
  std::uint64_t size_ = 0;
};

/// Converts `count` packed `Stored` values at `src` (any alignment) to `Out`: a copy when the types agree,
/// otherwise `static_cast<Out>` per value (a `Stored` class type supplies an explicit conversion).
template <class Stored, class Out>
void convert_values(const std::byte* src, std::size_t count, Out* dst) noexcept {
  if constexpr (std::is_same_v<Stored, Out>) {
    std::memcpy(dst, src, count * sizeof(Out));
  } else {
    for (std::size_t i = 0; i < count; ++i) {
      Stored value;
      std::memcpy(&value, src + i * sizeof(Stored), sizeof(Stored));
      dst[i] = static_cast<Out>(value);
    }
  }
}

/// Reads `count` packed `Stored` values at `offset` of `file` into `dst` as `Out`: straight into `dst` when
/// the types agree, otherwise through a chunk-sized buffer.
template <class Stored, class Out>
void read_values(const input_file& file, std::uint64_t offset, std::size_t count, Out* dst) {
  if constexpr (std::is_same_v<Stored, Out>) {
    file.read_at(offset, dst, count * sizeof(Out));
  } else {
    const std::size_t per_chunk = std::max<std::size_t>(1, chunk_bytes / sizeof(Stored));
    std::vector<std::byte> buffer(std::min(count, per_chunk) * sizeof(Stored));
    for (std::size_t done = 0; done < count;) {
      const std::size_t n = std::min(count - done, per_chunk);
      file.read_at(offset + done * sizeof(Stored), buffer.data(), n * sizeof(Stored));
      convert_values<Stored>(buffer.data(), n, dst + done);
      done += n;
    }
  }
}

/// fsyncs directory `dir`, which persists the entries just created, renamed or removed in it. Best
/// effort: what the entries name is already safe, and some file systems refuse to fsync a directory.
inline void sync_directory(const std::filesystem::path& dir) {
  const unique_fd fd(open_retrying(dir.c_str(), O_RDONLY | O_DIRECTORY));
  if (fd.get() >= 0) (void)::fsync(fd.get());
}

/// The names in directory `dir` (not "." and ".."); none when it cannot be read. Through opendir /
/// readdir, not `std::filesystem::directory_iterator`: libstdc++ 12 allocates inside noexcept functions
/// there, so out of memory while listing a directory ended the process (`std::terminate`) where it
/// should throw `std::bad_alloc` (a review: a quarter to a third of the allocation points of a
/// multi-modal store's `save` aborted). Out of memory here throws, with the directory closed.
inline std::vector<std::string> directory_entries(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  const std::unique_ptr<::DIR, int (*)(::DIR*)> d(::opendir(dir.c_str()), &::closedir);
  if (d == nullptr) return names;
  while (const ::dirent* e = ::readdir(d.get())) {
    const std::string_view name = e->d_name;
    if (name != "." && name != "..") names.emplace_back(name);
  }
  return names;
}

/// Removes `path` and, if it is a directory (not a link to one), everything in it. Best effort: what
/// cannot be removed stays. `std::filesystem::remove_all` lists directories as above.
inline void remove_tree(const std::filesystem::path& path) {
  struct ::stat st {};
  if (::lstat(path.c_str(), &st) != 0) return;
  if (S_ISDIR(st.st_mode))
    for (const std::string& name : directory_entries(path)) remove_tree(path / name);
  (void)std::remove(path.c_str());  // unlink or rmdir
}

/// `std::filesystem::create_directories(dir, ec)`, then an fsync of the parent of each directory it
/// created: a directory's own entry lives in its parent, so without it a power loss could take away the
/// new directory with the files fsynced inside it (a review: a collection's `wal.log` acknowledged in a
/// directory whose entry was never synced). Best effort, as `sync_directory`.
inline void create_directories_durably(const std::filesystem::path& dir, std::error_code& ec) {
  std::vector<std::filesystem::path> missing;  // deepest first
  std::error_code probe;
  for (std::filesystem::path p = dir.has_filename() ? dir : dir.parent_path(); !p.empty();) {
    if (std::filesystem::exists(p, probe)) break;
    missing.push_back(p);
    const std::filesystem::path up = p.parent_path();
    if (up == p) break;
    p = up;
  }
  std::filesystem::create_directories(dir, ec);
  if (ec) return;
  for (const std::filesystem::path& p : missing) sync_directory(p.has_parent_path() ? p.parent_path() : ".");
}

/// The file a save replaces: where a symbolic link leads (followed to the end), not the link itself.
/// Renaming over the link replaced it with a regular file and left its target as it was (a "current →
/// v2" link: a review, session 38). A link that leads nowhere or cannot be followed: the path itself.
inline std::filesystem::path through_links(const std::filesystem::path& p) {
  std::error_code ec;
  if (!std::filesystem::is_symlink(p, ec)) return p;
  std::filesystem::path real = std::filesystem::canonical(p, ec);
  return ec ? p : real;
}

/// Writes a file atomically: the bytes go to `<target>.tmp.<pid>.<n>` in the same directory (the target's
/// name cut short where the whole would exceed NAME_MAX), and `commit()` flushes, fsyncs and renames it
/// over the target (where a symbolic link leads: `through_links`), which keeps its permission bits.
/// Destroyed without a commit (an exception on the way), it removes the temporary and leaves any
/// existing target untouched. Every failure is `errc::io_error`, but an empty path or a directory is
/// refused at once as `errc::invalid_argument` (both were written in full first, and an empty path's
/// temporary went to the current directory as ".tmp.<pid>.<n>": a review).
class atomic_writer {
 public:
  explicit atomic_writer(const std::filesystem::path& target)
      : target_(writable_target(target)), temp_(temporary_name(target_)), buffer_(new std::byte[chunk_bytes]) {
    fd_.reset(open_retrying(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0666));
    SHOAL_CHECK_CODE(fd_.get() >= 0, errc::io_error, target_.string(), ": cannot create the temporary file ",
                     temp_.string(), ": ", errno_text(errno));
    // A file rewritten keeps its mode: a target made private (0600) must not come back world-readable.
    struct ::stat existing {};
    if (::stat(target_.c_str(), &existing) == 0) (void)::fchmod(fd_.get(), existing.st_mode & 07777);
  }
  atomic_writer(const atomic_writer&) = delete;
  atomic_writer& operator=(const atomic_writer&) = delete;
  ~atomic_writer() {
    if (committed_) return;
    fd_.reset();
    ::unlink(temp_.c_str());
  }

  /// `through_links(target)`, checked to name a file.
  static std::filesystem::path writable_target(const std::filesystem::path& target) {
    SHOAL_CHECK(!target.empty(), "cannot save to an empty path");
    std::filesystem::path real = through_links(target);
    std::error_code ec;
    SHOAL_CHECK(!std::filesystem::is_directory(real, ec), real.string(), " is a directory, not a file to save to");
    return real;
  }

  /// Appends `bytes` bytes from `data`.
  void write(const void* data, std::size_t bytes) {
    const auto* in = static_cast<const std::byte*>(data);
    if (used_ + bytes > chunk_bytes) flush();
    if (bytes >= chunk_bytes) {
      write_fully(in, bytes);
    } else {
      std::memcpy(buffer_.get() + used_, in, bytes);
      used_ += bytes;
    }
  }

  /// Appends one trivially copyable value as its in-memory (little-endian) bytes.
  template <class T>
  void write_value(const T& value) {
    static_assert(std::is_trivially_copyable_v<T>);
    write(&value, sizeof value);
  }

  /// Hands the buffered bytes to the OS (the temporary file then holds everything written so far).
  void flush() {
    write_fully(buffer_.get(), used_);
    used_ = 0;
  }

  /// Whether `commit` renamed the temporary over the target (it may still fail after, persisting that),
  /// or may have: a failed rename whose temporary is gone.
  [[nodiscard]] bool renamed() const noexcept { return committed_; }

  /// Bytes written so far (buffered or not).
  [[nodiscard]] std::uint64_t bytes_written() const noexcept { return written_ + used_; }

  /// Makes the written bytes the target's content: flush, fsync, close, rename.
  void commit() {
    flush();
    SHOAL_CHECK_CODE(::fsync(fd_.get()) == 0, errc::io_error, target_.string(), ": fsync of ", temp_.string(),
                     " failed: ", errno_text(errno));
    // close() reports deferred write errors on some file systems (NFS), so its result counts too.
    SHOAL_CHECK_CODE(::close(fd_.release()) == 0, errc::io_error, target_.string(), ": closing ", temp_.string(),
                     " failed: ", errno_text(errno));
    std::error_code ec;
    std::filesystem::rename(temp_, target_, ec);
    // A rename that reports an error with the temporary gone may have happened (NFS: a lost reply, the
    // retry answered ENOENT): `renamed()` then says so, so that a caller keeps what the target may name.
    if (ec) {
      std::error_code missing;
      committed_ = !std::filesystem::exists(temp_, missing) && !missing;
    }
    SHOAL_CHECK_CODE(!ec, errc::io_error, target_.string(), ": cannot rename ", temp_.string(),
                     " over it: ", ec.message());
    committed_ = true;
    sync_directory();
  }

 private:
  static std::filesystem::path temporary_name(const std::filesystem::path& target) {
    static std::atomic<unsigned> counter{0};  // several writers of one target in one process stay apart
    constexpr std::size_t name_max = 255;     // bytes in one path component (NAME_MAX on Linux)
    const std::string suffix = ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter.fetch_add(1));
    std::string name = target.filename().string();
    if (name.size() + suffix.size() > name_max) name.resize(name_max - suffix.size());
    return target.parent_path() / (name + suffix);
  }

  void write_fully(const std::byte* data, std::size_t bytes) {
    while (bytes > 0) {
      const ::ssize_t put = ::write(fd_.get(), data, bytes);
      if (put < 0 && errno == EINTR) continue;
      SHOAL_CHECK_CODE(put > 0, errc::io_error, target_.string(), ": writing ", temp_.string(),
                       " failed: ", errno_text(put < 0 ? errno : EIO));
      data += put;
      bytes -= static_cast<std::size_t>(put);
      written_ += static_cast<std::uint64_t>(put);
    }
  }

  /// Persists the rename itself.
  void sync_directory() const { io::detail::sync_directory(target_.has_parent_path() ? target_.parent_path() : "."); }

  std::filesystem::path target_;
  std::filesystem::path temp_;
  std::unique_ptr<std::byte[]> buffer_;
  std::size_t used_ = 0;
  std::uint64_t written_ = 0;  // bytes handed to the OS
  unique_fd fd_;
  bool committed_ = false;
};

}  // namespace shoal::io::detail
