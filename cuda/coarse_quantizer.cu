// shoal::cuda::coarse_quantizer: the IVF coarse pass as a k-NN search of the centroids on the device.

#include <algorithm>

#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "shoal/cuda/coarse_quantizer.hpp"

namespace shoal::cuda {

flat_index coarse_quantizer::centred_index(matrix_view<const float> centroids, shoal::metric m, int device,
                                           const device_options& options) {
  shoal::detail::check_metric(m, "cuda::coarse_quantizer");
  SHOAL_CHECK(centroids.rows > 0, "cuda::coarse_quantizer: no centroids (is the index trained?)");
  // The bound the CPU pass holds centroids to (every IVF index checks its vectors, hence the centroids,
  // their means, and a loaded file's centroids so): norm ≤ B = sqrt(FLT_MAX / 8).
  shoal::detail::check_vectors(centroids, centroids.dim, "cuda::coarse_quantizer: centroid");
  const shoal::detail::centred_rows c = shoal::detail::centred_copy(centroids);  // as the CPU pass
  // μ, the coordinate-wise median, has norm ≤ √2·B (centred_copy), and centred_copy keeps every c − μ
  // within B (centre 0 where a centred row would pass it), so the device index checks the centred rows
  // as any. With the queries' ‖q‖ ≤ B (checked by every search), ‖q − μ‖ ≤ (1 + √2)·B, so ‖c − μ‖² ≤ B²
  // and ⟨q − μ, c − μ⟩, the GEMM's output and every partial sum of it, stay within (1 + √2)·B² ≈
  // 0.3·FLT_MAX up to rounding: the rank score ‖c − μ‖² − 2⟨q − μ, c − μ⟩, which is ‖q − c‖² − ‖q − μ‖²,
  // is finite (within ±0.73·FLT_MAX). The CPU pass scores the same form (rank_score in
  // src/cluster/assign.hpp).
  const bool l2 = m == shoal::metric::l2;
  flat_index index(c.rows.view(), l2 ? shoal::metric::l2 : shoal::metric::inner_product, device, options);
  if (l2) index.set_query_offset(c.centre);
  return index;
}

coarse_quantizer::coarse_quantizer(matrix_view<const float> centroids, shoal::metric m, int device,
                                   std::size_t min_batch, const device_options& options)
    : centroids_(centred_index(centroids, m, device, options)),
      metric_(m),
      min_batch_(std::max<std::size_t>(min_batch, 1)) {}

void coarse_quantizer::probe(matrix_view<const float> queries, std::size_t nprobe, std::uint32_t* probes) const {
  SHOAL_CHECK(nprobe > 0 && nprobe <= max_nprobe(), "cuda::coarse_quantizer::probe: nprobe ", nprobe,
              " is outside [1, ", max_nprobe(), "]");
  centroids_.search(queries, nprobe, probes, nullptr);
}

}  // namespace shoal::cuda
