#pragma once
/// \file
/// IVF-Flat: an inverted-file index over full-precision vectors (FAISS's `IVF<nlist>,Flat`). k-means
/// partitions the space into `nlist` cells; a search scans only the `nprobe` cells nearest each query.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <shared_mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "shoal/cluster/kmeans.hpp"
#include "shoal/core/neighbors.hpp"
#include "shoal/core/params.hpp"
#include "shoal/core/types.hpp"
#include "shoal/io/format.hpp"

namespace shoal {
namespace io::detail {
class file_mapping;
}
namespace detail {
struct probed_queries;
class coarse_quantizer;
}  // namespace detail

/// How an IVF index trains its coarse quantizer (k-means with k = nlist).
struct ivf_train_params {
  /// Lloyd iterations (FAISS's IVF trains 10 too: coarse centroids need no tight convergence).
  std::size_t iterations = 10;
  /// Seeds subsampling, initialisation and empty-cluster repair: same seed and data → same centroids.
  std::uint64_t seed = 1234;
  /// Random initialisation, as FAISS: k-means++ costs an extra pass over the sample per centroid, which
  /// at nlist in the thousands outweighs the iterations themselves.
  kmeans_init init = kmeans_init::random;
  /// At most `nlist * max_points_per_centroid` training vectors are used (0: all of them).
  std::size_t max_points_per_centroid = 256;
};

/// Inverted-file index over full-precision vectors.
///
/// Layout: `nlist` centroids (spherical k-means, unit norm, under inner product and cosine); one
/// inverted list per centroid holding its vectors contiguously (64-byte aligned) with their ids; an
/// id → (list, slot) map for `remove`, which moves a list's last entry into the freed slot.
///
/// Search: a coarse pass ranks the centroids for a whole batch of queries through the GEMM kernel
/// (‖c − μ‖² − 2⟨q − μ, c − μ⟩ under L2, −⟨q, c − μ⟩ otherwise, μ the centroids' coordinate-wise median:
/// the ranking of ‖q − c‖² and −⟨q, c⟩ without their cancellation far from the origin, docs/ivf.md) and keeps the
/// `nprobe` best per query (ties to the smaller list); then each query scans its lists with the one-to-many kernels
/// into a bounded heap (under a filter, only the rows it accepts, gathered). A query those lists leave with fewer than
/// k ids searches twice the lists, nearest first, and again, until it holds k or every list was searched
/// (`search_params::widen`; docs/ivf.md). Distances are those of `flat_index` (same kernels, same cosine
/// normalisation), so with nprobe = nlist the results equal the flat index's, ids and distances, sorted by (distance,
/// id) and padded with `no_id` / `no_distance`. `search_params::nprobe` = 0 means `default_nprobe`; values above nlist
/// scan every list.
///
/// Thread safety: after `train`, every other member may be called concurrently from any number of
/// threads. Each list has a reader-writer lock: a query's scan holds every list it probes shared (taken
/// in ascending order), `add` and `remove` hold one exclusively for the moment they change it; the id
/// map has its own lock, which `add` and `remove` hold exclusively (so duplicate checks and the map stay
/// consistent) and searches never take. A search running alongside an `add` sees each new vector either
/// entirely or not at all, and may see part of the batch; a vector moved to another list (remove, then
/// add) is seen at most once. A filter must not call into the index it filters (`id_filter`). `train` needs exclusive
/// access. Batched searches parallelise over queries on the caller's oneTBB arena.
///
/// Persistence: `save` writes the index file of docs/format.md (centroids, list sizes, the lists' rows
/// and ids); `load` reads it back, or with `load_options::mmap` scans the lists in place from a
/// read-only mapping, in which case the index is read-only (`train`, `add` and `remove` throw
/// `errc::unsupported`).
class ivf_flat_index {
 public:
  /// Lists scanned per query when `search_params::nprobe` is 0 (FAISS's default).
  static constexpr std::size_t default_nprobe = 1;

  /// An untrained, empty index. `coarse_hnsw_m` = 0 scores every centroid exactly in the coarse pass
  /// (`IVF<nlist>,Flat`); M in [2, 256] searches an HNSW graph of M links over the centroids instead
  /// (`IVF<nlist>_HNSW<M>,Flat`, see `coarse_hnsw_m()`). The nlist lists are allocated here, about 145
  /// bytes each. Throws `shoal::error` if dim = 0, nlist is 0 or above 2^24, or M is out of range.
  ivf_flat_index(std::size_t dim, metric m, std::size_t nlist, std::size_t coarse_hnsw_m = 0);
  ~ivf_flat_index();
  ivf_flat_index(ivf_flat_index&&) noexcept;
  ivf_flat_index& operator=(ivf_flat_index&&) noexcept;
  ivf_flat_index(const ivf_flat_index&) = delete;
  ivf_flat_index& operator=(const ivf_flat_index&) = delete;

  [[nodiscard]] std::size_t dim() const noexcept { return dim_; }
  [[nodiscard]] shoal::metric metric() const noexcept { return metric_; }
  [[nodiscard]] std::size_t nlist() const noexcept { return nlist_; }
  [[nodiscard]] bool is_trained() const noexcept;
  /// Fewest vectors `train` takes: one per list.
  [[nodiscard]] std::size_t min_training_rows() const noexcept { return nlist_; }
  /// M of the HNSW graph over the centroids that picks each vector's and query's lists; 0 when every
  /// centroid is scored (the flat coarse pass). The graph finds lists in O(log nlist) distance
  /// evaluations instead of nlist, approximately: for nlist in the tens of thousands, where the flat pass
  /// dominates adds and searches. Searches explore `search_params::ef` graph candidates (0: max(nprobe,
  /// 64)); adds the default. Costs a second copy of the centroids plus the links.
  [[nodiscard]] std::size_t coarse_hnsw_m() const noexcept;
  /// The nlist x dim centroids (empty until trained).
  [[nodiscard]] matrix_view<const float> centroids() const noexcept;
  /// Number of stored vectors.
  [[nodiscard]] std::size_t size() const noexcept { return size_.load(); }
  /// Number of vectors in each list.
  [[nodiscard]] std::vector<std::size_t> list_sizes() const;
  /// Bytes held by centroids, lists (vectors and ids) and the id map (for a memory-mapped index the
  /// lists' mapped rows and ids are not counted: they live in the page cache).
  [[nodiscard]] std::size_t memory_bytes() const;
  /// Whether the index was loaded with `load_options::mmap` (and is therefore read-only).
  [[nodiscard]] bool is_mapped() const noexcept { return mapping_ != nullptr; }

  /// Writes the index (trained or not) to `path` atomically (a temporary file beside it, fsync,
  /// rename: an interrupted save leaves any previous file intact). May run concurrently with searches;
  /// `add` and `remove` wait for it. Throws `shoal::error` (`errc::io_error`; `invalid_argument` for an
  /// empty path or a directory, before anything is written).
  void save(const std::string& path) const;
  /// Reads an index written by `save`. Throws `shoal::error`: `errc::io_error` when the file cannot be
  /// read, `errc::corrupt_file` when it is truncated, damaged (checksum) or not an index file,
  /// `errc::unsupported` for a newer major format version, `errc::invalid_argument` when it holds
  /// another kind of index.
  [[nodiscard]] static ivf_flat_index load(const std::string& path, const load_options& options = {});

  /// Learns the nlist centroids from `vectors` by k-means (spherical under inner product and cosine;
  /// cosine normalises the training vectors first). Throws `shoal::error` if the index already holds
  /// vectors, on a dimension mismatch, NaN/Inf, a zero vector under cosine, or fewer training vectors
  /// than nlist. Needs exclusive access.
  void train(matrix_view<const float> vectors, const ivf_train_params& params = {});

  /// Adds `vectors.rows` vectors under `ids`, each to the list of its nearest centroid. All or nothing:
  /// throws `shoal::error` — and changes nothing — if the index is not trained (`errc::invalid_argument`,
  /// "not trained"), on a dimension mismatch, a count mismatch, NaN/Inf, a zero vector under cosine, or
  /// an id already present (in the index or twice in `ids`). Out of memory (`std::bad_alloc`)
  /// part-way through changes nothing either.
  void add(matrix_view<const float> vectors, std::span<const vector_id> ids);

  /// Removes the vector stored under `id`; throws `shoal::error` (`errc::not_found`) if there is none.
  void remove(vector_id id);
  /// Whether `id` is stored.
  [[nodiscard]] bool contains(vector_id id) const;
  /// A copy of the vector stored under `id` (unit length for cosine). Throws `errc::not_found`.
  [[nodiscard]] std::vector<float> vector(vector_id id) const;

  /// k nearest neighbours of each query among the vectors of its `params.nprobe` nearest lists (more
  /// lists for a query they leave short of k, unless `params.widen` is false: see the class comment), into
  /// `out` (`out.rows == queries.rows`, k = `out.k` ≥ 1). Throws `shoal::error` if the index is not
  /// trained, on a dimension mismatch, NaN/Inf or zero (cosine) queries, k = 0, or a row count mismatch.
  void search(matrix_view<const float> queries, neighbors_view out, const search_params& params = {}) const;
  /// Allocating convenience form of `search`.
  [[nodiscard]] neighbors search(matrix_view<const float> queries, std::size_t k,
                                 const search_params& params = {}) const;

  /// Every vector of each query's `params.nprobe` nearest lists with distance < `radius`, nearest
  /// first. Same errors as search, and a NaN radius.
  [[nodiscard]] range_result range_search(matrix_view<const float> queries, float radius,
                                          const search_params& params = {}) const;

 private:
  friend struct detail::index_sections<ivf_flat_index>;  // the file sections
  struct list;
  struct location {
    std::size_t list;
    std::size_t slot;
  };
  /// Checks `queries` and picks each one's lists (`what` prefixes the errors).
  [[nodiscard]] detail::probed_queries probe(matrix_view<const float> queries, const search_params& params,
                                             const char* what) const;
  void check_mutable(const char* what) const;
  /// Whether a search for `k` under a filter made from `set` scores its ids directly (`search_listed`):
  /// when the probed lists would hold fewer than k of them on average (rows would widen), or when scoring
  /// them costs less than testing the probed lists' ids.
  [[nodiscard]] bool scores_listed(const id_set& set, std::size_t k, const search_params& params) const;
  /// The search under a filter made from `set`: its ids looked up and scored exactly, the k nearest of
  /// them per query (`id_set`).
  void search_listed(matrix_view<const float> queries, const id_set& set, neighbors_view out) const;

  std::size_t dim_;
  shoal::metric metric_;
  std::size_t nlist_;
  /// The coarse quantizer; throws `errc::invalid_argument` on a moved-from index.
  [[nodiscard]] detail::coarse_quantizer& coarse() const;

  std::unique_ptr<detail::coarse_quantizer> coarse_;
  std::vector<std::unique_ptr<list>> lists_;
  // id → where it is stored; guarded by map_mutex_.
  std::unordered_map<vector_id, location> where_;
  mutable detail::movable_mutex<std::shared_mutex> map_mutex_;
  detail::movable_count size_;
  // Set by a memory-mapped load: the lists' rows and ids live in the mapping, kept alive here.
  std::shared_ptr<const io::detail::file_mapping> mapping_;
};

}  // namespace shoal
