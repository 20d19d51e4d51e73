// shoal::cuda::coarse_quantizer: the IVF coarse pass as a k-NN search of the centroids on the device.

#include <algorithm>
#include <vector>

#include "shoal/core/error.hpp"
#include "shoal/cuda/coarse_quantizer.hpp"

namespace shoal::cuda {
namespace {

/// The centroids in the CPU pass's centred frame (src/index/coarse_quantizer.cpp, docs/ivf.md), computed
/// as it computes them: μ summed in double, then c − μ in float.
struct centred_centroids {
  std::vector<float> mean;
  matrix<float> rows;

  explicit centred_centroids(matrix_view<const float> c) : mean(c.dim), rows(c.rows, c.dim) {
    SHOAL_CHECK(c.rows > 0, "cuda::coarse_quantizer: no centroids (is the index trained?)");
    std::vector<double> sum(c.dim, 0.0);
    for (std::size_t r = 0; r < c.rows; ++r)
      for (std::size_t j = 0; j < c.dim; ++j) sum[j] += c.row(r)[j];
    for (std::size_t j = 0; j < c.dim; ++j) mean[j] = static_cast<float>(sum[j] / static_cast<double>(c.rows));
    for (std::size_t r = 0; r < c.rows; ++r)
      for (std::size_t j = 0; j < c.dim; ++j) rows.row(r)[j] = c.row(r)[j] - mean[j];
  }
};

/// The device index over the centred centroids: under L2 with μ as its query offset (queries searched
/// as q − μ), else by the inner product −⟨q, c − μ⟩ (under cosine the index's centroids and queries are
/// unit length already: no normalising again), as the CPU pass ranks.
flat_index centred_index(matrix_view<const float> centroids, shoal::metric m, int device,
                         const device_options& options) {
  const centred_centroids c(centroids);
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
  SHOAL_CHECK(nprobe > 0 && nprobe <= std::min(lists(), flat_index::max_k), "cuda::coarse_quantizer::probe: nprobe ",
              nprobe, " is outside [1, ", std::min(lists(), flat_index::max_k), "]");
  centroids_.search(queries, nprobe, probes, nullptr);
}

}  // namespace shoal::cuda
