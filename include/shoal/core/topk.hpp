#pragma once
/// \file
/// Bounded top-k selection by (distance, id): the one tie-breaking rule every shoal search follows.

#include <algorithm>
#include <cstddef>
#include <functional>
#include <span>
#include <utility>
#include <vector>

#include "shoal/core/error.hpp"
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

/// Keeps the k best (smallest) candidates seen so far. `worst()` is the admission threshold: a candidate
/// with a larger distance can never enter, which lets scans skip it cheaply.
///
/// Up to `sorted_max_k` the candidates are kept as a sorted array, above it in a max-heap. For small k a
/// new entry shifts a few neighbours along, where a heap's sift takes a coin-flip branch at every level:
/// measured on bigann10k IVF-PQ (a k = 10 re-rank of 40 candidates, and nprobe 8 of 100 lists in the
/// coarse pass) the heap pushes were ~6% of a query (BENCHMARKS.md, IVF-PQ, session 15).
class topk_heap {
 public:
  /// Largest k kept as a sorted array: an insertion moves k/2 entries on average.
  static constexpr std::size_t sorted_max_k = 32;

  /// Storage for up to `reserved_max` candidates is taken up front; a larger k grows it as candidates
  /// come, so a k far above the index size (asking for "all") costs what is found, not k.
  static constexpr std::size_t reserved_max = 4096;

  /// Throws `shoal::error` (`errc::invalid_argument`) when k is 0: a search for nothing is refused
  /// before it gets here.
  explicit topk_heap(std::size_t k) : k_(checked(k)) { heap_.reserve(std::min(k, reserved_max)); }

  [[nodiscard]] std::size_t capacity() const noexcept { return k_; }
  [[nodiscard]] std::size_t size() const noexcept { return heap_.size(); }
  [[nodiscard]] bool full() const noexcept { return heap_.size() == k_; }
  /// Distance a candidate must not exceed to be considered (+inf until the heap is full).
  [[nodiscard]] float worst() const noexcept { return full() ? last().distance : no_distance; }

  /// Offers a candidate; keeps it if it beats the current worst under (distance, id) order.
  void push(float distance, vector_id id) {
    const scored_id c{distance, id};
    if (full() && !(c < last())) return;
    if (k_ <= sorted_max_k) {
      if (full()) heap_.pop_back();
      std::size_t at = heap_.size();
      heap_.push_back(c);
      for (; at > 0 && c < heap_[at - 1]; --at) heap_[at] = heap_[at - 1];
      heap_[at] = c;
    } else if (!full()) {
      heap_.push_back(c);
      std::push_heap(heap_.begin(), heap_.end());
    } else {
      replace_top(heap_, c);
    }
  }

  void clear() noexcept { heap_.clear(); }
  /// Empties the heap and makes it keep the `k` best from now on (its storage is reused).
  void reset(std::size_t k) {
    k_ = checked(k);
    heap_.clear();
    heap_.reserve(std::min(k, reserved_max));
  }

  /// Sorts the kept candidates best first in place and returns them; the next `push` needs a `clear` or
  /// `reset` first.
  [[nodiscard]] std::span<const scored_id> sort() {
    order();
    return heap_;
  }

  /// The kept candidates, best first (the heap is emptied).
  [[nodiscard]] std::vector<scored_id> take_sorted() {
    order();
    return std::exchange(heap_, {});
  }

  /// Writes the kept candidates best first into one result row of `k_` slots, padding with the
  /// sentinel (`no_id`, `no_distance`); the heap is emptied.
  void write_sorted(std::span<vector_id> ids, std::span<float> distances) {
    order();
    for (std::size_t j = 0; j < ids.size(); ++j) {
      ids[j] = j < heap_.size() ? heap_[j].id : no_id;
      distances[j] = j < heap_.size() ? heap_[j].distance : no_distance;
    }
    heap_.clear();
  }

 private:
  static std::size_t checked(std::size_t k) {
    SHOAL_CHECK(k >= 1, "topk_heap: k must be at least 1");
    return k;
  }
  /// The worst kept candidate: the sorted array's last, the heap's root.
  [[nodiscard]] const scored_id& last() const noexcept { return k_ <= sorted_max_k ? heap_.back() : heap_.front(); }
  /// Best first: the sorted array already is.
  void order() {
    if (k_ > sorted_max_k) std::sort_heap(heap_.begin(), heap_.end());
  }

  std::size_t k_;
  std::vector<scored_id> heap_;  // ascending (k ≤ sorted_max_k) or a max-heap
};

namespace detail {

/// How many candidates a re-ranked search gathers for k results: k · `factor`, saturating instead of
/// wrapping, and no more than the `stored` vectors there are to find (but at least k, so that the rows
/// are still padded to k). A `factor` of 0 gives 0: callers pass a factor of at least 1.
[[nodiscard]] constexpr std::size_t candidate_depth(std::size_t k, std::size_t factor, std::size_t stored) noexcept {
  const std::size_t most = std::max(k, stored);
  return factor != 0 && k > most / factor ? most : std::min(k * factor, most);
}

}  // namespace detail

}  // namespace shoal
