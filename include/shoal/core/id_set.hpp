#pragma once
/// \file
/// A fixed set of ids to search among: an allow-list filter whose members the indexes can enumerate.

#include <cstddef>
#include <span>
#include <vector>

#include "shoal/core/types.hpp"

namespace shoal {

/// The ids a search may return, given as a list: the multi-tenant or access-controlled search ("only
/// these documents"). As a filter (`search_params::filter = set;`, referenced: the set must outlive the
/// search) it accepts what any predicate over the same ids accepts, and the rows are the same; but where
/// it holds few ids beside an index, the index looks them up and scores only those, instead of testing
/// the predicate on every stored id: `Flat` and HNSW (single queries and batches) score the listed ids
/// directly when they are at most 1/16 of the index (`flat_index::sparse_filter`), so a query's cost
/// follows the list, not the index. IVF kinds and range searches test it as a predicate (a hash lookup).
/// Ids the index does not hold are skipped. Immutable once built; safe to share between threads.
class id_set {
 public:
  /// The empty set (accepts nothing).
  id_set() = default;
  /// The set of `ids` (in any order; repeats count once). Throws `shoal::error` (`invalid_argument`) for
  /// `no_id`, which no index stores.
  explicit id_set(std::span<const vector_id> ids);

  /// Whether `id` is in the set: one lookup in an open-addressing table, O(1).
  [[nodiscard]] bool contains(vector_id id) const noexcept;
  /// As a predicate (`id_filter`).
  [[nodiscard]] bool operator()(vector_id id) const noexcept { return contains(id); }
  /// The ids, ascending, each once.
  [[nodiscard]] std::span<const vector_id> ids() const noexcept { return ids_; }
  [[nodiscard]] std::size_t size() const noexcept { return ids_.size(); }
  [[nodiscard]] bool empty() const noexcept { return ids_.empty(); }
  /// Bytes held (the sorted ids and the table).
  [[nodiscard]] std::size_t memory_bytes() const noexcept {
    return (ids_.capacity() + table_.capacity()) * sizeof(vector_id);
  }

 private:
  std::vector<vector_id> ids_;    // ascending, unique
  std::vector<vector_id> table_;  // open addressing (linear probing), `no_id` marks a free slot
};

}  // namespace shoal
