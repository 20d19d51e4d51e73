#pragma once
/// \file
/// The one interface every measured index implements — shoal's and each peer library's — so that a
/// single timing loop (runner.hpp) measures them all. Adding an index means adding one adapter: for
/// shoal an entry in shoal_adapters.cpp, for a peer a case in its peer_<library>.cpp.

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "params.hpp"
#include "shoal/core/neighbors.hpp"
#include "shoal/core/types.hpp"
#include "shoal/io/format.hpp"

namespace shoal::bench {

/// What to build: the index-factory spec (`Flat`, later `HNSW32`, `IVF1024,PQ32x4fs`, ...), the metric
/// and the build knobs, and the k that searches will ask for.
struct index_request {
  std::string spec;
  shoal::metric metric = shoal::metric::l2;
  param_list build_params;
  /// Neighbours per query (--k). Peers that keep their search depth in the index (FAISS) raise it to k
  /// when the knobs are set, as shoal and hnswlib do per search.
  std::size_t k = 1;
};

/// One index of one library, built one way.
///
/// Call order: `set_search_params` (any number of times, also before `build`, to validate every sweep
/// point early), `build` once, then per sweep point `set_search_params` followed by concurrent `search`
/// calls. Search settings never change while searches run.
class index_adapter {
 public:
  index_adapter() = default;
  index_adapter(const index_adapter&) = delete;
  index_adapter& operator=(const index_adapter&) = delete;
  virtual ~index_adapter() = default;

  /// The library column: "shoal", "hnswlib", "faiss".
  [[nodiscard]] virtual std::string_view library() const noexcept = 0;
  /// The index column: the spec for shoal, the peer's own class name for peers (`IndexFlatL2`, ...).
  [[nodiscard]] virtual std::string description() const = 0;

  /// Validates and stores the search knobs of one sweep point. Throws `config_error` for an unknown name
  /// or a bad value; needs no built index.
  virtual void set_search_params(const param_list& params) = 0;

  /// Builds the index over `base` (ids are row numbers 0..rows-1). The caller times it and runs it
  /// inside a oneTBB arena of the requested thread count, after `use_threads` with that count.
  virtual void build(matrix_view<const float> base) = 0;

  /// Called on each thread that is about to build or search: one call may use `threads` threads (1 for
  /// single-query workers). For libraries with their own thread pools (FAISS: OpenMP); oneTBB-based code
  /// is bounded by the runner's arena instead.
  virtual void use_threads(std::size_t threads) const { static_cast<void>(threads); }

  /// k nearest neighbours of every row of `queries` into `out` (`out.rows == queries.rows`, k = `out.k`),
  /// nearest first, ids = base row numbers, unfilled slots `no_id`. Runs concurrently on the runner's
  /// workers; a call may itself use the threads of the arena it runs in.
  virtual void search(matrix_view<const float> queries, neighbors_view out) const = 0;

  /// Bytes the built index occupies; each adapter documents how it counts (peers: an estimate).
  [[nodiscard]] virtual std::size_t memory_bytes() const = 0;

  /// --save: writes the built index to `path`. Throws `config_error` where the index cannot be saved.
  virtual void save(const std::string& path) const {
    static_cast<void>(path);
    throw config_error("--save: " + description() + " (" + std::string(library()) + ") cannot be saved");
  }
  /// --load: replaces `build` — reads the index from `path` (mapped / verified as `options` say), which
  /// must hold `base` (its row count and dimension: recall is scored against `base`'s row numbers).
  /// Throws `config_error` where the index cannot be loaded or holds other data; shoal::error when the
  /// file is bad.
  virtual void load(const std::string& path, const load_options& options, matrix_view<const float> base) {
    static_cast<void>(path);
    static_cast<void>(options);
    static_cast<void>(base);
    throw config_error("--load: " + description() + " (" + std::string(library()) + ") cannot be loaded");
  }
};

/// shoal's index for `request.spec`. Throws `config_error` for an unknown spec (listing the known ones)
/// or an unknown build parameter.
[[nodiscard]] std::unique_ptr<index_adapter> make_shoal_adapter(const index_request& request);

/// `spec` as shoal's adapters and the peers take it: as written when the bench's grammar knows it, else
/// the factory's canonical form of it at `dim`, as `any_index::description()` gives it (RFlat for
/// Refine(Flat), PQ<m>x8, spaces around commas, ...). Throws `config_error` (the known specs and the
/// factory's message, which names the bad token) when the factory cannot build it either.
[[nodiscard]] std::string resolve_spec(const std::string& spec, std::size_t dim, shoal::metric m);

/// --shards: how the collection that replaces the single index is laid out.
struct collection_request {
  std::size_t shards = 1;
  std::string sharding = "hash";
  std::size_t replicas = 1;
  std::size_t groups = 0;  ///< hybrid: 0 means shards / 2
};

/// A `shoal::collection` of `layout.shards` shards, each a `request.spec` index (built with the factory's
/// defaults) over vectors of dimension `dim`. Throws `config_error` for a bad policy or build parameter,
/// or a layout the collection rejects (shard or replica count, groups that do not divide the shards).
[[nodiscard]] std::unique_ptr<index_adapter> make_collection_adapter(const index_request& request,
                                                                     const collection_request& layout, std::size_t dim);

/// Throws `config_error` unless the index in the --load file `path`, of metric `stored`, is of the
/// --metric asked for.
inline void check_load_metric(const std::string& path, shoal::metric stored, shoal::metric asked) {
  if (stored != asked)
    throw config_error("--load: " + path + " holds an index of metric " + metric_name(stored) +
                       ", not the --metric asked for, " + metric_name(asked));
}

/// A library measured beside shoal, found at configure time.
struct peer_library {
  std::string_view name;
  /// An adapter for `request`, or `config_error` saying why this peer cannot serve it.
  std::unique_ptr<index_adapter> (*make)(const index_request& request);
};

/// The peers compiled into this binary (possibly none).
[[nodiscard]] std::span<const peer_library> peer_libraries();

// Defined by peer_<library>.cpp, which are compiled only when the library is found.
[[nodiscard]] std::unique_ptr<index_adapter> make_hnswlib_adapter(const index_request& request);
[[nodiscard]] std::unique_ptr<index_adapter> make_faiss_adapter(const index_request& request);

}  // namespace shoal::bench
