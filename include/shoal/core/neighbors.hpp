#pragma once
/// \file
/// Search results: k-NN buffers (`neighbors`, `neighbors_view`) and variable-length range results.

#include <cstddef>
#include <limits>
#include <span>
#include <vector>

#include "shoal/core/types.hpp"

namespace shoal {

/// Distance reported in result slots that hold no neighbour (paired with `no_id`).
inline constexpr float no_distance = std::numeric_limits<float>::infinity();

/// Non-owning `rows x k` result buffers that a search writes into: row r's neighbours are
/// `ids[r * k + j]`, `distances[r * k + j]` for j in [0, k), nearest first, ties by smaller id; slots
/// beyond the neighbours found hold `no_id` / `no_distance`.
struct neighbors_view {
  vector_id* ids = nullptr;
  float* distances = nullptr;
  std::size_t rows = 0;
  std::size_t k = 0;

  [[nodiscard]] std::span<vector_id> row_ids(std::size_t r) const noexcept { return {ids + r * k, k}; }
  [[nodiscard]] std::span<float> row_distances(std::size_t r) const noexcept { return {distances + r * k, k}; }
  /// Rows [first, first + count) of the same buffers.
  [[nodiscard]] neighbors_view slice(std::size_t first, std::size_t count) const noexcept {
    return {ids + first * k, distances + first * k, count, k};
  }
};

/// Owning `rows x k` result, initialised to the sentinel (`no_id`, `no_distance`).
class neighbors {
 public:
  neighbors() = default;
  /// Throws `shoal::error` when `rows x k` results cannot exist (a k meant as "all", say); a size
  /// that merely does not fit in memory throws `std::bad_alloc`.
  neighbors(std::size_t rows, std::size_t k)
      : ids_(detail::checked_elements<vector_id>(rows, k, "neighbors: rows x k"), no_id),
        distances_(rows * k, no_distance),
        rows_(rows),
        k_(k) {}

  [[nodiscard]] std::size_t rows() const noexcept { return rows_; }
  [[nodiscard]] std::size_t k() const noexcept { return k_; }
  [[nodiscard]] vector_id id(std::size_t r, std::size_t j) const noexcept { return ids_[r * k_ + j]; }
  [[nodiscard]] float distance(std::size_t r, std::size_t j) const noexcept { return distances_[r * k_ + j]; }
  [[nodiscard]] std::span<const vector_id> row_ids(std::size_t r) const noexcept { return {ids_.data() + r * k_, k_}; }
  [[nodiscard]] std::span<const float> row_distances(std::size_t r) const noexcept {
    return {distances_.data() + r * k_, k_};
  }
  [[nodiscard]] const std::vector<vector_id>& ids() const noexcept { return ids_; }
  [[nodiscard]] const std::vector<float>& distances() const noexcept { return distances_; }
  [[nodiscard]] neighbors_view view() noexcept { return {ids_.data(), distances_.data(), rows_, k_}; }

 private:
  std::vector<vector_id> ids_;
  std::vector<float> distances_;
  std::size_t rows_ = 0;
  std::size_t k_ = 0;
};

/// Result of a range search: query r's matches are entries [offsets[r], offsets[r + 1]) of `ids` and
/// `distances`, nearest first, ties by smaller id. `offsets` has rows + 1 entries.
struct range_result {
  std::vector<std::size_t> offsets{0};
  std::vector<vector_id> ids;
  std::vector<float> distances;

  [[nodiscard]] std::size_t rows() const noexcept { return offsets.size() - 1; }
  [[nodiscard]] std::span<const vector_id> row_ids(std::size_t r) const noexcept {
    return {ids.data() + offsets[r], offsets[r + 1] - offsets[r]};
  }
  [[nodiscard]] std::span<const float> row_distances(std::size_t r) const noexcept {
    return {distances.data() + offsets[r], offsets[r + 1] - offsets[r]};
  }
};

}  // namespace shoal
