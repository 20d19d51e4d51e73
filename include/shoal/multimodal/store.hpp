#pragma once
/// \file
/// `shoal::multimodal_store`: named modalities ("image", "text", "audio", ...), each with its own
/// dimension, metric, index and collection layout, searched within a modality or across modalities
/// through a shared space; paired ids between modalities; late fusion of several query modalities; two
/// encoder versions of one modality side by side; persistence in one directory.
///
/// ```
/// shoal::multimodal_store store({.shared_dim = 512, .shared_metric = shoal::metric::cosine});
/// shoal::modality_options image;
/// image.collection.dim = 512;
/// image.collection.metric = shoal::metric::cosine;
/// image.collection.index = "HNSW32";
/// image.collection.shards = 4;
/// image.native = true;                                   // CLIP image space = the shared space
/// store.add_modality("image", image);
/// shoal::modality_options text = image;
/// text.collection.dim = 768;
/// text.native = false;
/// store.add_modality("text", text);
/// store.fit_projection("text", text_train, image_train); // ridge, text 768-d -> shared 512-d
/// store.add("image", images, image_ids);
/// store.add("text", captions, caption_ids);
/// store.link("text", caption_ids, "image", image_of_caption);   // many-to-many pairs
/// auto direct = store.search("text", queries, "image", 10);     // through the shared space
/// auto paired = store.search_via_pairs("text", queries, "image", 10);  // text neighbours -> images
/// store.save("/var/lib/shoal/store");
/// ```
///
/// ## The shared space and how a modality reaches it
/// The store has one shared space (`multimodal_options::shared_dim`, `shared_metric`). A cross-modal
/// search maps the query into it and searches the target modality's shared-space index. Per modality
/// version (see `shared_route`):
/// - **native**: its vectors already live in the shared space (CLIP image and text embeddings share one
///   512-d space): the identity; its own collection serves other modalities' queries at no extra cost.
/// - **projected**: a `projection` (given, loaded with `projection::load_npy`, or fitted from paired
///   examples with `fit_projection`) maps it into the shared space. Its own queries are projected. For
///   other modalities to search *its* vectors, the store picks the cheapest exact way:
///   - `adjoint` — when the shared-space distance of a projected vector can be computed in the
///     modality's own space (inner product with any projection; L2 with an orthogonal W; cosine with an
///     orthogonal W and no bias, e.g. Procrustes fitted with `fit_bias = false`), the shared-space query
///     is carried back by the projection's adjoint (Wᵀ) and searches the modality's own collection:
///     no second copy of anything, same results (up to float rounding) as searching projected vectors
///     (orthogonal: ‖W·Wᵀ − I‖_F ≤ 1e-5, so an L2 distance is off by at most 1e-5 · (‖x‖² + ‖q − b‖²);
///     a map less orthogonal than that gets a mirror);
///   - `mirror` — otherwise (e.g. a ridge projection under cosine) a second collection holds every
///     vector projected into the shared space, with the same index spec and layout. **Memory cost**: a
///     mirror stores each vector again at the shared dimension, about `shared_dim / dim` times the own
///     collection's vector storage plus its index overhead (HNSW links, ...); `modality_info::
///     mirror_bytes` reports it. Set `modality_options::searchable = false` for a modality that only
///     queries (`query_only`: no mirror).
/// - Vectors of a cosine modality are normalised before they are projected (a cosine embedding is a
///   direction); `fit_projection` normalises its x rows the same way, and its y rows when the shared
///   metric is cosine.
///
/// ## Encoder versions
/// A modality holds one or more named versions (e.g. two text encoders), each a collection of its own
/// dimension and projection. Searches use the *active* version; writes name a version or go to the
/// active one. `add_version` builds a new version while queries keep using the active one, `activate`
/// switches every later search at once, `drop_version` releases a version (searches already running on
/// it finish on it). Paired ids are the caller's ids and are shared by every version.
///
/// ## Thread safety
/// Every member may be called concurrently from any number of threads, except construction, `open`,
/// moves and destruction. Searches read an immutable snapshot of the modalities and versions (a
/// `shared_ptr` swap on every change), so a search concurrent with `activate`, `add_version` or
/// `drop_version` runs wholly on the old or wholly on the new catalogue. Searches concurrent with
/// writes follow the collections' consistency model (see collection.hpp): a search sees a vector before
/// or after a concurrent write. Writes to a modality version with a mirror run one at a time, so that a
/// vector and its projection are applied in the same order; other writes run concurrently.
///
/// ## Errors
/// `shoal::error` with: `errc::not_found` for an unknown modality or version; `errc::dimension_mismatch`
/// for vectors or a projection of the wrong dimension (the message names the modality and version);
/// `errc::unsupported` for a cross-modal search without a path through the shared space (no
/// projection, or a target created with `searchable = false`) and for changing a mirrored projection
/// once vectors are stored; `errc::invalid_argument` for bad names and options; and those of the
/// collections underneath (duplicate ids, NaN/Inf, ...).

#include <cstddef>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shoal/collection/collection.hpp"
#include "shoal/core/neighbors.hpp"
#include "shoal/core/params.hpp"
#include "shoal/core/types.hpp"
#include "shoal/multimodal/fusion.hpp"
#include "shoal/multimodal/projection.hpp"

namespace shoal {

/// The store's shared space.
struct multimodal_options {
  /// Dimension of the shared space (≥ 1).
  std::size_t shared_dim = 0;
  /// Metric of every cross-modal search (and of the mirror collections).
  shoal::metric shared_metric = shoal::metric::cosine;
};

/// How the vectors of one modality version relate to the shared space (see the file comment).
enum class shared_route {
  none,        ///< no projection yet: no cross-modal search from or to this modality
  native,      ///< its space is the shared space (the identity)
  adjoint,     ///< projected; others' queries are mapped back by the adjoint onto its own collection
  mirror,      ///< projected; a second collection holds the projected vectors
  query_only,  ///< projected for its own queries; not searchable from other modalities
};

/// "none", "native", "adjoint", "mirror", "query_only".
[[nodiscard]] const char* shared_route_name(shared_route route) noexcept;

/// One modality version: its collection and its way into the shared space.
struct modality_options {
  /// Dimension, metric, index spec and layout (shards, sharding policy, replicas, ...). `directory`
  /// must stay empty: the store persists through `save` / `open`. Range sharding keys are the ids.
  collection_options collection;
  /// The modality's space is the shared space: `collection.dim` must equal the shared dimension and
  /// `collection.metric` the shared metric; no projection.
  bool native = false;
  /// The projection into the shared space (in_dim = `collection.dim`, out_dim = shared dim), if known
  /// now; `set_projection` / `fit_projection` can give it later.
  std::optional<projection> to_shared;
  /// Whether other modalities may search this one (native ones included: false hides them from other
  /// modalities' queries). False saves the mirror of a projected modality whose vectors are only ever
  /// queried by their own modality.
  bool searchable = true;
};

/// How `fit_projection` fits.
enum class projection_method {
  ridge,       ///< `projection::fit_ridge`: any dimensions
  procrustes,  ///< `projection::fit_procrustes`: an orthogonal map, equal dimensions
};

struct projection_fit {
  projection_method method = projection_method::ridge;
  /// Ridge penalty, in the units of XᵀX (see `projection::fit_ridge`).
  float lambda = 1e-2f;
  /// Fit a bias too. Procrustes without a bias under cosine (or L2) lets the store search the
  /// modality through the adjoint instead of a mirror.
  bool fit_bias = true;
};

/// What `multimodal_store::info` reports about one modality version.
struct modality_info {
  std::string modality;
  std::string version;
  bool active = false;
  /// The layout of its collection (dim, metric, index spec, shards, ...).
  collection_options collection;
  bool native = false;
  bool searchable = true;
  shared_route route = shared_route::none;
  /// The projection into the shared space (none for native modalities and before one is set).
  std::optional<projection> to_shared;
  /// Stored vectors.
  std::size_t size = 0;
  /// Bytes of the own collection, and of the mirror (0 without one).
  std::size_t memory_bytes = 0;
  std::size_t mirror_bytes = 0;
};

/// One part of a multi-vector query for `search_fused`: `vectors.rows` queries of `modality`.
struct modal_query {
  std::string_view modality;
  matrix_view<const float> vectors;
  /// The fusion weight of this part's candidate list (finite, ≥ 0).
  float weight = 1.0f;
};

/// Which fusion rule of fusion.hpp `search_fused` applies.
enum class fusion_rule {
  reciprocal_rank,  ///< `reciprocal_rank_fusion`
  weighted_score,   ///< `weighted_score_fusion`
  intersection,     ///< `intersection_fusion`
};

struct fusion_options {
  fusion_rule rule = fusion_rule::reciprocal_rank;
  /// `reciprocal_rank` only.
  double rrf_k = 60.0;
  /// `weighted_score` only.
  score_normalization normalization = score_normalization::min_max;
  /// Candidates fetched per part before fusing; 0 (the default): 4·k. Never more than the target holds.
  /// Intersection needs deep lists.
  std::size_t candidates = 0;
};

namespace detail {
struct multimodal_state;
}

/// Modalities over collections, a shared space, paired ids and late fusion (see the file comment).
/// Move-only.
class multimodal_store {
 public:
  /// An empty store. Throws `errc::invalid_argument` for a shared dimension outside [1, 2^24] or a shared
  /// metric outside the enum.
  explicit multimodal_store(const multimodal_options& options);
  /// Opens a directory written by `save`: the manifest, then every version's collection through
  /// `collection::open(…, options)`; with `options.mmap` the store is read-only and saves only into
  /// another directory (its collections are). The opened collections keep their write-ahead log in `directory`,
  /// so vector writes after `open` are durable at once; modality, version, projection and pair changes,
  /// and the vectors of collections created after `open`, are persisted by the next `save` into
  /// `directory` (which also makes those collections log their later writes there). A mirror that a
  /// crash left behind its version (the crash fell between the two write-ahead logs' appends of an `add`,
  /// `upsert` or `remove`) is brought back in line here, from the version's stored vectors: ids only the
  /// mirror holds are removed from it, ids only the version holds are added, and the ids written since the
  /// last snapshot (`collection::replayed_ids` of either) are compared with the projection of the
  /// version's vector and written again where they differ (all of them where the mirror's index keeps
  /// approximate vectors or codes). After a repair, the version and its mirror are checkpointed, so the
  /// next `open` does not repeat it. If the version's index keeps only codes (IVF-PQ), its upserted ids
  /// are not compared, and ids only it holds (an `add` the crash cut short, which never returned) are
  /// removed from it instead, as they cannot be projected again. The version is the reference: a mirror
  /// *ahead* of it (which a process crash cannot cause, as the version's log record is written first,
  /// but a power loss under `wal_sync::os_buffered`, or a version's `wal.log` cut at a record boundary
  /// or deleted, can) is rolled back to it too, and the
  /// writes only the mirror held are lost with that repair; a log cut at a record boundary reads as a
  /// shorter valid log at every layer, so nothing can tell the two cases apart. Throws `errc::io_error` (no
  /// manifest), `errc::corrupt_file` (damaged or inconsistent manifest, and the errors of `collection::open`),
  /// `errc::unsupported` (a newer manifest format).
  [[nodiscard]] static multimodal_store open(const std::filesystem::path& directory,
                                             const collection_open_options& options = {});

  multimodal_store(multimodal_store&& other) noexcept;
  multimodal_store& operator=(multimodal_store&& other) noexcept;
  multimodal_store(const multimodal_store&) = delete;
  multimodal_store& operator=(const multimodal_store&) = delete;
  ~multimodal_store();

  [[nodiscard]] std::size_t shared_dim() const noexcept;
  [[nodiscard]] shoal::metric shared_metric() const noexcept;

  // -------------------------------------------------------------------------- modalities and versions

  /// Adds modality `name` with its first version `version`, which becomes active. Names are 1 to 64
  /// characters of [A-Za-z0-9_.-] not starting with '.' or '-' (they name directories). Throws
  /// `errc::invalid_argument` for a bad or taken name, a directory in the options, a native modality
  /// with a projection or another metric, and the errors of the collection constructor;
  /// `errc::dimension_mismatch` when a native dim or the projection's dims do not fit.
  void add_modality(std::string_view name, const modality_options& options, std::string_view version = "v1");
  /// Adds a version to a modality (an empty collection built from `options`, of any dim) without
  /// changing the active one. Errors as `add_modality`; `errc::not_found` for an unknown modality.
  void add_version(std::string_view modality, std::string_view version, const modality_options& options);
  /// Makes `version` the one every later search of `modality` uses. Throws `errc::not_found`.
  void activate(std::string_view modality, std::string_view version);
  /// Releases a version that is not active. Writes to it that are running finish first; a later write
  /// naming it throws `errc::not_found`, so no write is acknowledged into a dropped version. Throws
  /// `errc::not_found`, and `errc::invalid_argument` for the active version.
  void drop_version(std::string_view modality, std::string_view version);

  /// Modality names, sorted.
  [[nodiscard]] std::vector<std::string> modalities() const;
  /// Version names of a modality, sorted. Throws `errc::not_found`.
  [[nodiscard]] std::vector<std::string> versions(std::string_view modality) const;
  [[nodiscard]] std::string active_version(std::string_view modality) const;
  /// A version's layout, route and sizes (`version` empty: the active one). Throws `errc::not_found`.
  [[nodiscard]] modality_info info(std::string_view modality, std::string_view version = {}) const;
  /// Bytes held by every collection of every version, mirrors included.
  [[nodiscard]] std::size_t memory_bytes() const;

  // ------------------------------------------------------------------------------------- projections

  /// Sets the projection of a modality version into the shared space and re-derives its route. A
  /// version that needs a (new) mirror must hold no vectors yet: `errc::unsupported` otherwise — add a
  /// version, fill it beside the live one and `activate` it. (Refilling a mirror in place would hold
  /// the version's writes off for a whole rebuild, and a crash before the next `save` would leave the
  /// saved projection beside a half-refilled mirror.) A new mirror
  /// of a layout that needs training (semantic / hybrid sharding, IVF) is untrained: call `train`
  /// again before adding. Throws `errc::not_found`, `errc::invalid_argument` for a native modality,
  /// `errc::dimension_mismatch` unless in_dim = the version's dim and out_dim = the shared dim.
  void set_projection(std::string_view modality, const projection& to_shared, std::string_view version = {});
  /// Fits the projection from paired rows — `x` in the modality's space, `y` their counterparts in the
  /// shared space (e.g. the vectors of the paired images of a native image modality) — by `fit`, sets
  /// it as `set_projection` does and returns it. Errors of `set_projection`, of `projection::fit_ridge`
  /// / `fit_procrustes`, and `errc::dimension_mismatch` naming x or y.
  projection fit_projection(std::string_view modality, matrix_view<const float> x, matrix_view<const float> y,
                            const projection_fit& fit = {}, std::string_view version = {});
  /// `vectors` of the modality's active version mapped into the shared space, as searches map queries
  /// (normalised first under cosine, then projected; native: copied, normalised under cosine). Throws
  /// `errc::unsupported` without a projection, `errc::dimension_mismatch`, `errc::not_found`, and
  /// `errc::non_finite` for a row that projects past float's range.
  [[nodiscard]] matrix<float> to_shared(std::string_view modality, matrix_view<const float> vectors) const;

  // ------------------------------------------------------------------------------------------- writes

  /// Trains a version's collection on `sample` (and its mirror on the projected sample); see
  /// `collection::train`. The projected sample is made and checked first (finite; under a cosine shared
  /// metric, no row projecting to zero), so a sample refused for its values trains nothing.
  void train(std::string_view modality, matrix_view<const float> sample, std::string_view version = {});
  /// Adds `vectors.rows` vectors under `ids` to a version (`version` empty: the active one), and their
  /// projections to its mirror. All or nothing, with one exception: a collection that runs out of memory
  /// while it applies its part (after logging it) may hold part of it, and then refuses every later
  /// write and save until reopened, as `collection::add` documents — so `save` of the whole store fails
  /// while one version's collection refuses (reopen the store's directory; a store without one stays
  /// so). Errors of `collection::add`, `errc::dimension_mismatch` naming the modality, `errc::not_found`.
  void add(std::string_view modality, matrix_view<const float> vectors, std::span<const vector_id> ids,
           std::string_view version = {});
  /// Adds or replaces (see `collection::upsert`), in the mirror too. Every check, the projections'
  /// included, comes before anything changes. One failure can still leave the two apart for a while:
  /// an I/O error in the mirror's write-ahead log after the version's own write went through (a store
  /// opened from a directory on a full disk) leaves the mirror's old entries until the version's next
  /// write or `save`, which write them first (and fail again while the mirror still refuses: no
  /// snapshot keeps a stale mirror); a crash between the two logs' appends leaves them until `open`
  /// repairs the mirror. The same holds for `remove`. Out of memory while the mirror's shards apply a
  /// write leaves that collection refusing writes until it is reopened (`collection::add`); the version
  /// and its mirror can then hold different ids (cross-modal searches may return ids the version does
  /// not), which `open` repairs for a store with a directory and which stays for one without (a review,
  /// session 38, found both orders by injecting the failure: not all or nothing there).
  void upsert(std::string_view modality, matrix_view<const float> vectors, std::span<const vector_id> ids,
              std::string_view version = {});
  /// Removes ids from a version and its mirror; `errc::not_found` (an id the version does not store)
  /// before removing anything. Pairs of removed ids stay until `unlink`; `search_via_pairs` skips them.
  void remove(std::string_view modality, std::span<const vector_id> ids, std::string_view version = {});
  [[nodiscard]] std::size_t size(std::string_view modality, std::string_view version = {}) const;
  [[nodiscard]] bool contains(std::string_view modality, vector_id id, std::string_view version = {}) const;

  // --------------------------------------------------------------------------------------- paired ids

  /// Links `ids_a[i]` of modality `a` with `ids_b[i]` of modality `b`, for every i: a many-to-many
  /// relation (one image, five captions), usable in both directions; linking a pair twice keeps one.
  /// The ids need not be stored. Throws `errc::not_found` for an unknown modality,
  /// `errc::invalid_argument` for a == b or spans of different lengths.
  void link(std::string_view a, std::span<const vector_id> ids_a, std::string_view b, std::span<const vector_id> ids_b);
  /// Removes the given links (links that do not exist are ignored). Errors as `link`.
  void unlink(std::string_view a, std::span<const vector_id> ids_a, std::string_view b,
              std::span<const vector_id> ids_b);
  /// The ids of modality `to` linked with `id` of modality `from`, sorted. Errors as `link`.
  [[nodiscard]] std::vector<vector_id> linked(std::string_view from, vector_id id, std::string_view to) const;
  /// Number of links between two modalities.
  [[nodiscard]] std::size_t link_count(std::string_view a, std::string_view b) const;

  // ------------------------------------------------------------------------------------------- search

  /// The k nearest vectors of `target` (k = `out.k`) for each query of modality `query_modality`:
  ///  - same modality: its own collection, distances in its own metric;
  ///  - another modality: the queries are mapped into the shared space (`to_shared`) and search the
  ///    target's shared-space index (its own collection when native, through the adjoint, or its
  ///    mirror); distances are shared-space distances (`shared_metric`).
  /// `params` go to the collection searched (a filter sees the target's ids). Throws `errc::not_found`,
  /// `errc::dimension_mismatch` (queries vs the query modality's active version),
  /// `errc::unsupported` when either side has no path through the shared space, and the errors of
  /// `collection::search` (k = 0, `out` of the wrong shape).
  void search(std::string_view query_modality, matrix_view<const float> queries, std::string_view target,
              neighbors_view out, const search_params& params = {}) const;
  [[nodiscard]] neighbors search(std::string_view query_modality, matrix_view<const float> queries,
                                 std::string_view target, std::size_t k, const search_params& params = {}) const;

  /// Cross-modal search through paired ids: each query's nearest neighbours in its own modality
  /// (`source_k` of them), mapped through the links to ids of `target`. A target id is scored by its
  /// best-ranked linked neighbour: its distance is that neighbour's distance (in the query modality's
  /// metric); rows are ordered by (distance, id) and padded with `no_id` when fewer than k targets are
  /// linked. Links to ids that the target's active version does not store (removed, or never added)
  /// are skipped. `source_k` = 0 (the default) starts at 4·k neighbours and, for rows that reach fewer
  /// than k stored targets, or whose deepest neighbour ties with the k-th target's distance (a tied
  /// neighbour further on may link a smaller id), searches deeper (×4 each round) until neither holds or
  /// every stored vector is seen; with a given `source_k`, ties at that depth are broken among the
  /// neighbours it holds.
  /// `params` (filter included) apply to the query-modality search. Throws `errc::not_found`,
  /// `errc::invalid_argument` (k = 0, target = query modality), `errc::dimension_mismatch`.
  [[nodiscard]] neighbors search_via_pairs(std::string_view query_modality, matrix_view<const float> queries,
                                           std::string_view target, std::size_t k, const search_params& params = {},
                                           std::size_t source_k = 0) const;

  /// Late fusion of multi-vector queries: query r is row r of every part (every part has the same
  /// number of rows, e.g. an image and a text describing one need). Each part searches `target` (as
  /// `search` does, `options.candidates` deep); the parts' lists of row r are fused by
  /// `options.rule` with the parts' weights. Returns one fused ranking per query, best first, at most
  /// k long (see fusion.hpp for scores and ties). Throws `errc::invalid_argument` (no parts, k = 0,
  /// different row counts), the errors of `search` and of the fusion functions.
  [[nodiscard]] std::vector<std::vector<fused_id>> search_fused(std::span<const modal_query> parts,
                                                                std::string_view target, std::size_t k,
                                                                const fusion_options& options = {},
                                                                const search_params& params = {}) const;

  // ------------------------------------------------------------------------------------- persistence

  /// Writes the store into `directory`: each version's collection (and mirror) through
  /// `collection::save` into `<modality>/<dir>/native` (`<modality>/<dir>/<mirror dir>`), then the
  /// manifest `MULTIMODAL.shoal` (modalities, versions and their directories, active versions, shared
  /// space, projections, links; checksummed) written atomically (temporary file, fsync, rename) last;
  /// then whatever the manifest does not name in the modalities' directories is deleted. `<dir>` is the
  /// version's name on its first save; later, a collection is saved over the one the previous manifest
  /// names only when it is that collection (opened from there, logging there: a checkpoint), and into
  /// `<version>+<n>` (`shared+<n>`) otherwise. So a crash at any point leaves the previous manifest
  /// beside collections that each hold its previous or a later snapshot of the same collection, never
  /// beside a version re-created with another dimension or a mirror of another projection. Writes to
  /// each collection wait while it is saved; each collection is a consistent snapshot of itself;
  /// catalogue changes (`add_version`, `drop_version`, ...) wait for the whole save.
  ///
  /// Saving into the directory the store was opened from also makes the collections created since
  /// `open` (versions, modalities, the mirror a new projection needs) durable from then on: they are
  /// reopened from what was just written, so that their writes are logged there like the others'
  /// (their writes wait from their own save until then). A save into any other directory is a copy:
  /// the store keeps logging where it did. Throws `errc::io_error`.
  void save(const std::filesystem::path& directory) const;

 private:
  explicit multimodal_store(std::unique_ptr<detail::multimodal_state> state);
  std::unique_ptr<detail::multimodal_state> state_;
};

}  // namespace shoal
