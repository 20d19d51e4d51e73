// FAISS peer (Debian libfaiss-dev). The spec maps to FAISS's own index: `Flat` -> IndexFlatL2 /
// IndexFlatIP (cosine: inner product over unit vectors). FAISS threads with OpenMP, so each thread that
// calls it sets its OpenMP thread count (`use_threads`); single-query mode calls search with n = 1.
#include <faiss/IndexFlat.h>
#include <omp.h>

#include <memory>
#include <string>
#include <type_traits>

#include "adapter.hpp"
#include "peer_support.hpp"
#include "shoal/core/error.hpp"

namespace shoal::bench {
namespace {

using faiss_id = faiss::Index::idx_t;
// FAISS writes its int64 labels straight into shoal's uint64 id buffers: a signed/unsigned pair may
// alias, and FAISS's −1 ("no result") reads as shoal::no_id.
static_assert(std::is_same_v<std::make_unsigned_t<faiss_id>, vector_id>);

class faiss_flat_adapter final : public index_adapter {
 public:
  explicit faiss_flat_adapter(const index_request& request) : metric_(request.metric) {
    if (request.spec != "Flat")
      throw config_error("faiss peer has no counterpart of index spec '" + request.spec + "'");
    check_param_names(request.build_params, {}, "build", description());
  }

  [[nodiscard]] std::string_view library() const noexcept override { return "faiss"; }
  [[nodiscard]] std::string description() const override {
    return metric_ == shoal::metric::l2 ? "IndexFlatL2" : "IndexFlatIP";
  }

  void set_search_params(const param_list& params) override { check_param_names(params, {}, "search", description()); }

  void build(matrix_view<const float> base) override {
    const peer_rows rows(base, metric_);
    SHOAL_CHECK(rows.view().stride == base.dim, "faiss peer: base rows must be contiguous");
    const auto dim = static_cast<faiss_id>(base.dim);
    index_ = metric_ == shoal::metric::l2 ? std::unique_ptr<faiss::IndexFlat>(std::make_unique<faiss::IndexFlatL2>(dim))
                                          : std::make_unique<faiss::IndexFlatIP>(dim);
    index_->add(static_cast<faiss_id>(base.rows), rows.view().data);
  }

  void use_threads(std::size_t threads) const override { omp_set_num_threads(static_cast<int>(threads)); }

  void search(matrix_view<const float> queries, neighbors_view out) const override {
    const peer_rows rows(queries, metric_);
    SHOAL_CHECK(rows.view().stride == queries.dim, "faiss peer: query rows must be contiguous");
    index_->search(static_cast<faiss_id>(queries.rows), rows.view().data, static_cast<faiss_id>(out.k), out.distances,
                   reinterpret_cast<faiss_id*>(out.ids));
    // FAISS reports similarities for inner product; shoal's distances are −⟨q,x⟩ and 1 − cos.
    if (metric_ == shoal::metric::l2) return;
    const float offset = metric_ == shoal::metric::cosine ? 1.0f : 0.0f;
    for (std::size_t i = 0; i < out.rows * out.k; ++i) out.distances[i] = offset - out.distances[i];
  }

  /// The stored codes (n · d floats); the index object itself is negligible.
  [[nodiscard]] std::size_t memory_bytes() const override { return index_->codes.size(); }

 private:
  shoal::metric metric_;
  std::unique_ptr<faiss::IndexFlat> index_;
};

}  // namespace

std::unique_ptr<index_adapter> make_faiss_adapter(const index_request& request) {
  return std::make_unique<faiss_flat_adapter>(request);
}

}  // namespace shoal::bench
