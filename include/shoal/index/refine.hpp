#pragma once
/// \file
/// `refine_index`: two-stage search as a composition of two indexes. Stage 1, any index (`coarse`: IVF-PQ
/// fast-scan codes, HNSW over SQ8 codes, IVF-Flat, ...), proposes the best `k · refine_factor`
/// candidates cheaply; stage 2 re-scores them with exact distances from the full vectors of a flat index
/// over the same ids (`exact`) — held in RAM, or memory-mapped from its file
/// (`flat_index::load(path, {.mmap = true})`) so that only the coarse index's codes occupy memory.
///
/// ```
/// shoal::refine_index index(shoal::make_index("IVF1024,PQ64x4fs", 768), shoal::flat_index(768));
/// index.train(sample);
/// index.add(vectors, ids);                    // into both stages
/// index.coarse().save("codes.shoal");
/// index.exact().save("vectors.shoal");        // later: the codes in RAM, the full vectors from disk
/// shoal::refine_index served(shoal::load_index("codes.shoal"),
///                            shoal::flat_index::load("vectors.shoal", {.mmap = true}));
/// auto hits = served.search(queries, 10, {.nprobe = 16, .refine_factor = 4});
/// ```
///
/// The factory builds it for a spec with a refinement that the coarse index does not do itself, e.g.
/// `HNSW32,SQ8,Refine(Flat)` or `IVF1024,Flat,RFlat` (IVF-PQ's `,Refine(Flat)` stays the index's own
/// re-rank, which keeps the full vectors inside its inverted lists).
///
/// Persistence: `save` writes one file (kind `refine`, docs/format.md) that holds both stages: the coarse
/// index's sections as its own file has them, then the flat stage's under tags of their own. `load`
/// reads both back; with `load_options::mmap` both are searched in place, so resident memory grows only
/// with the pages a search touches (the coarse codes, then the few full vectors it re-ranks). The two
/// stages can also be saved and loaded separately (`coarse()` and `exact()` are ordinary indexes).

#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "shoal/core/neighbors.hpp"
#include "shoal/core/params.hpp"
#include "shoal/core/types.hpp"
#include "shoal/index/any_index.hpp"
#include "shoal/index/flat.hpp"

namespace shoal {

/// Two indexes over the same ids: a coarse one that proposes, a flat one that re-ranks.
///
/// Thread safety: `const` members may run concurrently; `add` / `remove` need exclusive access (the
/// flat stage's rule).
class refine_index {
 public:
  /// Re-rank depth when `search_params::refine_factor` is 0.
  static constexpr std::size_t default_refine_factor = 4;

  /// Takes both stages (moved in). Throws `errc::invalid_argument` when their dimensions or metrics
  /// differ, or they do not hold the same number of vectors.
  refine_index(any_index coarse, flat_index exact);

  [[nodiscard]] std::size_t dim() const { return exact_.dim(); }
  [[nodiscard]] shoal::metric metric() const { return exact_.metric(); }
  [[nodiscard]] std::size_t size() const { return exact_.size(); }
  /// Bytes both stages hold (pages of a memory-mapped exact stage not included).
  [[nodiscard]] std::size_t memory_bytes() const { return coarse_.memory_bytes() + exact_.memory_bytes(); }
  [[nodiscard]] bool is_trained() const { return coarse_.is_trained(); }
  /// The coarse stage's (the flat stage trains nothing).
  [[nodiscard]] std::size_t min_training_rows() const { return coarse_.min_training_rows(); }
  [[nodiscard]] const any_index& coarse() const noexcept { return coarse_; }
  [[nodiscard]] const flat_index& exact() const noexcept { return exact_; }

  /// Trains the coarse stage (the flat stage needs none).
  void train(matrix_view<const float> sample) { coarse_.train(sample); }
  /// Adds to both stages, all or nothing: the exact stage first, and a failure of the coarse one (out of
  /// memory included) removes the vectors from the exact stage again. The errors of the stages' `add`
  /// (the exact stage's first: `flat_index::add` names bad rows and ids). One exception: out of memory
  /// inside an HNSW coarse stage's graph changes leaves that graph half-changed and refusing every call
  /// ("the index is unusable", `hnsw_index::add`), so this index's searches and writes fail too, with
  /// that error, until it is loaded again; `size` still counts the exact stage. `remove` alike.
  void add(matrix_view<const float> vectors, std::span<const vector_id> ids);
  /// Throws what `add` would throw for these rows, ids aside (`any_index::check_add`): the exact
  /// stage's checks, then the coarse stage's.
  void check_add(matrix_view<const float> vectors) const;
  /// Removes from both stages, the coarse one first; `errc::not_found` for an unknown id and
  /// `errc::unsupported` for a memory-mapped stage before either changes.
  void remove(vector_id id);
  [[nodiscard]] bool contains(vector_id id) const { return exact_.contains(id); }
  /// The stored full vector (unit length for cosine).
  [[nodiscard]] std::span<const float> vector(vector_id id) const { return exact_.vector(id); }

  /// k nearest neighbours of each query: the coarse stage's best `k · refine_factor` (default
  /// `default_refine_factor`) with every other parameter as given (filter, ef, nprobe; an IVF stage whose
  /// probed lists hold fewer than that many searches more of them, `search_params::widen`), re-scored
  /// with exact distances, best k by (distance, id). Throws like `flat_index::search`.
  void search(matrix_view<const float> queries, neighbors_view out, const search_params& params = {}) const;
  [[nodiscard]] neighbors search(matrix_view<const float> queries, std::size_t k,
                                 const search_params& params = {}) const;

  /// Stored vectors closer than `radius` to each query by exact distance, nearest first (ties by smaller
  /// id): the coarse stage's range search with every parameter as given proposes, the exact distances
  /// decide. A reported hit is therefore never farther than `radius`; a vector is missed only where the
  /// coarse stage misses it — not visited (nprobe, ef), or its approximate (code) distance lies at or
  /// past `radius` although its exact one does not. A Flat coarse stage, or IVF-Flat with nprobe ≥
  /// nlist, gives the flat index's result; an HNSW stage, even without codes, misses what its graph
  /// search does not reach (fewer at a larger ef). Throws like `search`, and on a NaN radius.
  [[nodiscard]] range_result range_search(matrix_view<const float> queries, float radius,
                                          const search_params& params = {}) const;

  /// Writes both stages into one file atomically (docs/format.md, kind `refine`). Throws
  /// `errc::io_error` when it cannot be written (`invalid_argument` for an empty path or a directory,
  /// before anything is written). Needs the same access as `search`.
  void save(const std::string& path) const;
  /// Reads a file written by `save` (see `load_options`: copied or mapped, verification level). Throws
  /// `shoal::error` as the stages' `load` do, `errc::invalid_argument` for a file of another kind, and
  /// `errc::corrupt_file` when the stages do not hold the same ids.
  [[nodiscard]] static refine_index load(const std::string& path, const load_options& options = {});

 private:
  any_index coarse_;
  flat_index exact_;
};

/// "<coarse spec>,Refine(Flat)".
[[nodiscard]] std::string describe(const refine_index& index);
/// A refine index's file kind.
[[nodiscard]] constexpr index_kind kind_of(const refine_index& /*index*/) noexcept { return index_kind::refine; }

}  // namespace shoal
