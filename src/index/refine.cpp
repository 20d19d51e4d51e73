#include "shoal/index/refine.hpp"

#include <optional>
#include <utility>

#include "core/parallel.hpp"
#include "index/scan.hpp"
#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "shoal/core/topk.hpp"
#include "shoal/distance/distance.hpp"

namespace shoal {

refine_index::refine_index(any_index coarse, flat_index exact) : coarse_(std::move(coarse)), exact_(std::move(exact)) {
  SHOAL_CHECK(coarse_.dim() == exact_.dim(), "refine_index: the coarse index has dimension ", coarse_.dim(),
              ", the exact one ", exact_.dim());
  SHOAL_CHECK(coarse_.metric() == exact_.metric(), "refine_index: the coarse index uses metric ",
              metric_name(coarse_.metric()), ", the exact one ", metric_name(exact_.metric()));
  SHOAL_CHECK(coarse_.size() == exact_.size(), "refine_index: the coarse index holds ", coarse_.size(),
              " vectors, the exact one ", exact_.size());
}

void refine_index::add(matrix_view<const float> vectors, std::span<const vector_id> ids) {
  coarse_.add(vectors, ids);
  try {
    exact_.add(vectors, ids);
  } catch (...) {
    for (const vector_id id : ids) coarse_.remove(id);
    throw;
  }
}

void refine_index::remove(vector_id id) {
  exact_.remove(id);  // first: it checks the id
  coarse_.remove(id);
}

void refine_index::search(matrix_view<const float> queries, neighbors_view out, const search_params& params) const {
  SHOAL_CHECK(out.k > 0, "refine_index::search: k must be at least 1");
  SHOAL_CHECK(out.rows == queries.rows, "refine_index::search: result buffer has ", out.rows, " rows for ",
              queries.rows, " queries");
  detail::check_vectors(queries, dim(), "refine_index::search: query");
  search_params coarse_params = params;
  coarse_params.refine_factor = 0;
  const std::size_t depth = out.k * (params.refine_factor > 0 ? params.refine_factor : default_refine_factor);
  const neighbors candidates = coarse_.search(queries, depth, coarse_params);

  std::optional<matrix<float>> unit;  // the exact stage stores unit vectors under cosine
  if (metric() == shoal::metric::cosine) {
    unit = detail::normalized_copy(queries, "refine_index::search: query");
    queries = unit->view();
  }
  const distance_kernels& kernels = active_kernels();
  const std::size_t d = dim();
  detail::parallel_for(queries.rows, [&](std::size_t r) {
    topk_heap heap(out.k);
    for (const vector_id id : candidates.row_ids(r)) {
      if (id == no_id) break;
      const float* x = exact_.vector(id).data();
      const float dist = metric() == shoal::metric::l2 ? kernels.l2sqr(queries.row(r), x, d)
                                                       : detail::distance_from_inner_product(
                                                             metric(), kernels.inner_product(queries.row(r), x, d));
      heap.push(dist, id);
    }
    heap.write_sorted(out.row_ids(r), out.row_distances(r));
  });
}

neighbors refine_index::search(matrix_view<const float> queries, std::size_t k, const search_params& params) const {
  SHOAL_CHECK(k > 0, "refine_index::search: k must be at least 1");
  neighbors result(queries.rows, k);
  search(queries, result.view(), params);
  return result;
}

std::string describe(const refine_index& index) { return index.coarse().description() + ",Refine(Flat)"; }

}  // namespace shoal
