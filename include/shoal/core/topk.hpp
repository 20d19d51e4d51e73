#pragma once
/// \file
/// Bounded top-k selection by (distance, id): the one tie-breaking rule every shoal search follows.

#include <algorithm>
#include <cstddef>
#include <functional>
#include <span>
#include <utility>
#include <vector>

#include "shoal/core/neighbors.hpp"
#include "shoal/core/types.hpp"

namespace shoal {

/// One candidate; ordered by distance, then by id, so that ties always resolve to the smaller id.
struct scored_id {
  float distance;
  vector_id id;
  // Both tests evaluated and combined without branches: inside a heap's sifts the outcome is a coin flip.
  friend constexpr bool operator<(const scored_id& a, const scored_id& b) noexcept {
    return static_cast<bool>(static_cast<int>(a.distance < b.distance) |
                             (static_cast<int>(a.distance == b.distance) & static_cast<int>(a.id < b.id)));
  }
};

/// Replaces the root (the worst) of a non-empty max-heap by `c`, which must not be worse, and restores the
/// heap in one pass down (`std::pop_heap` then `std::push_heap` take a pass down and one back up). The
/// heap stays a `std::` heap for the order `less` (default: `T`'s `operator<`).
template <typename T, typename Less = std::less<T>>
void replace_top(std::vector<T>& heap, const T& c, const Less& less = Less{}) noexcept {
  const std::size_t n = heap.size();
  std::size_t at = 0;
  for (std::size_t child = 1; child < n; child = 2 * at + 1) {
    child += static_cast<std::size_t>(child + 1 < n && less(heap[child], heap[child + 1]));
    if (!less(c, heap[child])) break;
    heap[at] = heap[child];
    at = child;
  }
  heap[at] = c;
}

/// Keeps the k best (smallest) candidates seen so far in a max-heap. `worst()` is the admission
/// threshold: a candidate with a larger distance can never enter, which lets scans skip it cheaply.
class topk_heap {
 public:
  explicit topk_heap(std::size_t k) : k_(k) { heap_.reserve(k); }

  [[nodiscard]] std::size_t capacity() const noexcept { return k_; }
  [[nodiscard]] std::size_t size() const noexcept { return heap_.size(); }
  [[nodiscard]] bool full() const noexcept { return heap_.size() == k_; }
  /// Distance a candidate must not exceed to be considered (+inf until the heap is full).
  [[nodiscard]] float worst() const noexcept { return full() ? heap_.front().distance : no_distance; }

  /// Offers a candidate; keeps it if it beats the current worst under (distance, id) order.
  void push(float distance, vector_id id) {
    const scored_id c{distance, id};
    if (!full()) {
      heap_.push_back(c);
      std::push_heap(heap_.begin(), heap_.end());
    } else if (c < heap_.front()) {
      replace_top(heap_, c);
    }
  }

  void clear() noexcept { heap_.clear(); }
  /// Empties the heap and makes it keep the `k` best from now on (its storage is reused).
  void reset(std::size_t k) {
    heap_.clear();
    heap_.reserve(k);
    k_ = k;
  }

  /// Sorts the kept candidates best first in place and returns them; the next `push` needs a `clear` or
  /// `reset` first.
  [[nodiscard]] std::span<const scored_id> sort() {
    std::sort_heap(heap_.begin(), heap_.end());
    return heap_;
  }

  /// The kept candidates, best first (the heap is emptied).
  [[nodiscard]] std::vector<scored_id> take_sorted() {
    std::sort_heap(heap_.begin(), heap_.end());
    return std::exchange(heap_, {});
  }

  /// Writes the kept candidates best first into one result row of `k_` slots, padding with the
  /// sentinel (`no_id`, `no_distance`); the heap is emptied.
  void write_sorted(std::span<vector_id> ids, std::span<float> distances) {
    std::sort_heap(heap_.begin(), heap_.end());
    for (std::size_t j = 0; j < ids.size(); ++j) {
      ids[j] = j < heap_.size() ? heap_[j].id : no_id;
      distances[j] = j < heap_.size() ? heap_[j].distance : no_distance;
    }
    heap_.clear();
  }

 private:
  std::size_t k_;
  std::vector<scored_id> heap_;
};

}  // namespace shoal
