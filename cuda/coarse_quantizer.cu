// shoal::cuda::coarse_quantizer: the IVF coarse pass as a k-NN search of the centroids on the device.

#include <algorithm>

#include "shoal/core/error.hpp"
#include "shoal/cuda/coarse_quantizer.hpp"

namespace shoal::cuda {

coarse_quantizer::coarse_quantizer(matrix_view<const float> centroids, shoal::metric m, int device,
                                   std::size_t min_batch, const device_options& options)
    // Under cosine the index's centroids and queries are unit length already: rank by the inner product,
    // as the CPU pass does, without normalising again.
    : centroids_(centroids, m == shoal::metric::l2 ? shoal::metric::l2 : shoal::metric::inner_product, device, options),
      metric_(m),
      min_batch_(std::max<std::size_t>(min_batch, 1)) {
  SHOAL_CHECK(centroids.rows > 0, "cuda::coarse_quantizer: no centroids (is the index trained?)");
}

void coarse_quantizer::probe(matrix_view<const float> queries, std::size_t nprobe, std::uint32_t* probes) const {
  SHOAL_CHECK(nprobe > 0 && nprobe <= std::min(lists(), flat_index::max_k), "cuda::coarse_quantizer::probe: nprobe ",
              nprobe, " is outside [1, ", std::min(lists(), flat_index::max_k), "]");
  centroids_.search(queries, nprobe, probes, nullptr);
}

}  // namespace shoal::cuda
