#include "shoal/index/ivf_flat.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <optional>
#include <unordered_set>

#include "core/all_or_nothing.hpp"
#include "core/parallel.hpp"
#include "index/coarse_quantizer.hpp"
#include "index/index_sections.hpp"
#include "index/inverted_lists.hpp"
#include "index/ivf_file.hpp"
#include "index/ivf_probe.hpp"
#include "index/scan.hpp"
#include "io/format.hpp"
#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "shoal/core/topk.hpp"
#include "shoal/distance/distance.hpp"

namespace shoal {

/// An IVF-Flat list: full vectors (dim floats per entry) and ids, owned or, after a memory-mapped load,
/// inside the mapping.
struct ivf_flat_index::list : detail::inverted_list<float> {};

ivf_flat_index::ivf_flat_index(std::size_t dim, shoal::metric m, std::size_t nlist, std::size_t coarse_hnsw_m)
    : dim_(dim), metric_(m), nlist_(nlist), coarse_(std::make_unique<detail::coarse_quantizer>(m, coarse_hnsw_m)) {
  detail::check_dimension(dim, "ivf_flat_index");
  detail::check_metric(m, "ivf_flat_index");
  detail::check_nlist(nlist, "ivf_flat_index");
  (void)active_kernels();  // surface a bad SHOAL_SIMD here rather than in the first search
  lists_.reserve(nlist);
  for (std::size_t l = 0; l < nlist; ++l) lists_.push_back(std::make_unique<list>());
}

ivf_flat_index::~ivf_flat_index() = default;
ivf_flat_index::ivf_flat_index(ivf_flat_index&&) noexcept = default;
ivf_flat_index& ivf_flat_index::operator=(ivf_flat_index&&) noexcept = default;

bool ivf_flat_index::is_trained() const noexcept { return coarse_ != nullptr && coarse_->trained(); }
detail::coarse_quantizer& ivf_flat_index::coarse() const {
  SHOAL_CHECK(coarse_ != nullptr, "ivf_flat_index: the index is empty (moved from)");
  return *coarse_;
}
std::size_t ivf_flat_index::coarse_hnsw_m() const noexcept { return coarse_ ? coarse_->hnsw_m() : 0; }
matrix_view<const float> ivf_flat_index::centroids() const noexcept {
  return coarse_ ? coarse_->centroids() : matrix_view<const float>{};
}

std::vector<std::size_t> ivf_flat_index::list_sizes() const { return detail::list_counts(lists_); }

std::size_t ivf_flat_index::memory_bytes() const {
  const std::size_t bytes = (coarse_ ? coarse_->memory_bytes() : 0) + detail::lists_bytes(lists_);
  // unordered_map: one bucket pointer per bucket, a node (next pointer, key, value) per entry.
  const std::shared_lock lock(map_mutex_);
  return bytes + where_.bucket_count() * sizeof(void*) +
         where_.size() * (sizeof(void*) + sizeof(vector_id) + sizeof(location));
}

void ivf_flat_index::check_mutable(const char* what) const { io::detail::check_writable(mapping_.get(), what); }

void ivf_flat_index::train(matrix_view<const float> vectors, const ivf_train_params& params) {
  check_mutable("ivf_flat_index::train");
  SHOAL_CHECK(size() == 0, "ivf_flat_index::train: the index already holds ", size(), " vectors; train before adding");
  detail::check_vectors(vectors, dim_, "ivf_flat_index::train: vector");
  SHOAL_CHECK(vectors.rows >= nlist_, "ivf_flat_index::train: nlist = ", nlist_, " exceeds the ", vectors.rows,
              " training vectors");
  std::optional<matrix<float>> normalized;
  if (metric_ == metric::cosine) {
    normalized = detail::normalized_copy(vectors, "ivf_flat_index::train: vector");
    vectors = normalized->view();
  }
  kmeans_params kp;
  kp.k = nlist_;
  kp.iterations = params.iterations;
  kp.seed = params.seed;
  kp.init = params.init;
  kp.max_points_per_centroid = params.max_points_per_centroid;
  kp.spherical = metric_ != metric::l2;
  coarse().set_centroids(std::move(kmeans(vectors, kp).centroids));
}

void ivf_flat_index::add(matrix_view<const float> vectors, std::span<const vector_id> ids) {
  check_mutable("ivf_flat_index::add");
  SHOAL_CHECK(is_trained(), "ivf_flat_index::add: the index is not trained");
  detail::check_vectors(vectors, dim_, "ivf_flat_index::add: vector");
  detail::check_ids(ids, vectors.rows, "ivf_flat_index::add");
  {
    std::unordered_set<vector_id> batch;
    batch.reserve(ids.size());
    for (const vector_id id : ids)
      SHOAL_CHECK_CODE(batch.insert(id).second, errc::duplicate_id, "ivf_flat_index::add: id ", id,
                       " appears twice in one batch");
  }
  std::optional<matrix<float>> normalized;
  if (metric_ == metric::cosine) {
    normalized = detail::normalized_copy(vectors, "ivf_flat_index::add: vector");
    vectors = normalized->view();
  }
  // The coarse assignment runs before any lock is taken: it only reads the immutable quantizer.
  const std::size_t n = vectors.rows;
  std::vector<std::uint32_t> label(n);
  coarse().assign(vectors, label.data());
  // Group the batch by list (a counting sort, stable in batch order) so each list is locked once.
  std::vector<std::size_t> offsets(nlist_ + 1, 0);
  for (const std::uint32_t l : label) ++offsets[l + 1];
  for (std::size_t l = 0; l < nlist_; ++l) offsets[l + 1] += offsets[l];
  std::vector<std::size_t> order(n);
  {
    std::vector<std::size_t> next(offsets.begin(), offsets.end() - 1);
    for (std::size_t i = 0; i < n; ++i) order[next[label[i]]++] = i;
  }

  const std::unique_lock map_lock(map_mutex_);
  for (const vector_id id : ids)
    SHOAL_CHECK_CODE(!where_.contains(id), errc::duplicate_id, "ivf_flat_index::add: id ", id, " is already stored");
  // Every allocation first (room in each list, then the id map, all or nothing): out of memory leaves
  // the index as it was, and the appends below do not allocate. Only writers change the lists, and they
  // hold `map_mutex_` exclusively: the list sizes can be read without the lists' locks.
  std::vector<location> at(n);
  for (std::size_t l = 0; l < nlist_; ++l) {
    if (offsets[l] == offsets[l + 1]) continue;
    list& target = *lists_[l];
    for (std::size_t m = offsets[l]; m < offsets[l + 1]; ++m) at[order[m]] = {l, target.size() + (m - offsets[l])};
    const std::unique_lock list_lock(target.mutex);
    target.reserve_more(offsets[l + 1] - offsets[l], dim_);
  }
  detail::insert_all_or_nothing(where_, ids, [&](std::size_t i) { return at[i]; });
  for (std::size_t l = 0; l < nlist_; ++l) {
    if (offsets[l] == offsets[l + 1]) continue;
    list& target = *lists_[l];
    const std::unique_lock list_lock(target.mutex);
    for (std::size_t m = offsets[l]; m < offsets[l + 1]; ++m) target.append(vectors.row(order[m]), dim_, ids[order[m]]);
  }
  size_.add(n);
}

void ivf_flat_index::remove(vector_id id) {
  check_mutable("ivf_flat_index::remove");
  const std::unique_lock map_lock(map_mutex_);
  const auto it = where_.find(id);
  SHOAL_CHECK_CODE(it != where_.end(), errc::not_found, "ivf_flat_index::remove: id ", id, " is not stored");
  const location at = it->second;
  where_.erase(it);
  list& target = *lists_[at.list];
  vector_id moved = no_id;
  {
    const std::unique_lock list_lock(target.mutex);
    moved = target.erase_swap(at.slot, dim_);
  }
  if (moved != no_id) where_.at(moved).slot = at.slot;
  size_.subtract(1);
}

bool ivf_flat_index::contains(vector_id id) const {
  const std::shared_lock lock(map_mutex_);
  return where_.contains(id);
}

std::vector<float> ivf_flat_index::vector(vector_id id) const {
  const std::shared_lock map_lock(map_mutex_);
  const auto it = where_.find(id);
  SHOAL_CHECK_CODE(it != where_.end(), errc::not_found, "ivf_flat_index::vector: id ", id, " is not stored");
  const list& source = *lists_[it->second.list];
  const std::shared_lock list_lock(source.mutex);
  const float* row = source.code_data() + it->second.slot * dim_;
  return std::vector<float>(row, row + dim_);
}

detail::probed_queries ivf_flat_index::probe(matrix_view<const float> queries, const search_params& params,
                                             const char* what) const {
  SHOAL_CHECK(is_trained(), what, ": the index is not trained");
  return detail::probe_queries(queries, dim_, metric_, *coarse_, params, default_nprobe, nullptr, what);
}

bool ivf_flat_index::scores_listed(const id_set& set, std::size_t k, const search_params& params) const {
  double m = 0;  // the set's ids this index holds (a collection's shard holds a fraction of them)
  {
    const std::shared_lock map_lock(map_mutex_);
    m = detail::held_estimate(set, [&](vector_id id) { return where_.contains(id); });
  }
  const auto nlist = static_cast<double>(nlist_);
  const auto nprobe = static_cast<double>(std::min(params.nprobe == 0 ? default_nprobe : params.nprobe, nlist_));
  // The probed lists would hold fewer than k of the ids on average, so rows would widen across more lists
  // (every list, for a handful of scattered ids: 0.63 ms per query at 10 ids of 100,000, nprobe 16,
  // against 0.0005 scored directly; BENCHMARKS.md, "Searching among listed ids").
  const bool rows_widen = params.widen && m * nprobe < static_cast<double>(k) * nlist;
  // Scoring the ids costs less than testing the probed lists' ids, a distance taken as `listed_share`
  // tests (at 1,000 ids of 100,000, nprobe 16, scoring them all took 0.041 ms per query against 0.015).
  const bool cheaper = m * static_cast<double>(detail::listed_share) * nlist <= nprobe * static_cast<double>(size());
  return rows_widen || cheaper;
}

void ivf_flat_index::search_listed(matrix_view<const float> queries, const id_set& set, neighbors_view out) const {
  const char* what = "ivf_flat_index::search: query";
  SHOAL_CHECK(is_trained(), what, ": the index is not trained");
  const detail::probed_queries p = detail::prepared_queries(queries, dim_, metric_, nullptr, what);
  // The map, then the lists holding the set's ids, read-locked in that order as writers take them; held
  // while the rows are scored, so no listed row moves meanwhile.
  const std::shared_lock map_lock(map_mutex_);
  std::vector<location> at;
  std::vector<vector_id> ids;
  for (const vector_id id : set.ids())
    if (const auto it = where_.find(id); it != where_.end()) {
      at.push_back(it->second);
      ids.push_back(id);
    }
  std::vector<std::uint32_t> held(at.size());
  for (std::size_t i = 0; i < at.size(); ++i) held[i] = static_cast<std::uint32_t>(at[i].list);
  std::sort(held.begin(), held.end());
  held.erase(std::unique(held.begin(), held.end()), held.end());
  std::vector<std::uint32_t> order;
  const detail::probed_read_locks<list> locks(lists_, held, order);
  const distance_kernels& k = active_kernels();
  detail::parallel_for(p.view.rows, [&](std::size_t q) {
    topk_heap heap(out.k);
    for (std::size_t i = 0; i < at.size(); ++i)  // bit for bit the list scan's distances
      heap.push(
          detail::pair_distance(k, metric_, p.view.row(q), lists_[at[i].list]->code_data() + at[i].slot * dim_, dim_),
          ids[i]);
    heap.write_sorted(out.row_ids(q), out.row_distances(q));
  });
}

void ivf_flat_index::search(matrix_view<const float> queries, neighbors_view out, const search_params& params) const {
  detail::check_result_buffer(queries.rows, out, "ivf_flat_index::search");
  if (const id_set* set = params.filter.listed(); set != nullptr && scores_listed(*set, out.k, params)) {
    search_listed(queries, *set, out);
    return;
  }
  const detail::probed_queries p = probe(queries, params, "ivf_flat_index::search: query");
  const distance_kernels& k = active_kernels();
  detail::search_widening(p, out.k, size(), *coarse_, params, [&](std::size_t q, std::span<const std::uint32_t> lists) {
    const detail::scratch_lease<std::vector<std::uint32_t>> order;  // reused from query to query
    topk_heap heap(out.k);
    const detail::probed_read_locks<list> locks(lists_, lists, order.get());
    for (const std::uint32_t list_no : lists) {
      const list& l = *lists_[list_no];
      detail::scan_into_heap(k, metric_, p.view.row(q), l.code_data(), l.id_data(), l.count(), dim_, params.filter,
                             heap);
    }
    const std::size_t held = heap.size();
    heap.write_sorted(out.row_ids(q), out.row_distances(q));
    return held;
  });
}

neighbors ivf_flat_index::search(matrix_view<const float> queries, std::size_t k, const search_params& params) const {
  SHOAL_CHECK(k > 0, "ivf_flat_index::search: k must be at least 1");
  neighbors result(queries.rows, k);
  search(queries, result.view(), params);
  return result;
}

range_result ivf_flat_index::range_search(matrix_view<const float> queries, float radius,
                                          const search_params& params) const {
  SHOAL_CHECK(!std::isnan(radius), "ivf_flat_index::range_search: radius is NaN");
  const detail::probed_queries p = probe(queries, params, "ivf_flat_index::range_search: query");
  const distance_kernels& k = active_kernels();
  return detail::range_by_query(
      p.view.rows,
      [&](std::size_t q, std::vector<scored_id>& hits) {
        const detail::scratch_lease<std::vector<std::uint32_t>> order;  // reused from query to query
        const detail::probed_read_locks<list> locks(lists_, p.lists(q), order.get());
        for (const std::uint32_t list_no : p.lists(q)) {
          const list& l = *lists_[list_no];
          detail::scan_into_range(k, metric_, p.view.row(q), l.code_data(), l.id_data(), l.count(), dim_, radius,
                                  params.filter, hits);
        }
      },
      p.locality_order());
}

// ------------------------------------------------------------------------------------------ persistence
namespace {
constexpr std::uint32_t tag_params = io::detail::make_tag("IVFP");
}  // namespace

void ivf_flat_index::save(const std::string& path) const { detail::save_index_file(*this, path); }

ivf_flat_index ivf_flat_index::load(const std::string& path, const load_options& options) {
  return detail::load_index_file<ivf_flat_index>(path, options, "ivf_flat_index::load");
}

std::span<const std::uint32_t> detail::index_sections<ivf_flat_index>::known() {
  static const std::vector<std::uint32_t> tags = io::detail::ivf_tags(
      {tag_params, io::detail::tag_list_sizes, io::detail::tag_list_rows, io::detail::tag_list_ids});
  return tags;
}

std::shared_lock<std::shared_mutex> detail::index_sections<ivf_flat_index>::write(const ivf_flat_index& index,
                                                                                  io::detail::index_file_writer& out) {
  // The map lock in shared mode keeps add and remove (which take it exclusively before touching any
  // list) out until the file is written: the lists are referenced, not copied.
  std::shared_lock<std::shared_mutex> map_lock(index.map_mutex_);
  const std::span<const std::unique_ptr<ivf_flat_index::list>> lists(index.lists_);
  out.begin_section(tag_params);
  out.append_value(std::uint64_t{index.nlist_});
  index.coarse().write(out);
  io::detail::write_list_sizes(out, lists);
  out.begin_section(io::detail::tag_list_rows);
  for (const auto& l : lists)
    io::detail::append_padded_run(out, l->code_data(), l->count() * index.dim_ * sizeof(float));
  io::detail::write_list_ids(out, lists);
  return map_lock;
}

ivf_flat_index detail::index_sections<ivf_flat_index>::read(const io::detail::index_file_reader& in) {
  const std::string& name = in.name();
  const io::detail::index_header& h = in.header();
  std::uint64_t nlist = 0;
  {
    const std::vector<std::byte> params = in.small_section(tag_params);
    SHOAL_CHECK_CODE(params.size() == sizeof nlist, errc::corrupt_file, name, ": section IVFP has ", params.size(),
                     " bytes, expected ", sizeof nlist);
    std::memcpy(&nlist, params.data(), sizeof nlist);
  }
  SHOAL_CHECK_CODE(nlist >= 1 && nlist <= detail::max_nlist, errc::corrupt_file, name, ": nlist ", nlist,
                   " is out of range");
  // Sizes first: their section has to hold nlist entries before nlist lists are allocated.
  const aligned_vector<std::uint64_t> sizes = io::detail::read_list_sizes(in, nlist);
  ivf_flat_index index(static_cast<std::size_t>(h.dim), h.metric, static_cast<std::size_t>(nlist));
  *index.coarse_ = coarse_quantizer::read(in, h.metric, nlist);
  io::detail::list_runs rows = io::detail::vector_runs(in, sizes);
  io::detail::list_runs ids = io::detail::id_runs(in, sizes);
  index.where_.reserve(static_cast<std::size_t>(h.count));
  for (std::size_t l = 0; l < index.nlist_; ++l) {
    ivf_flat_index::list& target = *index.lists_[l];
    const auto n = static_cast<std::size_t>(sizes[l]);
    io::detail::load_list(target, n, rows, ids);
    if (const matrix_view<const float> v{target.code_data(), n, index.dim_};
        in.checks_values() && !detail::vectors_pass(v, index.metric_))
      detail::check_loaded_vectors(v, name, detail::str("list ", l, ": vector").c_str(), index.metric_);
    const vector_id* stored = target.id_data();
    for (std::size_t i = 0; i < n; ++i)
      detail::check_stored_id(stored[i], index.where_.emplace(stored[i], ivf_flat_index::location{l, i}).second, name);
  }
  index.size_.store(static_cast<std::size_t>(h.count));
  index.mapping_ = in.mapping();
  return index;
}

}  // namespace shoal
