#pragma once
/// \file
/// Per-call search parameters. Nothing that tunes a search is stored in an index, so concurrent searches
/// with different settings never race (the FAISS `nprobe`-on-the-index pitfall, faiss#2204).

#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>

#include "shoal/core/id_set.hpp"
#include "shoal/core/types.hpp"

namespace shoal {

class coarse_probe;

/// A predicate `bool(vector_id)` that says which ids a search may return; empty, it accepts every id.
/// A small, trivially copyable predicate — a lambda capturing nothing, or a few references or pointers;
/// a function pointer — is held by value, so a temporary one may be stored (`params.filter = [&](vector_id
/// id) { ... };`). Any other is referenced: it must be an lvalue that outlives the search (a temporary
/// does not compile — it would be gone before the search calls it). Cheap to copy (five words).
/// The predicate may be called concurrently from the threads of one batched search. It runs while the
/// index being searched holds read locks: it may search or query other indexes, but must not call into
/// the one it filters (`contains`, `vector`, a search, a write) — with a writer waiting on those locks,
/// such a call can deadlock (IVF-Flat's `contains` did under a running `add`).
/// A null function pointer makes an empty filter; so does an empty `std::function` (referenced: empty
/// when the search calls it). The predicate receives the whole 64-bit id: one
/// declared with a narrower parameter (`[](std::uint32_t id) ...`) sees ids beyond its range wrapped,
/// and accepts or rejects the wrong ones.
/// Made from an `id_set` (referenced), it also lets the indexes enumerate the ids it accepts (`listed`).
class id_filter {
  template <class Signature>
  static std::true_type derives_from_function(const std::function<Signature>*);
  static std::false_type derives_from_function(...);
  /// A std::function, or a class derived from one (as `std::function`, empty when it tests false).
  template <class F>
  static constexpr bool is_std_function = decltype(derives_from_function(static_cast<const F*>(nullptr)))::value;
  static constexpr std::size_t inline_bytes = 3 * sizeof(void*);
  template <class F>
  static constexpr bool held_by_value = [] {
    if constexpr (std::is_object_v<F>)  // not a function: a function is referenced, it lives for ever
      return std::is_trivially_copyable_v<F> && sizeof(F) <= inline_bytes && alignof(F) <= alignof(void*);
    else
      return false;
  }();
  template <class F>
  static constexpr bool predicate =
      !std::is_same_v<std::remove_cvref_t<F>, id_filter> && std::is_invocable_r_v<bool, const F&, vector_id>;

 public:
  id_filter() = default;
  template <class F>
  requires(predicate<F>) id_filter(const F& f)
  noexcept  // NOLINT(google-explicit-constructor): filters read naturally inline
  {
    if constexpr (std::is_pointer_v<F>)
      if (f == nullptr) return;  // empty: calling it would jump to address 0
    if constexpr (std::is_same_v<F, id_set>) listed_ = std::addressof(f);
    if constexpr (held_by_value<F>) {
      ::new (static_cast<void*>(storage_)) F(f);
      call_ = [](const void* storage, vector_id id) {
        return static_cast<bool>((*std::launder(static_cast<const F*>(storage)))(id));
      };
    } else {
      const F* object = std::addressof(f);
      std::memcpy(storage_, &object, sizeof object);
      call_ = [](const void* storage, vector_id id) {
        const F* referenced = nullptr;
        std::memcpy(&referenced, storage, sizeof referenced);
        // An empty std::function, as a null pointer, accepts every id (it threw std::bad_function_call
        // out of the search). Tested as the search calls it: the caller may assign it later. Only a
        // std::function: another predicate's operator bool may mean anything (an empty allow-list).
        if constexpr (is_std_function<F>)
          if (!static_cast<bool>(*referenced)) return true;
        return static_cast<bool>((*referenced)(id));
      };
    }
  }
  /// A temporary that cannot be held by value would dangle once the statement ends.
  template <class F>
  requires(predicate<F> && !std::is_lvalue_reference_v<F> && !held_by_value<std::remove_cvref_t<F>>)
      id_filter(F&& temporary)
  = delete;

  [[nodiscard]] explicit operator bool() const noexcept { return call_ != nullptr; }
  /// True when `id` may be returned (always true for an empty filter).
  [[nodiscard]] bool accepts(vector_id id) const { return call_ == nullptr || call_(storage_, id); }
  /// The set this filter was made from, or null for any other predicate: the ids it accepts, for an index
  /// to look up instead of testing every stored id.
  [[nodiscard]] const id_set* listed() const noexcept { return listed_; }

 private:
  alignas(void*) unsigned char storage_[inline_bytes] = {};  // the predicate, or a pointer to it
  bool (*call_)(const void*, vector_id) = nullptr;
  const id_set* listed_ = nullptr;
};

/// Settings of one search call. Index-specific knobs (`ef`, `nprobe`, ...) join this struct as the
/// indexes that read them land; an index ignores the knobs of other kinds (`ef` in a flat index,
/// `refine_factor` in HNSW), but refuses one of its own kind that it cannot honour: `refine_factor` > 0 on
/// an IVF-PQ index built without full vectors or an SQ8 copy throws `errc::invalid_argument`, rather than
/// return unre-ranked distances the caller asked to have re-ranked. So one tuned `search_params` serves
/// every index except such an IVF-PQ one (a user-eyes review).
struct search_params {
  /// Only ids the filter accepts are returned. Rows stay k long whenever the index holds k ids the filter
  /// accepts (unreachable HNSW nodes aside), padded with `no_id` beyond those. `Flat` scores every id.
  /// IVF kinds: a row that the nprobe lists leave short searches twice the lists, nearest first, then
  /// twice again, until it holds k or every list was searched (`widen`; since session 46: before, a filter
  /// whose ids lay in other lists left rows empty, 198 of 200 at nprobe 1 in
  /// `benchmarks/results/filtered-search.cpp ivf_short`; none since); unfiltered rows too, when the probed
  /// lists hold fewer than k vectors. Only short rows pay: their scans at most twice their last try's. A
  /// collection searches, for a row its `shard_probe` shards left short, every shard it skipped, and
  /// widens a row its IVF shards left short across all of them. HNSW walks the graph until ef accepted
  /// nodes are found; under a filter that accepts few that walk scores most of the graph (42× a `Flat`
  /// scan at 0.1% of 20,000 64-d rows passing), so it scores the accepted nodes directly instead,
  /// exactly (`filter_scan`): a batch lists them once when a sample says they are few, a single query
  /// once its walk has cost more than a scan would (docs/hnsw.md, "Filters that accept few nodes"). A
  /// `Flat` batch whose filter a sample finds selective runs it once per stored row and then scores only
  /// the accepted rows (`flat_index::sparse_filter`). A filter made from an `id_set` listing at most 1/16
  /// of the index is looked up instead, by `Flat` and HNSW for single queries too (`id_set`).
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
  /// A two-stage index (`refine_index`, factory `...,RFlat` / `Refine(...)`) always re-ranks: there 0
  /// means its default depth, k · 4.
  std::size_t refine_factor = 0;
  /// Collection with semantic sharding: number of nearest shards each query visits; hybrid sharding:
  /// number of nearest groups (all shards of each). 0 (the default) visits every shard; hash and range
  /// collections always visit every shard. Values above the shard (group) count visit all.
  std::size_t shard_probe = 0;
  /// IVF: a coarse pass to use instead of the index's own for batches of at least its `min_batch()`
  /// queries (the CUDA component's `shoal::cuda::coarse_quantizer`, built from the index's centroids);
  /// null (the default) keeps the index's. Must outlive the call. See `shoal/core/coarse_probe.hpp`.
  const coarse_probe* coarse = nullptr;
  /// HNSW, with a filter: whether a search may score the nodes the filter accepts instead of walking the
  /// graph (a batch when a sample says they are few, a single query once its walk has cost more than a
  /// scan would: docs/hnsw.md, "Filters that accept few nodes"). Those rows are exact. true (the
  /// default); false always walks, as a test of which nodes the graph reaches needs.
  bool filter_scan = true;
  /// IVF: whether a row that its nprobe lists leave with fewer than k ids searches more lists until it
  /// holds k (see `filter`). true (the default); false returns such rows padded with `no_id`, as FAISS
  /// does. A collection searches its IVF shards with false and widens a short row across them itself.
  bool widen = true;
  /// IVF: the row length at which `widen` stops, when below the k asked for; 0 (the default) means k. A
  /// collection of IVF shards stops its widening there too. A two-stage index (`refine_index`) sets it,
  /// when 0, to the k it returns: its first stage's rows are k · refine_factor deep, and candidates past k
  /// sharpen the re-rank but are not worth more lists (widened to the depth, nprobe 1 ran slower than
  /// nprobe 2 wherever a list held fewer than k · refine_factor rows: 11.2 against 6.9 µs per query, a
  /// review of session 46); a value above k widens its first stage up to that many (at most the depth).
  std::size_t widen_to = 0;
};

}  // namespace shoal
