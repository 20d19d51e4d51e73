#include "shoal/index/hnsw.hpp"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <mutex>
#include <numeric>
#include <optional>
#include <shared_mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "core/all_or_nothing.hpp"
#include "core/parallel.hpp"
#include "index/hnsw_file.hpp"
#include "index/index_sections.hpp"
#include "index/scan.hpp"
#include "io/format.hpp"
#include "quant/sq8_estimate.hpp"
#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "shoal/core/topk.hpp"
#include "shoal/distance/distance.hpp"
#include "shoal/eval/eval.hpp"
#include "shoal/quant/sq.hpp"

namespace shoal {
namespace {

using slot_t = std::uint32_t;
constexpr slot_t no_slot = std::numeric_limits<slot_t>::max();
/// Nodes per chunk: a power of two, 2^10 where the rows are short, fewer where 2^10 of them would hold
/// more than `chunk_budget` bytes of bulk arrays (see `impl::chunk_shift_for`).
constexpr std::size_t max_chunk_shift = 10;
/// The bulk bytes (vectors, links, codes, terms) one chunk may hold. Chunks are allocated and saved whole,
/// so one chunk is the smallest an index can be: at 2^10 nodes of every dimension a single 1,536-d
/// vector took 6 MiB (702 MB for 256 vectors over 128 HNSW32 shards, a review found), and one of the
/// 2^24-dimension maximum 64 GiB. Under this budget a 1,536-d index starts at 128 nodes (0.8 MiB),
/// while rows up to 1 KiB (about 200 dimensions at M 16, full precision) keep chunks of 2^10.
constexpr std::size_t chunk_budget = std::size_t{1} << 20;
/// Growing one node at a time, an index takes new chunks in slabs of up to an eighth of what it holds,
/// capped at this many bytes: slabs of 4 MiB or more get huge pages (see `slab`), and the unused tail
/// stays under this beside an index of any size.
constexpr std::size_t slab_growth_cap = std::size_t{8} << 20;
constexpr std::uint64_t empty_entry = std::numeric_limits<std::uint64_t>::max();
constexpr std::size_t max_level = 63;

/// Test-and-test-and-set lock, one byte per node: link lists are held for a few hundred nanoseconds, far
/// below what a futex-based mutex costs to park and wake.
class spinlock {
 public:
  void lock() noexcept {
    for (unsigned spins = 0; flag_.exchange(true, std::memory_order_acquire);)
      while (flag_.load(std::memory_order_relaxed))
        if (++spins > 64) std::this_thread::yield();
  }
  void unlock() noexcept { flag_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> flag_{false};
};

/// 2^chunk_shift nodes, as parallel arrays so that traversal touches only what it reads: the state byte of every
/// neighbour (an array that stays in cache), the vectors it scores and the link lists it expands.
/// `state` is 0 for a free slot (or one written but not yet published) and level + 1 for a live node;
/// `ids` and `upper` are written before `state` is stored (release) and read only after it is loaded
/// (acquire), or under the exclusive structure lock.
struct chunk {
  std::unique_ptr<std::atomic<std::uint8_t>[]> state;
  // 1 while the node's insert runs. Other inserts neither route through such a node nor link to it:
  // its link lists are still being written, and a search that starts from a node whose list on its
  // level is still empty finds nothing else — the node inserted from there would get a single link.
  std::unique_ptr<std::atomic<std::uint8_t>[]> linking;
  std::unique_ptr<spinlock[]> locks;  // serialise writers of a node's link lists (readers take none)
  // Bottom-layer in-links per node (approximate under races, never below 0): a prune keeps a link that
  // is its target's last, so that no node becomes unreachable.
  std::unique_ptr<std::atomic<std::uint32_t>[]> in0;
  std::unique_ptr<vector_id[]> ids;
  std::unique_ptr<std::unique_ptr<slot_t[]>[]> upper;  // layers 1..level, each a count then M slots
  // The bulk arrays, searched through the pointers below: inside a `slab` of the index, or — in an
  // index loaded with mmap, which is read-only — inside the file mapping.
  float* vectors = nullptr;       // rows padded to 64 bytes
  slot_t* links0 = nullptr;       // per node: count, then 2M slots
  std::uint8_t* codes = nullptr;  // compressed traversal only: per node its codes, padded to 64 bytes
  // SQ8 / SQ4 only: per node the code-only term of its estimate. Kept apart from the codes so that a code row
  // is exactly its codes rounded up to 64 bytes: with the term in front (formats 1.0/1.1), a 128-byte
  // row spanned three cache lines instead of two, every dimension that is a multiple of 64 (CLIP's
  // 512 / 768 / 1024) paid a whole extra line per visited node, and the codes' vector loads straddled
  // line boundaries. The term is read when the neighbour is collected, from an array 1/dim the size of
  // the codes.
  float* terms = nullptr;
};

/// The bulk arrays of one or more consecutive chunks, allocated together. A batch that needs many
/// chunks (a bulk add, a load) gets them in one slab, whose arrays are then large enough for huge pages
/// (`aligned_allocator`): one chunk's SQ8 codes (850 KB at 784 dimensions) or vectors (3.2 MB) sit
/// below the huge-page threshold, and on 4 KiB pages nearly every node a search visits costs a TLB
/// miss: on fashion-mnist HNSW16,SQ8 (Sapphire Rapids VM) the prefetch of a neighbour's code row
/// stalled on the page walk for half of the neighbour-expansion time (perf annotate). One slab per load
/// or bulk add: 17.7k -> 20.4k QPS at ef 12 (three alternating runs), full precision 12.3k -> 13.4k.
struct slab {
  aligned_vector<float> vectors;
  aligned_vector<slot_t> links0;
  aligned_vector<std::uint8_t> codes;
  aligned_vector<float> terms;
};

/// One query as traversal scores it: full-precision distances from `q`; or — with `sq8` — SQ8 (or,
/// with `nibbles`, SQ4) estimates (see `sq8_estimator`); or — with `f16` — the metric's distance to the node's
/// half-precision codes, relative to the index's frame (`impl::prepare_half`).
struct query_ctx {
  const float* q;
  const detail::sq8_estimator* sq8 = nullptr;
  bool nibbles = false;  // with sq8: the codes are SQ4's packed 4-bit ones
  bool f16 = false;
  // F16: the estimate is `half_scale` · Σ (q_j − half(c_j))² under l2 and cosine (`q` then in the codes'
  // frame; the scale holds cosine's ½), or under inner product the distance from the inner product `half_offset` +
  // `half_scale` · Σ q_j · half(c_j). The defaults leave the kernels' sums as they are: −0 is the one float that adds
  // to every value without changing it.
  float half_scale = 1.0f;
  float half_offset = -0.0f;
  /// Whether nodes are scored from their codes rather than their full vectors.
  [[nodiscard]] bool coded() const noexcept { return sq8 != nullptr || f16; }
};

/// Link lists are read without locks: every entry is stored and loaded atomically (relaxed; plain moves
/// on x86), and the count is stored last with release. A reader racing a rewrite may see a mix of old and
/// new entries, each of them a slot that was linked at some point, and checks every slot's state before
/// using it — so a racing read costs at most a slightly different path, never a wrong result.
[[nodiscard]] inline slot_t load_link(const slot_t& entry,
                                      std::memory_order order = std::memory_order_relaxed) noexcept {
  return std::atomic_ref<slot_t>(const_cast<slot_t&>(entry)).load(order);
}
inline void store_link(slot_t& entry, slot_t value, std::memory_order order = std::memory_order_relaxed) noexcept {
  std::atomic_ref<slot_t>(entry).store(value, order);
}

/// A candidate node, ordered by (distance, slot).
struct cand {
  float distance;
  slot_t slot;
  friend bool operator<(const cand& a, const cand& b) noexcept {
    return a.distance < b.distance || (a.distance == b.distance && a.slot < b.slot);
  }
  friend bool operator>(const cand& a, const cand& b) noexcept { return b < a; }
};

/// One search's private scratch: a visited set cleared in O(1) by bumping an epoch, a buffer that a
/// link list is copied into, and the neighbours about to be scored in one gather-kernel call.
struct scratch {
  std::vector<std::uint32_t> tags;
  std::uint32_t epoch = 0;
  std::vector<slot_t> links;
  std::vector<slot_t> pending;                     // usable neighbours to score
  std::vector<const float*> pending_rows;          // their vectors
  std::vector<const std::uint8_t*> pending_codes;  // or their codes
  std::vector<float> pending_distances;
  std::vector<float> pending_terms;         // SQ8 / SQ4: their terms
  detail::sq8_estimator sq8;                // SQ8 / SQ4 traversal: the query's form
  std::vector<float> half_query;            // F16 traversal under l2: the query in the codes' frame
  std::vector<std::int32_t> dots;           // the pending rows' integer sums
  std::vector<std::int32_t> residual_dots;  // and, with two grids, their sums on the second
  std::vector<cand> frontier;               // min-heap
  std::vector<cand> best;                   // max-heap
  std::vector<std::uint8_t> expanded;       // search_pool: per best entry, whether it was expanded
  bool building = false;                    // an insert's search: skips nodes whose own insert is running

  void reset(std::size_t slots, std::size_t max_links) {
    if (++epoch == 0) {
      std::fill(tags.begin(), tags.end(), 0u);
      epoch = 1;
    }
    if (tags.size() < slots) tags.resize(slots, 0u);
    links.resize(max_links);
    pending.resize(max_links);
    pending_rows.resize(max_links);
    pending_codes.resize(max_links);
    pending_distances.resize(max_links);
    pending_terms.resize(max_links);
    dots.resize(max_links);
    residual_dots.resize(max_links);
  }
  /// Marks `s` visited; 1 if it was not yet (a new node), else 0. Inlined into the neighbour loop (a
  /// call there cost an eighth of an in-cache search) and branch-free apart from growing the tags for a
  /// node added since `reset`: whether a neighbour was visited is a coin toss the predictor cannot learn.
  /// Growing may throw `std::bad_alloc`, so no function on the way to it is noexcept: a search then
  /// throws having changed nothing, an insert marks the index unusable (its callers were noexcept, and
  /// out of memory beside concurrent adds called std::terminate; a review).
  [[gnu::always_inline]] std::size_t mark(slot_t s) {
    if (s >= tags.size()) [[unlikely]]
      grow(s);
    const std::size_t fresh = tags[s] != epoch ? 1 : 0;
    tags[s] = epoch;
    return fresh;
  }
  [[gnu::noinline]] void grow(slot_t s) { tags.resize(std::max<std::size_t>(std::size_t{s} + 1, tags.size() * 2), 0u); }
};

[[nodiscard]] std::uint64_t pack_entry(slot_t slot, std::size_t level) noexcept {
  return std::uint64_t{slot} | (std::uint64_t{level} << 32);
}

}  // namespace

struct hnsw_index::impl {
  std::size_t dim;
  shoal::metric metric;
  hnsw_params build;
  const distance_kernels* kern;
  const sq_kernels* half_kern;  // fp16 traversal's distances
  std::size_t stride;           // floats per stored row
  std::size_t code_stride;      // bytes per code row (0 without compressed traversal): codes, padding
  std::size_t max_links0;       // 2M
  std::size_t max_links;        // M
  double level_mult;
  std::size_t chunk_shift = max_chunk_shift;  // nodes per chunk: 2^chunk_shift (set once, before any chunk)
  std::size_t chunk_nodes = std::size_t{1} << max_chunk_shift;
  /// The neighbour selection's pruning factor on distances: α² (distances are squared) under l2 and
  /// cosine, 1 under inner product, whose distances −⟨x, y⟩ can be negative and would prune more.
  float prune_scale;

  // Chunk directory: `directory` points at the current table of chunk pointers. Growing it publishes a
  // copy twice as long; earlier tables stay alive (in `tables`, a few bytes per chunk) because a
  // reader may still hold one. Chunks themselves never move.
  std::atomic<std::atomic<chunk*>*> directory{nullptr};
  std::size_t directory_size = 0;                              // under slots_mutex
  std::vector<std::unique_ptr<std::atomic<chunk*>[]>> tables;  // under slots_mutex
  std::vector<std::unique_ptr<chunk>> owned_chunks;            // under slots_mutex
  std::vector<slab> slabs;                                     // under slots_mutex; buffers never move
  std::atomic<slot_t> slot_count{0};                           // slots ever handed out
  std::atomic<std::size_t> live_count{0};
  // Nodes added, removed or upserted since the last `repair_reachability`: adds leave a few nodes
  // unreachable (inner product, M 16: 25 of 10,000 added one at a time), and so did removals until they
  // kept their paths (`keep_paths`; M = 3: up to 12 of 1,125 after removing a quarter one by one); a
  // walk once they reach a sixteenth of the index brings them back, at a bounded cost per change.
  std::atomic<std::size_t> changed_since_repair{0};
  /// Set by `walk_soon` (a cut the local repairs could not mend) under the exclusive structure lock, read
  /// by `finish_exclusive_change` under it, cleared by every walk.
  std::atomic<bool> walk_requested{false};
  /// Where `relink` records the bottom-layer links it drops while `remove_slot` runs (see `keep_paths`);
  /// null otherwise. Set and read under the exclusive structure lock only.
  mutable std::vector<std::pair<slot_t, slot_t>>* dropped_links = nullptr;
  /// Points `dropped_links` at `to` for its lifetime (then back where it pointed before).
  struct journal_scope {
    const impl& x;
    std::vector<std::pair<slot_t, slot_t>>* before;
    journal_scope(const impl& owner, std::vector<std::pair<slot_t, slot_t>>& to)
        : x(owner), before(std::exchange(owner.dropped_links, &to)) {}
    journal_scope(const journal_scope&) = delete;
    journal_scope& operator=(const journal_scope&) = delete;
    ~journal_scope() { x.dropped_links = before; }
  };
  std::atomic<std::uint64_t> sequence{0};  // insertion sequence number, the level generator's input
  std::atomic<std::uint64_t> entry{empty_entry};

  // Writers that re-link or snapshot the graph (remove, upsert, train, save) take `adding` and then
  // `structure`, both exclusively; adds take both shared, searches and reads `structure` alone. So a
  // writer first waits for running adds (a bulk add can run for minutes) while searches go on, and only
  // then holds off new searches while the running ones (short) drain: neither a stream of searches nor
  // of adds can starve it, and searches wait at most for the searches ahead of them and the write.
  mutable detail::phase_fair_mutex adding;     // shared: add; exclusive: remove, upsert, train, save
  mutable detail::phase_fair_mutex structure;  // shared: add, searches, reads; exclusive: as `adding`
  /// Both locks, exclusively, in their order: what every writer of the graph's structure holds.
  [[nodiscard]] detail::hnsw_write_lock lock_writers() const {
    detail::hnsw_write_lock held{std::unique_lock(adding), {}};
    held.structure = std::unique_lock(structure);
    return held;
  }
  std::mutex entry_mutex;          // serialises entry-point changes during adds
  mutable std::mutex slots_mutex;  // free list and chunk allocation
  /// A min-heap (`std::greater`): the lowest free slot is reused first, so which slot an add takes
  /// depends only on which are free, and a loaded copy (its free slots read from the file) reuses the
  /// same ones as the saved index. Reused last-in-first-out, after removals in descending order a loaded
  /// copy grew another graph from the same adds (a review: 21-36 of 1,000 result ids differed).
  std::vector<slot_t> free_slots;
  // What the codes are relative to, set once (train, or the first add) and read-only after, published by
  // `codes_ready` before any code is written: SQ8 / SQ4 traversal's per-dimension ranges, or F16 traversal's
  // frame (codes half((x − half_centre)·2^−half_exponent); `half_framed` false for the identity frame,
  // centre 0 and exponent 0, which graphs saved before format 1.6 hold their codes in).
  std::optional<scalar_quantizer> sq;
  std::vector<float> half_centre;
  int half_exponent = 0;
  bool half_framed = false;
  std::atomic<bool> codes_ready{false};
  std::mutex codes_mutex;
  // Set by a memory-mapped load: the bulk arrays live in the mapping, kept alive here; read-only.
  std::shared_ptr<const io::detail::file_mapping> mapping;

  void check_mutable(const char* what) const {
    io::detail::check_writable(mapping.get(), what);
    check_usable(what);
  }
  /// Set when a remove, upsert or add threw part-way through changing the graph (an allocation failure:
  /// every input is checked before the first change). A half-relinked neighbourhood, or an id mapped to
  /// a node that was never linked, is no graph a search or a later change may walk (the next add crashed
  /// in `descend`, a review found): every call but `size`, `dim` and the like refuses it from then on.
  std::atomic<bool> broken{false};
  void check_usable(const char* what) const {
    SHOAL_CHECK_CODE(!broken.load(std::memory_order_acquire), errc::unsupported, what,
                     ": the index is unusable: an earlier remove, upsert or add failed part-way through changing "
                     "the graph (out of memory); load it again from a file");
  }
  /// Runs `change` (part of a remove, upsert or add); where it throws, marks the index `broken`.
  template <class Change>
  void breaking_on_failure(const Change& change) {
    try {
      change();
    } catch (...) {
      broken.store(true, std::memory_order_release);
      throw;
    }
  }
  mutable std::shared_mutex ids_mutex;  // readers (lookups) shared, the map's writers exclusive
  std::unordered_map<vector_id, slot_t> slot_of;
  mutable std::mutex pool_mutex;
  mutable std::vector<std::unique_ptr<scratch>> scratch_pool;

  impl(std::size_t d, shoal::metric m, const hnsw_params& p)
      : dim(d),
        metric(m),
        build(p),
        kern(&active_kernels()),
        half_kern(&active_scalar_quant_kernels()),
        stride((d + 15) / 16 * 16),
        code_stride(code_row_stride(p.codes, d)),
        max_links0(2 * p.M),
        max_links(p.M),
        level_mult(1.0 / std::log(static_cast<double>(p.M))),
        prune_scale(m == shoal::metric::inner_product ? 1.0f : static_cast<float>(p.alpha * p.alpha)) {
    set_chunk_shift(chunk_shift_for(node_bulk_bytes()));
  }

  /// Bytes of one node's bulk arrays: its vector row, bottom-layer links, code row and term.
  [[nodiscard]] std::size_t node_bulk_bytes() const noexcept {
    return stride * sizeof(float) + (max_links0 + 1) * sizeof(slot_t) + code_stride +
           (scalar_codes(build.codes) ? sizeof(float) : 0);
  }
  /// The chunk size for nodes of `node_bytes` bulk bytes: the most nodes, a power of two up to 2^10,
  /// within `chunk_budget` (one node at least).
  [[nodiscard]] static std::size_t chunk_shift_for(std::size_t node_bytes) noexcept {
    std::size_t shift = max_chunk_shift;
    while (shift > 0 && (std::size_t{1} << shift) * node_bytes > chunk_budget) --shift;
    return shift;
  }
  /// Sets the chunk size (2^shift nodes); only while the index has no chunk (construction, load).
  void set_chunk_shift(std::size_t shift) noexcept {
    chunk_shift = shift;
    chunk_nodes = std::size_t{1} << shift;
  }

  // ------------------------------------------------------------------------------------------- storage
  [[nodiscard]] std::pair<std::size_t, std::size_t> locate(slot_t s) const noexcept {
    return {std::size_t{s} >> chunk_shift, std::size_t{s} & (chunk_nodes - 1)};
  }
  [[nodiscard]] chunk& chunk_of(std::size_t c) const noexcept {
    return *directory.load(std::memory_order_acquire)[c].load(std::memory_order_acquire);
  }
  [[nodiscard]] std::atomic<std::uint8_t>& linking(slot_t s) const noexcept {
    const auto [c, off] = locate(s);
    return chunk_of(c).linking[off];
  }
  [[nodiscard]] std::atomic<std::uint8_t>& state(slot_t s) const noexcept {
    const auto [c, off] = locate(s);
    return chunk_of(c).state[off];
  }
  [[nodiscard]] std::atomic<std::uint32_t>& in0(slot_t s) const noexcept {
    const auto [c, off] = locate(s);
    return chunk_of(c).in0[off];
  }
  /// One bottom-layer in-link of `s` fewer (saturating: stale links to a reused slot may be counted
  /// against its new node).
  void drop_in0(slot_t s) const noexcept {
    std::atomic<std::uint32_t>& n = in0(s);
    std::uint32_t v = n.load(std::memory_order_relaxed);
    while (v > 0 && !n.compare_exchange_weak(v, v - 1, std::memory_order_relaxed)) {
    }
  }
  /// One bottom-layer in-link of `s` fewer, unless it is its last (or uncounted): false then, and
  /// the count is unchanged. Atomic, so that two lists dropping their links to `s` at the same time
  /// cannot both take it to 0.
  [[nodiscard]] bool release_in0(slot_t s) const noexcept {
    std::atomic<std::uint32_t>& n = in0(s);
    std::uint32_t v = n.load(std::memory_order_relaxed);
    while (v > 1)
      if (n.compare_exchange_weak(v, v - 1, std::memory_order_relaxed)) return true;
    return false;
  }
  [[nodiscard]] spinlock& lock_of(slot_t s) const noexcept {
    const auto [c, off] = locate(s);
    return chunk_of(c).locks[off];
  }
  [[nodiscard]] vector_id& id_of(slot_t s) const noexcept {
    const auto [c, off] = locate(s);
    return chunk_of(c).ids[off];
  }
  [[nodiscard]] std::unique_ptr<slot_t[]>& upper_of(slot_t s) const noexcept {
    const auto [c, off] = locate(s);
    return chunk_of(c).upper[off];
  }
  /// Level of a live node (0 for a free slot).
  [[nodiscard]] std::size_t level_of_slot(slot_t s) const noexcept {
    const std::uint8_t st = state(s).load(std::memory_order_acquire);
    return st == 0 ? 0 : st - 1u;
  }
  [[nodiscard]] float* vec(slot_t s) const noexcept {
    const auto [c, off] = locate(s);
    return chunk_of(c).vectors + off * stride;
  }
  /// Link list of `s` on `level`: [0] is the count, then the slots. Written under the node lock (or the
  /// exclusive structure lock) with `store_link`; read with `load_link` (see there).
  [[nodiscard]] slot_t* links(slot_t s, std::size_t level) const noexcept {
    if (level == 0) {
      const auto [c, off] = locate(s);
      return chunk_of(c).links0 + off * (max_links0 + 1);
    }
    return upper_of(s).get() + (level - 1) * (max_links + 1);
  }
  [[nodiscard]] std::size_t capacity(std::size_t level) const noexcept { return level == 0 ? max_links0 : max_links; }

  /// Whether a slot reached through a link may be read on `level`: it holds a published node that has
  /// that layer. Stale links (to a slot freed and not yet repaired away, or reused by a lower node) fail.
  [[nodiscard]] bool usable(slot_t s, std::size_t level) const noexcept {
    return state(s).load(std::memory_order_acquire) > level;
  }

  /// A free slot with its chunk allocated. Caller holds slots_mutex.
  [[nodiscard]] slot_t allocate_slot() {
    if (!free_slots.empty()) {
      std::pop_heap(free_slots.begin(), free_slots.end(), std::greater<>{});
      const slot_t s = free_slots.back();
      free_slots.pop_back();
      return s;
    }
    const slot_t s = slot_count.load(std::memory_order_relaxed);
    SHOAL_CHECK_CODE(s != no_slot, errc::unsupported, "hnsw_index::add: more than 2^32 - 1 nodes");
    if (locate(s).first == owned_chunks.size()) add_chunks(growth_chunks(1));
    slot_count.store(s + 1, std::memory_order_release);
    return s;
  }

  /// Makes sure that the next `n` slots `allocate_slot` hands out have their chunks, allocating all the
  /// chunks missing in one slab. Caller holds slots_mutex.
  void reserve_slots(std::size_t n) {
    const std::size_t fresh = n > free_slots.size() ? n - free_slots.size() : 0;
    // All or nothing: a batch that would cross the slot limit fails before it takes any slot.
    SHOAL_CHECK_CODE(slot_count.load(std::memory_order_relaxed) + fresh <= no_slot, errc::unsupported,
                     "hnsw_index::add: more than 2^32 - 1 nodes");
    const std::size_t needed = (slot_count.load(std::memory_order_relaxed) + fresh + chunk_nodes - 1) / chunk_nodes;
    if (needed > owned_chunks.size()) add_chunks(growth_chunks(needed - owned_chunks.size()));
  }

  /// How many chunks to allocate when `missing` more are needed: at least those, and while the index
  /// grows by few nodes at a time up to an eighth of its chunks, within `slab_growth_cap` bytes.
  [[nodiscard]] std::size_t growth_chunks(std::size_t missing) const noexcept {
    const std::size_t cap = std::max<std::size_t>(1, slab_growth_cap / (chunk_nodes * node_bulk_bytes()));
    return std::max(missing, std::min(owned_chunks.size() / 8, cap));
  }

  /// Appends `count` chunks whose bulk arrays share one new slab (zeroed). Caller holds slots_mutex.
  void add_chunks(std::size_t count) {
    slab& fresh = slabs.emplace_back();
    fresh.vectors.assign(count * chunk_nodes * stride, 0.0f);
    fresh.codes.assign(count * chunk_nodes * code_stride, 0);
    fresh.terms.assign(scalar_codes(build.codes) ? count * chunk_nodes : 0, 0.0f);
    fresh.links0.assign(count * chunk_nodes * (max_links0 + 1), 0);
    for (std::size_t c = 0; c < count; ++c) {
      chunk& ch = add_chunk();
      ch.vectors = fresh.vectors.data() + c * chunk_nodes * stride;
      ch.codes = fresh.codes.data() + c * chunk_nodes * code_stride;
      if (scalar_codes(build.codes)) ch.terms = fresh.terms.data() + c * chunk_nodes;
      ch.links0 = fresh.links0.data() + c * chunk_nodes * (max_links0 + 1);
    }
  }

  /// Appends a chunk with its per-node arrays (the bulk arrays are the caller's to set before any of
  /// its slots is handed out), growing the directory when it is full. Caller holds slots_mutex.
  chunk& add_chunk() {
    const std::size_t c = owned_chunks.size();
    if (c == directory_size) {
      const std::size_t grown = std::max<std::size_t>(16, 2 * directory_size);
      auto table = std::make_unique<std::atomic<chunk*>[]>(grown);
      for (std::size_t i = 0; i < grown; ++i)
        table[i].store(i < c ? owned_chunks[i].get() : nullptr, std::memory_order_relaxed);
      tables.push_back(std::move(table));  // owned before it is published: a push_back that throws frees it
      directory.store(tables.back().get(), std::memory_order_release);
      directory_size = grown;
    }
    auto fresh = std::make_unique<chunk>();
    fresh->state = std::make_unique<std::atomic<std::uint8_t>[]>(chunk_nodes);
    fresh->linking = std::make_unique<std::atomic<std::uint8_t>[]>(chunk_nodes);
    fresh->locks = std::make_unique<spinlock[]>(chunk_nodes);
    fresh->in0 = std::make_unique<std::atomic<std::uint32_t>[]>(chunk_nodes);
    fresh->ids = std::make_unique<vector_id[]>(chunk_nodes);
    fresh->upper = std::make_unique<std::unique_ptr<slot_t[]>[]>(chunk_nodes);
    owned_chunks.reserve(owned_chunks.size() + 1);  // so that nothing can throw once it is published
    directory.load(std::memory_order_relaxed)[c].store(fresh.get(), std::memory_order_release);
    owned_chunks.push_back(std::move(fresh));
    return *owned_chunks.back();
  }

  // ----------------------------------------------------------------------------------------- distances
  [[nodiscard]] float distance(const float* a, const float* b) const noexcept {
    if (metric == shoal::metric::l2) return kern->l2sqr(a, b, dim);
    return detail::distance_from_inner_product(metric, kern->inner_product(a, b, dim));
  }

  [[nodiscard]] std::size_t level_of(std::uint64_t seq) const noexcept {
    splitmix64 rng(build.seed ^ (seq * 0xD1B54A32D192ED03ULL));
    const double u = (static_cast<double>(rng.next() >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
    return std::min(max_level, static_cast<std::size_t>(-std::log(u) * level_mult));
  }

  // ----------------------------------------------------------------------------------------- scratch
  [[nodiscard]] std::unique_ptr<scratch> acquire() const {
    std::unique_ptr<scratch> s;
    {
      const std::lock_guard lock(pool_mutex);
      if (!scratch_pool.empty()) {
        s = std::move(scratch_pool.back());
        scratch_pool.pop_back();
      }
    }
    if (!s) s = std::make_unique<scratch>();
    s->reset(slot_count.load(std::memory_order_acquire), max_links0);
    return s;
  }
  void release(std::unique_ptr<scratch> s) const {
    const std::lock_guard lock(pool_mutex);
    scratch_pool.push_back(std::move(s));
  }

  /// Copies the link list of `s` on `level` into `buf` (no lock: see `load_link`); returns the count.
  /// With `unvisited`, keeps only the links that scratch has not visited yet, marking them, without a
  /// branch per link (see `scratch::mark`).
  std::size_t copy_links(slot_t s, std::size_t level, slot_t* buf, scratch* unvisited = nullptr) const {
    const slot_t* list = links(s, level);
    const std::size_t count = std::min<std::size_t>(load_link(list[0], std::memory_order_acquire), capacity(level));
    if (unvisited == nullptr) {
      for (std::size_t i = 0; i < count; ++i) buf[i] = load_link(list[i + 1]);
      return count;
    }
    std::size_t n = 0;
    for (std::size_t i = 0; i < count; ++i) {
      const slot_t x = load_link(list[i + 1]);
      buf[n] = x;
      n += unvisited->mark(x);
    }
    return n;
  }

  /// Distances from `q` to the first `m` pending rows, in one gather-kernel call (the metric's
  /// distance, as `distance` computes it).
  void score_pending(const query_ctx& ctx, std::size_t m, scratch& s) const noexcept {
    float* out = s.pending_distances.data();
    if (ctx.f16) {
      // As the gather kernels: each row prefetched whole two rows before it is scored.
      const std::size_t row_bytes = code_bytes(hnsw_codes::fp16, dim);
      const auto prefetch = [&](std::size_t j) {
        for (std::size_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(s.pending_codes[j] + b);
      };
      for (std::size_t j = 0; j < std::min<std::size_t>(2, m); ++j) prefetch(j);
      for (std::size_t j = 0; j < m; ++j) {
        if (j + 2 < m) prefetch(j + 2);
        out[j] = half_distance(ctx, s.pending_codes[j]);
      }
      return;
    }
    if (ctx.sq8 != nullptr) {
      const auto gather = ctx.nibbles ? kern->dot_u4_i16_gather : kern->dot_u8_i16_gather;
      gather(ctx.sq8->coeffs(), s.pending_codes.data(), m, dim, s.dots.data());
      if (!ctx.sq8->two_grids()) {
        for (std::size_t j = 0; j < m; ++j) out[j] = ctx.sq8->estimate(s.pending_terms[j], s.dots[j]);
        return;
      }
      gather(ctx.sq8->residual_coeffs(), s.pending_codes.data(), m, dim, s.residual_dots.data());
      for (std::size_t j = 0; j < m; ++j) out[j] = ctx.sq8->estimate(s.pending_terms[j], s.dots[j], s.residual_dots[j]);
      return;
    }
    exact_distances(ctx.q, s.pending_rows.data(), m, out);
  }

  /// The metric's distances from `q` to `n` stored rows, through the gather kernels.
  void exact_distances(const float* q, const float* const* rows, std::size_t n, float* out) const noexcept {
    detail::gather_distances(*kern, metric, q, rows, n, dim, out);
  }

  // ------------------------------------------------------------------------------------- SQ8 codes
  /// The largest code of a dimension: 255 for SQ8, 15 for SQ4 (whose steps are 17 SQ8 steps).
  [[nodiscard]] static constexpr unsigned code_top(hnsw_codes codes) noexcept {
    return codes == hnsw_codes::sq4 ? 15 : 255;
  }
  /// Learns what the codes are relative to from `sample`: the F16 frame (`learn_half_frame`), or the
  /// per-dimension code ranges (the scalar quantizer's sq8 training, with `code_top` steps over each
  /// range: 15 for SQ4, whose codes are 0-15). Caller holds codes_mutex; publishes with codes_ready.
  void train_codes(matrix_view<const float> sample) {
    if (build.codes == hnsw_codes::fp16) {
      learn_half_frame(sample);
      codes_ready.store(true, std::memory_order_release);
      return;
    }
    sq = learned_ranges(sample);
    codes_ready.store(true, std::memory_order_release);
  }
  /// The SQ8 / SQ4 ranges `train_codes` learns from `sample`, or its refusal (`check_add` asks too).
  [[nodiscard]] scalar_quantizer learned_ranges(matrix_view<const float> sample) const {
    scalar_quantizer q(dim, sq_type::sq8);
    q.train(sample, code_top(build.codes));
    // Ranges of width zero in every dimension code every later vector as the sample's one vector: the
    // traversal is blind (recall@10 0.007 from one zero row; a review).
    SHOAL_CHECK(std::any_of(q.steps().begin(), q.steps().end(), [](float step) { return step > 0.0f; }),
                "hnsw_index: ", build.codes == hnsw_codes::sq4 ? "SQ4" : "SQ8", " ranges cannot be learned from ",
                sample.rows, " copies of one vector (every later vector would get its code): train on a sample ",
                "that spans the data");
    // Checked as a load checks them (each range's ends, up to the last code used: 15 of SQ4's 17-fold
    // steps, where checking 255 of them refused vectors 11 times under the norm bound).
    return scalar_quantizer::sq8_with_ranges(q.mins(), q.steps(), code_top(build.codes));
  }
  /// Throws unless a write of `rows` vectors can be encoded: SQ8 / SQ4 ranges exist, or `rows` are
  /// enough to learn them from (`ensure_codes`). Checked before anything changes.
  void check_codes_learnable(std::size_t rows, const char* who) const {
    SHOAL_CHECK(!scalar_codes(build.codes) || codes_ready.load(std::memory_order_acquire) ||
                    rows >= hnsw_index::min_code_learning_rows,
                who, ": ", build.codes == hnsw_codes::sq4 ? "SQ4" : "SQ8",
                " codes need their ranges first: call train(sample), or make the first add at least ",
                hnsw_index::min_code_learning_rows, " vectors (got ", rows, ")");
  }
  /// With compressed traversal and no ranges or frame yet, learns them from `batch` (the first add's
  /// vectors).
  void ensure_codes(matrix_view<const float> batch) {
    if (build.codes == hnsw_codes::none || codes_ready.load(std::memory_order_acquire)) return;
    const std::lock_guard lock(codes_mutex);
    if (!codes_ready.load(std::memory_order_relaxed)) train_codes(batch);
  }
  [[nodiscard]] std::uint8_t* codes(slot_t x) const noexcept {
    const auto [c, off] = locate(x);
    return chunk_of(c).codes + off * code_stride;
  }
  /// The per-node constant of the SQ8 / SQ4 estimate.
  [[nodiscard]] float& code_term(slot_t x) const noexcept {
    const auto [c, off] = locate(x);
    return chunk_of(c).terms[off];
  }
  /// Bytes of one node's codes (before the padding).
  [[nodiscard]] static constexpr std::size_t code_bytes(hnsw_codes codes, std::size_t d) noexcept {
    return codes == hnsw_codes::fp16 ? 2 * d : codes == hnsw_codes::sq4 ? u4_code_bytes(d) : d;
  }
  /// Whether `codes` are scalar-quantized (SQ8 or SQ4): integer codes over trained ranges, scored by
  /// `sq8_estimator` with a per-node term.
  [[nodiscard]] static constexpr bool scalar_codes(hnsw_codes codes) noexcept {
    return codes == hnsw_codes::sq8 || codes == hnsw_codes::sq4;
  }
  /// Bytes per code row: `prefix` bytes (the f32 term of format 1.0/1.1 rows, else none) and the codes,
  /// rounded up to 64; 0 without codes.
  [[nodiscard]] static constexpr std::size_t code_row_stride(hnsw_codes codes, std::size_t d,
                                                             std::size_t prefix = 0) noexcept {
    return codes == hnsw_codes::none ? 0 : io::detail::align_up(prefix + code_bytes(codes, d), 64);
  }
  // ------------------------------------------------------------------------------------- F16 codes
  /// Where the largest centred value of the frame's sample lands in the codes: at most 2^12, 16-fold
  /// below the half range (65504), the headroom later vectors get before their codes saturate. A half
  /// keeps 11 significant bits at every magnitude of its normal range (6.1e-5 to 65504), so the scale
  /// only has to keep the centred values inside that range.
  static constexpr int half_frame_top_exponent = 12;
  /// Most rows a frame is learnt from, evenly spaced over the sample.
  static constexpr std::size_t half_frame_rows = 16384;
  /// The frame's exponent lies in [−63, 63]: its scale 2^e and the l2 estimate's factor 2^(2e) stay
  /// normal floats, so that multiplying by them is exact.
  static constexpr int max_half_exponent = 63;
  /// Bound on a query's components in the codes' frame (l2): a query 2^28 times farther from the centre
  /// than the sample's largest centred value, whose float distances to the vectors cannot tell them
  /// apart anyway, would otherwise take the code-space sum past FLT_MAX when the scale is small (data
  /// of magnitude 1e-15: 2^-61), and Inf estimates stop a traversal; 2^40 keeps that sum finite at
  /// every dimension up to max_dim (2^24 · (2^40 + 65504)² < 2^105).
  static constexpr float max_half_query = 0x1p40f;

  /// The exponent e of a frame whose largest centred value is `largest`: the least with
  /// largest · 2^−e ≤ 2^12 (so it lands in (2^11, 2^12]), clamped to ±max_half_exponent; 0 for 0.
  [[nodiscard]] static int half_frame_exponent(float largest) noexcept {
    if (!(largest > 0.0f)) return 0;
    int top = 0;
    const float mantissa = std::frexp(largest, &top);  // largest = mantissa · 2^top, mantissa in [0.5, 1)
    const int e = (mantissa == 0.5f ? top - 1 : top) - half_frame_top_exponent;
    return std::clamp(e, -max_half_exponent, max_half_exponent);
  }
  /// Sets the F16 frame (before any code is written, or on load).
  void set_half_frame(std::vector<float> centre, int exponent) {
    half_framed = exponent != 0 || std::any_of(centre.begin(), centre.end(), [](float c) { return c != 0.0f; });
    half_centre = std::move(centre);
    half_exponent = exponent;
  }
  /// Learns the F16 frame from at most `half_frame_rows` evenly spaced rows of `sample`: the centre is their
  /// per-dimension mean (summed in double), the exponent puts the larger of their largest |x_j − c_j| and
  /// their largest |x_j| at 2^12 in the codes (`half_frame_exponent`); the scale is 1 for a zero sample.
  /// The magnitude bounds the scale because a sample may be narrower than the data that follows (a first
  /// add of two near copies, 10^-3 apart: a scale from their spread alone put ordinary later vectors
  /// 2^10 times past the codes' range, R@10 0.80 instead of 1.00), and it costs nothing: a half keeps 11
  /// significant bits down to 6.1e-5, so centred values 6.7e7 times smaller than the magnitude (data
  /// offset by 10^6 with a spread of 0.35: 2.9e6) keep their precision.
  void learn_half_frame(matrix_view<const float> sample) {
    const std::size_t rows = std::min(sample.rows, half_frame_rows);
    const auto row = [&](std::size_t i) { return sample.row(i * sample.rows / rows); };
    std::vector<double> sum(dim, 0.0);
    for (std::size_t i = 0; i < rows; ++i) {
      const float* x = row(i);
      for (std::size_t j = 0; j < dim; ++j) sum[j] += x[j];
    }
    std::vector<float> centre(dim);
    for (std::size_t j = 0; j < dim; ++j) centre[j] = static_cast<float>(sum[j] / static_cast<double>(rows));
    float spread = 0.0f;
    float magnitude = 0.0f;
    for (std::size_t i = 0; i < rows; ++i) {
      const float* x = row(i);
      for (std::size_t j = 0; j < dim; ++j) {
        spread = std::max(spread, std::abs(x[j] - centre[j]));
        magnitude = std::max(magnitude, std::abs(x[j]));
      }
    }
    set_half_frame(std::move(centre), half_frame_exponent(std::max(spread, magnitude)));
  }
  /// The F16 form of query `q`. Under l2 the query moves into the codes' frame, q'_j = (q_j − c_j)·2^−e
  /// (in `s`), and the code-space distance is scaled back by 2^(2e); under cosine the same, halved
  /// (‖q − x̂‖² / 2, which cancels the codes' length error where 1 − ⟨q, x̂⟩ took it whole: see
  /// `sq8_estimator`; a review measured F16 below SQ8 on crowded directions once SQ8 scored so); under
  /// inner product ⟨q, x⟩ ≈ ⟨q, c⟩ + 2^e · ⟨q, half(codes)⟩. The identity frame (files before format 1.6)
  /// keeps the query and the kernels' sums as they were (halved under cosine).
  [[nodiscard]] query_ctx prepare_half(const float* q, scratch& s) const {
    query_ctx ctx{.q = q, .f16 = true};
    const float half = metric == shoal::metric::cosine ? 0.5f : 1.0f;
    ctx.half_scale = half;
    if (!half_framed) return ctx;
    if (metric != shoal::metric::inner_product) {
      s.half_query.resize(dim);
      const float unscale = std::ldexp(1.0f, -half_exponent);
      for (std::size_t j = 0; j < dim; ++j)
        s.half_query[j] = std::clamp((q[j] - half_centre[j]) * unscale, -max_half_query, max_half_query);
      ctx.q = s.half_query.data();
      ctx.half_scale = half * std::ldexp(1.0f, 2 * half_exponent);
    } else {
      ctx.half_offset = kern->inner_product(q, half_centre.data(), dim);
      ctx.half_scale = std::ldexp(1.0f, half_exponent);
    }
    return ctx;
  }
  /// The metric's distance from `ctx`'s query to a node's half-precision codes (`prepare_half`).
  [[nodiscard]] float half_distance(const query_ctx& ctx, const std::uint8_t* c) const noexcept {
    if (metric != shoal::metric::inner_product) return ctx.half_scale * half_kern->fp16_l2(ctx.q, c, dim);
    return detail::distance_from_inner_product(metric,
                                               ctx.half_offset + ctx.half_scale * half_kern->fp16_ip(ctx.q, c, dim));
  }
  /// Writes slot q's codes: half-precision copies in the F16 frame (round to nearest even), or the SQ8 / SQ4
  /// codes (the scalar quantizer's, clamped to the trained ranges) and their term.
  void encode(slot_t q) const {
    std::uint8_t* c = codes(q);
    if (build.codes == hnsw_codes::fp16) {
      const float* v = vec(q);
      const float unscale = std::ldexp(1.0f, -half_exponent);  // 1 and a centre of 0: the raw values, exactly
      for (std::size_t j = 0; j < dim; ++j) {
        // Saturated at the largest finite half: an Inf code would make the node's estimate Inf.
        const std::uint16_t h = float_to_half(std::clamp((v[j] - half_centre[j]) * unscale, -max_half, max_half));
        c[2 * j] = static_cast<std::uint8_t>(h & 0xffu);
        c[2 * j + 1] = static_cast<std::uint8_t>(h >> 8);
      }
      return;
    }
    if (build.codes == hnsw_codes::sq4) {
      std::vector<std::uint8_t> unpacked(dim);
      sq->encode({vec(q), 1, dim}, unpacked.data());
      // The quantizer clamps to its 8-bit range; beyond the trained maximum the 4-bit code is 15.
      for (std::uint8_t& u : unpacked) u = std::min<std::uint8_t>(u, 15);
      pack_u4(unpacked.data(), dim, c);
      code_term(q) = detail::sq8_estimator::term(*sq, metric, unpacked.data());
      return;
    }
    sq->encode({vec(q), 1, dim}, c);
    code_term(q) = detail::sq8_estimator::term(*sq, metric, c);
  }
  /// The term of slot q's stored SQ8 / SQ4 codes, as `encode` gives it (for a mapped cosine graph from a
  /// file before format 1.9, which holds none: see `hnsw_sections::write`).
  [[nodiscard]] float stored_term(slot_t q) const {
    const std::uint8_t* c = codes(q);
    if (build.codes != hnsw_codes::sq4) return detail::sq8_estimator::term(*sq, metric, c);
    thread_local std::vector<std::uint8_t> unpacked;  // one per loading thread, not one per node
    unpacked.resize(dim);
    for (std::size_t j = 0; j < dim; ++j) unpacked[j] = u4_code(c, j);
    return detail::sq8_estimator::term(*sq, metric, unpacked.data());
  }
  /// The SQ8 / SQ4 form of query `q` (in `s.sq8`).
  [[nodiscard]] query_ctx prepare_codes(const float* q, scratch& s) const {
    s.sq8.prepare(*sq, metric, q);
    return {.q = q, .sq8 = &s.sq8, .nibbles = build.codes == hnsw_codes::sq4};
  }

  /// The score of one node, as `score_pending` computes it.
  [[nodiscard]] float score(const query_ctx& ctx, slot_t x) const noexcept {
    if (ctx.f16) return half_distance(ctx, codes(x));
    if (ctx.sq8 == nullptr) return distance(ctx.q, vec(x));
    const std::uint8_t* c = codes(x);
    const auto dot = ctx.nibbles ? kern->dot_u4_i16 : kern->dot_u8_i16;
    return ctx.sq8->estimate(code_term(x), dot(ctx.sq8->coeffs(), c, dim),
                             ctx.sq8->two_grids() ? dot(ctx.sq8->residual_coeffs(), c, dim) : 0);
  }

  /// Collects the neighbours of `from` on `level` that are usable there (and, with `visited`, not yet
  /// visited, marking them) into the pending buffers, the first line of each vector prefetched; then
  /// scores them. Returns how many.
  std::size_t expand(const query_ctx& ctx, slot_t from, std::size_t level, scratch& s, bool visited) const {
    // First the unvisited neighbours, then the usability checks on those only.
    const std::size_t n = copy_links(from, level, s.links.data(), visited ? &s : nullptr);
    std::size_t m = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const slot_t x = s.links[i];
      const auto [c_index, off] = locate(x);
      const chunk& ch = chunk_of(c_index);
      if (ch.state[off].load(std::memory_order_acquire) <= level) continue;
      if (s.building && ch.linking[off].load(std::memory_order_acquire) != 0) continue;
      if (ctx.coded()) {
        const std::uint8_t* row = ch.codes + off * code_stride;
        __builtin_prefetch(row);
        s.pending_codes[m] = row;
        if (ctx.sq8 != nullptr) s.pending_terms[m] = ch.terms[off];
      } else {
        const float* row = ch.vectors + off * stride;
        __builtin_prefetch(row);
        s.pending_rows[m] = row;
      }
      s.pending[m] = x;
      ++m;
    }
    score_pending(ctx, m, s);
    return m;
  }

  // ------------------------------------------------------------------------------------------- search
  /// Greedy descent from `cur` through layers top..stop+1, one best node per layer.
  [[nodiscard]] cand descend(const query_ctx& q, cand cur, std::size_t top, std::size_t stop, scratch& s) const {
    for (std::size_t level = top; level > stop; --level) {
      for (bool changed = true; changed;) {
        changed = false;
        const std::size_t m = expand(q, cur.slot, level, s, false);
        for (std::size_t j = 0; j < m; ++j) {
          const cand next{s.pending_distances[j], s.pending[j]};
          if (next < cur) {
            cur = next;
            changed = true;
          }
        }
      }
    }
    return cur;
  }

  /// When a filtered search stops walking the graph and scans the nodes its filter accepts instead
  /// (`scan_accepted`). A walk expands until it holds ef accepted nodes; under a filter that accepts few
  /// it scores most of the graph first, each node a random access, where a scan reads each node's state
  /// and id in order and scores only the accepted ones: HNSW16 took 12× a `Flat` scan with the same
  /// predicate at 1% of 20,000 64-d rows passing and 42× at 0.1%, 12× and 29× at 784-d (session 46,
  /// docs/hnsw.md "Filters that accept few nodes"). So the walk stops once it has scored more than a scan
  /// would cost: a visit to every slot and an exact score per accepted node, their share estimated
  /// from the walk's (`due`). Costs are in units of a node the walk scores, from the bytes each reads:
  /// the walk twice a row of its vectors or codes plus 2,560 (`walk_byte_weight`, `walk_fixed_bytes`: state,
  /// links, heap work and a random access's latency, fitted in session 47), a visit to a live node 32
  /// (state byte, id, the filter's call), to a free slot 8, an exact score a full vector. So the walk spends at
  /// most about what the scan then costs. Counts only, never time: the same search gives the same answer on every
  /// machine. The scan's answer is exact.
  /// The nodes a batch's filter accepts, listed once before its queries run when a sample says they are
  /// few (`selective`). A filter cannot depend on the query, so the batch's scans score the listed nodes
  /// without visiting every slot and calling the filter again, and its walks give way as soon as they
  /// have cost what scoring the list does: decided from the sample and the list, never from which query
  /// ran first, so a batch returns the same rows on every run.
  struct accepted_nodes {
    std::vector<slot_t> slots;
  };
  /// Whether `filter` passes at most 1 / `detail::listed_share` of a fixed random sample of the slots
  /// (free ones left out): whether a batch lists the accepted nodes.
  [[nodiscard]] bool selective(const id_filter& filter) const {
    const slot_t n = slot_count.load(std::memory_order_acquire);
    return detail::passes_few(n, [&](std::size_t i) {
      const auto x = static_cast<slot_t>(i);
      if (state(x).load(std::memory_order_acquire) == 0) return -1;
      return filter.accepts(id_of(x)) ? 1 : 0;
    });
  }

  /// Lists the nodes `params.filter` accepts into `shared` when the search's queries should score them
  /// directly rather than walk to them (returns whether it did):
  ///  - a filter made from an `id_set` whose ids this index holds at most 1 / `detail::listed_share` of
  ///    its live nodes of, looked up (so for a single query too, at the cost of the list, not of the
  ///    index). The share held is estimated first from a sample of the set (`detail::held_estimate`): a
  ///    collection's shard holds a fraction of the set, and comparing the whole set with one shard made 8
  ///    hash shards walk and scan every slot at 1% of the collection listed (115× slower; a review). A
  ///    single query lists only when it would then score the list rather than walk (`scan_first`, with ef
  ///    `ef`): listing a set of 6% for a query at ef 10 that then walked cost twice the walk (a review).
  ///  - a batch's (`batch`) filter that a sample finds selective, by a visit to every slot.
  /// Not when `params.filter_scan` is false.
  bool list_accepted(const search_params& params, bool batch, std::size_t ef, accepted_nodes& shared) const {
    if (!params.filter || !params.filter_scan) return false;
    if (const id_set* set = params.filter.listed(); set != nullptr) {
      const auto live = static_cast<double>(live_count.load(std::memory_order_relaxed));
      const std::shared_lock lock(ids_mutex);
      const double held = detail::held_estimate(*set, [&](vector_id id) { return slot_of.contains(id); });
      if (held * static_cast<double>(detail::listed_share) > live) return false;
      if (!batch && !scan_costs(code_stride != 0, nullptr).scan_first(ef, held)) return false;
      for (const vector_id id : set->ids())
        if (const auto it = slot_of.find(id); it != slot_of.end()) shared.slots.push_back(it->second);
      // An add maps its ids before their nodes go live.
      std::erase_if(shared.slots, [&](slot_t x) { return state(x).load(std::memory_order_acquire) == 0; });
      std::sort(shared.slots.begin(), shared.slots.end());
      return true;
    }
    if (!batch || !selective(params.filter)) return false;
    for_each_accepted(params.filter, [&](slot_t x, const float*) { shared.slots.push_back(x); });
    return true;
  }

  struct scan_switch {
    const accepted_nodes* shared = nullptr;  // the batch's list, once made
    double visits = 0;                       // what a scan's visits to every slot cost, in scored nodes
    double live = 0;                         // live nodes
    double score = 0;                        // a scan's exact score of an accepted node, in scored nodes
    std::size_t scored = 0;                  // nodes the walk has scored
    std::size_t accepted = 0;                // of those it offered, the ones the filter accepted
    bool taken = false;                      // the walk stopped for a scan
    [[nodiscard]] bool due() const noexcept {
      const auto walked = static_cast<double>(scored);
      if (shared != nullptr) return walked > static_cast<double>(shared->slots.size()) * score;
      return walked > visits + live * score * static_cast<double>(accepted) / walked;
    }
    /// With the batch's list: whether a walk would score more before it held `ef` accepted nodes, even
    /// meeting them at their share of the graph (ef · live / listed), than scoring the list costs: then
    /// the query scans at once, without a walk.
    [[nodiscard]] bool scan_first(std::size_t ef) const noexcept {
      return shared != nullptr && scan_first(ef, static_cast<double>(shared->slots.size()));
    }
    /// The same for a list of `listed` nodes (before it is made).
    [[nodiscard]] bool scan_first(std::size_t ef, double listed) const noexcept {
      return static_cast<double>(ef) * live > listed * listed * score;
    }
  };
  /// What the walk scores per node, in the bytes a scan reads in order: `walk_byte_weight` per byte of its
  /// row (vector or codes) plus `walk_fixed_bytes` (its state, links, heap work and the latency of a random
  /// access). Fitted in session 47 to what a walk and a scan took here (HNSW16, 20,000 rows, one query at a
  /// time, `filtered-search hnsw_single`): a walk's scored node cost 97 scan visits at d 64 and 290 at d 784
  /// (160 and 509 ns against 1.7 ns per slot), where the first model, the row's bytes plus 64 against 32
  /// per visit, priced it at 10 and 100, and let single queries walk 5-10× longer than a scan of every slot
  /// costs before giving way (5.5-6.2× a `Flat` scan from 5% of the nodes passing down, d 64).
  static constexpr double walk_byte_weight = 2;
  static constexpr double walk_fixed_bytes = 2560;
  /// What a scan's visit to a free slot costs, in the same bytes: its state byte, read in order, and the
  /// loop around it — a third of a live node's 32 (which adds the id and the filter's call) measured
  /// against the walk above. At 1, the figure fitted to the first model's walk price (the row plus 64), a
  /// graph of 60,000 slots and 600 live nodes under a filter passing half switched to scans twice as slow
  /// as its walk (`hnsw-filter-deleted.cpp`, session 47).
  static constexpr double free_slot_bytes = 8;
  /// The scan's costs for a walk that reads `coded` rows (see `scan_switch`). A free slot (a removed
  /// node's, until an add reuses it) costs the scan `free_slot_bytes`. Costed as a live node's visit, a
  /// graph of 60,000 slots with 600 live nodes switched to scans up to 2.4× slower than its walks (a review
  /// of session 46, under the first walk price).
  [[nodiscard]] scan_switch scan_costs(bool coded, const accepted_nodes* shared) const noexcept {
    const double vector_bytes = static_cast<double>(stride * sizeof(float));
    const double walked =
        walk_byte_weight * (coded ? static_cast<double>(code_stride) : vector_bytes) + walk_fixed_bytes;
    const auto live = static_cast<double>(live_count.load(std::memory_order_relaxed));
    const auto slots = static_cast<double>(slot_count.load(std::memory_order_relaxed));
    return {.shared = shared,
            .visits = (32 * live + free_slot_bytes * std::max(0.0, slots - live)) / walked,
            .live = live,
            .score = vector_bytes / walked};
  }

  /// Best-first search of one layer from `entries`: returns up to `ef` nodes that `accept` passes, in no
  /// particular order. Rejected nodes are still traversed. With `hits`, every accepted node evaluated
  /// within `radius` is appended to it too, and exploration continues while the frontier is inside it.
  /// With `scan`, the search counts what it scores and stops early, setting `scan->taken`, once a scan of
  /// the accepted nodes is due (the nodes it returns are then those found so far).
  template <class Accept>
  std::vector<cand> search_layer(const query_ctx& q, std::span<const cand> entries, std::size_t ef, std::size_t level,
                                 scratch& s, const Accept& accept, float radius = -no_distance,
                                 std::vector<cand>* hits = nullptr, scan_switch* scan = nullptr) const {
    std::vector<cand>& frontier = s.frontier;
    std::vector<cand>& best = s.best;
    frontier.clear();
    best.clear();
    const auto explore = [&](cand c) {
      // Its link list is read if it is expanded: fetched now, it has arrived by then (fashion-mnist
      // HNSW16,SQ8: 5-15% more QPS in three alternating runs; no change at full precision).
      __builtin_prefetch(links(c.slot, level));
      frontier.push_back(c);
      std::push_heap(frontier.begin(), frontier.end(), std::greater<>{});
    };
    const auto offer = [&](cand c) {
      if (!accept(c.slot)) return;
      if (scan != nullptr) ++scan->accepted;
      if (hits != nullptr && c.distance < radius) hits->push_back(c);
      best.push_back(c);
      std::push_heap(best.begin(), best.end());
      if (best.size() > ef) {
        std::pop_heap(best.begin(), best.end());
        best.pop_back();
      }
    };
    for (const cand& e : entries) {
      if (s.mark(e.slot) == 0) continue;
      explore(e);
      offer(e);
    }
    while (!frontier.empty()) {
      const cand c = frontier.front();
      const float worst = best.size() >= ef ? best.front().distance : no_distance;
      if (c.distance > worst && !(c.distance < radius)) break;
      std::pop_heap(frontier.begin(), frontier.end(), std::greater<>{});
      frontier.pop_back();
      const std::size_t m = expand(q, c.slot, level, s, true);
      for (std::size_t j = 0; j < m; ++j) {
        const cand next{s.pending_distances[j], s.pending[j]};
        const float bound = best.size() >= ef ? best.front().distance : no_distance;
        if (next.distance < bound || next.distance < radius) explore(next);
        if (next.distance < bound || hits != nullptr) offer(next);
      }
      if (scan != nullptr) {
        scan->scored += m;
        // Not once ef nodes are accepted: the walk then converges under their bound, and cutting it for
        // a scan cost up to 2× at 10% passing (0.63 → 0.81 ms at d 784, session 46).
        if (best.size() < ef && scan->due()) {
          scan->taken = true;
          break;
        }
      }
    }
    return {best.begin(), best.end()};
  }

  /// Every live node `filter` accepts, scored exactly, in slot order: the `ef` nearest (in no particular
  /// order, as `search_layer` returns them), and with `hits` every one within `radius` appended to it.
  /// Reads what a walk reads — a node's state (acquire), then its id and vector — so it runs beside adds
  /// as searches do (a remove or upsert holds the structure lock exclusively, so no listed node goes
  /// while the batch runs). With `shared`, the batch's list of those nodes.
  std::vector<cand> scan_accepted(const float* query, std::size_t ef, const id_filter& filter, float radius,
                                  std::vector<cand>* hits, scratch& s, const accepted_nodes* shared) const {
    std::vector<cand>& best = s.best;
    best.clear();
    const std::size_t batch = s.pending_rows.size();  // at least max_links0 (`reset`)
    std::size_t held = 0;
    const auto score_held = [&] {
      exact_distances(query, s.pending_rows.data(), held, s.pending_distances.data());
      for (std::size_t j = 0; j < held; ++j) {
        const cand c{s.pending_distances[j], s.pending[j]};
        if (hits != nullptr && c.distance < radius) hits->push_back(c);
        if (best.size() < ef || c < best.front()) {
          best.push_back(c);
          std::push_heap(best.begin(), best.end());
          if (best.size() > ef) {
            std::pop_heap(best.begin(), best.end());
            best.pop_back();
          }
        }
      }
      held = 0;
    };
    const auto take = [&](slot_t x, const float* row) {
      s.pending[held] = x;
      s.pending_rows[held] = row;
      if (++held == batch) score_held();
    };
    if (shared != nullptr) {
      for (const slot_t x : shared->slots) take(x, vec(x));
    } else {
      for_each_accepted(filter, take);
    }
    score_held();
    return {best.begin(), best.end()};
  }

  /// Calls `take(slot, vector)` for every live node `filter` accepts, in slot order.
  template <class Take>
  void for_each_accepted(const id_filter& filter, const Take& take) const {
    const slot_t n = slot_count.load(std::memory_order_acquire);
    for (slot_t first = 0; first < n; first += static_cast<slot_t>(std::min<std::size_t>(chunk_nodes, n - first))) {
      const chunk& ch = chunk_of(locate(first).first);
      const std::size_t count = std::min<std::size_t>(chunk_nodes, n - first);
      for (std::size_t off = 0; off < count; ++off)
        if (ch.state[off].load(std::memory_order_acquire) != 0 && filter.accepts(ch.ids[off]))
          take(static_cast<slot_t>(first + off), ch.vectors + off * stride);
    }
  }

  /// `search_layer` without a filter or a radius, with one sorted pool in place of the two heaps: the
  /// `ef` best nodes found so far, nearest first, each marked once expanded; the nearest unexpanded one is
  /// expanded next, and the search ends when none is left. This visits exactly what `search_layer` visits
  /// (a frontier node that has dropped out of the ef best is never expanded there either: the frontier
  /// reaches it only once every nearer node is expanded, and by then it is beyond the bound), at the cost
  /// of a binary search and a short move per admitted node instead of two heap operations (a push and,
  /// once full, a pop on each heap). Measured on bigann10k HNSW16 (in cache; Sapphire Rapids VM, medians
  /// of six interleaved runs): 57.5k -> 67.0k QPS at ef 16, 23.0k -> 26.0k at ef 48, same results; no
  /// change beyond noise on fashion-mnist, where memory stalls dominate.
  /// Largest pool `search_pool` scans linearly for an insertion point.
  static constexpr std::size_t linear_pool = 64;
  /// The result lives in `s.best`: valid until the scratch is reused or released.
  std::span<cand> search_pool(const query_ctx& q, cand start, std::size_t ef, std::size_t level, scratch& s) const {
    std::vector<cand>& pool = s.best;
    std::vector<std::uint8_t>& done = s.expanded;
    pool.assign(1, start);
    done.assign(1, 0);
    (void)s.mark(start.slot);
    for (std::size_t next = 0; next < pool.size();) {
      done[next] = 1;
      const std::size_t m = expand(q, pool[next].slot, level, s, true);
      std::size_t lowest = pool.size();  // nearest position a node was admitted at
      for (std::size_t j = 0; j < m; ++j) {
        const cand c{s.pending_distances[j], s.pending[j]};
        if (pool.size() >= ef && !(c.distance < pool.back().distance)) continue;
        // Small pools are scanned from the back: an admitted node usually lands near the end, so the
        // scan is short and ends with one mispredicted branch, where a binary search mispredicts about
        // half of its steps. Measured with medians of five alternating runs: bigann10k HNSW16 ef 16-64
        // +1.5% to +4%, HNSW16,SQ8 ef 10-32 -1% to +2% (a scan of every size: ef 256 -2.2%,
        // fashion-mnist SQ8 ef 48 and 128 -2%, hence the binary search above 64).
        std::size_t at = pool.size();
        if (at <= linear_pool) {
          while (at > 0 && c < pool[at - 1]) --at;
        } else {
          at = static_cast<std::size_t>(std::upper_bound(pool.begin(), pool.end(), c) - pool.begin());
        }
        if (pool.size() >= ef) {
          pool.pop_back();
          done.pop_back();
        }
        __builtin_prefetch(links(c.slot, level));  // read if it is expanded (see search_layer)
        pool.insert(pool.begin() + static_cast<std::ptrdiff_t>(at), c);
        done.insert(done.begin() + static_cast<std::ptrdiff_t>(at), 0);
        lowest = std::min(lowest, at);
      }
      next = std::min(next + 1, lowest);
      while (next < pool.size() && done[next] != 0) ++next;
    }
    return pool;
  }

  /// The diversity heuristic of the HNSW paper (Algorithm 4, as in hnswlib): walk the candidates nearest
  /// first and keep one only if it is closer to the base node than to every node kept so far, so that
  /// links spread over directions instead of piling into the nearest cluster. With α > 1
  /// (`hnsw_params::alpha`, DiskANN's relaxed rule) a kept node prunes a candidate only if it is α times
  /// closer to it than the base node is: more, longer links. With `keep_pruned`, free
  /// slots left after the walk are filled with the nearest rejected candidates (the paper's
  /// keepPrunedConnections): repairs after a delete use it, because a pruned list that shrinks there can
  /// leave the removed node's other neighbours without any in-link.
  ///
  /// Exact copies of the node `base` whose list this is (its twins) are as close to every kept node as
  /// `base` itself is, so under l2 and cosine, at distance 0 from it, no kept node prunes them; and an
  /// insert's search among many copies finds little else. The copies' lists held only each other, and a
  /// search whose descent ended among them could not leave (5,000 copies of one vector beside 5,000
  /// clustered ones, 32-d, M 16: R@10 0.62 at ef 64, hnswlib's graph 0.94; 0.21 / 0.23 under inner
  /// product / cosine). So twins take at most half the places; when more were offered, the rejected
  /// non-twin candidates fill the free places first (the copies share one position, so between them
  /// they are a single node, which needs all the ways out it can get), and the remaining twins after
  /// them. Copies still link to each other (a query at the copy finds k of them); lists with fewer twins
  /// select as before.
  [[nodiscard]] std::vector<cand> select(const float* base, std::vector<cand> candidates, std::size_t limit,
                                         bool keep_pruned = false) const {
    std::sort(candidates.begin(), candidates.end());
    std::vector<cand> kept;
    std::vector<cand> pruned;
    std::vector<cand> twins;  // those beyond half the places, nearest first
    kept.reserve(limit);
    const auto diverse = [&](const cand& c, float scale) {
      const float* cv = vec(c.slot);
      return std::none_of(kept.begin(), kept.end(),
                          [&](const cand& k) { return scale * distance(cv, vec(k.slot)) < c.distance; });
    };
    const auto is_twin = [&](const cand& c) { return std::memcmp(vec(c.slot), base, dim * sizeof(float)) == 0; };
    std::size_t twins_kept = 0;
    for (const cand& c : candidates) {
      if (kept.size() >= limit) break;
      const bool twin = is_twin(c);
      if (twin && twins_kept >= limit / 2) {
        twins.push_back(c);
      } else if (diverse(c, 1.0f)) {
        kept.push_back(c);
        twins_kept += twin ? 1 : 0;
      } else {
        pruned.push_back(c);
      }
    }
    // Moves the pruned candidates that `accept` takes into the free places, nearest first.
    const auto take = [&](const auto& accept) {
      std::vector<cand> rest;
      for (const cand& c : pruned) {
        if (kept.size() < limit && accept(c))
          kept.push_back(c);
        else
          rest.push_back(c);
      }
      pruned = std::move(rest);
    };
    if (!twins.empty()) take([&](const cand& c) { return !is_twin(c); });
    // α's pass fills the free places only: the α = 1 links always stay (see hnsw_params::alpha).
    if (prune_scale > 1.0f) take([&](const cand& c) { return diverse(c, prune_scale); });
    for (std::size_t i = 0; i < twins.size() && kept.size() < limit; ++i) kept.push_back(twins[i]);
    std::sort(kept.begin(), kept.end());  // nearest first, as callers expect
    if (keep_pruned)
      for (std::size_t i = 0; i < pruned.size() && kept.size() < limit; ++i) kept.push_back(pruned[i]);
    return kept;
  }

  static void write_links(slot_t* list, const std::vector<cand>& kept) noexcept {
    for (std::size_t i = 0; i < kept.size(); ++i) store_link(list[i + 1], kept[i].slot);
    store_link(list[0], static_cast<slot_t>(kept.size()), std::memory_order_release);
  }

  /// A bottom-layer link to `target` that `relink` took out of the full list of `from` (its last in-link),
  /// for `rehome` to make elsewhere.
  struct moved_link {
    slot_t target;
    slot_t from;
  };

  /// Calls `visit(z)` for each node that could link to `m.target` in place of `m.from`: the nodes
  /// `m.from` links to, each reachable wherever `m.from` is (read without their locks). The target's own
  /// out-neighbours are not offered: nothing says they are reachable (with them, 14 of 3,000 nodes added
  /// one at a time under inner product at M 4 were found by no search, 6 without).
  template <class Visit>
  void homes(const moved_link& m, const Visit& visit) const {
    const slot_t* list = links(m.from, 0);
    const std::size_t count = std::min<std::size_t>(load_link(list[0], std::memory_order_acquire), max_links0);
    for (std::size_t i = 0; i < count; ++i) {
      const slot_t z = load_link(list[i + 1]);
      if (z != m.target && usable(z, 0) && linking(z).load(std::memory_order_acquire) == 0) visit(z);
    }
  }

  /// Whether one of `m`'s `homes` has a free place (read without its lock: `rehome` checks again under it).
  [[nodiscard]] bool has_home(const moved_link& m) const {
    bool room = false;
    homes(m, [&](slot_t z) { room = room || load_link(links(z, 0)[0], std::memory_order_acquire) < max_links0; });
    return room;
  }

  /// Links the target of each of `moved` from the nearest of its `homes` with a free place, which pushes
  /// no other link out; if those filled up meanwhile, from the nearest of them that can take it
  /// (`link_from_nearest`). Caller holds no node lock.
  void rehome(const std::vector<moved_link>& moved) {
    for (const moved_link& m : moved) {
      const slot_t y = m.target;
      if (!usable(y, 0) || in0(y).load(std::memory_order_relaxed) > 0) continue;
      std::vector<cand> near;
      homes(m, [&](slot_t z) { near.push_back({distance(vec(y), vec(z)), z}); });
      std::sort(near.begin(), near.end());
      const auto append = [&](slot_t z) {
        const std::lock_guard lock(lock_of(z));
        slot_t* list = links(z, 0);
        const std::size_t n = list[0];
        if (std::find(list + 1, list + 1 + n, y) != list + 1 + n) return true;
        if (n >= max_links0) return false;
        store_link(list[n + 1], y);
        store_link(list[0], static_cast<slot_t>(n + 1), std::memory_order_release);
        in0(y).fetch_add(1, std::memory_order_relaxed);
        return true;
      };
      if (std::none_of(near.begin(), near.end(), [&](const cand& c) { return append(c.slot); }))
        (void)link_from_nearest(y, std::move(near));
    }
  }

  /// Replaces the link list `list` on `level` by `kept` (a selection from it plus new candidates). On
  /// the bottom layer no node loses its last in-link to it: each dropped link is given up through
  /// `release_in0`, which refuses when it is its target's last; such a link is put back in a free place
  /// if the list has one. In a full list it goes to `moved` instead, when one of the nodes the list
  /// links to has a free place (`rehome` links it from there once the caller has released the owner's
  /// lock); else it is put back in place of the farthest kept link whose target keeps another
  /// in-link (the selection's diversity gives way to reachability), else in place of the farthest new
  /// link (its target keeps whatever in-links it had, and `keep_reachable` can link it from another
  /// neighbour, while the old link's target would have none). Displacing was the rule for every such
  /// link until session 30: under inner product with norms spread over 10^±3 the large-norm nodes'
  /// lists, full of small-norm nodes' last in-links, pushed out the links between large-norm nodes
  /// that searches travel (10,000 × 32, M 16: R@10 0.75 at ef 128 where hnswlib's graph reached 1.000).
  /// Caller holds the owner's lock.
  void relink(slot_t owner, std::size_t level, std::vector<cand> kept, std::vector<moved_link>& moved) const {
    slot_t* list = links(owner, level);
    const float* owner_vec = vec(owner);
    if (level == 0) {
      const auto has = [&](slot_t x) {
        return std::any_of(kept.begin(), kept.end(), [x](const cand& c) { return c.slot == x; });
      };
      const std::vector<slot_t> old(list + 1, list + 1 + list[0]);
      const auto linked_before = [&](slot_t x) { return std::find(old.begin(), old.end(), x) != old.end(); };
      std::size_t fixed = 0;         // kept[0, fixed): links put back, never displaced again
      std::vector<slot_t> released;  // old links displaced below, their in-link given up there
      // Every allocation before the first count changes: out of memory below (a reachability walk
      // catches it and goes on) would leave counts given up for links the list still holds.
      released.reserve(old.size());
      kept.reserve(max_links0 + 1);
      detail::reserve_growing(moved, moved.size() + old.size());  // these grow over many calls
      if (dropped_links != nullptr) detail::reserve_growing(*dropped_links, dropped_links->size() + old.size());
      for (const slot_t y : old) {
        // (A link displaced by an earlier y must not be given up twice: its target's count fell by two,
        // below its true in-links, and a loaded copy, which counts them, grew another graph.)
        if (has(y) || std::find(released.begin(), released.end(), y) != released.end()) continue;
        if (!usable(y, 0)) {  // a removed node's (kept in its count for the node that reuses the slot)
          drop_in0(y);
          continue;
        }
        if (release_in0(y)) continue;  // not y's last
        if (kept.size() < max_links0) {
          kept.insert(kept.begin() + static_cast<std::ptrdiff_t>(fixed++), {distance(owner_vec, vec(y)), y});
          continue;
        }
        if (has_home({y, owner})) {
          drop_in0(y);
          moved.push_back({y, owner});
          continue;
        }
        // Displace the farthest link that may go: an old one its target gives up, or a new one whose
        // target is linked elsewhere already.
        std::size_t victim = kept.size();
        for (std::size_t i = kept.size(); i-- > fixed;) {
          const slot_t v = kept[i].slot;
          if (linked_before(v) ? release_in0(v) : in0(v).load(std::memory_order_relaxed) > 0) {
            victim = i;
            break;
          }
        }
        for (std::size_t i = kept.size(); victim == kept.size() && i-- > fixed;)
          if (!linked_before(kept[i].slot)) victim = i;  // a new link yields: y has no other in-link
        if (victim == kept.size()) {
          drop_in0(y);  // every kept link is its target's last: nothing can give way
          continue;
        }
        if (linked_before(kept[victim].slot)) released.push_back(kept[victim].slot);
        kept.erase(kept.begin() + static_cast<std::ptrdiff_t>(victim));
        kept.insert(kept.begin() + static_cast<std::ptrdiff_t>(fixed++), {distance(owner_vec, vec(y)), y});
      }
      for (const cand& k : kept)
        if (!linked_before(k.slot)) in0(k.slot).fetch_add(1, std::memory_order_relaxed);
      if (dropped_links != nullptr)
        for (const slot_t y : old)
          if (!has(y) && usable(y, 0)) dropped_links->push_back({owner, y});
    }
    write_links(list, kept);
  }

  /// Adds the link n → q on `level` (distance d), pruning n's list with the heuristic when it is full.
  /// With `force` the link is made even where the heuristic drops it: it takes the place of the
  /// farthest link that may go (see `relink`), unless every link is its target's last.
  /// Returns whether n links to q afterwards.
  bool link_back(slot_t n, slot_t q, float d, std::size_t level, bool force = false) {
    std::vector<moved_link> moved;
    bool linked = false;
    {
      const std::lock_guard lock(lock_of(n));
      slot_t* list = links(n, level);
      const std::size_t count = list[0];
      if (std::find(list + 1, list + 1 + count, q) != list + 1 + count) return true;
      if (count < capacity(level)) {
        store_link(list[count + 1], q);
        store_link(list[0], static_cast<slot_t>(count + 1), std::memory_order_release);
        if (level == 0) in0(q).fetch_add(1, std::memory_order_relaxed);
        return true;
      }
      std::vector<cand> pool{{d, q}};
      const float* nv = vec(n);
      for (std::size_t i = 0; i < count; ++i)
        if (usable(list[i + 1], level)) pool.push_back({distance(nv, vec(list[i + 1])), list[i + 1]});
      std::vector<cand> kept = select(nv, std::move(pool), capacity(level));
      if (force && std::none_of(kept.begin(), kept.end(), [q](const cand& c) { return c.slot == q; })) {
        if (kept.size() == capacity(level)) kept.pop_back();
        kept.push_back({d, q});
      }
      relink(n, level, std::move(kept), moved);
      linked = std::find(list + 1, list + 1 + list[0], q) != list + 1 + list[0];
    }
    rehome(moved);
    return linked;
  }

  /// Gives `q` a bottom-layer in-link if it has none (every neighbour's selection dropped it, or a
  /// removal took its last one), or `q` would be found by no search: a link to it is forced from its
  /// nearest neighbour in `near` (any order), else the next nearest — a neighbour whose list holds
  /// only links that are their targets' last (a hub under inner product) cannot take it.
  void keep_reachable(slot_t q, std::vector<cand> near) {
    if (in0(q).load(std::memory_order_relaxed) == 0) (void)link_from_nearest(q, std::move(near));
  }
  /// Forces a bottom-layer link to `q` from the nearest node in `near` that can take it; false when
  /// none can.
  bool link_from_nearest(slot_t q, std::vector<cand> near) {
    std::sort(near.begin(), near.end());
    for (const cand& n : near)
      if (n.slot != q && usable(n.slot, 0) && link_back(n.slot, q, n.distance, 0, true)) return true;
    return false;
  }

  /// After a removal, keeps every path that went through what it took out: for each (x, z) in `cut` (a
  /// bottom-layer link x → z that a repair dropped, or x → r → z through the removed node r), z must
  /// stay reachable from x. Then any node reachable from the entry before is after (replace each cut
  /// link of its path by a path from x to z), and any node with a path to the entry keeps one (what
  /// `link_exits` gives), but for links to r that `remove_slot` did not find. The in-link counts alone
  /// keep a node from losing its last in-link, not a group from losing its last link in: under inner
  /// product, a hub's removal made every repaired list prefer other hubs to a group of small-norm nodes
  /// that link each other, and the group stayed out of every search until the next walk (3,000
  /// clustered 8-d vectors, norms 10^±1, M 16, 900 removed one by one, a search returning everything
  /// after each: in 506-772 of the 900 states up to 21-88 stored ids missing, over 6 seeds; 0 in every
  /// state of 12 seeds now, and under l2 and cosine before and after). A breadth-first walk from x over
  /// at most three links and `max_path_lists` lists looks for each z; one it misses is linked (see
  /// `link_path`; a forced link displaces another, which is itself cut and checked on the next round).
  /// Where rounds run out or a link cannot be made, the remove or upsert walks the whole graph before
  /// it lets the exclusive lock go (`walk_soon`). Caller holds the structure lock exclusively. Cost: docs/hnsw.md,
  /// "Removals, session 35".
  void keep_paths(std::vector<std::pair<slot_t, slot_t>> cut) {
    std::vector<std::pair<slot_t, slot_t>> next;
    std::unique_ptr<scratch> s = acquire();
    std::vector<slot_t> reached;  // from one node, breadth first
    std::vector<slot_t> buf(max_links0);
    bool ok = true;
    for (int round = 0; ok && !cut.empty(); ++round) {
      if (round == 8) {
        ok = false;
        break;
      }
      std::sort(cut.begin(), cut.end());
      cut.erase(std::unique(cut.begin(), cut.end()), cut.end());
      next.clear();
      const journal_scope journal(*this, next);
      for (std::size_t i = 0; i < cut.size();) {
        const slot_t x = cut[i].first;
        std::size_t end = i;
        while (end < cut.size() && cut[end].first == x) ++end;
        std::vector<slot_t> targets;
        for (; i < end; ++i)
          if (cut[i].second != x && usable(cut[i].second, 0)) targets.push_back(cut[i].second);
        if (!usable(x, 0) || targets.empty()) continue;
        s->reset(slot_count.load(std::memory_order_relaxed), max_links0);
        (void)s->mark(x);
        // Breadth first (`reached` in that order), stopping as soon as the last target is marked.
        reached.assign(1, x);
        std::size_t left = targets.size();
        std::size_t level = 0;
        for (int depth = 0; left > 0 && depth < 3 && level < reached.size(); ++depth) {
          const std::size_t level_end = reached.size();
          for (std::size_t f = level; left > 0 && f < level_end && f < max_path_lists; ++f) {
            if (!usable(reached[f], 0)) continue;  // a stale link's target (the targets are usable)
            const std::size_t count = copy_links(reached[f], 0, buf.data(), s.get());  // the new ones
            for (std::size_t j = 0; left > 0 && j < count; ++j) {
              const slot_t y = buf[j];
              reached.push_back(y);
              if (std::find(targets.begin(), targets.end(), y) != targets.end()) --left;
            }
          }
          level = level_end;
        }
        std::erase_if(targets, [&](slot_t z) { return s->tags[z] == s->epoch; });
        for (const slot_t z : targets)
          if (!link_path(z, reached)) ok = false;
      }
      cut.swap(next);
    }
    release(std::move(s));
    if (!ok) walk_soon();
  }
  /// Makes the remove or upsert that runs this walk the whole graph before it lets the exclusive lock go.
  /// Also counts the live nodes as changed: where the remove or upsert throws before it walks (an
  /// allocation failure), the next change of any kind walks, and a save in between keeps that (`HWLK`).
  void walk_soon() {
    walk_requested.store(true, std::memory_order_relaxed);
    changed_since_repair.store(live_count.load(std::memory_order_relaxed), std::memory_order_relaxed);
  }
  /// Lists `keep_paths` reads at most for one node's targets (about a thousand nodes). Unbounded, the
  /// few targets that are not within three links cost most of its reads (l2, 20,000 × 64 clustered:
  /// 22% of the targets one link away, 66% two, 8.5% three, 3% further).
  static constexpr std::size_t max_path_lists = 32;
  /// Links z so that it is reachable from x = `reached[0]` (`reached`: nodes x reaches, breadth first):
  /// from x if it has room, else from the nearest to z of the first `max_links0` nodes in `reached` that
  /// have room, else by force from x or, where that cannot be, from the next of `reached` (at most
  /// `max_forced` tried). False when no link could be made.
  bool link_path(slot_t z, std::span<const slot_t> reached) {
    const auto room = [&](slot_t y) { return links(y, 0)[0] < max_links0; };
    const slot_t x = reached[0];
    const float* zv = vec(z);
    if (room(x)) return link_back(x, z, distance(vec(x), zv), 0);
    cand best{std::numeric_limits<float>::infinity(), no_slot};
    std::size_t offered = 0;
    for (std::size_t j = 1; j < reached.size() && offered < max_links0; ++j) {
      const slot_t y = reached[j];
      if (y == z || !usable(y, 0) || !room(y)) continue;
      ++offered;
      const float d = distance(vec(y), zv);
      if (best.slot == no_slot || d < best.distance) best = {d, y};
    }
    if (best.slot != no_slot) return link_back(best.slot, z, best.distance, 0);
    // By force: from x, else from the next nodes it reaches (a list whose every link is its target's
    // last cannot take one; under inner product at M 2, 13-15% of x's lists were such).
    std::size_t tried = 0;
    for (std::size_t j = 0; j < reached.size() && tried < max_forced; ++j) {
      const slot_t y = reached[j];
      if (y == z || !usable(y, 0)) continue;
      ++tried;
      if (link_back(y, z, distance(vec(y), zv), 0, true)) return true;
    }
    return false;
  }
  /// Nodes `link_path` tries to force a link from before it gives up.
  static constexpr std::size_t max_forced = 16;

  /// Counts `changes` nodes added, removed or upserted; true once the count since the last walk reaches
  /// a sixteenth of the live nodes.
  bool count_changes(std::size_t changes) {
    return walk_due(changed_since_repair.fetch_add(changes, std::memory_order_relaxed) + changes);
  }
  /// Whether `changed` changes since the last walk call for the next.
  [[nodiscard]] bool walk_due(std::size_t changed) const noexcept {
    return changed * 16 >= live_count.load(std::memory_order_relaxed);
  }
  /// `repair_reachability` with a scratch of its own. Out of memory, the walk stops where it is (it only
  /// adds links, each whole) and the next change walks again: the change that ran it is complete, and
  /// must not throw as if it had failed.
  void walk() {
    try {
      std::unique_ptr<scratch> s = acquire();
      repair_reachability(*s);
      release(std::move(s));
    } catch (const std::bad_alloc&) {
      walk_soon();
    }
  }
  /// An add's end, under the shared locks: counts its changes and walks when that is due.
  void repair_after_changes(std::size_t changes) {
    if (count_changes(changes)) walk();
  }
  /// A remove's or upsert's end, under the exclusive locks: counts its change, and walks now where
  /// `walk_soon` asked for it, so that no search sees the cut it mends. True when only the periodic
  /// walk is due: the caller runs it once it has let the exclusive locks go (`walk_beside_searches`),
  /// as an add does, so that searches and adds go on meanwhile. (A walk reads every list a few times:
  /// docs/hnsw.md, "Session 36: the periodic walk runs beside searches".)
  [[nodiscard]] bool finish_exclusive_change() {
    const bool due = count_changes(1);
    if (!walk_requested.load(std::memory_order_relaxed)) return due;
    walk();
    return false;
  }
  /// The periodic walk a remove or upsert left due, under the shared locks; none when another change
  /// walked since (its walk restarted the count).
  void walk_beside_searches() {
    const std::shared_lock adding_lock(adding);
    const std::shared_lock structure_lock(structure);
    if (walk_due(changed_since_repair.load(std::memory_order_relaxed))) walk();
  }

  /// Marks `start` and every usable node that `next` leads to from a marked one in `marked` (one entry
  /// per slot; nodes marked already are not entered). `next(x, visit)` calls `visit(y)` for each y that
  /// x leads to (out-of-range slots are ignored).
  template <class Next>
  void flood(slot_t start, std::vector<std::uint8_t>& marked, const Next& next) const {
    std::vector<slot_t> stack{start};
    marked[start] = 1;
    const auto visit = [&](slot_t y) {
      if (y < marked.size() && marked[y] == 0 && usable(y, 0)) {
        marked[y] = 1;
        stack.push_back(y);
      }
    };
    while (!stack.empty()) {
      const slot_t x = stack.back();
      stack.pop_back();
      next(x, visit);
    }
  }

  /// Links in every live node that no bottom-layer path from the entry reaches, and gives every node a
  /// search may start its bottom layer from a path to the entry (`link_exits`). The in-link counts
  /// keep a node from losing its last in-link, but not a few nodes from linking only each other: under
  /// inner product, small-norm nodes that every large-norm hub prunes away ended up in such closed
  /// pairs and triples. A depth-first walk from the entry finds them; each is linked from the nearest
  /// reachable node that can take it (a search from the entry walks reachable nodes only), which
  /// brings in the rest of its group. Reads every bottom-layer list a few times: `repair_after_changes`
  /// runs it once a sixteenth of the index has changed, so its cost per change stays bounded.
  void repair_reachability(scratch& s) {
    changed_since_repair.store(0, std::memory_order_relaxed);
    walk_requested.store(false, std::memory_order_relaxed);
    const std::uint64_t ep = entry.load(std::memory_order_acquire);
    if (ep == empty_entry) return;
    const auto ep_slot = static_cast<slot_t>(ep & 0xffffffffu);
    const auto ep_level = static_cast<std::size_t>(ep >> 32);
    const std::size_t n = slot_count.load(std::memory_order_acquire);
    std::vector<std::uint8_t> seen(n, 0);
    std::vector<slot_t> buf(max_links0);
    const auto walk = [&](slot_t from) {
      flood(from, seen, [&](slot_t x, const auto& visit) {
        const std::size_t count = copy_links(x, 0, buf.data());
        for (std::size_t i = 0; i < count; ++i) visit(buf[i]);
      });
    };
    s.building = true;  // as in an insert: nodes whose own insert is running are neither used nor linked
    // A forced link can push another out of a full list, and with it the only path to that link's
    // target: each pass walks the graph afresh, until one finds nothing to link (at most four).
    for (int pass = 0; pass < 4; ++pass) {
      std::fill(seen.begin(), seen.end(), std::uint8_t{0});
      walk(ep_slot);
      bool linked = false;
      for (slot_t u = 0; u < n; ++u) {
        if (seen[u] != 0 || !usable(u, 0) || linking(u).load(std::memory_order_acquire) != 0) continue;
        const query_ctx ctx{vec(u)};
        cand cur{distance(ctx.q, vec(ep_slot)), ep_slot};
        if (ep_level > 0) cur = descend(ctx, cur, ep_level, 0, s);
        s.reset(slot_count.load(std::memory_order_acquire), max_links0);
        const std::vector<cand> entries{cur};
        const std::vector<cand> near =
            search_layer(ctx, entries, build.ef_construction, 0, s, [u](slot_t x) { return x != u; });
        // Only a node the walk reached can link u in: the search enters the bottom layer where the
        // descent ends, so its near nodes may be as unreachable as u (a parallel build over 5,000 copies
        // of one vector beside 5,000 others left the duplicates linking only each other around the
        // entry; linked from each other, 380-402 of the others stayed unreachable by any search).
        // A link from a node with room pushes no other link out. A forced one can push out another
        // node's only path from the entry (its in-link count also counts links from unreachable
        // nodes), and two such nodes then take each other's place pass after pass (M = 2: 2-5 of
        // 1,500 nodes stayed unreachable). So: the nearest reached near node with room, else the
        // nearest reached node with room anywhere, else a forced link from the nearest reached one.
        // (Adds run beside the walk: a node added since it began has a slot past `seen`, unreached.)
        std::vector<cand> reached;
        for (const cand& c : near)
          if (c.slot < n && seen[c.slot] != 0) reached.push_back(c);
        const auto with_room = [&](std::span<const cand> from) {
          std::vector<cand> roomy;
          for (const cand& c : from)
            if (load_link(links(c.slot, 0)[0], std::memory_order_acquire) < capacity(0)) roomy.push_back(c);
          return roomy;
        };
        if (!link_from_nearest(u, with_room(reached))) {
          std::vector<cand> anywhere;
          for (slot_t y = 0; y < n; ++y)
            if (seen[y] != 0 && y != u && usable(y, 0)) anywhere.push_back({distance(ctx.q, vec(y)), y});
          if (!link_from_nearest(u, with_room(anywhere)))
            (void)link_from_nearest(u, reached.empty() ? std::move(anywhere) : std::move(reached));
        }
        walk(u);
        linked = true;
      }
      // Exits, under inner product only (no closed group was found under l2 or cosine, and the reversed
      // links cost about four forward walks: 60-90 ms at 100,000 nodes). A link `link_exits` adds keeps
      // every path to the entry, so a later pass looks again only when its forward links moved others.
      if (metric == shoal::metric::inner_product && ep_level > 0 && (pass == 0 || linked) && link_exits(s, ep_slot, n))
        linked = true;
      if (!linked) break;
    }
    s.building = false;
  }

  /// Gives every upper-layer node a bottom-layer path to the entry `ep_slot`; true when it linked
  /// anything. A search enters the bottom layer where its descent ends, at an upper-layer node, not at
  /// the entry, and links are one-way: under inner product a group of nodes could link only among
  /// themselves, and a search entering it explored that group alone whatever its ef (24-d, 20
  /// clusters, M 8: 86 of 3,000 nodes found by no search from their own vector). A walk from the entry
  /// over the reversed links finds every node with a path to it; an upper-layer node without one gets a
  /// link to the nearest node with one (found from the entry), which gives a path to every node that
  /// reaches it. The reversed links take one slot index per bottom-layer link for the walk's duration.
  bool link_exits(scratch& s, slot_t ep_slot, std::size_t n) {
    // In-links as offsets into `from`: counted, then filled; a list that changed in between (a concurrent
    // add) loses the links that no longer fit, which can only make the repair link more than it needs.
    std::vector<std::size_t> first(n + 1, 0);
    std::vector<slot_t> buf(max_links0);
    const auto each_link = [&](const auto& body) {
      for (slot_t x = 0; x < n; ++x) {
        if (!usable(x, 0)) continue;
        const std::size_t count = copy_links(x, 0, buf.data());
        for (std::size_t i = 0; i < count; ++i)
          if (buf[i] < n) body(x, buf[i]);
      }
    };
    each_link([&](slot_t, slot_t y) { ++first[y + 1]; });
    std::partial_sum(first.begin(), first.end(), first.begin());
    std::vector<slot_t> from(first[n], no_slot);
    std::vector<std::size_t> next(first.begin(), first.end() - 1);
    each_link([&](slot_t x, slot_t y) {
      if (next[y] < first[y + 1]) from[next[y]++] = x;
    });
    std::vector<std::uint8_t> exits(n, 0);  // has a path to the entry
    const auto walk_back = [&](slot_t to) {
      flood(to, exits, [&](slot_t y, const auto& visit) {
        for (std::size_t j = first[y]; j < first[y + 1]; ++j) visit(from[j]);
      });
    };
    walk_back(ep_slot);
    bool linked = false;
    for (slot_t u = 0; u < n; ++u) {
      if (exits[u] != 0 || !usable(u, 1) || linking(u).load(std::memory_order_acquire) != 0) continue;
      const query_ctx ctx{vec(u)};
      s.reset(slot_count.load(std::memory_order_acquire), max_links0);
      const std::vector<cand> entries{{distance(ctx.q, vec(ep_slot)), ep_slot}};  // the entry reaches all
      std::vector<cand> near =
          search_layer(ctx, entries, build.ef_construction, 0, s, [&](slot_t x) { return x < n && exits[x] != 0; });
      std::sort(near.begin(), near.end());
      for (const cand& c : near)
        if (link_back(u, c.slot, c.distance, 0, true)) {
          walk_back(u);  // u, and every node with a path to it, now reach the entry
          linked = true;
          break;
        }
    }
    return linked;
  }

  /// Links the published node `q` into the graph.
  void insert(slot_t q, scratch& s) {
    const std::size_t level = level_of_slot(q);
    const float* qv = vec(q);
    std::uint64_t ep = entry.load(std::memory_order_acquire);
    if (ep == empty_entry) {
      const std::lock_guard lock(entry_mutex);
      ep = entry.load(std::memory_order_acquire);
      if (ep == empty_entry) {
        linking(q).store(0, std::memory_order_release);
        entry.store(pack_entry(q, level), std::memory_order_release);
        return;
      }
    }
    s.building = true;
    const auto ep_slot = static_cast<slot_t>(ep & 0xffffffffu);
    const auto ep_level = static_cast<std::size_t>(ep >> 32);
    const query_ctx ctx{qv};
    cand cur{distance(qv, vec(ep_slot)), ep_slot};
    if (ep_level > level) cur = descend(ctx, cur, ep_level, level, s);
    std::vector<cand> entries{cur};
    const auto not_self = [q](slot_t x) { return x != q; };
    std::vector<moved_link> moved;  // see relink
    for (std::size_t l = std::min(level, ep_level) + 1; l-- > 0;) {
      s.reset(slot_count.load(std::memory_order_acquire), max_links0);
      std::vector<cand> found = search_layer(ctx, entries, build.ef_construction, l, s, not_self);
      const std::vector<cand> kept = select(qv, found, max_links);
      {
        // Concurrent inserts may already have linked to q on this level (a node whose search started
        // from q, still without links here, can have found nothing but q): keep their links, or such a
        // node would lose its only in-link and become unreachable.
        const std::lock_guard lock(lock_of(q));
        slot_t* list = links(q, l);
        std::vector<cand> merged = kept;
        for (std::size_t i = 0; i < list[0]; ++i) {
          const slot_t x = list[i + 1];
          if (usable(x, l) && std::none_of(merged.begin(), merged.end(), [x](const cand& c) { return c.slot == x; }))
            merged.push_back({distance(qv, vec(x)), x});
        }
        relink(q, l, merged.size() > capacity(l) ? select(qv, std::move(merged), capacity(l)) : std::move(merged),
               moved);
      }
      rehome(moved);
      moved.clear();
      for (const cand& k : kept) link_back(k.slot, q, k.distance, l);
      if (l == 0 && !found.empty()) keep_reachable(q, found);
      if (!found.empty()) entries = std::move(found);
    }
    s.building = false;
    linking(q).store(0, std::memory_order_release);
    if (level > ep_level) {
      const std::lock_guard lock(entry_mutex);
      if (level > static_cast<std::size_t>(entry.load(std::memory_order_relaxed) >> 32))
        entry.store(pack_entry(q, level), std::memory_order_release);
    }
  }

  /// Writes node data into slot `q` and publishes it (not yet linked).
  void write_node(slot_t q, const float* v, vector_id id, std::uint64_t seq) {
    const std::size_t level = level_of(seq);
    std::copy_n(v, dim, vec(q));
    id_of(q) = id;
    std::unique_ptr<slot_t[]>& upper = upper_of(q);
    upper.reset();
    if (level > 0) upper = std::make_unique<slot_t[]>(level * (max_links + 1));
    store_link(links(q, 0)[0], 0);
    if (code_stride != 0) encode(q);
    linking(q).store(1, std::memory_order_relaxed);
    state(q).store(static_cast<std::uint8_t>(level + 1), std::memory_order_release);
  }

  /// Unlinks and frees slot r. Caller holds the structure lock exclusively (no other thread touches the graph).
  void remove_slot(slot_t r) {
    const std::size_t top = level_of_slot(r);
    const std::size_t in_links = in0(r).load(std::memory_order_relaxed);
    state(r).store(0, std::memory_order_release);
    // r's bottom-layer links are gone first, so that the repairs below see true in-link counts.
    const std::vector<slot_t> r0(links(r, 0) + 1, links(r, 0) + 1 + links(r, 0)[0]);
    for (const slot_t y : r0) drop_in0(y);
    std::vector<slot_t> repaired0;               // bottom-layer lists that linked to r
    std::vector<moved_link> moved;               // see relink
    std::vector<std::pair<slot_t, slot_t>> cut;  // see keep_paths
    const journal_scope journal(*this, cut);
    for (std::size_t l = 0; l <= top; ++l) {
      const slot_t* rl = links(r, l);
      std::vector<slot_t> out(rl + 1, rl + 1 + rl[0]);
      std::erase_if(out, [&](slot_t x) { return !usable(x, l); });
      // Nodes linking to r: links are nearly symmetric, so r's neighbours and theirs hold nearly all of
      // them. A link this misses stays behind stale; searches skip it, and the next prune drops it.
      // Finding every in-link would take a read of every list (in0 says when some were missed: ~30%
      // of removals under l2 and inner product, 20,000 × 64 clustered), and a wider walk from r did
      // not find them much sooner (three links out: half of those removals still lacked some). The
      // paths through a missed link are kept from the entry (below), not from its owner.
      std::vector<slot_t> sources = out;
      for (const slot_t n : out) {
        const slot_t* nl = links(n, l);
        sources.insert(sources.end(), nl + 1, nl + 1 + nl[0]);
      }
      std::sort(sources.begin(), sources.end());
      sources.erase(std::unique(sources.begin(), sources.end()), sources.end());
      for (const slot_t u : sources) {
        if (u == r || !usable(u, l)) continue;
        slot_t* ul = links(u, l);
        if (std::find(ul + 1, ul + 1 + ul[0], r) == ul + 1 + ul[0]) continue;
        std::vector<cand> pool;
        const float* uv = vec(u);
        const auto offer = [&](slot_t x) {
          if (x == u || x == r || !usable(x, l)) return;
          if (std::any_of(pool.begin(), pool.end(), [&](const cand& c) { return c.slot == x; })) return;
          pool.push_back({distance(uv, vec(x)), x});
        };
        for (std::size_t i = 0; i < ul[0]; ++i) offer(ul[i + 1]);
        for (const slot_t x : out) offer(x);
        relink(u, l, select(uv, std::move(pool), capacity(l), true), moved);
        rehome(moved);
        moved.clear();
        if (l == 0) repaired0.push_back(u);
      }
    }
    upper_of(r).reset();
    id_of(r) = no_id;
    // A neighbour that r held the last in-link of, and that no repaired list took, is linked from the
    // nearest of r's former in-linkers that can take it, then of its own out-neighbours.
    for (const slot_t y : r0) {
      if (!usable(y, 0) || in0(y).load(std::memory_order_relaxed) > 0) continue;
      const slot_t* yl = links(y, 0);
      std::vector<cand> near;
      for (const std::span<const slot_t> from :
           {std::span<const slot_t>(repaired0), std::span<const slot_t>(yl + 1, yl[0])})
        for (const slot_t u : from)
          if (u != y && usable(u, 0)) near.push_back({distance(vec(y), vec(u)), u});
      keep_reachable(y, std::move(near));
    }
    store_link(links(r, 0)[0], 0);
    // in0(r) now counts the links to r that the repairs did not find (each repaired list gave up its
    // own): they lead to the node that reuses the slot, and a load, which counts every link, counts
    // them too (with 0 here, a loaded copy grew another graph from the same adds).
    {
      const std::lock_guard lock(slots_mutex);
      free_slots.push_back(r);
      std::push_heap(free_slots.begin(), free_slots.end(), std::greater<>{});
    }
    live_count.fetch_sub(1, std::memory_order_relaxed);
    // The paths u → r → y: rather than every y from every u, every y from one anchor a (the node of r0
    // most repaired lists link to now) and a from every u.
    std::vector<std::size_t> votes(r0.size(), 0);
    for (const slot_t u : repaired0) {
      const slot_t* ul = links(u, 0);
      for (std::size_t i = 0; i < r0.size(); ++i)
        votes[i] += std::find(ul + 1, ul + 1 + ul[0], r0[i]) != ul + 1 + ul[0] ? 1 : 0;
    }
    std::size_t anchor = r0.size();
    for (std::size_t i = 0; i < r0.size(); ++i)
      if (usable(r0[i], 0) && (anchor == r0.size() || votes[i] > votes[anchor])) anchor = i;
    if (anchor < r0.size()) {
      const slot_t a = r0[anchor];
      for (const slot_t u : repaired0) cut.emplace_back(u, a);
      for (const slot_t y : r0) cut.emplace_back(a, y);
      // In-links to r that the repairs missed (see above) are cut paths x → r → y with x unknown, and
      // the found in-linkers may all lie behind r, reached through it alone (under inner product, hub
      // r's region: after a removal that missed some, up to 19 nodes out of every search). So the
      // anchor must be reachable from the entry too: a search for it from the entry on the bottom
      // layer; where it misses, the nearest node it found (reachable from the entry) must reach it.
      const auto ep = static_cast<slot_t>(entry.load(std::memory_order_relaxed) & 0xffffffffu);
      if (repaired0.size() < in_links && ep != r) {
        std::unique_ptr<scratch> s = acquire();
        s->reset(slot_count.load(std::memory_order_relaxed), max_links0);
        const query_ctx ctx{vec(a)};
        const std::vector<cand> from{{distance(ctx.q, vec(ep)), ep}};
        const std::vector<cand> found = search_layer(ctx, from, max_links0, 0, *s, [](slot_t) { return true; });
        release(std::move(s));
        // (Under inner product the nearest to a need not be a itself.)
        if (!found.empty() && std::none_of(found.begin(), found.end(), [a](const cand& c) { return c.slot == a; }))
          cut.emplace_back(std::min_element(found.begin(), found.end())->slot, a);
      }
    }
    keep_paths(std::move(cut));
    if (static_cast<slot_t>(entry.load(std::memory_order_relaxed) & 0xffffffffu) == r) {
      choose_entry();
      walk_soon();  // the new entry was reachable from the old one, not necessarily the other way
    }
  }

  /// The live node with the highest level (the smallest slot among equals) becomes the entry point.
  void choose_entry() {
    std::uint64_t best = empty_entry;
    std::size_t best_level = 0;
    const slot_t n = slot_count.load(std::memory_order_relaxed);
    for (slot_t s = 0; s < n; ++s) {
      const std::uint8_t st = state(s).load(std::memory_order_relaxed);
      if (st == 0) continue;
      if (best == empty_entry || st - 1u > best_level) {
        best = pack_entry(s, st - 1u);
        best_level = st - 1u;
      }
    }
    entry.store(best, std::memory_order_release);
  }

  /// Reserves `ids` (all or nothing) and takes a slot for each. Throws on duplicates.
  [[nodiscard]] std::vector<slot_t> reserve(std::span<const vector_id> ids, const char* what) {
    const std::lock_guard lock(ids_mutex);
    {
      std::unordered_set<vector_id> batch;
      batch.reserve(ids.size());
      for (const vector_id id : ids) {
        SHOAL_CHECK_CODE(!slot_of.contains(id), errc::duplicate_id, what, ": id ", id, " is already stored");
        SHOAL_CHECK_CODE(batch.insert(id).second, errc::duplicate_id, what, ": id ", id, " appears twice in one batch");
      }
    }
    std::vector<slot_t> slots(ids.size());
    {
      const std::lock_guard slots_lock(slots_mutex);
      reserve_slots(slots.size());
      for (slot_t& s : slots) s = allocate_slot();
    }
    // All or nothing (out of memory half-way, ids mapped to slots never written would stay "stored").
    try {
      detail::insert_all_or_nothing(slot_of, ids, [&](std::size_t i) { return slots[i]; });
    } catch (...) {
      free_reserved(slots);  // (if this throws, they stay unused)
      throw;
    }
    return slots;
  }
  /// Gives back what `reserve` took, for a write that failed before any of its nodes was written.
  void unreserve(std::span<const vector_id> ids, std::span<const slot_t> slots) {
    {
      const std::lock_guard lock(ids_mutex);
      for (const vector_id id : ids) slot_of.erase(id);
    }
    free_reserved(slots);
  }
  /// Puts slots `reserve` took back on the free list.
  void free_reserved(std::span<const slot_t> slots) {
    const std::lock_guard lock(slots_mutex);
    free_slots.insert(free_slots.end(), slots.begin(), slots.end());
    std::make_heap(free_slots.begin(), free_slots.end(), std::greater<>{});
  }

  /// k nearest accepted nodes of one (prepared) query, written as ids into one result row. With SQ8
  /// traversal the ef candidates are re-ranked by their exact distances.
  /// `start`: where the bottom layer is entered, as `enter` found it (null: descend here).
  void search_one(const float* q, neighbors_view row, std::size_t ef, const search_params& params,
                  const cand* start = nullptr, const accepted_nodes* shared = nullptr) const {
    topk_heap heap(row.k);
    const bool coded = code_stride != 0;
    search_bottom(
        q, ef, params, coded,
        [&](std::span<const cand> found) {
          for (const cand& c : found) heap.push(c.distance, id_of(c.slot));
        },
        -no_distance, nullptr, start, shared);
    heap.write_sorted(row.row_ids(0), row.row_distances(0));
  }

  /// The form of `query` that a search traverses with: full precision, the F16 frame's (the moved query
  /// kept in `s`), or the SQ8 / SQ4 estimator's tables (kept in `s`).
  [[nodiscard]] query_ctx context(const float* query, bool coded, scratch& s) const {
    if (!coded) return query_ctx{query};
    return build.codes == hnsw_codes::fp16 ? prepare_half(query, s) : prepare_codes(query, s);
  }

  /// Where a search of `q` enters the bottom layer: the greedy descent from the entry point `ep` (not
  /// empty). `region` receives the node the descent settled on in layer 2 (the entry point itself in a
  /// graph of fewer layers): queries that pass the same one search the same part of the graph.
  [[nodiscard]] cand enter(const query_ctx& q, std::uint64_t ep, scratch& s, slot_t* region = nullptr) const {
    const auto ep_slot = static_cast<slot_t>(ep & 0xffffffffu);
    const auto top = static_cast<std::size_t>(ep >> 32);
    cand cur{score(q, ep_slot), ep_slot};
    if (top >= 2) cur = descend(q, cur, top, 1, s);
    if (region != nullptr) *region = cur.slot;
    return descend(q, cur, std::min<std::size_t>(top, 1), 0, s);
  }

  /// Smallest batch that `search` runs in locality order (at 256 queries it still gained 9-19%).
  static constexpr std::size_t locality_batch = 256;

  /// The order a batch's queries are searched in, and each query's bottom-layer entry (`enter`'s node).
  /// Queries sorted by (layer-2 region, entry) run next to each other on one thread and walk the same
  /// stretch of the bottom layer, so the vectors and link lists one query pulled into the cache serve the
  /// next: memory stalls dominate a search over vectors that do not fit the cache. Each query's search is
  /// the one it would have run alone (the entry is found once, here, and reused), so results are
  /// identical; only the order changes. fashion-mnist (60,000 × 784) HNSW16, 5,000 queries on 2 threads:
  /// +46-88% QPS; in-cache data: level (docs/hnsw.md, "Batches in locality order"). A key of the entry
  /// alone (without the region) gained nothing: entries are numbered in insertion order, not by place.
  struct batch_plan {
    std::vector<std::uint32_t> order;
    std::vector<cand> starts;
  };
  [[nodiscard]] batch_plan plan_batch(matrix_view<const float> queries) const {
    batch_plan plan;
    const std::uint64_t ep = entry.load(std::memory_order_acquire);
    // Orders are 32-bit (half the plan's memory): a batch of 2^32 queries or more runs in input order.
    if (queries.rows < locality_batch || queries.rows > std::numeric_limits<std::uint32_t>::max() || ep == empty_entry)
      return plan;
    const bool coded = code_stride != 0;
    plan.starts.resize(queries.rows);
    std::vector<std::uint64_t> keys(queries.rows);
    detail::parallel_for(queries.rows, [&](std::size_t i) {
      std::unique_ptr<scratch> s = acquire();
      slot_t region = 0;
      plan.starts[i] = enter(context(queries.row(i), coded, *s), ep, *s, &region);
      keys[i] = std::uint64_t{region} << 32 | plan.starts[i].slot;
      release(std::move(s));
    });
    plan.order.resize(queries.rows);
    std::iota(plan.order.begin(), plan.order.end(), std::uint32_t{0});
    std::sort(plan.order.begin(), plan.order.end(),
              [&](std::uint32_t a, std::uint32_t b) { return keys[a] != keys[b] ? keys[a] < keys[b] : a < b; });
    return plan;
  }

  /// Descends from the entry point and hands `consume` the `ef` best nodes of the bottom layer that
  /// `params.filter` accepts, as a span valid during the call (with `hits`, also collects every accepted
  /// node evaluated within `radius`: see `search_layer`). Without a filter the acceptance test compiles
  /// away and the nodes are handed over from the search's own pool, without a copy. With one, the walk
  /// may give way to a scan of the accepted nodes (`scan_switch`; not when `params.filter_scan` is false).
  /// `coded`: traverse with the codes (SQ8 / SQ4 estimates, or F16), then re-rank: the candidates' distances are exact
  /// either way. `entered`: the bottom-layer entry `enter` found for this query with the same `coded`
  /// (null: descend from the entry point now).
  template <class Consume>
  void search_bottom(const float* query, std::size_t ef, const search_params& params, bool coded,
                     const Consume& consume, float radius = -no_distance, std::vector<cand>* hits = nullptr,
                     const cand* entered = nullptr, const accepted_nodes* shared = nullptr) const {
    const std::uint64_t ep = entry.load(std::memory_order_acquire);
    if (ep == empty_entry) return;
    const id_filter& filter = params.filter;
    std::unique_ptr<scratch> s = acquire();
    scan_switch scan = scan_costs(coded, shared);
    if (scan.scan_first(ef)) {
      const std::vector<cand> scanned = scan_accepted(query, ef, filter, radius, hits, *s, shared);
      consume(std::span<const cand>(scanned));
      release(std::move(s));
      return;
    }
    const query_ctx q = context(query, coded, *s);
    const cand start = entered != nullptr ? *entered : enter(q, ep, *s);
    const std::size_t hits_before = hits != nullptr ? hits->size() : 0;
    // The heap search of a filtered or range search, from `from` (marks persist: a second call from
    // another entry visits only nodes the first did not).
    const auto heap_search = [&](const cand& from) {
      const std::span entries(&from, 1);
      if (filter)
        return search_layer(
            q, entries, ef, 0, *s, [&](slot_t x) { return filter.accepts(id_of(x)); }, radius, hits,
            params.filter_scan ? &scan : nullptr);
      return search_layer(
          q, entries, ef, 0, *s, [](slot_t) { return true; }, radius, hits);
    };
    const bool heap = filter || hits != nullptr;
    std::vector<cand> layer;  // the heap search's result
    if (heap) layer = heap_search(start);
    std::span<cand> found = heap ? std::span<cand>(layer) : search_pool(q, start, ef, 0, *s);
    // A search that found fewer than ef nodes of an index holding more has run out of nodes to visit:
    // under a filter that accepts few that is expected, but it may also have entered a group of nodes
    // whose links lead only to each other or to removed nodes — under inner product a removal can leave
    // such dead ends (docs/hnsw.md, "What remains"), and rows came back short of k, range searches
    // without the vectors beyond. It runs again from the entry point, and the two results merge (one
    // comparison when nothing is wrong; nothing more than that when the first search already visited
    // the entry point).
    const auto ep_slot = static_cast<slot_t>(ep & 0xffffffffu);
    if (!scan.taken && found.size() < ef && start.slot != ep_slot &&
        found.size() < live_count.load(std::memory_order_relaxed)) {
      std::vector<cand> merged(found.begin(), found.end());
      const cand from_ep{score(q, ep_slot), ep_slot};
      if (heap) {
        for (const cand& c : heap_search(from_ep)) merged.push_back(c);  // disjoint: the marks persist
      } else {
        for (const cand& c : search_pool(q, from_ep, ef, 0, *s))  // expands the entry point even if marked
          if (std::none_of(merged.begin(), merged.end(), [&](const cand& held) { return held.slot == c.slot; }))
            merged.push_back(c);
      }
      std::sort(merged.begin(), merged.end());
      if (merged.size() > ef) merged.resize(ef);
      layer = std::move(merged);
      found = layer;
    }
    if (scan.taken) {                                  // exact: nothing to re-rank
      if (hits != nullptr) hits->resize(hits_before);  // the walk's, found again by the scan
      layer = scan_accepted(query, ef, filter, radius, hits, *s, shared);
      consume(std::span<const cand>(layer));
      release(std::move(s));
      return;
    }
    if (coded) {  // exact distances of the candidates, in the scratch buffers (no allocation per query)
      s->pending_rows.resize(std::max(s->pending_rows.size(), found.size()));
      s->pending_distances.resize(std::max(s->pending_distances.size(), found.size()));
      for (std::size_t i = 0; i < found.size(); ++i) s->pending_rows[i] = vec(found[i].slot);
      exact_distances(query, s->pending_rows.data(), found.size(), s->pending_distances.data());
      for (std::size_t i = 0; i < found.size(); ++i) found[i].distance = s->pending_distances[i];
    }
    consume(std::span<const cand>(found));
    release(std::move(s));
  }

  /// Queries as searched: validated, and normalised under cosine; `what` names them in errors.
  [[nodiscard]] std::optional<matrix<float>> prepare(matrix_view<const float>& queries, const char* what) const {
    detail::check_vectors(queries, dim, what);
    if (metric != shoal::metric::cosine) return std::nullopt;
    matrix<float> normalized = detail::normalized_copy(queries, what);
    queries = normalized.view();
    return normalized;
  }
};

hnsw_index::hnsw_index(std::size_t dim, shoal::metric m, const hnsw_params& params) {
  detail::check_dimension(dim, "hnsw_index");
  detail::check_metric(m, "hnsw_index");
  SHOAL_CHECK(params.M >= 2 && params.M <= 256, "hnsw_index: M must be in [2, 256], got ", params.M);
  SHOAL_CHECK(params.ef_construction > 0, "hnsw_index: ef_construction must be at least 1");
  SHOAL_CHECK(params.alpha >= 1 && params.alpha <= 4, "hnsw_index: alpha must be in [1, 4], got ", params.alpha);
  SHOAL_CHECK(params.codes <= hnsw_codes::sq4, "hnsw_index: unknown codes ", static_cast<unsigned>(params.codes));
  SHOAL_CHECK_CODE(!impl::scalar_codes(params.codes) || dot_u8_i16_limit(dim) >= 1, errc::unsupported,
                   "hnsw_index: SQ8/SQ4 traversal supports at most 8,421,504 dimensions, got ", dim);
  hnsw_params p = params;
  p.ef_construction = std::max(p.ef_construction, p.M);
  impl_ = std::make_unique<impl>(dim, m, p);
}

hnsw_index::~hnsw_index() = default;
hnsw_index::hnsw_index(hnsw_index&& other) noexcept = default;
hnsw_index& hnsw_index::operator=(hnsw_index&& other) noexcept = default;

std::size_t hnsw_index::dim() const noexcept { return impl_->dim; }
shoal::metric hnsw_index::metric() const noexcept { return impl_->metric; }
const hnsw_params& hnsw_index::params() const noexcept { return impl_->build; }
std::size_t hnsw_index::size() const noexcept { return impl_->live_count.load(std::memory_order_relaxed); }

std::size_t hnsw_index::memory_bytes() const {
  const impl& x = *impl_;
  const std::shared_lock structure(x.structure);
  std::size_t bytes = 0;
  const slot_t n = x.slot_count.load(std::memory_order_acquire);
  {
    const std::lock_guard lock(x.slots_mutex);  // owned_chunks, tables
    bytes += x.owned_chunks.size() * x.chunk_nodes *
             (2 * sizeof(std::uint8_t) + sizeof(spinlock) + sizeof(std::uint32_t) + sizeof(vector_id) +
              sizeof(std::unique_ptr<slot_t[]>));
    for (const slab& b : x.slabs)
      bytes += (b.vectors.capacity() + b.terms.capacity()) * sizeof(float) + b.codes.capacity() +
               b.links0.capacity() * sizeof(slot_t);
    for (std::size_t t = 0, entries = x.directory_size; t < x.tables.size(); ++t, entries /= 2)
      bytes += entries * sizeof(std::atomic<chunk*>);
    bytes += x.free_slots.capacity() * sizeof(slot_t);
  }
  for (slot_t s = 0; s < n; ++s) {
    bytes += x.level_of_slot(s) * (x.max_links + 1) * sizeof(slot_t);
  }
  if (x.codes_ready.load(std::memory_order_acquire))  // F16: the frame (written once, before it is ready)
    bytes += x.half_centre.capacity() * sizeof(float) + sizeof x.half_exponent;
  const std::shared_lock lock(x.ids_mutex);
  return bytes + x.slot_of.bucket_count() * sizeof(void*) +
         x.slot_of.size() * (sizeof(void*) + sizeof(vector_id) + sizeof(slot_t));
}

void hnsw_index::check_add(matrix_view<const float> vectors) const {
  const impl& x = *impl_;
  x.check_mutable("hnsw_index::add");
  detail::check_rows_to_add(vectors, x.dim, x.metric, "hnsw_index::add: vector");
  if (vectors.rows == 0) return;
  x.check_codes_learnable(vectors.rows, "hnsw_index::add");
  // A first add learns the SQ8 / SQ4 ranges from its rows, which can still refuse them (copies of one
  // row, a range end past the bound): asked the same way (a review found check_add passing such rows).
  if (impl::scalar_codes(x.build.codes) && !x.codes_ready.load(std::memory_order_acquire)) {
    std::optional<matrix<float>> normalized;
    if (x.metric == shoal::metric::cosine) normalized = detail::normalized_copy(vectors, "hnsw_index::add: vector");
    (void)x.learned_ranges(normalized ? normalized->view() : vectors);
  }
}

void hnsw_index::add(matrix_view<const float> vectors, std::span<const vector_id> ids) {
  impl& x = *impl_;
  x.check_mutable("hnsw_index::add");
  detail::check_vectors(vectors, x.dim, "hnsw_index::add: vector");
  detail::check_ids(ids, vectors.rows, "hnsw_index::add");
  std::optional<matrix<float>> normalized;
  if (x.metric == shoal::metric::cosine) {
    normalized = detail::normalized_copy(vectors, "hnsw_index::add: vector");
    vectors = normalized->view();
  }
  if (vectors.rows == 0) return;
  x.check_codes_learnable(vectors.rows, "hnsw_index::add");
  const std::shared_lock adding(x.adding);
  const std::shared_lock structure(x.structure);
  const std::vector<slot_t> slots = x.reserve(ids, "hnsw_index::add");  // refuses duplicates first
  try {
    x.ensure_codes(vectors);
  } catch (...) {
    x.unreserve(ids, slots);  // all or nothing: the ids stay free for a later add
    throw;
  }
  const std::uint64_t first_seq = x.sequence.fetch_add(ids.size(), std::memory_order_relaxed);
  x.breaking_on_failure([&] {
    detail::parallel_for(ids.size(), [&](std::size_t i) {
      x.write_node(slots[i], vectors.row(i), ids[i], first_seq + i);
      std::unique_ptr<scratch> s = x.acquire();
      x.insert(slots[i], *s);
      x.release(std::move(s));
      x.live_count.fetch_add(1, std::memory_order_relaxed);
    });
  });
  x.repair_after_changes(ids.size());
}

void hnsw_index::train(matrix_view<const float> sample) {
  impl& x = *impl_;
  x.check_mutable("hnsw_index::train");
  detail::check_vectors(sample, x.dim, "hnsw_index::train: vector");
  if (x.build.codes == hnsw_codes::none) return;  // full-precision traversal has nothing to learn
  SHOAL_CHECK(sample.rows >= min_training_rows(), "hnsw_index::train: ",
              impl::scalar_codes(x.build.codes) ? "SQ8 / SQ4 ranges need" : "the F16 frame needs", " at least ",
              min_training_rows(), " sample vectors (got ", sample.rows, ")");
  std::optional<matrix<float>> normalized;
  if (x.metric == shoal::metric::cosine) {
    normalized = detail::normalized_copy(sample, "hnsw_index::train: vector");
    sample = normalized->view();
  }
  const detail::hnsw_write_lock held = x.lock_writers();
  // Free slots (every vector removed) keep stale codes, but no search reads them and a reuse rewrites
  // them: only live vectors would disagree with new ranges.
  SHOAL_CHECK(x.live_count.load(std::memory_order_relaxed) == 0,
              "hnsw_index::train: the index already holds vectors encoded ",
              x.build.codes == hnsw_codes::fp16 ? "in another frame" : "with other ranges");
  const std::lock_guard lock(x.codes_mutex);
  x.train_codes(sample);
}

void hnsw_index::remove(vector_id id) {
  impl& x = *impl_;
  x.check_mutable("hnsw_index::remove");
  bool walk = false;
  {
    const detail::hnsw_write_lock held = x.lock_writers();
    slot_t slot = no_slot;
    {
      const std::lock_guard lock(x.ids_mutex);
      const auto it = x.slot_of.find(id);
      SHOAL_CHECK_CODE(it != x.slot_of.end(), errc::not_found, "hnsw_index::remove: id ", id, " is not stored");
      slot = it->second;
      x.slot_of.erase(it);
    }
    x.breaking_on_failure([&] { x.remove_slot(slot); });
    walk = x.finish_exclusive_change();
  }
  if (walk) x.walk_beside_searches();
}

void hnsw_index::upsert(matrix_view<const float> vector, vector_id id) {
  impl& x = *impl_;
  x.check_mutable("hnsw_index::upsert");
  detail::check_vectors(vector, x.dim, "hnsw_index::upsert: vector");
  SHOAL_CHECK(vector.rows == 1, "hnsw_index::upsert: expected one vector, got ", vector.rows);
  detail::check_ids(std::span(&id, 1), 1, "hnsw_index::upsert");
  std::optional<matrix<float>> normalized;
  if (x.metric == shoal::metric::cosine) {
    normalized = detail::normalized_copy(vector, "hnsw_index::upsert: vector");
    vector = normalized->view();
  }
  x.check_codes_learnable(1, "hnsw_index::upsert");
  bool walk = false;
  {
    const detail::hnsw_write_lock held = x.lock_writers();
    x.ensure_codes(vector);  // F16 into an empty index: the frame from this vector (SQ8 / SQ4 have ranges by now)
    slot_t old = no_slot;
    {
      const std::lock_guard lock(x.ids_mutex);
      const auto it = x.slot_of.find(id);
      if (it != x.slot_of.end()) old = it->second;
    }
    // A new id takes its slot before the first change (all or nothing), a stored one after its removal.
    std::vector<slot_t> slots;
    if (old == no_slot) slots = x.reserve(std::span(&id, 1), "hnsw_index::upsert");
    x.breaking_on_failure([&] {
      if (old != no_slot) {
        {
          const std::lock_guard lock(x.ids_mutex);
          x.slot_of.erase(id);
        }
        x.remove_slot(old);
        slots = x.reserve(std::span(&id, 1), "hnsw_index::upsert");
      }
      x.write_node(slots[0], vector.row(0), id, x.sequence.fetch_add(1, std::memory_order_relaxed));
      // The insert's links back prune their lists too; under the exclusive lock an upsert keeps the paths
      // that cuts as its removal does (a review: ids upserted 400 times to far-away vectors left up to 75
      // of 1,500 ids out of an exhaustive search under inner product, all from the insert).
      std::vector<std::pair<slot_t, slot_t>> cut;
      {
        const impl::journal_scope journal(x, cut);
        std::unique_ptr<scratch> s = x.acquire();
        x.insert(slots[0], *s);
        x.release(std::move(s));
      }
      x.live_count.fetch_add(1, std::memory_order_relaxed);
      x.keep_paths(std::move(cut));
    });
    walk = x.finish_exclusive_change();
  }
  if (walk) x.walk_beside_searches();
}

std::size_t hnsw_index::min_training_rows() const noexcept {
  if (impl::scalar_codes(impl_->build.codes)) return min_code_learning_rows;
  return impl_->build.codes == hnsw_codes::fp16 ? 1 : 0;
}

bool hnsw_index::is_trained() const noexcept {
  return !impl::scalar_codes(impl_->build.codes) || impl_->codes_ready.load(std::memory_order_acquire);
}

bool hnsw_index::contains(vector_id id) const {
  const impl& x = *impl_;
  // Shared with searches and adds, exclusive to remove and upsert: an upsert takes the id out of the
  // map before it puts it back, and must look atomic here too.
  const std::shared_lock structure(x.structure);
  x.check_usable("hnsw_index::contains");
  const std::shared_lock lock(x.ids_mutex);
  const auto it = x.slot_of.find(id);
  return it != x.slot_of.end() && x.state(it->second).load(std::memory_order_acquire) != 0;
}

std::vector<float> hnsw_index::vector(vector_id id) const {
  const impl& x = *impl_;
  const std::shared_lock structure(x.structure);
  x.check_usable("hnsw_index::vector");
  slot_t slot = no_slot;
  {
    const std::shared_lock lock(x.ids_mutex);
    const auto it = x.slot_of.find(id);
    if (it != x.slot_of.end()) slot = it->second;
  }
  SHOAL_CHECK_CODE(slot != no_slot && x.state(slot).load(std::memory_order_acquire) != 0, errc::not_found,
                   "hnsw_index::vector: id ", id, " is not stored");
  const float* v = x.vec(slot);
  return {v, v + x.dim};
}

void hnsw_index::search(matrix_view<const float> queries, neighbors_view out, const search_params& params) const {
  const impl& x = *impl_;
  detail::check_result_buffer(queries.rows, out, "hnsw_index::search");
  const std::optional<matrix<float>> normalized = x.prepare(queries, "hnsw_index::search: query");
  const std::size_t ef = std::max(out.k, params.ef == 0 ? default_ef : params.ef);
  const std::shared_lock structure(x.structure);
  x.check_usable("hnsw_index::search");
  const impl::batch_plan plan = x.plan_batch(queries);
  impl::accepted_nodes shared;
  const bool listed = x.list_accepted(params, queries.rows > 1, ef, shared);
  detail::parallel_for_in(plan.order, queries.rows, [&](std::size_t i) {
    x.search_one(queries.row(i), out.slice(i, 1), ef, params, plan.starts.empty() ? nullptr : &plan.starts[i],
                 listed ? &shared : nullptr);
  });
}

neighbors hnsw_index::search(matrix_view<const float> queries, std::size_t k, const search_params& params) const {
  SHOAL_CHECK(k > 0, "hnsw_index::search: k must be at least 1");
  neighbors result(queries.rows, k);
  search(queries, result.view(), params);
  return result;
}

range_result hnsw_index::range_search(matrix_view<const float> queries, float radius,
                                      const search_params& params) const {
  const impl& x = *impl_;
  SHOAL_CHECK(!std::isnan(radius), "hnsw_index::range_search: radius is NaN");
  const std::optional<matrix<float>> normalized = x.prepare(queries, "hnsw_index::range_search: query");
  const std::size_t ef = params.ef == 0 ? default_ef : params.ef;
  const std::shared_lock structure(x.structure);
  x.check_usable("hnsw_index::range_search");
  impl::accepted_nodes shared;
  const bool listed = params.filter.listed() != nullptr && x.list_accepted(params, false, ef, shared);
  return detail::range_by_query(queries.rows, [&](std::size_t r, std::vector<scored_id>& row) {
    std::vector<cand> hits;
    x.search_bottom(
        queries.row(r), ef, params, false, [](std::span<const cand>) {}, radius, &hits, nullptr,
        listed ? &shared : nullptr);
    for (const cand& h : hits) row.push_back({h.distance, x.id_of(h.slot)});
  });
}

// ------------------------------------------------------------------------------------------- persistence
namespace {

/// The HPAR section: fixed-width little-endian fields (docs/format.md).
struct hnsw_file_params {
  std::uint64_t m;
  std::uint64_t ef_construction;
  std::uint64_t seed;
  std::uint32_t codes;  // hnsw_codes
  std::uint32_t chunk_nodes;
  std::uint64_t stride;       // floats per vector row
  std::uint64_t code_stride;  // bytes per code row (0: no codes)
  std::uint64_t slots;        // slots ever handed out
  std::uint64_t chunks;
  std::uint64_t sequence;
  std::uint64_t entry;  // slot | level << 32, or all ones when empty
};
static_assert(sizeof(hnsw_file_params) == 80 && std::is_trivially_copyable_v<hnsw_file_params>);

}  // namespace

bool hnsw_index::is_mapped() const noexcept { return impl_->mapping != nullptr; }

void hnsw_index::save(const std::string& path) const { detail::save_index_file(*this, path); }

hnsw_index hnsw_index::load(const std::string& path, const load_options& options) {
  return detail::load_index_file<hnsw_index>(path, options, "hnsw_index::load");
}

std::span<const std::uint32_t> detail::index_sections<hnsw_index>::known() {
  constexpr const hnsw_section_tags& t = hnsw_file_tags;
  static constexpr std::array<std::uint32_t, 14> tags{t.params, t.vectors, t.links0, t.legacy_codes, t.state,
                                                      t.ids,    t.upper,   t.ranges, t.alpha,        t.codes,
                                                      t.terms,  t.frame,   t.walk,   t.half_terms};
  return tags;
}

detail::hnsw_write_lock detail::index_sections<hnsw_index>::write(const hnsw_index& index,
                                                                  io::detail::index_file_writer& out) {
  return hnsw_sections::write(index, out, hnsw_file_tags);
}

hnsw_index detail::index_sections<hnsw_index>::read(const io::detail::index_file_reader& in) {
  const io::detail::index_header& h = in.header();
  SHOAL_CHECK_CODE(h.dim > 0 && h.dim <= max_dim, errc::corrupt_file, in.name(), ": hnsw dimension out of range");
  return hnsw_sections::read(in, hnsw_file_tags, static_cast<std::size_t>(h.dim), h.metric, h.count, "hnsw");
}

detail::hnsw_write_lock detail::hnsw_sections::write(const hnsw_index& index, io::detail::index_file_writer& out,
                                                     const hnsw_section_tags& tags) {
  const hnsw_index::impl& x = *index.impl_;
  detail::hnsw_write_lock held = x.lock_writers();
  x.check_usable("hnsw_index::save");  // a half-changed graph must not replace a good file
  const std::size_t slots = x.slot_count.load(std::memory_order_relaxed);
  // Whole chunks, so that a mapped chunk is one contiguous run of the file; those that hold a slot ever
  // handed out (an index growing node by node allocates some ahead).
  const std::size_t chunk_nodes = x.chunk_nodes;
  const std::size_t chunks = (slots + chunk_nodes - 1) / chunk_nodes;
  const std::span<const std::unique_ptr<chunk>> saved(x.owned_chunks.data(), chunks);
  out.begin_section(tags.params);
  out.append_value(hnsw_file_params{x.build.M, x.build.ef_construction, x.build.seed,
                                    static_cast<std::uint32_t>(x.build.codes), static_cast<std::uint32_t>(chunk_nodes),
                                    x.stride, x.code_stride, slots, chunks, x.sequence.load(), x.entry.load()});
  out.begin_section(tags.vectors);
  for (const auto& c : saved) out.append(std::span<const float>(c->vectors, chunk_nodes * x.stride));
  out.begin_section(tags.links0);
  for (const auto& c : saved) out.append(std::span<const slot_t>(c->links0, chunk_nodes * (x.max_links0 + 1)));
  if (x.code_stride != 0) {
    out.begin_section(tags.codes);
    for (const auto& c : saved) out.append(std::span<const std::uint8_t>(c->codes, chunk_nodes * x.code_stride));
  }
  if (hnsw_index::impl::scalar_codes(x.build.codes)) {
    // Under cosine the section holds zeros, as before session 44, when a cosine graph's terms were 0 (its
    // estimates were 1 − ⟨q, x̂⟩): readers of that time read such a file as they always did. The terms go
    // to their own optional section (format 1.9), which those readers ignore, so that a mapped load need
    // not derive them from the codes (it read the whole code section to do so: a review).
    out.begin_section(tags.terms);
    if (x.metric == shoal::metric::cosine) {
      out.append_zeros(chunks * chunk_nodes * sizeof(float));
      out.begin_section(tags.half_terms, 0);
    }
    for (const auto& c : saved) out.append(std::span<const float>(c->terms, chunk_nodes));
  }
  if (x.build.alpha != 1.0) {  // absent: 1 (files before format 1.1 never have it)
    out.begin_section(tags.alpha);
    out.append_value(x.build.alpha);
  }
  if (hnsw_index::impl::scalar_codes(x.build.codes) &&
      x.codes_ready.load(std::memory_order_acquire)) {  // absent: untrained
    out.begin_section(tags.ranges);
    out.append(std::span<const float>(x.sq->mins()));
    out.append(std::span<const float>(x.sq->steps()));
  }
  if (x.build.codes == hnsw_codes::fp16 && x.codes_ready.load(std::memory_order_acquire)) {  // absent: not learnt
    out.begin_section(tags.frame);
    out.append(std::span<const float>(x.half_centre));
    out.append_value(std::int32_t{x.half_exponent});
  }
  std::vector<std::uint8_t> state(slots);
  std::vector<vector_id> ids(slots);
  std::vector<slot_t> upper;
  for (std::size_t s = 0; s < slots; ++s) {
    const auto slot = static_cast<slot_t>(s);
    state[s] = x.state(slot).load(std::memory_order_relaxed);
    ids[s] = x.id_of(slot);
    if (state[s] > 1) {
      const slot_t* u = x.upper_of(slot).get();
      upper.insert(upper.end(), u, u + std::size_t{state[s] - 1u} * (x.max_links + 1));
    }
  }
  out.begin_section(tags.state);
  out.append_copy(std::span<const std::uint8_t>(state));
  out.begin_section(tags.ids);
  out.append_copy(std::span<const vector_id>(ids));
  out.begin_section(tags.upper);
  out.append_copy(std::span<const slot_t>(upper));
  // Changes since the last reachability walk (format 1.7), so that a loaded copy walks after the same
  // add or removal as the saved graph and the two keep growing the same graph. Absent: 0 (what a load
  // before 1.7 assumed). Optional: a reader that ignores it only walks later. At most the live count: any
  // count from a sixteenth of it up makes the next change walk (one is due: removals and upserts walk
  // after they let the exclusive lock go, and a save can come first).
  if (const std::uint64_t walk = std::min(x.changed_since_repair.load(std::memory_order_relaxed),
                                          x.live_count.load(std::memory_order_relaxed));
      walk != 0) {
    out.begin_section(tags.walk, 0);
    out.append_value(walk);
  }
  return held;
}

hnsw_index detail::hnsw_sections::read(const io::detail::index_file_reader& in, const hnsw_section_tags& tags,
                                       std::size_t dim, metric m, std::uint64_t count, const char* graph) {
  const std::string& name = in.name();
  hnsw_file_params fp{};
  in.read(tags.params, &fp, 1);
  const auto corrupt = [&](bool ok, std::string_view what) {
    SHOAL_CHECK_CODE(ok, errc::corrupt_file, name, ": ", graph, " ", what);
  };
  corrupt(fp.m >= 2 && fp.m <= 256 && fp.ef_construction > 0, "parameters out of range");
  corrupt(fp.codes <= static_cast<std::uint32_t>(hnsw_codes::sq4), "unknown code type");
  // Any power of two up to 2^10 (format 1.5: smaller for long rows; earlier files always hold 2^10).
  corrupt(fp.chunk_nodes >= 1 && fp.chunk_nodes <= (1u << max_chunk_shift) && std::has_single_bit(fp.chunk_nodes),
          "chunk size is not a power of two up to 1024");
  const std::size_t chunk_nodes = fp.chunk_nodes;
  corrupt(fp.slots < no_slot && fp.chunks == (fp.slots + chunk_nodes - 1) / chunk_nodes,
          "slot count and chunk count disagree");
  hnsw_params params;
  params.M = static_cast<std::size_t>(fp.m);
  params.ef_construction = static_cast<std::size_t>(fp.ef_construction);
  params.seed = fp.seed;
  params.codes = static_cast<hnsw_codes>(fp.codes);
  if (in.has(tags.alpha)) {
    corrupt(in.section_size(tags.alpha) == sizeof(double), "alpha section has the wrong size");
    in.read(tags.alpha, &params.alpha, 1);
    corrupt(params.alpha >= 1 && params.alpha <= 4, "alpha out of range");
  }
  hnsw_index index(dim, m, params);
  hnsw_index::impl& x = *index.impl_;
  x.set_chunk_shift(static_cast<std::size_t>(std::countr_zero(fp.chunk_nodes)));
  // Code rows: this format's codes (and, for SQ8 / SQ4, the terms beside them), or a format 1.0/1.1 file's
  // legacy rows (term, codes, padding), which are converted into owned memory, also under mmap.
  const bool scalar = hnsw_index::impl::scalar_codes(x.build.codes);  // SQ8 or SQ4: terms and ranges
  const bool legacy = in.has(tags.legacy_codes);
  // A cosine graph's terms are in their own section since format 1.9 (`HSQT` holds zeros, see `write`);
  // a file before 1.9 has none, and its terms are derived from the codes, into owned memory when mapped.
  const bool stored_half = in.has(tags.half_terms);
  corrupt(!stored_half || (scalar && m == shoal::metric::cosine && !legacy),
          "cosine SQ8 terms in a graph that is not a cosine SQ8 / SQ4 one");
  const bool derived_terms = scalar && m == shoal::metric::cosine && !stored_half;
  corrupt(!legacy || x.build.codes != hnsw_codes::sq4, "SQ4 codes in the legacy layout");
  const std::size_t file_code_stride =
      legacy ? hnsw_index::impl::code_row_stride(x.build.codes, dim, sizeof(float)) : x.code_stride;
  corrupt(fp.stride == x.stride && fp.code_stride == file_code_stride, "row strides differ from the dimension's");
  corrupt(x.code_stride != 0 || !(legacy || in.has(tags.codes)), "code rows in a graph without codes");
  corrupt(scalar || !in.has(tags.terms), "SQ8 terms in a graph without SQ8 codes");
  corrupt(!legacy || !(in.has(tags.codes) || in.has(tags.terms)), "code rows in two layouts");
  const auto slots = static_cast<std::size_t>(fp.slots);
  const auto chunks = static_cast<std::size_t>(fp.chunks);
  const std::size_t link_row = x.max_links0 + 1;
  const std::size_t vec_values = io::detail::checked_mul(fp.chunks, chunk_nodes * x.stride, name, "vector rows");
  const std::size_t link_values = io::detail::checked_mul(fp.chunks, chunk_nodes * link_row, name, "link rows");
  const std::size_t code_bytes = io::detail::checked_mul(fp.chunks, chunk_nodes * file_code_stride, name, "code rows");
  const std::size_t term_values = scalar ? chunks * chunk_nodes : 0;  // no larger than link_values
  const std::uint32_t code_tag = legacy ? tags.legacy_codes : tags.codes;
  if (x.code_stride != 0) corrupt(in.section_size(code_tag) == code_bytes, "code section has the wrong size");
  if (scalar && !legacy)
    corrupt(in.section_size(tags.terms) == term_values * sizeof(float), "term section has the wrong size");
  if (stored_half)
    corrupt(in.section_size(tags.half_terms) == term_values * sizeof(float), "cosine term section has the wrong size");

  // Bulk arrays: spans of the mapping, or read chunk by chunk into owned storage.
  const float* mapped_vectors = nullptr;
  const slot_t* mapped_links = nullptr;
  const std::uint8_t* mapped_codes = nullptr;
  const float* mapped_terms = nullptr;
  if (in.mapped()) {
    mapped_vectors = in.map<float>(tags.vectors, vec_values).data();
    mapped_links = in.map<slot_t>(tags.links0, link_values).data();
    if (x.code_stride != 0 && !legacy) mapped_codes = in.map<std::uint8_t>(tags.codes, code_bytes).data();
    if (scalar && !legacy) mapped_terms = in.map<float>(stored_half ? tags.half_terms : tags.terms, term_values).data();
    x.mapping = in.mapping();
    // A search hops between nodes: read-ahead would only fill memory with nodes it never visits.
    for (const std::uint32_t tag : {tags.vectors, tags.links0, tags.codes, tags.terms, tags.half_terms})
      in.advise_random(tag);
  } else {
    corrupt(in.section_size(tags.vectors) == vec_values * sizeof(float), "vector section has the wrong size");
    corrupt(in.section_size(tags.links0) == link_values * sizeof(slot_t), "link section has the wrong size");
  }
  std::vector<std::uint8_t> state(slots);
  std::vector<vector_id> ids(slots);
  in.read(tags.state, state.data(), slots);
  in.read(tags.ids, ids.data(), slots);
  corrupt(scalar || !in.has(tags.ranges), "SQ8 code ranges in a graph without SQ8 codes");
  // An SQ8 graph without ranges was saved before its ranges were learnt: it holds no node yet.
  corrupt(!scalar || in.has(tags.ranges) || slots == 0, "SQ8 graph without code ranges");
  if (scalar && in.has(tags.ranges)) {
    std::vector<float> ranges(2 * x.dim);
    in.read(tags.ranges, ranges.data(), ranges.size());
    const auto half = ranges.begin() + static_cast<std::ptrdiff_t>(x.dim);
    try {
      x.sq = scalar_quantizer::sq8_with_ranges({ranges.begin(), half}, {half, ranges.end()},
                                               hnsw_index::impl::code_top(x.build.codes));
    } catch (const shoal::error& e) {
      corrupt(false, e.message());
    }
    x.codes_ready.store(true, std::memory_order_release);
  }
  // The F16 frame (format 1.6). Without it, an F16 graph that holds slots was saved before 1.6, with codes of
  // the raw values: the identity frame; an empty one learns its frame when vectors come.
  const bool half = x.build.codes == hnsw_codes::fp16;
  corrupt(half || !in.has(tags.frame), "F16 frame in a graph without F16 codes");
  if (half && in.has(tags.frame)) {
    corrupt(in.section_size(tags.frame) == x.dim * sizeof(float) + sizeof(std::int32_t),
            "F16 frame section has the wrong size");
    std::vector<float> centre(x.dim);
    std::int32_t exponent = 0;
    in.read_range(tags.frame, 0, centre.data(), x.dim * sizeof(float));
    in.read_range(tags.frame, x.dim * sizeof(float), &exponent, sizeof exponent);
    corrupt(exponent >= -hnsw_index::impl::max_half_exponent && exponent <= hnsw_index::impl::max_half_exponent,
            "F16 frame exponent out of range");
    try {  // a centre past the norm bound would make a query's ⟨q, c⟩ overflow
      detail::check_vectors({centre.data(), 1, x.dim}, x.dim, "F16 frame centre");
    } catch (const shoal::error& e) {
      corrupt(false, e.message());
    }
    x.set_half_frame(std::move(centre), exponent);
    x.codes_ready.store(true, std::memory_order_release);
  } else if (half && slots > 0) {
    x.set_half_frame(std::vector<float>(x.dim, 0.0f), 0);
    x.codes_ready.store(true, std::memory_order_release);
  }
  std::size_t upper_values = 0;
  for (const std::uint8_t st : state) {
    corrupt(st <= max_level + 1, "node level out of range");
    if (st > 1) upper_values += std::size_t{st - 1u} * (x.max_links + 1);
  }
  // Sized by the section table before anything is allocated: a damaged level byte must not make a
  // small file ask for gigabytes.
  const aligned_vector<slot_t> upper = in.read_vector<slot_t>(tags.upper, upper_values);

  {
    const std::lock_guard lock(x.slots_mutex);
    if (in.mapped()) {
      if ((legacy && x.code_stride != 0) || derived_terms) {  // the converted rows' or derived terms' own slab
        slab& b = x.slabs.emplace_back();
        if (legacy) {
          b.codes.assign(chunks * chunk_nodes * x.code_stride, 0);
          mapped_codes = b.codes.data();
        }
        b.terms.assign(term_values, 0.0f);
        mapped_terms = b.terms.data();
      }
      for (std::size_t c = 0; c < chunks; ++c) {
        chunk& ch = x.add_chunk();
        // Never written (apart from converted legacy rows, below): every mutator refuses a mapped index.
        ch.vectors = const_cast<float*>(mapped_vectors + c * chunk_nodes * x.stride);
        ch.links0 = const_cast<slot_t*>(mapped_links + c * chunk_nodes * link_row);
        if (x.code_stride != 0) ch.codes = const_cast<std::uint8_t*>(mapped_codes + c * chunk_nodes * x.code_stride);
        if (scalar) ch.terms = const_cast<float*>(mapped_terms + c * chunk_nodes);
      }
    } else if (chunks > 0) {  // one slab for the whole file
      x.add_chunks(chunks);
      slab& b = x.slabs.back();
      in.read(tags.vectors, b.vectors.data(), b.vectors.size());
      in.read(tags.links0, b.links0.data(), b.links0.size());
      if (x.code_stride != 0 && !legacy) in.read(tags.codes, b.codes.data(), b.codes.size());
      if (scalar && !legacy) in.read(tags.terms, b.terms.data(), b.terms.size());
    }
    if (legacy && x.code_stride != 0) {  // split each legacy row into its term and its codes
      std::vector<std::uint8_t> rows(chunk_nodes * file_code_stride);
      const std::size_t row_bytes = hnsw_index::impl::code_bytes(x.build.codes, dim);
      for (std::size_t c = 0; c < chunks; ++c) {
        in.read_range(tags.legacy_codes, c * rows.size(), rows.data(), rows.size());
        const chunk& ch = x.chunk_of(c);
        for (std::size_t off = 0; off < chunk_nodes; ++off) {
          const std::uint8_t* row = rows.data() + off * file_code_stride;
          if (scalar) std::memcpy(ch.terms + off, row, sizeof(float));
          std::memcpy(ch.codes + off * x.code_stride, row + sizeof(float), row_bytes);
        }
      }
    }
    x.slot_count.store(static_cast<slot_t>(slots), std::memory_order_relaxed);
  }

  // Per-node arrays, and every link checked to stay inside the slots.
  const auto links_ok = [&](const slot_t* list, std::size_t capacity) {
    if (list[0] > capacity) return false;
    return std::all_of(list + 1, list + 1 + list[0], [&](slot_t v) { return v < slots; });
  };
  std::size_t live = 0;
  const slot_t* next_upper = upper.data();
  for (std::size_t s = 0; s < slots; ++s) {
    const auto slot = static_cast<slot_t>(s);
    corrupt(links_ok(x.links(slot, 0), x.max_links0), "bottom-layer link list out of range");
    if (state[s] == 0) {
      x.free_slots.push_back(slot);
      continue;
    }
    ++live;
    if (in.checks_values())
      if (const matrix_view<const float> v{x.vec(slot), 1, x.dim}; !detail::vectors_pass(v, x.metric))
        detail::check_loaded_vectors(v, name, detail::str("vector of id ", ids[s]).c_str(), x.metric);
    x.id_of(slot) = ids[s];
    detail::check_stored_id(ids[s], x.slot_of.emplace(ids[s], slot).second, name);
    if (state[s] > 1) {
      const std::size_t values = std::size_t{state[s] - 1u} * (x.max_links + 1);
      auto& u = x.upper_of(slot);
      u = std::make_unique<slot_t[]>(values);
      std::copy_n(next_upper, values, u.get());
      next_upper += values;
      for (std::size_t l = 1; l < state[s]; ++l)
        corrupt(links_ok(x.links(slot, l), x.max_links), "upper link list out of range");
    }
    x.state(slot).store(state[s], std::memory_order_relaxed);
  }
  corrupt(live == count, "live node count disagrees with the header");
  // A copied load derives the traversal codes (and SQ8 / SQ4 terms) from the checked vectors again, as the
  // flat index does its norms: stored ones are not trusted (a file whose checksums were recomputed over
  // zeroed or NaN codes loaded and searched at R@10 0.02, a review). The same bits as the saved index's
  // wherever the encoder is (same frame or ranges, same vectors); a mapped index trusts the file.
  if (!in.mapped() && x.code_stride != 0 && x.codes_ready.load(std::memory_order_acquire))
    detail::parallel_for(slots, [&](std::size_t s) {
      if (state[s] != 0) x.encode(static_cast<slot_t>(s));
    });
  else if (derived_terms && x.codes_ready.load(std::memory_order_acquire))
    detail::parallel_for(slots, [&](std::size_t s) {
      if (state[s] != 0) x.code_term(static_cast<slot_t>(s)) = x.stored_term(static_cast<slot_t>(s));
    });
  std::make_heap(x.free_slots.begin(), x.free_slots.end(), std::greater<>{});  // (ascending is one already)
  if (!in.mapped())  // the bottom-layer in-link counts that later prunes consult (a mapped index never changes)
    for (std::size_t s = 0; s < slots; ++s) {
      if (state[s] == 0) continue;
      const slot_t* list = x.links(static_cast<slot_t>(s), 0);
      for (std::size_t i = 0; i < list[0]; ++i) x.in0(list[i + 1]).fetch_add(1, std::memory_order_relaxed);
    }
  const std::uint64_t entry = fp.entry;
  const bool entry_ok = live == 0 ? entry == empty_entry
                                  : (entry & 0xffffffffu) < slots && state[entry & 0xffffffffu] == (entry >> 32) + 1;
  corrupt(entry_ok, "entry point is not a live node of its level");
  x.entry.store(entry, std::memory_order_release);
  x.live_count.store(live, std::memory_order_relaxed);
  x.sequence.store(fp.sequence, std::memory_order_relaxed);
  if (in.has(tags.walk)) {
    std::uint64_t walk = 0;
    in.read(tags.walk, &walk, 1);
    corrupt(walk <= live, "walk counter exceeds the live node count");
    x.changed_since_repair.store(static_cast<std::size_t>(walk), std::memory_order_relaxed);
  }
  return index;
}

}  // namespace shoal
