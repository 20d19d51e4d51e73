#pragma once
// Internal: the inverted lists of the IVF family. A list holds its entries' codes (IVF-Flat: the full
// vector, `code_len` floats per entry; IVF-PQ: sub-quantizer codes, m bytes per entry or 32-entry
// fast-scan blocks, laid out by the index itself) and ids, both contiguous and 64-byte aligned, guarded
// by its own reader-writer lock. Removal moves the last entry into the freed slot, so lists stay dense
// and scans never meet holes. After a memory-mapped load the codes and ids are runs of the mapping
// instead (the index is then read-only): readers go through `count`, `code_data` and `id_data`.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <shared_mutex>
#include <span>
#include <vector>

#include "core/all_or_nothing.hpp"
#include "core/phase_fair_mutex.hpp"
#include "shoal/core/error.hpp"
#include "shoal/core/types.hpp"

namespace shoal::detail {

/// Most lists an IVF index may have. Its lists exist from construction on (a list object, its lock and a
/// pointer each: about 145 bytes for IVF-Flat, 200 for IVF-PQ, so 2.4 and 3.4 GB at this cap, before
/// training), and training needs at least one vector per list: 2^24 is far above any useful nlist and
/// keeps a mistyped one (2^32) from asking for hundreds of gigabytes.
inline constexpr std::size_t max_nlist = std::size_t{1} << 24;

/// Throws `errc::invalid_argument` unless 1 ≤ `nlist` ≤ `max_nlist`; `who` names the index.
inline void check_nlist(std::size_t nlist, const char* who) {
  SHOAL_CHECK(nlist > 0, who, ": nlist must be at least 1");
  SHOAL_CHECK(nlist <= max_nlist, who, ": nlist ", nlist, " exceeds ", max_nlist,
              " (2^24): lists are allocated up front, and training needs a vector per list");
}

/// Position of the first `id` in `ids[0, n)`, or `n`. IVF-PQ keeps no id map and finds ids by scanning
/// the lists its id locator names (`id_locator.hpp`; every list before the locator is built): whole blocks are tested
/// without a branch per id, in arithmetic the compiler vectorises at the library's baseline (SSE2 has no 64-bit
/// compare; x = 0 exactly where bit 63 of ~(x | −x) is set).
[[nodiscard]] inline std::size_t find_id(const vector_id* ids, std::size_t n, vector_id id) noexcept {
  constexpr std::size_t block = 32;
  std::size_t i = 0;
  for (; i + block <= n; i += block) {
    std::uint64_t zero = 0;  // bit 63: some id of the block is `id`
    for (std::size_t j = 0; j < block; ++j) {
      const std::uint64_t x = ids[i + j] ^ id;
      zero |= ~(x | (0 - x));
    }
    if ((zero >> 63) != 0) break;
  }
  for (; i < n; ++i)
    if (ids[i] == id) return i;
  return n;
}

template <class Code>
struct inverted_list {
  /// Shared by scans, exclusive for appends and removals of this list; phase-fair, so neither side starves
  /// (under a lock that let readers in ahead of a waiting writer, a stream of searches kept an add or
  /// remove waiting for up to 60 s).
  mutable phase_fair_mutex mutex;
  aligned_vector<Code> codes;  // size() entries of code_len elements, entry-major
  aligned_vector<vector_id> ids;
  // Set by a memory-mapped load: the entries live in the mapping, and `codes` and `ids` stay empty.
  bool mapped = false;
  const Code* mapped_codes = nullptr;
  const vector_id* mapped_ids = nullptr;
  std::size_t mapped_count = 0;

  /// Owned entries (0 for a mapped list): what `append` and `erase_swap` work on.
  [[nodiscard]] std::size_t size() const noexcept { return ids.size(); }
  /// Entries, owned or mapped; `code_data` and `id_data` point at their codes and ids.
  [[nodiscard]] std::size_t count() const noexcept { return mapped ? mapped_count : ids.size(); }
  [[nodiscard]] const Code* code_data() const noexcept { return mapped ? mapped_codes : codes.data(); }
  [[nodiscard]] const vector_id* id_data() const noexcept { return mapped ? mapped_ids : ids.data(); }

  /// Makes room for `more` entries, so that `append` does not allocate for them (the capacity grows
  /// geometrically). On `bad_alloc` the entries are unchanged. The caller holds `mutex` exclusively.
  void reserve_more(std::size_t more, std::size_t code_len) {
    reserve_growing(codes, (ids.size() + more) * code_len);
    reserve_growing(ids, ids.size() + more);
  }

  /// Appends one entry, in room `reserve_more` made (without it, out of memory could strike between the
  /// code and the id). The caller holds `mutex` exclusively.
  void append(const Code* code, std::size_t code_len, vector_id id) {
    codes.insert(codes.end(), code, code + code_len);
    ids.push_back(id);
  }

  /// Removes the entry at `slot` by moving the last entry into it; returns the id that now occupies
  /// `slot`, or `no_id` when the removed entry was the last. The caller holds `mutex` exclusively.
  vector_id erase_swap(std::size_t slot, std::size_t code_len) {
    const std::size_t last = ids.size() - 1;
    vector_id moved = no_id;
    if (slot != last) {
      std::copy_n(codes.data() + last * code_len, code_len, codes.data() + slot * code_len);
      ids[slot] = ids[last];
      moved = ids[slot];
    }
    codes.resize(last * code_len);
    ids.pop_back();
    return moved;
  }

  /// Bytes of storage held (capacity, not size; mapped runs are not counted). The caller holds `mutex`
  /// in either mode.
  [[nodiscard]] std::size_t bytes() const noexcept {
    return codes.capacity() * sizeof(Code) + ids.capacity() * sizeof(vector_id);
  }
};

/// Each list's entry count, read under its lock (`list_sizes()` of the IVF indexes).
template <class List>
[[nodiscard]] std::vector<std::size_t> list_counts(const std::vector<std::unique_ptr<List>>& lists) {
  std::vector<std::size_t> counts;
  counts.reserve(lists.size());
  for (const auto& l : lists) {
    const std::shared_lock lock(l->mutex);
    counts.push_back(l->count());
  }
  return counts;
}

/// What the lists take in memory: the table of pointers, and each list's object and arrays (read under
/// its lock).
template <class List>
[[nodiscard]] std::size_t lists_bytes(const std::vector<std::unique_ptr<List>>& lists) {
  std::size_t bytes = lists.capacity() * sizeof(void*);
  for (const auto& l : lists) {
    const std::shared_lock lock(l->mutex);
    bytes += sizeof(List) + l->bytes();
  }
  return bytes;
}

/// Read locks on several lists at once, held until destruction. `which` must be in ascending order
/// without repeats: every reader that holds several lists then takes them in one global order, and
/// writers hold one list at a time, so no cycle of waits can form even under a lock that makes new
/// readers wait behind a waiting writer.
template <class List>
class list_read_locks {
 public:
  list_read_locks(std::span<const std::unique_ptr<List>> lists, std::span<const std::uint32_t> which)
      : lists_(lists), which_(which) {
    try {
      for (; held_ < which.size(); ++held_) lists[which[held_]]->mutex.lock_shared();
    } catch (...) {
      release();
      throw;
    }
  }
  ~list_read_locks() { release(); }
  list_read_locks(const list_read_locks&) = delete;
  list_read_locks& operator=(const list_read_locks&) = delete;

 private:
  void release() noexcept {
    for (; held_ > 0; --held_) lists_[which_[held_ - 1]]->mutex.unlock_shared();
  }
  std::span<const std::unique_ptr<List>> lists_;
  std::span<const std::uint32_t> which_;
  std::size_t held_ = 0;
};

/// Read locks on every list a query probes (`probed`: any order, no repeats), taken in ascending order
/// (as `list_read_locks`) and held for the whole scan: the scan sees all of them at one moment, so a
/// vector moved from one probed list to another while it runs (a remove, then an add) is found once or
/// not at all — locked one list at a time, a search could meet it in both and return its id twice.
/// `order` is the caller's buffer (kept from query to query): it holds the lists, ascending, until the
/// locks are released.
template <class List>
class probed_read_locks {
 public:
  probed_read_locks(std::span<const std::unique_ptr<List>> lists, std::span<const std::uint32_t> probed,
                    std::vector<std::uint32_t>& order)
      : locks_(lists, ascending(probed, order)) {}

 private:
  static std::span<const std::uint32_t> ascending(std::span<const std::uint32_t> probed,
                                                  std::vector<std::uint32_t>& order) {
    order.assign(probed.begin(), probed.end());
    std::sort(order.begin(), order.end());
    return order;
  }
  list_read_locks<List> locks_;
};

}  // namespace shoal::detail
