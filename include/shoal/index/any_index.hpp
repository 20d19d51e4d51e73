#pragma once
/// \file
/// `any_index`: the one type-erased face of every shoal index, used by the factory (`make_index`), the
/// file loader (`load_index`) and collections. Concrete indexes stay fast and templated inside; this is
/// the narrow virtual interface around them, one virtual call per batch.

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "shoal/core/neighbors.hpp"
#include "shoal/core/params.hpp"
#include "shoal/core/types.hpp"
#include "shoal/io/format.hpp"

namespace shoal {

class flat_index;
class ivf_flat_index;
class hnsw_index;
class ivf_pq_index;

/// The factory string that builds an index of the same structure: "Flat", "IVF4096,Flat", "HNSW32".
[[nodiscard]] std::string describe(const flat_index& index);
[[nodiscard]] std::string describe(const ivf_flat_index& index);
[[nodiscard]] std::string describe(const hnsw_index& index);
[[nodiscard]] std::string describe(const ivf_pq_index& index);
/// The file kind of an index type.
[[nodiscard]] constexpr index_kind kind_of(const flat_index& /*index*/) noexcept { return index_kind::flat; }
[[nodiscard]] constexpr index_kind kind_of(const ivf_flat_index& /*index*/) noexcept { return index_kind::ivf_flat; }
[[nodiscard]] constexpr index_kind kind_of(const hnsw_index& /*index*/) noexcept { return index_kind::hnsw; }
[[nodiscard]] constexpr index_kind kind_of(const ivf_pq_index& /*index*/) noexcept { return index_kind::ivf_pq; }

/// Whether an index type lets `add` / `remove` run concurrently with searches (a trait; false unless
/// specialised). Flat indexes need exclusive access for writes.
template <class Index>
inline constexpr bool allows_concurrent_writes = false;
template <>
inline constexpr bool allows_concurrent_writes<hnsw_index> = true;
template <>
inline constexpr bool allows_concurrent_writes<ivf_flat_index> = true;
template <>
inline constexpr bool allows_concurrent_writes<ivf_pq_index> = true;

namespace detail {

/// The virtual interface behind `any_index` (see there for the meaning of each member).
class index_interface {
 public:
  index_interface() = default;
  index_interface(const index_interface&) = delete;
  index_interface& operator=(const index_interface&) = delete;
  virtual ~index_interface() = default;

  [[nodiscard]] virtual std::size_t dim() const noexcept = 0;
  [[nodiscard]] virtual shoal::metric metric() const noexcept = 0;
  [[nodiscard]] virtual std::size_t size() const = 0;
  [[nodiscard]] virtual std::size_t memory_bytes() const = 0;
  [[nodiscard]] virtual bool is_trained() const = 0;
  [[nodiscard]] virtual std::size_t min_training_rows() const = 0;
  [[nodiscard]] virtual index_kind kind() const noexcept = 0;
  [[nodiscard]] virtual std::size_t lists() const = 0;
  [[nodiscard]] virtual std::string description() const = 0;
  virtual void train(matrix_view<const float> vectors) = 0;
  virtual void add(matrix_view<const float> vectors, std::span<const vector_id> ids) = 0;
  virtual void check_add(matrix_view<const float> vectors) const = 0;
  virtual void remove(vector_id id) = 0;
  [[nodiscard]] virtual bool contains(vector_id id) const = 0;
  [[nodiscard]] virtual std::vector<float> vector(vector_id id) const = 0;
  [[nodiscard]] virtual bool concurrent_writes() const noexcept = 0;
  virtual void search(matrix_view<const float> queries, neighbors_view out, const search_params& params) const = 0;
  [[nodiscard]] virtual range_result range_search(matrix_view<const float> queries, float radius,
                                                  const search_params& params) const = 0;
  virtual void save(const std::string& path) const = 0;
  [[nodiscard]] virtual void* target(const std::type_info& type) noexcept = 0;
};

/// Throws `errc::unsupported`: `what` of `index` is not built yet.
[[noreturn]] void throw_not_built(const std::string& index, const char* what);
/// The checks every index's `add` makes of the rows alone — writable (not memory-mapped), trained,
/// dimension, values, norms, no zero row under cosine — naming `index` (its description) in the message.
void check_rows_for_add(matrix_view<const float> vectors, std::size_t dim, metric m, bool trained, bool mapped,
                        const std::string& index);

/// `index_interface` over a concrete index, through its public API only. Indexes without a training
/// step (flat, HNSW) train as a no-op; an index type without persistence or range search would throw
/// `errc::unsupported` on `save` / `range_search` (every index built today has both).
template <class Index>
class index_model final : public index_interface {
 public:
  explicit index_model(Index&& index) : index_(std::move(index)) {}

  [[nodiscard]] std::size_t dim() const noexcept override { return index_.dim(); }
  [[nodiscard]] shoal::metric metric() const noexcept override { return index_.metric(); }
  [[nodiscard]] std::size_t size() const override { return index_.size(); }
  [[nodiscard]] std::size_t memory_bytes() const override { return index_.memory_bytes(); }
  [[nodiscard]] bool is_trained() const override {
    if constexpr (requires(const Index& i) { i.is_trained(); })
      return index_.is_trained();
    else
      return true;
  }
  // Not noexcept: a refine_index asks its coarse stage, which throws once moved from (noexcept made
  // that std::terminate; a review).
  [[nodiscard]] std::size_t min_training_rows() const override {
    if constexpr (requires(const Index& i) { i.min_training_rows(); })
      return index_.min_training_rows();
    else
      return 0;
  }
  [[nodiscard]] index_kind kind() const noexcept override { return kind_of(index_); }
  [[nodiscard]] std::size_t lists() const override {
    if constexpr (requires(const Index& i) { i.nlist(); })
      return index_.nlist();
    else if constexpr (requires(const Index& i) { i.coarse().lists(); })
      return index_.coarse().lists();
    else
      return 0;
  }
  [[nodiscard]] std::string description() const override { return describe(index_); }
  void train(matrix_view<const float> vectors) override {
    if constexpr (requires(Index & i) { i.train(vectors); }) {
      index_.train(vectors);
    } else {  // nothing to learn, but a mapped index refuses every write, as the trainable kinds do
      SHOAL_CHECK_CODE(!index_.is_mapped(), errc::unsupported, describe(index_),
                       ": train: the index was loaded with mmap and is read-only");
    }
  }
  void add(matrix_view<const float> vectors, std::span<const vector_id> ids) override { index_.add(vectors, ids); }
  void check_add(matrix_view<const float> vectors) const override {
    if constexpr (requires(const Index& i) { i.check_add(vectors); }) {
      index_.check_add(vectors);
    } else {
      check_rows_for_add(vectors, index_.dim(), index_.metric(), is_trained(), index_.is_mapped(), describe(index_));
    }
  }
  void remove(vector_id id) override { index_.remove(id); }
  [[nodiscard]] bool contains(vector_id id) const override { return index_.contains(id); }
  [[nodiscard]] std::vector<float> vector(vector_id id) const override {
    if constexpr (requires(const Index& i) { i.vector(id); }) {
      const auto v = index_.vector(id);
      return std::vector<float>(v.begin(), v.end());
    } else {
      throw_not_built(describe(index_), "returning stored vectors");
    }
  }
  [[nodiscard]] bool concurrent_writes() const noexcept override { return allows_concurrent_writes<Index>; }
  void search(matrix_view<const float> queries, neighbors_view out, const search_params& params) const override {
    index_.search(queries, out, params);
  }
  [[nodiscard]] range_result range_search(matrix_view<const float> queries, float radius,
                                          const search_params& params) const override {
    if constexpr (requires(const Index& i) { i.range_search(queries, radius, params); })
      return index_.range_search(queries, radius, params);
    else
      throw_not_built(describe(index_), "range search");
  }
  void save(const std::string& path) const override {
    if constexpr (requires(const Index& i) { i.save(path); })
      index_.save(path);
    else
      throw_not_built(describe(index_), "saving");
  }
  [[nodiscard]] void* target(const std::type_info& type) noexcept override {
    return type == typeid(Index) ? &index_ : nullptr;
  }

 private:
  Index index_;
};

}  // namespace detail

/// Any shoal index behind one interface: a move-only value that owns the index it wraps.
///
/// Every member forwards to the wrapped index and has its semantics, errors and thread safety (e.g. a
/// flat index's `add` needs exclusive access, an HNSW index's does not). `train` is a no-op for indexes
/// that need no training. A default-constructed (or moved-from) `any_index` is empty: every member but
/// `has_value` and `get_if` (which returns null) throws `errc::invalid_argument`.
///
/// ```
/// shoal::any_index index = shoal::make_index("IVF1024,Flat", 768, shoal::metric::cosine);
/// index.train(sample);
/// index.add(vectors, ids);
/// shoal::neighbors result = index.search(queries, 10, {.nprobe = 16});
/// index.save("embeddings.shoal");
/// shoal::any_index again = shoal::load_index("embeddings.shoal", {.mmap = true});
/// ```
class any_index {
 public:
  any_index() = default;
  /// Wraps `index` (moved in).
  template <class Index>
  requires(!std::is_same_v<std::remove_cvref_t<Index>, any_index> && !std::is_lvalue_reference_v<Index> &&
           !std::is_const_v<std::remove_reference_t<Index>>) explicit any_index(Index&& index)
      : self_(std::make_unique<detail::index_model<std::remove_cvref_t<Index>>>(std::move(index))) {}

  [[nodiscard]] bool has_value() const noexcept { return self_ != nullptr; }

  [[nodiscard]] std::size_t dim() const { return self().dim(); }
  [[nodiscard]] shoal::metric metric() const { return self().metric(); }
  /// Number of stored vectors.
  [[nodiscard]] std::size_t size() const { return self().size(); }
  /// Bytes of memory the index holds (mapped file pages not included).
  [[nodiscard]] std::size_t memory_bytes() const { return self().memory_bytes(); }
  /// Whether `add` may be called (always true for indexes without training).
  [[nodiscard]] bool is_trained() const { return self().is_trained(); }
  /// Fewest sample rows `train` takes (IVF: one per list; PQ codebooks: one per codeword); 0 for indexes
  /// without training. A caller choosing what to train on (a collection's shards) checks it first.
  [[nodiscard]] std::size_t min_training_rows() const { return self().min_training_rows(); }
  /// Which index this is (the kind its file would record).
  [[nodiscard]] index_kind kind() const { return self().kind(); }
  /// IVF kinds: the number of inverted lists (nlist; `search_params::nprobe` from it on scans every
  /// list); a two-stage index, its first stage's; 0 for kinds without lists.
  [[nodiscard]] std::size_t lists() const { return self().lists(); }
  /// The factory string of the index's structure, e.g. "IVF4096,Flat" (`make_index` accepts it and
  /// builds the same kind), except for a `refine_index` made by hand over a stage that `make_index`
  /// would not pair with Refine(Flat): over IVF-PQ, "IVF…,PQ…,Refine(Flat)" builds IVF-PQ's own
  /// re-rank (the same results at refine_factor > 0; at 0 it does not re-rank); over a stage already
  /// refined, the string ends in two refinements, which `make_index` refuses.
  [[nodiscard]] std::string description() const { return self().description(); }

  /// Trains the index on a sample (IVF: k-means with default `ivf_train_params`); a no-op for indexes
  /// without training, except that a memory-mapped index refuses it (`errc::unsupported`) as it does
  /// every write.
  void train(matrix_view<const float> vectors) { self().train(vectors); }
  /// Adds `vectors.rows` vectors under `ids` (all or nothing).
  void add(matrix_view<const float> vectors, std::span<const vector_id> ids) { self().add(vectors, ids); }
  /// Throws the `shoal::error` that `add` would throw for these rows, ids aside, and adds nothing: a
  /// memory-mapped (read-only) or untrained index, a dimension mismatch, NaN/Inf, a norm past the bound, a zero row
  /// under cosine, and what only the index can tell — an IVF-PQ row whose residual (the row minus its list's centroid)
  /// or OPQ rotation passes the norm bound (`ivf_pq_index::check_add`), an HNSW first add whose rows cannot give
  /// SQ8/SQ4 ranges (`hnsw_index::check_add`). The messages name the problem as `add` does, not always in the same
  /// words. A collection checks each shard's rows with it before it logs a write.
  void check_add(matrix_view<const float> vectors) const { self().check_add(vectors); }
  /// Removes `id`; throws `errc::not_found` if it is not stored. There is no `upsert` here: only
  /// `hnsw_index::upsert` and `collection::upsert` replace a vector in one step that searches never see
  /// half done; elsewhere `remove` then `add` leaves a moment where searches find neither.
  void remove(vector_id id) { self().remove(id); }
  [[nodiscard]] bool contains(vector_id id) const { return self().contains(id); }
  /// A copy of the vector stored under `id` (for cosine, the unit vector the index stores). Throws
  /// `errc::not_found` for an unknown id, `errc::unsupported` for indexes that keep only codes (IVF-PQ).
  [[nodiscard]] std::vector<float> vector(vector_id id) const { return self().vector(id); }
  /// Whether `add` / `remove` may run concurrently with searches (HNSW, IVF); a flat index's writes
  /// need exclusive access, and so do a two-stage index's (`,RFlat` / `Refine(...)`: its flat stage's
  /// rule) whatever its coarse stage.
  [[nodiscard]] bool concurrent_writes() const { return self().concurrent_writes(); }

  /// k nearest neighbours of each query into `out` (`out.rows == queries.rows`, k = `out.k` ≥ 1).
  void search(matrix_view<const float> queries, neighbors_view out, const search_params& params = {}) const {
    self().search(queries, out, params);
  }
  /// Allocating form of `search`.
  [[nodiscard]] neighbors search(matrix_view<const float> queries, std::size_t k,
                                 const search_params& params = {}) const;
  /// Stored vectors closer than `radius` to each query, nearest first.
  [[nodiscard]] range_result range_search(matrix_view<const float> queries, float radius,
                                          const search_params& params = {}) const {
    return self().range_search(queries, radius, params);
  }

  /// Writes the index file (docs/format.md) atomically; `load_index` reads it back. Throws
  /// `errc::io_error` when the file cannot be written (`invalid_argument` for an empty path or a
  /// directory, before anything is written).
  void save(const std::string& path) const { self().save(path); }

  /// The wrapped index if it is an `Index`, else null.
  template <class Index>
  [[nodiscard]] Index* get_if() noexcept {
    return self_ ? static_cast<Index*>(self_->target(typeid(Index))) : nullptr;
  }
  template <class Index>
  [[nodiscard]] const Index* get_if() const noexcept {
    return self_ ? static_cast<const Index*>(self_->target(typeid(Index))) : nullptr;
  }

 private:
  [[nodiscard]] detail::index_interface& self() const;
  std::unique_ptr<detail::index_interface> self_;
};

}  // namespace shoal
