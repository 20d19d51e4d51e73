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
#include "shoal/index/any_index.hpp"
#include "shoal/index/factory.hpp"
#include "shoal/index/flat.hpp"
#include "shoal/index/hnsw.hpp"
#include "shoal/index/ivf_pq.hpp"
#include "shoal/io/format.hpp"
#include "shoal/io/vecs.hpp"
#include "shoal/quant/opq.hpp"
#include "shoal/quant/pq.hpp"
#include "shoal/quant/sq.hpp"
#include "shoal/version.hpp"
