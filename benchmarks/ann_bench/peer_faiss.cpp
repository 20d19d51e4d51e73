// FAISS peer (Debian libfaiss-dev). The spec maps to FAISS's own index: `Flat` -> IndexFlatL2 /
// IndexFlatIP (cosine: inner product over unit vectors); `IVF<nlist>,Flat` -> IndexIVFFlat over a flat
// quantizer of the same metric, with the same build knob (`iterations`, FAISS's `cp.niter`, default 10)
// and search knob (`nprobe`, passed per call in SearchParametersIVF); `IVF<nlist>_HNSW<M>` -> the same
// over an IndexHNSWFlat quantizer (efConstruction 40, FAISS's default, as shoal's coarse graph; k-means
// assigns with a flat index, as shoal's), search knob `ef` -> its efSearch. Search depths are set as shoal
// and hnswlib run them (`faiss_ef`): ef defaults to shoal's, is raised to k (the coarse graph's to nprobe)
// and cut at what the index holds, as are nprobe and IndexRefine's k · k_factor: FAISS allocates them up
// front, so a value the bench accepts (up to 2^31 - 1) aborted the run. FAISS threads with OpenMP, so each thread
// that calls it sets its OpenMP thread count (`use_threads`, which also caps OpenBLAS's own threads);
// single-query mode calls search with n = 1.
#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/IndexIVFPQFastScan.h>
#include <faiss/IndexPreTransform.h>
#include <faiss/IndexRefine.h>
#include <faiss/IndexScalarQuantizer.h>
#include <faiss/VectorTransform.h>
#include <faiss/utils/utils.h>

#include <algorithm>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "../faiss_threads.hpp"
#include "adapter.hpp"
#include "peer_support.hpp"
#include "shoal/core/error.hpp"

namespace shoal::bench {
namespace {

using faiss_id = faiss::Index::idx_t;
// FAISS writes its int64 labels straight into shoal's uint64 id buffers: a signed/unsigned pair may
// alias, and FAISS's −1 ("no result") reads as shoal::no_id.
static_assert(std::is_same_v<std::make_unsigned_t<faiss_id>, vector_id>);

/// FAISS reports similarities for inner product; shoal's distances are −⟨q,x⟩ and 1 − cos.
void to_shoal_distances(shoal::metric m, neighbors_view out) noexcept {
  if (m == shoal::metric::l2) return;
  const float offset = m == shoal::metric::cosine ? 1.0f : 0.0f;
  for (std::size_t i = 0; i < out.rows * out.k; ++i) out.distances[i] = offset - out.distances[i];
}

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

  void use_threads(std::size_t threads) const override { use_faiss_threads(threads); }

  void search(matrix_view<const float> queries, neighbors_view out) const override {
    const peer_rows rows(queries, metric_);
    SHOAL_CHECK(rows.view().stride == queries.dim, "faiss peer: query rows must be contiguous");
    index_->search(static_cast<faiss_id>(queries.rows), rows.view().data, static_cast<faiss_id>(out.k), out.distances,
                   reinterpret_cast<faiss_id*>(out.ids));
    to_shoal_distances(metric_, out);
  }

  /// The stored codes (n · d floats); the index object itself is negligible.
  [[nodiscard]] std::size_t memory_bytes() const override { return index_->codes.size(); }

 private:
  shoal::metric metric_;
  std::unique_ptr<faiss::IndexFlat> index_;
};

/// The efSearch for the bench's `ef` when a search wants `k` results from a graph of `ntotal` nodes: at
/// least k, as shoal and hnswlib search (FAISS does not raise it), and no deeper than the graph, beyond
/// which a search finds nothing more (FAISS allocates its queues at efSearch).
int faiss_ef(std::size_t ef, std::size_t k, std::size_t ntotal) {
  return static_cast<int>(std::max(k, std::min(ef, ntotal)));
}

/// Bytes of an IndexHNSWFlat: vectors (d floats each), the neighbour table (4 bytes per slot over every
/// level), offsets and levels.
std::size_t hnsw_bytes(const faiss::IndexHNSWFlat& index) {
  const faiss::HNSW& h = index.hnsw;
  return static_cast<std::size_t>(index.ntotal) * index.d * sizeof(float) +
         h.neighbors.size() * sizeof(faiss::HNSW::storage_idx_t) + h.offsets.size() * sizeof(std::size_t) +
         h.levels.size() * sizeof(int);
}

/// The coarse quantizer of a FAISS IVF index: a flat index of the IVF's metric, or (`_HNSW<M>`) an
/// IndexHNSWFlat, then trained by k-means over a flat index of the same metric (`clustering_index`).
class faiss_coarse {
 public:
  faiss_coarse(std::size_t dim, shoal::metric m, std::size_t hnsw_m) {
    const auto d = static_cast<faiss_id>(dim);
    const bool l2 = m == shoal::metric::l2;
    const auto flat = [&] {
      return l2 ? std::unique_ptr<faiss::IndexFlat>(std::make_unique<faiss::IndexFlatL2>(d))
                : std::make_unique<faiss::IndexFlatIP>(d);
    };
    if (hnsw_m == 0) {
      quantizer_ = flat();
      return;
    }
    auto graph = std::make_unique<faiss::IndexHNSWFlat>(static_cast<int>(dim), static_cast<int>(hnsw_m),
                                                        l2 ? faiss::METRIC_L2 : faiss::METRIC_INNER_PRODUCT);
    graph->hnsw.efConstruction = 40;
    graph_ = graph.get();
    quantizer_ = std::move(graph);
    clustering_ = flat();
  }

  [[nodiscard]] faiss::Index* quantizer() const noexcept { return quantizer_.get(); }
  /// Points `ivf` at the k-means index (the HNSW kind).
  void attach(faiss::IndexIVF& ivf) const noexcept {
    if (clustering_) ivf.clustering_index = clustering_.get();
  }
  /// The graph's search depth for `ef` when it picks `nprobe` lists (the HNSW kind, once trained): at
  /// least nprobe, as shoal's coarse graph searches, both cut at nlist (`faiss_ef`).
  void set_ef(std::size_t ef, std::size_t nprobe) const noexcept {
    if (graph_ == nullptr) return;
    const auto nlist = static_cast<std::size_t>(graph_->ntotal);
    graph_->hnsw.efSearch = faiss_ef(ef, std::min(nprobe, nlist), nlist);
  }
  /// What `set_ef` set (the HNSW kind).
  [[nodiscard]] int ef() const noexcept { return graph_ != nullptr ? graph_->hnsw.efSearch : 0; }
  /// Centroids (and the graph's links).
  [[nodiscard]] std::size_t bytes() const {
    if (graph_ != nullptr) return hnsw_bytes(*graph_);
    return static_cast<const faiss::IndexFlat&>(*quantizer_).codes.size();
  }

 private:
  std::unique_ptr<faiss::Index> quantizer_;
  faiss::IndexHNSWFlat* graph_ = nullptr;         // quantizer_ when it is a graph
  std::unique_ptr<faiss::IndexFlat> clustering_;  // k-means assignment for a graph quantizer
};

class faiss_ivf_flat_adapter final : public index_adapter {
 public:
  explicit faiss_ivf_flat_adapter(const index_request& request)
      : metric_(request.metric), spec_(ivf_flat(request.spec).value()) {
    iterations_ = single_knob(request.build_params, "iterations", iterations_, "build", description());
  }

  [[nodiscard]] std::string_view library() const noexcept override { return "faiss"; }
  [[nodiscard]] std::string description() const override {
    return spec_.coarse_hnsw_m != 0 ? "IndexIVFFlat+IndexHNSWFlat" : "IndexIVFFlat";
  }

  void set_search_params(const param_list& params) override {
    std::vector<std::string_view> names{"nprobe"};
    if (spec_.coarse_hnsw_m != 0) names.push_back("ef");
    check_param_names(params, names, "search", description());
    nprobe_ = 1;
    ef_ = hnsw_index::default_ef;
    for (const param& p : params) (p.name == "nprobe" ? nprobe_ : ef_) = parse_positive(p, description());
    // Set on the graph as well as per call: Debian's FAISS does not pass quantizer parameters down in
    // every path, and the runner never changes settings while searches run.
    if (coarse_) coarse_->set_ef(ef_, nprobe_);
  }

  void build(matrix_view<const float> base) override {
    const peer_rows rows(base, metric_);
    SHOAL_CHECK(rows.view().stride == base.dim, "faiss peer: base rows must be contiguous");
    const auto dim = static_cast<faiss_id>(base.dim);
    coarse_.emplace(base.dim, metric_, spec_.coarse_hnsw_m);
    index_ = std::make_unique<faiss::IndexIVFFlat>(
        coarse_->quantizer(), dim, spec_.nlist,
        metric_ == shoal::metric::l2 ? faiss::METRIC_L2 : faiss::METRIC_INNER_PRODUCT);
    coarse_->attach(*index_);
    index_->cp.niter = static_cast<int>(iterations_);
    index_->train(static_cast<faiss_id>(base.rows), rows.view().data);
    index_->add(static_cast<faiss_id>(base.rows), rows.view().data);
    coarse_->set_ef(ef_, nprobe_);
  }

  void use_threads(std::size_t threads) const override { use_faiss_threads(threads); }

  void search(matrix_view<const float> queries, neighbors_view out) const override {
    const peer_rows rows(queries, metric_);
    SHOAL_CHECK(rows.view().stride == queries.dim, "faiss peer: query rows must be contiguous");
    faiss::SearchParametersIVF params;
    params.nprobe = std::min(nprobe_, spec_.nlist);
    faiss::SearchParametersHNSW graph_params;
    if (spec_.coarse_hnsw_m != 0) {
      graph_params.efSearch = coarse_->ef();
      params.quantizer_params = &graph_params;
    }
    index_->search(static_cast<faiss_id>(queries.rows), rows.view().data, static_cast<faiss_id>(out.k), out.distances,
                   reinterpret_cast<faiss_id*>(out.ids), &params);
    to_shoal_distances(metric_, out);
  }

  /// The quantizer plus the lists' codes (d floats) and ids (8 bytes) per vector.
  [[nodiscard]] std::size_t memory_bytes() const override {
    return coarse_->bytes() + static_cast<std::size_t>(index_->ntotal) * (index_->code_size + sizeof(faiss_id));
  }

 private:
  shoal::metric metric_;
  ivf_flat_spec spec_;
  std::size_t iterations_ = 10;
  std::size_t nprobe_ = 1;
  std::size_t ef_ = hnsw_index::default_ef;
  std::optional<faiss_coarse> coarse_;  // outlives index_, which points to its quantizer
  std::unique_ptr<faiss::IndexIVFFlat> index_;
};

/// `IVF<nlist>,PQ<m>` -> IndexIVFPQ (8-bit codes), `IVF<nlist>,PQ<m>x4fs` -> IndexIVFPQFastScan (4-bit,
/// blocks of 32), each with residual encoding over a flat quantizer; `OPQ<m>,` in front puts an OPQMatrix
/// before it (IndexPreTransform); `,Refine(Flat)` wraps the result in an IndexRefineFlat. Build knob `iterations`
/// (coarse k-means); search knobs `nprobe` and `refine` (IndexRefine's k_factor; 0, shoal's no re-rank, is
/// k_factor 1: the first stage's own k results, re-scored, the same set). Debian's FAISS 1.7.3 does not read
/// SearchParametersIVF in every fast-scan and refine path, so the knobs are set on the indexes (the runner never
/// changes settings while searches run).
class faiss_ivf_pq_adapter final : public index_adapter {
 public:
  explicit faiss_ivf_pq_adapter(const index_request& request)
      : metric_(request.metric), spec_(ivf_pq(request.spec).value()), k_(request.k) {
    iterations_ = single_knob(request.build_params, "iterations", iterations_, "build", description());
  }

  [[nodiscard]] std::string_view library() const noexcept override { return "faiss"; }
  [[nodiscard]] std::string description() const override {
    std::string name = spec_.fast_scan ? "IndexIVFPQFastScan" : "IndexIVFPQ";
    if (spec_.coarse_hnsw_m != 0) name += "+IndexHNSWFlat";
    if (spec_.opq != 0) name = "OPQMatrix+" + name;
    return spec_.refine ? name + "+IndexRefineFlat" : spec_.refine_sq8 ? name + "+IndexRefine(SQ8)" : name;
  }

  void set_search_params(const param_list& params) override {
    std::vector<std::string_view> names{"nprobe", "refine"};
    if (spec_.coarse_hnsw_m != 0) names.push_back("ef");
    check_param_names(params, names, "search", description());
    nprobe_ = 1;
    k_factor_ = 0;
    ef_ = hnsw_index::default_ef;
    for (const param& p : params)
      if (p.name == "refine")
        k_factor_ = parse_count(p, description());
      else
        (p.name == "nprobe" ? nprobe_ : ef_) = parse_positive(p, description());
    apply();
  }

  void build(matrix_view<const float> base) override {
    const peer_rows rows(base, metric_);
    SHOAL_CHECK(rows.view().stride == base.dim, "faiss peer: base rows must be contiguous");
    const auto dim = static_cast<faiss_id>(base.dim);
    const faiss::MetricType mt = metric_ == shoal::metric::l2 ? faiss::METRIC_L2 : faiss::METRIC_INNER_PRODUCT;
    coarse_.emplace(base.dim, metric_, spec_.coarse_hnsw_m);
    if (spec_.fast_scan)
      ivf_ = std::make_unique<faiss::IndexIVFPQFastScan>(coarse_->quantizer(), dim, spec_.nlist, spec_.m, 4, mt);
    else
      ivf_ = std::make_unique<faiss::IndexIVFPQ>(coarse_->quantizer(), dim, spec_.nlist, spec_.m, 8, mt);
    coarse_->attach(*ivf_);
    ivf_->cp.niter = static_cast<int>(iterations_);
    faiss::Index* top = ivf_.get();
    if (spec_.opq != 0) {
      opq_ = std::make_unique<faiss::OPQMatrix>(static_cast<int>(base.dim), static_cast<int>(spec_.opq));
      pretransform_ = std::make_unique<faiss::IndexPreTransform>(opq_.get(), ivf_.get());  // owns neither
      top = pretransform_.get();
    }
    if (spec_.refine) {
      refine_ = std::make_unique<faiss::IndexRefineFlat>(top);
      top = refine_.get();
    } else if (spec_.refine_sq8) {  // `,Refine(SQ8)`: the re-rank scores an 8-bit scalar-quantized copy
      refine_codes_ = std::make_unique<faiss::IndexScalarQuantizer>(dim, faiss::ScalarQuantizer::QT_8bit, mt);
      refine_ = std::make_unique<faiss::IndexRefine>(top, refine_codes_.get());
      top = refine_.get();
    }
    top->train(static_cast<faiss_id>(base.rows), rows.view().data);
    top->add(static_cast<faiss_id>(base.rows), rows.view().data);
    apply();
  }

  void use_threads(std::size_t threads) const override { use_faiss_threads(threads); }

  void search(matrix_view<const float> queries, neighbors_view out) const override {
    const peer_rows rows(queries, metric_);
    SHOAL_CHECK(rows.view().stride == queries.dim, "faiss peer: query rows must be contiguous");
    const faiss::Index* top = refine_                    ? static_cast<const faiss::Index*>(refine_.get())
                              : pretransform_ != nullptr ? static_cast<const faiss::Index*>(pretransform_.get())
                                                         : ivf_.get();
    top->search(static_cast<faiss_id>(queries.rows), rows.view().data, static_cast<faiss_id>(out.k), out.distances,
                reinterpret_cast<faiss_id*>(out.ids));
    to_shoal_distances(metric_, out);
  }

  /// Centroids, codes and ids per vector, plus the full vectors of the refine stage.
  [[nodiscard]] std::size_t memory_bytes() const override {
    std::size_t bytes =
        coarse_->bytes() + static_cast<std::size_t>(ivf_->ntotal) * (ivf_->code_size + sizeof(faiss_id));
    if (refine_) bytes += static_cast<std::size_t>(ivf_->ntotal) * ivf_->d * (refine_codes_ ? 1 : sizeof(float));
    return bytes;
  }

 private:
  void apply() {
    if (!ivf_) return;
    ivf_->nprobe = std::min(nprobe_, spec_.nlist);
    coarse_->set_ef(ef_, nprobe_);
    if (!refine_) return;
    // IndexRefine asks the first stage for k · k_factor candidates: at least k, at most the index
    // (rounded up to a multiple of k).
    const std::size_t most = (static_cast<std::size_t>(ivf_->ntotal) + k_ - 1) / k_;
    refine_->k_factor = static_cast<float>(std::clamp<std::size_t>(k_factor_, 1, std::max<std::size_t>(most, 1)));
  }

  shoal::metric metric_;
  ivf_pq_spec spec_;
  std::size_t k_;
  std::size_t iterations_ = 10;
  std::size_t nprobe_ = 1;
  std::size_t k_factor_ = 0;  // the bench's refine
  std::size_t ef_ = hnsw_index::default_ef;
  std::optional<faiss_coarse> coarse_;    // outlives ivf_, which points to its quantizer
  std::unique_ptr<faiss::IndexIVF> ivf_;  // ivf_ and opq_ outlive pretransform_ and refine_, which point to them
  std::unique_ptr<faiss::OPQMatrix> opq_;
  std::unique_ptr<faiss::IndexPreTransform> pretransform_;
  std::unique_ptr<faiss::IndexScalarQuantizer> refine_codes_;  // Refine(SQ8): outlives refine_
  std::unique_ptr<faiss::IndexRefine> refine_;
};

/// `HNSW<M>` -> IndexHNSWFlat with the same M (FAISS also keeps 2·M links on layer 0), build knob
/// `ef_construction` (default 200 here, FAISS's own is 40), search knob `ef` (efSearch as `faiss_ef` sets
/// it, per call in SearchParametersHNSW; default shoal's `hnsw_index::default_ef`, not FAISS's 16, so that
/// a row without ef means the same depth for every library). FAISS seeds its level generator itself (no
/// `seed`).
class faiss_hnsw_adapter final : public index_adapter {
 public:
  explicit faiss_hnsw_adapter(const index_request& request)
      : metric_(request.metric), m_(hnsw_m(request.spec).value()), k_(request.k) {
    static constexpr std::string_view names[] = {"ef_construction", "seed", "alpha"};  // alpha: shoal's only
    check_param_names(request.build_params, names, "build", description());
    for (const param& p : request.build_params)
      if (p.name == "ef_construction") ef_construction_ = parse_positive(p, description());
  }

  [[nodiscard]] std::string_view library() const noexcept override { return "faiss"; }
  [[nodiscard]] std::string description() const override { return "IndexHNSWFlat"; }

  void set_search_params(const param_list& params) override {
    ef_ = single_knob(params, "ef", hnsw_index::default_ef, "search", description());
    // Debian's FAISS does not apply SearchParametersHNSW::efSearch in every search path; the runner
    // never changes settings while searches run, so setting the index's own value too is safe.
    if (index_) apply();
  }

  void build(matrix_view<const float> base) override {
    const peer_rows rows(base, metric_);
    SHOAL_CHECK(rows.view().stride == base.dim, "faiss peer: base rows must be contiguous");
    index_ = std::make_unique<faiss::IndexHNSWFlat>(
        static_cast<int>(base.dim), static_cast<int>(m_),
        metric_ == shoal::metric::l2 ? faiss::METRIC_L2 : faiss::METRIC_INNER_PRODUCT);
    index_->hnsw.efConstruction = static_cast<int>(ef_construction_);
    index_->add(static_cast<faiss_id>(base.rows), rows.view().data);
    apply();
  }

  void use_threads(std::size_t threads) const override { use_faiss_threads(threads); }

  void search(matrix_view<const float> queries, neighbors_view out) const override {
    const peer_rows rows(queries, metric_);
    SHOAL_CHECK(rows.view().stride == queries.dim, "faiss peer: query rows must be contiguous");
    faiss::SearchParametersHNSW params;
    params.efSearch = index_->hnsw.efSearch;
    index_->search(static_cast<faiss_id>(queries.rows), rows.view().data, static_cast<faiss_id>(out.k), out.distances,
                   reinterpret_cast<faiss_id*>(out.ids), &params);
    to_shoal_distances(metric_, out);
  }

  [[nodiscard]] std::size_t memory_bytes() const override { return hnsw_bytes(*index_); }

 private:
  void apply() { index_->hnsw.efSearch = faiss_ef(ef_, k_, static_cast<std::size_t>(index_->ntotal)); }

  shoal::metric metric_;
  std::size_t m_;
  std::size_t k_;
  std::size_t ef_construction_ = 200;
  std::size_t ef_ = hnsw_index::default_ef;
  std::unique_ptr<faiss::IndexHNSWFlat> index_;
};

/// Which FAISS build the peer is: Debian's binary is a generic one (fast-scan emulated), the AVX2 library
/// of benchmarks/faiss-avx2.sh says "AVX2". Said once, on stderr, so the CSV stays as it is.
void announce_faiss_build() {
  static const bool once = [] {
    std::cerr << "shoal-ann-bench: faiss peer: FAISS " << FAISS_VERSION_MAJOR << '.' << FAISS_VERSION_MINOR << '.'
              << FAISS_VERSION_PATCH << ", compile options: " << faiss::get_compile_options() << '\n';
    return true;
  }();
  static_cast<void>(once);
}

}  // namespace

std::unique_ptr<index_adapter> make_faiss_adapter(const index_request& request) {
  announce_faiss_build();
  if (hnsw_m(request.spec)) return std::make_unique<faiss_hnsw_adapter>(request);
  if (ivf_flat(request.spec)) return std::make_unique<faiss_ivf_flat_adapter>(request);
  if (ivf_pq(request.spec)) return std::make_unique<faiss_ivf_pq_adapter>(request);
  return std::make_unique<faiss_flat_adapter>(request);
}

}  // namespace shoal::bench
