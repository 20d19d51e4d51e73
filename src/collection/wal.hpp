#pragma once
// Internal: a collection's write-ahead log (`<dir>/wal.log`).
//
// Layout (little-endian):
//   header (24 bytes): magic "SHOALWAL", u32 version (1), u32 dim, u64 reserved (0)
//   records, each: u32 payload_bytes, u32 crc32c(payload), payload:
//     u64 sequence, u8 op (1 add, 2 upsert, 3 remove), u8 has_keys, u16 flags, u32 count,
//     u64 ids[count], u64 keys[count] if has_keys, f32 vectors[count * dim] unless op is remove.
// Sequence numbers increase by one per record. One write call becomes several records when it is larger
// than a record may be (`append`'s `per_record`); every record of a call but its last has flag bit 0
// ("continued") set, and no other flag bit is defined. Logs written before the flag existed hold 0 there:
// each of their records is a whole call. A collection's manifest records the last sequence its
// snapshot contains; replay applies only later records, so a crash between writing a snapshot and
// emptying the log replays nothing twice.
//
// A torn last record — the payload runs past the end of the file, or its checksum fails and it ends
// exactly at the end of the file — is the trace of a write whose fsync never completed, i.e. a write
// that was never acknowledged: it is dropped and the file truncated before it. So are the records of
// its call before it (the "continued" ones right before the tear), and the records of a call whose last
// record was never written (the file ends on a "continued" record): a call is replayed whole or not at
// all. A record that runs past the end counts as torn only if what it holds of its own header agrees
// with its size field (and its sequence follows the previous record's): a size field damaged in the
// middle of the log must not pass for a torn tail, which would silently drop every later, acknowledged
// record. A damaged record that no intact record follows (any later offset holding a record with a
// plausible header, a later sequence and a matching checksum) is torn too, whatever the damage: the
// pages of the last append can reach the disk in any order. Any other damage is `errc::corrupt_file`, and
// so is a first record after the snapshot's sequence S that is not S + 1 (records lost in between). A
// log that cannot hold a record (all zeros, or no longer than a header and the beginning of one) is an
// empty log. A failed append cuts the log back (see `append`), so a half-written record is only ever the
// last one.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "io/file_util.hpp"
#include "shoal/collection/collection.hpp"
#include "shoal/core/types.hpp"

namespace shoal::detail {

enum class wal_op : std::uint8_t { add = 1, upsert = 2, remove = 3 };

struct wal_record {
  std::uint64_t sequence = 0;
  wal_op op = wal_op::add;
  std::vector<vector_id> ids;
  std::vector<std::uint64_t> keys;  // empty: none given
  matrix<float> vectors;            // empty for remove
};

class write_ahead_log {
 public:
  static constexpr const char* file_name = "wal.log";

  /// How the log's file lock is held while the log is open (flock(2), released when it closes): one
  /// collection writes a directory, or any number of read-only (memory-mapped) ones read it.
  enum class lock_mode { exclusive, shared };

  /// `<dir>/wal.log` opened and locked as `mode` says (created when missing), not yet read. A collection
  /// opening a directory takes it before it reads the manifest, so that the snapshot it reads is the one
  /// the log continues (a manifest read before the lock could name shard files that a checkpoint of the
  /// directory's holder deleted before the lock was free). Throws `errc::io_error` when the lock is held
  /// elsewhere (another collection has the directory open for writing, or for reading when `mode` is
  /// exclusive). A shared (reading) lock works on a read-only log: it creates at most an empty file to
  /// lock, and none on a read-only file system.
  class held_log {
   public:
    held_log(const std::filesystem::path& dir, lock_mode mode);

   private:
    friend class write_ahead_log;
    std::filesystem::path path_;
    io::detail::unique_fd fd_;  // closed: a reader on a read-only file system that holds no log
    bool shared_;
  };
  /// Reads the `held` log's records and keeps those with sequence > `after` for `take_replay()`;
  /// truncates a torn tail. A shared (reading) log writes nothing — others may be reading the file under
  /// the same lock — and leaves the header or the cut of a torn tail to the next exclusive open; it
  /// takes no appends.
  write_ahead_log(held_log&& held, std::size_t dim, wal_sync sync, std::uint64_t after);
  class stale_log;
  /// A new collection's empty log, in place of the `locked` one (whatever it held is dropped): the
  /// directory stays locked from the check that it holds no collection on, so that a second collection
  /// created there at the same time fails without touching it. Sequences start at 1.
  write_ahead_log(stale_log&& locked, std::size_t dim, wal_sync sync);
  write_ahead_log(const write_ahead_log&) = delete;
  write_ahead_log& operator=(const write_ahead_log&) = delete;

  /// The records newer than the snapshot, in log order (moved out; empty after the first call).
  [[nodiscard]] std::vector<wal_record> take_replay() { return std::move(replay_); }
  /// Bytes of a torn tail dropped when the log was opened.
  [[nodiscard]] std::uint64_t dropped_bytes() const noexcept { return dropped_; }
  /// Sequence of the last record written or read (0: none yet).
  [[nodiscard]] std::uint64_t last_sequence() const;

  /// Appends the records of one write call — its ids (keys, rows) in runs of at most `per_record`, one
  /// record each, all but the last flagged "continued" so that a crash part way through is not replayed
  /// in part — and makes them durable as the sync policy says, all or nothing: when a write or the
  /// sync fails (a full disk, a file size limit), the log is cut back to where the call began, so no
  /// half-written record is left for later records to follow (the next open would have to refuse the
  /// log as corrupt) and no part of a failed call is replayed. If even the cut fails, every later append
  /// throws. Returns the last record's sequence number. Thread-safe. Throws `errc::io_error`.
  std::uint64_t append(wal_op op, std::span<const vector_id> ids, std::span<const std::uint64_t> keys,
                       matrix_view<const float> vectors, std::size_t per_record);

  /// The log a collection left in a directory, for a caller about to replace what the directory holds
  /// (a save into it, a new collection there). Construction locks it where it lies (creating an empty
  /// one where there is none, so that two callers replacing the same directory at once exclude each
  /// other: one fails, having written nothing; a lock taken on a log its holder removed meanwhile is
  /// taken again on the one the path names) and reads the last
  /// sequence of its intact records; a snapshot written there must hold at least that sequence, so that
  /// none of them can replay onto it, and `remove()` deletes the log once the snapshot's manifest is in
  /// place. A failure or crash before then leaves the previous collection whole, its log included; one
  /// after leaves a log that replays nothing (`open` drops a log of another dimension whose records the
  /// snapshot holds). The lock is held until destruction.
  class stale_log {
   public:
    /// Throws `errc::io_error` while a collection has the directory open (its acknowledged writes would
    /// be lost with its log), or when the log cannot be read. Without `read_sequence` the log is locked
    /// but not read (`last_sequence()` is 0): for a caller that writes no snapshot the log could replay
    /// onto, such as a new collection, which would otherwise read a leftover log whole only to delete it.
    explicit stale_log(const std::filesystem::path& dir, bool read_sequence = true);
    /// 0 when there is no log, or it holds no intact record.
    [[nodiscard]] std::uint64_t last_sequence() const noexcept { return last_; }
    /// Deletes the log (a caller that later locks the deleted file sees it gone and locks the path's
    /// new one). Throws `errc::io_error`.
    void remove();

   private:
    friend class write_ahead_log;
    held_log held_;
    std::uint64_t last_ = 0;
  };

  /// Empties the log (after a snapshot that holds every record); sequences continue from the last. A
  /// failure leaves the log refusing appends until the collection is reopened.
  void reset();

  /// Throws `errc::io_error` unless the log's path still names the file it writes: a directory deleted,
  /// moved or replaced under an open collection takes the log (and its lock) away, so that writes
  /// acknowledged into it were lost or landed in the moved copy, a checkpoint recreated the directory
  /// without a log, and a second collection could open the path for writing (a review: 100 of 300
  /// acknowledged vectors missing after a reopen). A snapshot into the collection's directory checks
  /// it before it is written.
  void check_in_place() const;
  /// Throws `errc::io_error` when the log file has been deleted. `append` checks it after each call's
  /// records are durable, and cuts them back when it fails: one fstat (about 1.4 µs on this VM). Checking
  /// the path as well (`check_in_place`, a path lookup) cost 2.8 µs per call, more than the 2.3 µs of a
  /// one-vector add under `os_buffered` (`benchmarks/results/wal-append-cost.cpp`); a moved directory keeps the writes
  /// in its log, and the next checkpoint refuses.
  void check_linked() const;

 private:
  void write_header();
  /// Writes the header of a new or replaced log, or cuts the torn tail `read_records` found; then
  /// places the end for appends. An exclusive open's last step.
  void repair();
  /// False when the log holds nothing to keep — another dimension's whose records all precede `after` (a
  /// log a save into this directory replaced, see `stale_log`), or one that cannot hold a record (a
  /// header cut short, all zeros) — so the caller starts it afresh.
  [[nodiscard]] bool read_records(std::uint64_t after);
  /// Frees `buffer_` when a large call grew it (under mutex_).
  void release_large_buffer() noexcept;
  /// One record into `buffer_`.
  void encode(std::uint64_t sequence, wal_op op, bool continued, std::span<const vector_id> ids,
              std::span<const std::uint64_t> keys, matrix_view<const float> vectors);

  std::filesystem::path path_;
  std::size_t dim_;
  wal_sync sync_;
  io::detail::unique_fd fd_;
  mutable std::mutex mutex_;
  std::uint64_t last_sequence_ = 0;
  std::uint64_t end_ = 0;  // bytes of whole records and header: where the next record goes
  std::string refusal_;    // why appends are refused until the collection is reopened (empty: they are not)
  std::uint64_t dropped_ = 0;
  bool zeroed_ = false;     // the log read at open held only zeros
  std::uint64_t keep_ = 0;  // read_records: bytes of whole calls, where a torn tail is cut
  bool rewrite_ = false;    // the log needs a new header (empty, or another dimension's, see stale_log)
  std::vector<wal_record> replay_;
  std::vector<std::byte> buffer_;  // record being written (under mutex_); released after a large call
};

}  // namespace shoal::detail
