// libFuzzer target over the index file loader: any byte string, loaded as a file at every verification
// level, copied and memory-mapped, must either load (and then search without trouble) or throw
// shoal::error — never crash, hang, leak or read out of bounds (build with -fsanitize=fuzzer,address).
//
//   mkdir -p /tmp/fuzz-new && fuzz_load -max_total_time=60 /tmp/fuzz-new tests/fuzz/corpus
//
// (libFuzzer adds the inputs it finds to the first directory: keep the checked-in corpus second.)
//
// The corpus holds small valid files of every persistent kind; checksums make most mutations fail
// early under full verification, so verify=none is where the structural checks get exercised.

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "shoal/core/error.hpp"
#include "shoal/index/any_index.hpp"
#include "shoal/index/factory.hpp"
#include "shoal/io/format.hpp"

namespace {

/// The input as a file without touching the disk: an anonymous memory file, opened by the loader through
/// /proc/self/fd (a regular file to fstat, mappable like any other).
const std::string& scratch_path() {
  static const std::string path = [] {
    const int fd = ::memfd_create("shoal-fuzz-load", 0);
    if (fd < 0) std::abort();
    return "/proc/self/fd/" + std::to_string(fd);
  }();
  return path;
}

void write_input(const std::uint8_t* data, std::size_t size) {
  const int fd = std::stoi(scratch_path().substr(14));
  if (::ftruncate(fd, 0) != 0) std::abort();
  for (std::size_t done = 0; done < size;) {
    const ::ssize_t put = ::pwrite(fd, data + done, size - done, static_cast<::off_t>(done));
    if (put <= 0) std::abort();
    done += static_cast<std::size_t>(put);
  }
}

void try_load(const std::string& path, const shoal::load_options& options) {
  try {
    const shoal::any_index index = shoal::load_index(path, options);
    if (index.dim() > 4096) return;  // a valid header may ask for big queries; not the loader's problem
    std::vector<float> query(index.dim(), 0.5f);
    shoal::search_params params;
    params.nprobe = 1u << 20;
    (void)index.search({query.data(), 1, index.dim()}, 3, params);
    (void)index.range_search({query.data(), 1, index.dim()}, 1.0f, params);
    (void)index.memory_bytes();
  } catch (const shoal::error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string& path = scratch_path();
  write_input(data, size);
  try_load(path, {.mmap = false, .verify = shoal::verify_level::none});
  try_load(path, {.mmap = true, .verify = shoal::verify_level::none});
  try_load(path, {.mmap = false, .verify = shoal::verify_level::full});
  try {
    (void)shoal::read_index_file_info(path);
  } catch (const shoal::error&) {
  }
  return 0;
}
