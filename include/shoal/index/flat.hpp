#pragma once
/// \file
/// Exact (brute-force) index: the ground truth every approximate index is measured against, and the
/// fastest choice for small collections.

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "shoal/core/neighbors.hpp"
#include "shoal/core/params.hpp"
#include "shoal/core/types.hpp"
#include "shoal/io/format.hpp"

namespace shoal {

class topk_heap;
namespace io::detail {
class file_mapping;
}

/// Stores full-precision vectors with their ids and answers k-NN and range queries exactly.
///
/// Search paths, chosen per call by batch size (and filter):
///  - fewer than `gemm_min_batch` queries: each query streams the stored vectors once through the
///    one-to-many SIMD kernel into a bounded heap;
///  - larger batches: blocks of queries meet blocks of vectors in a GEMM (‖x‖² − 2q·x, plus ‖q‖²) whose
///    best `k + rescore_slack` candidates per query are then re-scored with the direct kernel. A query
///    whose GEMM scores cannot rule out the vectors left out (their rounding error, bounded from the
///    norms, exceeds the margin: data far from the origin, many near-equal distances) is answered by
///    the streaming scan instead.
///  - a larger batch under a filter that accepts at most 1 / `sparse_filter` of the rows (a sample of
///    1,024 rows says so): the filter runs once per row for the batch, and each query scores only the
///    accepted rows (gather kernel). Otherwise the GEMM path tests only its candidates.
/// All paths therefore report the same distances (those of the pairwise kernel at the active SIMD
/// level), sorted by (distance, id), ties to the smaller id.
///
/// Cosine: vectors are normalised when added and queries when searched; distances are 1 − ⟨q̂, x̂⟩.
///
/// Thread safety: `const` members may run concurrently; `add` / `remove` need exclusive access (the
/// sharded collection provides it). Batched searches run in parallel on the caller's oneTBB arena.
///
/// Persistence: `save` writes the index file of docs/format.md (vectors, norms, ids); `load` reads it
/// back, or with `load_options::mmap` searches the vectors in place from a read-only mapping, in which
/// case the index is read-only (`add` and `remove` throw `errc::unsupported`).
class flat_index {
 public:
  /// Queries per call from which the GEMM path is used.
  static constexpr std::size_t gemm_min_batch = 16;
  /// Extra GEMM candidates per query re-scored exactly, absorbing the GEMM form's rounding.
  static constexpr std::size_t rescore_slack = 32;
  /// A batch under a filter that accepts at most 1 / `sparse_filter` of the rows (a fixed random sample
  /// of 1,024 says so, then the list does) scores only those, one query at a time, instead of running the
  /// GEMM over every row.
  static constexpr std::size_t sparse_filter = 16;

  /// An empty index of `dim`-dimensional vectors. Throws `shoal::error` if dim == 0.
  explicit flat_index(std::size_t dim, metric m = metric::l2);

  [[nodiscard]] std::size_t dim() const noexcept { return dim_; }
  [[nodiscard]] shoal::metric metric() const noexcept { return metric_; }
  [[nodiscard]] std::size_t size() const noexcept { return mapping_ ? mapped_size_ : ids_.size(); }
  /// Bytes held by vectors, norms, ids and the id map (for a memory-mapped index: the id map only; the
  /// mapped arrays live in the page cache).
  [[nodiscard]] std::size_t memory_bytes() const noexcept;
  /// Whether the index was loaded with `load_options::mmap` (and is therefore read-only).
  [[nodiscard]] bool is_mapped() const noexcept { return mapping_ != nullptr; }

  /// Writes the index to `path` atomically (a temporary file beside it, fsync, rename: an interrupted
  /// save leaves any previous file intact). Throws `shoal::error` (`errc::io_error`; `invalid_argument` for an
  /// empty path or a directory, before anything is written). May run
  /// concurrently with searches, not with `add` / `remove`.
  void save(const std::string& path) const;
  /// Reads an index written by `save`. Throws `shoal::error`: `errc::io_error` when the file cannot be
  /// read, `errc::corrupt_file` when it is truncated, damaged (checksum) or not an index file,
  /// `errc::unsupported` for a newer major format version, `errc::invalid_argument` when it holds
  /// another kind of index.
  [[nodiscard]] static flat_index load(const std::string& path, const load_options& options = {});

  /// Adds `vectors.rows` vectors under `ids` (one each). All or nothing: throws `shoal::error` — and
  /// changes nothing — on a dimension mismatch, a count mismatch, NaN/Inf, a zero vector under cosine,
  /// or an id already present (in the index or twice in `ids`). Out of memory (`std::bad_alloc`)
  /// part-way through changes nothing either.
  void add(matrix_view<const float> vectors, std::span<const vector_id> ids);

  /// Removes the vector stored under `id`; throws `shoal::error` (`errc::not_found`) if there is none.
  void remove(vector_id id);

  /// Whether `v`'s rows lie (partly) in this index's stored rows (rows read through `vector()`), which an
  /// `add` may move: `add` copies such rows first, and so must a caller that reads them after an `add`.
  [[nodiscard]] bool overlaps_storage(matrix_view<const float> v) const noexcept;

  /// Whether `id` is stored.
  [[nodiscard]] bool contains(vector_id id) const noexcept { return slot_of_.contains(id); }
  /// Every stored id, in storage order (`remove` moves the last row into the freed slot, so the order
  /// changes with removals); valid until the next `add` or `remove`.
  [[nodiscard]] std::span<const vector_id> ids() const noexcept { return {id_data(), size()}; }
  /// The stored vector of `id` (normalised under cosine); throws if unknown. Invalidated by add/remove
  /// (passing it to `add` itself is fine: the rows are copied before the storage grows).
  [[nodiscard]] std::span<const float> vector(vector_id id) const;

  /// k nearest neighbours of each query into `out` (`out.rows == queries.rows`, k = `out.k` ≥ 1).
  /// Throws `shoal::error` on a dimension mismatch, NaN/Inf or zero (cosine) queries, k == 0, or a row
  /// count mismatch.
  void search(matrix_view<const float> queries, neighbors_view out, const search_params& params = {}) const;
  /// Allocating convenience form of `search`.
  [[nodiscard]] neighbors search(matrix_view<const float> queries, std::size_t k,
                                 const search_params& params = {}) const;

  /// Every stored vector with distance < `radius` from each query, nearest first. Same errors as search.
  [[nodiscard]] range_result range_search(matrix_view<const float> queries, float radius,
                                          const search_params& params = {}) const;

 private:
  friend struct detail::index_sections<flat_index>;  // the file sections
  struct query_block;
  [[nodiscard]] query_block prepare(matrix_view<const float> queries, const char* what) const;
  void search_streaming(const float* query, neighbors_view out_row, const search_params& params) const;
  /// The rows (positions) whose ids `filter` accepts, in order (an `id_set`'s looked up).
  [[nodiscard]] std::vector<std::size_t> accepted_rows(const id_filter& filter) const;
  /// One query against the stored rows at positions `rows` only (gathered), into `out_row`.
  void search_rows(const float* query, std::span<const std::size_t> rows, neighbors_view out_row) const;
  void search_gemm(matrix_view<const float> queries, neighbors_view out, const search_params& params) const;
  /// Offers one query's row of a GEMM tile (inner products with stored rows first..first+count, turned
  /// into ranking distances in place) to its heap.
  void select_tile(float* ip, std::size_t first, std::size_t count, const id_filter& filter, topk_heap& heap) const;
  void check_mutable(const char* what) const;
  // The arrays as searched: owned, or inside the mapping.
  [[nodiscard]] const float* vector_data() const noexcept { return mapping_ ? mapped_vectors_ : vectors_.data(); }
  [[nodiscard]] const float* norm_data() const noexcept { return mapping_ ? mapped_norms_ : norms_.data(); }
  [[nodiscard]] const vector_id* id_data() const noexcept { return mapping_ ? mapped_ids_ : ids_.data(); }

  std::size_t dim_;
  shoal::metric metric_;
  aligned_vector<float> vectors_;  // size() rows of dim_, row-major
  aligned_vector<float> norms_;    // ‖x‖² per row, for the GEMM path (L2)
  aligned_vector<vector_id> ids_;  // id of each row
  std::unordered_map<vector_id, std::size_t> slot_of_;
  // Set by a memory-mapped load: the arrays live in the mapping, which is kept alive here.
  std::shared_ptr<const io::detail::file_mapping> mapping_;
  const float* mapped_vectors_ = nullptr;
  const float* mapped_norms_ = nullptr;
  const vector_id* mapped_ids_ = nullptr;
  std::size_t mapped_size_ = 0;
};

}  // namespace shoal
