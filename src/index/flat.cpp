#include "shoal/index/flat.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <span>
#include <unordered_set>

#include "core/all_or_nothing.hpp"
#include "core/parallel.hpp"
#include "index/index_sections.hpp"
#include "index/scan.hpp"
#include "io/format.hpp"
#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "shoal/core/topk.hpp"
#include "shoal/distance/distance.hpp"

namespace shoal {
namespace {

/// GEMM tile: up to 512 queries meet 512 stored vectors at a time. Tall query blocks amortise streaming
/// each block of vectors from memory (and Eigen's packing of it, a transposing copy that costs about a
/// tenth of the block's time at 256 queries) over more FMAs; the 1 MiB distance tile fits in L2.
/// Measured on Zen 4: 64-query blocks reach 58% of the FMA peak, 256 reach 74%. On a Sapphire Rapids VM
/// (two 512-bit FMA ports; BENCHMARKS.md, session 6): 256 x 512 reached 47% before the vectorised
/// selection below, 256 x 1024 54% with it, 512 x 512 60%; Eigen's own kernel runs at about 70% of
/// that peak there.
constexpr std::size_t gemm_queries = 512;
constexpr std::size_t gemm_vectors = 512;

}  // namespace

/// Queries as searched: the caller's view, or a normalised copy under cosine.
struct flat_index::query_block {
  std::optional<matrix<float>> normalized;
  matrix_view<const float> view;
};

flat_index::flat_index(std::size_t dim, shoal::metric m) : dim_(dim), metric_(m) {
  detail::check_dimension(dim, "flat_index");
  detail::check_metric(m, "flat_index");
  (void)active_kernels();  // surface a bad SHOAL_SIMD here rather than in the first search
}

std::size_t flat_index::memory_bytes() const noexcept {
  // unordered_map: one bucket pointer per bucket, a node (next pointer, key, value) per entry.
  const std::size_t map_bytes = slot_of_.bucket_count() * sizeof(void*) +
                                slot_of_.size() * (sizeof(void*) + sizeof(vector_id) + sizeof(std::size_t));
  if (mapping_) return map_bytes;
  return vectors_.capacity() * sizeof(float) + norms_.capacity() * sizeof(float) + ids_.capacity() * sizeof(vector_id) +
         map_bytes;
}

void flat_index::check_mutable(const char* what) const { io::detail::check_writable(mapping_.get(), what); }

bool flat_index::overlaps_storage(matrix_view<const float> v) const noexcept {
  if (v.rows == 0 || vectors_.empty()) return false;
  const std::less<const float*> before;
  const float* const last = v.data + (v.rows - 1) * v.stride + v.dim;
  return before(v.data, vectors_.data() + vectors_.size()) && before(vectors_.data(), last);
}

void flat_index::add(matrix_view<const float> vectors, std::span<const vector_id> ids) {
  check_mutable("flat_index::add");
  detail::check_vectors(vectors, dim_, "flat_index::add: vector");
  detail::check_ids(ids, vectors.rows, "flat_index::add");
  {
    std::unordered_set<vector_id> batch;
    batch.reserve(ids.size());
    for (const vector_id id : ids) {
      SHOAL_CHECK_CODE(!slot_of_.contains(id), errc::duplicate_id, "flat_index::add: id ", id, " is already stored");
      SHOAL_CHECK_CODE(batch.insert(id).second, errc::duplicate_id, "flat_index::add: id ", id,
                       " appears twice in one batch");
    }
  }
  std::optional<matrix<float>> normalized;
  if (metric_ == metric::cosine) {
    normalized = detail::normalized_copy(vectors, "flat_index::add: vector");
    vectors = normalized->view();
  } else if (overlaps_storage(vectors)) {
    // Rows read through `vector()` (copying a stored vector to a new id): the resize below may move
    // the storage they point into before they are copied.
    normalized.emplace(vectors.rows, dim_);
    for (std::size_t i = 0; i < vectors.rows; ++i) std::copy_n(vectors.row(i), dim_, normalized->row(i));
    vectors = normalized->view();
  }
  // Every allocation first, the id map last of them (all or nothing): out of memory leaves the index as
  // it was, and nothing below allocates.
  const std::size_t first = size();
  const std::size_t total = first + vectors.rows;
  detail::reserve_growing(vectors_, total * dim_);
  detail::reserve_growing(norms_, total);
  detail::reserve_growing(ids_, total);
  detail::insert_all_or_nothing(slot_of_, ids, [first](std::size_t i) { return first + i; });
  vectors_.resize(total * dim_);
  for (std::size_t i = 0; i < vectors.rows; ++i)
    std::copy_n(vectors.row(i), dim_, vectors_.data() + (first + i) * dim_);
  norms_.resize(total);
  active_kernels().squared_norms(vectors_.data() + first * dim_, vectors.rows, dim_, dim_, norms_.data() + first);
  ids_.insert(ids_.end(), ids.begin(), ids.end());
}

void flat_index::remove(vector_id id) {
  check_mutable("flat_index::remove");
  const auto it = slot_of_.find(id);
  SHOAL_CHECK_CODE(it != slot_of_.end(), errc::not_found, "flat_index::remove: id ", id, " is not stored");
  // Move the last row into the freed slot: storage stays dense and removal is O(dim).
  const std::size_t slot = it->second;
  const std::size_t last = size() - 1;
  slot_of_.erase(it);
  if (slot != last) {
    std::copy_n(vectors_.data() + last * dim_, dim_, vectors_.data() + slot * dim_);
    norms_[slot] = norms_[last];
    ids_[slot] = ids_[last];
    slot_of_[ids_[slot]] = slot;
  }
  vectors_.resize(last * dim_);
  norms_.resize(last);
  ids_.resize(last);
}

std::span<const float> flat_index::vector(vector_id id) const {
  const auto it = slot_of_.find(id);
  SHOAL_CHECK_CODE(it != slot_of_.end(), errc::not_found, "flat_index::vector: id ", id, " is not stored");
  return {vector_data() + it->second * dim_, dim_};
}

/// `what`: the caller and its input ("flat_index::search: query"), for the error messages.
flat_index::query_block flat_index::prepare(matrix_view<const float> queries, const char* what) const {
  detail::check_vectors(queries, dim_, what);
  query_block block;
  block.view = queries;
  if (metric_ == metric::cosine) {
    block.normalized = detail::normalized_copy(queries, what);
    block.view = block.normalized->view();
  }
  return block;
}

void flat_index::search_streaming(const float* query, neighbors_view out_row, const search_params& params) const {
  topk_heap heap(out_row.k);
  detail::scan_into_heap(active_kernels(), metric_, query, vector_data(), id_data(), size(), dim_, params.filter, heap);
  heap.write_sorted(out_row.row_ids(0), out_row.row_distances(0));
}

std::vector<std::size_t> flat_index::accepted_rows(const id_filter& filter) const {
  std::vector<std::size_t> rows;
  if (const id_set* set = filter.listed(); set != nullptr) {  // looked up, then in row order
    for (const vector_id id : set->ids())
      if (const auto it = slot_of_.find(id); it != slot_of_.end()) rows.push_back(it->second);
    std::sort(rows.begin(), rows.end());
    return rows;
  }
  const vector_id* ids = id_data();
  for (std::size_t i = 0; i < size(); ++i)
    if (filter.accepts(ids[i])) rows.push_back(i);
  return rows;
}

void flat_index::search_rows(const float* query, std::span<const std::size_t> rows, neighbors_view out_row) const {
  topk_heap heap(out_row.k);
  const auto offer = [&](float d, vector_id id) {
    if (d <= heap.worst()) heap.push(d, id);
  };
  detail::gathered_rows scan(active_kernels(), metric_, query, dim_, offer);
  for (const std::size_t r : rows) scan.add(vector_data() + r * dim_, id_data()[r]);
  scan.flush();
  heap.write_sorted(out_row.row_ids(0), out_row.row_distances(0));
}

void flat_index::select_tile(float* ip, std::size_t first, std::size_t count, const id_filter& filter,
                             topk_heap& heap) const {
  // Rank by ‖x‖² − 2q·x under L2 (‖q‖² is constant per query) and by −q·x otherwise, in a pass of its own
  // that the compiler vectorises.
  if (metric_ == metric::l2) {
    const float* norms = norm_data() + first;
    for (std::size_t i = 0; i < count; ++i) ip[i] = norms[i] - 2.0f * ip[i];
  } else {
    for (std::size_t i = 0; i < count; ++i) ip[i] = -ip[i];
  }
  // Most runs of a tile row hold nothing below the heap's threshold once the heap is full: a branch-free
  // (vectorised) test skips such a run whole, so only the rare admissible rows take the branchy path.
  constexpr std::size_t run = 64;
  float worst = heap.worst();
  for (std::size_t r = 0; r < count; r += run) {
    const std::size_t end = std::min(count, r + run);
    int admissible = 0;
    for (std::size_t i = r; i < end; ++i) admissible |= static_cast<int>(ip[i] <= worst);
    if (admissible == 0) continue;
    for (std::size_t i = r; i < end; ++i) {
      if (ip[i] > worst) continue;
      const vector_id id = id_data()[first + i];
      if (filter.accepts(id)) {
        heap.push(ip[i], id);
        worst = heap.worst();
      }
    }
  }
}

void flat_index::search_gemm(matrix_view<const float> queries, neighbors_view out, const search_params& params) const {
  const distance_kernels& k = active_kernels();
  const std::size_t nq = queries.rows;
  const std::size_t keep = out.k + rescore_slack;
  std::vector<float> tile(nq * gemm_vectors);
  std::vector<topk_heap> heaps(nq, topk_heap(keep));
  float max_norm2 = 0.0f;  // the largest stored ‖x‖², for the error bound below
  for (std::size_t first = 0; first < size(); first += gemm_vectors) {
    const std::size_t count = std::min(gemm_vectors, size() - first);
    k.inner_product_many(queries.data, nq, queries.stride, vector_data() + first * dim_, count, dim_, dim_, tile.data(),
                         gemm_vectors);
    for (std::size_t q = 0; q < nq; ++q)
      select_tile(tile.data() + q * gemm_vectors, first, count, params.filter, heaps[q]);
    const float* norms = norm_data() + first;
    max_norm2 = std::max(max_norm2, *std::max_element(norms, norms + count));
  }
  // The GEMM form carries a rounding error of up to δ = γ·(‖x‖² + 2‖q‖‖x‖) under L2 (γ·‖q‖‖x‖ under
  // inner product and cosine), γ = 4·dim·2⁻²⁴: a few times the classic bound of a float dot product,
  // so that the blocked and AMX accumulations fit under it too. Far from the origin the two terms of
  // ‖x‖² − 2q·x are huge next to their difference, and δ with them. A vector left out of the `keep`
  // survivors has a GEMM score of at least the worst survivor's, so it is truly farther than the k-th
  // survivor when that score exceeds the k-th survivor's by more than 2δ. The answers are ranked by
  // the pairwise kernel's distances, though, whose own rounding (up to γ times the distance under L2,
  // γ·‖q‖‖x‖ plus the 1 − ⟨q, x⟩ rounding otherwise) could still tie or swap two distances closer than
  // it: the margin must cover that too. Where it does not (data far from the origin, or many
  // near-equal distances), the query is answered by the streaming scan instead: every batch answer is
  // exactly the single-query answer.
  std::vector<float> query_norms2(nq);
  k.squared_norms(queries.data, nq, dim_, queries.stride, query_norms2.data());
  const float gamma = 4.0f * static_cast<float>(dim_) * std::numeric_limits<float>::epsilon() / 2.0f;
  const float max_norm = std::sqrt(max_norm2);
  // Re-score the survivors with the pairwise kernel so that both paths agree to the bit.
  for (std::size_t q = 0; q < nq; ++q) {
    const bool complete = !heaps[q].full();  // every candidate the filter accepts was kept
    const float worst_kept = heaps[q].worst();
    const std::vector<scored_id> survivors = heaps[q].take_sorted();
    // Whether the k-th survivor's margin over everything left out covers both roundings (a complete
    // heap left nothing out, and may hold fewer than k survivors).
    const auto separated = [&] {
      const float reach = std::sqrt(query_norms2[q]) * max_norm;
      const bool l2 = metric_ == metric::l2;
      const float delta = gamma * (l2 ? max_norm2 + 2.0f * reach : reach);
      const float kth = survivors[out.k - 1].distance;
      // L2 distances are the scores plus ‖q‖² (each within δ of the true ones).
      const float pairwise =
          l2 ? gamma * (std::abs(worst_kept + query_norms2[q]) + std::abs(kth + query_norms2[q]) + 2.0f * delta)
             : 2.0f * (gamma * reach + std::numeric_limits<float>::epsilon());
      return worst_kept - kth > 2.0f * delta + pairwise;
    };
    if (!complete && !separated()) {
      search_streaming(queries.row(q), out.slice(q, 1), params);
      continue;
    }
    topk_heap exact(out.k);
    for (const scored_id& c : survivors) {
      const float* x = vector_data() + slot_of_.at(c.id) * dim_;
      exact.push(detail::pair_distance(k, metric_, queries.row(q), x, dim_), c.id);
    }
    exact.write_sorted(out.row_ids(q), out.row_distances(q));
  }
}

void flat_index::search(matrix_view<const float> queries, neighbors_view out, const search_params& params) const {
  detail::check_result_buffer(queries.rows, out, "flat_index::search");
  const query_block block = prepare(queries, "flat_index::search: query");
  const matrix_view<const float> q = block.view;
  // A filter made from an `id_set` listing few ids beside the index: they are looked up and only their rows
  // scored, for a single query too (no call per stored row).
  // The share of the set this index holds (a collection's shard holds a fraction of it).
  if (const id_set* set = params.filter.listed();
      set != nullptr && detail::held_estimate(*set, [&](vector_id id) { return slot_of_.contains(id); }) *
                                static_cast<double>(sparse_filter) <=
                            static_cast<double>(size())) {
    const std::vector<std::size_t> rows = accepted_rows(params.filter);
    detail::parallel_for(q.rows, [&](std::size_t i) { search_rows(q.row(i), rows, out.slice(i, 1)); });
    return;
  }
  if (q.rows < gemm_min_batch) {
    detail::parallel_for(q.rows, [&](std::size_t i) { search_streaming(q.row(i), out.slice(i, 1), params); });
    return;
  }
  // A filter cannot depend on the query: when a sample says it accepts few rows, it runs once per stored
  // row for the whole batch, and only the accepted rows are scored, query by query (gathered: the pairwise kernel's
  // distances, as both other paths report), instead of a GEMM over every row whose candidates it then tests one by one.
  // The GEMM scores every row whatever the filter passes: 0.37-0.41 ms per query on 20,000 784-d rows with 1% or 0.1%
  // of them passing, against 0.013 / 0.002 ms since, 200 queries in one batch, one thread
  // (benchmarks/results/filtered-search.cpp hnsw_slow l2 784, session 46).
  if (params.filter &&
      detail::passes_few(size(), [&](std::size_t i) { return params.filter.accepts(id_data()[i]) ? 1 : 0; })) {
    const std::vector<std::size_t> rows = accepted_rows(params.filter);
    static_assert(sparse_filter == detail::listed_share, "the sample and the list decide alike");
    if (rows.size() * sparse_filter <= size()) {
      detail::parallel_for(q.rows, [&](std::size_t i) { search_rows(q.row(i), rows, out.slice(i, 1)); });
      return;
    }
  }
  // Blocks as tall as possible while every worker of the arena still gets one.
  const auto workers = detail::parallelism();
  const std::size_t rows_per_task = std::clamp((q.rows + workers - 1) / workers, gemm_min_batch, gemm_queries);
  const std::size_t blocks = (q.rows + rows_per_task - 1) / rows_per_task;
  detail::parallel_for(blocks, [&](std::size_t b) {
    const std::size_t first = b * rows_per_task;
    const std::size_t count = std::min(rows_per_task, q.rows - first);
    search_gemm(q.slice(first, count), out.slice(first, count), params);
  });
}

neighbors flat_index::search(matrix_view<const float> queries, std::size_t k, const search_params& params) const {
  SHOAL_CHECK(k > 0, "flat_index::search: k must be at least 1");
  neighbors result(queries.rows, k);
  search(queries, result.view(), params);
  return result;
}

range_result flat_index::range_search(matrix_view<const float> queries, float radius,
                                      const search_params& params) const {
  SHOAL_CHECK(!std::isnan(radius), "flat_index::range_search: radius is NaN");
  const query_block block = prepare(queries, "flat_index::range_search: query");
  const matrix_view<const float> q = block.view;
  return detail::range_by_query(q.rows, [&](std::size_t r, std::vector<scored_id>& hits) {
    detail::scan_into_range(active_kernels(), metric_, q.row(r), vector_data(), id_data(), size(), dim_, radius,
                            params.filter, hits);
  });
}

// ------------------------------------------------------------------------------------------ persistence
void flat_index::save(const std::string& path) const { detail::save_index_file(*this, path); }

flat_index flat_index::load(const std::string& path, const load_options& options) {
  return detail::load_index_file<flat_index>(path, options, "flat_index::load");
}

std::span<const std::uint32_t> detail::index_sections<flat_index>::known() {
  static constexpr std::array<std::uint32_t, 3> tags{file_tags.vectors, file_tags.norms, file_tags.ids};
  return tags;
}

std::monostate detail::index_sections<flat_index>::write(const flat_index& index, io::detail::index_file_writer& out,
                                                         const flat_section_tags& tags) {
  const std::size_t n = index.size();
  out.begin_section(tags.vectors);
  out.append(std::span<const float>(index.vector_data(), n * index.dim_));
  out.begin_section(tags.norms);
  out.append(std::span<const float>(index.norm_data(), n));
  out.begin_section(tags.ids);
  out.append(std::span<const vector_id>(index.id_data(), n));
  return {};
}

flat_index detail::index_sections<flat_index>::read(const io::detail::index_file_reader& in,
                                                    const flat_section_tags& tags) {
  const io::detail::index_header& h = in.header();
  const auto n = static_cast<std::size_t>(h.count);
  const std::size_t values = io::detail::checked_mul(h.count, h.dim, in.name(), "vector count x dimension");
  flat_index index(static_cast<std::size_t>(h.dim), h.metric);
  if (in.mapped()) {
    index.mapped_vectors_ = in.map<float>(tags.vectors, values).data();
    index.mapped_norms_ = in.map<float>(tags.norms, n).data();
    index.mapped_ids_ = in.map<vector_id>(tags.ids, n).data();
    index.mapped_size_ = n;
    index.mapping_ = in.mapping();
    if (in.checks_values())
      detail::check_loaded_vectors({index.mapped_vectors_, n, index.dim_}, in.name(), "vector", index.metric_);
  } else {
    index.vectors_ = in.read_vector<float>(tags.vectors, values);
    detail::check_loaded_vectors({index.vectors_.data(), n, index.dim_}, in.name(), "vector", index.metric_);
    // Recomputed rather than trusted: a wrong stored norm skews every batched distance to its row.
    index.norms_ = in.read_vector<float>(tags.norms, n);
    active_kernels().squared_norms(index.vectors_.data(), n, index.dim_, index.dim_, index.norms_.data());
    index.ids_ = in.read_vector<vector_id>(tags.ids, n);
  }
  const vector_id* ids = index.id_data();
  index.slot_of_.reserve(n);
  for (std::size_t i = 0; i < n; ++i)
    detail::check_stored_id(ids[i], index.slot_of_.emplace(ids[i], i).second, in.name());
  return index;
}

}  // namespace shoal
