// shoal::multimodal_store: a catalogue of modalities and versions (an immutable snapshot swapped under a
// mutex), each version a collection plus its link into the shared space (projection, adjoint or mirror),
// a table of paired ids, and a directory format: one collection directory per version (and mirror)
// plus a checksummed manifest written last.

#include "shoal/multimodal/store.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <numeric>
#include <optional>
#include <shared_mutex>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "core/phase_fair_mutex.hpp"
#include "io/file_util.hpp"
#include "io/format.hpp"
#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "shoal/core/topk.hpp"
#include "shoal/io/format.hpp"

namespace shoal {

const char* shared_route_name(shared_route route) noexcept {
  switch (route) {
    case shared_route::none:
      return "none";
    case shared_route::native:
      return "native";
    case shared_route::adjoint:
      return "adjoint";
    case shared_route::mirror:
      return "mirror";
    case shared_route::query_only:
      return "query_only";
  }
  return "unknown";
}

namespace detail {
namespace {

/// Largest ‖W·Wᵀ − I‖_F (Frobenius, computed in double) for which a square projection counts as
/// orthogonal. The Frobenius norm bounds the spectral one, so every shared-space L2 distance the adjoint
/// route reports is within 1e-5 · (‖x‖² + ‖q − b‖²) of the projected vector's (the difference is
/// xᵀ(WᵀW − I)x − (q − b)ᵀ(WWᵀ − I)(q − b)). A Procrustes fit or a rotation rounded to float stays near
/// 1e-6 at 1,024 dimensions. A bound on the largest entry, as before, let a map that stretches one
/// direction by 1.3% through at 256 dimensions (entries of 1e-4, spectral error 0.026: 17 of 200 top-1
/// answers differed from the projected vectors').
constexpr double orthogonality_tolerance = 1e-5;
/// The same bound when `open` re-derives a route that a save recorded as adjoint: looser, so that a
/// projection near the bound, checked again on another CPU or Eigen build, keeps its route.
constexpr double reopen_orthogonality_tolerance = 1e-4;

/// The store's manifest in its directory, beside one folder per modality.
constexpr std::string_view manifest_name = "MULTIMODAL.shoal";

bool valid_name(std::string_view name) noexcept {
  if (name.empty() || name.size() > 64 || name.front() == '.' || name.front() == '-') return false;
  if (name.starts_with(manifest_name)) return false;  // the manifest and its temporary files
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
           c == '-';
  });
}

void check_name(std::string_view name, const char* what, const char* who) {
  SHOAL_CHECK(valid_name(name), who, ": ", what, " name \"", name,
              "\" must be 1 to 64 characters of [A-Za-z0-9_.-], not starting with '.', '-' or \"", manifest_name, "\"");
}

bool is_orthogonal(const projection& p, double tolerance) {
  if (p.in_dim() != p.out_dim()) return false;
  using row_major = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const auto d = static_cast<Eigen::Index>(p.in_dim());
  // In double: a float Gram matrix adds rounding of its own (‖·‖_F about 1e-5 at 1,024 dimensions).
  const Eigen::MatrixXd w = Eigen::Map<const row_major>(p.weights().data(), d, d).cast<double>();
  const Eigen::MatrixXd gram = w * w.transpose();
  return (gram - Eigen::MatrixXd::Identity(d, d)).norm() <= tolerance;
}

/// The map that carries a shared-space query back into a projected modality's own space so that its
/// own index ranks stored x exactly as the shared space ranks W·x + b (see store.hpp), or nothing.
struct adjoint_map {
  projection back;
  bool add_bias_offset;  // inner product: −⟨b, q⟩ is added to every distance
};

std::optional<adjoint_map> adjoint_of(const projection& p, metric own, metric shared, double tolerance) {
  if (own != shared) return std::nullopt;
  const std::size_t in = p.in_dim(), out = p.out_dim();
  const std::span<const float> w = p.weights(), b = p.bias();
  std::vector<float> wt(in * out);
  for (std::size_t r = 0; r < out; ++r)
    for (std::size_t c = 0; c < in; ++c) wt[c * out + r] = w[r * in + c];
  const bool has_bias = std::any_of(b.begin(), b.end(), [](float v) { return v != 0.0f; });
  if (shared == metric::inner_product) return adjoint_map{projection(out, in, std::move(wt)), has_bias};
  if (!is_orthogonal(p, tolerance)) return std::nullopt;
  if (shared == metric::cosine) {
    if (has_bias) return std::nullopt;
    return adjoint_map{projection(out, in, std::move(wt)), false};
  }
  // L2: ‖W·x + b − q‖ = ‖x − Wᵀ(q − b)‖ for an orthogonal W.
  std::vector<float> back_bias(in, 0.0f);
  for (std::size_t c = 0; c < in; ++c) {
    double sum = 0.0;
    for (std::size_t r = 0; r < out; ++r) sum += static_cast<double>(w[r * in + c]) * b[r];
    back_bias[c] = static_cast<float>(-sum);
  }
  return adjoint_map{projection(out, in, std::move(wt), std::move(back_bias)), false};
}

/// How one version reaches the shared space; immutable once published.
struct link_state {
  shared_route route = shared_route::none;
  std::optional<projection> to_shared;    // adjoint, mirror, query_only
  std::optional<projection> from_shared;  // adjoint
  std::vector<float> offset_bias;         // adjoint under inner product with a bias
  std::shared_ptr<collection> mirror;     // mirror
};

/// What a version's mirror should hold for `id`: row `row` of `rows` (the write's projected batch,
/// shared, not copied), or nothing when `rows` is null.
struct pending_entry {
  vector_id id = 0;
  std::shared_ptr<const matrix<float>> rows;
  std::size_t row = 0;
};

/// One version of one modality.
struct version_state {
  version_state(std::string modality_, std::string name_, bool native_, bool searchable_, collection own_)
      : modality(std::move(modality_)),
        name(std::move(name_)),
        native(native_),
        searchable(searchable_),
        own(std::move(own_)) {}

  const std::string modality;
  const std::string name;
  const bool native;
  const bool searchable;
  collection own;
  /// Mirror entries a failed mirror write left behind its version (an I/O error in the mirror's log after
  /// the version's write went through), oldest first: for each id, what the mirror should hold (a later
  /// entry for the same id wins). Applied before the version's next write and before a save
  /// (`apply_pending`), so that no snapshot keeps the mirror stale; `open` repairs only what a crash
  /// leaves, from the logs. Room for a write's entries is reserved before its mirror write, so recording
  /// them after a failure allocates nothing: a second out-of-memory there lost the record (and replaced
  /// the first exception; a review). Guarded by the exclusive write lock (versions with a mirror write
  /// alone).
  std::vector<pending_entry> mirror_pending;

  [[nodiscard]] std::size_t dim() const noexcept { return own.dim(); }
  [[nodiscard]] metric own_metric() const noexcept { return own.metric(); }

  [[nodiscard]] std::shared_ptr<const link_state> link() const {
    const std::lock_guard lock(link_mutex_);
    return link_;
  }
  void set_link(std::shared_ptr<const link_state> l) {
    const std::lock_guard lock(link_mutex_);
    link_ = std::move(l);
  }

  /// Runs `f(link)` as a write: concurrently with other writes unless the version has a mirror (then
  /// alone, so that a vector and its projection are written in the same order), and never during a
  /// projection change. False, without running `f`, once the version is retired: the caller looks the
  /// version up again.
  template <class F>
  [[nodiscard]] bool write(F&& f) {
    std::shared_lock shared(writes_);
    if (retired_) return false;
    const std::shared_ptr<const link_state> l = link();
    if (!l->mirror) {
      f(*l);
      return true;
    }
    shared.unlock();
    const std::unique_lock exclusive(writes_);
    if (retired_) return false;
    f(*link());
    return true;
  }
  /// Runs `f()` with every write excluded (projection changes); false, without running it, once retired.
  template <class F>
  [[nodiscard]] bool exclusive(F&& f) {
    const std::unique_lock lock(writes_);
    if (retired_) return false;
    f();
    return true;
  }
  /// Holds every write off until the lock is released (`save`).
  [[nodiscard]] std::unique_lock<std::shared_mutex> hold() { return std::unique_lock(writes_); }
  /// Refuses every later write (see `write`): the version left the catalogue (`drop_version`) or was
  /// replaced by its reopened copy (`save`). `held` must come from `hold()`.
  void retire([[maybe_unused]] const std::unique_lock<std::shared_mutex>& held) { retired_ = true; }

 private:
  mutable std::mutex link_mutex_;
  std::shared_ptr<const link_state> link_ = std::make_shared<link_state>();
  std::shared_mutex writes_;
  bool retired_ = false;  // guarded by writes_
};

struct modality_entry {
  std::map<std::string, std::shared_ptr<version_state>, std::less<>> versions;
  std::shared_ptr<version_state> active;
};

/// Modalities and versions: copied on every change, read as a snapshot by every call.
struct catalog {
  std::map<std::string, modality_entry, std::less<>> modalities;
};

/// Links of one direction between two modalities: id of `from` → sorted ids of `to`.
using adjacency = std::unordered_map<vector_id, std::vector<vector_id>>;

}  // namespace

struct multimodal_state {
  explicit multimodal_state(const multimodal_options& o) : options(o) {}

  const multimodal_options options;

  [[nodiscard]] std::shared_ptr<const catalog> snapshot() const {
    const std::lock_guard lock(catalog_mutex);
    return current;
  }
  /// Applies `change` to a copy of the catalogue and publishes it.
  template <class F>
  void modify(F&& change) {
    const std::lock_guard admin(admin_mutex);
    modify_held(change);
  }
  /// `modify` for a caller that holds `admin_mutex`.
  template <class F>
  void modify_held(F&& change) {
    auto next = std::make_shared<catalog>(*snapshot());
    change(*next);
    const std::lock_guard lock(catalog_mutex);
    current = std::move(next);
  }

  mutable std::mutex catalog_mutex;
  std::shared_ptr<const catalog> current = std::make_shared<catalog>();
  std::mutex admin_mutex;  // serialises catalogue changes and saves; taken before any version's lock

  /// The directory the store was opened from, and how: `save` into it reopens the collections made
  /// since, so that their writes are logged there too. Set once by `open`.
  std::filesystem::path home;
  collection_open_options home_options;

  mutable phase_fair_mutex pairs_mutex;  // link and unlink are not starved by searches through the links
  std::map<std::pair<std::string, std::string>, adjacency> pairs;  // (from, to) → links
};

namespace {

const modality_entry& find_modality(const catalog& c, std::string_view modality, const char* who) {
  const auto it = c.modalities.find(modality);
  SHOAL_CHECK_CODE(it != c.modalities.end(), errc::not_found, who, ": unknown modality '", modality, "'");
  return it->second;
}

/// The version named `version` of `modality`, or its active version when `version` is empty.
const std::shared_ptr<version_state>& find_version(const catalog& c, std::string_view modality,
                                                   std::string_view version, const char* who) {
  const modality_entry& m = find_modality(c, modality, who);
  if (version.empty()) return m.active;
  const auto it = m.versions.find(version);
  SHOAL_CHECK_CODE(it != m.versions.end(), errc::not_found, who, ": modality '", modality, "' has no version '",
                   version, "'");
  return it->second;
}

void check_dim(const version_state& v, matrix_view<const float> x, const char* who, const char* what) {
  SHOAL_CHECK_CODE(x.dim == v.dim(), errc::dimension_mismatch, who, ": ", what, " of modality '", v.modality,
                   "' have dimension ", x.dim, ", its version '", v.name, "' has ", v.dim());
}

void check_projection_fits(const projection& p, std::size_t dim, std::size_t shared_dim, std::string_view modality,
                           const char* who) {
  SHOAL_CHECK_CODE(p.in_dim() == dim && p.out_dim() == shared_dim, errc::dimension_mismatch, who,
                   ": the projection of modality '", modality, "' maps ", p.in_dim(), " to ", p.out_dim(),
                   " dimensions; it must map the modality's ", dim, " to the shared ", shared_dim);
}

void check_options(const modality_options& o, const multimodal_options& shared, std::string_view modality,
                   const char* who) {
  SHOAL_CHECK(o.collection.directory.empty(), who, ": modality '", modality,
              "': collection_options::directory must be empty (the store persists through save/open)");
  if (o.native) {
    SHOAL_CHECK(!o.to_shared, who, ": modality '", modality, "' is native to the shared space and takes no projection");
    SHOAL_CHECK_CODE(o.collection.dim == shared.shared_dim, errc::dimension_mismatch, who, ": modality '", modality,
                     "' is native to the shared space, but has dimension ", o.collection.dim, ", the shared space ",
                     shared.shared_dim);
    SHOAL_CHECK(o.collection.metric == shared.shared_metric, who, ": modality '", modality,
                "' is native to the shared space, but has metric ", metric_name(o.collection.metric),
                ", the shared space ", metric_name(shared.shared_metric));
  }
  if (o.to_shared) check_projection_fits(*o.to_shared, o.collection.dim, shared.shared_dim, modality, who);
}

/// The layout of a version's mirror: its own, in the shared space.
collection_options mirror_options(const collection_options& own, const multimodal_options& shared) {
  collection_options o = own;
  o.dim = shared.shared_dim;
  o.metric = shared.shared_metric;
  o.directory.clear();
  return o;
}

/// The link of `v` with projection `p`; a new, empty mirror is made if one is needed. `open` passes the
/// route its manifest recorded and the mirror it loaded: a recorded mirror stays the route, and a
/// recorded adjoint is checked with `reopen_orthogonality_tolerance`.
std::shared_ptr<const link_state> make_link(const version_state& v, std::optional<projection> p,
                                            const multimodal_options& shared,
                                            std::optional<shared_route> recorded = std::nullopt,
                                            std::shared_ptr<collection> mirror = nullptr) {
  auto l = std::make_shared<link_state>();
  if (v.native) {
    l->route = shared_route::native;
    return l;
  }
  if (!p) return l;
  l->to_shared = std::move(p);
  if (!v.searchable) {
    l->route = shared_route::query_only;
  } else if (std::optional<adjoint_map> a =
                 recorded == shared_route::mirror && mirror
                     ? std::nullopt
                     : adjoint_of(*l->to_shared, v.own_metric(), shared.shared_metric,
                                  recorded == shared_route::adjoint ? reopen_orthogonality_tolerance
                                                                    : orthogonality_tolerance)) {
    l->route = shared_route::adjoint;
    l->from_shared = std::move(a->back);
    if (a->add_bias_offset) l->offset_bias.assign(l->to_shared->bias().begin(), l->to_shared->bias().end());
  } else {
    l->route = shared_route::mirror;
    l->mirror = mirror ? std::move(mirror) : std::make_shared<collection>(mirror_options(v.own.options(), shared));
  }
  return l;
}

/// `x` (rows of `v`'s space) in the shared space: normalised first under cosine, then projected. `rows`
/// names them in errors ("query", "vector").
matrix<float> into_shared(const version_state& v, const link_state& l, matrix_view<const float> x, const char* who,
                          const char* rows) {
  SHOAL_CHECK_CODE(l.route != shared_route::none, errc::unsupported, who, ": modality '", v.modality, "' (version '",
                   v.name,
                   "') has no projection into the shared space: give modality_options::to_shared, or call "
                   "set_projection or fit_projection");
  const std::string what = str(who, ": ", rows);
  check_vectors(x, x.dim, what.c_str());  // NaN/Inf is errc::non_finite, as the collections report it
  matrix<float> unit;
  if (v.own_metric() == metric::cosine) {
    unit = normalized_copy(x, what.c_str());
    if (!l.to_shared) return unit;
    x = unit.view();
  }
  if (!l.to_shared) {
    matrix<float> copy(x.rows, x.dim);
    for (std::size_t i = 0; i < x.rows; ++i) std::copy_n(x.row(i), x.dim, copy.row(i));
    return copy;
  }
  return l.to_shared->apply(x);  // refuses rows that project to Inf or NaN
}

/// The vectors `v` stores under `ids`, projected into the shared space as its mirror stores them (unit
/// rows under a cosine shared metric).
matrix<float> mirrored_vectors(const version_state& v, const link_state& l, std::span<const vector_id> ids,
                               const char* who) {
  matrix<float> stored(ids.size(), v.dim());
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const std::vector<float> x = v.own.vector(ids[i]);
    std::copy(x.begin(), x.end(), stored.row(i));
  }
  matrix<float> projected = into_shared(v, l, stored.view(), who, "vector");
  return l.mirror->metric() == metric::cosine ? normalized_copy(projected.view(), "projected vector") : projected;
}

/// Mirror entries to write again, with the vectors they should hold.
struct stale_entries {
  std::vector<vector_id> ids;
  matrix<float> vectors;
};

/// The ids among `candidates` whose mirror vector is not the projection of the version's: further from it
/// than rounding explains (1e-4 of its norm), or not readable (an index that keeps only codes). An index
/// that keeps approximate vectors (SQ, F16) fails the test for most: they are written again, harmlessly.
stale_entries stale_in_mirror(const version_state& v, const link_state& l, std::span<const vector_id> candidates,
                              const char* who) {
  if (candidates.empty()) return {};
  const matrix<float> expected = mirrored_vectors(v, l, candidates, who);
  std::vector<std::size_t> rows;
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    std::vector<float> held;
    try {
      held = l.mirror->vector(candidates[i]);
    } catch (const error& e) {
      if (e.code() != errc::unsupported) throw;
      rows.push_back(i);
      continue;
    }
    double gap = 0.0, norm = 0.0;
    for (std::size_t j = 0; j < held.size(); ++j) {
      const double e = expected.row(i)[j];
      gap += (held[j] - e) * (held[j] - e);
      norm += e * e;
    }
    if (gap > 1e-8 * norm) rows.push_back(i);
  }
  stale_entries out{{}, matrix<float>(rows.size(), expected.dim)};
  for (std::size_t r = 0; r < rows.size(); ++r) {
    out.ids.push_back(candidates[rows[r]]);
    std::copy_n(expected.row(rows[r]), expected.dim, out.vectors.row(r));
  }
  return out;
}

/// A crash between a write's two log appends (the version's, then its mirror's) can leave the mirror
/// without ids the version holds, with ids the version removed, or with the vector an upsert replaced:
/// `open` brings the mirror back in line with the version, projecting the version's stored vectors.
/// Only ids that one of the two logs replayed (`changed`, the writes since their common snapshot) can
/// hold a stale vector, so only theirs are compared. `plan_reconcile` finds what to write (reading
/// only, so that a mapped store writes nothing when nothing is wrong); `apply_reconcile` writes it and
/// checkpoints both (as a database checkpoints at the end of crash recovery), so that the next `open`
/// has nothing to repair.
struct reconcile_plan {
  std::vector<vector_id> missing, extra;  // ids only the version holds, only the mirror holds
  stale_entries stale;                    // ids both hold, with the vectors the mirror should hold
  std::size_t own = 0, mirrored = 0, changed = 0;
  [[nodiscard]] bool needed() const noexcept { return !missing.empty() || !extra.empty() || !stale.ids.empty(); }
};

/// "<name>: the mirror of 'm/v' holds … they cannot be brought in line: <e>": `errc::corrupt_file`, or
/// `e`'s `io_error` where writing the repair failed (a full disk read as a damaged store, and sent an
/// operator to the backups; a review).
[[noreturn]] void unreconcilable(const version_state& v, const reconcile_plan& p, const std::string& name,
                                 const error& e) {
  throw_error(e.code() == errc::io_error ? errc::io_error : errc::corrupt_file,
              str(name, ": the mirror of '", v.modality, "/", v.name, "' holds ", p.mirrored, " ids and the version ",
                  p.own, " (", p.missing.size(), " missing, ", p.extra.size(), " extra, ", p.changed,
                  " written since the snapshot); they cannot be brought in line: ", e.message()));
}

/// `own` and `mirrored`: the ids each holds, ascending (`collection::ids`); `name` names the manifest.
reconcile_plan plan_reconcile(const version_state& v, const link_state& l, const std::string& name,
                              const std::vector<vector_id>& own, const std::vector<vector_id>& mirrored,
                              const std::vector<vector_id>& changed) {
  reconcile_plan p;
  p.own = own.size();
  p.mirrored = mirrored.size();
  p.changed = changed.size();
  std::set_difference(own.begin(), own.end(), mirrored.begin(), mirrored.end(), std::back_inserter(p.missing));
  std::set_difference(mirrored.begin(), mirrored.end(), own.begin(), own.end(), std::back_inserter(p.extra));
  std::vector<vector_id> both;
  for (const vector_id id : changed)
    if (std::binary_search(own.begin(), own.end(), id) && std::binary_search(mirrored.begin(), mirrored.end(), id))
      both.push_back(id);
  try {
    p.stale = stale_in_mirror(v, l, both, "multimodal_store::open");
  } catch (const error& e) {  // a version that keeps only codes: its upserts cannot be checked
    if (e.code() != errc::unsupported) unreconcilable(v, p, name, e);
  }
  return p;
}

void apply_reconcile(version_state& v, const link_state& l, const reconcile_plan& p, const std::string& name) {
  try {
    if (!p.extra.empty()) l.mirror->remove(p.extra);
    if (!p.stale.ids.empty()) l.mirror->upsert(p.stale.vectors.view(), p.stale.ids);
    bool taken_back = false;
    if (!p.missing.empty()) {
      matrix<float> rows;
      try {
        rows = mirrored_vectors(v, l, p.missing, "multimodal_store::open");
      } catch (const error& e) {
        if (e.code() != errc::unsupported) throw;
        taken_back = true;  // a version that keeps only codes cannot be projected again
      }
      // Ids only the version holds come from an add the crash cut short (it never returned, and its
      // mirror append never happened): taken back where they cannot be projected.
      if (taken_back)
        v.own.remove(p.missing);
      else
        l.mirror->add(rows.view(), p.missing);
    }
    l.mirror->checkpoint();
    if (taken_back || v.own.stats().wal_records_replayed > 0) v.own.checkpoint();
  } catch (const error& e) {
    unreconcilable(v, p, name, e);
  }
}

/// Throws unless other modalities can search `t`.
void require_target(const version_state& t, const link_state& l, const char* who) {
  SHOAL_CHECK_CODE(t.searchable, errc::unsupported, who, ": modality '", t.modality, "' (version '", t.name,
                   "') was created with searchable = false: other modalities cannot search it");
  SHOAL_CHECK_CODE(l.route != shared_route::none, errc::unsupported, who, ": modality '", t.modality, "' (version '",
                   t.name,
                   "') cannot be searched from other modalities: it has no projection into the shared space (give "
                   "modality_options::to_shared, or call set_projection or fit_projection)");
}

/// Searches the shared-space index of `t` with shared-space queries `q`.
void search_shared(const version_state& t, const link_state& l, matrix_view<const float> q, neighbors_view out,
                   const search_params& params) {
  switch (l.route) {
    case shared_route::native:
      t.own.search(q, out, params);
      return;
    case shared_route::mirror:
      l.mirror->search(q, out, params);
      return;
    case shared_route::adjoint: {
      const matrix<float> back = l.from_shared->apply(q);
      t.own.search(back.view(), out, params);
      if (l.offset_bias.empty()) return;
      for (std::size_t r = 0; r < q.rows; ++r) {
        double dot = 0.0;
        for (std::size_t j = 0; j < q.dim; ++j) dot += static_cast<double>(l.offset_bias[j]) * q.row(r)[j];
        for (std::size_t j = 0; j < out.k; ++j)
          if (out.row_ids(r)[j] != no_id) out.row_distances(r)[j] -= static_cast<float>(dot);
      }
      return;
    }
    case shared_route::none:
    case shared_route::query_only:
      break;
  }
  throw_error(errc::unsupported, "multimodal_store: no shared-space index");  // require_target ran first
}

/// `search` on one catalogue snapshot.
void search_in(const catalog& c, metric shared_metric, std::string_view query_modality,
               matrix_view<const float> queries, std::string_view target, neighbors_view out,
               const search_params& params, const char* who) {
  const version_state& q = *find_version(c, query_modality, {}, who);
  const version_state& t = *find_version(c, target, {}, who);
  check_dim(q, queries, who, "queries");
  if (&q == &t) {
    q.own.search(queries, out, params);
    return;
  }
  const std::shared_ptr<const link_state> ql = q.link();
  const std::shared_ptr<const link_state> tl = t.link();
  require_target(t, *tl, who);
  if (ql->route == shared_route::native) {
    search_shared(t, *tl, queries, out, params);  // the target's index normalises cosine queries itself
  } else {
    const matrix<float> shared = into_shared(q, *ql, queries, who, "query");
    // A query that projects to zero has no direction: named as the projected query it is, not by the
    // collection searched as a query of its own.
    if (shared_metric == metric::cosine) check_normalizable(shared.view(), str(who, ": projected query").c_str());
    search_shared(t, *tl, shared.view(), out, params);
  }
}

/// Runs `f(version, link)` as a write (see `version_state::write`) on `modality`'s `version`, looking
/// it up again while a concurrent `drop_version` or `save` retires it: a write lands in the version the
/// catalogue names, or throws `errc::not_found` once the version is gone.
template <class F>
void write_version(const multimodal_state& st, std::string_view modality, std::string_view version, const char* who,
                   F&& f) {
  while (true) {
    const std::shared_ptr<version_state> v = find_version(*st.snapshot(), modality, version, who);
    if (v->write([&](const link_state& l) { f(*v, l); })) return;
    std::this_thread::yield();  // the catalogue that replaces it is about to be published
  }
}

/// Once nothing is pending, gives back the room of a large batch (a small one is kept for the next write).
void release_pending_room(version_state& v) noexcept {
  if (v.mirror_pending.empty() && v.mirror_pending.capacity() > 256)
    std::vector<pending_entry>().swap(v.mirror_pending);
}

/// Room in `v.mirror_pending` for `n` more entries, made before a version's write that its mirror
/// follows (once the version's write has gone through, recording a failed mirror write must not fail),
/// and given back at the end of the scope unless entries were recorded — a write the version refused
/// kept it until the next write went through (a review: 3.2 MB for a refused batch of 100,000).
class pending_room {
 public:
  pending_room(version_state& v, std::size_t n) : v_(v) { v.mirror_pending.reserve(v.mirror_pending.size() + n); }
  ~pending_room() { release_pending_room(v_); }
  pending_room(const pending_room&) = delete;
  pending_room& operator=(const pending_room&) = delete;

 private:
  version_state& v_;
};

/// Writes what `v.mirror_pending` holds into the mirror; throws (keeping it) if the mirror refuses again.
void apply_pending(version_state& v, const link_state& l) {
  if (v.mirror_pending.empty() || !l.mirror) return;
  std::map<vector_id, const pending_entry*> last;  // each id's latest entry
  for (const pending_entry& e : v.mirror_pending) last[e.id] = &e;
  std::vector<vector_id> present, absent;
  for (const auto& [id, e] : last) (e->rows ? present : absent).push_back(id);
  if (!present.empty()) {
    matrix<float> rows(present.size(), l.mirror->dim());
    for (std::size_t i = 0; i < present.size(); ++i) {
      const pending_entry& e = *last[present[i]];
      std::copy_n(e.rows->row(e.row), rows.dim, rows.row(i));
    }
    l.mirror->upsert(rows.view(), present);
  }
  std::erase_if(absent, [&](vector_id id) { return !l.mirror->contains(id); });
  if (!absent.empty()) l.mirror->remove(absent);
  v.mirror_pending.clear();
  release_pending_room(v);
}

/// Runs `write` (a mirror write following the version's, which went through); if it throws, records in
/// `v.mirror_pending` what the mirror should hold for `ids` — `projected`'s rows, or absence (null) —
/// and rethrows. The caller made room for that record (`pending_room`) before the version's write: the
/// handler allocates nothing.
template <class Write>
void write_mirror(version_state& v, std::span<const vector_id> ids,
                  const std::shared_ptr<const matrix<float>>& projected, Write&& write) {
  try {
    write();
  } catch (...) {
    for (std::size_t i = 0; i < ids.size(); ++i) v.mirror_pending.push_back({ids[i], projected, i});
    throw;
  }
}

/// Writes `vectors` under `ids` to a version and its mirror (`add`: all or nothing; `upsert`).
void write_vectors(const multimodal_state& st, std::string_view modality, std::string_view version,
                   matrix_view<const float> vectors, std::span<const vector_id> ids, bool is_add, const char* who) {
  write_version(st, modality, version, who, [&](version_state& v, const link_state& l) {
    check_dim(v, vectors, who, "vectors");
    if (!l.mirror) {
      is_add ? v.own.add(vectors, ids) : v.own.upsert(vectors, ids);
      return;
    }
    SHOAL_CHECK(!v.own.is_trained() || l.mirror->is_trained(), who, ": the shared-space mirror of modality '",
                v.modality, "' (version '", v.name, "') is not trained: train the version again after setting its ",
                "projection");
    SHOAL_CHECK(vectors.rows == ids.size(), who, ": ", vectors.rows, " vectors but ", ids.size(), " ids");
    const auto projected = std::make_shared<const matrix<float>>(into_shared(v, l, vectors, who, "vector"));
    // What the mirror would refuse, refused before anything changes: a projection can overflow, or map a
    // vector to zero, which has no direction under a cosine shared metric.
    check_vectors(projected->view(), projected->dim, "projected vector");
    if (l.mirror->metric() == metric::cosine) (void)normalized_copy(projected->view(), "projected vector");
    apply_pending(v, l);  // what an earlier failed mirror write left, first
    const pending_room room(v, ids.size());
    if (!is_add) {
      v.own.upsert(vectors, ids);
      write_mirror(v, ids, projected, [&] { l.mirror->upsert(projected->view(), ids); });
      return;
    }
    v.own.add(vectors, ids);
    try {
      l.mirror->add(projected->view(), ids);
    } catch (...) {
      // The version's add is taken back; where even that fails, the mirror is to hold them too.
      write_mirror(v, ids, projected, [&] { v.own.remove(ids); });
      throw;
    }
  });
}

/// Inserts `value` into a sorted vector unless present; whether it did.
bool insert_sorted(std::vector<vector_id>& v, vector_id value) {
  const auto it = std::lower_bound(v.begin(), v.end(), value);
  if (it != v.end() && *it == value) return false;
  v.insert(it, value);
  return true;
}

/// Removes the link `key` → `value` from `links` (if `value` is given and there), then `key` if it is left
/// without links. Allocates nothing: `link` takes back its links with it when it runs out of memory.
void erase_link(adjacency& links, vector_id key, std::optional<vector_id> value) noexcept {
  const auto it = links.find(key);
  if (it == links.end()) return;
  std::vector<vector_id>& targets = it->second;
  if (value) {
    const auto pos = std::lower_bound(targets.begin(), targets.end(), *value);
    if (pos != targets.end() && *pos == *value) targets.erase(pos);
  }
  if (targets.empty()) links.erase(it);
}

/// Maps one row of query-modality neighbours through `links` into `out_ids` / `out_distances` (k
/// slots), skipping targets that `targets` does not store; returns how many distinct targets the row
/// reached.
std::size_t map_row(const adjacency* links, const collection& targets, std::span<const vector_id> ids,
                    std::span<const float> distances, std::span<vector_id> out_ids, std::span<float> out_distances) {
  topk_heap best(out_ids.size());
  std::unordered_set<vector_id> seen;
  std::size_t reached = 0;
  for (std::size_t j = 0; links != nullptr && j < ids.size(); ++j) {
    if (ids[j] == no_id) continue;
    const auto it = links->find(ids[j]);
    if (it == links->end()) continue;
    // Neighbours come nearest first, so a target's first appearance is its best-ranked neighbour.
    for (const vector_id target : it->second)
      if (seen.insert(target).second && targets.contains(target)) {
        best.push(distances[j], target);
        ++reached;
      }
  }
  best.write_sorted(out_ids, out_distances);
  return reached;
}

// ------------------------------------------------------------------------------------------- manifest

constexpr std::array<char, 8> manifest_magic = {'S', 'H', 'O', 'A', 'L', 'M', 'M', 'S'};
/// 2: each version names its directories (1: `<version>/native`, and `<version>/shared` for a mirror).
constexpr std::uint16_t manifest_major = 2;
constexpr std::uint16_t manifest_minor = 0;
constexpr std::size_t manifest_header_bytes = 8 + 2 + 2 + 4 + 8;
constexpr std::uint32_t flag_native = 1u;
constexpr std::uint32_t flag_searchable = 2u;

struct manifest_version {
  std::string name;
  bool native = false;
  bool searchable = true;
  shared_route route = shared_route::none;
  std::optional<projection> to_shared;
  /// The version's directory under its modality's (the collection in `<dir>/native`), and its
  /// mirror's under that (empty: no mirror); see `save`.
  std::string dir, mirror_dir;
};
struct manifest_modality {
  std::string name;
  std::string active;
  std::vector<manifest_version> versions;
};
struct manifest_links {
  std::string a, b;
  std::vector<std::pair<vector_id, vector_id>> pairs;
};
struct manifest {
  multimodal_options shared;
  std::vector<manifest_modality> modalities;
  std::vector<manifest_links> links;
};

/// Fixed-width fields appended to a byte buffer in host byte order, which is little-endian
/// (io/file_util.hpp refuses to build for any other).
class byte_sink {
 public:
  template <class T>
  void put(T value) {
    static_assert(std::is_trivially_copyable_v<T>);
    const auto* p = reinterpret_cast<const std::byte*>(&value);
    bytes_.insert(bytes_.end(), p, p + sizeof(T));
  }
  void put_bytes(std::span<const std::byte> b) {
    put<std::uint64_t>(b.size());
    bytes_.insert(bytes_.end(), b.begin(), b.end());
  }
  void put_string(std::string_view s) { put_bytes(std::as_bytes(std::span<const char>(s.data(), s.size()))); }
  [[nodiscard]] std::vector<std::byte>& bytes() noexcept { return bytes_; }

 private:
  std::vector<std::byte> bytes_;
};

/// Reads what `byte_sink` wrote; every read is bounds-checked (`errc::corrupt_file`).
class byte_source {
 public:
  byte_source(std::span<const std::byte> bytes, std::string name) : bytes_(bytes), name_(std::move(name)) {}
  template <class T>
  [[nodiscard]] T get() {
    static_assert(std::is_trivially_copyable_v<T>);
    T value{};
    std::memcpy(&value, take(sizeof(T)).data(), sizeof(T));
    return value;
  }
  [[nodiscard]] std::span<const std::byte> get_bytes() { return take(get<std::uint64_t>()); }
  [[nodiscard]] std::string get_string() {
    const std::span<const std::byte> b = get_bytes();
    return {reinterpret_cast<const char*>(b.data()), b.size()};
  }
  [[nodiscard]] std::size_t left() const noexcept { return bytes_.size() - pos_; }
  [[nodiscard]] const std::string& name() const noexcept { return name_; }

 private:
  std::span<const std::byte> take(std::uint64_t n) {
    SHOAL_CHECK_CODE(n <= left(), errc::corrupt_file, name_, ": truncated manifest (", n, " bytes wanted at byte ",
                     pos_, " of the body, ", left(), " left)");
    const std::span<const std::byte> out = bytes_.subspan(pos_, static_cast<std::size_t>(n));
    pos_ += static_cast<std::size_t>(n);
    return out;
  }
  std::span<const std::byte> bytes_;
  std::size_t pos_ = 0;
  std::string name_;
};

std::vector<std::byte> encode(const manifest& m) {
  byte_sink body;
  body.put<std::uint64_t>(m.shared.shared_dim);
  body.put<std::uint32_t>(static_cast<std::uint32_t>(m.shared.shared_metric));
  body.put<std::uint32_t>(static_cast<std::uint32_t>(m.modalities.size()));
  for (const manifest_modality& mod : m.modalities) {
    body.put_string(mod.name);
    body.put_string(mod.active);
    body.put<std::uint32_t>(static_cast<std::uint32_t>(mod.versions.size()));
    for (const manifest_version& v : mod.versions) {
      body.put_string(v.name);
      body.put<std::uint32_t>((v.native ? flag_native : 0u) | (v.searchable ? flag_searchable : 0u));
      body.put<std::uint32_t>(static_cast<std::uint32_t>(v.route));
      body.put_bytes(v.to_shared ? v.to_shared->serialize() : std::vector<std::byte>{});
      body.put_string(v.dir);
      body.put_string(v.mirror_dir);
    }
  }
  body.put<std::uint32_t>(static_cast<std::uint32_t>(m.links.size()));
  for (const manifest_links& l : m.links) {
    body.put_string(l.a);
    body.put_string(l.b);
    body.put<std::uint64_t>(l.pairs.size());
    for (const auto& [a, b] : l.pairs) {
      body.put<std::uint64_t>(a);
      body.put<std::uint64_t>(b);
    }
  }
  byte_sink file;
  for (const char c : manifest_magic) file.put(c);
  file.put<std::uint16_t>(manifest_major);
  file.put<std::uint16_t>(manifest_minor);
  file.put<std::uint32_t>(0);
  file.put<std::uint64_t>(body.bytes().size());
  std::vector<std::byte> out = std::move(file.bytes());
  out.insert(out.end(), body.bytes().begin(), body.bytes().end());
  const std::uint32_t crc = crc32c(out.data(), out.size());
  const auto* p = reinterpret_cast<const std::byte*>(&crc);
  out.insert(out.end(), p, p + sizeof crc);
  return out;
}

std::string checked_name(byte_source& in, const char* what) {
  std::string name = in.get_string();
  SHOAL_CHECK_CODE(valid_name(name), errc::corrupt_file, in.name(), ": invalid ", what, " name \"", name, "\"");
  return name;
}

/// Whether `dir` is a directory name a save chooses: a name, or a name and "+<n>" (see `next_dir`).
bool valid_dir(std::string_view dir) noexcept {
  const std::size_t plus = dir.find('+');
  if (!valid_name(dir.substr(0, plus))) return false;
  if (plus == std::string_view::npos) return true;
  const std::string_view n = dir.substr(plus + 1);
  return !n.empty() && n.size() <= 20 && std::all_of(n.begin(), n.end(), [](char c) { return c >= '0' && c <= '9'; });
}

manifest decode(std::span<const std::byte> bytes, const std::string& name) {
  SHOAL_CHECK_CODE(bytes.size() >= manifest_header_bytes + 4 &&
                       std::memcmp(bytes.data(), manifest_magic.data(), manifest_magic.size()) == 0,
                   errc::corrupt_file, name, ": not a multimodal store manifest");
  byte_source header(bytes.subspan(manifest_magic.size()), name);
  const auto major = header.get<std::uint16_t>();
  (void)header.get<std::uint16_t>();  // minor versions only add meaning to reserved fields
  const auto reserved = header.get<std::uint32_t>();
  const auto body_bytes = header.get<std::uint64_t>();
  SHOAL_CHECK_CODE(major <= manifest_major, errc::unsupported, name, ": manifest format ", major,
                   " is newer than this library's (", manifest_major, ")");
  SHOAL_CHECK_CODE(reserved == 0, errc::corrupt_file, name, ": non-zero reserved field");
  SHOAL_CHECK_CODE(body_bytes == bytes.size() - manifest_header_bytes - 4, errc::corrupt_file, name, ": the header ",
                   "says ", body_bytes, " body bytes, the file holds ", bytes.size() - manifest_header_bytes - 4);
  std::uint32_t stored_crc = 0;
  std::memcpy(&stored_crc, bytes.data() + bytes.size() - 4, 4);
  SHOAL_CHECK_CODE(crc32c(bytes.data(), bytes.size() - 4) == stored_crc, errc::corrupt_file, name,
                   ": checksum mismatch");

  byte_source in(bytes.subspan(manifest_header_bytes, static_cast<std::size_t>(body_bytes)), name);
  manifest m;
  m.shared.shared_dim = in.get<std::uint64_t>();
  const auto shared_metric = in.get<std::uint32_t>();
  // Within what the constructor takes (a shared dimension past max_dim opened with no modality to refuse it).
  SHOAL_CHECK_CODE(m.shared.shared_dim >= 1 && m.shared.shared_dim <= max_dim &&
                       shared_metric <= static_cast<std::uint32_t>(metric::cosine),
                   errc::corrupt_file, name, ": invalid shared space");
  m.shared.shared_metric = static_cast<metric>(shared_metric);
  const auto modalities = in.get<std::uint32_t>();
  for (std::uint32_t i = 0; i < modalities; ++i) {
    manifest_modality& mod = m.modalities.emplace_back();
    mod.name = checked_name(in, "modality");
    mod.active = checked_name(in, "version");
    const auto versions = in.get<std::uint32_t>();
    for (std::uint32_t j = 0; j < versions; ++j) {
      manifest_version& v = mod.versions.emplace_back();
      v.name = checked_name(in, "version");
      const auto flags = in.get<std::uint32_t>();
      const auto route = in.get<std::uint32_t>();
      SHOAL_CHECK_CODE(
          flags <= (flag_native | flag_searchable) && route <= static_cast<std::uint32_t>(shared_route::query_only),
          errc::corrupt_file, name, ": invalid flags or route of ", mod.name, "/", v.name);
      v.native = (flags & flag_native) != 0;
      v.searchable = (flags & flag_searchable) != 0;
      v.route = static_cast<shared_route>(route);
      const std::span<const std::byte> p = in.get_bytes();
      if (!p.empty()) {
        try {  // named: the projection's own message does not say which file or modality
          v.to_shared = projection::deserialize(p);
        } catch (const error& e) {
          detail::throw_error(errc::corrupt_file,
                              detail::str(name, ": projection of ", mod.name, "/", v.name, ": ", e.message()));
        }
      }
      const bool mirrored = v.route == shared_route::mirror;
      if (major >= 2) {
        v.dir = in.get_string();
        v.mirror_dir = in.get_string();
        SHOAL_CHECK_CODE(
            valid_dir(v.dir) && (mirrored ? valid_dir(v.mirror_dir) && v.mirror_dir != "native" : v.mirror_dir.empty()),
            errc::corrupt_file, name, ": invalid directories \"", v.dir, "\", \"", v.mirror_dir, "\" of ", mod.name,
            "/", v.name);
      } else {
        v.dir = v.name;
        v.mirror_dir = mirrored ? "shared" : "";
      }
    }
  }
  const auto blocks = in.get<std::uint32_t>();
  for (std::uint32_t i = 0; i < blocks; ++i) {
    manifest_links& l = m.links.emplace_back();
    l.a = checked_name(in, "modality");
    l.b = checked_name(in, "modality");
    const auto count = in.get<std::uint64_t>();
    SHOAL_CHECK_CODE(count <= in.left() / 16, errc::corrupt_file, name, ": ", count, " links do not fit the file");
    l.pairs.resize(static_cast<std::size_t>(count));
    for (auto& [a, b] : l.pairs) {
      a = in.get<vector_id>();
      b = in.get<vector_id>();
    }
  }
  SHOAL_CHECK_CODE(in.left() == 0, errc::corrupt_file, name, ": ", in.left(), " unexpected bytes after the manifest");
  return m;
}

manifest read_manifest(const std::filesystem::path& path) {
  const io::detail::input_file file(path);
  std::vector<std::byte> bytes(static_cast<std::size_t>(file.size()));
  file.read_at(0, bytes.data(), bytes.size());
  return decode(bytes, file.name());
}

std::filesystem::path version_dir(const std::filesystem::path& root, std::string_view modality, std::string_view dir) {
  return root / std::string(modality) / std::string(dir);
}

/// The previous manifest's entry for `modality`/`version`, or null.
const manifest_version* find_saved(const std::optional<manifest>& m, std::string_view modality,
                                   std::string_view version) {
  if (!m) return nullptr;
  for (const manifest_modality& mod : m->modalities)
    if (mod.name == modality)
      for (const manifest_version& v : mod.versions)
        if (v.name == version) return &v;
  return nullptr;
}

/// The name of the directory under `parent` that `c` keeps its log in (in `<name>/<leaf>`, or in
/// `<name>` itself when `leaf` is empty), or nothing.
std::optional<std::string> dir_under(const collection& c, const std::filesystem::path& parent, std::string_view leaf) {
  std::filesystem::path dir = c.options().directory;
  if (dir.empty()) return std::nullopt;
  if (!leaf.empty()) {
    if (dir.filename() != leaf) return std::nullopt;
    dir = dir.parent_path();
  }
  std::error_code ec;
  if (!std::filesystem::equivalent(dir.parent_path(), parent, ec)) return std::nullopt;
  std::string name = dir.filename().string();
  if (!valid_dir(name)) return std::nullopt;
  return name;
}

/// A directory beside `previous` for a collection that must not overwrite it: `base+<n + 1>`, where
/// `previous` is `base` or `base+<n>`.
std::string next_dir(std::string_view base, std::string_view previous) {
  std::uint64_t n = 0;
  if (const std::size_t plus = previous.find('+'); plus != std::string_view::npos)
    std::from_chars(previous.data() + plus + 1, previous.data() + previous.size(), n);
  return std::string(base) + "+" + std::to_string(n + 1);
}

/// Best effort, once `m` is the manifest: deletes what it does not name in the modalities' directories
/// (what earlier saves wrote, what a crashed save left), and the directories of modalities that
/// `previous` had and `m` has not.
void remove_unnamed(const std::filesystem::path& directory, const manifest& m,
                    const std::optional<manifest>& previous) noexcept {
  try {
    for (const manifest_modality& old : previous ? previous->modalities : std::vector<manifest_modality>{})
      if (std::none_of(m.modalities.begin(), m.modalities.end(), [&](const auto& x) { return x.name == old.name; }))
        io::detail::remove_tree(directory / old.name);
    for (const manifest_modality& mod : m.modalities)
      for (const std::string& dir : io::detail::directory_entries(directory / mod.name)) {
        const auto v = std::find_if(mod.versions.begin(), mod.versions.end(),
                                    [&](const manifest_version& x) { return x.dir == dir; });
        if (v == mod.versions.end()) {
          io::detail::remove_tree(directory / mod.name / dir);
          continue;
        }
        for (const std::string& inner : io::detail::directory_entries(directory / mod.name / dir))
          if (inner != "native" && inner != v->mirror_dir) io::detail::remove_tree(directory / mod.name / dir / inner);
      }
  } catch (const std::bad_alloc&) {  // the manifest is in place: a save that worked does not fail
  }
}

}  // namespace
}  // namespace detail

using detail::find_version;

// ---------------------------------------------------------------------------------------- construction

multimodal_store::multimodal_store(const multimodal_options& options)
    : state_(std::make_unique<detail::multimodal_state>(options)) {
  detail::check_dimension(options.shared_dim, "multimodal_store: the shared dimension");
  detail::check_metric(options.shared_metric, "multimodal_store: the shared metric");
}
multimodal_store::multimodal_store(std::unique_ptr<detail::multimodal_state> state) : state_(std::move(state)) {}
multimodal_store::multimodal_store(multimodal_store&& other) noexcept = default;
multimodal_store& multimodal_store::operator=(multimodal_store&& other) noexcept = default;
multimodal_store::~multimodal_store() = default;

std::size_t multimodal_store::shared_dim() const noexcept { return state_->options.shared_dim; }
metric multimodal_store::shared_metric() const noexcept { return state_->options.shared_metric; }

// ------------------------------------------------------------------------------ modalities and versions

namespace {

std::shared_ptr<detail::version_state> new_version(std::string_view modality, std::string_view version,
                                                   const modality_options& options, const multimodal_options& shared,
                                                   const char* who) {
  detail::check_name(modality, "modality", who);
  detail::check_name(version, "version", who);
  detail::check_options(options, shared, modality, who);
  auto v = std::make_shared<detail::version_state>(std::string(modality), std::string(version), options.native,
                                                   options.searchable, collection(options.collection));
  v->set_link(detail::make_link(*v, options.to_shared, shared));
  return v;
}

}  // namespace

void multimodal_store::add_modality(std::string_view name, const modality_options& options, std::string_view version) {
  constexpr const char* who = "multimodal_store::add_modality";
  auto v = new_version(name, version, options, state_->options, who);
  state_->modify([&](detail::catalog& c) {
    SHOAL_CHECK(!c.modalities.contains(name), who, ": modality '", name, "' exists already");
    detail::modality_entry& m = c.modalities[std::string(name)];
    m.versions.emplace(std::string(version), v);
    m.active = std::move(v);
  });
}

void multimodal_store::add_version(std::string_view modality, std::string_view version,
                                   const modality_options& options) {
  constexpr const char* who = "multimodal_store::add_version";
  (void)detail::find_modality(*state_->snapshot(), modality, who);
  auto v = new_version(modality, version, options, state_->options, who);
  state_->modify([&](detail::catalog& c) {
    detail::find_modality(c, modality, who);
    detail::modality_entry& m = c.modalities.find(modality)->second;
    SHOAL_CHECK(!m.versions.contains(version), who, ": modality '", modality, "' has a version '", version,
                "' already");
    m.versions.emplace(std::string(version), std::move(v));
  });
}

void multimodal_store::activate(std::string_view modality, std::string_view version) {
  constexpr const char* who = "multimodal_store::activate";
  SHOAL_CHECK_CODE(!version.empty(), errc::not_found, who, ": no version named");
  state_->modify([&](detail::catalog& c) {
    auto v = find_version(c, modality, version, who);
    c.modalities.find(modality)->second.active = std::move(v);
  });
}

void multimodal_store::drop_version(std::string_view modality, std::string_view version) {
  constexpr const char* who = "multimodal_store::drop_version";
  SHOAL_CHECK_CODE(!version.empty(), errc::not_found, who, ": no version named");
  state_->modify([&](detail::catalog& c) {
    const auto& v = find_version(c, modality, version, who);
    detail::modality_entry& m = c.modalities.find(modality)->second;
    SHOAL_CHECK(v != m.active, who, ": version '", version, "' of modality '", modality,
                "' is active: activate another version first");
    // Writes in flight finish first; later ones find the version gone (errc::not_found).
    v->retire(v->hold());
    m.versions.erase(m.versions.find(version));
  });
}

std::vector<std::string> multimodal_store::modalities() const {
  // The catalogue held for the loop: a range-for over `snapshot()->modalities` would drop the temporary
  // pointer before the body ran (C++20), and a concurrent catalogue change free what it walks.
  const auto c = state_->snapshot();
  std::vector<std::string> out;
  for (const auto& [name, m] : c->modalities) out.push_back(name);
  return out;
}

std::vector<std::string> multimodal_store::versions(std::string_view modality) const {
  const auto c = state_->snapshot();
  std::vector<std::string> out;
  for (const auto& [name, v] : detail::find_modality(*c, modality, "multimodal_store::versions").versions)
    out.push_back(name);
  return out;
}

std::string multimodal_store::active_version(std::string_view modality) const {
  return find_version(*state_->snapshot(), modality, {}, "multimodal_store::active_version")->name;
}

modality_info multimodal_store::info(std::string_view modality, std::string_view version) const {
  const auto c = state_->snapshot();
  const std::shared_ptr<detail::version_state> v = find_version(*c, modality, version, "multimodal_store::info");
  const std::shared_ptr<const detail::link_state> l = v->link();
  modality_info out;
  out.modality = v->modality;
  out.version = v->name;
  out.active = v == c->modalities.find(modality)->second.active;
  out.collection = v->own.options();
  out.native = v->native;
  out.searchable = v->searchable;
  out.route = l->route;
  out.to_shared = l->to_shared;
  out.size = v->own.size();
  out.memory_bytes = v->own.memory_bytes();
  out.mirror_bytes = l->mirror ? l->mirror->memory_bytes() : 0;
  return out;
}

std::size_t multimodal_store::memory_bytes() const {
  const auto c = state_->snapshot();  // held for the loop, as in modalities()
  std::size_t bytes = 0;
  for (const auto& [name, m] : c->modalities)
    for (const auto& [version, v] : m.versions) {
      bytes += v->own.memory_bytes();
      if (const auto l = v->link(); l->mirror) bytes += l->mirror->memory_bytes();
    }
  return bytes;
}

// ----------------------------------------------------------------------------------------- projections

void multimodal_store::set_projection(std::string_view modality, const projection& to_shared,
                                      std::string_view version) {
  constexpr const char* who = "multimodal_store::set_projection";
  while (true) {  // again while a concurrent drop_version or save retires the version
    const std::shared_ptr<detail::version_state> v = find_version(*state_->snapshot(), modality, version, who);
    SHOAL_CHECK(!v->native, who, ": modality '", modality, "' is native to the shared space and takes no projection");
    detail::check_projection_fits(to_shared, v->dim(), state_->options.shared_dim, modality, who);
    if (v->exclusive([&] {
          auto next = detail::make_link(*v, to_shared, state_->options);
          // A mirror holds projected vectors: a new projection needs a new mirror, filled from the start.
          const std::size_t stored = v->own.size();
          SHOAL_CHECK_CODE(next->route != shared_route::mirror || stored == 0, errc::unsupported, who, ": modality '",
                           modality, "' (version '", v->name, "') holds ", stored,
                           " vectors and its projection needs a new mirror of projected vectors, which is not ",
                           "refilled in place: set the projection before adding, or add a version and activate it");
          v->set_link(std::move(next));
          v->mirror_pending.clear();  // the old mirror's: the new link has no mirror or an empty one
        }))
      return;
    std::this_thread::yield();
  }
}

projection multimodal_store::fit_projection(std::string_view modality, matrix_view<const float> x,
                                            matrix_view<const float> y, const projection_fit& fit,
                                            std::string_view version) {
  constexpr const char* who = "multimodal_store::fit_projection";
  SHOAL_CHECK(fit.method == projection_method::ridge || fit.method == projection_method::procrustes, who,
              ": unknown projection_method ", static_cast<int>(fit.method));
  const std::shared_ptr<detail::version_state> v = find_version(*state_->snapshot(), modality, version, who);
  // Before the solve (set_projection checks again, under its retries).
  SHOAL_CHECK(!v->native, who, ": modality '", modality, "' is native to the shared space and takes no projection");
  detail::check_dim(*v, x, who, "x rows");
  SHOAL_CHECK_CODE(y.dim == state_->options.shared_dim, errc::dimension_mismatch, who, ": y rows have dimension ",
                   y.dim, ", the shared space has ", state_->options.shared_dim);
  // NaN/Inf first (errc::non_finite): normalising would report it as a zero or overflowing norm.
  detail::check_vectors(x, x.dim, "x");
  detail::check_vectors(y, y.dim, "y");
  matrix<float> x_unit, y_unit;
  if (v->own_metric() == metric::cosine) x = (x_unit = detail::normalized_copy(x, "x")).view();
  if (state_->options.shared_metric == metric::cosine) y = (y_unit = detail::normalized_copy(y, "y")).view();
  projection p = fit.method == projection_method::procrustes ? projection::fit_procrustes(x, y, fit.fit_bias)
                                                             : projection::fit_ridge(x, y, fit.lambda, fit.fit_bias);
  set_projection(modality, p, v->name);
  return p;
}

matrix<float> multimodal_store::to_shared(std::string_view modality, matrix_view<const float> vectors) const {
  constexpr const char* who = "multimodal_store::to_shared";
  const std::shared_ptr<detail::version_state> v = find_version(*state_->snapshot(), modality, {}, who);
  detail::check_dim(*v, vectors, who, "vectors");
  return detail::into_shared(*v, *v->link(), vectors, who, "vector");
}

// ---------------------------------------------------------------------------------------------- writes

void multimodal_store::train(std::string_view modality, matrix_view<const float> sample, std::string_view version) {
  constexpr const char* who = "multimodal_store::train";
  detail::write_version(*state_, modality, version, who, [&](detail::version_state& v, const detail::link_state& l) {
    detail::check_dim(v, sample, who, "training vectors");
    // The projected sample is checked before anything trains: a collection ignores a second `train`
    // once trained, so a sample that the mirror refused (a row projecting to zero under a cosine shared
    // metric, say) left the version trained on it, and a corrected sample was ignored (a review, session
    // 38). The check goes a block of rows at a time and the mirror's sample is projected again after the
    // version has trained, so no projected copy is held through that training. What the mirror can
    // still refuse after the version trained is the sample's size, where its index needs more rows.
    constexpr std::size_t block = 4096;
    const auto projected = [&](std::size_t first, std::size_t rows) {
      // Rows are named from the block's start: "sample from row 4096: row 7".
      const std::string rows_name = first == 0 ? std::string("sample") : detail::str("sample from row ", first, ":");
      matrix<float> p = detail::into_shared(v, l, sample.slice(first, rows), who, rows_name.c_str());
      if (l.mirror->metric() == metric::cosine)
        detail::check_normalizable(p.view(), detail::str(who, ": projected ", rows_name).c_str());
      return p;
    };
    if (l.mirror)
      for (std::size_t first = 0; first < sample.rows; first += block)
        (void)projected(first, std::min(block, sample.rows - first));
    v.own.train(sample);
    if (l.mirror) l.mirror->train(projected(0, sample.rows).view());
  });
}

void multimodal_store::add(std::string_view modality, matrix_view<const float> vectors, std::span<const vector_id> ids,
                           std::string_view version) {
  detail::write_vectors(*state_, modality, version, vectors, ids, true, "multimodal_store::add");
}

void multimodal_store::upsert(std::string_view modality, matrix_view<const float> vectors,
                              std::span<const vector_id> ids, std::string_view version) {
  detail::write_vectors(*state_, modality, version, vectors, ids, false, "multimodal_store::upsert");
}

void multimodal_store::remove(std::string_view modality, std::span<const vector_id> ids, std::string_view version) {
  detail::write_version(*state_, modality, version, "multimodal_store::remove",
                        [&](detail::version_state& v, const detail::link_state& l) {
                          detail::apply_pending(v, l);
                          // Only what the mirror holds: a mirror that missed a write (a crash between the
                          // two logs) must not turn a remove that went through into an error. Listed
                          // before the version's remove: out of memory between the two left the mirror
                          // holding the removed ids with nothing recorded to repair it (a review).
                          std::vector<vector_id> mirrored;
                          if (l.mirror) {
                            mirrored.reserve(ids.size());
                            for (const vector_id id : ids)
                              if (l.mirror->contains(id)) mirrored.push_back(id);
                          }
                          const detail::pending_room room(v, mirrored.size());
                          v.own.remove(ids);  // errc::not_found before removing anything
                          if (!mirrored.empty())
                            detail::write_mirror(v, mirrored, nullptr, [&] { l.mirror->remove(mirrored); });
                        });
}

std::size_t multimodal_store::size(std::string_view modality, std::string_view version) const {
  return find_version(*state_->snapshot(), modality, version, "multimodal_store::size")->own.size();
}

bool multimodal_store::contains(std::string_view modality, vector_id id, std::string_view version) const {
  return find_version(*state_->snapshot(), modality, version, "multimodal_store::contains")->own.contains(id);
}

// ------------------------------------------------------------------------------------------ paired ids

namespace {

void check_link_args(const detail::catalog& c, std::string_view a, std::span<const vector_id> ids_a, std::string_view b,
                     std::span<const vector_id> ids_b, const char* who) {
  (void)detail::find_modality(c, a, who);
  (void)detail::find_modality(c, b, who);
  SHOAL_CHECK(a != b, who, ": links join two different modalities, not '", a, "' with itself");
  SHOAL_CHECK(ids_a.size() == ids_b.size(), who, ": ", ids_a.size(), " ids of '", a, "' but ", ids_b.size(), " of '", b,
              "'");
  detail::check_ids(ids_a, ids_a.size(), who);  // no_id is reserved: it marks a missing result
  detail::check_ids(ids_b, ids_b.size(), who);
}

}  // namespace

void multimodal_store::link(std::string_view a, std::span<const vector_id> ids_a, std::string_view b,
                            std::span<const vector_id> ids_b) {
  check_link_args(*state_->snapshot(), a, ids_a, b, ids_b, "multimodal_store::link");
  const std::pair<std::string, std::string> key_ab{a, b}, key_ba{b, a};
  std::vector<std::uint8_t> made(2 * ids_a.size(), 0);  // which links this call added, each direction
  const std::unique_lock lock(state_->pairs_mutex);
  auto& pairs = state_->pairs;
  const bool had_ab = pairs.contains(key_ab), had_ba = pairs.contains(key_ba);
  detail::adjacency* ab = nullptr;
  detail::adjacency* ba = nullptr;
  try {
    ab = &pairs[key_ab];
    ba = &pairs[key_ba];
    for (std::size_t i = 0; i < ids_a.size(); ++i) {
      made[2 * i] = detail::insert_sorted((*ab)[ids_a[i]], ids_b[i]) ? 1 : 0;
      made[2 * i + 1] = detail::insert_sorted((*ba)[ids_b[i]], ids_a[i]) ? 1 : 0;
    }
  } catch (...) {
    // Out of memory part-way: every link this call added goes again (and ids or tables it left without
    // links), so that no pair is left linked in one direction only. Erasing allocates nothing.
    for (std::size_t i = ids_a.size(); i-- > 0;) {
      if (ba != nullptr) detail::erase_link(*ba, ids_b[i], made[2 * i + 1] ? std::optional(ids_a[i]) : std::nullopt);
      if (ab != nullptr) detail::erase_link(*ab, ids_a[i], made[2 * i] ? std::optional(ids_b[i]) : std::nullopt);
    }
    if (!had_ab && ab != nullptr && ab->empty()) pairs.erase(key_ab);
    if (!had_ba && ba != nullptr && ba->empty()) pairs.erase(key_ba);
    throw;
  }
}

void multimodal_store::unlink(std::string_view a, std::span<const vector_id> ids_a, std::string_view b,
                              std::span<const vector_id> ids_b) {
  check_link_args(*state_->snapshot(), a, ids_a, b, ids_b, "multimodal_store::unlink");
  const std::unique_lock lock(state_->pairs_mutex);
  // Both tables found first (their keys allocate): the erasing below allocates nothing, so it cannot stop
  // part-way and leave a pair linked in one direction only.
  const auto ab = state_->pairs.find({std::string(a), std::string(b)});
  const auto ba = state_->pairs.find({std::string(b), std::string(a)});
  for (std::size_t i = 0; i < ids_a.size(); ++i) {
    if (ab != state_->pairs.end()) detail::erase_link(ab->second, ids_a[i], ids_b[i]);
    if (ba != state_->pairs.end()) detail::erase_link(ba->second, ids_b[i], ids_a[i]);
  }
}

std::vector<vector_id> multimodal_store::linked(std::string_view from, vector_id id, std::string_view to) const {
  check_link_args(*state_->snapshot(), from, {}, to, {}, "multimodal_store::linked");
  const std::shared_lock lock(state_->pairs_mutex);
  const auto table = state_->pairs.find({std::string(from), std::string(to)});
  if (table == state_->pairs.end()) return {};
  const auto it = table->second.find(id);
  return it == table->second.end() ? std::vector<vector_id>{} : it->second;
}

std::size_t multimodal_store::link_count(std::string_view a, std::string_view b) const {
  check_link_args(*state_->snapshot(), a, {}, b, {}, "multimodal_store::link_count");
  const std::shared_lock lock(state_->pairs_mutex);
  const auto table = state_->pairs.find({std::string(a), std::string(b)});
  std::size_t n = 0;
  if (table != state_->pairs.end())
    for (const auto& [id, targets] : table->second) n += targets.size();
  return n;
}

// ---------------------------------------------------------------------------------------------- search

void multimodal_store::search(std::string_view query_modality, matrix_view<const float> queries,
                              std::string_view target, neighbors_view out, const search_params& params) const {
  detail::search_in(*state_->snapshot(), state_->options.shared_metric, query_modality, queries, target, out, params,
                    "multimodal_store::search");
}

neighbors multimodal_store::search(std::string_view query_modality, matrix_view<const float> queries,
                                   std::string_view target, std::size_t k, const search_params& params) const {
  SHOAL_CHECK(k >= 1, "multimodal_store::search: k must be at least 1");
  neighbors out(queries.rows, k);
  search(query_modality, queries, target, out.view(), params);
  return out;
}

neighbors multimodal_store::search_via_pairs(std::string_view query_modality, matrix_view<const float> queries,
                                             std::string_view target, std::size_t k, const search_params& params,
                                             std::size_t source_k) const {
  constexpr const char* who = "multimodal_store::search_via_pairs";
  SHOAL_CHECK(k >= 1, who, ": k must be at least 1");
  const auto c = state_->snapshot();
  const detail::version_state& q = *find_version(*c, query_modality, {}, who);
  const detail::version_state& t = *find_version(*c, target, {}, who);
  SHOAL_CHECK(query_modality != target, who, ": the target must be another modality than the queries' ('",
              query_modality, "')");
  detail::check_dim(q, queries, who, "queries");
  detail::check_vectors(queries, queries.dim,
                        detail::str(who, ": query").c_str());  // also when nothing is stored to search
  neighbors out(queries.rows, k);
  const std::size_t stored = q.own.size();
  if (stored == 0 || queries.rows == 0) return out;

  std::size_t depth = std::min(stored, source_k > 0 ? source_k : 4 * k);
  std::vector<std::size_t> pending(queries.rows);
  std::iota(pending.begin(), pending.end(), std::size_t{0});
  const std::pair<std::string, std::string> direction{std::string(query_modality), std::string(target)};
  while (true) {
    matrix<float> subset;
    if (pending.size() < queries.rows) {
      subset = matrix<float>(pending.size(), queries.dim);
      for (std::size_t i = 0; i < pending.size(); ++i) std::copy_n(queries.row(pending[i]), queries.dim, subset.row(i));
    }
    const neighbors found = q.own.search(pending.size() < queries.rows ? subset.view() : queries, depth, params);
    std::vector<std::size_t> short_rows;
    {
      const std::shared_lock lock(state_->pairs_mutex);
      const auto table = state_->pairs.find(direction);
      const detail::adjacency* links = table == state_->pairs.end() ? nullptr : &table->second;
      for (std::size_t i = 0; i < pending.size(); ++i) {
        const std::size_t row = pending[i];
        const std::size_t reached = detail::map_row(links, t.own, found.row_ids(i), found.row_distances(i),
                                                    out.view().row_ids(row), out.view().row_distances(row));
        // Deeper too where the last neighbour seen ties with the k-th target: a neighbour past the depth
        // at that distance may link a smaller target id, which (distance, id) order puts first.
        const bool tie_at_cut =
            found.id(i, depth - 1) != no_id && found.distance(i, depth - 1) <= out.distance(row, k - 1);
        if (reached < k || tie_at_cut) short_rows.push_back(row);
      }
    }
    if (short_rows.empty() || source_k > 0 || depth >= stored) break;
    depth = std::min(stored, depth * 4);
    pending = std::move(short_rows);
  }
  return out;
}

std::vector<std::vector<fused_id>> multimodal_store::search_fused(std::span<const modal_query> parts,
                                                                  std::string_view target, std::size_t k,
                                                                  const fusion_options& options,
                                                                  const search_params& params) const {
  constexpr const char* who = "multimodal_store::search_fused";
  SHOAL_CHECK(!parts.empty(), who, ": no query parts");
  SHOAL_CHECK(k >= 1, who, ": k must be at least 1");
  const std::size_t rows = parts.front().vectors.rows;
  for (const modal_query& p : parts)
    SHOAL_CHECK(p.vectors.rows == rows, who, ": part '", p.modality, "' has ", p.vectors.rows, " queries, the first ",
                rows, " (query r is row r of every part)");
  std::vector<float> weights;
  for (const modal_query& p : parts) {
    // Named by the part here: the fusion's own message numbers the weight of its list ("weight 0").
    SHOAL_CHECK(std::isfinite(p.weight) && p.weight >= 0.0f, who, ": part '", p.modality, "' has weight ", p.weight,
                "; weights must be finite and >= 0");
    weights.push_back(p.weight);
  }
  const auto fuse = [&](std::span<const candidate_list> lists) {
    switch (options.rule) {
      case fusion_rule::reciprocal_rank:
        return reciprocal_rank_fusion(lists, k, weights, options.rrf_k);
      case fusion_rule::weighted_score:
        return weighted_score_fusion(lists, k, options.normalization, weights);
      case fusion_rule::intersection:
        return intersection_fusion(lists, k, weights);
    }
    SHOAL_CHECK(false, who, ": unknown fusion rule ", static_cast<int>(options.rule));
    return std::vector<fused_id>{};
  };
  // The fusion's own checks (weights, rrf_k, rule) on empty lists: bad options are refused before any
  // search, also when there are no query rows.
  (void)fuse(std::vector<candidate_list>(parts.size()));
  const auto c = state_->snapshot();  // every part on the same versions
  // A part cannot find more candidates than the target holds: a deeper list would be padding, and a
  // k or `candidates` meant as "all" would ask for memory the search cannot use.
  const std::size_t held = std::max<std::size_t>(1, find_version(*c, target, {}, who)->own.size());
  const std::size_t depth = std::min(held, options.candidates > 0 ? options.candidates : 4 * std::min(k, held));
  std::vector<neighbors> found;
  for (const modal_query& p : parts) {
    found.emplace_back(rows, depth);
    detail::search_in(*c, state_->options.shared_metric, p.modality, p.vectors, target, found.back().view(), params,
                      who);
  }
  std::vector<std::vector<fused_id>> out(rows);
  std::vector<candidate_list> lists(parts.size());
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t i = 0; i < parts.size(); ++i) lists[i] = {found[i].row_ids(r), found[i].row_distances(r)};
    out[r] = fuse(lists);
  }
  return out;
}

// ----------------------------------------------------------------------------------------- persistence

void multimodal_store::save(const std::filesystem::path& directory) const {
  constexpr const char* who = "multimodal_store::save";
  std::error_code ec;
  io::detail::create_directories_durably(directory, ec);
  SHOAL_CHECK_CODE(!ec, errc::io_error, who, ": cannot create ", directory.string(), ": ", ec.message());
  const std::filesystem::path manifest_path = directory / detail::manifest_name;
  detail::multimodal_state& st = *state_;
  // Catalogue changes and other saves wait, so that the manifest names what was saved and the previous
  // manifest read here is the one this save replaces.
  const std::lock_guard admin(st.admin_mutex);
  std::optional<detail::manifest> previous;
  if (std::filesystem::exists(manifest_path, ec)) {
    try {
      previous = detail::read_manifest(manifest_path);
    } catch (const error& e) {
      // A newer store is not overwritten; a damaged manifest is replaced (its collections in place).
      if (e.code() == errc::unsupported) throw;
    }
  }
  std::error_code home_ec;
  const bool home = !st.home.empty() && std::filesystem::equivalent(directory, st.home, home_ec);
  // Collections made since `open` (new versions, new mirrors) that this save writes into the store's
  // own directory: their writes stay held off until they are reopened from it below.
  struct reopening {
    std::shared_ptr<detail::version_state> v;
    std::unique_lock<std::shared_mutex> held;
    std::filesystem::path own_dir, mirror_dir;
    bool own, mirror;
  };
  std::vector<reopening> reopen;

  detail::manifest m;
  m.shared = st.options;
  const auto c = st.snapshot();
  for (const auto& [name, entry] : c->modalities) {
    detail::manifest_modality& mod = m.modalities.emplace_back();
    mod.name = name;
    mod.active = entry.active->name;
    for (const auto& [version, v] : entry.versions) {
      // With writes and projection changes held off, so that the vectors, their mirror and the route
      // saved belong together.
      std::unique_lock<std::shared_mutex> held = v->hold();
      const std::shared_ptr<const detail::link_state> l = v->link();
      // A collection is saved over one the previous manifest names only if it is that collection (it
      // logs there); any other goes to a new directory. So a crash before the manifest below is
      // renamed leaves the previous manifest beside the collections it describes, never beside a
      // collection of another dimension, projection or mirror.
      detail::manifest_version saved{version, v->native, v->searchable, l->route, l->to_shared, version, {}};
      const detail::manifest_version* prev = detail::find_saved(previous, name, version);
      // The directory under this modality's that the version's collection logs into, if any.
      const std::optional<std::string> home_dir = detail::dir_under(v->own, directory / name, "native");
      if (prev != nullptr) {
        // The version and the mirror the previous manifest records are one unit: with that mirror gone
        // (a projection change dropped it), the version saved in place would leave the previous manifest,
        // after a crash, beside an old mirror that its writes since never reached.
        const bool same_mirror =
            prev->mirror_dir.empty() ||
            (l->mirror &&
             detail::dir_under(*l->mirror, detail::version_dir(directory, name, prev->dir), "") == prev->mirror_dir);
        saved.dir = home_dir == prev->dir && same_mirror ? prev->dir : detail::next_dir(version, prev->dir);
      } else if (home_dir)
        saved.dir = *home_dir;
      const bool in_place = home_dir == saved.dir;
      const std::filesystem::path dir = detail::version_dir(directory, name, saved.dir);
      bool mirror_in_place = false;
      if (l->mirror) {
        // Saved in place, the version keeps the mirror the previous manifest names (see `same_mirror`);
        // a version in a new directory takes its mirror along.
        const std::optional<std::string> mirror_home = detail::dir_under(*l->mirror, dir, "");
        saved.mirror_dir = in_place && prev != nullptr && !prev->mirror_dir.empty() ? prev->mirror_dir
                                                                                    : mirror_home.value_or("shared");
        mirror_in_place = mirror_home == saved.mirror_dir;
      }
      detail::apply_pending(*v, *l);  // a mirror a failed write left stale is never saved so
      v->own.save(dir / "native");
      if (l->mirror) l->mirror->save(dir / saved.mirror_dir);
      // What does not log where it was saved logs there from now on if this is the store's home.
      const bool own = home && !in_place;
      const bool mirror = home && l->mirror && !mirror_in_place;
      if (own || mirror) reopen.push_back({v, std::move(held), dir / "native", dir / saved.mirror_dir, own, mirror});
      mod.versions.push_back(std::move(saved));
    }
  }
  {
    const std::shared_lock lock(st.pairs_mutex);
    for (const auto& [direction, table] : st.pairs) {
      if (direction.first > direction.second) continue;  // each pair once; the reverse is rebuilt
      detail::manifest_links& l = m.links.emplace_back();
      l.a = direction.first;
      l.b = direction.second;
      for (const auto& [a, targets] : table)
        for (const vector_id b : targets) l.pairs.emplace_back(a, b);
      std::sort(l.pairs.begin(), l.pairs.end());
    }
  }
  const std::vector<std::byte> bytes = detail::encode(m);
  io::detail::atomic_writer out(manifest_path);
  out.write(bytes.data(), bytes.size());
  out.commit();

  if (!reopen.empty()) {
    // Every reopen first (a failure leaves the store as it was: in memory, saved), then the swap.
    std::vector<std::shared_ptr<detail::version_state>> replacements;
    std::vector<std::shared_ptr<const detail::link_state>> links;
    for (const reopening& r : reopen) {
      auto link = std::make_shared<detail::link_state>(*r.v->link());
      if (r.mirror) link->mirror = std::make_shared<collection>(collection::open(r.mirror_dir, st.home_options));
      replacements.push_back(
          r.own ? std::make_shared<detail::version_state>(r.v->modality, r.v->name, r.v->native, r.v->searchable,
                                                          collection::open(r.own_dir, st.home_options))
                : r.v);
      links.push_back(std::move(link));
    }
    st.modify_held([&](detail::catalog& next) {
      for (std::size_t i = 0; i < reopen.size(); ++i) {
        replacements[i]->set_link(links[i]);
        if (replacements[i] == reopen[i].v) continue;
        reopen[i].v->retire(reopen[i].held);  // its waiting writes go to the replacement
        detail::modality_entry& mod = next.modalities.find(reopen[i].v->modality)->second;
        mod.versions.find(reopen[i].v->name)->second = replacements[i];
        if (mod.active == reopen[i].v) mod.active = replacements[i];
      }
    });
  }

  detail::remove_unnamed(directory, m, previous);
}

multimodal_store multimodal_store::open(const std::filesystem::path& directory,
                                        const collection_open_options& options) {
  // Before anything is read: an empty store took a level cast from an integer, and refused it only in
  // a later save, after committing its manifest (a review).
  io::detail::check_verify_level(options.verify);
  // Absolute: the collections' directories and the store's home are compared with a save's directory,
  // which a later change of the working directory must not move.
  const std::filesystem::path root = std::filesystem::absolute(directory);
  const std::filesystem::path manifest_path = root / detail::manifest_name;
  SHOAL_CHECK_CODE(std::filesystem::exists(manifest_path), errc::io_error,
                   "multimodal_store::open: ", directory.string(), " holds no multimodal store (",
                   detail::manifest_name, " is missing)");
  const detail::manifest m = detail::read_manifest(manifest_path);
  const std::string name = manifest_path.string();
  // Versions sharing a directory are refused before any collection is opened: opened first, the second
  // failed as its directory being "open in another collection" (errc::io_error; a review's fuzzing).
  for (const detail::manifest_modality& mod : m.modalities)
    for (std::size_t i = 0; i < mod.versions.size(); ++i)
      for (std::size_t j = 0; j < i; ++j)
        SHOAL_CHECK_CODE(mod.versions[i].dir != mod.versions[j].dir, errc::corrupt_file, name, ": versions '",
                         mod.versions[j].name, "' and '", mod.versions[i].name, "' of '", mod.name,
                         "' name one directory, '", mod.versions[i].dir, "'");
  auto st = std::make_unique<detail::multimodal_state>(m.shared);
  auto c = std::make_shared<detail::catalog>();
  for (const detail::manifest_modality& mod : m.modalities) {
    detail::modality_entry& entry = c->modalities[mod.name];
    SHOAL_CHECK_CODE(entry.versions.empty(), errc::corrupt_file, name, ": modality '", mod.name, "' twice");
    for (const detail::manifest_version& mv : mod.versions) {
      const std::filesystem::path dir = detail::version_dir(root, mod.name, mv.dir);
      auto v = std::make_shared<detail::version_state>(mod.name, mv.name, mv.native, mv.searchable,
                                                       collection::open(dir / "native", options));
      const bool native_fits =
          !mv.native || (v->dim() == m.shared.shared_dim && v->own_metric() == m.shared.shared_metric && !mv.to_shared);
      const bool projection_fits =
          !mv.to_shared || (mv.to_shared->in_dim() == v->dim() && mv.to_shared->out_dim() == m.shared.shared_dim);
      SHOAL_CHECK_CODE(native_fits && projection_fits, errc::corrupt_file, name, ": modality '", mod.name,
                       "' version '", mv.name, "': the shared space, the projection and the collection disagree");
      std::vector<vector_id> own_ids, mirror_ids, changed_ids;  // of a mirrored version, for plan_reconcile
      std::shared_ptr<collection> mirror;
      if (mv.route == shared_route::mirror) {
        mirror = std::make_shared<collection>(collection::open(dir / mv.mirror_dir, options));
        SHOAL_CHECK_CODE(mirror->dim() == m.shared.shared_dim && mirror->metric() == m.shared.shared_metric,
                         errc::corrupt_file, name, ": the mirror of '", mod.name, "/", mv.name,
                         "' is not in the shared space");
        own_ids = v->own.ids();
        mirror_ids = mirror->ids();
        const std::vector<vector_id> own_changed = v->own.replayed_ids(), mirror_changed = mirror->replayed_ids();
        std::set_union(own_changed.begin(), own_changed.end(), mirror_changed.begin(), mirror_changed.end(),
                       std::back_inserter(changed_ids));
      }
      auto l = detail::make_link(*v, mv.to_shared, m.shared, mv.route, std::move(mirror));
      SHOAL_CHECK_CODE(l->route == mv.route, errc::corrupt_file, name, ": modality '", mod.name, "' version '", mv.name,
                       "' is recorded with route ", shared_route_name(mv.route), " but its projection gives ",
                       shared_route_name(l->route));
      if (l->mirror) {
        const detail::reconcile_plan plan = detail::plan_reconcile(*v, *l, name, own_ids, mirror_ids, changed_ids);
        // A mapped store reads only, shared with other readers; one that must repair does it through
        // writable collections (letting go of the shared locks first), then maps them again.
        const auto reopen = [&](bool mapped) {
          collection_open_options how = options;
          how.mmap = mapped;
          auto next = std::make_shared<detail::link_state>(*l);
          next->mirror.reset();
          l.reset();  // the last reference to the mirror: its lock goes
          { const collection closing = std::move(v->own); }
          v->own = collection::open(dir / "native", how);
          next->mirror = std::make_shared<collection>(collection::open(dir / mv.mirror_dir, how));
          l = std::move(next);
        };
        if (plan.needed()) {
          if (options.mmap) reopen(false);
          detail::apply_reconcile(*v, *l, plan, name);
          if (options.mmap) reopen(true);
        }
      }
      v->set_link(std::move(l));
      SHOAL_CHECK_CODE(entry.versions.emplace(mv.name, v).second, errc::corrupt_file, name, ": version '", mv.name,
                       "' of '", mod.name, "' twice");
      if (mv.name == mod.active) entry.active = v;
    }
    SHOAL_CHECK_CODE(entry.active != nullptr, errc::corrupt_file, name, ": the active version '", mod.active,
                     "' of modality '", mod.name, "' is not stored");
  }
  st->current = c;
  st->home = root;
  st->home_options = options;
  st->home_options.mmap = false;  // what a save reopens is written to from then on
  multimodal_store store(std::move(st));
  for (const detail::manifest_links& l : m.links) {
    std::vector<vector_id> a, b;
    for (const auto& [x, y] : l.pairs) {
      a.push_back(x);
      b.push_back(y);
    }
    try {
      store.link(l.a, a, l.b, b);
    } catch (const error& e) {
      detail::throw_error(errc::corrupt_file, detail::str(name, ": links: ", e.message()));
    }
  }
  return store;
}

}  // namespace shoal
