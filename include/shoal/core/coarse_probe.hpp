#pragma once
/// \file
/// An IVF coarse pass that runs outside the index: the CUDA component's GPU quantizer implements it, and
/// an IVF search uses it when `search_params::coarse` points at one and the batch is large enough.

#include <cstddef>
#include <cstdint>

#include "shoal/core/types.hpp"

namespace shoal {

/// Picks each query's nearest inverted lists from a copy of an IVF index's centroids (built from that
/// index's `centroids()`, in the lists' space: unit length under cosine, OPQ-rotated for IVF-PQ with a
/// rotation). The IVF index checks `lists()`, `dim()` and `metric()` against its own and throws
/// `shoal::error` (`errc::invalid_argument`) on a mismatch; it cannot check that the centroids are its
/// own, which is the caller's promise. Implementations must allow concurrent `probe` calls.
class coarse_probe {
 public:
  virtual ~coarse_probe() = default;

  /// Number of centroids (the index's nlist).
  [[nodiscard]] virtual std::size_t lists() const noexcept = 0;
  [[nodiscard]] virtual std::size_t dim() const noexcept = 0;
  [[nodiscard]] virtual shoal::metric metric() const noexcept = 0;
  /// Batches with fewer queries than this stay on the index's own coarse pass (a device round trip costs
  /// more than it saves on a few queries).
  [[nodiscard]] virtual std::size_t min_batch() const noexcept = 0;
  /// The largest `nprobe` this pass serves (at most `lists()`); a search asking for more lists stays on
  /// the index's own coarse pass, which takes any nprobe (the GPU pass selects at most 1,024 per query).
  [[nodiscard]] virtual std::size_t max_nprobe() const noexcept { return lists(); }
  /// The `nprobe` (1 ≤ nprobe ≤ max_nprobe()) nearest lists of each query, nearest first, into
  /// `probes[q * nprobe + j]`: the lists whose centroids score best as the flat coarse pass scores them,
  /// by ‖q − c‖² under L2 and −⟨q, c⟩ otherwise (the pass computes them relative to the centroids'
  /// coordinate-wise median, docs/ivf.md), ties to the smaller list. Queries are finite and of
  /// dimension `dim()` (the index checks them first). A `probe` that throws (the GPU pass: too little
  /// free device memory, a failed CUDA call) fails the search with its error, rather than moving the
  /// batch to the CPU behind the caller's back; the caller may search again without `coarse`.
  virtual void probe(matrix_view<const float> queries, std::size_t nprobe, std::uint32_t* probes) const = 0;

 protected:
  coarse_probe() = default;
  coarse_probe(const coarse_probe&) = default;
  coarse_probe& operator=(const coarse_probe&) = default;
};

}  // namespace shoal
