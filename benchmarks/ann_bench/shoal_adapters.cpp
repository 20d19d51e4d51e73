// shoal's indexes behind the benchmark adapter interface. Each index family is one entry of `families`:
// how its spec is recognised and how its adapter is made.
#include <numeric>
#include <optional>
#include <span>
#include <vector>

#include "adapter.hpp"
#include "shoal/index/any_index.hpp"
#include "shoal/index/factory.hpp"
#include "shoal/index/flat.hpp"
#include "shoal/index/hnsw.hpp"
#include "shoal/index/ivf_flat.hpp"
#include "shoal/index/ivf_pq.hpp"
#include "shoal/index/refine.hpp"

namespace shoal::bench {
namespace {

/// What every shoal adapter shares: the spec, the metric, the per-call search parameters and the index,
/// built over ids 0..n-1. `Index` must offer search(queries, out, params) and memory_bytes().
template <class Index>
class shoal_adapter : public index_adapter {
 public:
  explicit shoal_adapter(const index_request& request) : spec_(request.spec), metric_(request.metric) {}

  [[nodiscard]] std::string_view library() const noexcept final { return "shoal"; }
  [[nodiscard]] std::string description() const final { return spec_; }

  // One query runs on the calling thread; batched searches parallelise over queries on the runner's arena.
  void search(matrix_view<const float> queries, neighbors_view out) const final {
    index_->search(queries, out, params_);
  }

  /// What the index itself counts (vectors, links or lists, ids, the id map).
  [[nodiscard]] std::size_t memory_bytes() const final { return index_->memory_bytes(); }

  void save(const std::string& path) const final {
    if constexpr (requires(const Index& i) { i.save(path); })
      index_->save(path);
    else
      index_adapter::save(path);
  }

  void load(const std::string& path, const load_options& options, matrix_view<const float> base) final {
    if constexpr (requires { Index::load(path, load_options{}); }) {
      index_.emplace(Index::load(path, options));
      if constexpr (requires(const Index& i) { describe(i); })
        if (describe(*index_) != spec_)
          throw config_error("--load: " + path + " holds " + describe(*index_) + ", not " + spec_);
      check_load_metric(path, index_->metric(), metric_);
      if (index_->size() != base.rows || index_->dim() != base.dim)
        throw config_error("--load: " + path + " holds " + std::to_string(index_->size()) + " vectors of dimension " +
                           std::to_string(index_->dim()) + ", --base " + std::to_string(base.rows) + " of dimension " +
                           std::to_string(base.dim) + " (recall would be scored against other vectors)");
    } else {
      index_adapter::load(path, options, base);
    }
  }

 protected:
  /// Ids 0..rows-1, the row numbers the ground truth refers to.
  [[nodiscard]] static std::vector<vector_id> row_ids(matrix_view<const float> base) {
    std::vector<vector_id> ids(base.rows);
    std::iota(ids.begin(), ids.end(), vector_id{0});
    return ids;
  }

  std::string spec_;
  shoal::metric metric_;
  shoal::search_params params_{};
  std::optional<Index> index_;
};

/// `Flat`: exact search, no build or search knobs.
class flat_adapter final : public shoal_adapter<flat_index> {
 public:
  explicit flat_adapter(const index_request& request) : shoal_adapter(request) {
    check_param_names(request.build_params, {}, "build", spec_);
  }

  void set_search_params(const param_list& params) override { check_param_names(params, {}, "search", spec_); }

  void build(matrix_view<const float> base) override {
    index_.emplace(base.dim, metric_);
    index_->add(base, row_ids(base));
  }
};

/// Reads `params` into `out` (reset first): `ef` and `nprobe` positive, `refine` (`refine_factor`) as
/// `parse_refine` takes it (0 only for IVF-PQ); throws `config_error` on a name outside `names`.
void read_search_knobs(const param_list& params, std::span<const std::string_view> names, const std::string& spec,
                       search_params& out) {
  check_param_names(params, names, "search", spec);
  out = {};
  for (const param& p : params)
    if (p.name == "refine")
      out.refine_factor = parse_refine(p, spec);
    else
      (p.name == "nprobe" ? out.nprobe : out.ef) = parse_positive(p, spec);
}

/// Reads the IVF search knobs `nprobe` and — with an HNSW coarse quantizer — `ef` into `out`, plus
/// `refine` (the re-rank depth; IVF-PQ's 0, its default, is no re-rank) when `refine_ok`; throws
/// `config_error` on any other name.
void read_ivf_search_params(const param_list& params, bool coarse_graph, bool refine_ok, const std::string& spec,
                            search_params& out) {
  std::vector<std::string_view> names{"nprobe"};
  if (coarse_graph) names.push_back("ef");
  if (refine_ok) names.push_back("refine");
  read_search_knobs(params, names, spec, out);
}

/// `IVF<nlist>[_HNSW<M>],Flat`: build knob `iterations` (k-means, default 10 as in FAISS's IVF), search
/// knobs `nprobe` (default `ivf_flat_index::default_nprobe`) and, with `_HNSW<M>`, `ef` (the coarse
/// graph's search depth, default max(nprobe, 64)).
class ivf_flat_adapter final : public shoal_adapter<ivf_flat_index> {
 public:
  explicit ivf_flat_adapter(const index_request& request)
      : shoal_adapter(request), spec_parts_(ivf_flat(request.spec).value()) {
    train_.iterations = single_knob(request.build_params, "iterations", train_.iterations, "build", spec_);
  }

  void set_search_params(const param_list& params) override {
    read_ivf_search_params(params, spec_parts_.coarse_hnsw_m != 0, false, spec_, params_);
  }

  void build(matrix_view<const float> base) override {
    index_.emplace(base.dim, metric_, spec_parts_.nlist, spec_parts_.coarse_hnsw_m);
    index_->train(base, train_);
    index_->add(base, row_ids(base));
  }

 private:
  ivf_flat_spec spec_parts_;
  ivf_train_params train_{};
};

/// `IVF<nlist>,PQ<m>` (8-bit codes) and `IVF<nlist>,PQ<m>x4fs` (4-bit fast-scan), optionally with
/// `OPQ<m>,` in front (same m), `_HNSW<M>` after nlist (an HNSW coarse quantizer) and `,Refine(Flat)`
/// (full vectors kept for re-ranking): build knob `iterations` (coarse k-means, default 10), search knobs
/// `nprobe` (default `ivf_pq_index::default_nprobe`), `refine` (re-rank the best k · refine by exact
/// distance; only with `,Refine(Flat)`, default 0 = none) and, with `_HNSW<M>`, `ef`.
class ivf_pq_adapter final : public shoal_adapter<ivf_pq_index> {
 public:
  explicit ivf_pq_adapter(const index_request& request)
      : shoal_adapter(request), spec_parts_(ivf_pq(request.spec).value()) {
    train_.coarse.iterations =
        single_knob(request.build_params, "iterations", train_.coarse.iterations, "build", spec_);
    if (spec_parts_.opq != 0 && spec_parts_.opq != spec_parts_.m)
      throw config_error("index " + spec_ + ": OPQ<m> must use the PQ's m");
  }

  void set_search_params(const param_list& params) override {
    read_ivf_search_params(params, spec_parts_.coarse_hnsw_m != 0, true, spec_, params_);
    if (params_.refine_factor > 0 && !spec_parts_.refine && !spec_parts_.refine_sq8)
      throw config_error("search parameter refine of index " + spec_ +
                         " needs the ,Refine(Flat) or ,Refine(SQ8) suffix");
  }

  void build(matrix_view<const float> base) override {
    index_.emplace(base.dim, metric_,
                   ivf_pq_params{.nlist = spec_parts_.nlist,
                                 .m = spec_parts_.m,
                                 .nbits = spec_parts_.fast_scan ? std::size_t{4} : std::size_t{8},
                                 .refine = spec_parts_.refine,
                                 .refine_sq8 = spec_parts_.refine_sq8,
                                 .opq = spec_parts_.opq != 0,
                                 .coarse_hnsw_m = spec_parts_.coarse_hnsw_m});
    index_->train(base, train_);
    index_->add(base, row_ids(base));
  }

 private:
  ivf_pq_spec spec_parts_;
  ivf_pq_train_params train_{};
};

/// `HNSW<M>`, `HNSW<M>,SQ8` and `HNSW<M>,F16` (SQ8 / half-precision traversal, exact re-rank): build knobs
/// `ef_construction` (default 200), `seed` and `alpha` (`hnsw_params::alpha`, default 1), search knob `ef`
/// (default `hnsw_index::default_ef`, raised to k).
class hnsw_adapter final : public shoal_adapter<hnsw_index> {
 public:
  explicit hnsw_adapter(const index_request& request) : shoal_adapter(request) {
    static constexpr std::string_view names[] = {"ef_construction", "seed", "alpha"};
    check_param_names(request.build_params, names, "build", spec_);
    const hnsw_spec spec = parse_hnsw_spec(request.spec).value();
    build_.M = spec.m;
    build_.codes = spec.codes;
    for (const param& p : request.build_params) {
      if (p.name == "alpha")
        build_.alpha = parse_number(p, spec_);
      else if (p.name == "seed")
        build_.seed = parse_seed(p, spec_);
      else
        build_.ef_construction = parse_positive(p, spec_);
    }
  }

  void set_search_params(const param_list& params) override {
    params_ = {};
    params_.ef = single_knob(params, "ef", 0, "search", spec_);
  }

  // Inserts in parallel on the runner's arena.
  void build(matrix_view<const float> base) override {
    index_.emplace(base.dim, metric_, build_);
    index_->add(base, row_ids(base));
  }

 private:
  hnsw_params build_{};
};

/// The first stage of a `<spec>,Refine(Flat)` spec whose first stage is `Flat`, `IVF<nlist>[_HNSW<M>],Flat`
/// or `HNSW<M>[,SQ8|,SQ4|,F16]` (IVF-PQ's own re-rank is the IVF-PQ family's), or nothing. `,RFlat` reaches
/// it through `resolve_spec`, as the factory describes it.
std::optional<std::string_view> refine_first_stage(std::string_view spec) {
  constexpr std::string_view suffix = ",Refine(Flat)";
  if (!spec.ends_with(suffix)) return std::nullopt;
  const std::string_view first = spec.substr(0, spec.size() - suffix.size());
  if (first == "Flat" || ivf_flat(first) || parse_hnsw_spec(first)) return first;
  return std::nullopt;
}

/// `<first stage>,Refine(Flat)` (or `,RFlat`): a `refine_index`, whose first stage proposes and a flat
/// stage re-ranks by exact distance. Search knobs: the first stage's (`ef` for HNSW and `_HNSW<M>`
/// coarse graphs, `nprobe` for IVF) and `refine` (candidate depth k · refine, default
/// `refine_index::default_refine_factor`; positive: refine_index reads 0 as that default, which a
/// `refine=0` row would misreport as no re-rank); no build knobs.
class refine_adapter final : public shoal_adapter<refine_index> {
 public:
  explicit refine_adapter(const index_request& request)
      : shoal_adapter(request), first_(refine_first_stage(request.spec).value()) {
    check_param_names(request.build_params, {}, "build", spec_);
  }

  void set_search_params(const param_list& params) override {
    if (const std::optional<ivf_flat_spec> ivf = ivf_flat(first_))
      return read_ivf_search_params(params, ivf->coarse_hnsw_m != 0, true, spec_, params_);
    std::vector<std::string_view> names{"refine"};
    if (first_ != "Flat") names.push_back("ef");  // HNSW
    read_search_knobs(params, names, spec_, params_);
  }

  void build(matrix_view<const float> base) override {
    index_.emplace(make_index(first_, base.dim, metric_), flat_index(base.dim, metric_));
    index_->train(base);
    index_->add(base, row_ids(base));
  }

 private:
  std::string first_;
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
    {"IVF<nlist>[_HNSW<M>],Flat", [](std::string_view spec) { return ivf_flat(spec).has_value(); },
     make<ivf_flat_adapter>},
    {"[OPQ<m>,]IVF<nlist>[_HNSW<M>],PQ<m>[x4fs][,Refine(Flat)|,Refine(SQ8)]",
     [](std::string_view spec) { return ivf_pq(spec).has_value(); }, make<ivf_pq_adapter>},
    {"HNSW<M>[,SQ8|,SQ4|,F16]", [](std::string_view spec) { return parse_hnsw_spec(spec).has_value(); },
     make<hnsw_adapter>},
    {"<Flat|IVF...,Flat|HNSW...>,Refine(Flat)",
     [](std::string_view spec) { return refine_first_stage(spec).has_value(); }, make<refine_adapter>},
};

/// The family of `spec` as written, or null.
const index_family* family_of(std::string_view spec) {
  for (const index_family& family : families)
    if (family.matches(spec)) return &family;
  return nullptr;
}

/// "unknown index spec 'x' (known: ...)".
std::string unknown_spec(std::string_view spec) {
  std::string known;
  for (const index_family& family : families) append_item(known, family.example, ", ");
  return "unknown index spec '" + std::string(spec) + "' (known: " + known + ")";
}

}  // namespace

std::unique_ptr<index_adapter> make_shoal_adapter(const index_request& request) {
  if (const index_family* family = family_of(request.spec)) return family->make(request);
  throw config_error(unknown_spec(request.spec));
}

std::string resolve_spec(const std::string& spec, std::size_t dim, shoal::metric m) {
  if (family_of(spec) != nullptr) return spec;
  try {
    return make_index(spec, dim, m).description();
  } catch (const shoal::error& e) {  // the factory's message names the bad token
    // A spec the grammar knows but no index builds yet is not "unknown" (a user-eyes review).
    if (e.code() == errc::unsupported)
      throw config_error("index spec '" + spec + "' is not built by this version: " + std::string(error_text(e)));
    throw config_error(unknown_spec(spec) + "; make_index says: " + std::string(error_text(e)));
  }
}

}  // namespace shoal::bench
