#pragma once
// Internal: the state behind shoal::collection, shared by collection.cpp (routing, search, writes,
// replicas, rebalancing, metrics) and persist.cpp (manifest, snapshots, open).

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <new>
#include <shared_mutex>
#include <span>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include "collection/id_table.hpp"
#include "collection/metrics.hpp"
#include "collection/router.hpp"
#include "collection/wal.hpp"
#include "core/all_or_nothing.hpp"
#include "core/phase_fair_mutex.hpp"
#include "shoal/collection/collection.hpp"
#include "shoal/core/error.hpp"
#include "shoal/index/any_index.hpp"

#ifndef SHOAL_TSAN
#include <tbb/task_arena.h>
#endif

namespace shoal::detail {

/// Where a shard's work runs: its own `tbb::task_arena` of `threads` threads, or (threads = 0) the
/// caller's arena. Under SHOAL_TSAN everything runs on the calling thread (see core/parallel.hpp).
class shard_executor {
 public:
  explicit shard_executor(std::size_t threads) {
#ifndef SHOAL_TSAN
    if (threads > 0) arena_ = std::make_unique<tbb::task_arena>(static_cast<int>(threads));
#else
    (void)threads;
#endif
  }
  template <class F>
  void execute(const F& f) const {
#ifndef SHOAL_TSAN
    if (arena_) {
      arena_->execute(f);
      return;
    }
#endif
    f();
  }

 private:
#ifndef SHOAL_TSAN
  std::unique_ptr<tbb::task_arena> arena_;
#endif
};

/// The ids that writes in flight are changing. A write claims all its ids at once (waiting while any is
/// claimed by another write) and releases them when it is applied, so writes to one id never interleave
/// and claiming can never deadlock. One short critical section per write, whatever the batch size.
class id_registry {
 public:
  /// All of `ids` (distinct), or none when it runs out of memory: ids left claimed by a failed claim,
  /// which no write would release, made every later write of them wait forever (a review, session 38).
  void claim(std::span<const vector_id> ids) {
    std::unique_lock lock(mutex_);
    released_.wait(
        lock, [&] { return std::none_of(ids.begin(), ids.end(), [&](vector_id id) { return busy_.contains(id); }); });
    insert_all_or_nothing(busy_, ids);
  }
  void release(std::span<const vector_id> ids) {
    {
      const std::lock_guard lock(mutex_);
      for (const vector_id id : ids) busy_.erase(id);
    }
    released_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable released_;
  std::unordered_set<vector_id> busy_;
};

/// One copy of a shard.
struct replica_slot {
  shared_slot<any_index> index;  // null while down
  std::atomic<bool> up{true};
  std::atomic<std::int64_t> inflight{0};  // searches running on it
  std::atomic<std::uint64_t> lag{0};      // vector writes missed while down
  mutable phase_fair_mutex access;        // searches shared, writes exclusive (indexes without concurrent writes)
};

/// One shard: its replicas and the mutex that orders writes to them.
struct shard_state {
  std::vector<std::unique_ptr<replica_slot>> replicas;
  std::mutex write_mutex;   // held while a write or a rebuild touches the replicas
  bool concurrent = false;  // the index allows writes while searching
};

/// What a rebalance swaps at once: the router, the shards and the routing table built for them.
struct layout {
  explicit layout(router r) : route(std::move(r)) {}
  router route;
  std::vector<std::shared_ptr<shard_state>> shards;
  mutable phase_fair_mutex table_mutex;  // writes are not starved by size(), ids(), ... (review)
  id_table table;                        // id -> shard
  /// Searches and `collection::vector` hold it shared while they read shards. A write that moves ids to
  /// other shards locks it (and unlocks it at once) after adding them to their new shards and before
  /// removing them from their old ones: every read that might have passed a new shard before the add
  /// ends before the old copy goes (a search read the new shard, then the old one after the remove, and
  /// missed the id; a review).
  mutable phase_fair_mutex moving;
};

/// Nanoseconds as an atomic gauge.
using atomic_ns = std::atomic<std::int64_t>;

/// What the collection needs to know of its shards' index kind, read once from an empty index of the spec.
struct shard_traits {
  std::size_t min_training_rows = 0;  // any_index::min_training_rows
  bool returns_vectors = true;        // any_index::vector works (all but IVF-PQ): a re-clustering moves them
  /// `add` may refuse rows that pass the collection's own checks (IVF-PQ, refined or not: a residual or
  /// a rotated row past the norm bound), so a write asks the shards' `check_add` before it is logged.
  bool refuses_rows = false;
};

/// Room in a layout's routing table for a write's ids, promised when the write is planned (before it is
/// logged) and released when the plan goes: the inserts after the shards are written never allocate.
class table_room {
 public:
  table_room() = default;
  table_room(layout& lay, std::size_t count) : lay_(&lay), count_(count) {
    const std::unique_lock lock(lay.table_mutex);
    lay.table.promise(count);
  }
  table_room(table_room&& other) noexcept : lay_(std::exchange(other.lay_, nullptr)), count_(other.count_) {}
  table_room& operator=(table_room&& other) noexcept {
    std::swap(lay_, other.lay_);
    std::swap(count_, other.count_);
    return *this;  // `other` releases what this held
  }
  table_room(const table_room&) = delete;
  table_room& operator=(const table_room&) = delete;
  ~table_room() {
    if (lay_ == nullptr) return;
    const std::unique_lock lock(lay_->table_mutex);
    lay_->table.release(count_);
  }
  /// Releases the room now, under the table's lock (held by the caller): once the write's ids are in.
  void release_locked() const noexcept {
    if (lay_ == nullptr) return;
    lay_->table.release(count_);
    lay_ = nullptr;
  }

 private:
  mutable layout* lay_ = nullptr;  // null once released (`apply` sees the plan as const)
  std::size_t count_ = 0;
};

/// One write worked out against a layout before it changes anything (`collection_state::plan`).
struct write_plan {
  wal_op op = wal_op::add;
  table_room room;  // for the ids the write adds to the routing table
  std::span<const vector_id> ids;
  std::vector<std::uint32_t> new_shard;  // per id (not for removals)
  // Per shard: ids removed before the adds (re-added to the same shard), the rows added (indices into
  // the write's vectors) with their gathered copy and ids where the shard takes only some of them, and
  // ids removed after (they left the shard, or are removed).
  std::vector<std::vector<vector_id>> remove_first, remove_after;
  std::vector<std::vector<std::size_t>> add_rows;
  std::vector<matrix<float>> rows;
  std::vector<std::vector<vector_id>> row_ids;
  matrix_view<const float> vectors;  // the write's vectors, as given
};

struct collection_state {
  collection_options options;
  /// The `threads_per_shard` manifests record: the created collection's. An open's override
  /// (`open_options::threads_per_shard`) is this process's only (it was recorded by the next snapshot).
  std::size_t recorded_threads_per_shard = 0;
  shared_slot<layout> current;
  /// Writers hold it shared for a whole write (log + apply); snapshots and layout swaps hold it
  /// exclusively, so they see every logged write applied. Searches never take it.
  mutable phase_fair_mutex layout_mutex;
  id_registry busy_ids;  // writes to one id are serialised through it
  std::vector<std::unique_ptr<shard_executor>> executors;
  std::unique_ptr<write_ahead_log> wal;
  std::atomic<bool> trained{false};
  bool read_only = false;
  /// A write failed while applied, after it was logged: the shards may hold part of it. Writes and saves
  /// are refused from then on; reopening the directory replays the write whole.
  std::atomic<bool> diverged{false};
  /// Throws `errc::io_error` once `diverged`; `who` names the call.
  void check_not_diverged(const char* who) const {
    SHOAL_CHECK_CODE(!diverged.load(), errc::io_error, who, ": an earlier write failed while it was applied, so the ",
                     "shards may hold part of it; writes and saves are refused",
                     options.directory.empty() ? "" : " until the collection is reopened (which replays it whole)");
  }
  std::uint64_t snapshot_generation = 0;  // of the last snapshot in `options.directory`

  // Rebalancing: while `capturing`, every applied write is also recorded for the new layout.
  std::mutex capture_mutex;
  bool capturing = false;
  std::list<wal_record> captured;              // a list: each write makes its node before it logs (`write`)
  std::mutex rebalance_mutex;                  // one rebalance at a time
  std::atomic<bool> rebalance_running{false};  // a background rebalance is scheduled or running
  // `adds` + `upserts` and the number of vectors when the last rebalance took its snapshot.
  std::atomic<std::uint64_t> written_at_rebalance{0}, size_at_rebalance{0};
  /// Rebalances in a row that left the largest shard past the threshold (`rebalance_backoff_limit`
  /// at most): each doubles the writes the next automatic one waits for.
  std::atomic<unsigned> rebalance_backoff{0};
  shard_traits shard_kind;      // of options.index, from validate
  std::mutex background_mutex;  // guards `background`
  std::thread background;
  std::atomic<bool> closing{false};  // set on destruction: a running background rebalance chains no further run

  // Metrics (mutable: searches are const and count).
  std::chrono::steady_clock::time_point created = std::chrono::steady_clock::now();
  mutable latency_histogram route_latency, shard_latency, merge_latency, search_latency, write_latency;
  /// Per shard (and replica): kept here rather than in a layout, so that a rebalance, which builds a
  /// new layout, does not take Prometheus counters back to 0.
  struct shard_metrics {
    explicit shard_metrics(std::size_t replicas) : served(replicas) {}
    latency_histogram latency;
    std::vector<std::atomic<std::uint64_t>> served;  // searches served by each replica
  };
  std::vector<std::unique_ptr<shard_metrics>> shard_stats;
  mutable std::atomic<std::uint64_t> queries{0}, searches{0};
  std::atomic<std::uint64_t> adds{0}, upserts{0}, removes{0}, rebalances{0};
  mutable atomic_ns train_ns{0}, rebalance_ns{0}, checkpoint_ns{0}, rebuild_ns{0};
  std::uint64_t replayed = 0;
  std::uint64_t wal_dropped = 0;        // bytes `open` cut from the log's end (`collection_stats::wal_bytes_dropped`)
  std::vector<vector_id> replayed_ids;  // of those records, ascending, each once (`collection::replayed_ids`)

  ~collection_state() {
    closing.store(true);
    if (background.joinable()) background.join();
  }

  [[nodiscard]] const shard_executor& executor(std::size_t shard) const { return *executors[shard]; }
  /// One executor and one set of metrics per shard, as `options` says (at creation and at open).
  void add_shards() {
    for (std::size_t s = 0; s < options.shards; ++s) {
      executors.push_back(std::make_unique<shard_executor>(options.threads_per_shard));
      shard_stats.push_back(std::make_unique<shard_metrics>(options.replicas));
    }
  }
  /// A new empty layout of `options`: router untrained, every replica an empty index from the spec.
  [[nodiscard]] std::shared_ptr<layout> empty_layout() const;
  /// Works one validated write out against `lay` — which shard each id leaves and joins, and each
  /// shard's rows — changing nothing. Every allocation of the write but the shards' own and the routing
  /// table's happens here: out of memory here leaves the collection as it was (`write` plans before it
  /// logs). `routed`: the vectors as the router sees them (unit rows for cosine), computed once by the
  /// caller. The write's ids must stay claimed (`busy_ids`) and the layout current until it is applied.
  [[nodiscard]] write_plan plan(layout& lay, wal_op op, matrix_view<const float> vectors,
                                matrix_view<const float> routed, std::span<const vector_id> ids,
                                std::span<const std::uint64_t> keys) const;
  /// Applies a planned write (no logging, no capture): the common tail of writes and log replay.
  void apply(layout& lay, const write_plan& w);
  /// `apply(lay, plan(...))`.
  void apply(layout& lay, wal_op op, matrix_view<const float> vectors, matrix_view<const float> routed,
             std::span<const vector_id> ids, std::span<const std::uint64_t> keys) {
    apply(lay, plan(lay, op, vectors, routed, ids, keys));
  }
  /// The full write path: checks, id claims, log, capture, apply.
  void write(wal_op op, matrix_view<const float> vectors, std::span<const vector_id> ids,
             std::span<const std::uint64_t> keys);
  /// Writes a snapshot of `lay` into `dir` (caller holds `layout_mutex` exclusively).
  void write_snapshot(const layout& lay, const std::filesystem::path& dir, std::uint64_t gen,
                      std::uint64_t wal_sequence) const;
  /// `write_snapshot`'s files: the shards of generation `gen`, then the manifest (`manifest_replaced` set
  /// when its commit fails after the rename, which leaves the new manifest in place).
  void write_generation(const layout& lay, const std::filesystem::path& dir, std::uint64_t gen,
                        std::uint64_t wal_sequence, bool& manifest_replaced) const;
  /// Which parts of `lay` still need `train`: the semantic router, any shard's index.
  struct untrained {
    bool router = false, shards = false;
  };
  [[nodiscard]] untrained untrained_parts(const layout& lay) const;
  [[nodiscard]] bool all_trained(const layout& lay) const;
};

/// Threads of one shard's arena at most (the manifest records the count in 32 bits, the arena takes an int).
inline constexpr std::size_t max_threads_per_shard = 4096;
/// Checks the options a collection is created (or a manifest opened) with; throws naming the bad one.
/// Returns the traits of the shards' index, built once to check the spec.
shard_traits validate(const collection_options& o);
/// Re-clusters a semantic or hybrid collection (see `collection::rebalance`).
void rebalance(collection_state& st);
/// Shards smaller than this never trigger an automatic rebalance.
inline constexpr std::size_t min_rebalance_shard = 1000;
/// An automatic rebalance waits until the vectors added or upserted since the last one reach 1/this of
/// the collection's size then: a layout that stays out of balance after re-clustering (data that k-means
/// cannot split evenly, such as many copies of one vector) would otherwise re-cluster on every add.
inline constexpr std::uint64_t rebalance_growth_divisor = 10;
/// After runs that could not bring the collection under the threshold, the wait doubles per such run,
/// up to 2^this tenths (a review: writes crowding one region started 26 full re-clusterings while the
/// collection grew ninefold, none of which helped). Kept low: a layout that becomes fixable after such
/// runs waits the longer wait too (only a run that ends under the threshold resets it), which at 16
/// tenths was 14,800 adds into a collection of 2,000 (a second review). A run is judged by the layout it
/// built, before the writes captured while it ran are replayed: writes that crowd a region again during
/// a run that did split the data evenly do not make that run count as futile.
inline constexpr unsigned rebalance_backoff_limit = 2;
/// Whether the `largest` of `shards` shards holding `total` vectors (and at least `min_rebalance_shard`
/// itself) is past `threshold` × the mean.
[[nodiscard]] bool over_threshold(double threshold, std::size_t largest, std::size_t total, std::size_t shards);
/// `over_threshold` of the live layout's shard sizes and `rebalance_threshold`.
[[nodiscard]] bool over_threshold(const collection_state& st);
/// Whether an automatic rebalance is due: `rebalance_threshold` set on a semantic or hybrid collection
/// that is not closing, a tenth of its size added or upserted since the last run (2^k tenths after k runs
/// in a row whose layout was itself `over_threshold`), and `over_threshold`.
[[nodiscard]] bool drifted(const collection_state& st);
/// Runs one background rebalance starts at most, each after the last left the collection `drifted` by
/// writes that arrived during it.
inline constexpr std::size_t max_chained_rebalances = 4;

/// `f(index)` for a read of one replica: under the replica's shared lock when the shard's index does not
/// allow writes concurrent with reads.
template <class F>
decltype(auto) read_replica(const shard_state& shard, const replica_slot& rep, const any_index& index, const F& f) {
  if (shard.concurrent) return f(index);
  const std::shared_lock lock(rep.access);
  return f(index);
}

/// Runs `f(index)` on every live replica of `shard` in replica order (caller holds the shard's write
/// mutex). A replica that fails after another succeeded is taken down (its copy has diverged and is
/// rebuilt by `restore`); a failure on the first replica tried is rethrown. Out of memory, the first
/// replica may hold part of the write (an HNSW index then refuses every call): it is taken down too
/// where another replica stays up to answer searches (a review: one replica out of memory made every
/// search of the collection fail while its peer, which never saw the write, was sound).
template <class F>
void for_each_live_replica(shard_state& shard, std::uint64_t vectors, const F& f) {
  bool applied = false;
  const auto take_down = [&](replica_slot& rep) {
    rep.up.store(false);
    rep.index.store(nullptr);
    rep.lag.fetch_add(vectors, std::memory_order_relaxed);
  };
  for (const auto& rep : shard.replicas) {
    std::shared_ptr<any_index> index = rep->up.load() ? rep->index.load() : nullptr;
    if (!index) {
      rep->lag.fetch_add(vectors, std::memory_order_relaxed);
      continue;
    }
    try {
      if (shard.concurrent) {
        f(*index);
      } else {
        const std::unique_lock lock(rep->access);
        f(*index);
      }
      applied = true;
    } catch (const std::bad_alloc&) {
      const bool peer_up = std::any_of(shard.replicas.begin(), shard.replicas.end(),
                                       [&](const auto& other) { return other != rep && other->up.load(); });
      if (applied || peer_up) take_down(*rep);
      if (!applied) throw;
    } catch (...) {
      if (!applied) throw;
      take_down(*rep);
    }
  }
}

/// File name of shard `s` in snapshot generation `generation`.
[[nodiscard]] std::string shard_file_name(std::size_t s, std::uint64_t generation);
/// One past the highest generation of the shard files in `dir` (so that a new snapshot never
/// overwrites a file that the current manifest names).
[[nodiscard]] std::uint64_t next_generation(const std::filesystem::path& dir);
/// The name of the directories `collection::restore` copies a replica through, inside the collection's
/// directory (`<prefix>XXXXXX`, mkdtemp), or the system's temporary directory for one without a directory.
inline constexpr const char* restore_dir_prefix = "restore-";
/// Deletes what a process that died while writing `dir` left there: the temporaries of the manifest and
/// shard files (`<target>.tmp.<pid>.<n>`) and restore's copy directories. Only the directory's
/// exclusive holder may call it (best effort: leftovers cost disk, not data).
void remove_leftovers(const std::filesystem::path& dir) noexcept;
inline constexpr const char* manifest_file_name = "MANIFEST.shoal";

}  // namespace shoal::detail
