#include "collection/router.hpp"

#include <algorithm>
#include <numeric>
#include <utility>

#include "shoal/cluster/kmeans.hpp"
#include "shoal/core/error.hpp"

namespace shoal::detail {

router::router(const collection_options& o)
    : policy_(o.policy),
      shards_(o.shards),
      groups_(o.policy == sharding::hybrid ? o.groups : 1),
      bounds_(o.range_bounds),
      metric_(o.metric),
      dim_(o.dim),
      seed_(o.seed),
      balance_(o.semantic_balance) {}

void router::train(matrix_view<const float> sample) {
  if (!needs_centroids()) return;
  SHOAL_CHECK_CODE(sample.dim == dim_, errc::dimension_mismatch, "collection::train: the sample has dimension ",
                   sample.dim, ", expected ", dim_);
  SHOAL_CHECK(sample.rows >= centroid_count(), "collection::train: ", sharding_name(policy_), " sharding needs ",
              centroid_count(), " centroids but the sample has only ", sample.rows, " rows");
  kmeans_params p;
  p.k = centroid_count();
  p.seed = seed_;
  p.spherical = metric_ != shoal::metric::l2;
  p.balance = balance_;
  set_centroids(kmeans(sample, p).centroids);
}

void router::set_centroids(matrix<float> centroids) {
  auto quantizer = std::make_shared<coarse_quantizer>(metric_, 0);
  quantizer->set_centroids(std::move(centroids));
  quantizer_ = std::move(quantizer);
}

std::vector<std::uint32_t> router::route(matrix_view<const float> vectors, std::span<const vector_id> ids,
                                         std::span<const std::uint64_t> keys) const {
  std::vector<std::uint32_t> out(ids.size());
  switch (policy_) {
    case sharding::hash:
      for (std::size_t i = 0; i < ids.size(); ++i) out[i] = static_cast<std::uint32_t>(mix_id(ids[i]) % shards_);
      break;
    case sharding::range:
      for (std::size_t i = 0; i < ids.size(); ++i) {
        const std::uint64_t key = keys.empty() ? ids[i] : keys[i];
        out[i] = static_cast<std::uint32_t>(std::upper_bound(bounds_.begin(), bounds_.end(), key) - bounds_.begin());
      }
      break;
    case sharding::semantic:
    case sharding::hybrid: {
      if (ids.empty()) break;
      std::vector<std::uint32_t> nearest(ids.size());
      quantizer_->assign(vectors, nearest.data());
      for (std::size_t i = 0; i < ids.size(); ++i)
        out[i] =
            policy_ == sharding::semantic
                ? nearest[i]
                : static_cast<std::uint32_t>(nearest[i] * shards_per_group() + mix_id(ids[i]) % shards_per_group());
      break;
    }
  }
  return out;
}

router::visits router::visit(matrix_view<const float> queries, std::size_t probe) const {
  visits v;
  if (!needs_centroids() || probe == 0 || probe >= centroid_count() || queries.rows == 0) {
    v.all = true;
    v.per_query = shards_;
    return v;
  }
  std::vector<std::uint32_t> nearest(queries.rows * probe);
  quantizer_->probe(queries, probe, 0, nearest.data());
  const std::size_t per_group = shards_per_group();
  v.per_query = probe * per_group;
  v.shards.resize(queries.rows * v.per_query);
  for (std::size_t q = 0; q < queries.rows; ++q)
    for (std::size_t j = 0; j < probe; ++j)
      for (std::size_t s = 0; s < per_group; ++s)
        v.shards[q * v.per_query + j * per_group + s] =
            static_cast<std::uint32_t>(nearest[q * probe + j] * per_group + s);
  return v;
}

}  // namespace shoal::detail
