// --shards: a shoal::collection whose shards are `--index` indexes, behind the benchmark adapter interface.
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "adapter.hpp"
#include "shoal/collection/collection.hpp"
#include "shoal/core/error.hpp"

namespace shoal::bench {
namespace {

/// Shards are built by `make_index` from the spec with the factory's default build parameters
/// (HNSW: ef_construction 200), so only build knobs equal to those defaults are accepted, plus the
/// collection's own `semantic_balance` (balanced k-means for the router, docs/collection.md). Search knobs:
/// `ef` (HNSW shards), `nprobe` (IVF shards), `refine` (,Refine(...) shards; 0, no re-rank, for IVF-PQ) and
/// `shard_probe` (semantic / hybrid routing; default: every shard, or every group).
class collection_adapter final : public index_adapter {
 public:
  collection_adapter(const index_request& request, const collection_request& layout, std::size_t dim)
      : spec_(request.spec), metric_(request.metric), layout_(layout), dim_(dim) {
    for (const param& p : request.build_params) {
      if (p.name == "semantic_balance") {
        if (layout.sharding != "semantic" && layout.sharding != "hybrid")
          throw config_error("--build-param semantic_balance: " + layout.sharding +
                             " sharding has no router to balance (semantic or hybrid only)");
        balance_ = parse_number(p, spec_);
        continue;
      }
      if (p.name != "ef_construction" || p.value != "200")
        throw config_error(
            "--shards: shard indexes are built from the spec with default parameters; build "
            "parameter " +
            p.name + "=" + p.value + " is not supported");
    }
    try {
      policy_ = parse_sharding(layout.sharding);
    } catch (const shoal::error& e) {
      throw config_error("--sharding: " + std::string(error_text(e)));
    }
    // The collection itself checks the layout (shard and replica counts, groups, the spec at this
    // dimension): one built here, empty, ends a run it rejects before the data is read. Range bounds
    // come from the row count, so that check waits for build().
    try {
      collection_options o = options({});
      if (policy_ == sharding::range) o.policy = sharding::hash;
      const collection probe(o);
    } catch (const shoal::error& e) {
      throw config_error("--shards: " + std::string(error_text(e)));
    }
  }

  [[nodiscard]] std::string_view library() const noexcept override { return "shoal"; }
  [[nodiscard]] std::string description() const override {
    return spec_ + " [" + std::to_string(layout_.shards) + " shards " + layout_.sharding +
           (layout_.replicas > 1 ? ", " + std::to_string(layout_.replicas) + " replicas" : std::string()) + "]";
  }

  void set_search_params(const param_list& params) override {
    // The knobs the shards' spec reads, as the single-index adapters accept them; shard_probe where a
    // router picks shards. A knob nothing reads would show in the row as if it had been used.
    const auto has = [&](std::string_view part) { return spec_.find(part) != std::string::npos; };
    std::vector<std::string_view> names;
    if (has("HNSW")) names.push_back("ef");
    if (has("IVF")) names.push_back("nprobe");
    if (has("Refine(") || has("RFlat")) names.push_back("refine");
    if (layout_.sharding == "semantic" || layout_.sharding == "hybrid") names.push_back("shard_probe");
    const std::string index = spec_ + " [" + layout_.sharding + " shards]";
    check_param_names(params, names, "search", index);
    params_ = {};
    // Every shard gets the search parameters as given (collection::search), so `refine` means what it
    // means for one index of the spec: 0 is no re-rank for IVF-PQ and refused for a two-stage spec.
    for (const param& p : params) {
      if (p.name == "refine") {
        params_.refine_factor = parse_refine(p, spec_);
        continue;
      }
      const std::size_t value = parse_positive(p, spec_);
      if (p.name == "ef") params_.ef = value;
      if (p.name == "nprobe") params_.nprobe = value;
      if (p.name == "shard_probe") params_.shard_probe = value;
    }
    // The router visits at most every shard (semantic) or group (hybrid): a larger value would show in
    // the row as if it had been used.
    const std::size_t routes = policy_ == sharding::hybrid ? groups() : layout_.shards;
    if (params_.shard_probe > routes)
      throw config_error("search parameter shard_probe=" + std::to_string(params_.shard_probe) + " of index " + index +
                         " exceeds the " + std::to_string(routes) +
                         (policy_ == sharding::hybrid ? " groups" : " shards") + " a query can visit");
  }

  // Training (semantic k-means, IVF shards) and insertion run on the runner's arena.
  void build(matrix_view<const float> base) override {
    if (policy_ == sharding::range && base.rows < layout_.shards)
      throw config_error("--sharding range: " + std::to_string(layout_.shards) + " shards need at least as many base " +
                         "vectors, got " + std::to_string(base.rows));
    std::vector<std::uint64_t> bounds;
    if (policy_ == sharding::range)  // ids are row numbers: equal id ranges
      for (std::size_t s = 1; s < layout_.shards; ++s) bounds.push_back(base.rows * s / layout_.shards);
    try {
      collection_.emplace(options(std::move(bounds)));
      collection_->train(base);
      std::vector<vector_id> ids(base.rows);
      std::iota(ids.begin(), ids.end(), vector_id{0});
      collection_->add(base, ids);
    } catch (const shoal::error& e) {
      throw config_error("--shards: " + std::string(error_text(e)));
    }
  }

  void search(matrix_view<const float> queries, neighbors_view out) const override {
    collection_->search(queries, out, params_);
  }

  /// Every replica of every shard plus the routing table.
  [[nodiscard]] std::size_t memory_bytes() const override { return collection_->memory_bytes(); }

 private:
  /// Hybrid sharding's semantic groups (--groups, default shards / 2).
  [[nodiscard]] std::size_t groups() const {
    return layout_.groups > 0 ? layout_.groups : std::max<std::size_t>(1, layout_.shards / 2);
  }

  /// The collection's options, with `range_bounds` for range sharding.
  [[nodiscard]] collection_options options(std::vector<std::uint64_t> range_bounds) const {
    collection_options o;
    o.dim = dim_;
    o.metric = metric_;
    o.index = spec_;
    o.policy = policy_;
    o.shards = layout_.shards;
    o.replicas = layout_.replicas;
    o.semantic_balance = balance_;
    o.groups = policy_ == sharding::hybrid ? groups() : 0;
    o.range_bounds = std::move(range_bounds);
    return o;
  }

  std::string spec_;
  shoal::metric metric_;
  collection_request layout_;
  std::size_t dim_;
  sharding policy_ = sharding::hash;
  search_params params_{};
  double balance_ = 0;
  std::optional<collection> collection_;
};

}  // namespace

std::unique_ptr<index_adapter> make_collection_adapter(const index_request& request, const collection_request& layout,
                                                       std::size_t dim) {
  return std::make_unique<collection_adapter>(request, layout, dim);
}

}  // namespace shoal::bench
