#pragma once
/// \file
/// Everything public in shoal::shoal, for those who prefer one include.

#include "shoal/core/error.hpp"
#include "shoal/core/neighbors.hpp"
#include "shoal/core/params.hpp"
#include "shoal/core/topk.hpp"
#include "shoal/core/types.hpp"
#include "shoal/distance/distance.hpp"
#include "shoal/eval/eval.hpp"
#include "shoal/index/flat.hpp"
#include "shoal/index/hnsw.hpp"
#include "shoal/io/vecs.hpp"
#include "shoal/version.hpp"
