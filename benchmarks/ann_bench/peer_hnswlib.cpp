// hnswlib peer (header-only; compiled with shoal's flags unless SHOAL_BENCH_HNSWLIB_COMPILE_OPTIONS
// says otherwise). The spec picks the algorithm: `Flat` -> BruteforceSearch; `HNSW<M>` ->
// HierarchicalNSW with the same M, build knobs `ef_construction` (default 200) and `seed`, and search
// knob `ef` (shoal's default `hnsw_index::default_ef` when not given, not hnswlib's 10, so that a row
// without ef means the same depth for both; raised to k by hnswlib itself). `HNSW<M>,SQ8` and
// `HNSW<M>,F16` get the same float HierarchicalNSW: hnswlib has no compressed traversal, and its float
// graph is what shoal's compressed traversal is measured against.
#include <hnswlib/hnswlib.h>
#include <mutex>

#include <algorithm>
#include <memory>
#include <string>
#include <unordered_map>

#include <tbb/parallel_for.h>

#include "adapter.hpp"
#include "peer_support.hpp"

namespace shoal::bench {
namespace {

/// An hnswlib space for a shoal metric: L2Space (squared L2) or InnerProductSpace (1 − ⟨a,b⟩, over unit
/// vectors under cosine).
std::unique_ptr<hnswlib::SpaceInterface<float>> make_space(shoal::metric m, std::size_t dim) {
  if (m == shoal::metric::l2) return std::make_unique<hnswlib::L2Space>(dim);
  return std::make_unique<hnswlib::InnerProductSpace>(dim);
}

/// hnswlib's distance in shoal's convention: L2 and cosine (1 − ⟨a,b⟩) agree, inner product is −⟨a,b⟩.
float to_shoal_distance(shoal::metric m, float d) noexcept { return m == shoal::metric::inner_product ? d - 1.0f : d; }

class hnswlib_adapter final : public index_adapter {
 public:
  explicit hnswlib_adapter(const index_request& request) : metric_(request.metric) {
    if (request.spec != "Flat") throw config_error("hnswlib has no counterpart of index spec '" + request.spec + "'");
    check_param_names(request.build_params, {}, "build", "BruteforceSearch");
  }

  [[nodiscard]] std::string_view library() const noexcept override { return "hnswlib"; }
  [[nodiscard]] std::string description() const override { return "BruteforceSearch"; }

  void set_search_params(const param_list& params) override {
    check_param_names(params, {}, "search", "BruteforceSearch");
  }

  void build(matrix_view<const float> base) override {
    const peer_rows rows(base, metric_);
    space_ = make_space(metric_, base.dim);
    auto index = std::make_unique<hnswlib::BruteforceSearch<float>>(space_.get(), base.rows);
    for (std::size_t i = 0; i < base.rows; ++i) index->addPoint(rows.view().row(i), i);
    index_ = std::move(index);
  }

  // Batches (--batch) run one searchKnn per query over the arena's threads, as hnswlib's own Python
  // knn_query does with its thread pool.
  void search(matrix_view<const float> queries, neighbors_view out) const override {
    const peer_rows rows(queries, metric_);
    tbb::parallel_for(std::size_t{0}, queries.rows,
                      [&](std::size_t r) { search_one(rows.view().row(r), out.slice(r, 1)); });
  }

  /// Per stored vector: the vector and its 8-byte label (one malloc'd block), plus the label → slot
  /// map: a 32-byte node per entry (libstdc++: next pointer + key + value, rounded by malloc) and an
  /// 8-byte bucket pointer per bucket.
  [[nodiscard]] std::size_t memory_bytes() const override {
    return index_->maxelements_ * index_->size_per_element_ + index_->dict_external_to_internal.size() * 32 +
           index_->dict_external_to_internal.bucket_count() * sizeof(void*);
  }

 private:
  // searchKnn returns a max-heap (farthest on top): pop it into the row back to front.
  void search_one(const float* query, neighbors_view out) const {
    auto heap = index_->searchKnn(query, out.k);
    std::fill(out.ids, out.ids + out.k, no_id);
    std::fill(out.distances, out.distances + out.k, no_distance);
    for (std::size_t j = heap.size(); j-- > 0; heap.pop()) {
      out.ids[j] = heap.top().second;
      out.distances[j] = to_shoal_distance(metric_, heap.top().first);
    }
  }

  shoal::metric metric_;
  std::unique_ptr<hnswlib::SpaceInterface<float>> space_;  // outlives index_, which points into it
  std::unique_ptr<hnswlib::BruteforceSearch<float>> index_;
};

class hnswlib_hnsw_adapter final : public index_adapter {
 public:
  explicit hnswlib_hnsw_adapter(const index_request& request)
      : metric_(request.metric), m_(parse_hnsw_spec(request.spec).value().m) {
    // `alpha` is shoal's (hnswlib prunes with alpha = 1): accepted so that one command measures both.
    static constexpr std::string_view names[] = {"ef_construction", "seed", "alpha"};
    check_param_names(request.build_params, names, "build", description());
    for (const param& p : request.build_params) {
      if (p.name == "seed") seed_ = parse_seed(p, description());
      if (p.name == "ef_construction") ef_construction_ = parse_positive(p, description());
    }
  }

  [[nodiscard]] std::string_view library() const noexcept override { return "hnswlib"; }
  [[nodiscard]] std::string description() const override { return "HierarchicalNSW"; }

  // hnswlib keeps ef in the index; the runner never changes it while searches run.
  void set_search_params(const param_list& params) override {
    ef_ = single_knob(params, "ef", hnsw_index::default_ef, "search", description());
    if (index_) index_->setEf(ef_);
  }

  // addPoint is thread-safe: insert in parallel over the runner's arena, as hnswlib's Python binding does.
  void build(matrix_view<const float> base) override {
    const peer_rows rows(base, metric_);
    space_ = make_space(metric_, base.dim);
    index_ = std::make_unique<hnswlib::HierarchicalNSW<float>>(space_.get(), base.rows, m_, ef_construction_, seed_);
    tbb::parallel_for(std::size_t{0}, base.rows, [&](std::size_t i) { index_->addPoint(rows.view().row(i), i); });
    index_->setEf(ef_);
  }

  void search(matrix_view<const float> queries, neighbors_view out) const override {
    const peer_rows rows(queries, metric_);
    tbb::parallel_for(std::size_t{0}, queries.rows, [&](std::size_t r) {
      auto heap = index_->searchKnn(rows.view().row(r), out.k);
      const neighbors_view row = out.slice(r, 1);
      std::fill(row.ids, row.ids + row.k, no_id);
      std::fill(row.distances, row.distances + row.k, no_distance);
      for (std::size_t j = heap.size(); j-- > 0; heap.pop()) {
        row.ids[j] = heap.top().second;
        row.distances[j] = to_shoal_distance(metric_, heap.top().first);
      }
    });
  }

  /// Level-0 block (vector, links, label) per element, upper-layer link blocks per level, the label map
  /// (as for BruteforceSearch), and the per-element bookkeeping arrays hnswlib allocates beside them: a
  /// std::mutex, a level (int) and an upper-links pointer per element, plus its fixed table of 65536
  /// update mutexes. Visited sets (per search thread, in both libraries) are not counted.
  [[nodiscard]] std::size_t memory_bytes() const override {
    std::size_t upper = 0;
    for (const int level : index_->element_levels_)
      upper += static_cast<std::size_t>(level) * index_->size_links_per_element_;
    const std::size_t bookkeeping = index_->max_elements_ * (sizeof(std::mutex) + sizeof(int) + sizeof(char*)) +
                                    index_->link_list_update_locks_.size() * sizeof(std::mutex);
    return index_->max_elements_ * index_->size_data_per_element_ + upper + bookkeeping +
           index_->label_lookup_.size() * 32 + index_->label_lookup_.bucket_count() * sizeof(void*);
  }

 private:
  shoal::metric metric_;
  std::size_t m_;
  std::size_t ef_construction_ = 200;
  std::size_t seed_ = 100;
  std::size_t ef_ = hnsw_index::default_ef;
  std::unique_ptr<hnswlib::SpaceInterface<float>> space_;  // outlives index_, which points into it
  std::unique_ptr<hnswlib::HierarchicalNSW<float>> index_;
};

}  // namespace

std::unique_ptr<index_adapter> make_hnswlib_adapter(const index_request& request) {
  if (parse_hnsw_spec(request.spec)) return std::make_unique<hnswlib_hnsw_adapter>(request);
  return std::make_unique<hnswlib_adapter>(request);
}

}  // namespace shoal::bench
