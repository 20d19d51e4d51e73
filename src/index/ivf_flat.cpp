#include "shoal/index/ivf_flat.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <optional>
#include <unordered_set>

#include "cluster/assign.hpp"
#include "core/parallel.hpp"
#include "index/inverted_lists.hpp"
#include "index/scan.hpp"
#include "io/format.hpp"
#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "shoal/core/topk.hpp"
#include "shoal/distance/distance.hpp"

namespace shoal {

/// An IVF-Flat list: full vectors (dim floats per entry) and ids, owned — or, after a memory-mapped load,
/// inside the mapping (`codes` and `ids` then stay empty).
struct ivf_flat_index::list : detail::inverted_list<float> {
  bool mapped = false;
  const float* mapped_rows = nullptr;
  const vector_id* mapped_ids = nullptr;
  std::size_t mapped_count = 0;

  [[nodiscard]] std::size_t count() const noexcept { return mapped ? mapped_count : size(); }
  [[nodiscard]] const float* rows() const noexcept { return mapped ? mapped_rows : codes.data(); }
  [[nodiscard]] const vector_id* row_ids() const noexcept { return mapped ? mapped_ids : ids.data(); }
};

/// Queries as searched (a normalised copy under cosine) and their probed lists, nprobe per query.
struct ivf_flat_index::prepared {
  std::optional<matrix<float>> normalized;
  matrix_view<const float> view;
  std::size_t nprobe = 0;
  std::vector<std::uint32_t> probes;
};

ivf_flat_index::ivf_flat_index(std::size_t dim, shoal::metric m, std::size_t nlist)
    : dim_(dim), metric_(m), nlist_(nlist), map_mutex_(std::make_unique<std::shared_mutex>()) {
  SHOAL_CHECK(dim > 0, "ivf_flat_index: dimension must be at least 1");
  SHOAL_CHECK(nlist > 0, "ivf_flat_index: nlist must be at least 1");
  SHOAL_CHECK(nlist <= std::numeric_limits<std::uint32_t>::max(), "ivf_flat_index: nlist ", nlist, " is too large");
  (void)active_kernels();  // surface a bad SHOAL_SIMD here rather than in the first search
  lists_.reserve(nlist);
  for (std::size_t l = 0; l < nlist; ++l) lists_.push_back(std::make_unique<list>());
}

ivf_flat_index::~ivf_flat_index() = default;

ivf_flat_index::ivf_flat_index(ivf_flat_index&& other) noexcept
    : dim_(other.dim_),
      metric_(other.metric_),
      nlist_(other.nlist_),
      centroids_(std::move(other.centroids_)),
      centroid_norms_(std::move(other.centroid_norms_)),
      lists_(std::move(other.lists_)),
      where_(std::move(other.where_)),
      map_mutex_(std::move(other.map_mutex_)),
      size_(other.size_.exchange(0)),
      mapping_(std::move(other.mapping_)) {}

ivf_flat_index& ivf_flat_index::operator=(ivf_flat_index&& other) noexcept {
  if (this != &other) {
    dim_ = other.dim_;
    metric_ = other.metric_;
    nlist_ = other.nlist_;
    centroids_ = std::move(other.centroids_);
    centroid_norms_ = std::move(other.centroid_norms_);
    lists_ = std::move(other.lists_);
    where_ = std::move(other.where_);
    map_mutex_ = std::move(other.map_mutex_);
    size_.store(other.size_.exchange(0));
    mapping_ = std::move(other.mapping_);
  }
  return *this;
}

std::vector<std::size_t> ivf_flat_index::list_sizes() const {
  std::vector<std::size_t> sizes;
  sizes.reserve(lists_.size());
  for (const auto& l : lists_) {
    const std::shared_lock lock(l->mutex);
    sizes.push_back(l->count());
  }
  return sizes;
}

std::size_t ivf_flat_index::memory_bytes() const {
  std::size_t bytes = centroids_.values.capacity() * sizeof(float) + centroid_norms_.capacity() * sizeof(float) +
                      lists_.capacity() * sizeof(void*);
  for (const auto& l : lists_) {
    const std::shared_lock lock(l->mutex);
    bytes += sizeof(list) + l->bytes();
  }
  // unordered_map: one bucket pointer per bucket, a node (next pointer, key, value) per entry.
  const std::shared_lock lock(*map_mutex_);
  return bytes + where_.bucket_count() * sizeof(void*) +
         where_.size() * (sizeof(void*) + sizeof(vector_id) + sizeof(location));
}

void ivf_flat_index::check_mutable(const char* what) const {
  SHOAL_CHECK_CODE(mapping_ == nullptr, errc::unsupported, what,
                   ": the index was loaded with mmap and is read-only (load it without mmap to modify it)");
}

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
  kmeans_result trained = kmeans(vectors, kp);
  centroids_ = std::move(trained.centroids);
  centroid_norms_.resize(nlist_);
  active_kernels().squared_norms(centroids_.values.data(), nlist_, dim_, dim_, centroid_norms_.data());
}

void ivf_flat_index::add(matrix_view<const float> vectors, std::span<const vector_id> ids) {
  check_mutable("ivf_flat_index::add");
  SHOAL_CHECK(is_trained(), "ivf_flat_index::add: the index is not trained");
  detail::check_vectors(vectors, dim_, "ivf_flat_index::add: vector");
  SHOAL_CHECK(ids.size() == vectors.rows, "ivf_flat_index::add: ", vectors.rows, " vectors but ", ids.size(), " ids");
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
  // The coarse assignment runs before any lock is taken: it only reads the immutable centroids.
  const std::size_t n = vectors.rows;
  std::vector<std::uint32_t> label(n);
  std::vector<float> unused(n);
  detail::assign_nearest(vectors, centroids_.view(), centroid_norms_.data(), metric_, 1, label.data(), unused.data());
  // Group the batch by list (a counting sort, stable in batch order) so each list is locked once.
  std::vector<std::size_t> offsets(nlist_ + 1, 0);
  for (const std::uint32_t l : label) ++offsets[l + 1];
  for (std::size_t l = 0; l < nlist_; ++l) offsets[l + 1] += offsets[l];
  std::vector<std::size_t> order(n);
  {
    std::vector<std::size_t> next(offsets.begin(), offsets.end() - 1);
    for (std::size_t i = 0; i < n; ++i) order[next[label[i]]++] = i;
  }

  const std::unique_lock map_lock(*map_mutex_);
  for (const vector_id id : ids)
    SHOAL_CHECK_CODE(!where_.contains(id), errc::duplicate_id, "ivf_flat_index::add: id ", id, " is already stored");
  where_.reserve(where_.size() + n);
  for (std::size_t l = 0; l < nlist_; ++l) {
    if (offsets[l] == offsets[l + 1]) continue;
    list& target = *lists_[l];
    const std::unique_lock list_lock(target.mutex);
    target.codes.reserve(target.codes.size() + (offsets[l + 1] - offsets[l]) * dim_);
    for (std::size_t m = offsets[l]; m < offsets[l + 1]; ++m) {
      const std::size_t i = order[m];
      const std::size_t slot = target.append(vectors.row(i), dim_, ids[i]);
      where_.emplace(ids[i], location{l, slot});
    }
  }
  size_.fetch_add(n, std::memory_order_release);
}

void ivf_flat_index::remove(vector_id id) {
  check_mutable("ivf_flat_index::remove");
  const std::unique_lock map_lock(*map_mutex_);
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
  size_.fetch_sub(1, std::memory_order_release);
}

bool ivf_flat_index::contains(vector_id id) const {
  const std::shared_lock lock(*map_mutex_);
  return where_.contains(id);
}

ivf_flat_index::prepared ivf_flat_index::prepare(matrix_view<const float> queries, const search_params& params,
                                                 const char* what) const {
  SHOAL_CHECK(is_trained(), what, ": the index is not trained");
  detail::check_vectors(queries, dim_, what);
  prepared p;
  p.view = queries;
  if (metric_ == metric::cosine) {
    p.normalized = detail::normalized_copy(queries, what);
    p.view = p.normalized->view();
  }
  p.nprobe = std::min(params.nprobe == 0 ? default_nprobe : params.nprobe, nlist_);
  p.probes.resize(queries.rows * p.nprobe);
  std::vector<float> unused(p.probes.size());
  detail::assign_nearest(p.view, centroids_.view(), centroid_norms_.data(), metric_, p.nprobe, p.probes.data(),
                         unused.data());
  return p;
}

void ivf_flat_index::search(matrix_view<const float> queries, neighbors_view out, const search_params& params) const {
  SHOAL_CHECK(out.k > 0, "ivf_flat_index::search: k must be at least 1");
  SHOAL_CHECK(out.rows == queries.rows, "ivf_flat_index::search: result buffer has ", out.rows, " rows for ",
              queries.rows, " queries");
  SHOAL_CHECK(out.ids != nullptr && out.distances != nullptr, "ivf_flat_index::search: null result buffer");
  const prepared p = prepare(queries, params, "ivf_flat_index::search: query");
  const distance_kernels& k = active_kernels();
  detail::parallel_for(p.view.rows, [&](std::size_t q) {
    topk_heap heap(out.k);
    for (std::size_t j = 0; j < p.nprobe; ++j) {
      const list& l = *lists_[p.probes[q * p.nprobe + j]];
      const std::shared_lock lock(l.mutex);
      detail::scan_into_heap(k, metric_, p.view.row(q), l.rows(), l.row_ids(), l.count(), dim_, params.filter, heap);
    }
    heap.write_sorted(out.row_ids(q), out.row_distances(q));
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
  const prepared p = prepare(queries, params, "ivf_flat_index::range_search: query");
  const distance_kernels& k = active_kernels();
  std::vector<std::vector<scored_id>> hits(p.view.rows);
  detail::parallel_for(p.view.rows, [&](std::size_t q) {
    for (std::size_t j = 0; j < p.nprobe; ++j) {
      const list& l = *lists_[p.probes[q * p.nprobe + j]];
      const std::shared_lock lock(l.mutex);
      detail::scan_into_range(k, metric_, p.view.row(q), l.rows(), l.row_ids(), l.count(), dim_, radius, params.filter,
                              hits[q]);
    }
    std::sort(hits[q].begin(), hits[q].end());
  });
  return detail::gather_range(hits);
}

// ------------------------------------------------------------------------------------------ persistence
namespace {
constexpr std::uint32_t tag_params = io::detail::make_tag("IVFP");
constexpr std::uint32_t tag_centroids = io::detail::make_tag("CENT");
constexpr std::uint32_t tag_list_sizes = io::detail::make_tag("LSIZ");
constexpr std::uint32_t tag_list_rows = io::detail::make_tag("LVEC");
constexpr std::uint32_t tag_list_ids = io::detail::make_tag("LIDS");

/// Bytes list rows take in LVEC: each list starts 64-byte aligned, as in memory.
std::uint64_t padded_list_bytes(std::uint64_t rows, std::uint64_t dim, const std::string& file) {
  return io::detail::align_up(io::detail::checked_mul(rows, dim * sizeof(float), file, "list size"),
                              io::detail::section_alignment);
}
}  // namespace

void ivf_flat_index::save(const std::string& path) const {
  // The map lock in shared mode keeps add and remove (which take it exclusively before touching any
  // list) out until the file is written: the lists are referenced, not copied.
  const std::shared_lock map_lock(*map_mutex_);
  io::detail::index_file_writer out(path, {index_kind::ivf_flat, metric_, dim_, size()});
  out.begin_section(tag_params);
  out.append_value(std::uint64_t{nlist_});
  out.begin_section(tag_centroids);
  out.append(std::span<const float>(centroids_.values.data(), centroids_.values.size()));
  out.begin_section(tag_list_sizes);
  for (const auto& l : lists_) out.append_value(std::uint64_t{l->count()});
  out.begin_section(tag_list_rows);
  for (const auto& l : lists_) {
    const std::size_t bytes = l->count() * dim_ * sizeof(float);
    out.append(l->rows(), bytes);
    out.append_zeros(static_cast<std::size_t>(io::detail::align_up(bytes, io::detail::section_alignment)) - bytes);
  }
  out.begin_section(tag_list_ids);
  for (const auto& l : lists_) out.append(std::span<const vector_id>(l->row_ids(), l->count()));
  out.commit();
}

ivf_flat_index ivf_flat_index::load(const std::string& path, const load_options& options) {
  const io::detail::index_file_reader in(path, options);
  const std::string& name = in.name();
  in.expect_kind(index_kind::ivf_flat, "ivf_flat_index::load");
  in.check_known({tag_params, tag_centroids, tag_list_sizes, tag_list_rows, tag_list_ids});
  const io::detail::index_header& h = in.header();
  std::uint64_t nlist = 0;
  {
    const std::vector<std::byte> params = in.small_section(tag_params);
    SHOAL_CHECK_CODE(params.size() == sizeof nlist, errc::corrupt_file, name, ": section IVFP has ", params.size(),
                     " bytes, expected ", sizeof nlist);
    std::memcpy(&nlist, params.data(), sizeof nlist);
  }
  SHOAL_CHECK_CODE(nlist >= 1 && nlist <= std::numeric_limits<std::uint32_t>::max(), errc::corrupt_file, name,
                   ": nlist ", nlist, " is out of range");
  // Sizes first: their section has to hold nlist entries before nlist lists are allocated.
  const aligned_vector<std::uint64_t> sizes = in.read_vector<std::uint64_t>(tag_list_sizes, nlist);
  const std::uint64_t dim = h.dim;
  ivf_flat_index index(static_cast<std::size_t>(dim), h.metric, static_cast<std::size_t>(nlist));
  const std::uint64_t centroid_values = io::detail::checked_mul(nlist, dim, name, "nlist x dimension");
  const bool trained = in.section_size(tag_centroids) != 0;
  SHOAL_CHECK_CODE(trained || h.count == 0, errc::corrupt_file, name, ": an untrained index holds ", h.count,
                   " vectors");
  if (trained) {
    index.centroids_ = matrix<float>();
    index.centroids_.values = in.read_vector<float>(tag_centroids, centroid_values);
    index.centroids_.rows = static_cast<std::size_t>(nlist);
    index.centroids_.dim = static_cast<std::size_t>(dim);
    SHOAL_CHECK_CODE(std::all_of(index.centroids_.values.begin(), index.centroids_.values.end(),
                                 [](float v) { return std::isfinite(v); }),
                     errc::corrupt_file, name, ": a centroid holds a non-finite value");
    index.centroid_norms_.resize(index.nlist_);
    active_kernels().squared_norms(index.centroids_.values.data(), index.nlist_, index.dim_, index.dim_,
                                   index.centroid_norms_.data());
  }
  std::uint64_t total = 0;
  std::uint64_t row_bytes = 0;
  for (const std::uint64_t s : sizes) {
    SHOAL_CHECK_CODE(s <= h.count - total, errc::corrupt_file, name, ": the list sizes add up to more than the ",
                     h.count, " stored vectors");
    total += s;
    SHOAL_CHECK_CODE(!__builtin_add_overflow(row_bytes, padded_list_bytes(s, dim, name), &row_bytes),
                     errc::corrupt_file, name, ": the list sizes overflow");
  }
  SHOAL_CHECK_CODE(total == h.count, errc::corrupt_file, name, ": the list sizes add up to ", total, ", not to the ",
                   h.count, " stored vectors");
  SHOAL_CHECK_CODE(in.section_size(tag_list_rows) == row_bytes, errc::corrupt_file, name, ": section LVEC has ",
                   in.section_size(tag_list_rows), " bytes, expected ", row_bytes);
  const std::uint64_t ids_bytes = io::detail::checked_mul(total, sizeof(vector_id), name, "id count");
  SHOAL_CHECK_CODE(in.section_size(tag_list_ids) == ids_bytes, errc::corrupt_file, name, ": section LIDS has ",
                   in.section_size(tag_list_ids), " bytes, expected ", ids_bytes);

  std::span<const std::byte> mapped_rows;
  std::span<const vector_id> mapped_ids;
  if (in.mapped()) {
    mapped_rows = in.map<std::byte>(tag_list_rows, static_cast<std::size_t>(row_bytes));
    mapped_ids = in.map<vector_id>(tag_list_ids, static_cast<std::size_t>(total));
  }
  std::uint64_t row_offset = 0;
  std::uint64_t first_id = 0;
  index.where_.reserve(static_cast<std::size_t>(total));
  for (std::size_t l = 0; l < index.nlist_; ++l) {
    list& target = *index.lists_[l];
    const auto n = static_cast<std::size_t>(sizes[l]);
    const std::size_t bytes = n * index.dim_ * sizeof(float);
    if (in.mapped()) {
      target.mapped = true;
      target.mapped_count = n;
      target.mapped_rows = reinterpret_cast<const float*>(mapped_rows.data() + row_offset);
      target.mapped_ids = mapped_ids.data() + first_id;
    } else {
      target.codes.resize(n * index.dim_);
      target.ids.resize(n);
      in.read_range(tag_list_rows, row_offset, target.codes.data(), bytes);
      in.read_range(tag_list_ids, first_id * sizeof(vector_id), target.ids.data(), n * sizeof(vector_id));
    }
    const vector_id* ids = target.row_ids();
    for (std::size_t i = 0; i < n; ++i)
      SHOAL_CHECK_CODE(index.where_.emplace(ids[i], location{l, i}).second, errc::corrupt_file, name, ": id ", ids[i],
                       " is stored twice");
    row_offset += padded_list_bytes(n, dim, name);
    first_id += n;
  }
  index.size_.store(static_cast<std::size_t>(total));
  index.mapping_ = in.mapping();
  return index;
}

}  // namespace shoal
