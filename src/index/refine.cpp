#include "shoal/index/refine.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "core/parallel.hpp"
#include "index/index_sections.hpp"
#include "index/scan.hpp"
#include "io/format.hpp"
#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "shoal/core/topk.hpp"
#include "shoal/distance/distance.hpp"
#include "shoal/index/ivf_pq.hpp"

namespace shoal {

refine_index::refine_index(any_index coarse, flat_index exact) : coarse_(std::move(coarse)), exact_(std::move(exact)) {
  SHOAL_CHECK(coarse_.dim() == exact_.dim(), "refine_index: the coarse index has dimension ", coarse_.dim(),
              ", the exact one ", exact_.dim());
  SHOAL_CHECK(coarse_.metric() == exact_.metric(), "refine_index: the coarse index uses metric ",
              metric_name(coarse_.metric()), ", the exact one ", metric_name(exact_.metric()));
  SHOAL_CHECK(coarse_.size() == exact_.size(), "refine_index: the coarse index holds ", coarse_.size(),
              " vectors, the exact one ", exact_.size());
  // The same ids, not only as many: a re-rank looks up each coarse candidate in the exact stage. IVF-PQ
  // keeps no id map: its ids are looked up in the exact stage's map instead, one pass over its lists,
  // where `contains` would build its id locator, which an index loaded only to search never needs.
  if (const auto* pq = coarse_.get_if<ivf_pq_index>()) {
    for (const vector_id id : pq->ids())
      SHOAL_CHECK(exact_.contains(id), "refine_index: id ", id,
                  " is stored in the coarse index but not in the exact one");
    return;
  }
  for (const vector_id id : exact_.ids())
    SHOAL_CHECK(coarse_.contains(id), "refine_index: id ", id,
                " is stored in the exact index but not in the coarse one");
}

void refine_index::add(matrix_view<const float> vectors, std::span<const vector_id> ids) {
  // The exact (flat) stage first: when the coarse stage then refuses the batch or runs out of memory, the
  // flat stage takes it back without allocating, so it cannot fail, and in reverse order, which leaves
  // its rows as they were. (The other way round, a coarse HNSW stage's removals could run out of memory
  // themselves and leave the stages holding different ids, and changed its graph even when they did not.)
  // Rows read from the flat stage (a stored vector added under a new id) are copied first: its add may
  // move the storage they point into before the coarse stage reads them (a review: a segfault).
  std::optional<matrix<float>> copy;
  if (exact_.overlaps_storage(vectors)) {
    copy.emplace(vectors.rows, vectors.dim);
    for (std::size_t i = 0; i < vectors.rows; ++i) std::copy_n(vectors.row(i), vectors.dim, copy->row(i));
    vectors = copy->view();
  }
  exact_.add(vectors, ids);
  try {
    coarse_.add(vectors, ids);
  } catch (...) {
    for (auto id = ids.rbegin(); id != ids.rend(); ++id) exact_.remove(*id);
    throw;
  }
}

void refine_index::check_add(matrix_view<const float> vectors) const {
  // The exact stage refuses what the coarse one (same dimension and metric) checks of the rows too.
  SHOAL_CHECK_CODE(!exact_.is_mapped(), errc::unsupported,
                   "refine_index::add: the exact stage was loaded with mmap and is read-only");
  coarse_.check_add(vectors);
}

void refine_index::remove(vector_id id) {
  SHOAL_CHECK_CODE(exact_.contains(id), errc::not_found, "refine_index::remove: id ", id, " is not stored");
  // A flat removal refuses only a memory-mapped (read-only) index and allocates nothing, so once that is
  // checked the exact stage's remove cannot fail after the coarse one's. (Until session 42 a mapped
  // exact stage refused after the coarse remove, which then added the row back: a graph changed by a
  // refused call, and out of memory there left the stages holding different ids.)
  SHOAL_CHECK_CODE(!exact_.is_mapped(), errc::unsupported,
                   "refine_index::remove: the exact stage was loaded with mmap and is read-only");
  coarse_.remove(id);
  exact_.remove(id);
}

namespace {

/// Re-scores candidates with exact distances from the flat stage's full vectors.
class rescorer {
 public:
  /// `queries` as the caller gave them (normalised here for cosine, as the flat stage's vectors are).
  rescorer(const flat_index& exact, matrix_view<const float> queries, const char* what)
      : exact_(exact), kernels_(active_kernels()), queries_(queries) {
    if (exact.metric() == metric::cosine) {
      unit_ = detail::normalized_copy(queries, what);
      queries_ = unit_->view();
    }
  }
  /// Exact distance from query `r` to the vector stored under `id` (bit-identical to the flat index's).
  [[nodiscard]] float operator()(std::size_t r, vector_id id) const {
    return detail::pair_distance(kernels_, exact_.metric(), queries_.row(r), exact_.vector(id).data(), exact_.dim());
  }

 private:
  const flat_index& exact_;
  const distance_kernels& kernels_;
  matrix_view<const float> queries_;
  std::optional<matrix<float>> unit_;
};

}  // namespace

void refine_index::search(matrix_view<const float> queries, neighbors_view out, const search_params& params) const {
  detail::check_result_buffer(queries.rows, out, "refine_index::search");
  detail::check_vectors(queries, dim(), "refine_index::search: query");
  const rescorer exact(exact_, queries, "refine_index::search: query");  // first: it names a zero cosine query
  search_params coarse_params = params;
  coarse_params.refine_factor = 0;
  // Past the stored vectors there is nothing to gather: a k beyond them would only pad a second rows × k
  // buffer beside `out` (write_sorted pads `out` itself).
  const std::size_t wanted = std::min(out.k, std::max<std::size_t>(coarse_.size(), 1));
  const std::size_t depth = detail::candidate_depth(
      wanted, params.refine_factor > 0 ? params.refine_factor : default_refine_factor, coarse_.size());
  // A short first-stage row widens until it holds the k returned, not the whole depth, unless the caller
  // says otherwise (`widen_to`: above k, up to the depth).
  coarse_params.widen_to = params.widen_to > 0 ? params.widen_to : wanted;
  const neighbors candidates = coarse_.search(queries, depth, coarse_params);
  detail::parallel_for(queries.rows, [&](std::size_t r) {
    topk_heap heap(out.k);
    for (const vector_id id : candidates.row_ids(r)) {
      if (id == no_id) break;
      heap.push(exact(r, id), id);
    }
    heap.write_sorted(out.row_ids(r), out.row_distances(r));
  });
}

range_result refine_index::range_search(matrix_view<const float> queries, float radius,
                                        const search_params& params) const {
  SHOAL_CHECK(!std::isnan(radius), "refine_index::range_search: radius is NaN");
  detail::check_vectors(queries, dim(), "refine_index::range_search: query");
  const rescorer exact(exact_, queries, "refine_index::range_search: query");
  search_params coarse_params = params;
  coarse_params.refine_factor = 0;
  const range_result candidates = coarse_.range_search(queries, radius, coarse_params);
  return detail::range_by_query(queries.rows, [&](std::size_t r, std::vector<scored_id>& hits) {
    for (const vector_id id : candidates.row_ids(r)) {
      const float distance = exact(r, id);
      if (distance < radius) hits.push_back({distance, id});
    }
  });
}

neighbors refine_index::search(matrix_view<const float> queries, std::size_t k, const search_params& params) const {
  SHOAL_CHECK(k > 0, "refine_index::search: k must be at least 1");
  neighbors result(queries.rows, k);
  search(queries, result.view(), params);
  return result;
}

// ------------------------------------------------------------------------------------------ persistence
namespace {
constexpr std::uint32_t tag_params = io::detail::make_tag("RPAR");
/// The flat stage's sections in a refine file (the coarse stage's keep their own tags).
constexpr detail::flat_section_tags exact_tags{io::detail::make_tag("RVEC"), io::detail::make_tag("RNRM"),
                                               io::detail::make_tag("RIDS")};

/// The RPAR section: fixed-width little-endian fields (docs/format.md).
struct refine_file_params {
  std::uint32_t coarse_kind;  // index_kind of the coarse stage
  std::uint32_t reserved;     // 0
};
static_assert(sizeof(refine_file_params) == 8 && std::is_trivially_copyable_v<refine_file_params>);

/// Calls `f(std::type_identity<Index>{})` for the index type a coarse stage of `kind` has. Throws
/// `error_code` (naming `file`) for a kind that cannot be a coarse stage.
template <class F>
decltype(auto) with_coarse_type(index_kind kind, errc error_code, const std::string& file, F&& f) {
  switch (kind) {
    case index_kind::flat:
      return f(std::type_identity<flat_index>{});
    case index_kind::ivf_flat:
      return f(std::type_identity<ivf_flat_index>{});
    case index_kind::hnsw:
      return f(std::type_identity<hnsw_index>{});
    case index_kind::ivf_pq:
      return f(std::type_identity<ivf_pq_index>{});
    case index_kind::collection:
    case index_kind::refine:
      break;
  }
  detail::throw_error(error_code, detail::str(file, ": a refine index's coarse stage cannot be of kind ",
                                              index_kind_name(kind), " (", static_cast<std::uint32_t>(kind), ")"));
}
}  // namespace

void refine_index::save(const std::string& path) const {
  with_coarse_type(coarse_.kind(), errc::unsupported, path, [&]<class Coarse>(std::type_identity<Coarse>) {
    const Coarse* coarse = coarse_.get_if<Coarse>();
    SHOAL_CHECK_CODE(coarse != nullptr, errc::unsupported, path, ": the coarse stage ", coarse_.description(),
                     " cannot be saved inside a refine index");
    io::detail::index_file_writer out(path, {index_kind::refine, metric(), dim(), 0});
    out.begin_section(tag_params);
    out.append_value(refine_file_params{static_cast<std::uint32_t>(coarse_.kind()), 0});
    [[maybe_unused]] const auto lock = detail::index_sections<Coarse>::write(*coarse, out);
    (void)detail::index_sections<flat_index>::write(exact_, out, exact_tags);
    out.set_count(size());
    out.commit();
  });
}

refine_index refine_index::load(const std::string& path, const load_options& options) {
  const io::detail::index_file_reader in(path, options);
  const std::string& name = in.name();
  in.expect_kind(index_kind::refine, "refine_index::load");
  SHOAL_CHECK_CODE(in.section_size(tag_params) == sizeof(refine_file_params), errc::corrupt_file, name,
                   ": section RPAR has ", in.section_size(tag_params), " bytes, expected ", sizeof(refine_file_params));
  refine_file_params fp{};
  in.read(tag_params, &fp, 1);
  SHOAL_CHECK_CODE(fp.reserved == 0, errc::corrupt_file, name, ": reserved field of section RPAR is ", fp.reserved);
  any_index coarse = with_coarse_type(
      static_cast<index_kind>(fp.coarse_kind), errc::corrupt_file, name, [&]<class Coarse>(std::type_identity<Coarse>) {
        in.check_known({tag_params, exact_tags.vectors, exact_tags.norms, exact_tags.ids},
                       detail::index_sections<Coarse>::known());
        return any_index(detail::index_sections<Coarse>::read(in));
      });
  flat_index exact = detail::index_sections<flat_index>::read(in, exact_tags);
  in.advise_random(exact_tags.vectors);  // a re-rank reads a few scattered rows per query
  // Both stages hold the header's count of distinct ids; they must be the same ids, or a re-rank would
  // look up a vector that is not there: the constructor checks, its refusal reported as damage.
  try {
    return {std::move(coarse), std::move(exact)};
  } catch (const error& e) {
    if (e.code() != errc::invalid_argument) throw;
    detail::throw_error(errc::corrupt_file, detail::str(name, ": ", e.message()));
  }
}

std::string describe(const refine_index& index) { return index.coarse().description() + ",Refine(Flat)"; }

}  // namespace shoal
