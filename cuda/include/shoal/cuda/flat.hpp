#pragma once
/// \file
/// shoal::cuda::flat_index — exact k-NN over vectors resident on one CUDA device, for batches of queries.
/// No CUDA in this header: it compiles with any C++ compiler; link `shoal::cuda`.

#include <cstddef>
#include <cstdint>
#include <memory>

#include "shoal/core/neighbors.hpp"
#include "shoal/core/types.hpp"

namespace shoal::cuda {

/// A copy of n vectors in device memory, searched exactly: queries meet the vectors in one cuBLAS SGEMM
/// per batch (full fp32, no TF32), then a block per query selects its k best scores by a four-pass radix
/// select over order-preserving keys (no sort of the n scores) and sorts only those k.
///
/// Distances are shoal's (smaller is closer): L2 reports ‖q‖² + ‖x‖² − 2⟨q, x⟩ (the GEMM form, which
/// rounds differently from the CPU's pairwise kernel and may dip a little below 0), inner product −⟨q, x⟩,
/// cosine 1 − ⟨q̂, x̂⟩ (vectors and queries normalised on the host). Ties go to the smaller row.
///
/// Memory: the vectors (+ their norms under L2) stay on the device; a search allocates its query batch,
/// an n-wide score tile per query of the batch (batches are cut so that the tile stays within 256 MiB) and
/// the k results, after checking the device's free memory. Every CUDA and cuBLAS call is checked.
/// Thread safety: searches may be called concurrently; they run one at a time on the device.
/// Errors: `shoal::error` — `errc::unsupported` without a device or without enough free device memory,
/// `errc::io_error` when a CUDA or cuBLAS call fails, and the usual argument errors.
class flat_index {
 public:
  /// Largest k one search selects (its candidates are sorted in shared memory).
  static constexpr std::size_t max_k = 1024;

  /// Copies `vectors` (finite, dimension ≥ 1; non-zero rows under cosine) to CUDA device `device`.
  flat_index(matrix_view<const float> vectors, metric m, int device = 0);
  ~flat_index();
  flat_index(flat_index&&) noexcept;
  flat_index& operator=(flat_index&&) noexcept;
  flat_index(const flat_index&) = delete;
  flat_index& operator=(const flat_index&) = delete;

  [[nodiscard]] std::size_t size() const noexcept;
  [[nodiscard]] std::size_t dim() const noexcept;
  [[nodiscard]] shoal::metric metric() const noexcept;
  [[nodiscard]] int device() const noexcept;
  /// Bytes this index holds on its device (vectors and norms).
  [[nodiscard]] std::size_t device_bytes() const noexcept;

  /// The k nearest rows of each query (ids are row numbers), nearest first; rows beyond size() hold the
  /// sentinel (`no_id`, `no_distance`). 1 ≤ k ≤ max_k.
  [[nodiscard]] neighbors search(matrix_view<const float> queries, std::size_t k) const;
  /// The same into caller buffers of queries.rows × k: row numbers (UINT32_MAX past size()) and
  /// distances.
  void search(matrix_view<const float> queries, std::size_t k, std::uint32_t* rows, float* distances) const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace shoal::cuda
