#pragma once
/// \file
/// IVF-PQ: an inverted-file index whose lists hold product-quantization codes of each vector's residual
/// against its list's centroid (FAISS's `IVF<nlist>,PQ<m>` and `IVF<nlist>,PQ<m>x4fs`), with an optional
/// re-rank from stored full vectors (`,Refine(Flat)`: exact) or from an SQ8 copy (`,Refine(SQ8)`).

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "shoal/core/neighbors.hpp"
#include "shoal/core/params.hpp"
#include "shoal/core/types.hpp"
#include "shoal/index/ivf_flat.hpp"
#include "shoal/io/format.hpp"
#include "shoal/quant/opq.hpp"
#include "shoal/quant/pq.hpp"
#include "shoal/quant/sq.hpp"

namespace shoal {
namespace detail {
class id_locator;
}

/// Shape of an IVF-PQ index, fixed at construction.
struct ivf_pq_params {
  /// Inverted lists (coarse centroids), ≥ 1.
  std::size_t nlist = 0;
  /// Sub-quantizers; must divide the dimension.
  std::size_t m = 0;
  /// 8: one byte per sub-quantizer, scanned through float tables (`PQ<m>`); 4: 4-bit fast-scan codes in
  /// blocks of 32 (`PQ<m>x4fs`).
  std::size_t nbits = 8;
  /// Keep every vector at full precision too, so that searches with `search_params::refine_factor` > 0
  /// re-rank candidates by exact distance (`,Refine(Flat)`). Costs dim · 4 bytes per vector.
  bool refine = false;
  /// Keep an SQ8 copy of every vector instead (`,Refine(SQ8)`): `refine_factor` > 0 then re-ranks, and
  /// reports, by the distance to each vector's SQ8 reconstruction (per-dimension ranges learnt in
  /// `train`), not the exact distance — for a vector with an outlying component, which the ranges
  /// clamp, possibly far below it. Costs dim bytes per vector, a quarter of `refine`'s; at most one of
  /// the two.
  bool refine_sq8 = false;
  /// Learn an OPQ rotation (`opq_rotation`, m sub-spaces) in front of the index (`OPQ<m>,IVF...`):
  /// vectors and queries are rotated before everything else. Costs dim² multiply-adds per query and
  /// dim² floats. The re-rank copies (`refine`, `refine_sq8`) keep the vectors as added (unit length
  /// under cosine), not rotated, and are scored against the query as given: a rotation in float moves a
  /// row by about 2⁻²⁴ · ‖x‖ per component, which over data far from the origin is no longer small
  /// against the neighbours' distances (offset 10⁵, unit spread: R@10 0.965 against the exact answer with
  /// every row re-ranked, until format 1.8; a review). Files before 1.8 hold rotated copies, which such
  /// an index keeps, adds included, and saves in that layout.
  bool opq = false;
  /// 0: the coarse pass scores every centroid (`IVF<nlist>,...`); M in [2, 256]: an HNSW graph of M
  /// links over the centroids picks each vector's and query's lists (`IVF<nlist>_HNSW<M>,...`; see
  /// `ivf_flat_index::coarse_hnsw_m`).
  std::size_t coarse_hnsw_m = 0;
};

/// How an IVF-PQ index trains: the coarse quantizer (as IVF-Flat), then the product quantizer on the
/// training vectors' residuals.
struct ivf_pq_train_params {
  ivf_train_params coarse{};
  pq_train_params pq{};
  /// Used when `ivf_pq_params::opq` is set.
  opq_train_params opq{};
};

/// Inverted-file index over product-quantized residuals.
///
/// Layout: nlist centroids (spherical k-means under inner product and cosine); one list per centroid
/// holding, per vector, its code (m bytes, or m/2 bytes in 32-vector fast-scan blocks) and 8-byte id,
/// plus the full vector when built with `refine` (its SQ8 code, dim bytes, with `refine_sq8`), and with
/// 8-bit codes under L2 and cosine an 8-byte row term (see Search). No id →
/// location map is kept, so memory is codes + ids (+ full vectors or SQ8 codes) + centroids + codebooks,
/// plus, once the index has been written to, an *id locator* of 4.6-6.7 bytes per stored vector: a hash
/// table of (fingerprint of the id, list number) pairs that names the lists which may hold an id, whose
/// ids are then scanned. So `add`'s duplicate check, `remove` and `contains` cost O(1) plus a list's
/// scan, not a pass over every list (src/index/id_locator.hpp). The locator is not in the file: the
/// first write or `contains` after a `load` (mapped loads included) builds it from the lists (O(size));
/// an index loaded only to search never holds one.
///
/// Search: the coarse pass of IVF-Flat picks `nprobe` lists per query; then per list an ADC table of the
/// query's residual (L2: ‖(q − c)_s − codeword‖²; inner product: ⟨q_s, codeword⟩, shared by all lists,
/// plus ⟨q, c⟩ per list) is scanned over the codes: 8-bit codes through float tables, 4-bit codes by the
/// fast-scan kernel over tables quantized to bytes. 8-bit codes under L2 and cosine use one table per
/// query instead and a double per stored vector (its "row term", derived from its code at `add` and at
/// `load`; docs/pq.md), the same distance split differently and summed in double; cosine scores
/// ‖q − x̂‖² / 2. The best k (or k ·
/// refine_factor, with re-rank) candidates are kept; with `refine_factor` > 0 they are re-ranked and the best k
/// returned: built with `refine`, by exact distance from the stored full vectors (the kernels of the flat index); built
/// with `refine_sq8`, by the distance to each candidate's SQ8 reconstruction (`scalar_quantizer::distances`), which is
/// what is then reported — closer than ADC, not exact. Without re-rank, reported distances are the approximate (ADC)
/// ones. Rows are sorted by (distance, id) and padded with `no_id` / `no_distance`.
///
/// Thread safety: as IVF-Flat. After `train`, every other member may be called concurrently. Each list
/// has a reader-writer lock (a query holds every list it probes shared, from its scan to the end of its
/// re-rank; `add`/`remove` exclusive while they change that list); a writer mutex serialises `add`,
/// `remove` and `save` against each other (so duplicate checks hold and a save writes one state);
/// searches never take it. A search running alongside an `add` sees each new vector entirely or not at
/// all, and a vector moved to another list at most once. `train` needs exclusive access. Batched
/// searches parallelise over queries on the caller's oneTBB arena.
///
/// Persistence: `save` writes the index file of docs/format.md (parameters, centroids, codebooks, the OPQ
/// rotation, the SQ8 ranges with `refine_sq8`, and per list the codes, ids and — with `refine` — full
/// vectors or — with `refine_sq8` — SQ8 codes); `load` reads it back, or with `load_options::mmap` scans
/// the codes (and re-ranks from the stored rows) in place from a read-only mapping, in which case the
/// index is read-only (`train`, `add` and `remove` throw `errc::unsupported`).
/// A loaded index returns exactly the results of the saved one.
class ivf_pq_index {
 public:
  /// Lists scanned per query when `search_params::nprobe` is 0 (FAISS's default).
  static constexpr std::size_t default_nprobe = 1;

  /// An untrained, empty index; the nlist lists are allocated here, about 200 bytes each. Throws
  /// `shoal::error` if dim, nlist or m is 0, nlist is above 2^24, m does not divide dim, or nbits is
  /// neither 4 nor 8.
  ivf_pq_index(std::size_t dim, metric m, const ivf_pq_params& params);
  ~ivf_pq_index();
  ivf_pq_index(ivf_pq_index&&) noexcept;
  ivf_pq_index& operator=(ivf_pq_index&&) noexcept;
  ivf_pq_index(const ivf_pq_index&) = delete;
  ivf_pq_index& operator=(const ivf_pq_index&) = delete;

  [[nodiscard]] std::size_t dim() const noexcept { return dim_; }
  [[nodiscard]] shoal::metric metric() const noexcept { return metric_; }
  [[nodiscard]] const ivf_pq_params& params() const noexcept { return params_; }
  [[nodiscard]] std::size_t nlist() const noexcept { return params_.nlist; }
  [[nodiscard]] bool is_trained() const noexcept;
  /// Fewest vectors `train` takes: one per list, and one per codeword of a sub-quantizer.
  [[nodiscard]] std::size_t min_training_rows() const noexcept {
    return params_.nlist > pq_.ksub() ? params_.nlist : pq_.ksub();
  }
  [[nodiscard]] matrix_view<const float> centroids() const noexcept;
  [[nodiscard]] const product_quantizer& quantizer() const noexcept { return pq_; }
  /// Number of stored vectors.
  [[nodiscard]] std::size_t size() const noexcept { return size_.load(); }
  /// Number of vectors in each list.
  [[nodiscard]] std::vector<std::size_t> list_sizes() const;
  /// Bytes held by centroids, codebooks, lists (codes, ids, full vectors) and the id locator (for a
  /// memory-mapped index the lists' mapped arrays are not counted: they live in the page cache).
  [[nodiscard]] std::size_t memory_bytes() const;
  /// Whether the index was loaded with `load_options::mmap` (and is therefore read-only).
  [[nodiscard]] bool is_mapped() const noexcept { return mapping_ != nullptr; }

  /// Writes the index (trained or not) to `path` atomically (a temporary file beside it, fsync, rename:
  /// an interrupted save leaves any previous file intact). May run concurrently with searches; `add`
  /// and `remove` wait for it. Throws `shoal::error` (`errc::io_error`; `invalid_argument` for an empty
  /// path or a directory, before anything is written).
  void save(const std::string& path) const;
  /// Reads an index written by `save`. Throws `shoal::error`: `errc::io_error` when the file cannot be
  /// read, `errc::corrupt_file` when it is truncated, damaged (checksum) or inconsistent (sizes,
  /// parameters, duplicate ids), `errc::unsupported` for a newer major format version,
  /// `errc::invalid_argument` when it holds another kind of index.
  [[nodiscard]] static ivf_pq_index load(const std::string& path, const load_options& options = {});

  /// Learns the centroids (k-means on `vectors`) and the codebooks (on the residuals of `vectors`).
  /// Throws `shoal::error` if the index holds vectors, on a dimension mismatch, NaN/Inf, a zero vector
  /// under cosine, fewer training vectors than nlist or than 2^nbits, training vectors that are all
  /// copies of one vector (under cosine: of one direction), or a residual past the norm bound (a
  /// residual can be twice as long as its vector; vectors of up to half the bound always pass).
  /// Needs exclusive access.
  void train(matrix_view<const float> vectors, const ivf_pq_train_params& params = {});

  /// Adds vectors under `ids`, each encoded in the list of its nearest centroid. All or nothing: throws
  /// `shoal::error` — and changes nothing — if untrained, on a dimension or count mismatch, NaN/Inf, a
  /// zero vector under cosine, a residual past the norm bound (`errc::non_finite`, as in `train`), with
  /// OPQ a rotated row past it (the rotation's rounding can take a row within a few ulps of the bound
  /// past it; a loaded rotation need not be orthogonal), or an
  /// id already present (in the index or twice in `ids`). Out of memory (`std::bad_alloc`)
  /// part-way through changes nothing either.
  void add(matrix_view<const float> vectors, std::span<const vector_id> ids);

  /// Throws the `shoal::error` that `add` would throw for these rows, ids aside, and adds nothing: the
  /// index memory-mapped (read-only), untrained, a dimension mismatch, NaN/Inf, a norm past the bound,
  /// a zero row under cosine, or a row whose residual or OPQ rotation passes the norm bound (what no
  /// check of the rows alone can tell). A collection checks a write's rows with it before logging the
  /// write. Rotates and assigns only rows whose norm (times the rotation's `norm_gain`) plus the largest
  /// centroid's comes near the bound.
  void check_add(matrix_view<const float> vectors) const;

  /// Removes the vector stored under `id`; throws `shoal::error` (`errc::not_found`) if there is none.
  void remove(vector_id id);
  /// Whether `id` is stored, through the id locator. The first call on a loaded index builds the locator
  /// (O(size), 4.6-6.7 bytes per vector — on a mapped index too, in memory; see the class comment),
  /// holding the write mutex: adds, removes and saves wait for it (about 4 ms per 300,000 vectors).
  /// While a write runs the build is left to the writer and that call scans every list's ids instead,
  /// as it does if the build runs out of memory.
  [[nodiscard]] bool contains(vector_id id) const;
  /// Every stored id, list after list: one pass, where `contains` per id would be quadratic. Each list is
  /// read under its lock; with adds or removes running, the result is a list-by-list snapshot.
  [[nodiscard]] std::vector<vector_id> ids() const;

  /// k nearest neighbours of each query among its `params.nprobe` nearest lists (more lists for a query
  /// they leave short of k, unless `params.widen` is false, as IVF-Flat), re-ranked when
  /// `params.refine_factor` > 0 (exactly with `refine`, by SQ8 distance with `refine_sq8`; see the class
  /// comment). Throws `shoal::error` if untrained, on a dimension mismatch, NaN/Inf or zero (cosine)
  /// queries, k = 0, a row count mismatch, `refine_factor` > 0 on an index built with neither `refine`
  /// nor `refine_sq8`, lists from `params.coarse` that do not exist or repeat within a query, or — 4-bit
  /// codes — a query whose ADC table overflows float (`errc::non_finite`, see `quantize_table`).
  void search(matrix_view<const float> queries, neighbors_view out, const search_params& params = {}) const;
  /// Allocating convenience form of `search`.
  [[nodiscard]] neighbors search(matrix_view<const float> queries, std::size_t k,
                                 const search_params& params = {}) const;

  /// Every vector of each query's `params.nprobe` nearest lists whose distance is < `radius`, nearest
  /// first, ties by smaller id (as IVF-Flat's range search), filtered by `params.filter`.
  ///  - `params.refine_factor` = 0: the distance is the approximate (ADC) one that `search` reports
  ///    without re-rank — bit for bit, so the result equals `search` with k ≥ the probed vectors and
  ///    refine_factor 0, cut at `radius`.
  ///  - `params.refine_factor` > 0 (its value is otherwise unused; needs an index built with `refine` or
  ///    `refine_sq8`): every vector of the probed lists is scored from its stored row and reported with
  ///    that distance. With `refine`, the exact distance from the full vector, with the flat index's
  ///    kernels: with nprobe ≥ nlist this is the flat index's range search over the same vectors (with
  ///    OPQ too: the copies are not rotated, `ivf_pq_params::opq`, except in an index loaded from a file
  ///    before format 1.8). With `refine_sq8`, the
  ///    distance to the SQ8 reconstruction (`scalar_quantizer::distances`), not the exact one.
  /// Throws `shoal::error` as `search` does, and on a NaN radius.
  [[nodiscard]] range_result range_search(matrix_view<const float> queries, float radius,
                                          const search_params& params = {}) const;

 private:
  friend struct detail::index_sections<ivf_pq_index>;  // the file sections
  struct list;
  struct scratch;
  [[nodiscard]] detail::probed_queries probe(matrix_view<const float> queries, const search_params& params,
                                             const char* what) const;
  void begin_query(const float* query, scratch& s) const;
  /// Fills the scratch's tables for list `list_no` (4-bit: quantized too); returns the distance offset.
  [[nodiscard]] float list_tables(std::size_t list_no, const float* query, scratch& s) const;
  /// The 4-bit fast-scan sums of list `l` under the scratch's quantized table (padding slots included).
  [[nodiscard]] const std::uint32_t* list_sums(const list& l, scratch& s) const;
  [[nodiscard]] const float* list_distances(const list& l, std::size_t list_no, const float* query, scratch& s) const;
  void scan_list(const list& l, std::size_t list_no, const float* query, scratch& s, const search_params& params,
                 std::size_t keep) const;
  /// Writes row `q` of `out` from the candidates the scan left in `s`: by their code distances, or
  /// re-ranked from the stored rows (`kept_query`: the query in their space) when `refine_factor` > 0.
  /// The lists holding the candidates must still be read-locked.
  void write_row(scratch& s, const float* kept_query, neighbors_view out, std::size_t q,
                 const search_params& params) const;
  [[nodiscard]] std::size_t list_code_bytes(std::size_t n) const noexcept;
  struct prepared_rows;
  /// The rows `add` encodes: `vectors` checked, normalised under cosine, rotated under OPQ.
  [[nodiscard]] prepared_rows prepare(matrix_view<const float> vectors) const;
  /// Each row of `rows` minus the centroid of its list `label[i]`, checked against the norm bound.
  [[nodiscard]] matrix<float> residuals(matrix_view<const float> rows, const std::uint32_t* label) const;
  /// Whether searches score 8-bit codes by one table per query and a term per row instead of a table per
  /// probed list: L2 and cosine (docs/pq.md "row terms"), ‖q − c − r̂‖² = ‖q − c‖² − 2⟨q, r̂⟩ + (‖r̂‖² +
  /// 2⟨c, r̂⟩), halved under cosine, all in double.
  [[nodiscard]] bool row_terms() const noexcept { return params_.nbits == 8 && metric_ != metric::inner_product; }
  /// The row terms ‖r̂‖² + 2⟨c, r̂⟩ (halved under cosine) of `n` 8-bit codes, row i in list
  /// `lists[i * list_stride]`, into `out`.
  void compute_row_terms(const std::uint8_t* codes, std::size_t n, const std::uint32_t* lists, std::size_t list_stride,
                         double* out) const;
  /// ‖q − c‖² of list `list_no` (halved under cosine), in double.
  [[nodiscard]] double row_term_offset(std::size_t list_no, const float* query) const noexcept;

  std::size_t dim_;
  shoal::metric metric_;
  ivf_pq_params params_;
  /// The coarse quantizer; throws `errc::invalid_argument` on a moved-from index.
  [[nodiscard]] detail::coarse_quantizer& coarse() const;
  [[nodiscard]] detail::id_locator& locator() const;
  [[nodiscard]] std::size_t locator_bytes() const;
  void reserve_locator(std::size_t more);
  /// Builds the id locator for `contains` when no writer runs (best effort); whether it did.
  [[nodiscard]] bool build_locator_for_reads() const noexcept;
  /// Calls `put(id, list)` for every stored entry (the writer's view: no list locks).
  template <class Put>
  void put_stored(Put&& put) const;
  /// The list holding `id` (its slot in `slot`), or nlist; the caller holds `write_mutex_`.
  [[nodiscard]] std::size_t find_stored(vector_id id, std::size_t& slot) const;

  std::unique_ptr<detail::coarse_quantizer> coarse_;
  product_quantizer pq_;
  std::optional<opq_rotation> opq_;
  std::optional<scalar_quantizer> refine_codec_;  // refine_sq8: trained in `train`
  // With OPQ, whether the re-rank's rows (full vectors or SQ8 copy) are rotated: only in an index loaded
  // from a file before format 1.8 (docs/format.md), which keeps that layout. Rows as added otherwise.
  bool rerank_rotated_ = false;
  std::vector<std::unique_ptr<list>> lists_;
  // Serialises add, remove, save and a `contains` that builds the locator.
  mutable detail::movable_mutex<std::mutex> write_mutex_;
  std::unique_ptr<detail::id_locator> locator_;  // built by the first write or `contains`: see the class comment
  detail::movable_count size_;
  // Set by a memory-mapped load: the lists' codes, ids and vectors live in the mapping, kept alive here.
  std::shared_ptr<const io::detail::file_mapping> mapping_;
};

}  // namespace shoal
