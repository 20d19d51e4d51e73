// shoal's indexes behind the benchmark adapter interface. Each index family is one entry of `families`:
// how its spec is recognised and how its adapter is made.
#include <numeric>
#include <optional>
#include <vector>

#include "adapter.hpp"
#include "shoal/index/flat.hpp"

namespace shoal::bench {
namespace {

/// `Flat`: exact search, no build or search knobs.
class flat_adapter final : public index_adapter {
 public:
  explicit flat_adapter(const index_request& request) : spec_(request.spec), metric_(request.metric) {
    check_param_names(request.build_params, {}, "build", spec_);
  }

  [[nodiscard]] std::string_view library() const noexcept override { return "shoal"; }
  [[nodiscard]] std::string description() const override { return spec_; }

  void set_search_params(const param_list& params) override { check_param_names(params, {}, "search", spec_); }

  void build(matrix_view<const float> base) override {
    std::vector<vector_id> ids(base.rows);
    std::iota(ids.begin(), ids.end(), vector_id{0});
    index_.emplace(base.dim, metric_);
    index_->add(base, ids);
  }

  // One query runs on the calling thread: flat_index::search parallelises over queries only.
  void search(matrix_view<const float> queries, neighbors_view out) const override {
    index_->search(queries, out, params_);
  }

  /// Vectors, norms, ids and the id map, as flat_index counts them.
  [[nodiscard]] std::size_t memory_bytes() const override { return index_->memory_bytes(); }

 private:
  std::string spec_;
  shoal::metric metric_;
  shoal::search_params params_{};
  std::optional<flat_index> index_;
};

/// One family of index specs.
struct index_family {
  std::string_view example;  ///< how the family is written, for the "known:" list of errors
  bool (*matches)(std::string_view spec);
  std::unique_ptr<index_adapter> (*make)(const index_request& request);
};

template <class Adapter>
std::unique_ptr<index_adapter> make(const index_request& request) {
  return std::make_unique<Adapter>(request);
}

constexpr index_family families[] = {
    {"Flat", [](std::string_view spec) { return spec == "Flat"; }, make<flat_adapter>},
};

}  // namespace

std::unique_ptr<index_adapter> make_shoal_adapter(const index_request& request) {
  for (const index_family& family : families)
    if (family.matches(request.spec)) return family.make(request);
  std::string known;
  for (const index_family& family : families) append_item(known, family.example, ", ");
  throw config_error("unknown index spec '" + request.spec + "' (known: " + known + ")");
}

}  // namespace shoal::bench
