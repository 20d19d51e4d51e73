// shoal-ann-bench's command line, run as a user runs it: bad input exits 2 with a message that names the
// problem, before anything is measured, and a failed run leaves an earlier results file alone.

#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include <catch2/catch.hpp>

#include "shoal/io/vecs.hpp"
#include "test_support.hpp"

namespace shoal {
namespace {

struct outcome {
  int status = -1;
  std::string output;  // stdout and stderr
};

outcome bench(const std::string& args) {
  const std::string command = std::string(SHOAL_ANN_BENCH) + " " + args + " 2>&1";
  FILE* pipe = ::popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  outcome o;
  char buffer[4096];
  while (const std::size_t n = std::fread(buffer, 1, sizeof buffer, pipe)) o.output.append(buffer, n);
  const int raw = ::pclose(pipe);
  o.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
  return o;
}

}  // namespace

TEST_CASE("shoal-ann-bench: bad runs exit 2 naming the problem and keep earlier results", "[bench]") {
  const test::scratch_dir dir;
  const std::string d = dir.path().string();
  io::write_fvecs(dir.path() / "base.fvecs", make_clustered(400, 16, 4, 1).view());
  io::write_fvecs(dir.path() / "query.fvecs", make_clustered(20, 16, 4, 2).view());
  io::write_npy(dir.path() / "empty.npy", matrix<float>(0, 16).view());
  const std::string data =
      "--base " + d + "/base.fvecs --query " + d + "/query.fvecs --metric l2 --k 5 --min-time 0.01";
  const auto check = [](const outcome& o, int status, const std::string& says) {
    INFO(o.output);
    CHECK(o.status == status);
    CHECK(o.output.find(says) != std::string::npos);
  };

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
  check(bench("--base " + d + "/missing.fvecs --query " + d + "/query.fvecs --k 5 --index Flat --csv " + d +
              "/results.csv"),
        1, "missing.fvecs");
  CHECK(std::filesystem::file_size(dir.path() / "results.csv") == csv_bytes);

  // Options: out of range, or with no effect where they were given (once shown in the row as if used).
  check(bench(data + " --index Flat --threads 4294967296"), 2, "--threads must be at most 4096");
  check(bench(data + " --index Flat --shards 2 --groups 1"), 2, "--groups needs --sharding hybrid");
  check(bench(data + " --index Flat --shards 2 --sweep ef=10"), 2, "unknown search parameter 'ef'");
  check(bench(data + " --index HNSW8 --shards 2 --sweep shard_probe=1"), 2, "unknown search parameter 'shard_probe'");
  check(bench(data + " --index Flat --shards 2 --build-param semantic_balance=1.5"), 2, "no router to balance");
  check(bench(data + " --index HNSW8 --shards 2 --sharding semantic --sweep shard_probe=1 --sweep ef=16"), 0,
        "shard_probe=1");

  // A spec written another way than the bench's own grammar runs as the factory's canonical form.
  check(bench(data + " --index 'IVF4, PQ8x4fs, RFlat' --sweep nprobe=4 --sweep refine=4"), 0,
        "shoal,\"IVF4,PQ8x4fs,Refine(Flat)\",nprobe=4;refine=4,");
  check(bench(data + " --index IVF4,PQ8x4fs,RFlt"), 2, "make_index says");
}

}  // namespace shoal
