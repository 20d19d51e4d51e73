#pragma once
/// \file
/// Per-call search parameters. Nothing that tunes a search is stored in an index, so concurrent searches
/// with different settings never race (the FAISS `nprobe`-on-the-index pitfall, faiss#2204).

#include <memory>
#include <type_traits>
#include <utility>

#include "shoal/core/types.hpp"

namespace shoal {

class coarse_probe;

/// Non-owning reference to a predicate `bool(vector_id)` that says which ids a search may return.
/// Cheap to copy (two pointers); the referenced callable must outlive the search call. An empty filter
/// accepts every id. The predicate may be called concurrently from the threads of one batched search.
/// It runs while the index being searched holds read locks: it may search or query other indexes, but
/// must not call into the one it filters (`contains`, `vector`, a search, a write) — with a writer
/// waiting on those locks, such a call can deadlock (IVF-Flat's `contains` did under a running `add`).
class id_filter {
 public:
  id_filter() = default;
  template <class F>
  requires(!std::is_same_v<std::remove_cvref_t<F>, id_filter> && std::is_invocable_r_v<bool, const F&, vector_id>)
      id_filter(const F& predicate)
  noexcept  // NOLINT(google-explicit-constructor): filters read naturally inline
      : object_(std::addressof(predicate)), call_([](const void* object, vector_id id) {
          return static_cast<bool>((*static_cast<const F*>(object))(id));
        }) {}

  [[nodiscard]] explicit operator bool() const noexcept { return call_ != nullptr; }
  /// True when `id` may be returned (always true for an empty filter).
  [[nodiscard]] bool accepts(vector_id id) const { return call_ == nullptr || call_(object_, id); }

 private:
  const void* object_ = nullptr;
  bool (*call_)(const void*, vector_id) = nullptr;
};

/// Settings of one search call. Index-specific knobs (`ef`, `nprobe`, ...) join this struct as the
/// indexes that read them land; an index ignores the knobs it has no use for.
struct search_params {
  /// Only ids the filter accepts are returned; rows stay k long while enough ids pass.
  id_filter filter{};
  /// HNSW: size of the candidate list kept while searching the bottom layer (larger: higher recall,
  /// slower). 0 means the index default, max(k, 64); any value below k is raised to k. IVF with an HNSW
  /// coarse quantizer (`IVF<nlist>_HNSW<M>`): the same for the graph search that picks the nprobe
  /// lists (0: max(nprobe, 64)).
  std::size_t ef = 0;
  /// IVF: number of inverted lists (nearest centroids) scanned per query (larger: higher recall,
  /// slower). 0 means the index default, 1 (as in FAISS); values above nlist scan every list.
  std::size_t nprobe = 0;
  /// IVF-PQ: re-rank depth. When > 0, the best `k * refine_factor` candidates by approximate (code)
  /// distance are re-scored with exact distances from the stored full vectors and the best k of those
  /// returned; needs an index built to keep full vectors. 0 (the default) returns approximate distances.
  std::size_t refine_factor = 0;
  /// Collection with semantic sharding: number of nearest shards each query visits; hybrid sharding:
  /// number of nearest groups (all shards of each). 0 (the default) visits every shard; hash and range
  /// collections always visit every shard. Values above the shard (group) count visit all.
  std::size_t shard_probe = 0;
  /// IVF: a coarse pass to use instead of the index's own for batches of at least its `min_batch()`
  /// queries (the CUDA component's `shoal::cuda::coarse_quantizer`, built from the index's centroids);
  /// null (the default) keeps the index's. Must outlive the call. See `shoal/core/coarse_probe.hpp`.
  const coarse_probe* coarse = nullptr;
};

}  // namespace shoal
