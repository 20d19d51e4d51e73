#pragma once
/// \file
/// shoal::cuda::coarse_quantizer — an IVF index's coarse pass on a CUDA device, handed to searches through
/// `search_params::coarse`. No CUDA in this header.

#include <cstddef>
#include <cstdint>

#include "shoal/core/coarse_probe.hpp"
#include "shoal/cuda/flat.hpp"

namespace shoal::cuda {

/// The centroids of an IVF index on a device; large query batches pick their lists there, the list scans
/// stay on the CPU:
/// ```
/// const shoal::cuda::coarse_quantizer gpu(index.centroids(), index.metric());
/// shoal::search_params params;
/// params.nprobe = 16;
/// params.coarse = &gpu;                 // batches of >= gpu.min_batch() queries probe on the device
/// index.search(queries, 10, params);
/// ```
/// Lists are ranked as the CPU's flat coarse pass ranks them, in the frame centred on the centroids'
/// coordinate-wise median μ (docs/ivf.md): ‖c − μ‖² − 2⟨q − μ, c − μ⟩ under L2, −⟨q, c − μ⟩ under inner product and
/// cosine (whose centroids and queries are already unit length), in fp32 through a GEMM, so a near-tie between two
/// centroids may resolve differently from the CPU. Build it from the index's own
/// `centroids()` (after training; again after retraining). Thread-safe; errors as `flat_index`'s, and a
/// centroid the CPU pass would refuse (non-finite, or of norm past `check_vectors`' bound) is
/// `errc::non_finite` "cuda::coarse_quantizer: centroid row N …", before any device is looked for.
class coarse_quantizer final : public shoal::coarse_probe {
 public:
  /// Batches below this many queries stay on the CPU by default.
  static constexpr std::size_t default_min_batch = 256;

  /// `options` as `flat_index`'s; TF32 (`gemm_precision::tf32`) suits a coarse pass.
  coarse_quantizer(matrix_view<const float> centroids, shoal::metric m, int device = 0,
                   std::size_t min_batch = default_min_batch, const device_options& options = {});

  [[nodiscard]] std::size_t lists() const noexcept override { return centroids_.size(); }
  [[nodiscard]] std::size_t dim() const noexcept override { return centroids_.dim(); }
  [[nodiscard]] shoal::metric metric() const noexcept override { return metric_; }
  [[nodiscard]] std::size_t min_batch() const noexcept override { return min_batch_; }
  /// The device selection's k limit: an IVF search asking for more lists runs its coarse pass on the CPU.
  [[nodiscard]] std::size_t max_nprobe() const noexcept override {
    return lists() < flat_index::max_k ? lists() : flat_index::max_k;
  }
  /// nprobe ≤ max_nprobe().
  void probe(matrix_view<const float> queries, std::size_t nprobe, std::uint32_t* probes) const override;

 private:
  /// The device index over the centred centroids: under L2 with μ as its query offset (queries searched
  /// as q − μ), else by the inner product −⟨q, c − μ⟩ (under cosine the index's centroids and queries are
  /// unit length already: no normalising again), as the CPU pass ranks. Checks the arguments first.
  [[nodiscard]] static flat_index centred_index(matrix_view<const float> centroids, shoal::metric m, int device,
                                                const device_options& options);

  flat_index centroids_;  // c − μ; inner product for inner product and cosine (unit length already)
  shoal::metric metric_;
  std::size_t min_batch_;
};

}  // namespace shoal::cuda
