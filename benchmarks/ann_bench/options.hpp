#pragma once
/// \file
/// The command line of shoal-ann-bench.

#include <cstddef>
#include <filesystem>
#include <iosfwd>
#include <span>
#include <string>
#include <vector>

#include "params.hpp"
#include "shoal/core/types.hpp"
#include "shoal/io/format.hpp"

namespace shoal::bench {

/// A malformed command line (unknown option, missing or bad value); exit code 2.
class usage_error : public config_error {
 public:
  using config_error::config_error;
};

struct options {
  std::filesystem::path base;   ///< --base: .fvecs, .bvecs or .npy
  std::filesystem::path query;  ///< --query: same formats
  std::filesystem::path gt;     ///< --gt: .ivecs or .npy; empty: computed exactly
  shoal::metric metric = shoal::metric::l2;
  std::size_t k = 10;
  std::string index;  ///< --index: the index-factory spec
  param_list build_params;
  std::vector<sweep_axis> sweeps;
  std::size_t threads = 1;
  bool batch = false;
  std::filesystem::path csv;
  std::filesystem::path plot;
  bool peers = false;
  std::vector<std::string> peer_names;  // --peer: only these peers (empty: every peer)
  double min_time_s = 1.0;
  std::size_t rounds = 1;     ///< --rounds: interleaved measuring rounds (1: each index measured once, then freed)
  std::size_t max_base = 0;   ///< rows of the base file to use, 0: all
  std::size_t max_query = 0;  ///< rows of the query file to use, 0: all

  std::filesystem::path save;  ///< --save: write the built shoal index here
  std::filesystem::path load;  ///< --load: read the shoal index from here instead of building it
  bool mmap = false;           ///< --mmap: memory-map the --load file
  shoal::verify_level verify = shoal::verify_level::full;  ///< --verify: checksum level of the --load
  bool verify_given = false;                               ///< --verify was given (even as full)

  std::size_t shards = 0;         ///< --shards: search a collection of this many shards (0: one index)
  std::string sharding = "hash";  ///< --sharding: hash, range, semantic, hybrid
  std::size_t replicas = 1;       ///< --replicas: copies of every shard
  std::size_t groups = 0;         ///< --groups: hybrid sharding's semantic groups (0: shards / 2)
  bool help = false;
};

/// Parses `args` (without the program name); throws `usage_error` / `config_error`.
[[nodiscard]] options parse_options(std::span<const char* const> args);

/// The --help text.
void print_usage(std::ostream& out);

}  // namespace shoal::bench
