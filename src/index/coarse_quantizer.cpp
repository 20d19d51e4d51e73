#include "index/coarse_quantizer.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>

#include "cluster/assign.hpp"
#include "core/parallel.hpp"
#include "index/hnsw_file.hpp"
#include "quant/sq8_estimate.hpp"
#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "shoal/core/topk.hpp"
#include "shoal/distance/distance.hpp"
#include "shoal/index/hnsw.hpp"
#include "shoal/quant/sq.hpp"

namespace shoal::detail {
namespace {

constexpr std::uint32_t tag_centroids = io::detail::make_tag("CENT");
constexpr std::uint32_t tag_graph_m = io::detail::make_tag("CQHN");

/// Centroids share one length under inner product and cosine (unit from spherical k-means, then one
/// common factor in IVF-PQ), so −⟨q, c⟩ ranks them as either does.
metric graph_metric(metric m) noexcept { return m == metric::l2 ? metric::l2 : metric::inner_product; }

/// The SQ8 prefilter of the flat kind serves the batches the assignment scores without its GEMM (fewer
/// than gemm_min_points queries: single queries) over at least this many lists (and while `prefilter_pays`).
/// Measured on fashion-mnist IVF980,PQ392x4fs (Sapphire Rapids): a
/// half-precision prefilter (1.5 MB streamed from L3 per query) took the coarse pass from about half of a
/// query to about a third, 1.18-1.39x QPS at nprobe 6-8; SQ8 codes (768 KB, which stay in L2) on the
/// integer kernel: see BENCHMARKS.md.
constexpr std::size_t prefilter_min_lists = 256;
/// The largest squared norm of a centred centroid, of the prefilter's SQ8 minima and of a centred query
/// for which the prefilter runs: FLT_MAX / 4096 (a norm of about 2.9e17). Below it every estimate and
/// bound stays under FLT_MAX / 256; above it (data near the norm bound) ‖q − min‖² overflowed and the
/// prefilter dropped the nearest lists (a review: 796 of 2,000 queries found their own list). Such
/// centroids get no prefilter, and such queries are scored exactly.
constexpr float prefilter_max_square = std::numeric_limits<float>::max() / 4096;
/// Whether ranking on the codes first pays for `nprobe` of `nlist` lists: only while the lists asked for are
/// few beside all of them (the exact pass then scores little more than nprobe centroids).
[[nodiscard]] bool prefilter_pays(std::size_t nprobe, std::size_t nlist) noexcept { return 8 * nprobe + 64 <= nlist; }

/// The prefilter's estimate form: the inner product's under cosine too (−⟨q, ĉ⟩; centroids are means of
/// unit rows, not unit rows, so `sq8_estimator`'s cosine form would not rank them as the exact pass does).
[[nodiscard]] metric estimate_form(metric m) noexcept { return m == metric::l2 ? metric::l2 : metric::inner_product; }

/// Per centroid the SQ8 estimate's lowest and highest value (squared distances to ĉ under L2, scores under
/// inner product; `residuals` null under L2), in a loop without branches; `residual_dots` are the
/// second grid's sums (`TwoGrids`, else unused). Its own function so that the outputs are known not to
/// alias the inputs: written through pointers into a reused scratch inside `probe_prefiltered`, the loop
/// was left scalar (a 1M-vector IVF4096 query at nprobe 1: 20% slower).
template <bool TwoGrids>
void estimate_bounds(const sq8_estimator& estimator, const std::int32_t* __restrict dots,
                     const std::int32_t* __restrict residual_dots, const float* __restrict terms,
                     const float* __restrict code_sums, const float* __restrict residuals, float q_norm, float floor,
                     std::size_t nlist, float* __restrict lowest, float* __restrict highest) noexcept {
  constexpr float slack = 1e-4f;
  const float half_unit = 0.5f * estimator.unit(), offset = std::abs(estimator.offset());
  for (std::size_t c = 0; c < nlist; ++c) {
    const float est = estimator.estimate(terms[c], dots[c], TwoGrids ? residual_dots[c] : 0);
    const float spread = half_unit * code_sums[c] + slack * (offset + terms[c] + std::abs(est) + floor);
    const float reach = residuals == nullptr ? spread : spread + q_norm * residuals[c];
    lowest[c] = est - reach;
    highest[c] = est + reach;
  }
}

/// A thread's buffers for probing one query at a time (`scratch_lease`): at tens of thousands of queries
/// a second, allocating them per query showed in profiles.
struct probe_scratch {
  std::vector<float> query;        // the query in the centred frame (L2)
  std::vector<float> scores;       // the exact pass: every centroid's rank score
  sq8_estimator estimator;         // the prefilter: the query's form,
  std::vector<std::int32_t> dots;  // per centroid its code dot products, and bounds
  std::vector<std::int32_t> residual_dots;
  std::vector<float> lowest;
  std::vector<float> highest;
  topk_heap high{1};
  topk_heap best{1};
};

/// The heap's entries best first into `probes` (nprobe slots, padded with `no_list`); empties the heap.
void write_probes(topk_heap& heap, std::size_t nprobe, std::uint32_t* probes) {
  const std::span<const scored_id> best = heap.sort();
  for (std::size_t j = 0; j < nprobe; ++j)
    probes[j] = j < best.size() ? static_cast<std::uint32_t>(best[j].id) : no_list;
  heap.clear();
}

/// The `nprobe` best of `nlist` scores by (score, list) into `probes`, through `heap`.
void best_probes(const float* scores, std::size_t nlist, std::size_t nprobe, topk_heap& heap, std::uint32_t* probes) {
  heap.reset(nprobe);
  for (std::size_t c = 0; c < nlist; ++c)
    if (scores[c] <= heap.worst()) heap.push(scores[c], static_cast<std::uint32_t>(c));
  write_probes(heap, nprobe, probes);
}

}  // namespace

coarse_quantizer::coarse_quantizer(metric m, std::size_t hnsw_m) : metric_(m), hnsw_m_(hnsw_m) {
  SHOAL_CHECK(hnsw_m == 0 || (hnsw_m >= 2 && hnsw_m <= 256), "IVF: the HNSW coarse quantizer's M (", hnsw_m,
              ") must be in [2, 256]");
}
coarse_quantizer::~coarse_quantizer() = default;
coarse_quantizer::coarse_quantizer(coarse_quantizer&&) noexcept = default;
coarse_quantizer& coarse_quantizer::operator=(coarse_quantizer&&) noexcept = default;

std::size_t coarse_quantizer::memory_bytes() const {
  return (centroids_.values.capacity() + centred_.values.capacity() + centre_.capacity() + norms_.capacity()) *
             sizeof(float) +
         codes_.capacity() + (terms_.capacity() + code_sums_.capacity() + residuals_.capacity()) * sizeof(float) +
         (codec_ ? 2 * codec_->dim() * sizeof(float) : 0) + (graph_ ? graph_->memory_bytes() : 0);
}

void coarse_quantizer::install(matrix<float> centroids) {
  // Everything is derived into locals and committed at the end, without allocating: a failure (out of
  // memory) leaves the quantizer as it was. Before, the centroids were installed first, and a throw
  // after them left an index trained with half its derived state (a review).
  const std::size_t nlist = centroids.rows, dim = centroids.dim;
  double max_centroid_norm = 0.0;
  for (std::size_t l = 0; l < nlist; ++l)
    max_centroid_norm = std::max(max_centroid_norm, std::sqrt(detail::squared_norm(centroids.row(l), dim)));
  detail::centred_rows frame;
  std::vector<float> norms, terms, code_sums, residuals;
  float max_norm_sq = 0.0f;
  std::optional<scalar_quantizer> codec;
  std::vector<std::uint8_t> codes;
  if (hnsw_m_ == 0) {  // the graph scores by pairwise distances, which do not cancel
    // The centred frame: derived here (also on load), so files keep the centroids as they are.
    frame = detail::centred_copy(centroids.view());
    norms.resize(nlist);
    active_kernels().squared_norms(frame.rows.values.data(), nlist, dim, dim, norms.data());
    max_norm_sq = *std::max_element(norms.begin(), norms.end());
    if (nlist >= prefilter_min_lists && dot_u8_i16_limit(dim) >= 1 && max_norm_sq <= prefilter_max_square) {
      codec.emplace(dim, sq_type::sq8);
      codec->train(frame.rows.view());
      codes.resize(nlist * dim);
      codec->encode(frame.rows.view(), codes.data());
      matrix<float> decoded(nlist, dim);
      codec->decode(codes.data(), nlist, decoded.mutable_view());
      terms.resize(nlist);
      code_sums.resize(nlist);
      residuals.resize(nlist);
      for (std::size_t c = 0; c < nlist; ++c) {
        const std::uint8_t* row = codes.data() + c * dim;
        terms[c] = sq8_estimator::term(*codec, estimate_form(metric_), row);
        double sum = 0.0, err = 0.0;
        for (std::size_t j = 0; j < dim; ++j) {
          sum += row[j];
          const double e = double{frame.rows.row(c)[j]} - double{decoded.row(c)[j]};
          err += e * e;
        }
        code_sums[c] = static_cast<float>(sum);
        residuals[c] = std::nextafter(static_cast<float>(std::sqrt(err)), std::numeric_limits<float>::infinity());
      }
      double min_sq = 0.0;
      for (const float v : codec->mins()) min_sq += static_cast<double>(v) * v;
      if (!(min_sq <= prefilter_max_square)) {
        codec.reset();
        codes.clear();
        terms.clear();
        code_sums.clear();
        residuals.clear();
      }
    }
  }
  centroids_ = std::move(centroids);
  max_centroid_norm_ = max_centroid_norm;
  centre_ = std::move(frame.centre);
  centred_ = std::move(frame.rows);
  norms_ = std::move(norms);
  max_norm_sq_ = max_norm_sq;
  codec_ = std::move(codec);
  codes_ = std::move(codes);
  terms_ = std::move(terms);
  code_sums_ = std::move(code_sums);
  residuals_ = std::move(residuals);
}

const float* coarse_quantizer::centred(const float* x, std::vector<float>& out) const {
  if (metric_ != metric::l2) return x;  // −⟨x, c − μ⟩ = −⟨x, c⟩ + ⟨x, μ⟩: the same order
  const std::size_t dim = centre_.size();
  out.resize(dim);
  for (std::size_t j = 0; j < dim; ++j) out[j] = x[j] - centre_[j];
  return out.data();
}

void coarse_quantizer::rank(matrix_view<const float> x, std::size_t count, std::uint32_t* labels) const {
  // Under L2 the rows are centred a chunk at a time, so a large add or batch needs no copy of itself.
  // Chunks are whole 256-point blocks of `assign_nearest`: every row gets the scores it would get in one
  // call over the batch.
  constexpr std::size_t chunk = 32 * 256;
  const bool l2 = metric_ == metric::l2;
  const std::size_t dim = centred_.dim;
  const std::size_t rows = std::min(chunk, x.rows);
  matrix<float> shifted(l2 ? rows : 0, dim);
  std::vector<float> unused(rows * count);
  for (std::size_t first = 0; first < x.rows; first += chunk) {
    const std::size_t n = std::min(chunk, x.rows - first);
    matrix_view<const float> part = x.slice(first, n);
    if (l2) {
      for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < dim; ++j) shifted.row(i)[j] = part.row(i)[j] - centre_[j];
      part = shifted.view().slice(0, n);
    }
    assign_nearest(part, centred_.view(), norms_.data(), metric_, count, labels + first * count, unused.data());
  }
}

bool coarse_quantizer::prefiltered(std::size_t rows, std::size_t nprobe) const noexcept {
  return codec_.has_value() && rows < gemm_min_points && prefilter_pays(nprobe, centroids_.rows);
}

std::size_t coarse_quantizer::probe_prefiltered(const float* query, std::size_t nprobe, std::uint32_t* probes) const {
  const std::size_t nlist = centroids_.rows, dim = centroids_.dim;
  const bool l2 = metric_ == metric::l2;
  const distance_kernels& exact = active_kernels();
  // Every centroid's distance estimated from its SQ8 codes, with a bound of how far the exact distance can
  // be: the coefficient rounding moves an estimate by at most unit/2 · Σ c_j, float rounding by a small
  // relative amount (`slack`), and the codes' own error by ‖c − ĉ‖ in distance (triangle inequality) or
  // ‖q‖·‖c − ĉ‖ in inner product (Cauchy–Schwarz). A centroid whose lowest possible distance exceeds the
  // nprobe-th smallest highest possible one cannot be among the nprobe nearest; all others are scored
  // as the exact pass scores them, so the lists are the exact pass's (no cut-off that a near tie could
  // fall below) as long as that pass's float rounding stays inside the bounds' slack — which the centred
  // frame (the query, codes and scores all taken relative to μ) keeps true however far the data sit from
  // the origin.
  const scratch_lease<probe_scratch> lease;
  probe_scratch& s = lease.get();
  const float* q = centred(query, s.query);
  const float q_sq = exact.inner_product(q, q, dim);
  if (!(q_sq <= prefilter_max_square)) {
    probe_exact(query, nprobe, probes);
    return nlist;
  }
  sq8_estimator& estimator = s.estimator;
  estimator.prepare(*codec_, estimate_form(metric_), q);
  const float q_norm = l2 ? 0.0f : std::sqrt(q_sq);
  // The slack's floor: 1, or the scale of the scores where that is smaller — ‖q‖² + max ‖c − μ‖² under
  // L2, ‖q‖ · max ‖c − μ‖ under inner product — which a score's float rounding is relative to. A floor
  // of 1 whatever the scale let every bound overlap every other on data of small norm (IVF-PQ's
  // centroids scaled to such data: fashion-mnist at a scale of 3e-6 under inner product, 980 of 980
  // centroids scored exactly per query at nprobe 8 instead of about 96).
  const float floor = std::min(1.0f, l2 ? q_sq + max_norm_sq_ : q_norm * std::sqrt(max_norm_sq_));
  s.dots.resize(nlist);  // the kernel over all rows, the arithmetic after it vectorised
  exact.dot_u8_i16_one_to_many(estimator.coeffs(), codes_.data(), nlist, dim, s.dots.data());
  s.lowest.resize(nlist);
  s.highest.resize(nlist);
  const float* residuals = l2 ? nullptr : residuals_.data();
  if (estimator.two_grids()) {
    s.residual_dots.resize(nlist);
    exact.dot_u8_i16_one_to_many(estimator.residual_coeffs(), codes_.data(), nlist, dim, s.residual_dots.data());
    estimate_bounds<true>(estimator, s.dots.data(), s.residual_dots.data(), terms_.data(), code_sums_.data(), residuals,
                          q_norm, floor, nlist, s.lowest.data(), s.highest.data());
  } else {
    estimate_bounds<false>(estimator, s.dots.data(), nullptr, terms_.data(), code_sums_.data(), residuals, q_norm,
                           floor, nlist, s.lowest.data(), s.highest.data());
  }
  const float* lowest = s.lowest.data();
  const float* highest = s.highest.data();
  // Under L2 the bounds on ‖q − c‖ = ‖q − ĉ‖ ± ‖c − ĉ‖ take square roots; a root is taken only where a
  // test without one, looser than the exact test, lets a centroid through (rarely, beyond the first
  // nprobe), so every centroid passes the exact tests it did before.
  const auto near_sq = [&](std::size_t c) {
    const float near = std::max(0.0f, std::sqrt(std::max(0.0f, lowest[c])) - residuals_[c]);
    return near * near;
  };
  const auto far_sq = [&](std::size_t c) {
    const float far = std::sqrt(std::max(0.0f, highest[c])) + residuals_[c];
    return far * far;
  };
  constexpr float loose = 1.0f + 1e-5f;  // well above the relative rounding of the root-free tests
  // Both passes test the centroids in blocks, in loops the compiler vectorises, against a threshold
  // fixed for the block, then visit only those that pass (most blocks have none).
  constexpr std::size_t block = 64;
  std::array<std::int32_t, block> pass{};
  // Only the nprobe-th smallest high bound is needed: the nprobe smallest so far in a bounded heap.
  topk_heap& high = s.high;
  high.reset(nprobe);
  float root = std::numeric_limits<float>::infinity();  // √ of the heap's worst
  for (std::size_t c0 = 0; c0 < nlist; c0 += block) {
    const std::size_t count = std::min(block, nlist - c0);
    const float* h = highest + c0;
    const float* r = residuals_.data() + c0;
    std::int32_t any = 0;
    if (l2) {
      // far ≤ √worst needs √highest ≤ √worst − r (widened by more than the rounding of the roots and
      // the difference, which can cancel).
      const float widened = root + root * 0x1.0p-18f;
      for (std::size_t i = 0; i < count; ++i) {
        const float room = widened - r[i];
        pass[i] = static_cast<std::int32_t>(room >= 0.0f) & static_cast<std::int32_t>(h[i] <= room * room * loose);
        any |= pass[i];
      }
    } else {
      const float worst = high.worst();
      for (std::size_t i = 0; i < count; ++i) {
        pass[i] = static_cast<std::int32_t>(h[i] <= worst);
        any |= pass[i];
      }
    }
    if (any == 0) continue;
    for (std::size_t i = 0; i < count; ++i) {
      if (pass[i] == 0) continue;
      const std::size_t c = c0 + i;
      const float f = l2 ? far_sq(c) : highest[c];
      if (f <= high.worst()) {
        high.push(f, c);
        root = std::sqrt(high.worst());
      }
    }
  }
  const float bound = high.worst();
  const float bound_root = l2 ? std::sqrt(bound) : 0.0f;
  // The candidates scored exactly as the flat pass scores them (the pairwise kernel is bit-identical to the
  // one-to-many kernel the pass uses for a small batch), best nprobe by (score, list).
  topk_heap& heap = s.best;
  heap.reset(nprobe);
  std::size_t scored = 0;
  for (std::size_t c0 = 0; c0 < nlist; c0 += block) {
    const std::size_t count = std::min(block, nlist - c0);
    const float* low = lowest + c0;
    const float* r = residuals_.data() + c0;
    std::int32_t any = 0;
    for (std::size_t i = 0; i < count; ++i) {
      // Under L2, near ≤ √bound needs √lowest ≤ √bound + r.
      const float span = bound_root + r[i];
      pass[i] = static_cast<std::int32_t>(low[i] <= (l2 ? span * span * loose : bound));
      any |= pass[i];
    }
    if (any == 0) continue;
    for (std::size_t i = 0; i < count; ++i) {
      const std::size_t c = c0 + i;
      if (pass[i] == 0 || (l2 && !(near_sq(c) <= bound))) continue;
      const float score = rank_score(l2, l2 ? norms_[c] : 0.0f, exact.inner_product(q, centred_.row(c), dim));
      ++scored;
      if (score <= heap.worst()) heap.push(score, static_cast<std::uint32_t>(c));
    }
  }
  write_probes(heap, nprobe, probes);
  return scored;
}

void coarse_quantizer::scores(const float* query, float* out, std::vector<float>& frame) const {
  const std::size_t nlist = centroids_.rows, dim = centroids_.dim;
  const distance_kernels& k = active_kernels();
  if (hnsw_m_ != 0) {  // as the graph scores them: L2, or −⟨q, c⟩
    if (metric_ == metric::l2) {
      k.l2sqr_one_to_many(query, centroids_.row(0), nlist, dim, dim, out);
    } else {
      k.inner_product_one_to_many(query, centroids_.row(0), nlist, dim, dim, out);
      for (std::size_t c = 0; c < nlist; ++c) out[c] = -out[c];
    }
    return;
  }
  const bool l2 = metric_ == metric::l2;
  k.inner_product_one_to_many(centred(query, frame), centred_.row(0), nlist, dim, dim, out);
  for (std::size_t c = 0; c < nlist; ++c) out[c] = rank_score(l2, l2 ? norms_[c] : 0.0f, out[c]);
}

void coarse_quantizer::probe_exact(const float* query, std::size_t nprobe, std::uint32_t* probes) const {
  const scratch_lease<probe_scratch> lease;
  probe_scratch& s = lease.get();
  s.scores.resize(centroids_.rows);
  scores(query, s.scores.data(), s.query);
  best_probes(s.scores.data(), centroids_.rows, nprobe, s.best, probes);
}

void coarse_quantizer::set_centroids(matrix<float> centroids) {
  if (hnsw_m_ != 0) {
    hnsw_params params;
    params.M = hnsw_m_;
    params.ef_construction = graph_ef_construction;
    auto graph = std::make_unique<hnsw_index>(centroids.dim, graph_metric(metric_), params);
    std::vector<vector_id> ids(centroids.rows);
    std::iota(ids.begin(), ids.end(), vector_id{0});
    run_single_threaded([&] { graph->add(centroids.view(), ids); });
    install(std::move(centroids));
    graph_ = std::move(graph);
    return;
  }
  install(std::move(centroids));
}

void coarse_quantizer::assign(matrix_view<const float> vectors, std::uint32_t* labels) const {
  if (graph_ == nullptr) {
    rank(vectors, 1, labels);
    return;
  }
  probe(vectors, 1, 0, labels);
  // A graph over nlist ≥ 1 nodes always yields its nearest node: never no_list here.
}

void coarse_quantizer::probe(matrix_view<const float> queries, std::size_t nprobe, std::size_t ef,
                             std::uint32_t* probes) const {
  if (queries.rows == 0) return;
  if (graph_ == nullptr) {
    if (queries.rows < gemm_min_points) {
      const bool filter = prefiltered(queries.rows, nprobe);
      for (std::size_t q = 0; q < queries.rows; ++q) {
        if (filter)
          probe_prefiltered(queries.row(q), nprobe, probes + q * nprobe);
        else
          probe_exact(queries.row(q), nprobe, probes + q * nprobe);
      }
      return;
    }
    rank(queries, nprobe, probes);
    return;
  }
  // A search exploring at least nlist candidates scores every centroid: done directly, it costs less than
  // the graph and does not depend on every node being reachable (at M 2 a few may not be).
  if (std::max(nprobe, ef == 0 ? hnsw_index::default_ef : ef) >= centroids_.rows) {
    detail::parallel_for(queries.rows,
                         [&](std::size_t q) { probe_exact(queries.row(q), nprobe, probes + q * nprobe); });
    return;
  }
  search_params params;
  params.ef = ef;
  const neighbors found = graph_->search(queries, nprobe, params);
  for (std::size_t i = 0; i < queries.rows * nprobe; ++i)
    probes[i] = found.ids()[i] == no_id ? no_list : static_cast<std::uint32_t>(found.ids()[i]);
}

void coarse_quantizer::write(io::detail::index_file_writer& out) const {
  out.begin_section(tag_centroids);
  out.append(std::span<const float>(centroids_.values.data(), centroids_.values.size()));
  if (hnsw_m_ == 0) return;
  out.begin_section(tag_graph_m);
  out.append_value(std::uint64_t{hnsw_m_});
  // The graph never changes once trained (training needs exclusive access to the index), so its lock
  // need not be held until the file is committed.
  if (graph_) (void)hnsw_sections::write(*graph_, out, coarse_graph_tags);
}

coarse_quantizer coarse_quantizer::read(const io::detail::index_file_reader& in, metric m, std::uint64_t nlist) {
  const std::string& name = in.name();
  const io::detail::index_header& h = in.header();
  std::uint64_t graph_m = 0;
  if (in.has(tag_graph_m)) {
    SHOAL_CHECK_CODE(in.section_size(tag_graph_m) == sizeof graph_m, errc::corrupt_file, name,
                     ": section CQHN has the wrong size");
    in.read(tag_graph_m, &graph_m, 1);
    SHOAL_CHECK_CODE(graph_m >= 2 && graph_m <= 256, errc::corrupt_file, name, ": the HNSW coarse quantizer's M (",
                     graph_m, ") is out of range");
  }
  coarse_quantizer q(m, static_cast<std::size_t>(graph_m));
  const bool has_graph = in.has(coarse_graph_tags.params);
  if (in.section_size(tag_centroids) == 0) {
    SHOAL_CHECK_CODE(h.count == 0, errc::corrupt_file, name, ": an untrained index holds ", h.count, " vectors");
    SHOAL_CHECK_CODE(!has_graph, errc::corrupt_file, name, ": an untrained index holds a coarse graph");
    return q;
  }
  matrix<float> centroids;
  centroids.values =
      in.read_vector<float>(tag_centroids, io::detail::checked_mul(nlist, h.dim, name, "nlist x dimension"));
  centroids.rows = static_cast<std::size_t>(nlist);
  centroids.dim = static_cast<std::size_t>(h.dim);
  try {
    detail::check_vectors(centroids.view(), centroids.dim, "centroid");
  } catch (const error& e) {
    detail::throw_error(errc::corrupt_file, detail::str(name, ": ", e.message()));
  }
  q.install(std::move(centroids));
  if (graph_m == 0) {
    SHOAL_CHECK_CODE(!has_graph, errc::corrupt_file, name, ": a coarse graph without its CQHN section");
    return q;
  }
  SHOAL_CHECK_CODE(has_graph, errc::corrupt_file, name, ": a trained HNSW coarse quantizer without its graph");
  auto graph = std::make_unique<hnsw_index>(
      hnsw_sections::read(in, coarse_graph_tags, q.centroids_.dim, graph_metric(m), nlist, "coarse hnsw"));
  SHOAL_CHECK_CODE(graph->params().M == q.hnsw_m_ && graph->params().codes == hnsw_codes::none, errc::corrupt_file,
                   name, ": the coarse graph's parameters (M ", graph->params().M, ", codes) differ from an HNSW",
                   q.hnsw_m_, " coarse quantizer's");
  // One node per list, ids 0 .. nlist − 1 (nlist distinct live ids, each below nlist): a probe can then
  // never name a list that does not exist.
  for (std::uint64_t l = 0; l < nlist; ++l)
    SHOAL_CHECK_CODE(graph->contains(static_cast<vector_id>(l)), errc::corrupt_file, name,
                     ": the coarse graph has no node for list ", l);
  q.graph_ = std::move(graph);
  return q;
}

std::span<const std::uint32_t> coarse_quantizer::tags() noexcept {
  static constexpr std::array<std::uint32_t, 11> known{tag_centroids,
                                                       tag_graph_m,
                                                       coarse_graph_tags.params,
                                                       coarse_graph_tags.vectors,
                                                       coarse_graph_tags.links0,
                                                       coarse_graph_tags.codes,
                                                       coarse_graph_tags.state,
                                                       coarse_graph_tags.ids,
                                                       coarse_graph_tags.upper,
                                                       coarse_graph_tags.ranges,
                                                       coarse_graph_tags.walk};
  return known;
}

}  // namespace shoal::detail
