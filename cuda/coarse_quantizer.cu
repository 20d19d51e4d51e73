// shoal::cuda::coarse_quantizer: the IVF coarse pass as a k-NN search of the centroids on the device.

#include <algorithm>

#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "shoal/cuda/coarse_quantizer.hpp"

namespace shoal::cuda {
namespace {

/// The device index over the centred centroids: under L2 with μ as its query offset (queries searched
/// as q − μ), else by the inner product −⟨q, c − μ⟩ (under cosine the index's centroids and queries are
/// unit length already: no normalising again), as the CPU pass ranks.
flat_index centred_index(matrix_view<const float> centroids, shoal::metric m, int device,
                         const device_options& options) {
  shoal::detail::check_metric(m, "cuda::coarse_quantizer");
  SHOAL_CHECK(centroids.rows > 0, "cuda::coarse_quantizer: no centroids (is the index trained?)");
  const shoal::detail::centred_rows c = shoal::detail::centred_copy(centroids);  // as the CPU pass
  const bool l2 = m == shoal::metric::l2;
  flat_index index(c.rows.view(), l2 ? shoal::metric::l2 : shoal::metric::inner_product, device, options);
  if (l2) index.set_query_offset(c.mean);
  return index;
}

}  // namespace

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
