#pragma once
// Internal: the coarse quantizer of the IVF indexes — nlist centroids, and which of them a vector or a
// query is nearest to. Two kinds (docs/ivf.md):
//  - flat (`IVF<nlist>`): every centroid is scored, a batch at a time through the GEMM kernel; exact up
//    to float rounding, ties to the smaller list, O(nlist · dim) per vector. The scores are taken relative
//    to the centroids' coordinate-wise median μ (`centred_copy`): ‖c − μ‖² − 2⟨x − μ, c − μ⟩ under L2 (x − μ computed
//    first) and −⟨x, c − μ⟩ otherwise, which rank as ‖x − c‖² and −⟨x, c⟩ do but without the cancellation of ‖c‖² −
//    2⟨x, c⟩ when the data sit far from the origin (1000 + N(0, 1) in 16 dimensions, 256 lists: a batch found the
//    nearest list for 44% of the queries, now for all). A batch too small for the GEMM (a single query) with nlist ≥
//    256 first estimates every centroid's distance from its SQ8 codes (a quarter of the bytes to stream) with a bound
//    on the estimate's error, then scores exactly every centroid that the bounds cannot rule out of the nprobe nearest:
//    the exact pass's lists, up to that pass's float rounding (docs/ivf.md);
//  - HNSW (`IVF<nlist>_HNSW<M>`): an HNSW graph over the centroids (ids = list numbers) finds them in
//    O(log nlist) distance evaluations, approximately — the choice for nlist in the tens of thousands,
//    where the flat pass would dominate both adds and searches.
// Centroids live where the lists do (unit length under inner product and cosine, rotated under OPQ);
// the graph then scores them with −⟨q, c⟩ (inner product), which ranks unit vectors as cosine does.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "io/format.hpp"
#include "shoal/core/types.hpp"
#include "shoal/quant/sq.hpp"

namespace shoal {
class hnsw_index;
}

namespace shoal::detail {

/// A list number that means "no list" (a graph search that found fewer lists than asked for).
inline constexpr std::uint32_t no_list = ~std::uint32_t{0};

class coarse_quantizer {
 public:
  /// Graph quality knob of the HNSW kind (FAISS builds its HNSW quantizers with 40 too).
  static constexpr std::size_t graph_ef_construction = 40;

  /// An untrained quantizer for vectors compared under `m`; `hnsw_m` = 0 for the flat kind, else the
  /// graph's M (2 to 256).
  coarse_quantizer(metric m, std::size_t hnsw_m);
  ~coarse_quantizer();
  coarse_quantizer(coarse_quantizer&&) noexcept;
  coarse_quantizer& operator=(coarse_quantizer&&) noexcept;

  [[nodiscard]] std::size_t hnsw_m() const noexcept { return hnsw_m_; }
  [[nodiscard]] bool trained() const noexcept { return centroids_.rows != 0; }
  [[nodiscard]] matrix_view<const float> centroids() const noexcept { return centroids_.view(); }
  [[nodiscard]] const float* centroid(std::size_t list) const noexcept { return centroids_.row(list); }
  /// The largest centroid norm (0 when untrained).
  [[nodiscard]] double max_centroid_norm() const noexcept { return max_centroid_norm_; }
  /// Bytes held: centroids (twice for the flat kind: as given and centred), their norms, the prefilter's
  /// codes and the graph (which keeps its own copy of the centroids).
  [[nodiscard]] std::size_t memory_bytes() const;

  /// Installs trained centroids (finite, one per list); the HNSW kind builds its graph over them, on
  /// one thread so that the same centroids always give the same graph.
  void set_centroids(matrix<float> centroids);

  /// The nearest list of each row of `vectors` (already in the lists' space) into `labels`.
  void assign(matrix_view<const float> vectors, std::uint32_t* labels) const;
  /// The `nprobe` (≤ nlist) nearest lists of each query, nearest first, into `probes[q * nprobe + j]`;
  /// the HNSW kind explores `ef` candidates (0: max(nprobe, 64)) — every centroid, without the graph,
  /// when that is at least nlist — and pads with `no_list` when the graph yields fewer lists.
  void probe(matrix_view<const float> queries, std::size_t nprobe, std::size_t ef, std::uint32_t* probes) const;

  /// Writes CENT (empty when untrained) and, for the HNSW kind, CQHN (its M) and the graph's sections.
  void write(io::detail::index_file_writer& out) const;
  /// Reads what `write` wrote into a quantizer of `nlist` lists; returns whether it is trained. Throws
  /// `errc::corrupt_file` on damage (a non-finite centroid, a graph that is not one node per list, ...).
  [[nodiscard]] static coarse_quantizer read(const io::detail::index_file_reader& in, metric m, std::uint64_t nlist);
  /// The tags `read` knows, for `index_file_reader::check_known`.
  [[nodiscard]] static std::span<const std::uint32_t> tags() noexcept;

  /// The prefilter's probe of one query (the flat kind with a prefilter: `prefiltered`); returns how many
  /// centroids it scored exactly (public for the tests, which hold it to prune).
  std::size_t probe_prefiltered(const float* query, std::size_t nprobe, std::uint32_t* probes) const;
  /// The exact probe of one query, every centroid scored (`scores`), in (score, list) order: for the
  /// flat kind without the prefilter, what `assign_nearest` gives a batch too small for its GEMM (the
  /// same one-to-many kernel), without its per-call buffers; for the HNSW kind, the probe of a search
  /// that would explore every centroid.
  void probe_exact(const float* query, std::size_t nprobe, std::uint32_t* probes) const;
  /// Every list's score for `query` (nlist floats into `out`; smaller is nearer): the flat kind's rank
  /// score in its centred frame (`frame` receives the centred query), the HNSW kind's as its graph scores
  /// (L2, or −⟨q, c⟩). `probe_exact` ranks by them.
  void scores(const float* query, float* out, std::vector<float>& frame) const;

 private:
  /// Takes `centroids`; for the flat kind derives the centred copy, its norms and the prefilter (no graph).
  void install(matrix<float> centroids);
  /// The flat kind's `count` nearest lists of each row of `x` (in the lists' space) through
  /// `assign_nearest`, in the centred frame.
  void rank(matrix_view<const float> x, std::size_t count, std::uint32_t* labels) const;
  /// `x` (dim floats) in the centred frame of the flat kind's scores: x − μ under L2, into `out`; under
  /// inner product and cosine `x` itself.
  [[nodiscard]] const float* centred(const float* x, std::vector<float>& out) const;
  /// Whether a batch of `rows` queries asking for `nprobe` lists goes through the SQ8 prefilter.
  [[nodiscard]] bool prefiltered(std::size_t rows, std::size_t nprobe) const noexcept;

  metric metric_;
  std::size_t hnsw_m_;
  matrix<float> centroids_;  // as given (and saved); the lists' residuals are taken against these
  double max_centroid_norm_ = 0.0;
  // The flat kind's scoring frame (empty for the HNSW kind): the centroids' coordinate-wise median μ,
  // the centroids minus μ and their squared norms ‖c − μ‖².
  std::vector<float> centre_;
  matrix<float> centred_;
  std::vector<float> norms_;
  float max_norm_sq_ = 0.0f;  // the largest of norms_
  // The flat kind's prefilter: SQ8 codes of the centred centroids (per-dimension ranges learnt from
  // them), one row per list, each row's L2 term (see sq8_estimator), Σ_j of its codes (the bound of the
  // coefficient rounding) and ‖c − ĉ‖ rounded up (the bound of the codes' error); empty below
  // prefilter_min_lists.
  std::optional<scalar_quantizer> codec_;
  std::vector<std::uint8_t> codes_;
  std::vector<float> terms_;
  std::vector<float> code_sums_;
  std::vector<float> residuals_;
  std::unique_ptr<hnsw_index> graph_;
};

}  // namespace shoal::detail
