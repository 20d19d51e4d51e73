// A memory-mapped load at verify_level::full (session 43): it now checks the stored vectors' values as a
// copied load does (NaN/Inf, the norm bound, unit rows under cosine), then gives the pages it read back
// (MADV_DONTNEED). `make BASE.fvecs` saves Flat, HNSW16 and IVF256,Flat indexes of it under /tmp/mapload;
// the other form times three rounds of mapped loads of each file named and prints the RssFile they leave.
// Before / after: the same source linked against each library (an install of each commit, or):
//   g++ -std=c++20 -O2 -DNDEBUG -Iinclude -Ibuild/include benchmarks/results/mapped-load.cpp build/libshoal.a -ltbb
//       -o /tmp/mapload-new   (one command)
//   /tmp/mapload-new make fashion-mnist_base.fvecs
//   /tmp/mapload-old /tmp/mapload/flat.shoal /tmp/mapload/hnsw.shoal /tmp/mapload/ivf.shoal; /tmp/mapload-new ...
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <numeric>
#include <string>

#include "shoal/index/factory.hpp"
#include "shoal/io/vecs.hpp"

namespace {
long rss_file_kib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("RssFile:", 0) == 0) return std::stol(line.substr(8));
  return -1;
}
}  // namespace

int main(int argc, char** argv) {
  using namespace shoal;
  if (argc < 2) {
    std::cerr << "usage: mapped-load make BASE.fvecs | mapped-load FILE...\n";
    return 2;
  }
  if (std::string(argv[1]) == "make" && argc == 3) {
    const matrix<float> base = io::read_fvecs(argv[2]);
    std::vector<vector_id> ids(base.rows);
    std::iota(ids.begin(), ids.end(), vector_id{0});
    std::filesystem::create_directories("/tmp/mapload");
    for (const auto& [spec, file] : {std::pair{"Flat", "flat"}, {"HNSW16", "hnsw"}, {"IVF256,Flat", "ivf"}}) {
      any_index index = make_index(spec, base.dim, metric::l2);
      index.train(base.view());
      index.add(base.view(), ids);
      index.save(std::string("/tmp/mapload/") + file + ".shoal");
    }
    return 0;
  }
  for (int round = 0; round < 3; ++round)
    for (int i = 1; i < argc; ++i) {
      const long before = rss_file_kib();
      const auto t0 = std::chrono::steady_clock::now();
      const any_index index = load_index(argv[i], {.mmap = true, .verify = verify_level::full});
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      std::cout << argv[i] << ": " << index.size() << " vectors, load " << ms << " ms, RssFile +"
                << rss_file_kib() - before << " KiB\n";
    }
}
