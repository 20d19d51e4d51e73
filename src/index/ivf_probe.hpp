#pragma once
// Internal: the query side shared by the IVF indexes — checking a batch of queries, bringing them into
// the space the lists live in (unit length under cosine; rotated when IVF-PQ has an OPQ rotation) and the
// coarse pass that picks each query's lists.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "core/parallel.hpp"
#include "index/coarse_quantizer.hpp"
#include "shoal/core/checks.hpp"
#include "shoal/core/coarse_probe.hpp"
#include "shoal/core/params.hpp"
#include "shoal/core/types.hpp"
#include "shoal/quant/opq.hpp"

namespace shoal::detail {

/// A batch of queries as an IVF index searches them, and the lists each one probes.
struct probed_queries {
  std::optional<matrix<float>> normalized;  // cosine: unit-length copies
  std::optional<matrix<float>> rotated;     // OPQ: rotated copies
  /// The queries as searched (one of the above, or the caller's).
  matrix_view<const float> view;
  /// The queries before the rotation: `view` without OPQ (IVF-PQ re-ranks stored rows of that space).
  matrix_view<const float> input;
  std::size_t nprobe = 0;
  /// nprobe list numbers per query, nearest first (flat coarse pass: ties to the smaller list; HNSW:
  /// padded with `no_list` when the graph found fewer).
  std::vector<std::uint32_t> probes;

  /// The lists query `q` probes.
  [[nodiscard]] std::span<const std::uint32_t> lists(std::size_t q) const noexcept {
    std::size_t n = nprobe;
    const std::uint32_t* first = probes.data() + q * nprobe;
    while (n > 0 && first[n - 1] == no_list) --n;
    return {first, n};
  }

  /// The order to search the batch in: by the lists probed, nearest first, compared lexicographically
  /// (ties by position). Queries that scan the same lists then run one after another on a thread and
  /// find those lists in the cache instead of memory (the HNSW batch order, docs/hnsw.md, does the same
  /// for graph regions). Results do not depend on it. Empty (input order) for a single query, and for
  /// 2^32 queries or more (the order is 32-bit).
  [[nodiscard]] std::vector<std::uint32_t> locality_order() const {
    if (view.rows < 2 || view.rows > std::numeric_limits<std::uint32_t>::max()) return {};
    std::vector<std::uint32_t> order(view.rows);
    std::iota(order.begin(), order.end(), std::uint32_t{0});
    std::sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) {
      const std::span<const std::uint32_t> la = lists(a);
      const std::span<const std::uint32_t> lb = lists(b);
      return std::lexicographical_compare(la.begin(), la.end(), lb.begin(), lb.end()) ||
             (std::equal(la.begin(), la.end(), lb.begin(), lb.end()) && a < b);
    });
    return order;
  }
};

/// The lists a short row's first wider tries take from one selection over its scores
/// (`search_widening`): this many times nprobe, at least `widen_reserve_floor`, at most `widen_reserve_cap`
/// (at nprobe 1: the tries over 2, 4, 8 and 16 lists).
constexpr std::size_t widen_reserve = 4;
constexpr std::size_t widen_reserve_floor = 16;
constexpr std::size_t widen_reserve_cap = 32;

/// Searches every row of `p` with `search_row(q, lists)`, which searches row q afresh over those lists
/// (read-locking them all at once), writes it, and returns how many ids it holds; in locality order. Then,
/// unless `params.widen` is false, each row holding fewer than `k` (`params.widen_to` when smaller) is
/// searched again over twice as many lists, nearest first, and again, until it holds k or every list was
/// searched (every list at once when the index holds fewer than k vectors, `stored`). So a row comes back k
/// long whenever the index holds k ids the filter accepts: a filter whose ids lie in lists the nprobe
/// nearest miss left rows short or empty (a user-eyes review, session 45: `IVF64,Flat`, 1% of rows around
/// one point passing, 198 of 200 rows empty at nprobe 1), and so did probed lists holding fewer than k
/// rows, as in FAISS, which pads with -1. Only short rows pay; a row's answer is the one a search with its
/// last try's lists gives.
///
/// The wider tries' lists, the same bits whether the row came in a batch or alone: the first tries take
/// the row's nearest `widen_reserve` · nprobe lists (16 to 32) from a single query's exact coarse pass
/// (`probe_exact` for the HNSW kind, whose graph gives other lists when asked for more), later ones a
/// scoring of every list (`coarse_quantizer::scores`) in which each try orders only the lists it adds. A coarse pass
/// per try cost more than the scans at nlist 4,096 (a review: nprobe 1 took 2.5× nprobe 16 for k 100); ranking for the
/// first tries too cost about as much as the scoring where half the rows were short (bigann10k,
/// `IVF1024,Flat,RFlat` at nprobe 1, session 47). A batched coarse pass over the short rows was faster
/// still there, but not once it kept hundreds of lists per row (4 · nprobe at nprobe 64: up to 36% slower,
/// and memory growing with the batch), and its GEMM rounds otherwise than a single query's pass, so near
/// ties could order a batch's row differently from the query alone (a review). An outside coarse pass
/// (`search_params::coarse`) serves only the first try. Each try starts over rather than adding the new
/// lists to the last try's heap: a vector moved between lists by a write between two tries would otherwise
/// be found in both (a restart holds every list of the try at one moment, so it is found once or not at
/// all); the scans of the tries cost at most twice the last's.
template <class SearchRow>
void search_widening(const probed_queries& p, std::size_t k, std::size_t stored, const coarse_quantizer& coarse,
                     const search_params& params, const SearchRow& search_row) {
  const std::size_t rows = p.view.rows, nlist = coarse.centroids().rows;
  if (params.widen_to > 0) k = std::min(k, params.widen_to);
  const bool widens = params.widen && p.nprobe < nlist;
  parallel_for_in(p.locality_order(), rows, [&](std::size_t q) {
    if (search_row(q, p.lists(q)) >= k || !widens) return;
    std::size_t n = k > stored ? nlist : std::min(2 * p.nprobe, nlist);
    const std::size_t reserve =
        std::min({nlist, std::max(widen_reserve * p.nprobe, widen_reserve_floor), widen_reserve_cap});
    if (n <= reserve) {
      std::uint32_t nearest[widen_reserve_cap];
      if (coarse.hnsw_m() == 0)  // a single query's exact pass (its SQ8 prefilter where that pays)
        coarse.probe(p.view.slice(q, 1), reserve, 0, nearest);
      else  // the graph's lists depend on how many it is asked for: every centroid, exactly
        coarse.probe_exact(p.view.row(q), reserve, nearest);
      for (; n <= reserve; n = std::min(2 * n, nlist))
        if (search_row(q, std::span<const std::uint32_t>(nearest, n)) >= k || n == nlist) return;
    }
    // Past them: every list scored once; each try orders only the lists it adds (n log n in all, not a
    // sort of every list: ranking all 1,024 lists of a short row up front cost more than the scans).
    std::vector<float> scores(nlist);
    std::vector<float> frame;
    coarse.scores(p.view.row(q), scores.data(), frame);
    std::vector<std::pair<float, std::uint32_t>> ranked(nlist);
    for (std::uint32_t l = 0; l < nlist; ++l) ranked[l] = {scores[l], l};
    std::vector<std::uint32_t> lists;
    for (;; n = std::min(2 * n, nlist)) {
      const auto first = ranked.begin() + static_cast<std::ptrdiff_t>(lists.size());
      const auto last = ranked.begin() + static_cast<std::ptrdiff_t>(n);
      std::nth_element(first, last - 1, ranked.end());
      std::sort(first, last);
      for (auto it = first; it != last; ++it) lists.push_back(it->second);
      if (search_row(q, std::span<const std::uint32_t>(lists)) >= k || n == nlist) return;
    }
  });
}

/// Throws `shoal::error` unless every list that an outside coarse pass (`search_params::coarse`) wrote
/// into `p.probes` exists (< `nlist`) and none repeats within a query: the scans index the lists with
/// them, and IVF-PQ read-locks each probed list once (a repeat would lock one shared_mutex twice). One
/// bit per list, cleared again after each query: O(nprobe) per query.
inline void check_outside_probes(const probed_queries& p, std::size_t nlist, const char* what) {
  std::vector<bool> seen(nlist, false);
  for (std::size_t q = 0; q < p.view.rows; ++q) {
    const std::span<const std::uint32_t> lists(p.probes.data() + q * p.nprobe, p.nprobe);
    for (std::size_t j = 0; j < lists.size(); ++j) {
      const std::uint32_t l = lists[j];
      SHOAL_CHECK(l < nlist, what, " ", q, ": search_params::coarse gave list ", l, " (probe ", j,
                  "), but the index has ", nlist, " lists");
      SHOAL_CHECK(!seen[l], what, " ", q, ": search_params::coarse gave list ", l, " twice (probe ", j, ")");
      seen[l] = true;
    }
    for (const std::uint32_t l : lists) seen[l] = false;
  }
}

/// The first half of `probe_queries`: `queries` checked and brought into the lists' space, no lists picked.
[[nodiscard]] inline probed_queries prepared_queries(matrix_view<const float> queries, std::size_t dim, metric m,
                                                     const opq_rotation* rotation, const char* what) {
  check_vectors(queries, dim, what);
  probed_queries p;
  p.view = queries;
  if (m == metric::cosine) {
    p.normalized = normalized_copy(queries, what);
    p.view = p.normalized->view();
  }
  p.input = p.view;
  if (rotation != nullptr) {
    p.rotated = rotation->apply(p.view);
    p.view = p.rotated->view();
  }
  return p;
}

/// Checks `queries` (dimension, NaN/Inf, zero vectors under cosine; `what` prefixes the error), brings
/// them into the lists' space (normalised under cosine, then multiplied by `rotation` when given) and
/// runs the trained `coarse` quantizer: `params.nprobe` lists per query (0: `default_nprobe`; at most
/// every list), the HNSW kind exploring `params.ef` candidates; or `params.coarse` instead, when set and
/// the batch holds at least its `min_batch()` queries (its shape and metric checked against the index's).
[[nodiscard]] inline probed_queries probe_queries(matrix_view<const float> queries, std::size_t dim, metric m,
                                                  const coarse_quantizer& coarse, const search_params& params,
                                                  std::size_t default_nprobe, const opq_rotation* rotation,
                                                  const char* what) {
  probed_queries p = prepared_queries(queries, dim, m, rotation, what);
  const std::size_t nlist = coarse.centroids().rows;
  p.nprobe = std::min(params.nprobe == 0 ? default_nprobe : params.nprobe, nlist);
  p.probes.resize(p.view.rows * p.nprobe);
  if (const coarse_probe* outside = params.coarse; outside != nullptr) {
    SHOAL_CHECK(outside->lists() == nlist && outside->dim() == dim && outside->metric() == m, what,
                ": search_params::coarse holds ", outside->lists(), " centroids of dimension ", outside->dim(),
                " under ", metric_name(outside->metric()), ", the index ", nlist, " of dimension ", dim, " under ",
                metric_name(m));
    if (p.view.rows >= outside->min_batch() && p.nprobe <= outside->max_nprobe()) {
      outside->probe(p.view, p.nprobe, p.probes.data());
      check_outside_probes(p, nlist, what);
      return p;
    }
  }
  coarse.probe(p.view, p.nprobe, params.ef, p.probes.data());
  return p;
}

}  // namespace shoal::detail
