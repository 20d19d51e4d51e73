// shoal-ann-bench's command line, run as a user runs it: bad input exits 2 with a message that names the
// problem, before anything is measured, and a failed run leaves an earlier results file alone.

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include <catch2/catch.hpp>

#include "shoal/eval/eval.hpp"
#include "shoal/index/flat.hpp"
#include "shoal/index/hnsw.hpp"
#include "shoal/io/vecs.hpp"
#include "test_support.hpp"

namespace shoal {
namespace {

using test::outcome;

outcome bench(const std::string& args) { return test::run_command(std::string(SHOAL_ANN_BENCH) + " " + args); }

void check(const outcome& o, int status, const std::string& says) { test::check_outcome(o, status, says); }

/// 400 base vectors and 20 queries of dimension 16 in `dir`; the options that name them (`k`, l2).
std::string write_data(const test::scratch_dir& dir, std::size_t k = 5) {
  io::write_fvecs(dir.path() / "base.fvecs", make_clustered(400, 16, 4, 1).view());
  io::write_fvecs(dir.path() / "query.fvecs", make_clustered(20, 16, 4, 2).view());
  const std::string d = dir.path().string();
  return "--base " + d + "/base.fvecs --query " + d + "/query.fvecs --metric l2 --k " + std::to_string(k) +
         " --min-time 0.01";
}

/// The recall column of the CSV row that begins with `row` (`library,index,search_params,`), or a text
/// that names the missing row.
std::string recall_of(const outcome& o, const std::string& row) {
  std::size_t at = o.output.find('\n' + row);
  if (at == std::string::npos) return "no row " + row;
  at += 1 + row.size();
  for (int column = 0; column < 2; ++column) at = o.output.find(',', at) + 1;  // build_s, index_bytes
  return o.output.substr(at, o.output.find(',', at) - at);
}

/// Runs a command whose unfixed form allocated without bound under a 4 GB address space, so that it fails
/// at once instead of paging the host; uncapped under ASan and TSan, whose shadow memory needs terabytes.
outcome bench_capped(const std::string& args) {
  return test::run_command((test::sanitized ? "" : "ulimit -v 4000000; ") + std::string(SHOAL_ANN_BENCH) + " " + args);
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

TEST_CASE("shoal-ann-bench: bad runs exit 2 naming the problem and keep earlier results", "[bench]") {
  const test::scratch_dir dir;
  const std::string d = dir.path().string();
  const std::string data = write_data(dir);
  io::write_npy(dir.path() / "empty.npy", matrix<float>(0, 16).view());

  const outcome good = bench(data + " --index Flat --csv " + d + "/results.csv --save " + d + "/flat.shoal");
  INFO(good.output);
  REQUIRE(good.status == 0);
  const auto csv_bytes = std::filesystem::file_size(dir.path() / "results.csv");
  CHECK(csv_bytes > 0);

  // Inputs: no queries (once a division by zero), an index file over other vectors (once scored
  // against them: recall 0.03 instead of 1), a missing file with --csv (once emptied the results).
  check(bench("--base " + d + "/base.fvecs --query " + d + "/empty.npy --metric l2 --k 5 --index Flat"), 2,
        "has no rows");
  check(bench(data + " --max-base 100 --index Flat --load " + d + "/flat.shoal"), 2, "holds 400 vectors");
  check(bench("--base " + d + "/base.fvecs --query " + d + "/query.fvecs --metric ip --k 5 --index Flat --load " + d +
              "/flat.shoal"),
        2, "holds an index of metric l2, not the --metric asked for, inner_product");
  check(bench("--base " + d + "/missing.fvecs --query " + d + "/query.fvecs --k 5 --index Flat --csv " + d +
              "/results.csv"),
        1, "missing.fvecs");
  CHECK(std::filesystem::file_size(dir.path() / "results.csv") == csv_bytes);

  // Options: out of range, or with no effect where they were given (once shown in the row as if used).
  check(bench(data + " --index Flat --threads 4294967296"), 2, "--threads must be at most 4096");
  check(bench(data + " --index Flat --shards 2 --groups 1"), 2, "--groups needs --sharding hybrid");
  // Collection options without --shards, even at their defaults (--sharding hash ran one index in
  // silence; --shard-probe was an unknown search parameter of the one index).
  check(bench(data + " --index Flat --sharding hash"), 2,
        "--sharding, --replicas, --groups and --shard-probe need --shards");
  check(bench(data + " --index HNSW8 --shard-probe 2"), 2, "--shard-probe need --shards");
  check(bench(data + " --index Flat --replicas 1"), 2, "need --shards");
  // A spec the grammar knows and no index builds yet is not "unknown".
  check(bench(data + " --index IVF4,SQ8"), 2, "index spec 'IVF4,SQ8' is not built by this version: make_index");
  check(bench(data + " --index Flat --shards 2 --sweep ef=10"), 2, "unknown search parameter 'ef'");
  check(bench(data + " --index HNSW8 --shards 2 --sweep shard_probe=1"), 2, "unknown search parameter 'shard_probe'");
  check(bench(data + " --index Flat --shards 2 --build-param semantic_balance=1.5"), 2, "no router to balance");
  check(bench(data + " --index HNSW8 --shards 2 --sharding semantic --sweep shard_probe=1 --sweep ef=16"), 0,
        "shard_probe=1");

  // A spec written another way than the bench's own grammar runs as the factory's canonical form.
  check(bench(data + " --index 'IVF4, PQ8x4fs, RFlat' --sweep nprobe=4 --sweep refine=4"), 0,
        "shoal,\"IVF4,PQ8x4fs,Refine(Flat)\",nprobe=4;refine=4,");
  check(bench(data + " --index IVF4,PQ8x4fs,RFlt"), 2, "make_index says");
  // IVF-PQ without its re-rank (refine 0, the library's default) is an operating point of its own.
  check(bench(data + " --index IVF4,PQ8x4fs,RFlat --sweep refine=0,2"), 0,
        "shoal,\"IVF4,PQ8x4fs,Refine(Flat)\",refine=0,");
  // Two-stage refine_index specs (README's grammar) over HNSW, IVF-Flat and Flat first stages.
  check(bench(data + " --index HNSW8,SQ8,RFlat --sweep ef=16 --sweep refine=2"), 0,
        "shoal,\"HNSW8,SQ8,Refine(Flat)\",ef=16;refine=2,");
  check(bench(data + " --index 'IVF4,Flat,Refine(Flat)' --sweep nprobe=2"), 0,
        "shoal,\"IVF4,Flat,Refine(Flat)\",nprobe=2,");
  check(bench(data + " --index Flat,RFlat"), 0, "shoal,\"Flat,Refine(Flat)\",-,");
  check(bench(data + " --index HNSW8,RFlat --sweep nprobe=2"), 2, "unknown search parameter 'nprobe'");
  // refine_index reads refine 0 as its default depth (once: run at k · 4 under the label refine=0).
  check(bench(data + " --index 'IVF4,Flat,Refine(Flat)' --sweep refine=0"), 2,
        "refine=0 of index IVF4,Flat,Refine(Flat) must be a positive integer: a two-stage ,Refine(Flat) reads 0");
  // Shards take refine as one index of their spec does (once: refine=0 refused for IVF-PQ too).
  check(bench(data + " --index IVF4,PQ8,RFlat --shards 2 --sweep refine=0"), 0,
        "shoal,\"IVF4,PQ8,Refine(Flat) [2 shards hash]\",refine=0,");
  check(bench(data + " --index HNSW8,RFlat --shards 2 --sweep refine=0"), 2,
        "refine=0 of index HNSW8,Refine(Flat) must be a positive integer");
  // A number written with a leading zero is the factory's canonical spec, which --load finds in the file
  // it saved (once: "holds HNSW8, not HNSW08").
  check(bench(data + " --index HNSW08 --save " + d + "/hnsw.shoal"), 0, "shoal,HNSW8,-,");
  check(bench(data + " --index HNSW08 --load " + d + "/hnsw.shoal"), 0, "shoal,HNSW8,-,");
  check(bench(data + " --index IVF04,Flat --save " + d + "/ivf.shoal"), 0, "shoal,\"IVF4,Flat\",-,");
  check(bench(data + " --index IVF04,Flat --load " + d + "/ivf.shoal"), 0, "shoal,\"IVF4,Flat\",-,");
  // Ground truth made under another metric scored exact search 0.972 (inner product against an l2
  // file), and the run went on (a user-eyes review). The same file under its own metric runs.
  const neighbors l2 = ground_truth(io::read_vectors(d + "/base.fvecs").view(),
                                    io::read_vectors(d + "/query.fvecs").view(), 5, metric::l2);
  io::write_ivecs(dir.path() / "gt_l2.ivecs", ground_truth_ids(l2).view());
  const std::string with_gt =
      "--base " + d + "/base.fvecs --query " + d + "/query.fvecs --gt " + d + "/gt_l2.ivecs --k 5 --min-time 0.01";
  check(bench(with_gt + " --metric ip --index Flat"), 2,
        "ground truth " + d +
            "/gt_l2.ivecs fits the metric l2, not inner_product: of the neighbours it lists for its first 20");
  check(bench(with_gt + " --metric l2 --index Flat"), 0, "shoal,Flat,-,");
}

TEST_CASE("shoal-ann-bench: a run that fails once the data is read leaves the earlier --csv file", "[bench]") {
  const test::scratch_dir dir;
  const std::string data = write_data(dir);
  const std::filesystem::path csv = dir.path() / "results.csv";
  const std::string out = " --csv " + csv.string();
  const outcome good = bench(data + " --index Flat" + out);
  INFO(good.output);
  REQUIRE(good.status == 0);
  const std::string earlier = read_file(csv);
  REQUIRE(earlier.find("shoal,Flat,") != std::string::npos);

  // Rejected by the index as it is built (once: exit 1, and the results emptied to their header).
  check(bench(data + " --index HNSW8 --build-param alpha=-5" + out), 2, "alpha must be in [1, 4], got -5");
  check(bench(data + " --index IVF1000,Flat" + out), 2, "nlist = 1000 exceeds the 400 training vectors");
  check(bench(data + " --index Flat --shards 500 --sharding range" + out), 2,
        "500 shards need at least as many base vectors, got 400");
  CHECK(read_file(csv) == earlier);
  CHECK(!std::filesystem::exists(csv.string() + ".partial"));

  // A successful run replaces the file.
  REQUIRE(bench(data + " --index HNSW8" + out).status == 0);
  CHECK(read_file(csv).find("shoal,HNSW8,") != std::string::npos);
  CHECK(!std::filesystem::exists(csv.string() + ".partial"));
}

TEST_CASE("shoal-ann-bench: the layout, sweep points and outputs are checked before the data is read", "[bench]") {
  const test::scratch_dir dir;
  static_cast<void>(write_data(dir));
  const std::string d = dir.path().string();
  // The queries are missing: an error about them would mean the data was read before the check.
  const std::string data = "--base " + d + "/base.fvecs --query " + d + "/missing.fvecs --k 5 --min-time 0.01";
  check(bench(data + " --index Flat --shards 1000000000000"), 2, "--shards: collection: shards must be in [1, 4096]");
  check(bench(data + " --index Flat --shards 2 --replicas 100000000000"), 2, "replicas must be in [1, 16]");
  check(bench(data + " --index Flat --shards 2 --sharding hybrid --groups 5"), 2, "groups that divide shards (2)");
  check(bench(data + " --index HNSW8 --shards 2 --sharding semantic --shard-probe 5"), 2,
        "shard_probe=5 of index HNSW8 [semantic shards] exceeds the 2 shards a query can visit");
  check(bench(data + " --index HNSW8 --shards 4 --sharding hybrid --sweep shard_probe=1,3"), 2,
        "shard_probe=3 of index HNSW8 [hybrid shards] exceeds the 2 groups a query can visit");
  check(bench(data + " --index Flat --save " + d + "/no/such/dir/flat.shoal"), 2, "no directory " + d + "/no/such/dir");
  check(bench(data + " --index Flat --csv " + d + "/no/such/dir/results.csv"), 2, "no directory");
  // A target that is a directory failed only once every row was measured (renaming FILE.partial onto it).
  check(bench(data + " --index Flat --csv " + d), 2, "--csv " + d + " is a directory; it needs a file name");
  check(bench(data + " --index Flat --save " + d), 2, "--save " + d + " is a directory");
  // An output that names an input or another output was overwritten without a word (a review: --csv
  // over the --query file; --csv and --plot naming one file kept only the plot).
  const std::string real = "--base " + d + "/base.fvecs --query " + d + "/query.fvecs --k 5 --min-time 0.01";
  check(bench(real + " --index Flat --csv " + d + "/query.fvecs"), 2,
        "--csv " + d + "/query.fvecs is the --query file: it would be overwritten");
  check(bench(real + " --index Flat --save " + d + "/./base.fvecs"), 2, "is the --base file");
  check(
      bench(data + " --index Flat --csv " + d + "/out --plot " + d + "/../" + dir.path().filename().string() + "/out"),
      2, "--plot and --csv name the same file");
  CHECK_FALSE(std::filesystem::exists(dir.path() / "out"));
  // Relative spellings of an output that does not exist yet (out and ./out compared unequal; a review).
  const std::string here = "cd " + d + " && " + std::string(SHOAL_ANN_BENCH) + " " + data + " --index Flat";
  check(test::run_command(here + " --csv out --plot ./out"), 2, "--plot and --csv name the same file ./out");
  check(test::run_command(here + " --csv out --save ../" + dir.path().filename().string() + "/out"), 2,
        "--save and --csv name the same file");
  check(test::run_command(here + " --csv out --save " + d + "/out"), 2, "--save and --csv name the same file");
  CHECK_FALSE(std::filesystem::exists(dir.path() / "out"));
  // --plot without gnuplot warned only after the run, which exited 0.
  const outcome no_gnuplot = test::run_command("PATH=/nonexistent " + std::string(SHOAL_ANN_BENCH) + " " + data +
                                               " --index Flat --plot " + d + "/p.png");
  check(no_gnuplot, 2, "--plot " + d + "/p.png: gnuplot is not on the PATH");
  // Options --load makes meaningless: --verify without it (full was taken silently), --build-param with it.
  check(bench(data + " --index Flat --verify full"), 2, "--verify needs --load");
  check(bench(data + " --index HNSW8 --load " + d + "/x.shoal --build-param ef_construction=10"), 2,
        "--build-param has no effect with --load and no peers");
  // With peers it counts: they are built whatever --load says (BENCHMARKS.md runs such a command). The
  // missing --load file is then what ends the run, before the data is read (it was found only once the
  // ground truth had been computed: 14.6 s on fashion-mnist; a user-eyes review).
  check(bench(data + " --index HNSW8 --load " + d + "/x.shoal --peers --build-param ef_construction=10"), 1, "x.shoal");
  // So are a --load file's metric and dimension.
  flat_index(16, metric::l2).save(d + "/l2.shoal");
  flat_index(8, metric::l2).save(d + "/narrow.shoal");
  check(bench(data + " --metric ip --index Flat --load " + d + "/l2.shoal"), 2,
        "holds an index of metric l2, not the --metric asked for, inner_product");
  check(bench(data + " --index Flat --load " + d + "/narrow.shoal"), 2,
        "holds vectors of dimension 8, --base 16 (recall would be scored against other vectors)");
  // A spec the data's dimension (16) refuses.
  check(bench(data + " --index IVF4,PQ3"), 2, "m = 3 does not divide dimension 16");
  check(bench(data + " --index Flat"), 1, "missing.fvecs");
}

TEST_CASE("shoal-ann-bench: command-line details", "[bench]") {
  const test::scratch_dir dir;
  const std::string d = dir.path().string();
  const std::string data = write_data(dir);

  // A value that is missing does not swallow the next option (once: --csv wrote a file named --max-base).
  check(bench(data + " --index Flat --csv --max-base 100"), 2, "--csv needs a value (FILE), got the option --max-base");
  // The repeated option is the one named.
  const outcome twice = bench(data + " --index HNSW8 --shards 2 --sharding semantic --shard-probe 1 --shard-probe 2");
  check(twice, 2, "shard_probe given twice (--shard-probe P is --sweep shard_probe=P");
  CHECK(twice.output.find("--sweep: parameter") == std::string::npos);
  // A value option given twice is refused, not overwritten (once: --index HNSW8 --index Flat measured Flat).
  check(bench(data + " --index HNSW8 --index Flat"), 2, "--index given twice");
  check(bench(data + " --index Flat --k=10"), 2, "--k given twice");
  check(bench(data + " --index Flat --batch --batch --build-param a=1 --build-param b=2"), 2,
        "unknown build parameter 'a'");
  // Seed 0 is a seed like any other.
  check(bench(data + " --index HNSW8 --build-param seed=0"), 0, "shoal,HNSW8,-,");
  check(bench(data + " --index HNSW8 --build-param seed=-1"), 2, "seed=-1 of index HNSW8 must be an integer");
  // shoal's errors are not prefixed twice.
  const outcome alpha = bench(data + " --index HNSW8 --build-param alpha=-5");
  CHECK(alpha.output.find("shoal-ann-bench: hnsw_index: alpha") != std::string::npos);
  CHECK(alpha.output.find("shoal: hnsw_index") == std::string::npos);
  // The synopsis names every option.
  const outcome help = bench("--help");
  CHECK(help.output.find("[--rounds R]") != std::string::npos);
  CHECK(help.output.find("[--groups G]") != std::string::npos);

  // Ground truth: -1 pads a query with fewer than k neighbours (FAISS); other negative ids are errors.
  const matrix<float> base = io::read_fvecs(dir.path() / "base.fvecs");
  const matrix<float> queries = io::read_fvecs(dir.path() / "query.fvecs");
  const neighbors exact = ground_truth(base.view(), queries.view(), 5, metric::l2);
  matrix<std::int32_t> truth(exact.rows(), exact.k());
  for (std::size_t q = 0; q < truth.rows; ++q)
    for (std::size_t j = 0; j < truth.dim; ++j) truth.row(q)[j] = static_cast<std::int32_t>(exact.id(q, j));
  truth.row(3)[4] = -1;
  io::write_ivecs(dir.path() / "padded.ivecs", truth.view());
  // One of the 100 true ids is missing: Flat finds the other 99.
  check(bench(data + " --index Flat --gt " + d + "/padded.ivecs"), 0, ",0.9900,");
  truth.row(3)[4] = -2;
  io::write_ivecs(dir.path() / "negative.ivecs", truth.view());
  check(bench(data + " --index Flat --gt " + d + "/negative.ivecs"), 2,
        "row 3 holds the id -2 (ids are base row numbers, or -1 for a missing neighbour)");
  // An id listed twice (once: exact search scored 0.1 on a file of rows that repeat one id, exit 0).
  truth.row(3)[4] = truth.row(3)[0];
  io::write_ivecs(dir.path() / "twice.ivecs", truth.view());
  // Refused with the other ground-truth checks, before an index is built (since session 38: once the
  // first index had been built and measured, by recall_at_k).
  const outcome repeated = bench(data + " --index Flat --gt " + d + "/twice.ivecs");
  check(repeated, 2, "row 3 lists the id " + std::to_string(truth.row(3)[0]) + " more than once in its first 5");
  CHECK(repeated.output.find("library,index") == std::string::npos);
  // An empty value is no value (--load= built the index instead, --csv= wrote no file; exit 0).
  check(bench(data + " --index Flat --load="), 2, "--load needs a value (FILE)");
  check(bench(data + " --index Flat --csv="), 2, "--csv needs a value (FILE)");
  check(bench(data + " --index Flat --save ''"), 2, "--save needs a value (FILE)");
  // Every round runs at least one pass over the queries, whatever --min-time says.
  check(bench(data + " --index Flat --rounds 1001"), 2, "--rounds must be at most 1000");
  // A bad SHOAL_SIMD is named as such, not as the spec's fault (once: "invalid spec \"Flat\"").
  const outcome simd =
      test::run_command("SHOAL_SIMD=bogus " + std::string(SHOAL_ANN_BENCH) + " " + data + " --index Flat");
  check(simd, 2, "SHOAL_SIMD=bogus is not a SIMD level");
  CHECK(simd.output.find("invalid spec") == std::string::npos);
  // Any case names a level (SCALAR was "not a SIMD level").
  const outcome upper =
      test::run_command("SHOAL_SIMD=SCALAR " + std::string(SHOAL_ANN_BENCH) + " " + data + " --index Flat");
  check(upper, 0, "library,index");
}

TEST_CASE("shoal-ann-bench: peers search as deep as shoal under the same label", "[bench]") {
  const test::scratch_dir dir;
  const std::string data = write_data(dir);
  // No ef swept: every library runs shoal's default (once: hnswlib 10, FAISS 16, shoal 64, all shown as
  // '-'). A sparse graph makes the depth show in the recall.
  const outcome flat = bench(data + " --index Flat --peers");  // every peer serves Flat
  const auto built_in = [&](const std::string& peer) {
    return flat.output.find('\n' + peer + ',') != std::string::npos;
  };
  const std::string sparse = data + " --index HNSW4 --build-param ef_construction=4 --peers";
  const std::string ef = "ef=" + std::to_string(hnsw_index::default_ef);
  const outcome unswept = bench(sparse);
  const outcome swept = bench(sparse + " --sweep " + ef);
  INFO(unswept.output);
  INFO(swept.output);
  CHECK(unswept.status == 0);
  CHECK(swept.status == 0);
  if (built_in("hnswlib"))
    CHECK(recall_of(unswept, "hnswlib,HierarchicalNSW,-,") == recall_of(swept, "hnswlib,HierarchicalNSW," + ef + ","));
  if (!built_in("faiss")) {
    SUCCEED("FAISS is not built in");
    return;
  }
  CHECK(recall_of(unswept, "faiss,IndexHNSWFlat,-,") == recall_of(swept, "faiss,IndexHNSWFlat," + ef + ","));
  // ef below k is raised to k, and the coarse graph's below nprobe to nprobe (once: FAISS searched at
  // ef=1 what shoal and hnswlib searched at k).
  const outcome shallow = bench(write_data(dir, 50) + " --index HNSW8 --sweep ef=1,50 --peer faiss");
  CHECK(recall_of(shallow, "faiss,IndexHNSWFlat,ef=1,") == recall_of(shallow, "faiss,IndexHNSWFlat,ef=50,"));
  const outcome coarse = bench(data + " --index IVF32_HNSW2,Flat --sweep nprobe=32 --sweep ef=1,32 --peer faiss");
  CHECK(recall_of(coarse, "faiss,IndexIVFFlat+IndexHNSWFlat,nprobe=32;ef=1,") ==
        recall_of(coarse, "faiss,IndexIVFFlat+IndexHNSWFlat,nprobe=32;ef=32,"));
  // Depths the bench accepts are cut at what the index holds (once: bad_alloc, or an abort in OpenMP).
  check(bench_capped(data + " --index HNSW8 --sweep ef=2147483647 --peer faiss"), 0,
        "faiss,IndexHNSWFlat,ef=2147483647,");
  check(bench_capped(data + " --index IVF4_HNSW4,PQ8,RFlat --sweep nprobe=2147483647 --sweep ef=2147483647 " +
                     "--sweep refine=2147483647 --peer faiss"),
        0, "faiss,IndexIVFPQ+IndexHNSWFlat+IndexRefineFlat,nprobe=2147483647;ef=2147483647;refine=2147483647,");
  // refine=0, IVF-PQ without re-rank, is k_factor 1: the same results (once: FAISS skipped for every point).
  const outcome unranked = bench(data + " --index IVF4,PQ8x4fs,RFlat --sweep refine=0,1 --peer faiss");
  CHECK(recall_of(unranked, "faiss,IndexIVFPQFastScan+IndexRefineFlat,refine=0,") ==
        recall_of(unranked, "faiss,IndexIVFPQFastScan+IndexRefineFlat,refine=1,"));
}

TEST_CASE("shoal-ann-bench: peers get the spec in the factory's canonical form", "[bench]") {
  const test::scratch_dir dir;
  const outcome o = bench(write_data(dir) + " --index 'IVF4, PQ4, RFlat' --sweep refine=2 --peer faiss");
  INFO(o.output);
  if (o.output.find("--peer faiss: no such peer library") != std::string::npos)
    SUCCEED("FAISS is not built in");
  else {
    CHECK(o.status == 0);
    CHECK(o.output.find("shoal,\"IVF4,PQ4,Refine(Flat)\",refine=2,") != std::string::npos);
    CHECK(o.output.find("faiss,IndexIVFPQ+IndexRefineFlat,refine=2,") != std::string::npos);
  }
}

TEST_CASE("shoal-collection-bench: bad runs exit 1 naming the problem, and a row per run, its spec quoted", "[bench]") {
  const test::scratch_dir dir;
  (void)write_data(dir);
  io::write_fvecs(dir.path() / "query8.fvecs", make_clustered(20, 8, 4, 2).view());
  const std::string d = dir.path().string();
  const auto run = [&](const std::string& args) {
    return test::run_command(std::string(SHOAL_COLLECTION_BENCH) + " " + d + "/base.fvecs " + args);
  };
  // Each of these aborted (an error thrown in a client thread), ran wrapped or meaningless settings, or
  // printed a row of nonsense.
  check(run(d + "/query8.fvecs --seconds 0.1"), 1, "queries of dimension 8, base of dimension 16");
  check(run(d + "/query.fvecs --k 0"), 1, "--k needs a whole number in [1, 1048576], got '0'");
  check(run(d + "/query.fvecs --threads -1"), 1, "--threads needs a whole number in [1, 1024], got '-1'");
  check(run(d + "/query.fvecs --shards 5x"), 1, "--shards needs a whole number in [1, 4096], got '5x'");
  check(run(d + "/query.fvecs --seconds 0"), 1, "--seconds needs a number > 0");
  check(run(d + "/query.fvecs --upsert-fraction 2"), 1, "--upsert-fraction needs a number in [0, 1]");
  check(run(d + "/query.fvecs --shard-probe 2"), 1, "--shard-probe needs semantic or hybrid sharding");
  check(run(d + "/query.fvecs --sharding semantic --shard-probe 9"), 1, "--shard-probe 9 is more than the 4 shards");
  // Hybrid routing visits groups (2 of 4 shards here): 3 ran, and the row said 3.
  check(run(d + "/query.fvecs --sharding hybrid --shard-probe 3"), 1,
        "--shard-probe 3 is more than the 2 groups a query can visit");
  // A spec with commas stays one field; hybrid sharding over a prime shard count runs.
  const outcome ivf = run(d + "/query.fvecs --index IVF4,PQ4 --nprobe 2 --seconds 0.2");
  check(ivf, 0, "\n\"IVF4,PQ4\",4,hash,0,0,2,0.1,");
  CHECK(ivf.output.find(",2\n") != std::string::npos);  // the nprobe column, last
  check(run(d + "/query.fvecs --shards 5 --sharding hybrid --seconds 0.2"), 0, "\n\"HNSW16\",5,hybrid,");
  // The fraction as given (printed with two decimals, 0.001 read 0.00 beside the upserts it ran), and
  // --help is the usage, not an option missing its value (both from a review).
  check(run(d + "/query.fvecs --index Flat --upsert-fraction 0.001 --seconds 0.2"), 0, ",2,0.001,");
  check(test::run_command(std::string(SHOAL_COLLECTION_BENCH) + " --help"), 0,
        "usage: shoal-collection-bench BASE QUERY");
  // A knob the shards never read, or an option given twice: refused (written into the row as used, or
  // the last taken; a user-eyes review). A knob not read is 0 in the row (the IVF row above).
  check(run(d + "/query.fvecs --index IVF4,PQ4 --ef 32"), 1, "--ef has no effect on IVF4,PQ4 shards (read by HNSW)");
  check(run(d + "/query.fvecs --index HNSW16 --nprobe 4"), 1, "--nprobe has no effect on HNSW16 shards (read by IVF)");
  check(run(d + "/query.fvecs --ef 16 --ef 32"), 1, "--ef is given twice");
}

TEST_CASE("shoal-kmeans-bench: bad arguments exit naming the problem", "[bench]") {
  const test::scratch_dir dir;
  (void)write_data(dir);
  const std::string kmeans = std::string(SHOAL_KMEANS_BENCH) + " " + dir.path().string() + "/base.fvecs ";
  // "-1" iterations ran 2^64 - 1 of them without a word; "10x" was 10; "abc" said only "stoul".
  check(test::run_command(kmeans + "4 -1"), 1, "ITERATIONS needs a whole number in [1, 100000], got '-1'");
  check(test::run_command(kmeans + "4 10x"), 1, "ITERATIONS needs a whole number in [1, 100000], got '10x'");
  check(test::run_command(kmeans + "abc 10"), 1, "K needs a whole number of at least 1, got 'abc'");
  check(test::run_command(kmeans + "4 10 0"), 1, "THREADS needs a whole number in [1, 4096], got '0'");
  check(test::run_command(kmeans + "4 10 1 0 foo"), 1, "BOUNDS (auto, off or groups) needs a whole number");
  check(test::run_command(kmeans + "4 10 1 0 auto extra"), 2, "usage: shoal-kmeans-bench");
  check(test::run_command(kmeans + "4 3 1 0 off"), 0, "shoal,4,3,400,16,1,");
}

}  // namespace shoal
