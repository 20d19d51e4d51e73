#include "shoal/index/ivf_pq.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>
#include <shared_mutex>
#include <string>
#include <type_traits>
#include <unordered_set>

#include "core/all_or_nothing.hpp"
#include "core/parallel.hpp"
#include "index/coarse_quantizer.hpp"
#include "index/id_locator.hpp"
#include "index/index_sections.hpp"
#include "index/inverted_lists.hpp"
#include "index/ivf_file.hpp"
#include "index/ivf_probe.hpp"
#include "index/scan.hpp"
#include "io/format.hpp"
#include "shoal/cluster/kmeans.hpp"
#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "shoal/core/topk.hpp"
#include "shoal/distance/distance.hpp"
#include "shoal/eval/eval.hpp"

namespace shoal {

/// One inverted list: codes (m bytes per entry, or 32-entry fast-scan blocks) and ids, and — with refine
/// — the full vectors, all slot-aligned; owned, or after a memory-mapped load inside the mapping. Removal
/// moves the last entry into the freed slot.
struct ivf_pq_index::list : detail::inverted_list<std::uint8_t> {
  aligned_vector<float> vectors;
  const float* mapped_vectors = nullptr;          // with refine, after a memory-mapped load
  aligned_vector<std::uint8_t> sq_codes;          // with refine_sq8: dim bytes per entry
  const std::uint8_t* mapped_sq_codes = nullptr;  // with refine_sq8, after a memory-mapped load
  /// With `row_terms()`: each entry's term of the per-query-table scoring (`compute_row_terms`), owned
  /// even after a memory-mapped load (derived from the codes there, not stored in the file).
  aligned_vector<double> terms;

  [[nodiscard]] const std::uint8_t* sq_code_data() const noexcept { return mapped ? mapped_sq_codes : sq_codes.data(); }

  [[nodiscard]] const float* vector_data() const noexcept { return mapped ? mapped_vectors : vectors.data(); }
  [[nodiscard]] std::size_t bytes() const noexcept {
    return inverted_list::bytes() + vectors.capacity() * sizeof(float) + sq_codes.capacity() +
           terms.capacity() * sizeof(double);
  }
};

/// Per-query work space of a search.
struct ivf_pq_index::scratch {
  /// A candidate: approximate distance, id, and where it was found (for the re-rank).
  struct candidate {
    float distance;
    vector_id id;
    std::uint32_t list;
    std::uint32_t slot;
    /// The (distance, id) order of every shoal result (`scored_id`'s).
    friend bool operator<(const candidate& a, const candidate& b) noexcept {
      return scored_id{a.distance, a.id} < scored_id{b.distance, b.id};
    }
  };
  /// A heap entry: a candidate's distance and where it sits in `items`. The heap moves these 8 bytes
  /// instead of 24-byte candidates, and compares ids only between equal distances: a candidate heap of
  /// k · refine = 40 was the largest cost of a bigann10k query.
  struct key {
    float distance;
    std::uint32_t at;
  };
  std::vector<float> residual;
  std::vector<float> table;     // m x ksub floats
  std::vector<double> table64;  // with row terms: m x 256 doubles
  quantized_table quantized;
  std::vector<std::uint32_t> sums;
  std::vector<std::uint32_t> order;  // a copy of a list's sums, for a selection
  std::vector<std::uint32_t> masks;  // one per block of sums: those at most the admission bound
  std::vector<float> distances;
  std::vector<candidate> items;       // the best `keep` so far, unordered
  std::vector<key> heap;              // max-heap over `items` in (distance, id) order
  std::vector<std::uint32_t> locked;  // the probed lists, ascending
  topk_heap best{1};                  // the re-rank's
  /// Under inner product the table does not depend on the list: built once per query.
  bool shared_table = false;

  void clear(std::size_t keep) {
    items.clear();
    heap.clear();
    items.reserve(std::min(keep, topk_heap::reserved_max));  // what is found, not k (see topk_heap)
    heap.reserve(std::min(keep, topk_heap::reserved_max));
  }
  [[nodiscard]] bool before(const key& a, const key& b) const noexcept {
    return a.distance < b.distance || (a.distance == b.distance && items[a.at].id < items[b.at].id);
  }
  [[nodiscard]] float worst(std::size_t keep) const noexcept {
    return heap.size() == keep ? heap.front().distance : no_distance;
  }
  void offer(const candidate& c, std::size_t keep) {
    const auto less = [this](const key& a, const key& b) { return before(a, b); };
    if (items.size() < keep) {
      heap.push_back({c.distance, static_cast<std::uint32_t>(items.size())});
      items.push_back(c);
      std::push_heap(heap.begin(), heap.end(), less);
      return;
    }
    // The evicted root's item slot takes the newcomer, which then sinks from the root.
    const std::uint32_t at = heap.front().at;
    const candidate evicted = items[at];
    if (!(c < evicted)) return;
    items[at] = c;
    replace_top(heap, key{c.distance, at}, less);
  }
};

namespace {

constexpr const char* index_name = "ivf_pq_index";

/// The largest fast-scan sum whose distance base + sum / scale may still not exceed `worst`, with room
/// for the float rounding of that expression (relative 1e-5, far above float's 6e-8 per operation): a
/// sum above it is out. Every sum when `worst` is +inf (the heap is not full yet).
std::uint32_t sum_bound(float worst, float base, float scale) noexcept {
  if (!(worst < no_distance)) return std::numeric_limits<std::uint32_t>::max();
  const double w = worst, b = base, sc = scale;
  const double t = (w - b) * sc + (std::abs(w) + std::abs(b)) * sc * 1e-5 + 2.0;
  if (t < 0.0) return 0;
  return t >= 4294967295.0 ? std::numeric_limits<std::uint32_t>::max() : static_cast<std::uint32_t>(t);
}

/// `cap` row numbers of [0, n) drawn uniformly without replacement (all of them when n ≤ cap), sorted.
std::vector<std::size_t> sample_rows(std::size_t n, std::size_t cap, std::uint64_t seed) {
  std::vector<std::size_t> rows(n);
  std::iota(rows.begin(), rows.end(), std::size_t{0});
  if (n <= cap) return rows;
  splitmix64 rng(seed);
  for (std::size_t i = 0; i < cap; ++i) std::swap(rows[i], rows[i + rng.below(n - i)]);
  rows.resize(cap);
  std::sort(rows.begin(), rows.end());
  return rows;
}

/// Spherical k-means leaves unit centroids whatever the data's norms, so for data of norm well below 1
/// the residual x − c was mostly −c and the codebooks spent their codewords telling lists apart (a review:
/// IVF64,PQ16x4fs,RFlat recall 0.947 / 0.311 / 0.153 as the data's scale went 1 / 10⁻² / 10⁻⁴, although
/// scaling data and queries together changes no answer). So every centroid is scaled by one factor, the
/// least-squares s = mean ⟨x, c(x)⟩, estimated over `sample` (256) seeded rows of `vectors` (a mean: a
/// few hundred rows pin it to a few percent, at a negligible share of k-means' cost): one factor for
/// all keeps the order of ⟨q, c⟩ over the centroids, so every query probes and every vector goes to
/// the lists it did. Data whose norms spread over orders of magnitude would want a factor per list,
/// which changes that order (not done). Kept at 1 where s is not positive and finite.
void scale_to_members(matrix<float>& centroids, matrix_view<const float> vectors, std::uint64_t seed) {
  constexpr std::size_t sample = 256;
  const std::vector<std::size_t> rows = sample_rows(vectors.rows, sample, seed);
  matrix<float> points(rows.size(), vectors.dim);
  for (std::size_t i = 0; i < rows.size(); ++i) std::copy_n(vectors.row(rows[i]), vectors.dim, points.row(i));
  const centroid_assignment nearest = assign(points.view(), centroids.view(), metric::inner_product);
  double sum = 0.0;
  for (const float d : nearest.distances) sum -= d;  // −⟨x, c(x)⟩ each
  const double s = sum / static_cast<double>(rows.size());
  if (!(s > 0.0 && std::isfinite(s))) return;
  for (float& v : centroids.values) v = static_cast<float>(s * v);
}

}  // namespace

ivf_pq_index::ivf_pq_index(std::size_t dim, shoal::metric m, const ivf_pq_params& params)
    : dim_(dim),
      metric_(m),
      params_(params),
      coarse_(std::make_unique<detail::coarse_quantizer>(m, params.coarse_hnsw_m)),
      locator_(std::make_unique<detail::id_locator>(params.nlist)) {
  detail::check_dimension(dim, "ivf_pq_index");
  detail::check_metric(m, "ivf_pq_index");
  detail::check_nlist(params.nlist, "ivf_pq_index");
  pq_ = product_quantizer(dim, params.m, params.nbits);  // checks m and nbits
  SHOAL_CHECK(!(params.refine && params.refine_sq8),
              "ivf_pq_index: refine (full vectors) and refine_sq8 (an SQ8 copy) ", "exclude each other");
  (void)active_kernels();
  lists_.reserve(params.nlist);
  for (std::size_t l = 0; l < params.nlist; ++l) lists_.push_back(std::make_unique<list>());
}

ivf_pq_index::~ivf_pq_index() = default;
bool ivf_pq_index::is_trained() const noexcept { return coarse_ != nullptr && coarse_->trained(); }
detail::coarse_quantizer& ivf_pq_index::coarse() const {
  SHOAL_CHECK(coarse_ != nullptr, "ivf_pq_index: the index is empty (moved from)");
  return *coarse_;
}
matrix_view<const float> ivf_pq_index::centroids() const noexcept {
  return coarse_ ? coarse_->centroids() : matrix_view<const float>{};
}
ivf_pq_index::ivf_pq_index(ivf_pq_index&&) noexcept = default;
ivf_pq_index& ivf_pq_index::operator=(ivf_pq_index&&) noexcept = default;

std::size_t ivf_pq_index::list_code_bytes(std::size_t n) const noexcept {
  return params_.nbits == 8 ? n * params_.m
                            : (n + fast_scan_block - 1) / fast_scan_block * fast_scan_block_bytes(params_.m);
}

std::vector<std::size_t> ivf_pq_index::list_sizes() const { return detail::list_counts(lists_); }

std::size_t ivf_pq_index::memory_bytes() const {
  return (coarse_ ? coarse_->memory_bytes() : 0) + 2 * pq_.codebooks().rows * pq_.dsub() * sizeof(float) +
         detail::lists_bytes(lists_) + (opq_ ? 2 * dim_ * dim_ * sizeof(float) : 0) + locator_bytes();
}

static_assert(detail::max_nlist <= std::size_t{1} << 24, "id_locator: a list number takes at most 24 of 32 bits");

std::size_t ivf_pq_index::locator_bytes() const {
  if (!locator_) return 0;
  const std::shared_lock lock(locator_->mutex);
  return sizeof(detail::id_locator) + locator_->bytes();
}

detail::id_locator& ivf_pq_index::locator() const {
  SHOAL_CHECK(locator_ != nullptr, "ivf_pq_index: the index is empty (moved from)");
  // Built (or grown) by the writer, which holds `write_mutex_`, from the lists as they stand.
  return *locator_;
}

void ivf_pq_index::reserve_locator(std::size_t more) {
  locator().reserve(size(), more, [this](auto&& put) { put_stored(put); });
}

template <class Put>
void ivf_pq_index::put_stored(Put&& put) const {
  for (std::size_t l = 0; l < lists_.size(); ++l) {
    const list& target = *lists_[l];
    for (std::size_t i = 0; i < target.count(); ++i) put(target.id_data()[i], l);  // owned or mapped
  }
}

bool ivf_pq_index::build_locator_for_reads() const noexcept {
  // Only when no writer runs: the build then acts as the writer (it holds `write_mutex_`), and a reader
  // never waits behind an add. Were one running, it builds the locator itself as its first step. Out of
  // memory the index keeps scanning its lists, as before (the table is allocated before the pass over
  // the lists, so a retry that fails again costs little).
  const std::unique_lock writer(write_mutex_, std::try_to_lock);
  if (!writer.owns_lock() || size() == 0) return false;
  try {
    locator_->reserve(size(), 0, [this](auto&& put) { put_stored(put); });
  } catch (const std::bad_alloc&) {
    return false;
  }
  return true;
}

std::size_t ivf_pq_index::find_stored(vector_id id, std::size_t& slot) const {
  std::size_t found = lists_.size();
  (void)locator().find(id, [&](std::size_t l) {
    slot = detail::find_id(lists_[l]->ids.data(), lists_[l]->size(), id);
    if (slot == lists_[l]->size()) return false;
    found = l;
    return true;
  });
  return found;
}

void ivf_pq_index::train(matrix_view<const float> vectors, const ivf_pq_train_params& params) {
  io::detail::check_writable(mapping_.get(), "ivf_pq_index::train");
  detail::coarse_quantizer& target = coarse();
  SHOAL_CHECK(size() == 0, index_name, "::train: the index already holds ", size(), " vectors; train before adding");
  detail::check_vectors(vectors, dim_, "ivf_pq_index::train: vector");
  SHOAL_CHECK(vectors.rows >= params_.nlist, index_name, "::train: nlist = ", params_.nlist, " exceeds the ",
              vectors.rows, " training vectors");
  SHOAL_CHECK(vectors.rows >= pq_.ksub(), index_name, "::train: ", pq_.ksub(),
              " codewords per sub-quantizer need at least ", pq_.ksub(), " training vectors, got ", vectors.rows);
  std::optional<matrix<float>> normalized;
  if (metric_ == metric::cosine) {
    normalized = detail::normalized_copy(vectors, "ivf_pq_index::train: vector");
    vectors = normalized->view();
  }
  // Copies of one vector leave every residual 0 and every codebook one point: every later vector would
  // get the same codes in its list, and its ADC distances would all tie (recall@10 0.016; a review).
  bool one_vector = true;
  for (std::size_t i = 1; i < vectors.rows && one_vector; ++i)
    one_vector = std::equal(vectors.row(i), vectors.row(i) + dim_, vectors.row(0));
  SHOAL_CHECK(!one_vector, index_name, "::train: codebooks cannot be learned from ", vectors.rows,
              " copies of one vector (every later vector would get the same codes): train on a sample that spans "
              "the data");
  // OPQ: learn the rotation on the input, then train the lists and codes in the rotated space. The re-rank
  // keeps rows as given (`rerank_rotated_`), so the SQ8 copy's ranges are learnt on those.
  const matrix_view<const float> input = vectors;
  std::optional<opq_rotation> rotation;
  std::optional<matrix<float>> rotated;
  if (params_.opq) {
    rotation.emplace(dim_, params_.m, params_.nbits);
    rotation->train(vectors, params.opq);
    rotated = rotation->apply(vectors);
    vectors = rotated->view();
  }
  kmeans_params kp;
  kp.k = params_.nlist;
  kp.iterations = params.coarse.iterations;
  kp.seed = params.coarse.seed;
  kp.init = params.coarse.init;
  kp.max_points_per_centroid = params.coarse.max_points_per_centroid;
  kp.spherical = metric_ != metric::l2;
  detail::coarse_quantizer quantizer(metric_, params_.coarse_hnsw_m);
  matrix<float> centroids = std::move(kmeans(vectors, kp).centroids);
  if (kp.spherical) scale_to_members(centroids, vectors, params.coarse.seed ^ 0x5ca1eULL);
  quantizer.set_centroids(std::move(centroids));

  // Residuals of (a sample of) the training vectors against their nearest centroid.
  const std::size_t per = params.pq.max_points_per_centroid;  // 0: no cap; a huge one must not wrap
  const std::size_t cap =
      per == 0 || per > vectors.rows / pq_.ksub() ? vectors.rows : std::max(pq_.ksub() * per, pq_.ksub());
  const std::vector<std::size_t> rows = sample_rows(vectors.rows, cap, params.pq.seed ^ 0x5eedULL);
  matrix<float> residuals(rows.size(), dim_);
  for (std::size_t i = 0; i < rows.size(); ++i) std::copy_n(vectors.row(rows[i]), dim_, residuals.row(i));
  std::vector<std::uint32_t> label(rows.size());
  quantizer.assign(residuals.view(), label.data());
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const float* c = quantizer.centroid(label[i]);
    float* r = residuals.row(i);
    for (std::size_t j = 0; j < dim_; ++j) r[j] -= c[j];
  }
  // A residual can be twice as long as its vector: named as what it is where it passes the norm bound.
  detail::check_vectors(residuals.view(), dim_,
                        "ivf_pq_index::train: the residual (vector minus its list's centroid) of sampled vector");
  product_quantizer pq(dim_, params_.m, params_.nbits);
  pq.train(residuals.view(), params.pq);

  std::optional<scalar_quantizer> codec;
  if (params_.refine_sq8) {
    codec.emplace(dim_, sq_type::sq8);
    codec->train(input);
  }
  target = std::move(quantizer);
  pq_ = std::move(pq);
  opq_ = std::move(rotation);
  refine_codec_ = std::move(codec);
  rerank_rotated_ = false;
}

struct ivf_pq_index::prepared_rows {
  std::optional<matrix<float>> normalized, rotated;
  /// The rows as assigned and coded (rotated with OPQ), and as the re-rank keeps them.
  matrix_view<const float> view, kept;
};

ivf_pq_index::prepared_rows ivf_pq_index::prepare(matrix_view<const float> vectors) const {
  detail::check_vectors(vectors, dim_, "ivf_pq_index::add: vector");
  prepared_rows p;
  p.view = vectors;
  if (metric_ == metric::cosine) {
    p.normalized = detail::normalized_copy(vectors, "ivf_pq_index::add: vector");
    p.view = p.normalized->view();
  }
  p.kept = p.view;
  if (opq_) {
    // A rotated row is assigned and coded: the rotation's rounding can take a row at the bound past it,
    // which the encoders refused only after check_add had passed it (a review). Refused here, for add and
    // check_add alike.
    p.rotated = opq_->apply(p.view);
    p.view = p.rotated->view();
    detail::check_vectors(p.view, dim_, "ivf_pq_index::add: the rotated (OPQ) vector");
    if (rerank_rotated_) p.kept = p.view;
  }
  return p;
}

matrix<float> ivf_pq_index::residuals(matrix_view<const float> rows, const std::uint32_t* label) const {
  matrix<float> out(rows.rows, dim_);
  for (std::size_t i = 0; i < rows.rows; ++i) {
    const float* x = rows.row(i);
    const float* c = coarse_->centroid(label[i]);
    float* r = out.row(i);
    for (std::size_t j = 0; j < dim_; ++j) r[j] = x[j] - c[j];
  }
  detail::check_vectors(out.view(), dim_,
                        "ivf_pq_index::add: the residual (vector minus its list's centroid) of vector");
  return out;
}

void ivf_pq_index::compute_row_terms(const std::uint8_t* codes, std::size_t n, const std::uint32_t* lists,
                                     std::size_t list_stride, double* out) const {
  // In double from the decoded residual, one fixed order: the same codes give the same bits wherever
  // (an add, a load at another SIMD level), so a loaded index answers exactly as the saved one.
  std::vector<float> r(dim_);
  std::vector<double> offset(dim_);  // 2c of the current list
  const double scale = metric_ == metric::cosine ? 0.5 : 1.0;
  std::size_t current = detail::no_list;
  for (std::size_t i = 0; i < n; ++i) {
    if (const std::uint32_t list_no = lists[i * list_stride]; list_no != current) {
      current = list_no;
      const float* c = coarse_->centroid(list_no);
      for (std::size_t j = 0; j < dim_; ++j) offset[j] = 2.0 * double{c[j]};
    }
    pq_.decode(codes + i * params_.m, 1, matrix_view<float>(r.data(), 1, dim_));
    double sum = 0.0;
    for (std::size_t j = 0; j < dim_; ++j) {
      const double x = r[j];
      sum += x * (x + offset[j]);
    }
    out[i] = scale * sum;
  }
}

void ivf_pq_index::check_add(matrix_view<const float> vectors) const {
  io::detail::check_writable(mapping_.get(), "ivf_pq_index::add");
  SHOAL_CHECK(is_trained(), index_name, "::add: the index is not trained");
  detail::check_rows_to_add(vectors, dim_, metric_, "ivf_pq_index::add: vector");
  // Rows as `add` sees them are at most `gain` times as long as the given ones (1 under cosine; OPQ's
  // `norm_gain`, computed from the matrix: a loaded rotation need not be orthogonal, a review), and
  // ‖x − c‖ ≤ ‖x‖ + ‖c‖: rows that stay clear of the bound by that much (and a relative 1e-3 for the
  // residual's rounding) are neither rotated nor assigned here. Preparing every batch as `add` does cost
  // a collection's writes to an OPQ shard 17-26% of the add (a review).
  const double gain = opq_ ? opq_->norm_gain() : 1.0;
  const double reach = std::sqrt(detail::max_squared_norm) * (1.0 - 1e-3) - coarse_->max_centroid_norm();
  bool near = false;
  for (std::size_t i = 0; i < vectors.rows && !near; ++i) {
    const double squared = metric_ == metric::cosine ? 1.0 : detail::squared_norm(vectors.row(i), dim_);
    near = !(gain * std::sqrt(squared) <= reach);
  }
  if (!near) return;
  const prepared_rows p = prepare(vectors);
  std::vector<std::uint32_t> label(p.view.rows);
  coarse_->assign(p.view, label.data());
  (void)residuals(p.view, label.data());
}

void ivf_pq_index::add(matrix_view<const float> vectors, std::span<const vector_id> ids) {
  io::detail::check_writable(mapping_.get(), "ivf_pq_index::add");
  SHOAL_CHECK(is_trained(), index_name, "::add: the index is not trained");
  const prepared_rows prepared = prepare(vectors);
  detail::check_ids(ids, vectors.rows, "ivf_pq_index::add");
  std::unordered_set<vector_id> batch;
  batch.reserve(ids.size());
  for (const vector_id id : ids)
    SHOAL_CHECK_CODE(batch.insert(id).second, errc::duplicate_id, index_name, "::add: id ", id,
                     " appears twice in one batch");
  vectors = prepared.view;
  // Assignment and encoding read only the immutable centroids and codebooks: no lock yet.
  const std::size_t n = vectors.rows;
  const std::size_t nlist = params_.nlist;
  const std::size_t m = params_.m;
  std::vector<std::uint32_t> label(n);
  coarse().assign(vectors, label.data());
  const std::vector<std::uint8_t> codes = pq_.encode(residuals(vectors, label.data()).view());
  std::vector<double> terms(row_terms() ? n : 0);
  if (row_terms()) compute_row_terms(codes.data(), n, label.data(), 1, terms.data());
  std::vector<std::uint8_t> sq_codes(params_.refine_sq8 ? n * dim_ : 0);
  if (params_.refine_sq8) refine_codec_->encode(prepared.kept, sq_codes.data());
  std::vector<std::size_t> offsets(nlist + 1, 0);
  for (const std::uint32_t l : label) ++offsets[l + 1];
  for (std::size_t l = 0; l < nlist; ++l) offsets[l + 1] += offsets[l];
  std::vector<std::size_t> order(n);
  {
    std::vector<std::size_t> next(offsets.begin(), offsets.end() - 1);
    for (std::size_t i = 0; i < n; ++i) order[next[label[i]]++] = i;
  }

  const std::lock_guard writer(write_mutex_);
  // Only writers change lists and the locator, and this thread is the only writer: both can be read
  // without locks. The locator is built here if it is not yet, the ids checked, and only then room made
  // for them (a refused batch does not grow it: the table never shrinks).
  reserve_locator(0);
  for (const vector_id id : ids) {
    std::size_t slot = 0;
    SHOAL_CHECK_CODE(find_stored(id, slot) == nlist, errc::duplicate_id, index_name, "::add: id ", id,
                     " is already stored");
  }
  reserve_locator(n);
  // Room in every list first: out of memory then leaves the index as it was, and the loop after it does
  // not allocate.
  for (std::size_t l = 0; l < nlist; ++l) {
    if (offsets[l] == offsets[l + 1]) continue;
    list& target = *lists_[l];
    const std::unique_lock lock(target.mutex);
    const std::size_t total = target.size() + (offsets[l + 1] - offsets[l]);
    detail::reserve_growing(target.codes, list_code_bytes(total));
    detail::reserve_growing(target.ids, total);
    if (params_.refine) detail::reserve_growing(target.vectors, total * dim_);
    if (params_.refine_sq8) detail::reserve_growing(target.sq_codes, total * dim_);
    if (row_terms()) detail::reserve_growing(target.terms, total);
  }
  for (std::size_t l = 0; l < nlist; ++l) {
    if (offsets[l] == offsets[l + 1]) continue;
    list& target = *lists_[l];
    const std::unique_lock lock(target.mutex);
    const std::size_t count = offsets[l + 1] - offsets[l];
    const std::size_t first = target.size();
    const std::size_t total = first + count;
    target.codes.resize(list_code_bytes(total), 0);
    if (params_.refine) target.vectors.resize(total * dim_);
    if (params_.refine_sq8) target.sq_codes.resize(total * dim_);
    for (std::size_t j = 0; j < count; ++j) {
      const std::size_t i = order[offsets[l] + j];
      const std::size_t slot = first + j;
      const std::uint8_t* code = codes.data() + i * m;
      if (params_.nbits == 8) {
        std::copy_n(code, m, target.codes.data() + slot * m);
      } else {
        for (std::size_t s = 0; s < m; ++s) fast_scan_set(target.codes.data(), m, slot, s, code[s]);
      }
      if (params_.refine) std::copy_n(prepared.kept.row(i), dim_, target.vectors.data() + slot * dim_);
      if (params_.refine_sq8) std::copy_n(sq_codes.data() + i * dim_, dim_, target.sq_codes.data() + slot * dim_);
      if (row_terms()) target.terms.push_back(terms[i]);
      target.ids.push_back(ids[i]);
    }
  }
  // After the lists: a `contains` that finds an id's pair then finds the id in its list. One lock for the
  // batch: a lock per id waited behind each `contains` scanning a list (a 20,000-vector add took 0.9 s
  // instead of 6 ms beside one thread calling `contains`; a review).
  locator_->insert(ids, label.data());
  size_.add(n);
}

void ivf_pq_index::remove(vector_id id) {
  io::detail::check_writable(mapping_.get(), "ivf_pq_index::remove");
  const std::lock_guard writer(write_mutex_);
  reserve_locator(0);  // builds it on the first write after a load
  std::size_t slot = 0;
  const std::size_t list_no = find_stored(id, slot);
  SHOAL_CHECK_CODE(list_no != lists_.size(), errc::not_found, index_name, "::remove: id ", id, " is not stored");
  const std::size_t m = params_.m;
  list& l = *lists_[list_no];
  {
    const std::unique_lock lock(l.mutex);
    const std::size_t last = l.size() - 1;
    if (params_.nbits == 8) {
      if (slot != last) std::copy_n(l.codes.data() + last * m, m, l.codes.data() + slot * m);
    } else {
      for (std::size_t s = 0; s < m; ++s) {
        if (slot != last) fast_scan_set(l.codes.data(), m, slot, s, fast_scan_get(l.codes.data(), m, last, s));
        fast_scan_set(l.codes.data(), m, last, s, 0);  // padding slots hold code 0
      }
    }
    l.codes.resize(list_code_bytes(last));
    if (params_.refine) {
      if (slot != last) std::copy_n(l.vectors.data() + last * dim_, dim_, l.vectors.data() + slot * dim_);
      l.vectors.resize(last * dim_);
    }
    if (params_.refine_sq8) {
      if (slot != last) std::copy_n(l.sq_codes.data() + last * dim_, dim_, l.sq_codes.data() + slot * dim_);
      l.sq_codes.resize(last * dim_);
    }
    if (row_terms()) {
      l.terms[slot] = l.terms[last];
      l.terms.resize(last);
    }
    l.ids[slot] = l.ids[last];
    l.ids.pop_back();
  }
  locator_->erase(id, list_no);
  size_.subtract(1);
  locator_->shrink(size(), [this](auto&& put) { put_stored(put); });
}

bool ivf_pq_index::contains(vector_id id) const {
  // Through the locator once it is built (the first call after a load builds it); else every list.
  const auto located = [&]() -> std::optional<bool> {
    const std::shared_lock lock(locator_->mutex);
    if (!locator_->built()) return std::nullopt;
    return locator_->find(id, [&](std::size_t l) {
      const std::shared_lock list_lock(lists_[l]->mutex);
      return detail::find_id(lists_[l]->id_data(), lists_[l]->count(), id) != lists_[l]->count();
    });
  };
  if (locator_) {
    if (const std::optional<bool> found = located()) return *found;
    if (build_locator_for_reads())
      if (const std::optional<bool> found = located()) return *found;
  }
  for (const auto& l : lists_) {
    const std::shared_lock lock(l->mutex);
    if (detail::find_id(l->id_data(), l->count(), id) != l->count()) return true;
  }
  return false;
}

std::vector<vector_id> ivf_pq_index::ids() const {
  std::vector<vector_id> out;
  out.reserve(size());
  for (const auto& l : lists_) {
    const std::shared_lock lock(l->mutex);
    out.insert(out.end(), l->id_data(), l->id_data() + l->count());
  }
  return out;
}

detail::probed_queries ivf_pq_index::probe(matrix_view<const float> queries, const search_params& params,
                                           const char* who) const {
  const std::string what = std::string(who) + ": query";
  SHOAL_CHECK(is_trained(), what, ": the index is not trained");
  SHOAL_CHECK(params.refine_factor == 0 || params_.refine || params_.refine_sq8, who,
              ": refine_factor = ", params.refine_factor,
              " needs full vectors or an SQ8 copy, but the index was built with neither refine nor refine_sq8");
  return detail::probe_queries(queries, dim_, metric_, *coarse_, params, default_nprobe, opq_ ? &*opq_ : nullptr,
                               what.c_str());
}

void ivf_pq_index::begin_query(const float* query, scratch& s) const {
  s.residual.resize(dim_);
  // Under inner product one table for every list, −⟨q_s, codeword⟩. With row terms (8-bit codes under L2
  // and cosine) one table too, ⟨(−2q)_s, codeword⟩ in double (−q under cosine: halved), from the float
  // query scaled by a power of two, exactly (a float q − μ first lost ε · ‖q − μ‖ per component, which
  // ‖r̂‖ then multiplied; a review).
  s.shared_table = metric_ == metric::inner_product;
  if (row_terms()) {
    const float factor = metric_ == metric::cosine ? -1.0f : -2.0f;
    for (std::size_t j = 0; j < dim_; ++j) s.residual[j] = factor * query[j];
    s.table64.resize(params_.m * pq_.ksub());
    pq_.compute_ip_table_f64(s.residual.data(), s.table64.data());
    return;
  }
  s.table.resize(params_.m * pq_.ksub());  // per-list tables fill it in `list_tables`
  if (s.shared_table) {
    pq_.compute_table(query, metric::inner_product, s.table.data());
    for (float& t : s.table) t = -t;
    if (params_.nbits == 4) quantize_table(s.table.data(), params_.m, s.quantized);
  }
}

double ivf_pq_index::row_term_offset(std::size_t list_no, const float* query) const noexcept {
  // ‖q − c‖² in double, eight partial sums in a fixed order: the same bits wherever it runs. In float,
  // lists far wider than the neighbours' distances (10⁹ against 64) lost those distances to rounding.
  const float* c = coarse_->centroid(list_no);
  double acc[8] = {};
  std::size_t j = 0;
  for (; j + 8 <= dim_; j += 8)
    for (std::size_t l = 0; l < 8; ++l) {
      const double t = double{query[j + l]} - double{c[j + l]};
      acc[l] += t * t;
    }
  for (; j < dim_; ++j) {
    const double t = double{query[j]} - double{c[j]};
    acc[0] += t * t;
  }
  const double sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  return metric_ == metric::cosine ? 0.5 * sum : sum;
}

float ivf_pq_index::list_tables(std::size_t list_no, const float* query, scratch& s) const {
  // Distance = offset + Σ table (+ the row's term). L2: the table of the residual q − c. Inner product:
  // −⟨q, c⟩ plus the shared table of −⟨q_s, codeword⟩. Cosine: stored rows and queries are unit length,
  // so 1 − cos(q, x) = ‖q − x‖² / 2, the L2 table halved (exactly: a power of two). Not 1 − ⟨q, x̂⟩ by the
  // inner-product table: its error ⟨q, r − r̂⟩ is as large for the nearest rows as for any, where the L2
  // estimate's shrinks with the neighbour's distance (a review, session 38: 5,000 × 30 clustered rows,
  // IVF16,PQ15 at nprobe 16, R@10 without re-rank 0.308 → 0.542 for 4-bit codes, 0.677 → 0.872 for 8-bit;
  // on directions crowded together 0.105 → 0.346 and 0.356 → 0.815). 8-bit codes under L2 and cosine
  // split the same distance into a table per query, ‖q − c‖² and each row's term instead (`row_terms`).
  const float* centroid = coarse_->centroid(list_no);
  if (s.shared_table) return -active_kernels().inner_product(query, centroid, dim_);
  for (std::size_t j = 0; j < dim_; ++j) s.residual[j] = query[j] - centroid[j];
  pq_.compute_table(s.residual.data(), metric::l2, s.table.data());
  if (metric_ == metric::cosine)
    for (float& t : s.table) t *= 0.5f;
  if (params_.nbits == 4) quantize_table(s.table.data(), params_.m, s.quantized);
  return 0.0f;
}

const std::uint32_t* ivf_pq_index::list_sums(const list& l, scratch& s) const {
  const std::size_t blocks = (l.count() + fast_scan_block - 1) / fast_scan_block;
  if (s.sums.size() < blocks * fast_scan_block) s.sums.resize(blocks * fast_scan_block);
  active_quant_kernels().fast_scan(l.code_data(), blocks, params_.m, s.quantized.values.data(), s.sums.data());
  return s.sums.data();
}

const float* ivf_pq_index::list_distances(const list& l, std::size_t list_no, const float* query, scratch& s) const {
  const std::size_t n = l.count();
  if (s.distances.size() < n + fast_scan_block) s.distances.resize(n + fast_scan_block);
  float* dist = s.distances.data();
  if (n == 0) return dist;
  if (row_terms()) {
    active_quant_kernels().scan_8bit_f64(s.table64.data(), l.code_data(), n, params_.m, l.terms.data(),
                                         row_term_offset(list_no, query), dist);
    return dist;
  }
  const float offset = list_tables(list_no, query, s);
  if (params_.nbits == 8) {
    active_quant_kernels().scan_8bit(s.table.data(), l.code_data(), n, params_.m, dist);
    for (std::size_t i = 0; i < n; ++i) dist[i] += offset;
  } else {
    const std::uint32_t* sums = list_sums(l, s);
    const float base = offset + s.quantized.bias;
    const float inv = 1.0f / s.quantized.scale;
    for (std::size_t i = 0; i < n; ++i) dist[i] = base + static_cast<float>(sums[i]) * inv;
  }
  return dist;
}

void ivf_pq_index::scan_list(const list& l, std::size_t list_no, const float* query, scratch& s,
                             const search_params& params, std::size_t keep) const {
  const vector_id* ids = l.id_data();
  const std::size_t n = l.count();
  float worst = s.worst(keep);
  const auto offer = [&](std::size_t i, float distance) {
    if (distance > worst || !params.filter.accepts(ids[i])) return;
    s.offer({distance, ids[i], static_cast<std::uint32_t>(list_no), static_cast<std::uint32_t>(i)}, keep);
    worst = s.worst(keep);
  };
  if (params_.nbits == 8 || n == 0) {
    const float* dist = list_distances(l, list_no, query, s);
    for (std::size_t i = 0; i < n; ++i) offer(i, dist[i]);
    return;
  }
  // 4-bit: distance = base + sum / scale, monotone in the sum. The sums that can still enter (at most
  // the bound in the sum domain, which the list-start `worst` gives with a margin for rounding) are
  // found a block at a time by the `at_most` kernel; only those are turned into distances and offered,
  // in slot order, each tested against the current `worst` as before, so the same candidates enter.
  const float base = list_tables(list_no, query, s) + s.quantized.bias;
  const float inv = 1.0f / s.quantized.scale;
  const std::uint32_t* sums = list_sums(l, s);
  const std::size_t blocks = (n + fast_scan_block - 1) / fast_scan_block;
  if (s.masks.size() < blocks) s.masks.resize(blocks);
  std::uint32_t bound = sum_bound(worst, base, s.quantized.scale);
  if (const std::size_t need = keep - s.items.size(); need > 0 && need < n && !params.filter) {
    // The heap is not full (the first list): the need-th smallest sum of this list, with the heap's
    // entries, leaves at least `keep` candidates at or below max(its distance, the heap's worst), so no
    // sum beyond that (with the rounding margin) can end among the best. Without it the first list
    // would fill the heap with its first entries and then replace most of them.
    s.order.assign(sums, sums + n);
    std::nth_element(s.order.begin(), s.order.begin() + static_cast<std::ptrdiff_t>(need - 1), s.order.end());
    float reach = base + static_cast<float>(s.order[need - 1]) * inv;
    if (!s.heap.empty()) reach = std::max(reach, s.heap.front().distance);
    bound = sum_bound(reach, base, s.quantized.scale);
  }
  active_quant_kernels().at_most(sums, blocks, bound, s.masks.data());
  for (std::size_t b = 0; b < blocks; ++b)
    for (std::uint32_t mask = s.masks[b]; mask != 0; mask &= mask - 1) {
      const std::size_t i = b * fast_scan_block + static_cast<std::size_t>(std::countr_zero(mask));
      if (i >= n) break;  // the last block's padding slots
      offer(i, base + static_cast<float>(sums[i]) * inv);
    }
}

void ivf_pq_index::search(matrix_view<const float> queries, neighbors_view out, const search_params& params) const {
  detail::check_result_buffer(queries.rows, out, "ivf_pq_index::search");
  const detail::probed_queries p = probe(queries, params, "ivf_pq_index::search");
  const std::size_t keep =
      params.refine_factor == 0 ? out.k : detail::candidate_depth(out.k, params.refine_factor, size());
  detail::search_widening(
      p, out.k, size(), *coarse_, params, [&](std::size_t q, std::span<const std::uint32_t> probed) {
        const float* query = p.view.row(q);
        const float* kept_query = rerank_rotated_ ? query : p.input.row(q);  // the re-rank's: as the rows it scores
        // Every probed list stays read-locked from its scan to the end of the re-rank, so a candidate's slot
        // still holds it when its full vector is read: one lock round trip per list instead of two per
        // candidate. Taken in ascending list order: writers hold one list at a time, so ordered readers can
        // form no cycle even where waiting writers block new readers.
        const detail::scratch_lease<scratch> lease;
        scratch& s = lease.get();
        const detail::probed_read_locks<list> locks(lists_, probed, s.locked);
        s.clear(keep);
        begin_query(query, s);
        for (const std::uint32_t list_no : probed) scan_list(*lists_[list_no], list_no, query, s, params, keep);
        write_row(s, kept_query, out, q, params);
        return s.items.size();
      });
}

void ivf_pq_index::write_row(scratch& s, const float* kept_query, neighbors_view out, std::size_t q,
                             const search_params& params) const {
  if (params.refine_factor == 0) {
    std::sort(s.items.begin(), s.items.end());
    const auto ids = out.row_ids(q);
    const auto dists = out.row_distances(q);
    for (std::size_t j = 0; j < out.k; ++j) {
      ids[j] = j < s.items.size() ? s.items[j].id : no_id;
      dists[j] = j < s.items.size() ? s.items[j].distance : no_distance;
    }
    return;
  }
  const distance_kernels& dk = active_kernels();
  // Re-rank. The candidates' rows are scattered over the lists: start fetching the first lines of each
  // (the hardware prefetcher follows the rest of a row) before scoring any of them.
  topk_heap& best = s.best;
  best.reset(out.k);
  if (params_.refine_sq8) {
    // By the distance to each candidate's SQ8 reconstruction.
    const auto row = [&](const scratch::candidate& c) {
      return lists_[c.list]->sq_code_data() + std::size_t{c.slot} * dim_;
    };
    for (const scratch::candidate& c : s.items) __builtin_prefetch(row(c));
    for (const scratch::candidate& c : s.items) {
      float d = 0.0f;
      refine_codec_->distances(kept_query, metric_, row(c), 1, &d);
      best.push(d, c.id);
    }
  } else {
    const auto row = [&](const scratch::candidate& c) {
      return lists_[c.list]->vector_data() + std::size_t{c.slot} * dim_;
    };
    for (const scratch::candidate& c : s.items) {
      const char* bytes = reinterpret_cast<const char*>(row(c));
      __builtin_prefetch(bytes);
      __builtin_prefetch(bytes + 64);
    }
    for (const scratch::candidate& c : s.items)
      best.push(detail::pair_distance(dk, metric_, kept_query, row(c), dim_), c.id);
  }
  best.write_sorted(out.row_ids(q), out.row_distances(q));
}

neighbors ivf_pq_index::search(matrix_view<const float> queries, std::size_t k, const search_params& params) const {
  SHOAL_CHECK(k > 0, index_name, "::search: k must be at least 1");
  neighbors result(queries.rows, k);
  search(queries, result.view(), params);
  return result;
}

range_result ivf_pq_index::range_search(matrix_view<const float> queries, float radius,
                                        const search_params& params) const {
  SHOAL_CHECK(!std::isnan(radius), index_name, "::range_search: radius is NaN");
  const detail::probed_queries p = probe(queries, params, "ivf_pq_index::range_search");
  const bool exact = params.refine_factor > 0;
  const distance_kernels& dk = active_kernels();
  return detail::range_by_query(
      p.view.rows,
      [&](std::size_t q, std::vector<scored_id>& hits) {
        const float* query = p.view.row(q);
        const float* kept_query = rerank_rotated_ ? query : p.input.row(q);
        scratch s;
        if (!exact) begin_query(query, s);
        const detail::probed_read_locks<list> locks(lists_, p.lists(q), s.locked);
        for (const std::uint32_t list_no : p.lists(q)) {
          const list& l = *lists_[list_no];
          const vector_id* ids = l.id_data();
          if (exact && params_.refine) {
            detail::scan_into_range(dk, metric_, kept_query, l.vector_data(), ids, l.count(), dim_, radius,
                                    params.filter, hits);
            continue;
          }
          // Distances to the SQ8 reconstructions (Refine(SQ8)), or the codes' approximations.
          const float* dist = nullptr;
          if (exact) {
            s.distances.resize(std::max(s.distances.size(), l.count()));
            refine_codec_->distances(kept_query, metric_, l.sq_code_data(), l.count(), s.distances.data());
            dist = s.distances.data();
          } else {
            dist = list_distances(l, list_no, query, s);
          }
          for (std::size_t i = 0; i < l.count(); ++i)
            if (dist[i] < radius && params.filter.accepts(ids[i])) hits.push_back({dist[i], ids[i]});
        }
      },
      p.locality_order());
}

// ------------------------------------------------------------------------------------------ persistence
namespace {
constexpr std::uint32_t tag_params = io::detail::make_tag("PQPR");
constexpr std::uint32_t tag_codebooks = io::detail::make_tag("PQCB");
constexpr std::uint32_t tag_rotation = io::detail::make_tag("OPQR");
constexpr std::uint32_t tag_list_codes = io::detail::make_tag("LCOD");
constexpr std::uint32_t tag_refine_ranges = io::detail::make_tag("RSQR");  // refine_sq8: mins, then steps
constexpr std::uint32_t tag_refine_codes = io::detail::make_tag("RSQC");   // refine_sq8: per-list SQ8 runs

/// The PQPR section: fixed-width little-endian fields (docs/format.md).
struct ivf_pq_file_params {
  std::uint64_t nlist;
  std::uint64_t m;
  std::uint32_t nbits;
  std::uint32_t flags;  // flag_refine | flag_opq | flag_refine_sq8 | flag_rerank_unrotated
};
static_assert(sizeof(ivf_pq_file_params) == 24 && std::is_trivially_copyable_v<ivf_pq_file_params>);
constexpr std::uint32_t flag_refine = 1u;
constexpr std::uint32_t flag_opq = 2u;
constexpr std::uint32_t flag_refine_sq8 = 4u;
// Format 1.8: with OPQ, the re-rank's rows (LVEC, or the SQ8 copy and its ranges) are the rows as added,
// not rotated. Files before it hold rotated rows, which such an index keeps (`rerank_rotated_`).
constexpr std::uint32_t flag_rerank_unrotated = 8u;
}  // namespace

void ivf_pq_index::save(const std::string& path) const { detail::save_index_file(*this, path); }

ivf_pq_index ivf_pq_index::load(const std::string& path, const load_options& options) {
  return detail::load_index_file<ivf_pq_index>(path, options, "ivf_pq_index::load");
}

std::span<const std::uint32_t> detail::index_sections<ivf_pq_index>::known() {
  static const std::vector<std::uint32_t> tags = io::detail::ivf_tags(
      {tag_params, tag_codebooks, tag_rotation, tag_refine_ranges, tag_refine_codes, io::detail::tag_list_sizes,
       tag_list_codes, io::detail::tag_list_rows, io::detail::tag_list_ids});
  return tags;
}

std::unique_lock<std::mutex> detail::index_sections<ivf_pq_index>::write(const ivf_pq_index& index,
                                                                         io::detail::index_file_writer& out) {
  // The writer mutex keeps add and remove out until the file is written: the lists are referenced, not
  // copied. Searches go on.
  std::unique_lock<std::mutex> writer(index.write_mutex_);
  const ivf_pq_params& p = index.params_;
  const std::span<const std::unique_ptr<ivf_pq_index::list>> lists(index.lists_);
  out.begin_section(tag_params);
  out.append_value(ivf_pq_file_params{
      p.nlist, p.m, static_cast<std::uint32_t>(p.nbits),
      (p.refine ? flag_refine : 0u) | (p.opq ? flag_opq : 0u) | (p.refine_sq8 ? flag_refine_sq8 : 0u) |
          (p.opq && (p.refine || p.refine_sq8) && !index.rerank_rotated_ ? flag_rerank_unrotated : 0u)});
  index.coarse().write(out);
  io::detail::write_list_sizes(out, lists);
  const matrix_view<const float> books = index.pq_.codebooks();
  out.begin_section(tag_codebooks);
  out.append(std::span<const float>(books.data, books.rows * books.dim));
  if (p.opq) {
    out.begin_section(tag_rotation);
    if (index.opq_) out.append(std::span<const float>(index.opq_->matrix_values()));
  }
  out.begin_section(tag_list_codes);
  for (const auto& l : lists) io::detail::append_padded_run(out, l->code_data(), index.list_code_bytes(l->count()));
  if (p.refine) {
    out.begin_section(io::detail::tag_list_rows);
    for (const auto& l : lists)
      io::detail::append_padded_run(out, l->vector_data(), l->count() * index.dim_ * sizeof(float));
  }
  if (p.refine_sq8) {
    out.begin_section(tag_refine_ranges);
    if (index.refine_codec_) {
      out.append(std::span<const float>(index.refine_codec_->mins()));
      out.append(std::span<const float>(index.refine_codec_->steps()));
    }
    out.begin_section(tag_refine_codes);
    for (const auto& l : lists) io::detail::append_padded_run(out, l->sq_code_data(), l->count() * index.dim_);
  }
  io::detail::write_list_ids(out, lists);
  return writer;
}

ivf_pq_index detail::index_sections<ivf_pq_index>::read(const io::detail::index_file_reader& in) {
  const std::string& name = in.name();
  const io::detail::index_header& h = in.header();
  ivf_pq_file_params fp{};
  in.read(tag_params, &fp, 1);
  SHOAL_CHECK_CODE(fp.nlist >= 1 && fp.nlist <= detail::max_nlist, errc::corrupt_file, name, ": nlist ", fp.nlist,
                   " is out of range");
  SHOAL_CHECK_CODE(fp.m >= 1 && fp.m <= h.dim && h.dim % fp.m == 0, errc::corrupt_file, name, ": m = ", fp.m,
                   " does not divide dimension ", h.dim);
  SHOAL_CHECK_CODE(fp.nbits == 4 || fp.nbits == 8, errc::corrupt_file, name, ": nbits = ", fp.nbits,
                   " is neither 4 nor 8");
  SHOAL_CHECK_CODE((fp.flags & ~(flag_refine | flag_opq | flag_refine_sq8 | flag_rerank_unrotated)) == 0,
                   errc::corrupt_file, name, ": unknown flags ", fp.flags, " in section PQPR");
  const bool refine = (fp.flags & flag_refine) != 0;
  const bool opq = (fp.flags & flag_opq) != 0;
  const bool refine_sq8 = (fp.flags & flag_refine_sq8) != 0;
  const bool unrotated = (fp.flags & flag_rerank_unrotated) != 0;
  SHOAL_CHECK_CODE(!(refine && refine_sq8), errc::corrupt_file, name, ": flags ", fp.flags,
                   " ask for both full vectors and an SQ8 copy");
  SHOAL_CHECK_CODE(!unrotated || (opq && (refine || refine_sq8)), errc::corrupt_file, name, ": flags ", fp.flags,
                   " mark unrotated re-rank rows in an index without both OPQ and a re-rank copy");
  SHOAL_CHECK_CODE(!unrotated || in.info().version_minor >= 8, errc::corrupt_file, name, ": flags ", fp.flags,
                   " use bit 3, which format 1.8 added, in a file of format 1.", in.info().version_minor);
  SHOAL_CHECK_CODE(refine_sq8 || (!in.has(tag_refine_ranges) && !in.has(tag_refine_codes)), errc::corrupt_file, name,
                   ": SQ8 refine sections in an index built without refine_sq8");
  SHOAL_CHECK_CODE(refine || !in.has(io::detail::tag_list_rows), errc::corrupt_file, name,
                   ": section LVEC in an index built without refine");
  SHOAL_CHECK_CODE(opq || !in.has(tag_rotation), errc::corrupt_file, name,
                   ": section OPQR in an index built without OPQ");
  // Sizes first: their section has to hold nlist entries before nlist lists are allocated.
  const aligned_vector<std::uint64_t> sizes = io::detail::read_list_sizes(in, fp.nlist);
  const auto dim = static_cast<std::size_t>(h.dim);
  ivf_pq_index index(dim, h.metric,
                     {.nlist = static_cast<std::size_t>(fp.nlist),
                      .m = static_cast<std::size_t>(fp.m),
                      .nbits = fp.nbits,
                      .refine = refine,
                      .refine_sq8 = refine_sq8,
                      .opq = opq});
  index.rerank_rotated_ = opq && (refine || refine_sq8) && !unrotated;
  *index.coarse_ = coarse_quantizer::read(in, h.metric, fp.nlist);
  index.params_.coarse_hnsw_m = index.coarse_->hnsw_m();
  const bool trained = index.coarse_->trained();
  const std::size_t m = index.params_.m;
  const std::size_t nbits = index.params_.nbits;
  const std::size_t ksub = index.pq_.ksub();
  const std::size_t dsub = index.pq_.dsub();
  if (!trained) {
    SHOAL_CHECK_CODE(in.section_size(tag_codebooks) == 0 && (!opq || in.section_size(tag_rotation) == 0) &&
                         (!refine_sq8 || in.section_size(tag_refine_ranges) == 0),
                     errc::corrupt_file, name, ": an untrained index holds codebooks, a rotation or SQ8 ranges");
  } else {
    // Rebuilt through the public constructors, which check shapes and values again.
    try {
      matrix<float> books;
      books.values = in.read_vector<float>(tag_codebooks, m * ksub * dsub);
      books.rows = m * ksub;
      books.dim = dsub;
      index.pq_ = product_quantizer::with_codebooks(dim, m, nbits, std::move(books));
      if (opq) {
        const aligned_vector<float> r = in.read_vector<float>(tag_rotation, dim * dim);
        index.opq_ = opq_rotation::with_rotation(dim, m, nbits, std::vector<float>(r.begin(), r.end()));
      }
      if (refine_sq8) {
        const aligned_vector<float> r = in.read_vector<float>(tag_refine_ranges, 2 * dim);
        index.refine_codec_ = scalar_quantizer::sq8_with_ranges(std::vector<float>(r.begin(), r.begin() + dim),
                                                                std::vector<float>(r.begin() + dim, r.end()));
      }
    } catch (const shoal::error& e) {
      if (e.code() == errc::corrupt_file) throw;
      detail::throw_error(errc::corrupt_file, detail::str(name, ": ", e.message()));
    }
  }
  io::detail::list_runs codes(in, tag_list_codes, sizes, true, [&](std::uint64_t n) {
    return nbits == 8 ? io::detail::checked_mul(n, m, name, "list size")
                      : io::detail::checked_mul((n + fast_scan_block - 1) / fast_scan_block, fast_scan_block_bytes(m),
                                                name, "list size");
  });
  std::optional<io::detail::list_runs> vectors;
  if (refine) {
    vectors.emplace(io::detail::vector_runs(in, sizes));
    in.advise_random(io::detail::tag_list_rows);  // a re-rank reads a few scattered rows per query
  }
  std::optional<io::detail::list_runs> sq_codes;
  if (refine_sq8) {
    sq_codes.emplace(in, tag_refine_codes, sizes, true,
                     [&](std::uint64_t n) { return io::detail::checked_mul(n, dim, name, "list size"); });
    in.advise_random(tag_refine_codes);
  }
  io::detail::list_runs ids = io::detail::id_runs(in, sizes);
  std::unordered_set<vector_id> seen;
  seen.reserve(static_cast<std::size_t>(h.count));
  for (std::size_t l = 0; l < index.params_.nlist; ++l) {
    ivf_pq_index::list& target = *index.lists_[l];
    const auto n = static_cast<std::size_t>(sizes[l]);
    io::detail::load_list(target, n, codes, ids);
    if (vectors) {
      const float* v = vectors->next(target.vectors);
      if (target.mapped) target.mapped_vectors = v;
      if (in.checks_values() && !detail::vectors_pass({v, n, dim}, index.metric_))
        detail::check_loaded_vectors({v, n, dim}, name, detail::str("list ", l, ": re-rank vector").c_str(),
                                     index.metric_);
    }
    if (sq_codes) {
      const std::uint8_t* c = sq_codes->next(target.sq_codes);
      if (target.mapped) target.mapped_sq_codes = c;
    }
    const vector_id* stored = target.id_data();
    for (std::size_t i = 0; i < n; ++i) detail::check_stored_id(stored[i], seen.insert(stored[i]).second, name);
  }
  if (index.row_terms())
    detail::parallel_for(index.params_.nlist, [&](std::size_t l) {
      ivf_pq_index::list& target = *index.lists_[l];
      target.terms.resize(target.count());
      const auto list_no = static_cast<std::uint32_t>(l);
      index.compute_row_terms(target.code_data(), target.count(), &list_no, 0, target.terms.data());
    });
  index.size_.store(static_cast<std::size_t>(h.count));
  index.mapping_ = in.mapping();
  return index;
}

}  // namespace shoal
