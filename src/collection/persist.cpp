// A collection directory (docs/format.md, "Collection directories"):
//   MANIFEST.shoal          the layout, router centroids and routing table, in the index file format
//                           (kind 5), written atomically and last
//   shard-<s>-g<G>.shoal    shard s of snapshot generation G, an ordinary index file
//   wal.log                 writes since the snapshot (collection/wal.hpp)
// A snapshot writes every shard file of a new generation first, then renames the manifest that names
// that generation into place, then deletes the files of other generations: a crash at any point
// leaves one complete snapshot that the manifest names.

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <string>
#include <string_view>

#include "collection/state.hpp"
#include "io/file_util.hpp"
#include "io/format.hpp"
#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "shoal/index/factory.hpp"
#include "shoal/index/ivf_pq.hpp"

namespace shoal {
namespace detail {
namespace {

constexpr std::uint32_t tag_params = io::detail::make_tag("COLP");
constexpr std::uint32_t tag_spec = io::detail::make_tag("SPEC");
constexpr std::uint32_t tag_bounds = io::detail::make_tag("RBND");
constexpr std::uint32_t tag_centroids = io::detail::make_tag("RCEN");
constexpr std::uint32_t tag_table_ids = io::detail::make_tag("TIDS");
constexpr std::uint32_t tag_table_shards = io::detail::make_tag("TSHD");

/// The fixed-width parameter section of a manifest.
struct manifest_params {
  std::uint32_t policy;
  std::uint32_t shards;
  std::uint32_t replicas;
  std::uint32_t groups;
  std::uint32_t threads_per_shard;
  std::uint32_t sync;
  std::uint64_t seed;
  double rebalance_threshold;
  std::uint64_t generation;     // shard files of this generation hold the snapshot
  std::uint64_t wal_sequence;   // last log record the snapshot contains
  std::uint32_t centroid_rows;  // 0: router untrained
  float semantic_balance;       // format 1.1; reserved and zero (plain k-means) before
};
static_assert(sizeof(manifest_params) == 64);

/// The generation of a shard file name ("shard-3-g12.shoal" → 12), or -1 for any other name, including
/// one whose generation does not fit 63 bits (a stray file is left alone, never an exception).
std::int64_t generation_of(std::string_view file) {
  constexpr std::string_view prefix = "shard-", suffix = ".shoal";
  if (!file.starts_with(prefix) || !file.ends_with(suffix)) return -1;
  file = file.substr(prefix.size(), file.size() - prefix.size() - suffix.size());
  const std::size_t mark = file.find("-g");
  if (mark == std::string_view::npos) return -1;
  const std::string_view shard = file.substr(0, mark), generation = file.substr(mark + 2);
  const auto digits = [](std::string_view s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  if (!digits(shard) || !digits(generation)) return -1;
  std::int64_t value = -1;
  const auto [end, ec] = std::from_chars(generation.data(), generation.data() + generation.size(), value);
  return ec == std::errc{} && end == generation.data() + generation.size() ? value : -1;
}

/// Deletes shard files of every generation but `keep`, and what `remove_leftovers` deletes (best effort:
/// leftovers cost disk, not data).
void remove_other_generations(const std::filesystem::path& dir, std::uint64_t keep) noexcept {
  remove_leftovers(dir);
  try {
    for (const std::string& file : io::detail::directory_entries(dir)) {
      const std::int64_t g = generation_of(file);
      if (g >= 0 && static_cast<std::uint64_t>(g) != keep) (void)std::remove((dir / file).c_str());
    }
  } catch (const std::bad_alloc&) {  // after the snapshot is in place: a save that worked does not fail
  }
}

}  // namespace

void remove_leftovers(const std::filesystem::path& dir) noexcept {
  try {
    for (const std::string& file : io::detail::directory_entries(dir)) {
      const std::size_t mark = file.find(".tmp.");  // io::detail::atomic_writer's temporaries: <target>.tmp.<pid>.<n>
      if (mark != std::string::npos) {
        const std::string target = file.substr(0, mark);
        if (target == manifest_file_name || generation_of(target) >= 0) (void)std::remove((dir / file).c_str());
      } else if (file.starts_with(restore_dir_prefix)) {
        io::detail::remove_tree(dir / file);
      }
    }
  } catch (const std::bad_alloc&) {  // best effort: leftovers cost disk, not data
  }
}

std::uint64_t next_generation(const std::filesystem::path& dir) {
  std::uint64_t next = 1;
  for (const std::string& file : io::detail::directory_entries(dir)) {
    const std::int64_t g = generation_of(file);
    if (g >= 0) next = std::max(next, static_cast<std::uint64_t>(g) + 1);
  }
  return next;
}

void collection_state::write_snapshot(const layout& lay, const std::filesystem::path& dir, std::uint64_t gen,
                                      std::uint64_t wal_sequence) const {
  const auto snapshot_started = std::chrono::steady_clock::now();
  std::error_code ec;
  io::detail::create_directories_durably(dir, ec);
  SHOAL_CHECK_CODE(!ec, errc::io_error, "collection::save: cannot create ", dir.string(), ": ", ec.message());
  // A snapshot that fails before its manifest replaces the old one takes its shard files with it: no
  // manifest names generation `gen` (a new one, `next_generation`), and every attempt takes a new one,
  // so saves failing again and again (a full disk, out of memory) piled up partial snapshots until one
  // worked. A failure after the rename (persisting it) leaves them: the manifest names them. (Until a
  // review, any failure of the manifest's commit left them, though writing it is where a full disk
  // fails: each retry left one more generation.)
  bool manifest_replaced = false;
  try {
    write_generation(lay, dir, gen, wal_sequence, manifest_replaced);
  } catch (...) {
    if (!manifest_replaced) {
      try {
        for (std::size_t s = 0; s < lay.shards.size(); ++s) (void)std::remove((dir / shard_file_name(s, gen)).c_str());
      } catch (const std::bad_alloc&) {  // best effort: the exception that counts is the first one
      }
    }
    throw;
  }
  remove_other_generations(dir, gen);
  checkpoint_ns.store(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - snapshot_started)
          .count());
}

void collection_state::write_generation(const layout& lay, const std::filesystem::path& dir, std::uint64_t gen,
                                        std::uint64_t wal_sequence, bool& manifest_replaced) const {
  for (std::size_t s = 0; s < lay.shards.size(); ++s) {
    const shard_state& shard = *lay.shards[s];
    bool saved = false;
    for (const auto& rep : shard.replicas) {
      const std::shared_ptr<any_index> index = rep->up.load() ? rep->index.load() : nullptr;
      if (!index) continue;
      const std::string path = (dir / shard_file_name(s, gen)).string();
      read_replica(shard, *rep, *index, [&](const any_index& i) { i.save(path); });
      saved = true;
      break;
    }
    SHOAL_CHECK_CODE(saved, errc::unsupported, "collection::save: shard ", s, " has no live replica");
  }

  std::vector<vector_id> ids;
  std::vector<std::uint32_t> owners;
  {
    const std::shared_lock lock(lay.table_mutex);
    ids.reserve(lay.table.size());
    owners.reserve(lay.table.size());
    lay.table.for_each([&](vector_id id, std::uint32_t s) {
      ids.push_back(id);
      owners.push_back(s);
    });
  }
  const matrix_view<const float> centroids = lay.route.centroids();
  manifest_params p{};
  p.policy = static_cast<std::uint32_t>(options.policy);
  p.shards = static_cast<std::uint32_t>(options.shards);
  p.replicas = static_cast<std::uint32_t>(options.replicas);
  p.groups = static_cast<std::uint32_t>(options.groups);
  p.threads_per_shard = static_cast<std::uint32_t>(recorded_threads_per_shard);
  p.sync = static_cast<std::uint32_t>(options.sync);
  p.seed = options.seed;
  p.rebalance_threshold = options.rebalance_threshold;
  p.semantic_balance = static_cast<float>(options.semantic_balance);
  p.generation = gen;
  p.wal_sequence = wal_sequence;
  p.centroid_rows = static_cast<std::uint32_t>(centroids.rows);

  io::detail::index_file_writer out(dir / manifest_file_name,
                                    {index_kind::collection, options.metric, options.dim, ids.size()});
  out.begin_section(tag_params);
  out.append_value(p);
  out.begin_section(tag_spec);
  out.append(options.index.data(), options.index.size());
  out.begin_section(tag_bounds);
  out.append(std::span<const std::uint64_t>(options.range_bounds));
  out.begin_section(tag_centroids);
  out.append(std::span<const float>(centroids.data, centroids.rows * centroids.dim));
  out.begin_section(tag_table_ids);
  out.append(std::span<const vector_id>(ids));
  out.begin_section(tag_table_shards);
  out.append(std::span<const std::uint32_t>(owners));
  try {
    out.commit();
  } catch (...) {
    manifest_replaced = out.replaced();
    throw;
  }
}

}  // namespace detail

void collection::save(const std::filesystem::path& directory) const {
  SHOAL_CHECK(!directory.empty(), "collection::save: the directory path is empty");
  detail::collection_state& st = *state_;
  const std::unique_lock layout_lock(st.layout_mutex);  // every logged write is applied; new ones wait
  const std::shared_ptr<detail::layout> lay = st.current.load();
  std::error_code ec;
  const bool own = st.wal && std::filesystem::exists(directory, ec) &&
                   std::filesystem::equivalent(directory, st.options.directory, ec);
  // The collection's own directory, whatever is at that path now: one deleted, moved or replaced while
  // open was saved into as another directory (recreated without the log the collection still writes).
  // A read-only (mapped) collection writes no log, and may hold none (a read-only file system).
  if (st.wal && !st.read_only &&
      (own || std::filesystem::absolute(directory, ec).lexically_normal() == st.options.directory.lexically_normal()))
    st.wal->check_in_place();
  st.check_not_diverged("collection::save");
  SHOAL_CHECK_CODE(!(own && st.read_only), errc::unsupported, "collection::save: the collection is read-only ",
                   "(memory-mapped); save it into another directory");
  if (own) {
    const std::uint64_t generation = detail::next_generation(directory);
    st.write_snapshot(*lay, directory, generation, st.wal->last_sequence());
    st.snapshot_generation = generation;  // the manifest names it now, whether or not the reset works
    st.wal->reset();
    return;
  }
  // The log of whatever collection lives here stays until the new manifest replaces its own, and the
  // snapshot claims its records, so that none of them replays onto the snapshot (see stale_log).
  io::detail::create_directories_durably(directory, ec);
  SHOAL_CHECK_CODE(!ec, errc::io_error, "collection::save: cannot create ", directory.string(), ": ", ec.message());
  detail::write_ahead_log::stale_log stale(directory);
  st.write_snapshot(*lay, directory, detail::next_generation(directory), stale.last_sequence());
  stale.remove();
}

void collection::checkpoint() {
  SHOAL_CHECK(!state_->options.directory.empty(),
              "collection::checkpoint: the collection has no directory "
              "(set collection_options::directory, or use save(dir))");
  SHOAL_CHECK_CODE(!state_->read_only, errc::unsupported, "collection::checkpoint: the collection is read-only");
  save(state_->options.directory);
}

collection collection::open(const std::filesystem::path& directory, const collection_open_options& oo) {
  io::detail::check_verify_level(oo.verify);  // before the lock is taken and leftovers removed
  const std::filesystem::path manifest = directory / detail::manifest_file_name;
  SHOAL_CHECK(!directory.empty(), "collection::open: the directory path is empty");
  std::error_code ec;
  const std::filesystem::file_status status = std::filesystem::status(directory, ec);
  SHOAL_CHECK_CODE(!ec || status.type() == std::filesystem::file_type::not_found, errc::io_error,
                   "collection::open: ", directory.string(), ": ", ec.message());
  SHOAL_CHECK_CODE(std::filesystem::is_directory(status), errc::io_error, "collection::open: ", directory.string(),
                   std::filesystem::exists(status) ? " is not a directory" : " does not exist");
  SHOAL_CHECK_CODE(std::filesystem::exists(manifest, ec), errc::io_error, "collection::open: ", directory.string(),
                   " holds no collection (", detail::manifest_file_name, " is missing)");
  // Locked before the manifest is read, so that the directory's holder cannot replace the snapshot
  // between the two (write_ahead_log::held_log). A mapped open only reads the directory, so many may
  // share it; any other open writes it, alone.
  using lock_mode = detail::write_ahead_log::lock_mode;
  detail::write_ahead_log::held_log held(directory, oo.mmap ? lock_mode::shared : lock_mode::exclusive);
  if (!oo.mmap) detail::remove_leftovers(directory);  // the holder alone writes here: the rest is a dead one's
  const io::detail::index_file_reader in(manifest, {.mmap = false, .verify = oo.verify});
  in.expect_kind(index_kind::collection, "collection::open");
  in.check_known({detail::tag_params, detail::tag_spec, detail::tag_bounds, detail::tag_centroids,
                  detail::tag_table_ids, detail::tag_table_shards});
  const std::string& name = in.name();
  detail::manifest_params p{};
  in.read(detail::tag_params, &p, 1);
  SHOAL_CHECK_CODE(p.policy <= static_cast<std::uint32_t>(sharding::hybrid), errc::corrupt_file, name,
                   ": unknown sharding policy ", p.policy);
  SHOAL_CHECK_CODE(p.sync <= static_cast<std::uint32_t>(wal_sync::os_buffered), errc::corrupt_file, name,
                   ": unknown log sync policy ", p.sync);
  const std::vector<std::byte> spec = in.small_section(detail::tag_spec);

  collection_options o;
  o.dim = in.header().dim;
  o.metric = in.header().metric;
  o.index.assign(reinterpret_cast<const char*>(spec.data()), spec.size());
  o.policy = static_cast<sharding>(p.policy);
  o.shards = p.shards;
  o.replicas = p.replicas;
  o.groups = p.groups;
  SHOAL_CHECK(oo.threads_per_shard <= detail::max_threads_per_shard,
              "collection::open: threads_per_shard must be at most ", detail::max_threads_per_shard, ", got ",
              oo.threads_per_shard);
  o.threads_per_shard = oo.threads_per_shard > 0 ? oo.threads_per_shard : p.threads_per_shard;
  o.seed = p.seed;
  o.rebalance_threshold = p.rebalance_threshold;
  o.semantic_balance = p.semantic_balance;
  o.sync = static_cast<wal_sync>(p.sync);
  SHOAL_CHECK_CODE(p.shards >= 1 && p.shards <= 4096, errc::corrupt_file, name, ": ", p.shards, " shards");
  o.range_bounds.resize(in.section_size(detail::tag_bounds) / sizeof(std::uint64_t));
  in.read(detail::tag_bounds, o.range_bounds.data(), o.range_bounds.size());
  detail::shard_traits kind;
  try {
    kind = detail::validate(o);
  } catch (const error& e) {
    detail::throw_error(errc::corrupt_file, detail::str(name, ": the manifest holds invalid options: ", e.message()));
  }
  // Absolute, so that a later change of the working directory cannot send checkpoints elsewhere (the log
  // is written through its open descriptor, and a snapshot landed in another directory of the same name).
  o.directory = std::filesystem::absolute(directory);
  // A threshold an earlier build recorded over shards that cannot be re-clustered (IVF-PQ) is off: the
  // automatic rebalance it asks for failed at once, and started again after every write.
  if (!kind.returns_vectors) o.rebalance_threshold = 0;

  auto st = std::make_unique<detail::collection_state>();
  st->options = o;
  st->recorded_threads_per_shard = p.threads_per_shard;
  st->shard_kind = kind;
  st->snapshot_generation = p.generation;
  st->add_shards();

  auto lay = std::make_shared<detail::layout>(detail::router(o));
  if (p.centroid_rows > 0) {
    SHOAL_CHECK_CODE(lay->route.needs_centroids() && p.centroid_rows == lay->route.centroid_count(), errc::corrupt_file,
                     name, ": ", p.centroid_rows, " router centroids for ", sharding_name(o.policy), " sharding over ",
                     o.shards, " shards");
    matrix<float> centroids;  // sized from the section, checked against the header before any allocation
    centroids.values = in.read_vector<float>(detail::tag_centroids,
                                             io::detail::checked_mul(p.centroid_rows, o.dim, name, "router centroids"));
    centroids.rows = p.centroid_rows;
    centroids.dim = o.dim;
    // As an IVF file's centroids: finite and inside the norm bound (a larger one made every score
    // overflow and routed every vector to shard 0).
    detail::check_loaded_vectors(centroids.view(), name, "router centroid");
    lay->route.set_centroids(std::move(centroids));
  } else {
    SHOAL_CHECK_CODE(in.section_size(detail::tag_centroids) == 0, errc::corrupt_file, name, ": router centroids (",
                     in.section_size(detail::tag_centroids), " bytes) but no centroid rows");
  }
  const std::size_t count = in.header().count;
  {
    const aligned_vector<vector_id> ids = in.read_vector<vector_id>(detail::tag_table_ids, count);
    const aligned_vector<std::uint32_t> owners = in.read_vector<std::uint32_t>(detail::tag_table_shards, count);
    lay->table.reserve(count);
    for (std::size_t i = 0; i < count; ++i) {
      SHOAL_CHECK_CODE(owners[i] < o.shards, errc::corrupt_file, name, ": id ", ids[i], " routed to shard ", owners[i],
                       " of ", o.shards);
      SHOAL_CHECK_CODE(ids[i] != no_id, errc::corrupt_file, name, ": the routing table holds the reserved id ", no_id);
      SHOAL_CHECK_CODE(lay->table.insert_or_assign(ids[i], owners[i]), errc::corrupt_file, name, ": id ", ids[i],
                       " appears twice in the routing table");
    }
  }

  st->wal = std::make_unique<detail::write_ahead_log>(std::move(held), o.dim, o.sync, p.wal_sequence);
  std::vector<detail::wal_record> replay = st->wal->take_replay();
  // Writes to replay: the shards are loaded into memory and the records applied there, not to the files
  // or the log (the next writable open applies them for good), so a mapped open stays a reader.
  const bool mapped = oo.mmap && replay.empty();
  std::vector<std::vector<vector_id>> per_shard(o.shards);
  lay->table.for_each([&](vector_id id, std::uint32_t s) { per_shard[s].push_back(id); });
  for (std::size_t s = 0; s < o.shards; ++s) {
    auto shard = std::make_shared<detail::shard_state>();
    const std::string file = (directory / detail::shard_file_name(s, p.generation)).string();
    for (std::size_t r = 0; r < o.replicas; ++r) {
      auto index = std::make_shared<any_index>(load_index(file, {.mmap = mapped, .verify = oo.verify}));
      SHOAL_CHECK_CODE(index->dim() == o.dim && index->metric() == o.metric, errc::corrupt_file, file,
                       ": shard index of dimension ", index->dim(), " and metric ", metric_name(index->metric()),
                       ", the manifest says ", o.dim, " and ", metric_name(o.metric));
      SHOAL_CHECK_CODE(index->size() == per_shard[s].size(), errc::corrupt_file, file, ": shard holds ", index->size(),
                       " vectors, the routing table ", per_shard[s].size());
      // With the counts equal, the same ids: a shard file from another snapshot (or two swapped) would
      // open, then fail the first write that touches it, and that logged write every later open.
      // An IVF-PQ shard's ids are looked up sorted, one pass over its lists: `contains` would build its id
      // locator, which a shard opened only to search (mapped) never needs.
      if (r == 0) {
        std::vector<vector_id> pq_ids;
        if (const auto* pq = index->get_if<ivf_pq_index>()) pq_ids = pq->ids();
        std::sort(pq_ids.begin(), pq_ids.end());
        for (const vector_id id : per_shard[s])
          SHOAL_CHECK_CODE(pq_ids.empty() ? index->contains(id) : std::binary_search(pq_ids.begin(), pq_ids.end(), id),
                           errc::corrupt_file, file, ": id ", id, " is routed to this shard, which does not hold it");
      }
      auto rep = std::make_unique<detail::replica_slot>();
      shard->concurrent = index->concurrent_writes();
      rep->index.store(std::move(index));
      shard->replicas.push_back(std::move(rep));
    }
    lay->shards.push_back(std::move(shard));
  }
  st->trained.store(st->all_trained(*lay));
  st->current.store(lay);

  // Replay the log through the ordinary write path, without logging it again.
  std::unique_ptr<detail::write_ahead_log> wal = std::move(st->wal);
  for (const detail::wal_record& r : replay) {
    try {
      st->write(r.op, r.vectors.view(), r.ids, r.keys);
    } catch (const error& e) {
      detail::throw_error(errc::corrupt_file,
                          detail::str(directory.string(), "/", detail::write_ahead_log::file_name, ": record ",
                                      r.sequence, " cannot be applied: ", e.message()));
    }
  }
  st->wal = std::move(wal);
  // The replayed writes were counted by the process that made them: this one reports them as
  // `shoal_wal_replayed_records`, not as new writes (which a rate() over the write counters would show
  // as a burst at every open, read-only ones included).
  for (std::atomic<std::uint64_t>* counter : {&st->adds, &st->upserts, &st->removes}) counter->store(0);
  st->write_latency.reset();
  st->replayed = replay.size();
  st->wal_dropped = st->wal->dropped_bytes();
  for (const detail::wal_record& r : replay)
    st->replayed_ids.insert(st->replayed_ids.end(), r.ids.begin(), r.ids.end());
  std::sort(st->replayed_ids.begin(), st->replayed_ids.end());
  st->replayed_ids.erase(std::unique(st->replayed_ids.begin(), st->replayed_ids.end()), st->replayed_ids.end());
  st->read_only = oo.mmap;
  return collection(std::move(st));
}

}  // namespace shoal
