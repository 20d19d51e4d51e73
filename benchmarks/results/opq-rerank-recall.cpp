// R@10 of OPQ IVF-PQ indexes with a re-rank copy on bigann10k (session 43: the copies are kept unrotated
// since format 1.8). Linked against the library before (an install of d9099a3) and after:
//   g++ -std=c++20 -O2 -DNDEBUG -Iinclude -Ibuild/include benchmarks/results/opq-rerank-recall.cpp build/libshoal.a
//       -ltbb -o /tmp/opq-new   (one command; the same against the older install for /tmp/opq-old)
//   /tmp/opq-old; /tmp/opq-new        (reads ../shared/data/bigann10k; run from the repository root)

#include <cstdio>
#include <numeric>
#include <shoal/eval/eval.hpp>
#include <shoal/index/factory.hpp>
#include <shoal/io/vecs.hpp>
int main() {
  using namespace shoal;
  const std::string D = "../shared/data/bigann10k/";
  const matrix<float> base = io::read_vectors(D + "bigann10k_base.fvecs"),
                      q = io::read_vectors(D + "bigann10k_query.fvecs");
  const matrix<std::int32_t> gt = io::read_ids(D + "bigann10k_groundtruth_l2.ivecs");
  std::vector<vector_id> ids(base.rows);
  std::iota(ids.begin(), ids.end(), vector_id{0});
  for (const char* spec :
       {"OPQ16,IVF100,PQ16,Refine(SQ8)", "OPQ16,IVF100,PQ16x4fs,Refine(SQ8)", "OPQ16,IVF100,PQ16x4fs,RFlat"}) {
    any_index x = make_index(spec, base.dim, metric::l2);
    x.train(base.view());
    x.add(base.view(), ids);
    for (std::size_t rf : {2, 4, 8}) {
      search_params p;
      p.nprobe = 8;
      p.refine_factor = rf;
      std::printf("%s nprobe 8 refine %zu: R@10 %.4f\n", spec, rf,
                  recall_at_k(x.search(q.view(), 10, p), gt.view(), 10));
    }
  }
}
