#pragma once
/// \file
/// shoal::cuda::flat_index — exact k-NN over vectors resident on one CUDA device, for batches of queries.
/// No CUDA in this header: it compiles with any C++ compiler; link `shoal::cuda`.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "shoal/core/neighbors.hpp"
#include "shoal/core/types.hpp"

namespace shoal::cuda {

class coarse_quantizer;

/// How a device search computes its inner products.
enum class gemm_precision {
  /// Full fp32 (cuBLAS's default math mode): the CPU's results up to float rounding — of the GEMM form's
  /// terms: under L2 an error relative to ‖q‖² + ‖x‖², not to the distance, so that over rows far from
  /// the origin (components near 1,000 at d = 128: ‖x‖² ≈ 1.3e8, whose float spacing is 8) close
  /// neighbours can swap ranks. Store such rows centred and search with `set_query_offset`, as
  /// `coarse_quantizer` does for its centroids.
  fp32,
  /// TF32 on the tensor cores (inputs rounded to 10-bit mantissas, fp32 accumulation): several times
  /// the fp32 rate on Ampere and later, with relative errors near 1e-3 in each inner product, so
  /// near-ties may swap. Meant for the IVF coarse pass, which only chooses lists.
  tf32,
};

/// Options of a device search.
struct device_options {
  /// Bound on the score tile of one GEMM; 0 takes half the device's L2 cache. Either way it is kept
  /// within [1 MiB, 256 MiB]. A tile far larger than L2 makes the select a separate pass through device
  /// memory (what shoal-gpu-bench measures as the unfused baseline).
  std::size_t tile_bytes = 0;
  gemm_precision precision = gemm_precision::fp32;
  /// Queries per batch at most; 0 leaves it to the tile: as many as fit beside chunks of 4,096 rows (at
  /// most 65,535). Fewer queries per batch make the chunks wider within the same tile, so each query's
  /// select runs fewer, longer passes (a tuning knob: shoal-gpu-bench's BM_coarse_probe_batch sweeps it).
  std::size_t max_batch = 0;
};

/// A copy of n vectors in device memory, searched exactly. The rows are cut into chunks whose score tile
/// (queries of a batch × rows of a chunk) fits in half the device's L2 cache; per chunk one cuBLAS SGEMM
/// (full fp32 by default, TF32 with `device_options::precision`) computes the tile and a block per query
/// folds it at once into the query's running top-k (a threshold scan, then a sort and merge of the few
/// scores that beat the current k-th), so the tile is read once, from L2, and no query's n scores are
/// sorted (docs/cuda.md).
///
/// Distances are shoal's (smaller is closer): L2 reports ‖q‖² + ‖x‖² − 2⟨q, x⟩ (the GEMM form, which
/// rounds differently from the CPU's pairwise kernel and may dip a little below 0), inner product −⟨q, x⟩,
/// cosine 1 − ⟨q̂, x̂⟩ (vectors and queries normalised on the host). Ties go to the smaller row.
///
/// Memory: the vectors (+ their norms under L2) stay on the device. Searches share one scratch area, grown
/// when a search needs more and kept for the next: the query batch, the score tile and the batch's
/// running top-k; free device memory is checked before every allocation. Every CUDA and cuBLAS call is
/// checked.
/// Thread safety: searches may be called concurrently; they run one at a time on the device. A call
/// makes the index's device current for its duration and gives the calling thread its previous device
/// back (the caller's own CUDA work stays where it was). On a thread that never chose a device the
/// runtime reports device 0, so such a thread is set back to device 0, whose primary context the
/// runtime then initialises if nothing had (a process searching only an index on device 1 from fresh
/// threads holds a context on device 0 too); a caller that wants none there sets its threads' device.
/// A moved-from index reports size 0 and device −1, and its searches throw `errc::invalid_argument`.
/// Errors: `shoal::error` — `errc::unsupported` without a device or without enough free device memory,
/// `errc::io_error` when a CUDA or cuBLAS call fails, and the usual argument errors.
class flat_index {
 public:
  /// Largest k one search selects (its candidates are sorted in shared memory).
  static constexpr std::size_t max_k = 1024;

  /// Copies `vectors` (finite, dimension ≥ 1; non-zero rows under cosine) to CUDA device `device`.
  flat_index(matrix_view<const float> vectors, metric m, int device = 0, const device_options& options = {});
  ~flat_index();
  flat_index(flat_index&&) noexcept;
  flat_index& operator=(flat_index&&) noexcept;
  flat_index(const flat_index&) = delete;
  flat_index& operator=(const flat_index&) = delete;

  [[nodiscard]] std::size_t size() const noexcept;
  [[nodiscard]] std::size_t dim() const noexcept;
  [[nodiscard]] shoal::metric metric() const noexcept;
  [[nodiscard]] int device() const noexcept;
  /// Bytes this index holds on its device (vectors, norms and the query offset).
  [[nodiscard]] std::size_t device_bytes() const noexcept;

  /// Under L2: every later search ranks q − `offset` (dim finite values) against the stored rows. Rows
  /// stored minus a point among them (their mean), with that point as the offset, rank as the original
  /// rows do — the distances are the same ‖q − x‖² — without the cancellation of the GEMM form
  /// ‖x‖² − 2⟨q, x⟩ on data far from the origin. `coarse_quantizer` uses it so. Throws `shoal::error`
  /// for another metric, a wrong size or a non-finite value. Waits for the search running on the
  /// device, if any; later searches use the new offset.
  void set_query_offset(std::span<const float> offset);

  /// The k nearest rows of each query (ids are row numbers), nearest first; rows beyond size() hold the
  /// sentinel (`no_id`, `no_distance`). 1 ≤ k ≤ max_k.
  [[nodiscard]] neighbors search(matrix_view<const float> queries, std::size_t k) const;
  /// The same into caller buffers of queries.rows × k: row numbers (UINT32_MAX past size()) and
  /// distances. `distances` may be null: then only the rows come back (the coarse pass needs no more),
  /// and the device sends back half the bytes and the host skips the queries' norms.
  void search(matrix_view<const float> queries, std::size_t k, std::uint32_t* rows, float* distances) const;

 private:
  struct impl;
  /// The state, or `shoal::error` naming `who` for an index moved from.
  [[nodiscard]] impl& state(const char* who) const;
  std::unique_ptr<impl> impl_;
};

}  // namespace shoal::cuda
