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

/// Inserts `keys[i]` into the unordered map or set `c` for every i by `insert(i)`, all or none: out of
/// memory part-way through erases the keys inserted so far and rethrows. None of `keys` may be in `c`
/// before, and none may repeat.
template <class Container, class Key, class Insert>
void insert_each_or_none(Container& c, std::span<const Key> keys, const Insert& insert) {
  c.reserve(c.size() + keys.size());  // strong guarantee: no change when it throws
  std::size_t inserted = 0;
  try {
    for (; inserted < keys.size(); ++inserted) insert(inserted);
  } catch (...) {
    for (std::size_t i = 0; i < inserted; ++i) c.erase(keys[i]);
    throw;
  }
}

/// `keys[i] → value(i)` into the unordered map `map` for every i, all or none.
template <class Map, class Key, class Value>
void insert_all_or_nothing(Map& map, std::span<const Key> keys, Value value) {
  insert_each_or_none(map, keys, [&](std::size_t i) { map.emplace(keys[i], value(i)); });
}

/// Every one of `keys` into the unordered set `set`, all or none.
template <class Set, class Key>
void insert_all_or_nothing(Set& set, std::span<const Key> keys) {
  insert_each_or_none(set, keys, [&](std::size_t i) { set.insert(keys[i]); });
}

}  // namespace shoal::detail
