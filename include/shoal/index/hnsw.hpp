#pragma once
/// \file
/// HNSW graph index (Malkov & Yashunin, "Efficient and robust approximate nearest neighbor search using
/// Hierarchical Navigable Small World graphs"): a multi-layer proximity graph searched greedily from the
/// top layer down, with parallel insertion, real deletes and upserts.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "shoal/core/neighbors.hpp"
#include "shoal/core/params.hpp"
#include "shoal/core/types.hpp"
#include "shoal/io/format.hpp"

namespace shoal {
namespace detail {
struct hnsw_sections;
}

/// What graph traversal scores nodes with.
enum class hnsw_codes : std::uint8_t {
  /// The full-precision vectors (factory `HNSW<M>`).
  none,
  /// 8-bit scalar codes, one per dimension over its trained [min, max] (factory `HNSW<M>,SQ8`): a
  /// quarter of the bytes per visited node; the ef candidates are then re-ranked with exact distances
  /// from the full vectors, which the index keeps (for building and re-ranking). Costs dim bytes
  /// (rounded up to 64) and a 4-byte term per vector on top of the full-precision index.
  sq8,
  /// IEEE half-precision codes of the vectors in a learnt frame (factory `HNSW<M>,F16`, also spelled
  /// `SQfp16`): half((x_j − c_j) · 2^−e), with c the per-dimension mean and 2^e one power-of-two scale
  /// for the whole index, learnt by `train` or from the first add (nothing needs training first) and
  /// saved with the graph. Half the bytes per visited node, an error of about 2^-11 relative per centred
  /// component, whatever offset or magnitude the data has (docs/hnsw.md, "F16 traversal"); values more
  /// than about 16 times the learning sample's largest component (or spread) from the centre saturate.
  /// The ef candidates are re-ranked exactly as with SQ8. Costs 2·dim bytes per vector (rounded up to
  /// 64) on top of the full-precision index.
  fp16,
  /// 4-bit scalar codes, 15 steps over each dimension's trained [min, max] (factory `HNSW<M>,SQ4`):
  /// half the bytes of SQ8 per visited node (a 784-dimensional row is 7 cache lines instead of 13) at
  /// a coarser estimate; re-ranked exactly as with SQ8. Costs ⌈dim / 32⌉ · 16 bytes (rounded up to 64)
  /// and a 4-byte term per vector on top of the full-precision index. Not a cheaper SQ8 everywhere: on
  /// tight clusters, on normalised (cosine) data and on data offset far from the origin the 15 steps
  /// cannot tell close neighbours apart, and recall at a given ef falls far below SQ8's (shoal-demo's
  /// generated data under cosine, ef 32: R@10 0.67 against 0.98; docs/hnsw.md "SQ4"). Measure it on
  /// your data (`shoal-ann-bench --sweep ef=...`); SQ8 or F16 are the safe choices.
  sq4,
};

/// Build parameters of an `hnsw_index`.
struct hnsw_params {
  /// Links per node on the upper layers; the bottom layer keeps up to 2·M. Larger M: better recall at
  /// a given ef and more robust graphs on hard data, at more memory (8·M bytes per node) and slower
  /// builds. 16 suits most embeddings; 32–48 for high-dimensional or high-recall work. Range [2, 256].
  std::size_t M = 16;
  /// Candidate list size while inserting: larger builds better graphs, more slowly. At least 1 (values
  /// below M are raised to M internally).
  std::size_t ef_construction = 200;
  /// Seed of the level generator. Levels depend only on the seed and the insertion sequence number,
  /// so a single-threaded build (e.g. inside `tbb::task_arena(1)`) is fully reproducible.
  std::uint64_t seed = 0x5eed;
  /// Compressed traversal (see `hnsw_codes`). The graph itself is always built from exact distances.
  hnsw_codes codes = hnsw_codes::none;
  /// Relaxed neighbour pruning (DiskANN's α, in [1, 4]). The selection heuristic keeps its usual
  /// diverse links first; with α > 1 the slots they leave free are filled with rejected candidates c
  /// that no kept link y is α times closer to (α·d(y, c) ≥ d(node, c); α² on squared L2 and on
  /// cosine's 1 − cos, inner product always uses 1). 1 is the HNSW paper's heuristic, as hnswlib's;
  /// larger values give more, longer links: higher recall at a given ef, more distances per hop, a
  /// slower build. Pays where the target recall needs a large ef (docs/hnsw.md "Relaxed pruning":
  /// bigann10k +11% QPS at R@10 0.95 and about +30% at 0.99 with 1.2–1.3; fashion-mnist +8% at 0.99,
  /// a loss at 0.95), so it is opt-in.
  double alpha = 1.0;
};

/// Hierarchical navigable small-world graph over full-precision float vectors.
///
/// Layout: nodes live in 32-bit slots of chunks that never move (a power of two up to 1024 nodes, at most
/// 1 MiB of rows: docs/hnsw.md, Layout), found through
/// a directory that doubles as it grows, so the index grows without a declared capacity and without
/// relocating vectors under readers. Each chunk holds the vectors (rows padded to 64 bytes), the
/// bottom-layer link lists (a count followed by 2·M slots) and per-node metadata; upper-layer links are a
/// separate allocation per node, taken only by the ~1/M of nodes that have upper layers. Removed slots
/// are reused by later adds; chunks are not returned to the allocator before the index is destroyed.
///
/// Distances follow the library convention (smaller is closer; `l2` ‖q − x‖², `inner_product` −⟨q, x⟩,
/// `cosine` 1 − cos on vectors normalised when added); results are sorted by (distance, id) and padded
/// with `no_id` / `no_distance`. Under inner product a graph can stay short of the exact answer at any
/// ef (the metric is no distance: the nearest node's neighbours need not be the next best), most where
/// queries lie away from the data (a review: 3,000 × 32 clustered rows, queries drawn around other
/// centres, ef 500: 176-178 of the exact 200 top-10 ids, against all 200 under l2 and cosine); measure
/// recall on your queries, and where it must be exact use `flat_index` or IVF-Flat with every list probed.
///
/// Thread safety: every member may be called concurrently from any number of threads.
///  - `add` and the searches share a reader-writer lock in shared mode (taken once per call, not per
///    node): they run concurrently, synchronised per node by a spinlock that guards the node's link
///    lists (held only while a list is copied or rewritten, never two at a time).
///  - `remove` and `upsert` take that lock exclusively: they wait for running adds and searches and
///    block new ones while they re-link the removed node's neighbourhood. That exclusion is the grace
///    period that makes slot reuse safe — no search can still hold a reference to a slot that a later
///    add overwrites. The lock is phase-fair, in two steps: a remove, upsert, train or save first
///    holds off new adds and waits for the running ones while searches go on, then holds off new
///    searches while the running ones finish; when it is done, the searches that queued meanwhile get
///    in before the next write. So searches without pause cannot starve a writer, nor writes without
///    pause the searches, and a search waits at most for the searches ahead of it and one write (not
///    for a bulk add). The reachability walk that a remove or upsert runs every sixteenth of the live
///    nodes (docs/hnsw.md) runs after it has let the exclusive lock go, beside searches and adds.
/// `add` runs its insertions in parallel on the caller's oneTBB arena; batched searches parallelise over
/// queries the same way.
class hnsw_index {
 public:
  /// Default bottom-layer candidate list size when `search_params::ef` is 0 (raised to k if smaller).
  static constexpr std::size_t default_ef = 64;

  /// An empty index of `dim`-dimensional vectors. Throws `shoal::error` if dim == 0, M is outside
  /// [2, 256] or ef_construction == 0.
  explicit hnsw_index(std::size_t dim, metric m = metric::l2, const hnsw_params& params = {});
  ~hnsw_index();
  hnsw_index(hnsw_index&& other) noexcept;
  hnsw_index& operator=(hnsw_index&& other) noexcept;
  hnsw_index(const hnsw_index&) = delete;
  hnsw_index& operator=(const hnsw_index&) = delete;
  // A moved-from index may only be destroyed or assigned to.

  [[nodiscard]] std::size_t dim() const noexcept;
  [[nodiscard]] shoal::metric metric() const noexcept;
  [[nodiscard]] const hnsw_params& params() const noexcept;
  /// Number of stored vectors.
  [[nodiscard]] std::size_t size() const noexcept;
  /// Bytes held by vectors, links, node metadata, the id map and the free list.
  [[nodiscard]] std::size_t memory_bytes() const;

  /// Inserts `vectors.rows` vectors under `ids`, in parallel. All or nothing: throws `shoal::error` —
  /// and changes nothing — on a dimension mismatch, a count mismatch, NaN/Inf, a zero vector under
  /// cosine, or an id already present (in the index, twice in `ids`, or being added concurrently).
  /// Slots freed by `remove` are reused first. Ids become searchable as their insertion completes — but
  /// not always reachable: a vector far from the rest, or a few new ones that link only to each other,
  /// can be found by no search until the next reachability walk, which runs once the changes since the
  /// last one reach a sixteenth of the live nodes (docs/hnsw.md, "What remains"; a review: two vectors
  /// in a new direction added to 1,000 under cosine, the nearer missed at ef 100).
  /// Out of memory (`std::bad_alloc`) while `add`, `remove` or `upsert` is changing the graph leaves it
  /// half-changed: every later call but `size`, `dim`, `metric`, `params` and `memory_bytes` then
  /// throws `errc::unsupported` ("the index is unusable"), `save` too (the last file stays intact);
  /// load it again from a file. Every input check comes before the first change.
  void add(matrix_view<const float> vectors, std::span<const vector_id> ids);
  /// Throws the `shoal::error` that `add` would throw for these rows, ids aside, and adds nothing
  /// (`any_index::check_add`): an unusable or memory-mapped index, a dimension mismatch, NaN/Inf, a
  /// norm past the bound, a zero row under cosine, or SQ8/SQ4 codes without ranges and rows a first add
  /// cannot learn them from (fewer than `min_code_learning_rows`, copies of one row, a range end past
  /// the bound: the same learning is run and dropped).
  void check_add(matrix_view<const float> vectors) const;

  /// With SQ8 / SQ4 traversal: learns the per-dimension code ranges (min and max) from `sample`, which
  /// needs at least `min_code_learning_rows` rows. Without a call, the first `add` learns them from its
  /// own vectors if it has at least `min_code_learning_rows` of them (a smaller sample or first add, or an
  /// `upsert` into an index without ranges, throws `errc::invalid_argument`: ranges learned from a
  /// handful of vectors would clamp nearly every later one, and recall would collapse; so does a sample,
  /// or a first add, of copies of one vector). Later values outside the ranges are clamped.
  /// With F16 traversal: learns the codes' frame (per-dimension mean and one power-of-two scale) from up
  /// to 16,384 evenly spaced rows of `sample`; without a call, the first `add` or `upsert` learns it
  /// from its vectors, however few. Throws `shoal::error` if the index already holds vectors (their
  /// codes would disagree), or on bad vectors. Does nothing for full-precision traversal.
  void train(matrix_view<const float> sample);
  /// Fewest vectors a first `add` learns SQ8 / SQ4 code ranges from.
  static constexpr std::size_t min_code_learning_rows = 32;
  /// False only for SQ8 / SQ4 traversal before its code ranges exist (neither `train` nor an `add`).
  [[nodiscard]] bool is_trained() const noexcept;
  /// Fewest rows `train` takes: `min_code_learning_rows` with SQ8 / SQ4 traversal, 1 with F16, 0 at full
  /// precision (nothing to learn).
  [[nodiscard]] std::size_t min_training_rows() const noexcept;

  /// Removes `id` for good: the node is unlinked, every neighbour that pointed at it is re-linked with
  /// the selection heuristic over the union of its own and the removed node's neighbours (a neighbour
  /// that would be left without a bottom-layer in-link is linked from the nearest of them), its slot is
  /// recycled and its upper-layer links freed; a new entry point is chosen if it was the entry.
  /// Throws `shoal::error` (`errc::not_found`) if `id` is not stored.
  void remove(vector_id id);

  /// Stores `vector` (one row) under `id`, replacing the vector stored there if any; atomic with respect
  /// to every other call (searches see the old vector or the new one, never neither). Throws like `add`
  /// (the index is unchanged when it throws `shoal::error`; out of memory: see `add`).
  void upsert(matrix_view<const float> vector, vector_id id);

  /// Writes the index file of docs/format.md — the graph exactly as it is (slots, links, levels, entry
  /// point, SQ8 / SQ4 ranges or F16 frame, codes), so a loaded index answers every search as this one does —
  /// atomically (temporary file, fsync, rename: an interrupted save leaves any previous file intact).
  /// Waits for running adds, removes and searches and blocks new ones while it writes, so the file is
  /// one consistent snapshot. Throws `shoal::error` (`errc::io_error`; `invalid_argument` for an empty
  /// path or a directory, before anything is written).
  void save(const std::string& path) const;
  /// Reads an index written by `save`; with `load_options::mmap` the vectors, bottom-layer links and
  /// codes are used in place from a read-only mapping (the small per-node arrays are copied), and the
  /// index is read-only: add, remove, upsert and train throw `errc::unsupported`. Every link is checked
  /// to point inside the file's slots whatever the verify level, so a damaged file cannot make a search
  /// read out of bounds. Throws `shoal::error`: `errc::io_error`, `errc::corrupt_file` (saying what is
  /// wrong), `errc::unsupported` (newer format), `errc::invalid_argument` (another index kind).
  [[nodiscard]] static hnsw_index load(const std::string& path, const load_options& options = {});
  /// Whether the index was loaded with `load_options::mmap` (and is therefore read-only).
  [[nodiscard]] bool is_mapped() const noexcept;

  /// Whether `id` is stored.
  [[nodiscard]] bool contains(vector_id id) const;
  /// A copy of the vector stored under `id` (normalised under cosine); throws `errc::not_found`.
  [[nodiscard]] std::vector<float> vector(vector_id id) const;

  /// Approximate k nearest neighbours of each query into `out` (`out.rows == queries.rows`, k = `out.k`
  /// ≥ 1), with `params.ef` (0: max(k, default_ef)). With a filter, rejected nodes are traversed but not
  /// returned, and the search runs on until ef accepted candidates are found, so rows stay k long while
  /// k reachable ids pass. Throws `shoal::error` on a dimension mismatch, NaN/Inf or zero (cosine)
  /// queries, k == 0, or a row count mismatch.
  void search(matrix_view<const float> queries, neighbors_view out, const search_params& params = {}) const;
  /// Allocating convenience form of `search`.
  [[nodiscard]] neighbors search(matrix_view<const float> queries, std::size_t k,
                                 const search_params& params = {}) const;

  /// Stored vectors with distance < `radius` from each query, nearest first (approximate: the bottom
  /// layer is explored from the ef best candidates for as long as the frontier is within the radius).
  /// Same errors as `search`, plus a NaN radius.
  [[nodiscard]] range_result range_search(matrix_view<const float> queries, float radius,
                                          const search_params& params = {}) const;

 private:
  friend struct detail::hnsw_sections;  // the file sections, also embedded in IVF files (coarse graph)
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace shoal
