#pragma once
/// \file
/// The vectors and ground truth of one benchmark run.

#include <cstdint>
#include <string>

#include "options.hpp"
#include "shoal/core/types.hpp"

namespace shoal::bench {

struct dataset {
  std::string name;    ///< base file name without extension and "_base" (plot titles)
  matrix<float> base;  ///< row numbers are the ids
  matrix<float> queries;
  matrix<std::int32_t> truth;  ///< queries.rows x (>= k) true ids, nearest first
};

/// Reads base and queries (limited by --max-base / --max-query); `truth` stays empty. Throws
/// `config_error` when the shapes do not fit (dimensions, k), `shoal::error` when a file cannot be read.
[[nodiscard]] dataset load_vectors(const options& o);

/// Reads the ground truth from --gt, or computes it exactly (announced and timed on stderr). Throws
/// `config_error` when it does not fit the queries (rows), k (columns) or the base (ids: base row
/// numbers, or -1 for a missing neighbour).
void load_truth(dataset& d, const options& o);

}  // namespace shoal::bench
