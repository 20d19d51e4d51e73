#pragma once
// The geometry shared by shoal's open-addressing tables of ids (IVF-PQ's id locator, a collection's
// routing table): the hash of an id, its home slot in a table of any size, the probe order and when to
// grow.

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "shoal/core/types.hpp"

namespace shoal::detail::linear_probing {

/// splitmix64's finaliser, a bijection: ids are often consecutive or differ only in a few bits, and
/// every bit of the result must look random.
[[nodiscard]] constexpr std::uint64_t mix(vector_id id) noexcept {
  std::uint64_t z = id;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/// The slot `bits` falls on in a table of `capacity` slots: the high half of their 128-bit product
/// (from 32-bit pieces, so no compiler extension), `bits` read as a fraction of the table. Any capacity
/// will do, so a table is sized to its contents instead of the next power of two.
[[nodiscard]] inline std::size_t home(std::uint64_t bits, std::size_t capacity) noexcept {
  const std::uint64_t b = capacity;
  const std::uint64_t a_lo = bits & 0xffffffffU, a_hi = bits >> 32, b_lo = b & 0xffffffffU, b_hi = b >> 32;
  const std::uint64_t lo_lo = a_lo * b_lo, hi_lo = a_hi * b_lo, lo_hi = a_lo * b_hi;
  const std::uint64_t cross = (lo_lo >> 32) + (hi_lo & 0xffffffffU) + lo_hi;  // < 2^64
  return static_cast<std::size_t>(a_hi * b_hi + (hi_lo >> 32) + (cross >> 32));
}

/// The slot after `i`, wrapping at the end.
[[nodiscard]] inline std::size_t next(std::size_t i, std::size_t capacity) noexcept {
  return i + 1 == capacity ? 0 : i + 1;
}

/// Occupied slots (tombstones counted) a table may hold before it is rebuilt: 7/8 of them. Probe runs
/// stay short (about 32 slots for a miss at 7/8, 3 at 3/5), and a slot is always left empty, which
/// ends every probe.
[[nodiscard]] inline std::size_t max_used(std::size_t capacity) noexcept { return capacity / 8 * 7; }

/// The capacity a rebuild for `entries` takes: 3/5 full, so that the next rebuild is at least
/// `entries` / 2 inserts away (each rebuild costs O(entries): O(1) per insert, amortised).
[[nodiscard]] inline std::size_t rebuilt_capacity(std::size_t entries) noexcept {
  return std::max<std::size_t>(16, entries / 3 * 5 + 5);
}

}  // namespace shoal::detail::linear_probing
