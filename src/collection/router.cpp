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
  centroids_ = kmeans(sample, p).centroids;
}

void router::set_centroids(matrix<float> centroids) { centroids_ = std::move(centroids); }

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
      const centroid_assignment a = assign(vectors, centroids_.view(), metric_, 1);
      for (std::size_t i = 0; i < ids.size(); ++i)
        out[i] =
            policy_ == sharding::semantic
                ? a.labels[i]
                : static_cast<std::uint32_t>(a.labels[i] * shards_per_group() + mix_id(ids[i]) % shards_per_group());
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
  const centroid_assignment a = assign(queries, centroids_.view(), metric_, probe);
  const std::size_t per_group = shards_per_group();
  v.per_query = probe * per_group;
  v.shards.resize(queries.rows * v.per_query);
  for (std::size_t q = 0; q < queries.rows; ++q)
    for (std::size_t j = 0; j < probe; ++j)
      for (std::size_t s = 0; s < per_group; ++s)
        v.shards[q * v.per_query + j * per_group + s] =
            static_cast<std::uint32_t>(a.labels[q * probe + j] * per_group + s);
  return v;
}

}  // namespace shoal::detail
