#pragma once
// Internal: a collection's routing table, id → shard, in one flat array of slots.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

#include "core/linear_probing.hpp"
#include "shoal/core/types.hpp"

namespace shoal::detail {

/// A map from ids to 32-bit values (a collection's id → shard) by linear probing: a slot is an 8-byte
/// id and a 4-byte value in two arrays, `no_id` marking an empty one (no stored id is `no_id`:
/// `check_ids` refuses it, and a manifest that holds it is corrupt). Until session 41 this was a
/// `std::unordered_map`: a node of 24 bytes in a 32-byte heap chunk per id plus an 8-byte bucket, about
/// 40 bytes per id and an allocation per insert — more than the whole entry of an IVF-PQ shard with
/// 8-byte codes. Here it is 12 bytes per slot, kept between 3/5 and 7/8 full (`linear_probing`):
/// 13.7-20 bytes per id while it grows; removals rebuild it smaller once it is less than 1/8 full.
/// Removal shifts the later entries of the run back (no tombstones), so the table's order is a function
/// of its history, as an unordered_map's is.
///
/// Not thread-safe: the collection reads it under `layout::table_mutex` shared and changes it under the
/// lock held exclusively.
class id_table {
 public:
  id_table() = default;
  id_table(const id_table&) = delete;  // nothing copies or moves a routing table
  id_table& operator=(const id_table&) = delete;

  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
  /// Bytes of the slots.
  [[nodiscard]] std::size_t bytes() const noexcept {
    return ids_.capacity() * sizeof(vector_id) + values_.capacity() * sizeof(std::uint32_t);
  }

  /// The value of `id`, or null.
  [[nodiscard]] const std::uint32_t* find(vector_id id) const noexcept {
    if (size_ == 0) return nullptr;
    for (std::size_t i = home(id); ids_[i] != no_id; i = linear_probing::next(i, ids_.size()))
      if (ids_[i] == id) return &values_[i];
    return nullptr;
  }
  [[nodiscard]] bool contains(vector_id id) const noexcept { return find(id) != nullptr; }

  /// Room for `count` ids in all, so that inserts up to that count do not allocate. May throw
  /// `std::bad_alloc`; the table is then as it was.
  void reserve(std::size_t count) {
    if (count <= linear_probing::max_used(ids_.size())) return;
    rebuild(std::max(count, size_ + promised_));  // a rebuild keeps every promise
  }

  /// Room for `more` ids beyond those stored and those promised before, promised until `release`:
  /// inserts within the promise do not allocate, whatever other promises are made and kept meanwhile
  /// (a collection's concurrent writes each promise their ids before they are logged). May throw
  /// `std::bad_alloc`; nothing is promised then.
  void promise(std::size_t more) {
    reserve(size_ + promised_ + more);
    promised_ += more;
  }
  /// Ends a promise of `count` ids (made by `promise`), kept or not.
  void release(std::size_t count) noexcept { promised_ -= count; }

  /// Sets `id`'s value; returns whether `id` was new. May allocate, unless a promise covers it.
  bool insert_or_assign(vector_id id, std::uint32_t value) {
    if (const std::uint32_t* at = find(id)) {  // a stored id: its value changes, nothing grows
      values_[static_cast<std::size_t>(at - values_.data())] = value;
      return false;
    }
    reserve(size_ + 1);  // within a promise: no rebuild
    put(id, value);
    return true;
  }

  /// Removes `id`; returns whether it was there.
  bool erase(vector_id id) noexcept {
    if (size_ == 0) return false;
    std::size_t hole = home(id);
    while (ids_[hole] != id) {
      if (ids_[hole] == no_id) return false;
      hole = linear_probing::next(hole, ids_.size());
    }
    // Backward shift: each later entry of the run whose home does not lie in (hole, its slot] moves
    // into the hole, which moves on to where it was; the run then holds no gap a lookup would stop at.
    const std::size_t n = ids_.size();
    for (std::size_t j = linear_probing::next(hole, n); ids_[j] != no_id; j = linear_probing::next(j, n)) {
      const std::size_t h = home(ids_[j]);
      if ((j + n - h) % n >= (j + n - hole) % n) {
        ids_[hole] = ids_[j];
        values_[hole] = values_[j];
        hole = j;
      }
    }
    ids_[hole] = no_id;
    --size_;
    shrink();
    return true;
  }

  /// Calls `f(id, value)` for every entry, in slot order.
  template <class F>
  void for_each(F&& f) const {
    for (std::size_t i = 0; i < ids_.size(); ++i)
      if (ids_[i] != no_id) f(ids_[i], values_[i]);
  }

 private:
  /// The table rebuilt for `count` entries, `rebuilt_capacity` slots; throws `std::bad_alloc` before
  /// changing anything.
  void rebuild(std::size_t count) {
    std::vector<vector_id> ids(linear_probing::rebuilt_capacity(count), no_id);
    std::vector<std::uint32_t> values(ids.size());
    ids.swap(ids_);
    values.swap(values_);
    size_ = 0;
    for (std::size_t i = 0; i < ids.size(); ++i)  // the old slots, into the new arrays (no allocation)
      if (ids[i] != no_id) put(ids[i], values[i]);
  }

  [[nodiscard]] std::size_t home(vector_id id) const noexcept {
    return linear_probing::home(linear_probing::mix(id), ids_.size());
  }
  /// Rebuilds the table smaller once it is less than 1/8 full (after many removals), to 3/5 of what is
  /// stored and promised; out of memory, it stays as it is. O(1) per removal, amortised: the removals
  /// since the last rebuild outnumber what is left.
  void shrink() noexcept {
    if (ids_.size() <= 64 || (size_ + promised_) * 8 >= ids_.size()) return;
    try {
      rebuild(size_ + promised_);
    } catch (const std::bad_alloc&) {
    }
  }
  /// Sets `id`'s value in room there is.
  void put(vector_id id, std::uint32_t value) noexcept {
    std::size_t i = home(id);
    while (ids_[i] != no_id && ids_[i] != id) i = linear_probing::next(i, ids_.size());
    if (ids_[i] == no_id) {
      ids_[i] = id;
      ++size_;
    }
    values_[i] = value;
  }

  std::vector<vector_id> ids_;
  std::vector<std::uint32_t> values_;
  std::size_t size_ = 0;
  std::size_t promised_ = 0;
};

}  // namespace shoal::detail
