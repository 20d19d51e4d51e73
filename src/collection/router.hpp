#pragma once
// Internal: the routing policy of a collection — which shard stores a vector, which shards a query visits.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/linear_probing.hpp"
#include "index/coarse_quantizer.hpp"
#include "shoal/collection/collection.hpp"
#include "shoal/core/types.hpp"

namespace shoal::detail {

/// splitmix64's finaliser (`linear_probing::mix`): a bijective mix of the id, so that `mix_id(id) % n`
/// balances ids of any pattern (sequential, strided, timestamps). Part of a collection's layout: hash
/// and hybrid routing of stored ids depend on it.
[[nodiscard]] constexpr std::uint64_t mix_id(std::uint64_t x) noexcept { return linear_probing::mix(x); }

class router {
 public:
  /// The router `o` describes (options already validated).
  explicit router(const collection_options& o);

  [[nodiscard]] sharding policy() const noexcept { return policy_; }
  [[nodiscard]] std::size_t shards() const noexcept { return shards_; }
  [[nodiscard]] std::size_t groups() const noexcept { return groups_; }
  [[nodiscard]] const std::vector<std::uint64_t>& range_bounds() const noexcept { return bounds_; }
  /// Semantic and hybrid routers need centroids; hash and range routers are always ready.
  [[nodiscard]] bool trained() const noexcept { return !needs_centroids() || quantizer_ != nullptr; }
  [[nodiscard]] bool needs_centroids() const noexcept {
    return policy_ == sharding::semantic || policy_ == sharding::hybrid;
  }
  /// The centroids (no rows while untrained).
  [[nodiscard]] matrix_view<const float> centroids() const noexcept {
    return quantizer_ != nullptr ? quantizer_->centroids() : matrix_view<const float>{nullptr, 0, dim_};
  }
  /// Number of centroids a semantic router trains: one per shard (semantic) or per group (hybrid).
  [[nodiscard]] std::size_t centroid_count() const noexcept { return policy_ == sharding::hybrid ? groups_ : shards_; }

  /// k-means over `sample` (rows already unit length for cosine), balanced by the options'
  /// `semantic_balance`. Throws when the sample has fewer rows than `centroid_count()`.
  void train(matrix_view<const float> sample);
  /// Installs centroids read from a manifest (checked for shape and finiteness by the caller).
  void set_centroids(matrix<float> centroids);
  /// Takes `other`'s centroids (shared, not copied).
  void share_centroids(const router& other) noexcept { quantizer_ = other.quantizer_; }

  /// The shard of each vector (rows unit length for cosine); `keys` empty means key = id.
  [[nodiscard]] std::vector<std::uint32_t> route(matrix_view<const float> vectors, std::span<const vector_id> ids,
                                                 std::span<const std::uint64_t> keys) const;

  /// The shards each query visits: `visit[q * per_query + j]`; all shards (in order) unless the policy
  /// is semantic or hybrid and `probe` is in [1, centroid_count()).
  struct visits {
    std::vector<std::uint32_t> shards;
    std::size_t per_query = 0;
    bool all = false;  ///< every query visits every shard, in shard order
  };
  [[nodiscard]] visits visit(matrix_view<const float> queries, std::size_t probe) const;

 private:
  /// Shards behind one centroid: 1 for semantic sharding, shards / groups for hybrid.
  [[nodiscard]] std::size_t shards_per_group() const noexcept {
    return policy_ == sharding::hybrid ? shards_ / groups_ : 1;
  }

  sharding policy_;
  std::size_t shards_;
  std::size_t groups_;
  std::vector<std::uint64_t> bounds_;
  shoal::metric metric_;
  std::size_t dim_;
  std::uint64_t seed_;
  double balance_;
  // The centroids, scored as an IVF index's flat coarse pass scores its lists: under L2 in a frame
  // centred on their mean, which ‖c‖² − 2⟨x, c⟩ on data far from the origin needs (offset 1,000: 310 of
  // 2,000 queries visited other shards than their 2 nearest). Shared by copies: immutable once set.
  std::shared_ptr<const coarse_quantizer> quantizer_;
};

}  // namespace shoal::detail
