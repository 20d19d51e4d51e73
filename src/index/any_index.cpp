#include "shoal/index/any_index.hpp"

#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "shoal/index/flat.hpp"
#include "shoal/index/hnsw.hpp"
#include "shoal/index/ivf_flat.hpp"
#include "shoal/index/ivf_pq.hpp"

namespace shoal {

namespace {
/// `IVF<nlist>` or `IVF<nlist>_HNSW<M>`.
std::string describe_ivf(std::size_t nlist, std::size_t coarse_hnsw_m) {
  return "IVF" + std::to_string(nlist) + (coarse_hnsw_m != 0 ? "_HNSW" + std::to_string(coarse_hnsw_m) : "");
}
}  // namespace

std::string describe(const flat_index& /*index*/) { return "Flat"; }
std::string describe(const ivf_flat_index& index) {
  return describe_ivf(index.nlist(), index.coarse_hnsw_m()) + ",Flat";
}
std::string describe(const hnsw_index& index) {
  const hnsw_codes codes = index.params().codes;
  return "HNSW" + std::to_string(index.params().M) +
         (codes == hnsw_codes::sq8    ? ",SQ8"
          : codes == hnsw_codes::sq4  ? ",SQ4"
          : codes == hnsw_codes::fp16 ? ",F16"
                                      : "");
}

std::string describe(const ivf_pq_index& index) {
  const ivf_pq_params& p = index.params();
  return (p.opq ? "OPQ" + std::to_string(p.m) + "," : std::string()) + describe_ivf(p.nlist, p.coarse_hnsw_m) + ",PQ" +
         std::to_string(p.m) + (p.nbits == 4 ? "x4fs" : "") +
         (p.refine       ? ",Refine(Flat)"
          : p.refine_sq8 ? ",Refine(SQ8)"
                         : "");
}

void detail::throw_not_built(const std::string& index, const char* what) {
  throw_error(errc::unsupported, index + ": " + what + " is not built yet");
}

void detail::check_rows_for_add(matrix_view<const float> vectors, std::size_t dim, metric m, bool trained, bool mapped,
                                const std::string& index) {
  SHOAL_CHECK_CODE(!mapped, errc::unsupported, index, ": add: the index was loaded with mmap and is read-only");
  SHOAL_CHECK(trained, index, ": add: the index is not trained");
  check_rows_to_add(vectors, dim, m, (index + ": add: vector").c_str());
}

detail::index_interface& any_index::self() const {
  SHOAL_CHECK(self_ != nullptr, "any_index: the index is empty (default-constructed or moved from)");
  return *self_;
}

neighbors any_index::search(matrix_view<const float> queries, std::size_t k, const search_params& params) const {
  SHOAL_CHECK(k > 0, "any_index::search: k must be at least 1");
  neighbors result(queries.rows, k);
  self().search(queries, result.view(), params);
  return result;
}

}  // namespace shoal
