#pragma once
// Internal: the two steps that let a write run out of memory (`std::bad_alloc`) without leaving a
// half-made change. A write first takes every allocation it will need, through these, while nothing it
// changes is visible yet; the steps after them do not allocate and cannot fail.

#include <algorithm>
#include <cstddef>
#include <span>

namespace shoal::detail {

/// Makes room in `v` for `size` elements, so that growing it to that size does not reallocate. The
/// capacity grows at least geometrically, as `push_back` would: `reserve(size)` alone allocates exactly
/// `size`, and a stream of one-vector adds then copied the whole array at every add. On `bad_alloc`,
/// `v` is unchanged.
template <class Vector>
void reserve_growing(Vector& v, std::size_t size) {
  if (size > v.capacity()) v.reserve(std::max(size, 2 * v.capacity()));
}

/// Inserts `keys[i] → value(i)` into the unordered map `map` for every i, all or none: out of memory
/// part-way through erases the keys inserted so far and rethrows. None of `keys` may be in `map` before.
template <class Map, class Key, class Value>
void insert_all_or_nothing(Map& map, std::span<const Key> keys, Value value) {
  map.reserve(map.size() + keys.size());  // strong guarantee: no change when it throws
  std::size_t inserted = 0;
  try {
    for (; inserted < keys.size(); ++inserted) map.emplace(keys[inserted], value(inserted));
  } catch (...) {
    for (std::size_t i = 0; i < inserted; ++i) map.erase(keys[i]);
    throw;
  }
}

}  // namespace shoal::detail
