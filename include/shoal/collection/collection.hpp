#pragma once
/// \file
/// `shoal::collection`: vectors partitioned into shards, each shard an `any_index` built from one factory
/// spec, served on oneTBB arenas, replicated, updated online, persisted with a write-ahead log, observed
/// through Prometheus metrics. The in-process form of a distributed vector database: the MPI layer puts
/// the same shards on many machines.
///
/// ```
/// shoal::collection_options o;
/// o.dim = 512;
/// o.metric = shoal::metric::cosine;
/// o.index = "HNSW32";
/// o.policy = shoal::sharding::semantic;
/// o.shards = 8;
/// o.directory = "/var/lib/shoal/images";   // optional: snapshots + write-ahead log live here
/// shoal::collection images(o);
/// images.train(sample);                       // semantic routing: k-means over the sample
/// images.add(vectors, ids);
/// auto hits = images.search(queries, 10, {.ef = 128, .shard_probe = 2});
/// images.upsert(new_vectors, their_ids);      // seen by every search that starts after it returns
/// images.checkpoint();                        // snapshot the shards, empty the log
/// ```
///
/// ## Consistency model
/// - **Read-your-writes.** `add`, `upsert` and `remove` return after the change is applied to every live
///   replica of the shards involved (and, with a directory, logged and fsynced). Every search that
///   starts after the call returns sees it, whichever replica serves it.
/// - **Writes to one id are serialised** (a write claims its ids until it is applied); writes to different ids run
/// concurrently, and
///   writes to one shard reach all its replicas in the same order.
/// - **A search concurrent with a write** sees the id either before or after the change. Results never
///   hold an id twice (an upsert that moves an id between shards is merged by id), but a concurrent
///   search may miss an id whose upsert is replacing it inside one shard. An upsert that moves an id to
///   another shard adds it there, then waits for the searches already reading shards to end before it
///   removes the old copy: no concurrent search misses it (new searches wait meanwhile, for as long as
///   the longest search then running).
/// - **Replicas of an approximate index may differ slightly** (parallel HNSW insertion is not
///   deterministic across replicas), so two searches served by different replicas may differ in the
///   same way two builds of the index would. Flat replicas are identical.
///
/// ## Thread safety
/// Every member may be called concurrently from any number of threads, except construction, `open`,
/// moves and destruction. Shards whose index allows concurrent writes and searches (HNSW, IVF) serve
/// searches while they are written to; flat shards take a reader-writer lock per replica.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shoal/core/neighbors.hpp"
#include "shoal/core/params.hpp"
#include "shoal/core/types.hpp"
#include "shoal/io/format.hpp"

namespace shoal {

/// How a collection assigns vectors to shards (recorded at creation; it cannot change later).
enum class sharding {
  /// `mix(id) % shards` (splitmix64 finaliser): balanced for any id distribution; every search visits
  /// every shard.
  hash,
  /// Shard i owns keys in `[range_bounds[i-1], range_bounds[i])`; the key is the id, or a caller-given
  /// key such as a timestamp (`add(vectors, ids, keys)`). Every search visits every shard.
  range,
  /// k-means over a training sample gives one centroid per shard; a vector goes to the shard of its
  /// nearest centroid, and a search visits only the `shard_probe` nearest shards of each query.
  semantic,
  /// `groups` semantic groups (k-means), each of `shards / groups` shards chosen by `mix(id)` within the
  /// group: semantic locality for routing, hashing for balance. `shard_probe` counts groups.
  hybrid,
};

/// "hash", "range", "semantic", "hybrid".
[[nodiscard]] const char* sharding_name(sharding s) noexcept;
/// Parses a `sharding_name`; throws `errc::invalid_argument` naming the text otherwise.
[[nodiscard]] sharding parse_sharding(std::string_view name);

/// When a collection with a directory makes its write-ahead log durable.
enum class wal_sync {
  /// fsync before every write call returns: an acknowledged write survives a process kill and a power
  /// loss (the default).
  every_write,
  /// write(2) only: an acknowledged write survives a process kill (it is in the kernel's page cache),
  /// not a power loss. Much faster for small writes.
  os_buffered,
};

/// How a collection is laid out; fixed at creation and recorded in its manifest.
struct collection_options {
  /// Dimension of every vector (≥ 1).
  std::size_t dim = 0;
  shoal::metric metric = shoal::metric::l2;
  /// Factory spec of every shard's index (see `make_index`), e.g. "HNSW32", "IVF256,Flat", "Flat".
  std::string index = "HNSW32";
  sharding policy = sharding::hash;
  /// Number of shards (1 to 4096).
  std::size_t shards = 1;
  /// Copies of every shard (1 to 16). Reads go to the least-loaded live replica.
  std::size_t replicas = 1;
  /// `hybrid` only: number of semantic groups; must divide `shards`.
  std::size_t groups = 0;
  /// `range` only: `shards - 1` strictly increasing split keys (shard 0 owns keys below the first).
  std::vector<std::uint64_t> range_bounds;
  /// Threads of each shard's own `tbb::task_arena`; 0 (the default) runs every shard on the calling
  /// thread's arena (one shared pool).
  std::size_t threads_per_shard = 0;
  /// Seed of the semantic k-means (same seed and sample → same routing).
  std::uint64_t seed = 42;
  /// `semantic` / `hybrid`: balanced k-means for the router (`kmeans_params::balance`): while it
  /// trains (at `train()` and at every rebalance), no centroid takes more than this many times the
  /// mean share of the sample. 0 (the default) is plain k-means: regions follow the data, which routes
  /// best but can leave a dense region to one shard — and a rebalance then repeats the imbalance it
  /// was meant to repair (two equally large regions over four shards ended 3000 / 839 / 1109 / 1052).
  /// A cap such as 1.25 splits the crowded region (the same data: 1875 / 1080 / 1125 / 1920) at some
  /// cost in routing recall, since regions now cut through natural clusters (32 clusters over 8
  /// shards, probe 2: R@10 0.971 plain, 0.943 at 2, 0.936 at 1.25). Must be 0 or ≥ 1; recorded in
  /// single precision.
  double semantic_balance = 0;
  /// `semantic` / `hybrid`: when the largest shard holds more than this many times the mean shard
  /// size (and at least 1,000 vectors), a background re-clustering starts (searches keep running on
  /// the old layout until the new one is swapped in), provided the vectors added or upserted since the
  /// last rebalance number at least a tenth of the collection's size then (a layout that k-means cannot
  /// bring under the threshold is not re-clustered on every write; an upsert may insert a vector or move
  /// one to another region, so it counts as an add), and twice as many after each run in a row that left
  /// the largest shard past the threshold (up to 4 tenths of the size at the last run, also where later
  /// writes or removes made the layout fixable; a run that ends under the threshold, automatic or a
  /// `rebalance()` call, resets the wait to a tenth, and so does reopening). Writes that arrive during a
  /// run start
  /// none of their own; if they leave the collection past the threshold by the same rule, the run
  /// re-clusters again when it ends (up to 4 runs in a row). 0 (the default) disables it;
  /// `rebalance()` can always be called explicitly. Must be 0 or > 1; hash and range collections,
  /// which have nothing to re-cluster, ignore it; semantic and hybrid ones over shards that cannot
  /// return their vectors (IVF-PQ) refuse it (`errc::unsupported`).
  double rebalance_threshold = 0;
  /// Where snapshots and the write-ahead log live. Empty (the default): in memory only. Otherwise the
  /// directory is created (it must not hold a collection already) and every acknowledged write is
  /// logged before it returns. A relative path is made absolute against the working directory when
  /// the collection is created or opened (`options().directory` gives that absolute path): a later
  /// `chdir` does not move its checkpoints.
  std::filesystem::path directory;
  wal_sync sync = wal_sync::every_write;
};

/// How `collection::open` reads a collection directory.
struct collection_open_options {
  /// Map the shard files read-only and search them in place (see `load_options::mmap`). A mapped
  /// collection is read-only: writes throw `errc::unsupported`, and it only reads the directory, which
  /// any number of mapped opens may share. When the log holds writes newer than the snapshot, the shards
  /// are loaded into memory instead and the log replayed there (the collection stays read-only; the next
  /// writable open applies the log for good).
  bool mmap = false;
  verify_level verify = verify_level::full;
  /// Overrides the recorded `threads_per_shard` for this process (0 keeps the recorded value); later
  /// snapshots still record the collection's own value.
  std::size_t threads_per_shard = 0;
};

/// Live counters of a collection (the same numbers `metrics_text` exports).
struct collection_stats {
  std::size_t size = 0;                  ///< stored vectors
  std::vector<std::size_t> shard_sizes;  ///< vectors per shard
  std::uint64_t queries = 0;             ///< query rows searched since creation/open
  std::uint64_t writes = 0;              ///< vectors added, upserted or removed since creation/open (not replays)
  double uptime_seconds = 0;
  /// Search latency percentiles (per search call), interpolated in power-of-two buckets (so within a
  /// factor of two of the true ones, up to the last bound, about 16.8 s) and never above the slowest
  /// call.
  double p50_seconds = 0;
  double p95_seconds = 0;
  double p99_seconds = 0;
  std::uint64_t rebalances = 0;
  std::uint64_t wal_records_replayed = 0;  ///< by `open`
  /// Bytes `open` dropped from the end of the write-ahead log (a memory-mapped open ignores them and
  /// leaves the cut to the next writable open): a torn last write (a crash while it was appended, never
  /// acknowledged), or damage at the log's end, which cannot be told from one (docs/collection.md);
  /// a log of zeros counts whole. Not 0 is worth a look where no crash happened.
  std::uint64_t wal_bytes_dropped = 0;
};

namespace detail {
struct collection_state;
}

/// A sharded, replicated, persistent vector collection. Move-only; a moved-from collection may only be
/// destroyed or assigned to (`metrics_text_of` refuses one).
class collection {
 public:
  /// An empty collection laid out as `options` says. Throws `shoal::error` (`errc::invalid_argument`)
  /// naming the bad option: dim 0, a spec `make_index` rejects, shards or replicas out of range, range
  /// bounds not `shards - 1` increasing keys, hybrid groups not dividing shards, a directory that holds
  /// a collection already (`errc::io_error` if it cannot be created).
  explicit collection(const collection_options& options);
  /// Opens a collection directory written by a collection with `options.directory` or by `save`:
  /// loads the last snapshot and replays the write-ahead log. Later writes are logged to it. Throws
  /// `errc::io_error` (no manifest), `errc::corrupt_file` (damaged manifest, shard file or log record
  /// other than a torn last record, which is dropped: its write was never acknowledged),
  /// `errc::invalid_argument` (a manifest that is an index file of another kind, as `load_index` says of
  /// any file of the wrong kind), `errc::unsupported` (a newer major format version).
  [[nodiscard]] static collection open(const std::filesystem::path& directory,
                                       const collection_open_options& options = {});

  collection(collection&& other) noexcept;
  collection& operator=(collection&& other) noexcept;
  collection(const collection&) = delete;
  collection& operator=(const collection&) = delete;
  ~collection();

  [[nodiscard]] std::size_t dim() const noexcept;
  [[nodiscard]] shoal::metric metric() const noexcept;
  [[nodiscard]] const collection_options& options() const noexcept;
  [[nodiscard]] std::size_t shard_count() const noexcept;
  [[nodiscard]] std::size_t replica_count() const noexcept;
  /// Stored vectors.
  [[nodiscard]] std::size_t size() const;
  /// Vectors stored in each shard.
  [[nodiscard]] std::vector<std::size_t> shard_sizes() const;
  /// Bytes held by every replica of every shard plus the routing table.
  [[nodiscard]] std::size_t memory_bytes() const;
  /// Whether vectors can be added: the semantic router (semantic, hybrid) and every shard's index are
  /// trained (IVF, IVF-PQ, and HNSW with SQ8/SQ4 codes need it; `train` does both). An `add` before
  /// that says which of the two needs it.
  [[nodiscard]] bool is_trained() const;
  [[nodiscard]] bool contains(vector_id id) const;
  /// Every stored id, ascending.
  [[nodiscard]] std::vector<vector_id> ids() const;
  /// The ids written (added, upserted or removed) by the log records `open` replayed, ascending, each
  /// once: the writes since the last snapshot, acknowledged or not yet when the process ended. Empty for
  /// a collection that was created rather than opened, or whose log was empty; it does not change after
  /// `open`. Lets state kept beside the collection (another index of the same ids, a table) be checked
  /// against it after a crash: only these ids can have changed since the snapshot.
  [[nodiscard]] std::vector<vector_id> replayed_ids() const;
  /// The shard that holds `id`; throws `errc::not_found`.
  [[nodiscard]] std::size_t shard_of(vector_id id) const;
  /// A copy of the vector stored under `id`, as its shard's index stores it (unit length for cosine).
  /// Throws `errc::not_found`; `errc::unsupported` for shard indexes that keep only codes (IVF-PQ).
  /// Concurrent with an upsert of `id` it returns the old vector or the new one, or — like a search that
  /// misses the id (see the consistency model) — throws `errc::not_found` while a shard that serves
  /// reads during writes (HNSW, IVF) replaces it within the shard (not when the upsert moves it to
  /// another shard).
  [[nodiscard]] std::vector<float> vector(vector_id id) const;

  /// Trains the router (semantic / hybrid: k-means over `sample` with one centroid per shard or group)
  /// and every shard index that needs training (on the sample rows routed to it, or the whole sample
  /// when those are too few: under 256, or under what the index needs, one row per IVF list and per PQ
  /// codeword). Must precede the first `add` when `is_trained()` is false, and is a no-op on an empty
  /// collection that is trained already; throws `errc::invalid_argument` once vectors are stored, or
  /// when the sample has fewer rows than centroids or than the shards' index trains on. With a directory, the trained
  /// layout is snapshotted before it is used: if that fails (`errc::io_error`), the collection stays untrained.
  void train(matrix_view<const float> sample);

  /// Adds `vectors.rows` vectors under `ids`; `keys` (range sharding only; empty: the ids are the keys)
  /// gives each vector's range key. All or nothing: throws before changing anything for a wrong dim,
  /// NaN/Inf, an id already stored or repeated (`errc::duplicate_id`), an untrained collection.
  void add(matrix_view<const float> vectors, std::span<const vector_id> ids, std::span<const std::uint64_t> keys = {});
  /// Adds or replaces: each id ends up stored with the given vector (moved to another shard if the
  /// router says so). Same checks as `add`, except that ids may already exist. Range sharding: without
  /// `keys`, a stored id stays in its shard (its key is not stored, and routing by the id would move a
  /// vector added under a timestamp out of its range) and a new id is its own key; with `keys`, each id
  /// goes to its key's shard.
  void upsert(matrix_view<const float> vectors, std::span<const vector_id> ids,
              std::span<const std::uint64_t> keys = {});
  /// Removes the ids; throws `errc::not_found` (naming the first unknown id) before removing anything.
  void remove(std::span<const vector_id> ids);
  void remove(vector_id id) { remove(std::span<const vector_id>(&id, 1)); }

  /// k nearest neighbours of each query over the shards the router picks (`params.shard_probe`), merged
  /// into one top-k per query: distances are those of the shard indexes (one metric, so comparable),
  /// nearest first, ties by smaller id. Each shard is asked for min(k, the vectors it holds), so a k far
  /// beyond the collection costs the output buffer, not shards × k per query. A row the picked shards leave short of k
  /// (a filter, or a k beyond what they hold) is searched in the shards its query skipped, and a row IVF shards leave
  /// short is searched again over more lists in every shard (`params.widen`; docs/collection.md). Other `params` go to
  /// every shard (`widen` as false: the collection widens), except `coarse`: a coarse pass outside the index belongs to
  /// one IVF index's centroids, and each shard has its own, so a non-null one throws `errc::invalid_argument`. Throws
  /// `errc::unsupported` when every replica of a shard the query needs is down.
  void search(matrix_view<const float> queries, neighbors_view out, const search_params& params = {}) const;
  [[nodiscard]] neighbors search(matrix_view<const float> queries, std::size_t k,
                                 const search_params& params = {}) const;

  /// Takes replica `replica` of `shard` out (a simulated node loss): its memory is released, searches
  /// use the other replicas, writes skip it and are counted as its lag. Throws
  /// `errc::invalid_argument` for an index out of range or the last live replica of a shard.
  void take_down(std::size_t shard, std::size_t replica);
  /// Brings a downed replica back, rebuilt from a live peer (a copy of the peer's index taken while
  /// the shard's writes wait); its lag returns to 0. A no-op for a live replica. The copy is a saved
  /// file in a private directory (mkdtemp) inside the collection's directory, or in
  /// std::filesystem::temp_directory_path for one in memory or memory-mapped, so it needs the shard's
  /// size free there; one left by a process killed meanwhile is removed by the next writable `open`,
  /// as are the temporaries of a snapshot cut short. Like a write, it holds the collection's layout shared: a
  /// checkpoint, save, train or rebalance start or swap called meanwhile waits for it, and writes to every shard wait
  /// behind that (in a review's reproducer, a 0.57 s restore of a 390,000-vector shard delayed a write to another shard
  /// by 0.42 s once a rebalance had started).
  void restore(std::size_t shard, std::size_t replica);
  [[nodiscard]] bool replica_up(std::size_t shard, std::size_t replica) const;

  /// Re-clusters a semantic or hybrid collection over its current vectors and moves every vector to
  /// its new shard. Builds the new shards beside the old ones: searches keep running on the old layout,
  /// writes made meanwhile are applied to both, and the new layout is swapped in at once. Each new
  /// shard trains (where its index trains) on its share of the vectors, or on all of them when the
  /// share is under 256 rows or under what the index needs (one per IVF list, per PQ codeword). Needs
  /// shard indexes that can return their vectors (Flat, HNSW, IVF-Flat, Refine(Flat) over those):
  /// throws `errc::unsupported` for IVF-PQ shards, and for hash and range collections;
  /// `errc::invalid_argument` for one not trained yet, or holding fewer vectors than its index trains on.
  void rebalance();
  /// Blocks until the automatic background rebalance started by an `add` or `upsert` that has returned
  /// (if any, see `collection_options::rebalance_threshold`) has finished. Its failure is not reported:
  /// the old layout stays, and a later write tries again.
  void wait_for_rebalance();

  /// Writes a snapshot (manifest, routing table, one file per shard) into `directory` atomically: the
  /// manifest is renamed into place last, so a crash leaves the previous snapshot readable. Writes
  /// wait while it runs; searches do not. For the collection's own directory this is `checkpoint`.
  void save(const std::filesystem::path& directory) const;
  /// Snapshot into the collection's own directory, then empties its write-ahead log. Throws
  /// `errc::invalid_argument` for a collection without a directory.
  void checkpoint();

  /// Counters and latency percentiles.
  [[nodiscard]] collection_stats stats() const;
  /// Every metric in the Prometheus text exposition format (version 0.0.4): query and write counters,
  /// latency histograms per stage (route, shard, merge, search, write) and per shard, items per shard,
  /// live replicas, replica lag (writes a downed replica missed), training, rebalancing and checkpoint
  /// times. Metric names start with `shoal_`; `name` becomes the `collection` label of every sample
  /// (escaped as the format requires; `errc::invalid_argument` when it is not valid UTF-8). One
  /// collection's exposition: to serve several from one endpoint, use `metrics_text_of` (two texts
  /// joined repeat every HELP and TYPE line, which Prometheus refuses).
  [[nodiscard]] std::string metrics_text(std::string_view name = "default") const;
  /// The exposition of several collections, each under its name: every family's HELP and TYPE once, then
  /// its samples for each collection in turn. Throws `errc::invalid_argument` for a null or moved-from
  /// collection, a name that is not valid UTF-8, or a name given twice (the same series twice). (A name of
  /// its own: an overload of `metrics_text` made `metrics_text({})` ambiguous.)
  [[nodiscard]] static std::string metrics_text_of(
      std::span<const std::pair<std::string_view, const collection*>> collections);

 private:
  explicit collection(std::unique_ptr<detail::collection_state> state);
  std::unique_ptr<detail::collection_state> state_;
};

}  // namespace shoal
