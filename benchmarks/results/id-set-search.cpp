// Searching among a list of ids (session 47): a filter made from a `shoal::id_set` against the same ids
// as a predicate (a bitmap lambda), HNSW16 (ef 64) and Flat, queries one at a time and in one batch of
// 200, one thread, L2, k 10; FAISS 1.7.3 beside them with an IDSelectorBatch (its hash set of ids):
// IndexHNSWFlat (M 16, efConstruction 200, efSearch 64 set on the index: 1.7.3 ignores the search
// parameters' efSearch), IndexFlatL2, and IndexIVFFlat (nlist 1024, nprobe 16) beside shoal's
// IVF1024,Flat at nprobe 16. Data: `make_clustered(n + 200, d, 50, 7)`, the last 200 rows as
// queries; filters accept a random subset of the ids.
// Built and run:
//   g++ -std=c++20 -O2 -DNDEBUG -fopenmp -Iinclude -Ibuild/include benchmarks/results/id-set-search.cpp
//       build/libshoal.a -ltbb -lfaiss -lblas -llapack -o /tmp/id-set   (one command)
//   /tmp/id-set [n = 100000] [d = 64]
#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/impl/IDSelector.h>
#include <omp.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <shoal/shoal.hpp>

using namespace shoal;
using clk = std::chrono::steady_clock;

constexpr std::size_t NQ = 200, K = 10;

int main(int argc, char** argv) {
  const std::size_t n = argc > 1 ? std::stoul(argv[1]) : 100000;
  const std::size_t d = argc > 2 ? std::stoul(argv[2]) : 64;
  const matrix<float> all = make_clustered(n + NQ, d, 50, 7);
  const matrix_view<const float> base{all.values.data(), n, d};
  const matrix_view<const float> queries{all.values.data() + n * d, NQ, d};
  std::vector<vector_id> ids(n);
  std::iota(ids.begin(), ids.end(), vector_id{0});
  tbb::task_arena one(1);
  omp_set_num_threads(1);
  const auto build_started = clk::now();
  any_index hnsw = make_index("HNSW16", d);
  hnsw.add(base, ids);
  const double hnsw_build = std::chrono::duration<double>(clk::now() - build_started).count();
  flat_index flat(d);
  flat.add(base, ids);
  faiss::IndexHNSWFlat fh(static_cast<int>(d), 16);
  fh.hnsw.efConstruction = 200;
  fh.hnsw.efSearch = 64;
  fh.add(static_cast<faiss::Index::idx_t>(n), base.data);
  faiss::IndexFlatL2 ff(static_cast<int>(d));
  ff.add(static_cast<faiss::Index::idx_t>(n), base.data);
  any_index ivf = make_index("IVF1024,Flat", d);
  ivf.train(base);
  ivf.add(base, ids);
  faiss::IndexFlatL2 coarse(static_cast<int>(d));
  faiss::IndexIVFFlat fi(&coarse, d, 1024);
  fi.train(static_cast<faiss::Index::idx_t>(n), base.data);
  fi.add(static_cast<faiss::Index::idx_t>(n), base.data);
  std::printf("n %zu, d %zu, %zu queries, k %zu, one thread; shoal HNSW16 built in %.1f s\n", n, d, NQ, K, hnsw_build);

  // ms per query, best of two, of `run` searching all queries (`batch`) or one at a time.
  const auto timed = [&](bool batch, auto&& search_rows) {
    double best = 1e9;
    neighbors rows(NQ, K);
    one.execute([&] {
      for (int rep = 0; rep < 2; ++rep) {
        const auto t0 = clk::now();
        if (batch) {
          search_rows(queries, rows.view());
        } else {
          for (std::size_t q = 0; q < NQ; ++q) search_rows(queries.slice(q, 1), rows.view().slice(q, 1));
        }
        best = std::min(best, std::chrono::duration<double>(clk::now() - t0).count());
      }
    });
    return std::make_pair(best * 1e3 / NQ, rows);
  };
  for (const double share : {0.01, 0.001, 0.0001}) {
    const auto want = static_cast<std::size_t>(share * static_cast<double>(n));
    std::vector<vector_id> perm = ids;
    std::shuffle(perm.begin(), perm.end(), std::mt19937_64(5));
    perm.resize(want);
    std::vector<std::uint8_t> bits(n, 0);
    for (const vector_id id : perm) bits[id] = 1;
    const id_set listed(perm);
    search_params as_set;
    as_set.filter = listed;
    search_params as_predicate;
    as_predicate.filter = [b = bits.data()](vector_id id) { return b[id] != 0; };
    const neighbors exact = flat.search(queries, K, as_predicate);
    std::vector<faiss::Index::idx_t> faiss_ids(perm.begin(), perm.end());
    faiss::IDSelectorBatch selector(static_cast<faiss::Index::idx_t>(faiss_ids.size()), faiss_ids.data());
    faiss::SearchParametersHNSW hp;
    hp.efSearch = 64;
    hp.sel = &selector;
    faiss::SearchParameters fp;
    fp.sel = &selector;
    faiss::SearchParametersIVF fip;
    fip.sel = &selector;
    fip.nprobe = 16;
    search_params ivf_set = as_set;
    ivf_set.nprobe = 16;
    search_params ivf_predicate = as_predicate;
    ivf_predicate.nprobe = 16;
    const auto faiss_rows = [&](const faiss::Index& index, const faiss::SearchParameters* p) {
      return [&index, p](matrix_view<const float> q, neighbors_view out) {
        std::vector<faiss::Index::idx_t> labels(q.rows * K);
        std::vector<float> dist(q.rows * K);
        index.search(static_cast<faiss::Index::idx_t>(q.rows), q.data, K, dist.data(), labels.data(), p);
        for (std::size_t i = 0; i < q.rows * K; ++i) {
          out.ids[i] = labels[i] < 0 ? no_id : static_cast<vector_id>(labels[i]);
          out.distances[i] = dist[i];
        }
      };
    };
    for (const bool batch : {false, true}) {
      const char* how = batch ? "batch" : "one at a time";
      const auto report = [&](const char* what, const std::pair<double, neighbors>& r) {
        std::printf("%7zu ids (%g%%), %-13s %-32s %8.4f ms/query  R@10 %.3f\n", want, share * 100, how, what, r.first,
                    recall_at_k(r.second, exact, K));
      };
      report("shoal HNSW16, id_set", timed(batch, [&](auto q, auto out) { hnsw.search(q, out, as_set); }));
      report("shoal HNSW16, predicate", timed(batch, [&](auto q, auto out) { hnsw.search(q, out, as_predicate); }));
      report("shoal Flat, id_set", timed(batch, [&](auto q, auto out) { flat.search(q, out, as_set); }));
      report("shoal Flat, predicate", timed(batch, [&](auto q, auto out) { flat.search(q, out, as_predicate); }));
      report("shoal IVF1024,Flat np16, id_set", timed(batch, [&](auto q, auto out) { ivf.search(q, out, ivf_set); }));
      report("shoal IVF1024,Flat np16, predicate",
             timed(batch, [&](auto q, auto out) { ivf.search(q, out, ivf_predicate); }));
      report("FAISS HNSW16, IDSelectorBatch", timed(batch, faiss_rows(fh, &hp)));
      report("FAISS IVF1024,Flat np16, IDSelectorBatch", timed(batch, faiss_rows(fi, &fip)));
      report("FAISS Flat, IDSelectorBatch", timed(batch, faiss_rows(ff, &fp)));
    }
  }
  return 0;
}
