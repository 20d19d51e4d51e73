// Filtered search against an exact filtered answer (session 45's user-eyes review of filters; its program,
// kept): 20,000 clustered 64-d rows (`make_clustered(20200, 64, 50, 7)`, the last 200 as queries), k 10,
// one thread, no peer. Modes:
//   ivf_short  IVF64,Flat and IVF64,PQ16x4fs, a filter passing the 200 rows nearest one point: short
//              rows by nprobe, and the time per query (rows left short search more lists since session 46)
//   hnsw_slow  HNSW16 against Flat with the same predicate, random filters passing 0.1% to 50%: the
//              search as shipped (a walk that may end in a scan of the accepted nodes, session 46) and the
//              walk alone (`filter_scan = false`, the search before session 46); a batch of 200 queries
//   hnsw_single  the same, one query at a time
//   semantic   4 semantic HNSW16 shards, that one-region filter: short rows by shard_probe
//   baseline   unfiltered R@10 of each kind, and IVF-PQ's re-rank under the filters
//   faiss_ef   (with FAISS) HNSW only, 50% / 20% / 10% passing: shoal's ef and FAISS's efSearch swept, to
//              compare at equal recall (session 47)
//   faiss      (built with -DWITH_FAISS) FAISS 1.7.3 beside shoal under the same random filters, one
//              thread: IndexHNSWFlat (M 16, efConstruction 200, efSearch 64) against HNSW16 (ef 64), and
//              IndexIVFFlat (nlist 64, nprobe 1 and 8) against IVF64,Flat, with an IDSelectorBitmap
// Built and run (docs: search_params::filter in include/shoal/core/params.hpp, docs/collection.md):
//   g++ -std=c++20 -O2 -DNDEBUG -Iinclude -Ibuild/include benchmarks/results/filtered-search.cpp
//       build/libshoal.a -ltbb -o /tmp/filtered   (one command)
//   with FAISS: add -DWITH_FAISS -fopenmp -lfaiss -lblas -llapack to that command
//   /tmp/filtered ivf_short; /tmp/filtered hnsw_slow; /tmp/filtered semantic   (add `cos` for cosine, or
//   `l2`, then a dimension for other than 64: /tmp/filtered hnsw_slow l2 784)
#include <tbb/task_arena.h>
#include <shoal/shoal.hpp>
#ifdef WITH_FAISS
#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/impl/IDSelector.h>
#include <omp.h>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

using namespace shoal;
using clk = std::chrono::steady_clock;
static double secs(clk::time_point a, clk::time_point b) { return std::chrono::duration<double>(b - a).count(); }

constexpr std::size_t N = 20000, NQ = 200, K = 10;
static std::size_t D = 64;  // the third argument, when given

struct data {
  matrix<float> all = make_clustered(N + NQ, D, 50, 7);
  matrix_view<const float> base{all.values.data(), N, D};
  matrix_view<const float> queries{all.values.data() + N * D, NQ, D};
  std::vector<vector_id> ids;
  data() {
    ids.resize(N);
    std::iota(ids.begin(), ids.end(), vector_id{0});
  }
};

// one region: the `want` nearest base vectors to base row 4242 (as filtbench's "clus")
static std::vector<std::uint8_t> region(const data& d, std::size_t want) {
  const float* c = d.base.row(4242);
  std::vector<std::pair<float, vector_id>> v(N);
  for (std::size_t i = 0; i < N; ++i) {
    float s = 0;
    for (std::size_t j = 0; j < D; ++j) s += (d.base.row(i)[j] - c[j]) * (d.base.row(i)[j] - c[j]);
    v[i] = {s, i};
  }
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(want), v.end());
  std::vector<std::uint8_t> acc(N, 0);
  for (std::size_t i = 0; i < want; ++i) acc[v[i].second] = 1;
  return acc;
}
static std::vector<std::uint8_t> random_subset(std::size_t want, std::uint64_t seed) {
  std::vector<vector_id> perm(N);
  std::iota(perm.begin(), perm.end(), vector_id{0});
  std::mt19937_64 rng(seed);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<std::uint8_t> acc(N, 0);
  for (std::size_t i = 0; i < want; ++i) acc[perm[i]] = 1;
  return acc;
}

static neighbors exact_filtered(const data& d, metric m, const std::vector<std::uint8_t>& acc) {
  flat_index f(D, m);
  f.add(d.base, d.ids);
  search_params p;
  const std::uint8_t* a = acc.data();
  p.filter = [a](vector_id id) { return a[id] != 0; };
  return f.search(d.queries, K, p);
}
static double recall(const neighbors& got, const neighbors& gt) {
  double h = 0, n = 0;
  for (std::size_t q = 0; q < gt.rows(); ++q) {
    std::set<vector_id> g;
    for (std::size_t j = 0; j < K; ++j)
      if (gt.id(q, j) != no_id) g.insert(gt.id(q, j));
    n += g.size();
    for (std::size_t j = 0; j < K; ++j) h += g.count(got.id(q, j));
  }
  return h / n;
}
static std::size_t short_rows(const neighbors& got, std::size_t* empty = nullptr) {
  std::size_t s = 0, e = 0;
  for (std::size_t q = 0; q < got.rows(); ++q) {
    std::size_t valid = 0;
    for (std::size_t j = 0; j < K; ++j) valid += got.id(q, j) != no_id;
    s += valid < K;
    e += valid == 0;
  }
  if (empty) *empty = e;
  return s;
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  const metric m = argc > 2 && std::string(argv[2]) == "cos" ? metric::cosine : metric::l2;
  if (argc > 3) D = std::stoul(argv[3]);
  data d;
  tbb::task_arena one(1);

  if (mode == "baseline") {
    const std::vector<std::uint8_t> all(N, 1);
    const neighbors gt = exact_filtered(d, m, all);  // = unfiltered exact
    for (const char* spec : {"Flat", "HNSW16", "HNSW16,SQ8", "IVF64,Flat", "IVF64_HNSW16,Flat",
                             "IVF64,PQ16x4fs,Refine(Flat)", "IVF64,PQ16", "HNSW16,SQ8,Refine(Flat)"}) {
      any_index idx = make_index(spec, D, m);
      idx.train(d.base);
      idx.add(d.base, d.ids);
      const search_params ps[] = {{}, {.ef = 128, .nprobe = 16}, {.ef = 256, .nprobe = 64}};
      std::printf("%-30s unfiltered R@10: default %.3f  ef128/np16 %.3f  ef256/np64 %.3f\n", spec,
                  recall(idx.search(d.queries, K, ps[0]), gt), recall(idx.search(d.queries, K, ps[1]), gt),
                  recall(idx.search(d.queries, K, ps[2]), gt));
      if (std::string(spec) == "IVF64,PQ16x4fs,Refine(Flat)") {
        for (std::size_t rf : {4, 10}) {
          for (std::size_t np : {1, 16, 64}) {
            std::printf("  refine_factor %2zu nprobe %2zu: unfiltered %.3f |", rf, np,
                        recall(idx.search(d.queries, K, {.nprobe = np, .refine_factor = rf}), gt));
            for (int kind = 0; kind < 2; ++kind)
              for (double sel : {0.5, 0.1, 0.01, 0.001}) {
                const std::size_t want = static_cast<std::size_t>(std::llround(sel * N));
                const std::vector<std::uint8_t> acc = kind == 0 ? random_subset(want, 99) : region(d, want);
                search_params p{.nprobe = np, .refine_factor = rf};
                const std::uint8_t* a = acc.data();
                p.filter = [a](vector_id id) { return a[id] != 0; };
                const neighbors r = idx.search(d.queries, K, p);
                std::printf(" %s%g %.3f(short %zu)", kind == 0 ? "rand" : "clus", sel,
                            recall(r, exact_filtered(d, m, acc)), short_rows(r));
              }
            std::printf("\n");
          }
        }
      }
    }
  } else if (mode == "ivf_short") {
    const std::vector<std::uint8_t> acc = region(d, 200);  // 200 ids pass: 1%
    const neighbors gt = exact_filtered(d, m, acc);
    for (const char* spec : {"IVF64,Flat", "IVF64,PQ16x4fs"}) {
      any_index idx = make_index(spec, D, m);
      idx.train(d.base);
      idx.add(d.base, d.ids);
      for (std::size_t np : {1, 4, 16, 32, 48, 63, 64}) {
        search_params p{.nprobe = np};
        const std::uint8_t* a = acc.data();
        p.filter = [a](vector_id id) { return a[id] != 0; };
        neighbors r(1, 1);
        double t = 1e9;
        one.execute([&] {
          for (int rep = 0; rep < 3; ++rep) {
            const auto t0 = clk::now();
            r = idx.search(d.queries, K, p);
            t = std::min(t, secs(t0, clk::now()));
          }
        });
        std::size_t empty = 0;
        const std::size_t s = short_rows(r, &empty);
        std::printf(
            "%s, 200 ids pass (one region), nprobe %2zu: R@10 %.3f, rows short of k %3zu / %zu (empty %zu), %.3f "
            "ms/query\n",
            spec, np, recall(r, gt), s, NQ, empty, t * 1e3 / NQ);
      }
    }
  } else if (mode == "hnsw_slow" || mode == "hnsw_single") {
    // hnsw_single: the same searches one query at a time (the single-query switch, session 47).
    const bool single = mode == "hnsw_single";
    const auto search = [&](const any_index& index, const search_params& sp) {
      if (!single) return index.search(d.queries, K, sp);
      neighbors rows(NQ, K);
      for (std::size_t q = 0; q < NQ; ++q) index.search(d.queries.slice(q, 1), rows.view().slice(q, 1), sp);
      return rows;
    };
    any_index h = make_index("HNSW16", D, m);
    h.add(d.base, d.ids);
    any_index f = make_index("Flat", D, m);
    f.add(d.base, d.ids);
    for (double sel : {1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.001}) {
      const std::size_t want = static_cast<std::size_t>(std::llround(sel * N));
      const std::vector<std::uint8_t> acc = random_subset(want, 5);
      search_params p;
      const std::uint8_t* a = acc.data();
      if (sel < 1.0) p.filter = [a](vector_id id) { return a[id] != 0; };
      search_params walk = p;
      walk.filter_scan = false;
      double th = 1e9, tw = 1e9, tf = 1e9;
      neighbors rh(1, 1), rw(1, 1), rf(1, 1);
      one.execute([&] {
        for (int rep = 0; rep < 2; ++rep) {
          auto t0 = clk::now();
          rh = search(h, p);
          auto t1 = clk::now();
          rw = search(h, walk);
          auto t2 = clk::now();
          rf = search(f, p);
          auto t3 = clk::now();
          th = std::min(th, secs(t0, t1));
          tw = std::min(tw, secs(t1, t2));
          tf = std::min(tf, secs(t2, t3));
        }
      });
      std::printf(
          "d %zu, filter accepts %5zu of %zu (%g%%): HNSW16 %.3f ms/query (R@10 %.3f), the walk alone %.3f ms/query "
          "(R@10 %.3f), Flat with the same filter %.3f ms/query: HNSW %.1fx the scan, the walk alone %.1fx\n",
          D, want, N, sel * 100, th * 1e3 / NQ, recall(rh, rf), tw * 1e3 / NQ, recall(rw, rf), tf * 1e3 / NQ, th / tf,
          tw / tf);
    }
  } else if (mode == "semantic") {
    collection_options o;
    o.dim = D;
    o.metric = m;
    o.index = "HNSW16";
    o.shards = 4;
    o.policy = sharding::semantic;
    collection c(o);
    c.train(d.base);
    c.add(d.base, d.ids);
    const std::vector<std::uint8_t> acc = region(d, 200);
    const neighbors gt = exact_filtered(d, m, acc);
    std::printf("shard sizes:");
    for (auto s : c.shard_sizes()) std::printf(" %zu", s);
    std::set<std::size_t> shards;
    for (std::size_t i = 0; i < N; ++i)
      if (acc[i]) shards.insert(c.shard_of(i));
    std::printf("; the 200 accepted ids live in %zu shard(s)\n", shards.size());
    for (std::size_t sp : {1, 2, 3, 4}) {
      for (std::size_t ef : {0, 256}) {
        search_params p{.ef = ef, .shard_probe = sp};
        const std::uint8_t* a = acc.data();
        p.filter = [a](vector_id id) { return a[id] != 0; };
        const neighbors r = c.search(d.queries, K, p);
        std::size_t empty = 0;
        const std::size_t s = short_rows(r, &empty);
        std::printf(
            "semantic x4 HNSW16, 200 ids pass (one region), shard_probe %zu ef %3zu: R@10 %.3f, short rows %3zu / %zu "
            "(empty %zu)\n",
            sp, ef, recall(r, gt), s, NQ, empty);
      }
    }
#ifdef WITH_FAISS
  } else if (mode == "faiss" || mode == "faiss_ef") {
    omp_set_num_threads(1);
    faiss::IndexHNSWFlat fh(static_cast<int>(D), 16);
    fh.hnsw.efConstruction = 200;
    fh.add(N, d.base.data);
    faiss::IndexFlatL2 coarse(D);
    faiss::IndexIVFFlat fi(&coarse, D, 64);
    fi.train(N, d.base.data);
    fi.add(N, d.base.data);
    any_index h = make_index("HNSW16", D, m);
    h.add(d.base, d.ids);
    any_index iv = make_index("IVF64,Flat", D, m);
    iv.train(d.base);
    iv.add(d.base, d.ids);
    const auto timed = [&](auto&& run) {
      double t = 1e9;
      one.execute([&] {
        for (int rep = 0; rep < 2; ++rep) {
          const auto t0 = clk::now();
          run();
          t = std::min(t, secs(t0, clk::now()));
        }
      });
      return t * 1e3 / NQ;
    };
    const auto from_faiss = [&](const std::vector<faiss::Index::idx_t>& labels, const std::vector<float>& dist) {
      neighbors r(NQ, K);
      for (std::size_t q = 0; q < NQ; ++q)
        for (std::size_t j = 0; j < K; ++j) {
          const faiss::Index::idx_t l = labels[q * K + j];
          r.view().row_ids(q)[j] = l < 0 ? no_id : static_cast<vector_id>(l);
          r.view().row_distances(q)[j] = l < 0 ? no_distance : dist[q * K + j];
        }
      return r;
    };
    const bool sweep = mode == "faiss_ef";
    for (double sel : sweep ? std::vector<double>{0.5, 0.2, 0.1} : std::vector<double>{0.5, 0.1, 0.01, 0.001}) {
      const std::size_t want = static_cast<std::size_t>(std::llround(sel * N));
      const std::vector<std::uint8_t> acc = random_subset(want, 5);
      std::vector<std::uint8_t> bits((N + 7) / 8, 0);
      for (std::size_t i = 0; i < N; ++i)
        if (acc[i]) bits[i / 8] |= static_cast<std::uint8_t>(1u << (i % 8));
      faiss::IDSelectorBitmap selector(bits.size(), bits.data());
      const neighbors gt = exact_filtered(d, m, acc);
      std::vector<faiss::Index::idx_t> labels(NQ * K);
      std::vector<float> dist(NQ * K);
      search_params p;
      const std::uint8_t* a = acc.data();
      p.filter = [a](vector_id id) { return a[id] != 0; };
      neighbors ours(1, 1);
      faiss::SearchParametersHNSW hp;
      hp.sel = &selector;
      if (sweep) {  // both ef sweeps, to compare at equal recall
        for (const std::size_t ef : {10, 16, 32, 64}) {
          search_params pe = p;
          pe.ef = ef;
          const double t = timed([&] { ours = h.search(d.queries, K, pe); });
          std::printf("%g%% pass: HNSW16 ef %zu %.4f ms/query R@10 %.3f short %zu\n", sel * 100, ef, t,
                      recall(ours, gt), short_rows(ours));
        }
        for (const int ef : {64, 128, 256, 512, 1024}) {
          hp.efSearch = ef;
          // FAISS 1.7.3 ignores SearchParametersHNSW::efSearch here (the same rows at every value) and reads
          // the index's own, default 16 (the peer in shoal-ann-bench sets both, for the same reason).
          fh.hnsw.efSearch = ef;
          const double t = timed([&] { fh.search(NQ, d.queries.data, K, dist.data(), labels.data(), &hp); });
          const neighbors theirs = from_faiss(labels, dist);
          std::printf("%g%% pass: FAISS HNSW16 efSearch %d %.4f ms/query R@10 %.3f short %zu\n", sel * 100, ef, t,
                      recall(theirs, gt), short_rows(theirs));
        }
        continue;
      }
      const double t_ours = timed([&] { ours = h.search(d.queries, K, p); });
      hp.efSearch = 64;
      fh.hnsw.efSearch = 64;  // see above: session 46's table ran FAISS at its default, 16
      const double t_faiss = timed([&] { fh.search(NQ, d.queries.data, K, dist.data(), labels.data(), &hp); });
      const neighbors theirs = from_faiss(labels, dist);
      std::printf(
          "%g%% pass: HNSW16 ef 64 %.3f ms/query R@10 %.3f short %zu | FAISS HNSW16 efSearch 64 %.3f ms/query "
          "R@10 %.3f short %zu\n",
          sel * 100, t_ours, recall(ours, gt), short_rows(ours), t_faiss, recall(theirs, gt), short_rows(theirs));
      for (std::size_t np : {1, 8}) {
        search_params ip{.nprobe = np};
        ip.filter = p.filter;
        const double t_iv = timed([&] { ours = iv.search(d.queries, K, ip); });
        faiss::SearchParametersIVF fp;
        fp.nprobe = np;
        fp.sel = &selector;
        const double t_fi = timed([&] { fi.search(NQ, d.queries.data, K, dist.data(), labels.data(), &fp); });
        const neighbors fr = from_faiss(labels, dist);
        std::printf(
            "%g%% pass, nprobe %zu: IVF64,Flat %.3f ms/query R@10 %.3f short %zu | FAISS IVF64,Flat %.3f "
            "ms/query R@10 %.3f short %zu\n",
            sel * 100, np, t_iv, recall(ours, gt), short_rows(ours), t_fi, recall(fr, gt), short_rows(fr));
      }
    }
#endif
  } else {
    std::fprintf(stderr, "unknown mode\n");
    return 2;
  }
  return 0;
}
