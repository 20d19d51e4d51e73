#include "shoal/core/id_set.hpp"

#include <algorithm>

#include "shoal/core/error.hpp"

namespace shoal {

id_set::id_set(std::span<const vector_id> ids) : ids_(ids.begin(), ids.end()) {
  std::sort(ids_.begin(), ids_.end());
  ids_.erase(std::unique(ids_.begin(), ids_.end()), ids_.end());
  SHOAL_CHECK(ids_.empty() || ids_.back() != no_id,
              "id_set: no_id (2^64 - 1) is reserved for a missing result and is "
              "never stored");
  // At most half full, so a miss ends within a few slots; a power of two, so the home slot is the top bits
  // of one multiplication.
  std::size_t size = 16;
  shift_ = 60;
  while (size < 2 * ids_.size()) {
    size *= 2;
    --shift_;
  }
  table_.assign(size, no_id);
  bits_.assign(4 * size / 64, 0);  // size ≥ 16: 4 · size bits, whole words
  for (const vector_id id : ids_) {
    const std::uint64_t hash = id * 0x9e3779b97f4a7c15ULL;
    const auto bit = static_cast<std::size_t>(hash >> (shift_ - 2));
    bits_[bit >> 6] |= std::uint64_t{1} << (bit & 63);
    auto i = static_cast<std::size_t>(hash >> shift_);
    while (table_[i] != no_id) i = (i + 1) & (size - 1);
    table_[i] = id;
  }
}

}  // namespace shoal
