#include "shoal/collection/collection.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <list>
#include <numeric>
#include <string>
#include <system_error>
#include <thread>
#include <unordered_set>
#include <utility>

#include "collection/state.hpp"
#include "core/parallel.hpp"
#include "io/file_util.hpp"
#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "shoal/core/topk.hpp"
#include "shoal/index/factory.hpp"
#include "shoal/index/refine.hpp"

namespace shoal {

const char* sharding_name(sharding s) noexcept {
  switch (s) {
    case sharding::hash:
      return "hash";
    case sharding::range:
      return "range";
    case sharding::semantic:
      return "semantic";
    case sharding::hybrid:
      return "hybrid";
  }
  return "unknown";
}

sharding parse_sharding(std::string_view name) {
  for (const sharding s : {sharding::hash, sharding::range, sharding::semantic, sharding::hybrid})
    if (name == sharding_name(s)) return s;
  detail::throw_error(errc::invalid_argument,
                      detail::str("unknown sharding policy \"", name, "\" (expected hash, range, semantic or hybrid)"));
}

namespace detail {
namespace {

constexpr std::size_t max_shards = 4096;
constexpr std::size_t max_replicas = 16;
/// Shards whose sample share is smaller than this are trained on the whole sample instead.
constexpr std::size_t min_shard_training_rows = 256;

/// Rows of a sample from which the shards' index of `o` trains: throws naming `who` when `rows` (what
/// `source` holds) is fewer than it takes. Returns the fewest rows of a shard's own share it trains on
/// instead of the whole sample: min_shard_training_rows, or more where the index needs more (one per
/// IVF list, per PQ codeword: a share of 300 rows for IVF512 failed the training the whole sample passes).
std::size_t training_share(const collection_state& st, std::size_t rows, const char* who, const char* source) {
  const std::size_t need = st.shard_kind.min_training_rows;
  SHOAL_CHECK(rows >= need, who, ": the shards' index ", st.options.index, " trains on at least ", need, " vectors; ",
              source, " holds ", rows);
  return std::max(min_shard_training_rows, need);
}

/// Throws `errc::unsupported` naming `who` when the shards' index of `o` cannot return its vectors, which
/// a re-clustering moves (IVF-PQ, whose re-rank copy included, has no `vector`): `rebalance` failed only
/// after its snapshot had begun, and the automatic one failed silently after every tenth of growth.
void check_returns_vectors(const std::string& spec, const shard_traits& kind, const char* who) {
  SHOAL_CHECK_CODE(kind.returns_vectors, errc::unsupported, who,
                   ": re-clustering moves the vectors the shards store, and ", spec,
                   " shards (IVF-PQ) do not return their vectors");
}

}  // namespace

shard_traits validate(const collection_options& o) {
  detail::check_dimension(o.dim, "collection");
  detail::check_metric(o.metric, "collection");
  // Values cast from integers (a config file, a binding): unchecked, one was served and acknowledged and
  // then refused by open (a user-eyes review).
  SHOAL_CHECK(o.policy == sharding::hash || o.policy == sharding::range || o.policy == sharding::semantic ||
                  o.policy == sharding::hybrid,
              "collection: unknown sharding policy ", static_cast<int>(o.policy),
              " (expected hash, range, semantic or hybrid)");
  SHOAL_CHECK(o.sync == wal_sync::every_write || o.sync == wal_sync::os_buffered,
              "collection: unknown log sync policy ", static_cast<int>(o.sync),
              " (expected every_write or os_buffered)");
  SHOAL_CHECK(o.shards >= 1 && o.shards <= max_shards, "collection: shards must be in [1, ", max_shards, "], got ",
              o.shards);
  SHOAL_CHECK(o.replicas >= 1 && o.replicas <= max_replicas, "collection: replicas must be in [1, ", max_replicas,
              "], got ", o.replicas);
  SHOAL_CHECK(o.threads_per_shard <= max_threads_per_shard, "collection: threads_per_shard must be at most ",
              max_threads_per_shard, ", got ", o.threads_per_shard);
  SHOAL_CHECK(o.semantic_balance == 0 || (o.semantic_balance >= 1 && o.semantic_balance <= 1e6),
              "collection: semantic_balance must be 0 (plain k-means) or in [1, 1e6], got ", o.semantic_balance);
  SHOAL_CHECK(o.rebalance_threshold == 0 || o.rebalance_threshold > 1,
              "collection: rebalance_threshold must be 0 "
              "(off) or greater than 1, got ",
              o.rebalance_threshold);
  if (o.policy == sharding::range) {
    SHOAL_CHECK(o.range_bounds.size() == o.shards - 1, "collection: range sharding over ", o.shards, " shards needs ",
                o.shards - 1, " range_bounds, got ", o.range_bounds.size());
    SHOAL_CHECK(std::adjacent_find(o.range_bounds.begin(), o.range_bounds.end(), std::greater_equal<>()) ==
                    o.range_bounds.end(),
                "collection: range_bounds must be strictly increasing");
  } else {
    SHOAL_CHECK(o.range_bounds.empty(), "collection: range_bounds are only used by range sharding");
  }
  if (o.policy == sharding::hybrid)
    SHOAL_CHECK(o.groups >= 1 && o.shards % o.groups == 0,
                "collection: hybrid sharding needs groups that divide "
                "shards (",
                o.shards, "), got groups = ", o.groups);
  const any_index index = make_index(o.index, o.dim, o.metric);  // the spec must build
  const refine_index* refined = index.get_if<refine_index>();
  const index_kind stage = refined != nullptr ? refined->coarse().kind() : index.kind();
  return {index.min_training_rows(), index.kind() != index_kind::ivf_pq, stage == index_kind::ivf_pq};
}

namespace {

/// Rows `rows` of `v` as a dense matrix (or `v` itself, when `rows` is every row in order).
matrix<float> gather(matrix_view<const float> v, std::span<const std::size_t> rows) {
  matrix<float> out(rows.size(), v.dim);
  for (std::size_t i = 0; i < rows.size(); ++i) std::copy_n(v.row(rows[i]), v.dim, out.row(i));
  return out;
}

/// The vectors the router sees: unit rows for cosine (the shards normalise on their own).
matrix_view<const float> routable(matrix_view<const float> v, shoal::metric m, matrix<float>& storage,
                                  const char* what = "vector") {
  if (m != shoal::metric::cosine) return v;
  storage = normalized_copy(v, what);
  return storage.view();
}

std::int64_t elapsed_ns(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - since).count();
}

/// A live replica and its index, held for the duration of one read (empty: none was live).
struct live_replica {
  replica_slot* rep = nullptr;
  std::size_t at = 0;  // its index in the shard
  std::shared_ptr<any_index> index;
  explicit operator bool() const noexcept { return rep != nullptr; }
};

/// Which replica serves the next read of a shard: the live one with the fewest searches in flight (ties
/// to the lowest index); empty when none is live.
live_replica pick_replica(const shard_state& shard) {
  for (;;) {
    int best = -1;
    std::int64_t best_load = 0;
    for (std::size_t r = 0; r < shard.replicas.size(); ++r) {
      const replica_slot& rep = *shard.replicas[r];
      if (!rep.up.load(std::memory_order_acquire)) continue;
      const std::int64_t load = rep.inflight.load(std::memory_order_relaxed);
      if (best < 0 || load < best_load) {
        best = static_cast<int>(r);
        best_load = load;
      }
    }
    if (best < 0) return {};
    replica_slot& rep = *shard.replicas[static_cast<std::size_t>(best)];
    // take_down clears `up` before the index, so a replica found without its index is going down and
    // the next pick passes it over.
    if (std::shared_ptr<any_index> index = rep.index.load())
      return {&rep, static_cast<std::size_t>(best), std::move(index)};
  }
}

/// Vectors in a live replica of `shard` (0 when none is live).
std::size_t live_size(const shard_state& shard) {
  const live_replica live = pick_replica(shard);
  return live ? read_replica(shard, *live.rep, *live.index, [](const any_index& i) { return i.size(); }) : 0;
}

/// Searches `queries` on one live replica of shard `s` for min(k, its size) neighbours each: a shard
/// holding fewer vectors than k has no more to give, and a k-wide result per shard and query cost
/// shards × rows × k slots however little the shards held (k = 2^22 over 64 shards of 10 vectors ran out
/// of memory). An empty shard returns an empty result (after a one-row search that checks `params`).
neighbors search_shard(const collection_state& st, shard_state& shard, std::size_t s, matrix_view<const float> queries,
                       std::size_t k, const search_params& params) {
  const live_replica live = pick_replica(shard);
  SHOAL_CHECK_CODE(live, errc::unsupported, "collection::search: shard ", s, " has no live replica (all taken down)");
  replica_slot& rep = *live.rep;
  rep.inflight.fetch_add(1, std::memory_order_relaxed);
  struct release {
    replica_slot& rep;
    ~release() { rep.inflight.fetch_sub(1, std::memory_order_relaxed); }
  } guard{rep};
  detail::collection_state::shard_metrics& metrics = *st.shard_stats[s];
  metrics.served[live.at].fetch_add(1, std::memory_order_relaxed);
  const auto started = std::chrono::steady_clock::now();
  neighbors found;
  st.executor(s).execute([&] {
    read_replica(shard, rep, *live.index, [&](const any_index& i) {
      const std::size_t held = std::min(k, i.size());  // read-your-writes: acknowledged writes are counted
      if (held == 0) {
        // Nothing to find, but the parameters are checked as a search of a shard holding vectors checks
        // them (a collection whose shards were all empty accepted any): one row, one neighbour.
        neighbors none(1, 1);
        i.search(queries.slice(0, 1), none.view(), params);
        return;
      }
      found = neighbors(queries.rows, held);
      i.search(queries, found.view(), params);
    });
  });
  const std::chrono::nanoseconds took(elapsed_ns(started));
  metrics.latency.record(took);
  st.shard_latency.record(took);
  return found;
}

/// Best k of one query's per-shard candidates, without repeating an id (an id moving between shards
/// during an upsert may be seen in both). Ids taken are looked up in the row itself while k is small, in
/// a hash set beyond (k = 1,000 over 4 shards would otherwise compare ~2 million pairs per query).
void merge_row(std::vector<scored_id>& candidates, std::span<vector_id> ids, std::span<float> distances) {
  constexpr std::size_t scan_up_to = 64;
  std::sort(candidates.begin(), candidates.end());
  std::unordered_set<vector_id> taken;
  if (ids.size() > scan_up_to) taken.reserve(std::min(ids.size(), candidates.size()));
  std::size_t j = 0;
  for (std::size_t i = 0; i < candidates.size() && j < ids.size(); ++i) {
    if (candidates[i].id == no_id) break;  // sentinels sort last (infinite distance)
    const bool repeated = ids.size() > scan_up_to
                              ? !taken.insert(candidates[i].id).second
                              : std::find(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(j),
                                          candidates[i].id) != ids.begin() + static_cast<std::ptrdiff_t>(j);
    if (repeated) continue;
    ids[j] = candidates[i].id;
    distances[j] = candidates[i].distance;
    ++j;
  }
  for (; j < ids.size(); ++j) {
    ids[j] = no_id;
    distances[j] = no_distance;
  }
}

/// The call a write op is: "collection::add", "collection::upsert" or "collection::remove".
const char* write_name(wal_op op) noexcept {
  return op == wal_op::add ? "collection::add" : op == wal_op::upsert ? "collection::upsert" : "collection::remove";
}

}  // namespace

std::string shard_file_name(std::size_t s, std::uint64_t generation) {
  return "shard-" + std::to_string(s) + "-g" + std::to_string(generation) + ".shoal";
}

std::shared_ptr<layout> collection_state::empty_layout() const {
  auto lay = std::make_shared<layout>(router(options));
  for (std::size_t s = 0; s < options.shards; ++s) {
    auto shard = std::make_shared<shard_state>();
    for (std::size_t r = 0; r < options.replicas; ++r) {
      auto rep = std::make_unique<replica_slot>();
      rep->index.store(std::make_shared<any_index>(make_index(options.index, options.dim, options.metric)));
      shard->concurrent = rep->index.load()->concurrent_writes();
      shard->replicas.push_back(std::move(rep));
    }
    lay->shards.push_back(std::move(shard));
  }
  return lay;
}

collection_state::untrained collection_state::untrained_parts(const layout& lay) const {
  untrained parts{.router = !lay.route.trained()};
  for (const auto& shard : lay.shards)
    for (const auto& rep : shard->replicas) {
      const std::shared_ptr<any_index> index = rep->index.load();
      parts.shards = parts.shards || (index && !index->is_trained());
    }
  return parts;
}

bool collection_state::all_trained(const layout& lay) const {
  const untrained parts = untrained_parts(lay);
  return !parts.router && !parts.shards;
}

write_plan collection_state::plan(layout& lay, wal_op op, matrix_view<const float> vectors,
                                  matrix_view<const float> routed, std::span<const vector_id> ids,
                                  std::span<const std::uint64_t> keys) const {
  const std::size_t n = ids.size();
  const std::size_t shards = lay.shards.size();
  constexpr std::uint32_t none = ~std::uint32_t{0};
  write_plan w;
  w.op = op;
  w.ids = ids;
  w.vectors = vectors;

  std::vector<std::uint32_t> old_shard(n, none);
  if (op != wal_op::add) {
    const std::shared_lock lock(lay.table_mutex);
    for (std::size_t i = 0; i < n; ++i)
      if (const std::uint32_t* at = lay.table.find(ids[i])) old_shard[i] = *at;
  }
  if (op != wal_op::remove) {
    w.new_shard = lay.route.route(routed, ids, keys);
    // Range sharding: an upsert without keys leaves a stored id in its shard. Its key (a timestamp
    // given to add) is not kept, and routing it by its id moved it out of its range silently.
    if (options.policy == sharding::range && keys.empty())
      for (std::size_t i = 0; i < n; ++i)
        if (old_shard[i] != none) w.new_shard[i] = old_shard[i];
  }

  // Phase 1, per shard: removals of ids re-added to the same shard, then additions.
  // Phase 2, per shard: removals of ids that left the shard (or are just removed).
  w.remove_first.resize(shards);
  w.remove_after.resize(shards);
  w.add_rows.resize(shards);
  for (std::size_t i = 0; i < n; ++i) {
    if (op == wal_op::remove) {
      w.remove_after[old_shard[i]].push_back(ids[i]);
      continue;
    }
    w.add_rows[w.new_shard[i]].push_back(i);
    if (old_shard[i] == none) continue;
    (old_shard[i] == w.new_shard[i] ? w.remove_first : w.remove_after)[old_shard[i]].push_back(ids[i]);
  }
  w.rows.resize(shards);
  w.row_ids.resize(shards);
  for (std::size_t s = 0; s < shards; ++s) {
    if (w.add_rows[s].empty()) continue;
    if (w.add_rows[s].size() != n) {  // else the write's own rows
      w.rows[s] = gather(vectors, w.add_rows[s]);
      for (const std::size_t i : w.add_rows[s]) w.row_ids[s].push_back(ids[i]);
    }
    // What a shard would refuse of its rows (an IVF-PQ residual past the norm bound) is refused here,
    // before the write is logged: refused after, it stayed in the log, and every later open failed on it
    // (a review). Other kinds refuse nothing the checks of `write` pass. The replicas of a shard share
    // one model: the first one up answers for all.
    if (!shard_kind.refuses_rows) continue;
    for (const auto& rep : lay.shards[s]->replicas) {
      const std::shared_ptr<any_index> index = rep->up.load() ? rep->index.load() : nullptr;
      if (!index) continue;
      std::shared_lock<phase_fair_mutex> lock(rep->access, std::defer_lock);
      if (!lay.shards[s]->concurrent) lock.lock();
      try {
        index->check_add(w.add_rows[s].size() == n ? vectors : w.rows[s].view());
      } catch (const error&) {
        // Named by the caller's row, which the shard's own message (numbering the shard's share) is not.
        for (const std::size_t i : w.add_rows[s]) {
          try {
            index->check_add({vectors.row(i), 1, vectors.dim});
          } catch (const error& e) {
            throw_error(e.code(), str(write_name(op), ": vector row ", i, " (id ", ids[i], ") is refused by shard ", s,
                                      ": ", e.message()));
          }
        }
        throw;
      }
      break;
    }
  }
  // Room for the ids new to the table (an upsert's stored ids keep their entries), last: a write refused
  // above does not grow the table (it never shrinks but for removals).
  if (op != wal_op::remove)
    w.room = table_room(lay, static_cast<std::size_t>(std::count(old_shard.begin(), old_shard.end(), none)));
  return w;
}

void collection_state::apply(layout& lay, const write_plan& w) {
  const std::size_t n = w.ids.size();
  const std::size_t shards = lay.shards.size();
  for (std::size_t s = 0; s < shards; ++s) {
    if (w.remove_first[s].empty() && w.add_rows[s].empty()) continue;
    shard_state& shard = *lay.shards[s];
    const bool all_rows = w.add_rows[s].size() == n;
    const matrix_view<const float> v = all_rows ? w.vectors : w.rows[s].view();
    const std::span<const vector_id> v_ids = all_rows ? w.ids : std::span<const vector_id>(w.row_ids[s]);
    const std::lock_guard lock(shard.write_mutex);
    // Lag counts vectors written: an id in remove_first is re-added here, one write with its add.
    for_each_live_replica(shard, w.add_rows[s].size(), [&](any_index& index) {
      for (const vector_id id : w.remove_first[s]) index.remove(id);
      if (!v_ids.empty()) index.add(v, v_ids);
    });
  }
  if (w.op != wal_op::remove) {
    {
      const std::unique_lock lock(lay.table_mutex);
      for (std::size_t i = 0; i < n; ++i) (void)lay.table.insert_or_assign(w.ids[i], w.new_shard[i]);
      w.room.release_locked();  // now: held until the write returned, it counted these ids twice
    }
    // Ids that move: wait for the reads that may have passed their new shard before the add (`moving`;
    // no other lock held, as those reads take the table's and the shards').
    if (std::any_of(w.remove_after.begin(), w.remove_after.end(), [](const auto& r) { return !r.empty(); })) {
      const std::unique_lock drained(lay.moving);
    }
  }
  for (std::size_t s = 0; s < shards; ++s) {
    if (w.remove_after[s].empty()) continue;
    shard_state& shard = *lay.shards[s];
    const std::lock_guard lock(shard.write_mutex);
    for_each_live_replica(shard, w.remove_after[s].size(), [&](any_index& index) {
      for (const vector_id id : w.remove_after[s]) index.remove(id);
    });
  }
  if (w.op == wal_op::remove) {
    const std::unique_lock lock(lay.table_mutex);
    for (const vector_id id : w.ids) (void)lay.table.erase(id);
  }
}

void collection_state::write(wal_op op, matrix_view<const float> vectors, std::span<const vector_id> ids,
                             std::span<const std::uint64_t> keys) {
  const char* who = write_name(op);
  const std::string what = str(who, ": vector");  // how bad vectors are named
  SHOAL_CHECK_CODE(!read_only, errc::unsupported, who, ": the collection was opened memory-mapped and is read-only");
  check_not_diverged(who);
  if (op != wal_op::remove) {
    check_vectors(vectors, options.dim, what.c_str());
    check_ids(ids, vectors.rows, who);
    SHOAL_CHECK(keys.empty() || options.policy == sharding::range, who,
                ": keys are only used by range sharding (this collection uses ", sharding_name(options.policy), ")");
    SHOAL_CHECK(keys.empty() || keys.size() == ids.size(), who, ": ", keys.size(), " keys for ", ids.size(), " ids");
    if (!trained.load()) {
      // What needs the training, named: "hash routing" was named for a hash collection whose SQ8 shards
      // alone needed it (a user-eyes review).
      const auto [router, shards] = untrained_parts(*current.load());
      // Both trained: a train() published its layout after `trained` was read, and this write goes on
      // (a later layout is never less trained). Without this the message named nothing ("( needs it)";
      // a review).
      if (router || shards)
        throw_error(errc::invalid_argument, str(who, ": the collection is not trained: call train() first (",
                                                router ? str(sharding_name(options.policy), " routing") : std::string(),
                                                router && shards ? " and " : "",
                                                shards ? str("the \"", options.index, "\" shards") : std::string(),
                                                shards ? " need it)" : " needs it)"));
    }
  }
  // What the router reads, normalised once for cosine (which also rejects zero rows before anything is logged).
  matrix<float> unit;
  const matrix_view<const float> routed =
      op == wal_op::remove ? vectors : routable(vectors, options.metric, unit, what.c_str());
  if (ids.empty()) return;
  {
    std::vector<vector_id> sorted(ids.begin(), ids.end());
    std::sort(sorted.begin(), sorted.end());
    const auto dup = std::adjacent_find(sorted.begin(), sorted.end());
    SHOAL_CHECK_CODE(dup == sorted.end(), errc::duplicate_id, who, ": id ", dup == sorted.end() ? 0 : *dup,
                     " appears twice in one call");
  }
  const auto write_started = std::chrono::steady_clock::now();

  const std::shared_lock layout_lock(layout_mutex);
  const std::shared_ptr<layout> lay = current.load();

  // Serialise with other writes of the same ids.
  busy_ids.claim(ids);
  struct release_ids {
    id_registry& registry;
    std::span<const vector_id> ids;
    ~release_ids() { registry.release(ids); }
  } release{busy_ids, ids};

  if (op != wal_op::upsert) {
    const std::shared_lock lock(lay->table_mutex);
    for (const vector_id id : ids) {
      const bool present = lay->table.contains(id);
      SHOAL_CHECK_CODE(op != wal_op::add || !present, errc::duplicate_id, who, ": id ", id, " is already stored");
      SHOAL_CHECK_CODE(op != wal_op::remove || present, errc::not_found, who, ": id ", id, " is not stored");
    }
  }

  // Worked out before it is logged: out of memory up to here leaves nothing to undo and nothing logged.
  const write_plan planned = plan(*lay, op, vectors, routed, ids, keys);
  // So is the copy a running rebalance captures (in a list node of its own, handed over below without
  // allocating). `capturing` cannot turn on while this write holds the layout lock shared; it may turn
  // off (a rebalance that failed), and then the copy is dropped.
  std::list<wal_record> capture;
  if (const std::lock_guard lock(capture_mutex); capturing) capture.emplace_back();
  if (!capture.empty()) {
    wal_record& r = capture.back();
    r.op = op;
    r.ids.assign(ids.begin(), ids.end());
    r.keys.assign(keys.begin(), keys.end());
    if (op != wal_op::remove) {
      r.vectors = matrix<float>(vectors.rows, vectors.dim);
      for (std::size_t i = 0; i < vectors.rows; ++i) std::copy_n(vectors.row(i), vectors.dim, r.vectors.row(i));
    }
  }
  if (wal) {
    // One record per at most ~256 MiB of vectors (a record's size field is 32 bits).
    const std::size_t per_record = std::max<std::size_t>(1, (std::size_t{256} << 20) / (options.dim * 4 + 16));
    (void)wal->append(op, ids, keys, op == wal_op::remove ? matrix_view<const float>() : vectors, per_record);
  }
  if (!capture.empty()) {
    const std::lock_guard lock(capture_mutex);
    if (capturing) captured.splice(captured.end(), capture);
  }
  try {
    apply(*lay, planned);
  } catch (...) {
    // Logged, but not (wholly) applied: a shard ran out of memory. The shards no longer match the log
    // (nor, maybe, the routing table), and a snapshot would make that permanent. Reopening replays the
    // write whole.
    diverged.store(true);
    throw;
  }
  write_latency.record(std::chrono::nanoseconds(elapsed_ns(write_started)));
  (op == wal_op::add      ? adds
   : op == wal_op::upsert ? upserts
                          : removes)
      .fetch_add(ids.size(), std::memory_order_relaxed);
}

}  // namespace detail

// ------------------------------------------------------------------------------------------ collection

collection::collection(std::unique_ptr<detail::collection_state> state) : state_(std::move(state)) {}

collection::collection(const collection_options& options) {
  const detail::shard_traits kind = detail::validate(options);
  if (options.rebalance_threshold > 0 && (options.policy == sharding::semantic || options.policy == sharding::hybrid))
    detail::check_returns_vectors(options.index, kind, "collection: rebalance_threshold");
  auto st = std::make_unique<detail::collection_state>();
  st->options = options;
  st->recorded_threads_per_shard = options.threads_per_shard;
  if (!options.directory.empty())  // absolute: see collection::open
    st->options.directory = std::filesystem::absolute(options.directory);
  st->shard_kind = kind;
  st->add_shards();
  const std::shared_ptr<detail::layout> lay = st->empty_layout();
  st->trained.store(st->all_trained(*lay));
  st->current.store(lay);
  if (!options.directory.empty()) {
    std::error_code ec;
    io::detail::create_directories_durably(options.directory, ec);
    SHOAL_CHECK_CODE(!ec, errc::io_error, "collection: cannot create ", options.directory.string(), ": ", ec.message());
    const auto check_new = [&] {
      SHOAL_CHECK(!std::filesystem::exists(options.directory / detail::manifest_file_name, ec),
                  "collection: ", options.directory.string(),
                  " already holds a collection (open it with collection::open)");
    };
    check_new();  // before the lock, for this message where a collection there has the directory open
    // Checked again under the lock, held until the collection closes: of two collections created here at
    // once, the second fails without touching the first's files.
    detail::write_ahead_log::stale_log lock(options.directory, false);
    check_new();
    // No manifest: nothing of a leftover log to keep. Emptied before the snapshot names sequence 0, so
    // that none of its records can replay onto it.
    st->wal = std::make_unique<detail::write_ahead_log>(std::move(lock), options.dim, options.sync);
    st->write_snapshot(*lay, options.directory, 0, 0);
  }
  state_ = std::move(st);
}

collection::collection(collection&& other) noexcept = default;
collection& collection::operator=(collection&& other) noexcept = default;
collection::~collection() = default;

std::size_t collection::dim() const noexcept { return state_->options.dim; }
metric collection::metric() const noexcept { return state_->options.metric; }
const collection_options& collection::options() const noexcept { return state_->options; }
std::size_t collection::shard_count() const noexcept { return state_->options.shards; }
std::size_t collection::replica_count() const noexcept { return state_->options.replicas; }

std::size_t collection::size() const {
  const std::shared_ptr<detail::layout> lay = state_->current.load();
  const std::shared_lock lock(lay->table_mutex);
  return lay->table.size();
}

std::vector<std::size_t> collection::shard_sizes() const {
  const std::shared_ptr<detail::layout> lay = state_->current.load();
  std::vector<std::size_t> sizes(lay->shards.size(), 0);
  const std::shared_lock lock(lay->table_mutex);
  lay->table.for_each([&](vector_id, std::uint32_t s) { ++sizes[s]; });
  return sizes;
}

std::size_t collection::memory_bytes() const {
  const std::shared_ptr<detail::layout> lay = state_->current.load();
  std::size_t bytes = 0;
  for (const auto& shard : lay->shards)
    for (const auto& rep : shard->replicas)
      if (const std::shared_ptr<any_index> index = rep->index.load())
        bytes += detail::read_replica(*shard, *rep, *index, [](const any_index& i) { return i.memory_bytes(); });
  const std::shared_lock lock(lay->table_mutex);
  bytes += lay->table.bytes();
  return bytes;
}

bool collection::is_trained() const { return state_->trained.load(); }

bool collection::contains(vector_id id) const {
  const std::shared_ptr<detail::layout> lay = state_->current.load();
  const std::shared_lock lock(lay->table_mutex);
  return lay->table.contains(id);
}

std::vector<vector_id> collection::replayed_ids() const { return state_->replayed_ids; }

std::vector<vector_id> collection::ids() const {
  const std::shared_ptr<detail::layout> lay = state_->current.load();
  std::vector<vector_id> out;
  {
    const std::shared_lock lock(lay->table_mutex);
    out.reserve(lay->table.size());
    lay->table.for_each([&](vector_id id, std::uint32_t) { out.push_back(id); });
  }
  std::sort(out.begin(), out.end());
  return out;
}

namespace {
/// The shard of `lay` that holds `id`; `who` names the caller in the error when none does.
std::size_t shard_in(const detail::layout& lay, vector_id id, const char* who) {
  const std::shared_lock lock(lay.table_mutex);
  const std::uint32_t* at = lay.table.find(id);
  SHOAL_CHECK_CODE(at != nullptr, errc::not_found, who, ": id ", id, " is not stored");
  return *at;
}
}  // namespace

std::size_t collection::shard_of(vector_id id) const {
  return shard_in(*state_->current.load(), id, "collection::shard_of");
}

std::vector<float> collection::vector(vector_id id) const {
  // One layout for the lookup and the read: a rebalance swapping layouts in between could otherwise
  // send the read to a shard of the new layout that does not hold the id.
  const std::shared_ptr<detail::layout> lay = state_->current.load();
  // An upsert moving the id between the lookup and the read would otherwise remove it from the shard
  // looked up (`layout::moving`).
  const std::shared_lock reading(lay->moving);
  const std::size_t s = shard_in(*lay, id, "collection::vector");
  detail::shard_state& shard = *lay->shards[s];
  const detail::live_replica live = detail::pick_replica(shard);
  SHOAL_CHECK_CODE(live, errc::unsupported, "collection::vector: shard ", s, " has no live replica");
  return detail::read_replica(shard, *live.rep, *live.index, [&](const any_index& i) { return i.vector(id); });
}

void collection::train(matrix_view<const float> sample) {
  detail::collection_state& st = *state_;
  SHOAL_CHECK_CODE(!st.read_only, errc::unsupported, "collection::train: the collection is read-only (memory-mapped)");
  detail::check_vectors(sample, st.options.dim, "collection::train: vector");
  const auto started = std::chrono::steady_clock::now();
  const std::unique_lock layout_lock(st.layout_mutex);
  const std::shared_ptr<detail::layout> old = st.current.load();
  {
    const std::shared_lock lock(old->table_mutex);
    SHOAL_CHECK(old->table.empty(), "collection::train: the collection already holds ", old->table.size(),
                " vectors; train before adding");
  }
  if (st.trained.load()) return;  // nothing to train (hash/range over HNSW or Flat, or trained already)
  // A new layout (the router is immutable once published); shards are trained before it is, in slots of
  // its own: trained in the published layout's slots, they stayed trained on this sample when the
  // snapshot below failed, and a retried `train` kept them (a review).
  auto lay = std::make_shared<detail::layout>(old->route);
  for (const auto& shard : old->shards) {
    auto copy = std::make_shared<detail::shard_state>();
    copy->concurrent = shard->concurrent;
    for (const auto& rep : shard->replicas) {
      auto slot = std::make_unique<detail::replica_slot>();
      slot->index.store(rep->index.load());
      slot->up.store(rep->up.load());
      slot->lag.store(rep->lag.load());
      copy->replicas.push_back(std::move(slot));
    }
    lay->shards.push_back(std::move(copy));
  }
  matrix<float> unit;
  const matrix_view<const float> routed =
      detail::routable(sample, st.options.metric, unit, "collection::train: vector");
  lay->route.train(routed);
  std::vector<std::vector<std::size_t>> rows(lay->shards.size());
  {
    std::vector<vector_id> row_ids(sample.rows);
    std::iota(row_ids.begin(), row_ids.end(), vector_id{0});
    const std::vector<std::uint32_t> to = lay->route.route(routed, row_ids, {});
    for (std::size_t i = 0; i < sample.rows; ++i) rows[to[i]].push_back(i);
  }
  const std::size_t share = detail::training_share(st, sample.rows, "collection::train", "the sample");
  detail::parallel_for(lay->shards.size(), [&](std::size_t s) {
    const bool own = lay->route.needs_centroids() && rows[s].size() >= share;
    const matrix<float> part = own ? detail::gather(sample, rows[s]) : matrix<float>();
    const matrix_view<const float> data = own ? part.view() : sample;
    st.executor(s).execute([&] {
      for (const auto& rep : lay->shards[s]->replicas) {
        const std::shared_ptr<any_index> index = rep->index.load();
        if (!index || index->is_trained()) continue;
        // A fresh index trained and put in the new layout's slot: the published one may be read
        // meanwhile (memory_bytes and metrics take no lock against training).
        auto trained = std::make_shared<any_index>(make_index(st.options.index, st.options.dim, st.options.metric));
        trained->train(data);
        rep->index.store(std::move(trained));
      }
    });
  });
  // Training is not in the log: a collection with a directory snapshots the trained layout before it
  // is published. If the snapshot fails, the collection stays untrained, as its directory says it is
  // (writes acknowledged after a published but unsaved training could not be replayed).
  if (st.wal) {
    st.wal->check_in_place();  // see collection::save
    // A generation no file in the directory has yet (as `save` picks it): one above the recorded one
    // could be taken already, by a snapshot whose log reset failed, whose shard files this would overwrite.
    const std::uint64_t generation = detail::next_generation(st.options.directory);
    st.write_snapshot(*lay, st.options.directory, generation, st.wal->last_sequence());
    st.snapshot_generation = generation;
    st.wal->reset();
  }
  st.current.store(lay);
  st.trained.store(st.all_trained(*lay));
  st.train_ns.store(detail::elapsed_ns(started));
}

namespace {

/// Semantic drift: starts a background re-clustering when a shard has grown far past the mean (after
/// an add or an upsert: vectors inserted by upserts alone left a layout skewed for good).
void rebalance_if_drifted(detail::collection_state* st) {
  if (st->rebalance_running.load() || !detail::drifted(*st)) return;
  if (st->rebalance_running.exchange(true)) return;
  const std::lock_guard lock(st->background_mutex);
  if (st->background.joinable()) st->background.join();  // the previous run has finished
  try {
    st->background = std::thread([st] {
      // Again while the writes that arrived during a run (which do not start one of their own) leave the
      // collection drifted: a run's k-means saw the data as it was when the run began.
      std::size_t runs = 0;
      bool failed = false;
      do {
        while (runs < detail::max_chained_rebalances) {
          ++runs;
          try {
            detail::rebalance(*st);
          } catch (const std::exception&) {
            failed = true;  // the old layout stays in place; a later write tries again
            break;
          }
          if (!detail::drifted(*st)) break;
        }
        st->rebalance_running.store(false);
        // A write that finished after the last look saw a run still going and started none: look again.
      } while (!failed && runs < detail::max_chained_rebalances && detail::drifted(*st) &&
               !st->rebalance_running.exchange(true));
    });
  } catch (const std::system_error&) {
    // No thread to be had (a process at its thread limit): the write that got here has been applied and
    // must not fail for it; a later one tries again.
    st->rebalance_running.store(false);
  }
}

}  // namespace

void collection::add(matrix_view<const float> vectors, std::span<const vector_id> ids,
                     std::span<const std::uint64_t> keys) {
  state_->write(detail::wal_op::add, vectors, ids, keys);
  rebalance_if_drifted(state_.get());
}

void collection::upsert(matrix_view<const float> vectors, std::span<const vector_id> ids,
                        std::span<const std::uint64_t> keys) {
  state_->write(detail::wal_op::upsert, vectors, ids, keys);
  rebalance_if_drifted(state_.get());
}

void collection::remove(std::span<const vector_id> ids) {
  state_->write(detail::wal_op::remove, matrix_view<const float>(), ids, {});
}

namespace {

/// A search routed to `shard_probe` shards (groups) left the rows of `out` short where the ids
/// the filter passes lie in shards a query did not visit (a user-eyes review: 4 semantic shards, a
/// filter passing 1% of the rows, all in one shard: 53 of 200 rows empty at shard_probe 2, 130 at 1).
/// Each short row's query then searches every shard it skipped, and the row is merged again: rows stay
/// k long while k ids pass, as in one index. Unfiltered rows are short only when k exceeds what the
/// probed shards hold; they are widened too (since session 46: IVF shards widened such rows and Flat or
/// HNSW shards did not, a third review). Only short rows pay.
void widen_routed(const detail::collection_state& st, const detail::layout& lay, matrix_view<const float> queries,
                  const detail::router::visits& visits, neighbors_view out, const search_params& params) {
  const std::size_t shards = lay.shards.size();
  std::vector<std::vector<std::size_t>> skipped(shards);  // per shard: the short queries that skipped it
  std::vector<std::size_t> short_rows;
  std::vector<bool> visited(shards);
  for (std::size_t q = 0; q < queries.rows; ++q) {
    if (out.row_ids(q)[out.k - 1] != no_id) continue;
    short_rows.push_back(q);
    std::fill(visited.begin(), visited.end(), false);
    for (std::size_t j = 0; j < visits.per_query; ++j) visited[visits.shards[q * visits.per_query + j]] = true;
    for (std::size_t s = 0; s < shards; ++s)
      if (!visited[s]) skipped[s].push_back(q);
  }
  if (short_rows.empty()) return;
  std::vector<neighbors> results(shards);
  {
    const std::shared_lock reading(lay.moving);
    std::vector<std::size_t> active;
    for (std::size_t s = 0; s < shards; ++s)
      if (!skipped[s].empty()) active.push_back(s);
    detail::parallel_for(active.size(), [&](std::size_t a) {
      const std::size_t s = active[a];
      results[s] =
          detail::search_shard(st, *lay.shards[s], s, detail::gather(queries, skipped[s]).view(), out.k, params);
    });
  }
  std::vector<std::size_t> next(shards, 0);  // per shard: the row of its batch the next short query has
  std::vector<scored_id> candidates;
  for (const std::size_t q : short_rows) {
    candidates.clear();
    for (std::size_t i = 0; i < out.k; ++i) candidates.push_back({out.row_distances(q)[i], out.row_ids(q)[i]});
    for (std::size_t s = 0; s < shards; ++s) {
      if (next[s] == skipped[s].size() || skipped[s][next[s]] != q) continue;
      const std::size_t row = next[s]++;
      // A shard holding fewer than k vectors returns rows of its size (`search_shard`): reading k read
      // into the next row.
      for (std::size_t i = 0; i < results[s].k(); ++i)
        candidates.push_back({results[s].distance(row, i), results[s].id(row, i)});
    }
    detail::merge_row(candidates, out.row_ids(q), out.row_distances(q));
  }
}

/// The most inverted lists of any shard (`any_index::lists`; 0 when no shard has lists).
std::size_t most_lists(const detail::layout& lay) {
  std::size_t lists = 0;
  for (const auto& shard : lay.shards) {
    const detail::live_replica live = detail::pick_replica(*shard);
    if (live) lists = std::max(lists, live.index->lists());
  }
  return lists;
}

/// IVF shards are searched without widening their own short rows (`search_params::widen`): each shard
/// would widen until it alone held k, where the collection needs k from all of them together (8 hash
/// shards of IVF128 under a filter passing 0.2% of 40,000 rows: 23× one IVF128's time, a review of
/// session 46). Instead a row the shards left short is searched again in every shard over twice the
/// lists, and again, until the merged row holds k (`widen_to` where smaller) or every list of every shard was searched
/// (`lists`, the most any shard has; at once when the collection holds fewer than k vectors). A row that routing kept
/// from some shards has searched all of them by then (`widen_routed`). Each round merges afresh: a vector moved between
/// shards between two rounds is found once, never twice.
void widen_lists(const detail::collection_state& st, const detail::layout& lay, matrix_view<const float> queries,
                 neighbors_view out, search_params params) {
  // Short: holding fewer than k ids, or than `widen_to` where that is smaller.
  const std::size_t wanted = params.widen_to > 0 ? std::min(out.k, params.widen_to) : out.k;
  const auto is_short = [&](std::size_t q) { return out.row_ids(q)[wanted - 1] == no_id; };
  std::vector<std::size_t> short_rows;
  for (std::size_t q = 0; q < queries.rows; ++q)
    if (is_short(q)) short_rows.push_back(q);
  if (short_rows.empty()) return;  // the common case: no shard is asked anything
  const std::size_t lists = most_lists(lay);
  const std::size_t shards = lay.shards.size();
  std::vector<neighbors> results(shards);
  std::vector<scored_id> candidates;
  std::size_t held = 0;
  for (const auto& shard : lay.shards) held += detail::live_size(*shard);
  for (std::size_t n = std::max<std::size_t>(params.nprobe, 1); !short_rows.empty() && n < lists;) {
    n = wanted > held ? lists : std::min(lists, 2 * n);
    params.nprobe = n;
    const matrix<float> batch = detail::gather(queries, short_rows);
    {
      const std::shared_lock reading(lay.moving);
      detail::parallel_for(shards, [&](std::size_t s) {
        results[s] = detail::search_shard(st, *lay.shards[s], s, batch.view(), out.k, params);
      });
    }
    std::vector<std::size_t> still_short;
    for (std::size_t r = 0; r < short_rows.size(); ++r) {
      const std::size_t q = short_rows[r];
      candidates.clear();
      for (const neighbors& found : results)
        for (std::size_t i = 0; i < found.k(); ++i) candidates.push_back({found.distance(r, i), found.id(r, i)});
      detail::merge_row(candidates, out.row_ids(q), out.row_distances(q));
      if (is_short(q)) still_short.push_back(q);
    }
    short_rows = std::move(still_short);
  }
}

}  // namespace

void collection::search(matrix_view<const float> queries, neighbors_view out, const search_params& user) const {
  const detail::collection_state& st = *state_;
  detail::check_result_buffer(queries.rows, out, "collection::search");
  detail::check_vectors(queries, st.options.dim, "collection::search: query");
  // The shards normalise cosine queries themselves; a zero one is named here, as this call's.
  if (st.options.metric == metric::cosine) detail::check_normalizable(queries, "collection::search: query");
  SHOAL_CHECK(st.trained.load(), "collection::search: the collection is not trained");
  // An outside coarse pass is built from one IVF index's centroids; semantic and hybrid shards train
  // their own, and no shard's centroids are reachable from here to build one for it (with it, a
  // semantic collection's recall fell from 0.995 to 0.12 without an error).
  SHOAL_CHECK(user.coarse == nullptr,
              "collection::search: search_params::coarse is one IVF index's coarse pass; a collection's shards "
              "have centroids of their own, so it takes none");
  const std::size_t nq = queries.rows;
  if (nq == 0) return;
  // IVF shards leave their short rows to the collection (`widen_lists`).
  search_params params = user;
  params.widen = false;
  // Searches only: not rejected, failed or empty calls, which `searches` does not count either.
  const auto search_started = std::chrono::steady_clock::now();
  const std::shared_ptr<detail::layout> lay = st.current.load();
  const std::size_t shards = lay->shards.size();

  // Route: which shards each query visits, and where its rows land in each shard's batch.
  const auto route_started = std::chrono::steady_clock::now();
  matrix<float> unit;
  const detail::router::visits visits =
      lay->route.needs_centroids() && params.shard_probe > 0
          ? lay->route.visit(detail::routable(queries, st.options.metric, unit, "collection::search: query"),
                             params.shard_probe)
          : detail::router::visits{{}, shards, true};
  std::vector<std::vector<std::size_t>> rows(shards);  // queries of each shard (all: implicit)
  std::vector<std::size_t> position;                   // row of (query, visit j) inside its shard's batch
  std::vector<std::size_t> active;
  if (visits.all) {
    active.resize(shards);
    std::iota(active.begin(), active.end(), std::size_t{0});
  } else {
    position.resize(visits.shards.size());
    for (std::size_t i = 0; i < visits.shards.size(); ++i) {
      auto& r = rows[visits.shards[i]];
      position[i] = r.size();
      r.push_back(i / visits.per_query);
    }
    for (std::size_t s = 0; s < shards; ++s)
      if (!rows[s].empty()) active.push_back(s);
  }
  st.route_latency.record(std::chrono::nanoseconds(detail::elapsed_ns(route_started)));

  // Fan out: every active shard searches its batch, in parallel.
  std::vector<neighbors> results(shards);
  {
    const std::shared_lock reading(lay->moving);  // no id leaves a shard it may be found in meanwhile
    detail::parallel_for(active.size(), [&](std::size_t a) {
      const std::size_t s = active[a];
      const matrix<float> batch = visits.all ? matrix<float>() : detail::gather(queries, rows[s]);
      const matrix_view<const float> q = visits.all ? queries : batch.view();
      results[s] = detail::search_shard(st, *lay->shards[s], s, q, out.k, params);
    });
  }

  // Merge per query.
  const auto merge_started = std::chrono::steady_clock::now();
  std::vector<scored_id> candidates;
  for (std::size_t q = 0; q < nq; ++q) {
    candidates.clear();
    for (std::size_t j = 0; j < visits.per_query; ++j) {
      const std::size_t s = visits.all ? j : visits.shards[q * visits.per_query + j];
      const std::size_t row = visits.all ? q : position[q * visits.per_query + j];
      const neighbors& r = results[s];
      for (std::size_t i = 0; i < r.k(); ++i) candidates.push_back({r.distance(row, i), r.id(row, i)});
    }
    detail::merge_row(candidates, out.row_ids(q), out.row_distances(q));
  }
  if (!visits.all) widen_routed(st, *lay, queries, visits, out, params);
  if (user.widen) widen_lists(st, *lay, queries, out, params);
  st.merge_latency.record(std::chrono::nanoseconds(detail::elapsed_ns(merge_started)));
  st.search_latency.record(std::chrono::nanoseconds(detail::elapsed_ns(search_started)));
  st.queries.fetch_add(nq, std::memory_order_relaxed);
  st.searches.fetch_add(1, std::memory_order_relaxed);
}

neighbors collection::search(matrix_view<const float> queries, std::size_t k, const search_params& params) const {
  SHOAL_CHECK(k > 0, "collection::search: k must be at least 1");
  neighbors result(queries.rows, k);
  search(queries, result.view(), params);
  return result;
}

// --------------------------------------------------------------------------------------------- replicas

namespace {
detail::replica_slot& replica_at(const detail::layout& lay, std::size_t shard, std::size_t replica, const char* who) {
  SHOAL_CHECK(shard < lay.shards.size(), who, ": shard ", shard, " out of range (", lay.shards.size(), " shards)");
  SHOAL_CHECK(replica < lay.shards[shard]->replicas.size(), who, ": replica ", replica, " out of range (",
              lay.shards[shard]->replicas.size(), " replicas)");
  return *lay.shards[shard]->replicas[replica];
}
}  // namespace

void collection::take_down(std::size_t shard, std::size_t replica) {
  // Held shared, as writes hold it: a rebalance's swap, which carries each replica's state over to the
  // new layout, sees this call's change whole or not at all.
  const std::shared_lock layout_lock(state_->layout_mutex);
  const std::shared_ptr<detail::layout> lay = state_->current.load();
  detail::replica_slot& rep = replica_at(*lay, shard, replica, "collection::take_down");
  detail::shard_state& sh = *lay->shards[shard];
  const std::lock_guard lock(sh.write_mutex);
  if (!rep.up.load()) return;
  const auto live = std::count_if(sh.replicas.begin(), sh.replicas.end(), [](const auto& r) { return r->up.load(); });
  SHOAL_CHECK(live > 1, "collection::take_down: replica ", replica, " is the last live replica of shard ", shard);
  rep.up.store(false);
  rep.index.store(nullptr);  // memory goes when the last search using it ends
  rep.lag.store(0);
}

void collection::restore(std::size_t shard, std::size_t replica) {
  detail::collection_state& st = *state_;
  const std::shared_lock layout_lock(st.layout_mutex);  // as in take_down
  const std::shared_ptr<detail::layout> lay = st.current.load();
  detail::replica_slot& rep = replica_at(*lay, shard, replica, "collection::restore");
  detail::shard_state& sh = *lay->shards[shard];
  const auto started = std::chrono::steady_clock::now();
  const std::lock_guard lock(sh.write_mutex);  // the shard's writes wait until the copy is live
  if (rep.up.load()) return;
  std::shared_ptr<any_index> peer;
  for (const auto& r : sh.replicas)
    if (r->up.load() && (peer = r->index.load())) break;
  SHOAL_CHECK_CODE(peer != nullptr, errc::unsupported, "collection::restore: shard ", shard, " has no live replica");
  // The copy goes through the file format: exact for every index kind that can be saved. The file lies
  // in a directory of its own that mkdtemp(3) creates with an unpredictable name, readable by this user
  // alone: it was a file of a predictable name in the shared temporary directory, readable by every
  // local user (an in-memory collection's vectors among them), whose name another file could take.
  // In the collection's own directory when it writes one, where the next writable open removes it if
  // this process dies first (in the shared temporary directory such leftovers accumulated).
  const bool in_home = !st.options.directory.empty() && !st.read_only;
  std::error_code ec;
  const std::filesystem::path temp_root = in_home ? st.options.directory : std::filesystem::temp_directory_path(ec);
  SHOAL_CHECK_CODE(!ec, errc::io_error, "collection::restore: no directory for the replica copy: ", ec.message());
  std::string pattern =
      (temp_root / (std::string(in_home ? detail::restore_dir_prefix : "shoal-replica-") + "XXXXXX")).string();
  SHOAL_CHECK_CODE(::mkdtemp(pattern.data()) != nullptr, errc::io_error, "collection::restore: cannot create ", pattern,
                   " for the replica copy: ", std::system_category().message(errno));
  const std::filesystem::path temp_dir = pattern;
  struct cleanup {
    const std::filesystem::path& dir;
    ~cleanup() {
      try {
        io::detail::remove_tree(dir);
      } catch (const std::bad_alloc&) {  // the copy stays in the temporary directory
      }
    }
  } remove_temp{temp_dir};
  const std::string temp = (temp_dir / "replica.shoal").string();
  peer->save(temp);
  auto copy = std::make_shared<any_index>(load_index(temp));
  rep.index.store(std::move(copy));
  rep.lag.store(0);
  rep.up.store(true);
  st.rebuild_ns.store(detail::elapsed_ns(started));
}

bool collection::replica_up(std::size_t shard, std::size_t replica) const {
  const std::shared_ptr<detail::layout> lay = state_->current.load();
  return replica_at(*lay, shard, replica, "collection::replica_up").up.load();
}

// ------------------------------------------------------------------------------------------- rebalance

void collection::rebalance() { detail::rebalance(*state_); }

void collection::wait_for_rebalance() {
  const std::lock_guard lock(state_->background_mutex);
  if (state_->background.joinable()) state_->background.join();
}

bool detail::drifted(const collection_state& st) {
  const double threshold = st.options.rebalance_threshold;
  const bool reclusters = st.options.policy == sharding::semantic || st.options.policy == sharding::hybrid;
  if (threshold <= 0 || !reclusters || st.closing.load()) return false;
  const std::uint64_t written_since = st.adds.load() + st.upserts.load() - st.written_at_rebalance.load();
  if (written_since * rebalance_growth_divisor < st.size_at_rebalance.load() << st.rebalance_backoff.load())
    return false;
  return over_threshold(st);
}

bool detail::over_threshold(double threshold, std::size_t largest, std::size_t total, std::size_t shards) {
  const double mean = static_cast<double>(total) / static_cast<double>(shards);
  return threshold > 0 && largest >= min_rebalance_shard && static_cast<double>(largest) > threshold * mean;
}

bool detail::over_threshold(const collection_state& st) {
  if (st.options.rebalance_threshold <= 0) return false;
  // Sizes from the shard indexes: O(shards) per add, where the routing table would cost O(size).
  std::size_t total = 0, largest = 0;
  const std::shared_ptr<layout> lay = st.current.load();
  for (const auto& shard : lay->shards) {
    const std::size_t size = live_size(*shard);
    total += size;
    largest = std::max(largest, size);
  }
  return over_threshold(st.options.rebalance_threshold, largest, total, lay->shards.size());
}

void detail::rebalance(collection_state& st) {
  SHOAL_CHECK_CODE(st.options.policy == sharding::semantic || st.options.policy == sharding::hybrid, errc::unsupported,
                   "collection::rebalance: only semantic and hybrid collections re-cluster (this "
                   "one uses ",
                   sharding_name(st.options.policy), " sharding)");
  SHOAL_CHECK_CODE(!st.read_only, errc::unsupported, "collection::rebalance: the collection is read-only");
  detail::check_returns_vectors(st.options.index, st.shard_kind, "collection::rebalance");
  const std::lock_guard one_at_a_time(st.rebalance_mutex);
  const auto started = std::chrono::steady_clock::now();
  std::shared_ptr<detail::layout> old;
  {
    // Under the layout lock: every write already past its capture check has been applied (and is in
    // the snapshot below); every later one is captured. The layout is read under it too, so that a
    // `train` cannot publish another one in between (checked again at the swap).
    const std::unique_lock layout_lock(st.layout_mutex);
    old = st.current.load();
    SHOAL_CHECK(old->route.trained(), "collection::rebalance: the collection is not trained (train() first)");
    const std::lock_guard lock(st.capture_mutex);
    st.capturing = true;
    st.captured.clear();
  }
  struct stop_capture {
    detail::collection_state& st;
    ~stop_capture() {
      const std::lock_guard lock(st.capture_mutex);
      st.capturing = false;
      st.captured.clear();
    }
  } stop{st};

  // Snapshot the vectors: ids from the table, vectors from a live replica of their shard. Writes that
  // race with the snapshot are captured and replayed onto the new layout below.
  std::vector<vector_id> ids;
  std::vector<std::uint32_t> from;
  {
    const std::shared_lock lock(old->table_mutex);
    st.written_at_rebalance.store(st.adds.load() + st.upserts.load());
    st.size_at_rebalance.store(old->table.size());
    ids.reserve(old->table.size());
    from.reserve(old->table.size());
    old->table.for_each([&](vector_id id, std::uint32_t s) {
      ids.push_back(id);
      from.push_back(s);
    });
  }
  matrix<float> vectors(ids.size(), st.options.dim);
  std::vector<char> present(ids.size(), 1);
  detail::parallel_for(ids.size(), [&](std::size_t i) {
    detail::shard_state& shard = *old->shards[from[i]];
    const detail::live_replica live = detail::pick_replica(shard);
    try {
      SHOAL_CHECK_CODE(live, errc::unsupported, "no live replica");
      const std::vector<float> v =
          detail::read_replica(shard, *live.rep, *live.index, [&](const any_index& x) { return x.vector(ids[i]); });
      std::copy(v.begin(), v.end(), vectors.row(i));
    } catch (const error& e) {
      if (e.code() != errc::not_found) throw;
      present[i] = 0;  // removed meanwhile: the capture has it
    }
  });
  // The snapshot is the one copy of the vectors beside the old and the new layout: removed rows are
  // compacted out and rows grouped by new shard in place, and each shard adds its group as a view.
  std::size_t kept = 0;
  for (std::size_t i = 0; i < ids.size(); ++i)
    if (present[i]) {
      if (kept != i) std::copy_n(vectors.row(i), vectors.dim, vectors.row(kept));
      ids[kept++] = ids[i];
    }
  ids.resize(kept);
  vectors.rows = kept;
  vectors.values.resize(kept * vectors.dim);
  const std::size_t share = detail::training_share(st, kept, "collection::rebalance", "the collection");

  // The new layout: re-trained router and shards, every vector added to its new shard.
  std::shared_ptr<detail::layout> lay = st.empty_layout();
  std::vector<std::size_t> begin(lay->shards.size() + 1, 0);  // shard s holds rows [begin[s], begin[s + 1])
  {
    matrix<float> unit;
    const matrix_view<const float> routed = detail::routable(vectors.view(), st.options.metric, unit);
    if (routed.rows >= lay->route.centroid_count())
      lay->route.train(routed);
    else
      lay->route.share_centroids(old->route);
    const std::vector<std::uint32_t> to = lay->route.route(routed, ids, {});
    for (const std::uint32_t s : to) ++begin[s + 1];
    std::partial_sum(begin.begin(), begin.end(), begin.begin());
    // Row i goes to position at[i]: its shard's block, in the order of the rows (a cycle walk of swaps).
    std::vector<std::size_t> at(kept), next(begin.begin(), begin.end() - 1);
    for (std::size_t i = 0; i < kept; ++i) at[i] = next[to[i]]++;
    for (std::size_t i = 0; i < kept; ++i)
      while (at[i] != i) {
        const std::size_t j = at[i];
        std::swap_ranges(vectors.row(i), vectors.row(i) + vectors.dim, vectors.row(j));
        std::swap(ids[i], ids[j]);
        std::swap(at[i], at[j]);
      }
  }
  detail::parallel_for(lay->shards.size(), [&](std::size_t s) {
    const matrix_view<const float> part = vectors.view().slice(begin[s], begin[s + 1] - begin[s]);
    const std::span<const vector_id> part_ids(ids.data() + begin[s], part.rows);
    st.executor(s).execute([&] {
      for (const auto& rep : lay->shards[s]->replicas) {
        const std::shared_ptr<any_index> index = rep->index.load();
        if (!index->is_trained()) index->train(part.rows >= share ? part : vectors.view());
        if (!part_ids.empty()) index->add(part, part_ids);
      }
    });
  });
  // The table in shard order, not in the order the shards finished: where ids collide their slots
  // depend on it, the next rebalance reads the ids in slot order, and its k-means then depended on the
  // threads' timing (a review: shard sizes differed between runs after three rebalances).
  {
    const std::unique_lock lock(lay->table_mutex);
    lay->table.reserve(kept);
    for (std::size_t s = 0; s < lay->shards.size(); ++s)
      for (std::size_t i = begin[s]; i < begin[s + 1]; ++i)
        (void)lay->table.insert_or_assign(ids[i], static_cast<std::uint32_t>(s));
  }

  // Swap: writers wait while the captured writes are replayed onto the new layout (as upserts and
  // removes of present ids, which is idempotent whatever the snapshot saw), then it goes live.
  {
    const std::unique_lock layout_lock(st.layout_mutex);
    SHOAL_CHECK_CODE(st.current.load() == old, errc::unsupported,
                     "collection::rebalance: another layout was published while it ran; nothing changed");
    std::list<detail::wal_record> captured;
    {
      const std::lock_guard lock(st.capture_mutex);
      captured = std::move(st.captured);
      st.captured.clear();
      st.capturing = false;
    }
    for (const detail::wal_record& r : captured) {
      if (r.op == detail::wal_op::remove) {
        std::vector<vector_id> gone;
        {
          const std::shared_lock lock(lay->table_mutex);
          for (const vector_id id : r.ids)
            if (lay->table.contains(id)) gone.push_back(id);
        }
        st.apply(*lay, detail::wal_op::remove, {}, {}, gone, {});
      } else {
        matrix<float> unit;
        st.apply(*lay, detail::wal_op::upsert, r.vectors.view(),
                 detail::routable(r.vectors.view(), st.options.metric, unit), r.ids, r.keys);
      }
    }
    // A replica taken down stays down (with its lag) until restore(): a rebalance is no repair.
    for (std::size_t s = 0; s < lay->shards.size(); ++s)
      for (std::size_t r = 0; r < lay->shards[s]->replicas.size(); ++r) {
        const detail::replica_slot& was = *old->shards[s]->replicas[r];
        detail::replica_slot& now = *lay->shards[s]->replicas[r];
        if (was.up.load()) continue;
        now.up.store(false);
        now.index.store(nullptr);
        now.lag.store(was.lag.load());
      }
    st.current.store(lay);
  }
  st.rebalances.fetch_add(1, std::memory_order_relaxed);
  st.rebalance_ns.store(detail::elapsed_ns(started));
  // Only this function writes it, one run at a time (rebalance_mutex). Judged by the layout this run
  // built, not the live sizes: writes replayed at the swap or arriving since are not its doing.
  std::size_t largest = 0;
  for (std::size_t s = 0; s < lay->shards.size(); ++s) largest = std::max(largest, begin[s + 1] - begin[s]);
  st.rebalance_backoff.store(detail::over_threshold(st.options.rebalance_threshold, largest, kept, lay->shards.size())
                                 ? std::min(st.rebalance_backoff.load() + 1, detail::rebalance_backoff_limit)
                                 : 0);
}

// -------------------------------------------------------------------------------------------- metrics

collection_stats collection::stats() const {
  const detail::collection_state& st = *state_;
  collection_stats s;
  s.shard_sizes = shard_sizes();
  s.size = std::accumulate(s.shard_sizes.begin(), s.shard_sizes.end(), std::size_t{0});
  s.queries = st.queries.load();
  s.writes = st.adds.load() + st.upserts.load() + st.removes.load();
  s.uptime_seconds = static_cast<double>(detail::elapsed_ns(st.created)) * 1e-9;
  const detail::latency_histogram::snapshot h = st.search_latency.read();
  s.p50_seconds = h.quantile(0.50);
  s.p95_seconds = h.quantile(0.95);
  s.p99_seconds = h.quantile(0.99);
  s.rebalances = st.rebalances.load();
  s.wal_records_replayed = st.replayed;
  s.wal_bytes_dropped = st.wal_dropped;
  return s;
}

std::string collection::metrics_text(std::string_view name) const {
  const std::pair<std::string_view, const collection*> one{name, this};
  return metrics_text_of(std::span(&one, 1));
}

std::string collection::metrics_text_of(std::span<const std::pair<std::string_view, const collection*>> named) {
  using detail::prometheus_writer;
  using histogram = detail::latency_histogram::snapshot;
  static constexpr const char* stage_names[] = {"route", "shard", "merge", "search", "write"};
  // What a scrape reads of one collection, once: its histograms' quantile gauges come from the same
  // snapshots as the histograms themselves.
  struct scraped {
    const detail::collection_state* st;
    std::string base;  // collection="name"
    std::shared_ptr<detail::layout> lay;
    std::vector<std::size_t> sizes;
    std::size_t memory;
    std::vector<histogram> stages;
    std::vector<histogram> shards;
  };
  std::vector<scraped> all;
  all.reserve(named.size());
  // Names compared as given: escaping maps distinct names to distinct label values.
  std::unordered_set<std::string_view> names;
  names.reserve(named.size());
  for (const auto& [name, c] : named) {
    SHOAL_CHECK(c != nullptr && c->state_ != nullptr, "collection::metrics_text: collection \"", name,
                "\" is null or moved from");
    // A scrape with one malformed label value is refused whole by Prometheus's parser.
    SHOAL_CHECK(detail::valid_utf8(name), "collection::metrics_text: the name is not valid UTF-8");
    // The same series twice is refused whole too.
    SHOAL_CHECK(names.insert(name).second, "collection::metrics_text: the name \"", name, "\" is given twice");
    const detail::collection_state& st = *c->state_;
    scraped x{
        &st, prometheus_writer::label("collection", name), st.current.load(), c->shard_sizes(), c->memory_bytes(), {},
        {}};
    for (const detail::latency_histogram* h :
         {&st.route_latency, &st.shard_latency, &st.merge_latency, &st.search_latency, &st.write_latency})
      x.stages.push_back(h->read());
    for (std::size_t s = 0; s < x.lay->shards.size(); ++s) x.shards.push_back(st.shard_stats[s]->latency.read());
    all.push_back(std::move(x));
  }
  const auto with = [](const scraped& x, std::string_view key, const std::string& value) {
    return x.base + "," + prometheus_writer::label(key, value);
  };
  const auto replica = [&](const scraped& x, std::size_t s, std::size_t r) {
    return with(x, "shard", std::to_string(s)) + "," + prometheus_writer::label("replica", std::to_string(r));
  };
  std::string out;
  prometheus_writer w(out);
  // One family at a time, every collection's samples under it: HELP and TYPE once per family.
  const auto family = [&](const char* metric, const char* type, const char* help, const auto& samples) {
    w.family(metric, type, help);
    for (const scraped& x : all) samples(x, *x.st);
  };
  // One sample per collection, labelled by the collection alone.
  const auto scalar = [&](const char* metric, const char* type, const char* help, const auto& value) {
    family(metric, type, help, [&](const scraped& x, const auto& st) { w.sample(metric, x.base, value(x, st)); });
  };
  scalar("shoal_vectors", "gauge", "Vectors stored in the collection.", [](const scraped& x, const auto&) {
    return static_cast<double>(std::accumulate(x.sizes.begin(), x.sizes.end(), std::size_t{0}));
  });
  family("shoal_shard_vectors", "gauge", "Vectors stored per shard.", [&](const scraped& x, const auto&) {
    for (std::size_t s = 0; s < x.sizes.size(); ++s)
      w.sample("shoal_shard_vectors", with(x, "shard", std::to_string(s)), static_cast<double>(x.sizes[s]));
  });
  scalar("shoal_memory_bytes", "gauge", "Bytes held by every replica and the routing table.",
         [](const scraped& x, const auto&) { return static_cast<double>(x.memory); });
  scalar("shoal_queries_total", "counter", "Query vectors searched (QPS is its rate).",
         [](const scraped&, const auto& st) { return static_cast<double>(st.queries.load()); });
  scalar("shoal_search_calls_total", "counter", "Search calls (each a batch of one or more queries).",
         [](const scraped&, const auto& st) { return static_cast<double>(st.searches.load()); });
  family("shoal_writes_total", "counter", "Vectors written, by operation.", [&](const scraped& x, const auto& st) {
    w.sample("shoal_writes_total", with(x, "op", "add"), static_cast<double>(st.adds.load()));
    w.sample("shoal_writes_total", with(x, "op", "upsert"), static_cast<double>(st.upserts.load()));
    w.sample("shoal_writes_total", with(x, "op", "remove"), static_cast<double>(st.removes.load()));
  });
  family("shoal_stage_latency_seconds", "histogram",
         "Latency per call of each stage: route, shard (one shard's search), merge, search (whole call), write.",
         [&](const scraped& x, const auto&) {
           for (std::size_t i = 0; i < x.stages.size(); ++i)
             w.histogram("shoal_stage_latency_seconds", with(x, "stage", stage_names[i]), x.stages[i]);
         });
  family("shoal_stage_latency_quantile_seconds", "gauge",
         "p50 / p95 / p99 of each stage, interpolated in its histogram's buckets, at most its slowest sample.",
         [&](const scraped& x, const auto&) {
           for (std::size_t i = 0; i < x.stages.size(); ++i)
             for (const auto& [q, text] : {std::pair{0.5, "0.5"}, std::pair{0.95, "0.95"}, std::pair{0.99, "0.99"}})
               w.sample("shoal_stage_latency_quantile_seconds",
                        with(x, "stage", stage_names[i]) + "," + prometheus_writer::label("quantile", text),
                        x.stages[i].quantile(q));
         });
  family("shoal_shard_latency_seconds", "histogram", "Search latency per shard.", [&](const scraped& x, const auto&) {
    for (std::size_t s = 0; s < x.shards.size(); ++s)
      w.histogram("shoal_shard_latency_seconds", with(x, "shard", std::to_string(s)), x.shards[s]);
  });
  const auto per_replica = [&](const char* metric, const char* type, const char* help, const auto& value) {
    family(metric, type, help, [&](const scraped& x, const auto& st) {
      for (std::size_t s = 0; s < x.lay->shards.size(); ++s)
        for (std::size_t r = 0; r < x.lay->shards[s]->replicas.size(); ++r)
          w.sample(metric, replica(x, s, r), value(*x.lay->shards[s]->replicas[r], *st.shard_stats[s], r));
    });
  };
  per_replica("shoal_replica_up", "gauge", "1 when the replica serves reads and writes, 0 when taken down.",
              [](const auto& rep, const auto&, std::size_t) { return rep.up.load() ? 1.0 : 0.0; });
  per_replica("shoal_replica_lag_writes", "gauge", "Vector writes a downed replica has missed (0 when live).",
              [](const auto& rep, const auto&, std::size_t) { return static_cast<double>(rep.lag.load()); });
  per_replica(
      "shoal_replica_searches_total", "counter", "Shard searches served by each replica.",
      [](const auto&, const auto& stats, std::size_t r) { return static_cast<double>(stats.served[r].load()); });
  const auto seconds = [](const detail::atomic_ns& ns) { return static_cast<double>(ns.load()) * 1e-9; };
  scalar("shoal_train_seconds", "gauge", "Duration of the last train() (router k-means and shard training).",
         [&](const scraped&, const auto& st) { return seconds(st.train_ns); });
  scalar("shoal_rebalance_seconds", "gauge", "Duration of the last re-clustering (re-index) of the shards.",
         [&](const scraped&, const auto& st) { return seconds(st.rebalance_ns); });
  scalar("shoal_rebalances_total", "counter", "Completed re-clusterings.",
         [](const scraped&, const auto& st) { return static_cast<double>(st.rebalances.load()); });
  scalar("shoal_replica_rebuild_seconds", "gauge", "Duration of the last replica rebuild from a peer.",
         [&](const scraped&, const auto& st) { return seconds(st.rebuild_ns); });
  scalar("shoal_checkpoint_seconds", "gauge", "Duration of the last snapshot written.",
         [&](const scraped&, const auto& st) { return seconds(st.checkpoint_ns); });
  scalar("shoal_wal_replayed_records", "gauge", "Write-ahead log records replayed when the collection was opened.",
         [](const scraped&, const auto& st) { return static_cast<double>(st.replayed); });
  scalar("shoal_wal_dropped_bytes", "gauge",
         "Bytes cut from the end of the write-ahead log when the collection was opened (a torn last write).",
         [](const scraped&, const auto& st) { return static_cast<double>(st.wal_dropped); });
  scalar("shoal_uptime_seconds", "gauge", "Seconds since the collection was created or opened.",
         [](const scraped&, const auto& st) { return static_cast<double>(detail::elapsed_ns(st.created)) * 1e-9; });
  return out;
}

}  // namespace shoal
