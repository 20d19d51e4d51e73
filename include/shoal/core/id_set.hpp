#pragma once
/// \file
/// A fixed set of ids to search among: an allow-list filter whose members the indexes can enumerate.

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "shoal/core/types.hpp"

namespace shoal {

/// The ids a search may return, given as a list: the multi-tenant or access-controlled search ("only
/// these documents"). As a filter (`search_params::filter = set;`, referenced: the set must outlive the
/// search) it accepts what any predicate over the same ids accepts; where the index holds few of its ids,
/// the index looks them up instead of testing every stored id, so a query's cost follows the set, not the
/// index:
///  - `Flat` scores only their rows (identical rows to the predicate's) when it holds at most 1/16 of its
///    rows of them (`flat_index::sparse_filter`), single queries and batches alike;
///  - HNSW lists their nodes under the same bound — a batch always, a single query when scoring the list
///    beats walking to them (`search_params::filter_scan`; docs/hnsw.md) — and its range search too;
///  - IVF-Flat scores them directly, exactly, when its nprobe lists would hold fewer than k of them (rows
///    would widen across more lists) or scoring them costs less than testing its lists' ids;
///  - otherwise, and in IVF-PQ and `Flat`'s range search, the set is a predicate (`contains`).
/// The index decides on the ids it holds, estimated from a sample of the set: a collection passes the set
/// to every shard, and each holds its share. Ids an index does not hold are skipped. Immutable once
/// built; safe to share between threads.
class id_set {
 public:
  /// The empty set (accepts nothing).
  id_set() = default;
  /// The set of `ids` (in any order; repeats count once). Throws `shoal::error` (`invalid_argument`) for
  /// `no_id`, which no index stores.
  explicit id_set(std::span<const vector_id> ids);

  /// Whether `id` is in the set, O(1) and inline — a filter's call per node of a walk or per row of a list
  /// scan: a bit of a filter four times the table's size first (one load; most ids of an index are not in
  /// a small set, and this answers 7 in 8 of those without a branch that mispredicts), then the
  /// open-addressing table, at most half full (a power of two of slots, Fibonacci hashing, linear
  /// probing). Through the table alone an IVF scan testing 1,600 ids per query took 2.1× a bitmap
  /// predicate's time (session 47).
  [[nodiscard]] bool contains(vector_id id) const noexcept {
    if (table_.empty()) return false;
    const std::uint64_t hash = id * 0x9e3779b97f4a7c15ULL;
    const auto bit = static_cast<std::size_t>(hash >> (shift_ - 2));
    if (((bits_[bit >> 6] >> (bit & 63)) & 1) == 0) return false;
    const std::size_t mask = table_.size() - 1;
    for (auto i = static_cast<std::size_t>(hash >> shift_);; i = (i + 1) & mask) {
      if (table_[i] == id) return id != no_id;
      if (table_[i] == no_id) return false;
    }
  }
  /// As a predicate (`id_filter`).
  [[nodiscard]] bool operator()(vector_id id) const noexcept { return contains(id); }
  /// The ids, ascending, each once.
  [[nodiscard]] std::span<const vector_id> ids() const noexcept { return ids_; }
  [[nodiscard]] std::size_t size() const noexcept { return ids_.size(); }
  [[nodiscard]] bool empty() const noexcept { return ids_.empty(); }
  /// Bytes held (the sorted ids, the table and its bits): about 40 per id.
  [[nodiscard]] std::size_t memory_bytes() const noexcept {
    return (ids_.capacity() + table_.capacity()) * sizeof(vector_id) + bits_.capacity() * sizeof(std::uint64_t);
  }

 private:
  std::vector<vector_id> ids_;       // ascending, unique
  std::vector<vector_id> table_;     // open addressing (linear probing), `no_id` marks a free slot
  std::vector<std::uint64_t> bits_;  // 4 bits per table slot: the hash's top bits, set for each member
  unsigned shift_ = 63;              // 64 − log2(table size): the hash's top bits pick the home slot
};

}  // namespace shoal
