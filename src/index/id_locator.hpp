#pragma once
// Which inverted list holds an id, in 4 bytes per slot: IVF-PQ's answer to "is this id stored, and
// where" without an id map.

#include <bit>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <new>
#include <span>
#include <vector>

#include "core/linear_probing.hpp"
#include "core/phase_fair_mutex.hpp"
#include "shoal/core/types.hpp"

namespace shoal::detail {

/// A hash table of (fingerprint of an id, list number) pairs packed into 32-bit slots, with linear
/// probing. It answers "which lists may hold id x": every slot on x's probe run whose fingerprint is
/// x's names a candidate list, and the caller scans that list's ids to be sure. So it never misses a
/// stored id (below), and a miss costs a probe run plus, rarely, the scan of a list that merely shares
/// the fingerprint — where without it, IVF-PQ scanned every list's ids on each add (the duplicate check),
/// remove and `contains`: O(size) per one-vector write, 6× FAISS's adds at 100,000 vectors (session 37).
///
/// Why not an id map (IVF-Flat's id → (list, slot))? An exact map holds the 8-byte id again, and the
/// slot, which moves whenever a removal swaps the last entry in: 16 bytes per slot or more against PQ
/// codes of 8-100 bytes. Here a slot is 4 bytes: the list number in the low `list_bits` =
/// bit_width(nlist − 1) bits (at most 24, `max_nlist`), and a fingerprint of the id's hash in the rest
/// (8-32 bits: a wrong candidate list comes up with probability about run length / 2^fingerprint bits).
/// The table is rebuilt when it would pass 7/8 full (tombstones counted), to 3/5 full once the write
/// that asked for room is in: 4.6-6.7 bytes per stored vector while the index grows; removals rebuild it
/// smaller once it is less than 1/8 full (`shrink`).
///
/// The hash is splitmix64's finaliser, public and invertible: ids chosen to share a home slot make
/// probe runs as long as the index (a review built 40,000 such ids: 67 µs per add instead of 1.5) —
/// no worse than the scan of every list this replaced, and IVF-Flat's `unordered_map` (identity hash)
/// can be flooded the same way. Not seeded, so that the table is the same in every process.
///
/// Deletion without false negatives. `erase` tombstones the *first* slot on the id's probe run that
/// holds its exact (fingerprint, list) pair — maybe one that another id with the same pair put there.
/// Nothing is lost: slots never turn empty (only a rebuild empties them), and if the erased slot S was
/// id a's, id b's own slot B comes later on b's run; a's run starts at or before b's home or between
/// b's home and S, and in both cases reaches B without crossing an empty slot, so a now finds B. (The
/// table is a multiset of pairs, and pairs alike are interchangeable.)
///
/// Built lazily, from the lists themselves, by the first write or `contains` that needs it (`reserve`,
/// called holding the index's write mutex): an index loaded only to search never pays for it, and it
/// is not in the file. Growing or purging tombstones
/// rebuilds it the same way.
///
/// Thread safety: one writer at a time (the index's write mutex) calls `reserve`, `insert` and `erase`
/// and may call `find` without a lock; they change the table under `mutex` held exclusively. Other
/// threads call `find`, `built` and `bytes` holding `mutex` shared.
class id_locator {
 public:
  mutable phase_fair_mutex mutex;

  /// For lists numbered 0 … nlist − 1, 1 ≤ nlist ≤ 2^24 (`max_nlist`; asserted where the index uses it).
  explicit id_locator(std::size_t nlist) noexcept : list_bits_(static_cast<unsigned>(std::bit_width(nlist - 1))) {}

  [[nodiscard]] bool built() const noexcept { return !slots_.empty(); }
  [[nodiscard]] std::size_t bytes() const noexcept { return slots_.capacity() * sizeof(std::uint32_t); }

  /// Calls `visit(list)` for every candidate list of `id` until a call returns true; returns whether
  /// one did. False when the table is not built.
  template <class Visit>
  [[nodiscard]] bool find(vector_id id, Visit&& visit) const {
    if (!built()) return false;
    const std::uint64_t h = linear_probing::mix(id);
    const std::uint32_t fp = fingerprint(h);
    for (std::size_t i = home(h, slots_.size());; i = linear_probing::next(i, slots_.size())) {  // ends: ≤ 7/8 full
      const std::uint32_t s = slots_[i];
      if (s == empty) return false;
      if (s != tombstone && (s >> list_bits_) == fp && visit(s & list_mask())) return true;
    }
  }

  /// Makes room for `more` inserts beyond the `stored` entries the lists hold now, building or rebuilding
  /// the table where needed: `for_each_stored(put)` must call `put(id, list)` for every stored entry.
  /// May throw `std::bad_alloc`; the table is then as it was.
  template <class ForEachStored>
  void reserve(std::size_t stored, std::size_t more, ForEachStored&& for_each_stored) {
    if (built() && used_ + more <= linear_probing::max_used(slots_.size())) return;
    rebuild(stored + more, for_each_stored);
  }

  /// After removals: rebuilds the table for the `stored` entries once it is less than 1/8 full, as
  /// `reserve` does. Best effort: out of memory, it stays as it is. O(1) per removal, amortised.
  template <class ForEachStored>
  void shrink(std::size_t stored, ForEachStored&& for_each_stored) noexcept {
    if (slots_.size() <= 64 || stored * 8 >= slots_.size()) return;
    try {
      rebuild(stored, for_each_stored);
    } catch (const std::bad_alloc&) {
    }
  }

  /// Records that list `lists[i]` now holds `ids[i]`, for every i, in room `reserve` made (one lock for
  /// them all).
  void insert(std::span<const vector_id> ids, const std::uint32_t* lists) noexcept {
    const std::unique_lock lock(mutex);
    for (std::size_t i = 0; i < ids.size(); ++i) put(slots_, used_, ids[i], lists[i]);
  }

  /// Forgets one record of `id` in `list` (there must be one).
  void erase(vector_id id, std::size_t list) noexcept {
    if (!built()) return;
    const std::uint64_t h = linear_probing::mix(id);
    const std::uint32_t pair = (fingerprint(h) << list_bits_) | static_cast<std::uint32_t>(list);
    const std::unique_lock lock(mutex);
    for (std::size_t i = home(h, slots_.size()); slots_[i] != empty; i = linear_probing::next(i, slots_.size())) {
      if (slots_[i] == pair) {
        slots_[i] = tombstone;
        return;
      }
    }
  }

 private:
  static constexpr std::uint32_t empty = 0;
  static constexpr std::uint32_t tombstone = ~std::uint32_t{0};

  /// The top 32 − list_bits bits of the hash, kept off 0 (so no pair is `empty`) and off all ones (so
  /// none is `tombstone`).
  [[nodiscard]] std::uint32_t fingerprint(std::uint64_t h) const noexcept {
    const unsigned bits = 32 - list_bits_;
    const auto top = static_cast<std::uint32_t>(h >> (64 - bits));
    const std::uint32_t all = bits == 32 ? ~std::uint32_t{0} : (std::uint32_t{1} << bits) - 1;
    return top == 0 ? 1 : top == all ? all - 1 : top;
  }
  /// The home slot, from the hash's bits below the fingerprint.
  [[nodiscard]] std::size_t home(std::uint64_t h, std::size_t capacity) const noexcept {
    return linear_probing::home(h << (32 - list_bits_), capacity);
  }
  [[nodiscard]] std::uint32_t list_mask() const noexcept { return (std::uint32_t{1} << list_bits_) - 1; }

  /// The table rebuilt from `for_each_stored` for `entries`, `rebuilt_capacity` slots, swapped in under
  /// `mutex`; throws `std::bad_alloc` before changing anything.
  template <class ForEachStored>
  void rebuild(std::size_t entries, ForEachStored& for_each_stored) {
    std::vector<std::uint32_t> fresh(linear_probing::rebuilt_capacity(entries), empty);
    std::size_t fresh_used = 0;
    for_each_stored([&](vector_id id, std::size_t list) { put(fresh, fresh_used, id, list); });
    const std::unique_lock lock(mutex);
    slots_.swap(fresh);
    used_ = fresh_used;
  }
  /// Puts (id, list) in the first empty or tombstoned slot of the id's run: every slot before it stays
  /// occupied, so the pair is found from the id's home.
  void put(std::vector<std::uint32_t>& slots, std::size_t& used, vector_id id, std::size_t list) const noexcept {
    const std::uint64_t h = linear_probing::mix(id);
    std::size_t i = home(h, slots.size());
    while (slots[i] != empty && slots[i] != tombstone) i = linear_probing::next(i, slots.size());
    used += slots[i] == empty ? 1 : 0;
    slots[i] = (fingerprint(h) << list_bits_) | static_cast<std::uint32_t>(list);
  }

  unsigned list_bits_;
  std::vector<std::uint32_t> slots_;
  std::size_t used_ = 0;  // slots not empty: entries and tombstones
};

}  // namespace shoal::detail
