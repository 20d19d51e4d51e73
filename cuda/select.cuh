#pragma once
// The top-k selection behind shoal::cuda::flat_index and the coarse pass, fused with the GEMM tile by tile.
//
// A search cuts the n stored rows into chunks whose score tile (queries of the batch × rows of the chunk)
// fits in half the device's L2 cache. For each chunk one cuBLAS SGEMM writes the tile, and
// `merge_chunk` folds it at once into every query's running top-k. So the tile is read back from L2, once,
// instead of making a round trip through device memory, and no query's n scores are ever sorted.
//
// `merge_chunk` runs one block per query. Its running top-k (k ≤ 1024, sorted by (score, row)) stays in
// shared memory while it scans the chunk in rounds of `candidates_per_round` scores:
//  - a score becomes a candidate only if it beats the current k-th, (score, row) < τ;
//  - candidates wait in a buffer of two rounds' size; when the next round might not fit, and at the
//    chunk's end, they are sorted (bitonic, in shared memory) and merged with the top-k (each element's
//    output rank from a binary search in the other list), and τ tightens.
// After the first rounds few scores beat τ (about k / r in round r on data in no particular order), so
// the scan is one coalesced read per score and one barrier per round, and a chunk merges about once.
// (Session 18's version merged every round that had a candidate, which at k = 32 is nearly every round
// of a query's first chunks. On an H200 the change was within the spread between runs: the merges are
// not where the coarse pass loses to cuBLAS's GEMM alone, see BENCHMARKS.md.) The worst case, rows whose
// scores fall in the scan's order, merges every other round.
//
// Ties go to the smaller row, as everywhere in shoal: (score, row) is a total order on real rows. NaN
// scores rank last (as +inf); a real row always ranks before the empty slot (+inf, no_row), so k ≤ n
// real rows are always returned.
//
// This file holds only the device code and compiles two ways: by nvcc inside cuda/flat.cu, and as plain
// C++ in tests/test_cuda_select.cpp under tests/cuda_emulator.hpp, which runs the blocks on CPU threads
// so that CI checks the kernel without a device. Hence: block-wide barriers and shared atomics only, no
// warp intrinsics.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#ifndef SHOAL_DYNAMIC_SHARED
#define SHOAL_DYNAMIC_SHARED(name) extern __shared__ unsigned char name[]
#endif

namespace shoal::cuda::detail {

/// Threads per `merge_chunk` block (a multiple of the warp size).
constexpr unsigned select_threads = 256;
/// Scores each thread scans per round.
constexpr unsigned scores_per_thread = 4;
constexpr unsigned candidates_per_round = select_threads * scores_per_thread;
/// The candidate buffer: candidates of several rounds wait there, and are sorted into the top-k only when
/// another round might not fit, or at the chunk's end.
constexpr unsigned candidate_capacity = 2 * candidates_per_round;
/// The row number of an empty slot.
constexpr std::uint32_t no_row = std::numeric_limits<std::uint32_t>::max();
/// Largest k `merge_chunk` keeps.
constexpr std::uint32_t select_max_k = 1024;

/// Dynamic shared memory of one `merge_chunk` block: the top-k, its merge output and the candidates.
constexpr std::size_t merge_shared_bytes(std::uint32_t k) {
  return (2 * std::size_t{k} + candidate_capacity) * (sizeof(float) + sizeof(std::uint32_t));
}

/// The query batch and row chunk of one GEMM + merge step: batch × chunk scores within `budget` floats
/// (at least one of each), chunks of at least `min_chunk` rows where the budget allows, so that the GEMM
/// stays wide, and batches within the grid's 65,535 blocks and within `max_batch` queries when it is not
/// 0 (the chunks then widen to fill the budget).
struct tile_plan {
  std::size_t batch = 1;
  std::size_t chunk = 1;
};
constexpr std::size_t min_chunk = 4096;
constexpr tile_plan plan_tiles(std::size_t queries, std::size_t rows, std::size_t budget, std::size_t max_batch = 0) {
  tile_plan plan;
  const std::size_t narrow = rows < min_chunk ? rows : min_chunk;
  plan.batch = budget / (narrow > 0 ? narrow : 1);
  if (plan.batch > queries) plan.batch = queries;
  if (plan.batch > 65535) plan.batch = 65535;
  if (max_batch > 0 && plan.batch > max_batch) plan.batch = max_batch;
  if (plan.batch < 1) plan.batch = 1;
  plan.chunk = budget / plan.batch;
  if (plan.chunk > rows) plan.chunk = rows;
  if (plan.chunk < 1) plan.chunk = 1;
  return plan;
}

__device__ __forceinline__ bool before(float sa, std::uint32_t ra, float sb, std::uint32_t rb) {
  return sa < sb || (sa == sb && ra < rb);
}

/// Rank score of column j of a tile row of inner products: ‖x‖² − 2⟨q, x⟩ under L2 (norms given), −⟨q, x⟩
/// otherwise; NaN (from overflow) ranks last, as +inf.
__device__ __forceinline__ float score_of(const float* ip, const float* norms, std::size_t j) {
  const float s = norms != nullptr ? norms[j] - 2.0f * ip[j] : -ip[j];
  return std::isnan(s) ? INFINITY : s;
}

/// How many of the `count` sorted entries (score, row) come before (s, r).
__device__ __forceinline__ std::uint32_t count_before(const float* score, const std::uint32_t* row, std::uint32_t count,
                                                      float s, std::uint32_t r) {
  std::uint32_t lo = 0, hi = count;
  while (lo < hi) {
    const std::uint32_t mid = (lo + hi) / 2;
    if (before(score[mid], row[mid], s, r))
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/// Sorts `size` (a power of two) entries by (score, row), all threads of the block taking part.
__device__ inline void bitonic_sort(float* score, std::uint32_t* row, std::uint32_t size) {
  for (std::uint32_t span = 2; span <= size; span <<= 1) {
    for (std::uint32_t stride = span >> 1; stride > 0; stride >>= 1) {
      for (std::uint32_t i = threadIdx.x; i < size; i += blockDim.x) {
        const std::uint32_t partner = i ^ stride;
        if (partner <= i) continue;
        const bool ascending = (i & span) == 0;
        if (before(score[partner], row[partner], score[i], row[i]) == ascending) {
          const float ts = score[i];
          score[i] = score[partner];
          score[partner] = ts;
          const std::uint32_t tr = row[i];
          row[i] = row[partner];
          row[partner] = tr;
        }
      }
      __syncthreads();
    }
  }
}

/// One block per query (blockIdx.x) of a tile of inner products, `len` columns for stored rows row0,
/// row0 + 1, …, row stride `ld`; `norms` (under L2, else null) points at the chunk's first row's norm.
/// Folds the chunk into the query's running top-k, best_score / best_row (k per query, sorted by
/// (score, row)); `fresh` starts from empty slots instead of reading them (the first chunk).
/// Launch with select_threads threads and merge_shared_bytes(k) bytes of dynamic shared memory; 1 ≤ k ≤
/// select_max_k.
__global__ void merge_chunk(const float* tile, std::size_t ld, std::size_t len, const float* norms, std::uint32_t row0,
                            std::uint32_t k, bool fresh, float* best_score, std::uint32_t* best_row) {
  SHOAL_DYNAMIC_SHARED(shared);
  float* top_score = reinterpret_cast<float*>(shared);
  float* out_score = top_score + k;
  float* cand_score = out_score + k;
  std::uint32_t* top_row = reinterpret_cast<std::uint32_t*>(cand_score + candidate_capacity);
  std::uint32_t* out_row = top_row + k;
  std::uint32_t* cand_row = out_row + k;
  // Round r counts its candidates in counter r % 3 and writes them after the `buffered` ones of earlier
  // rounds. Thread 0 zeroes counter (r + 2) % 3 after round r's first barrier: its last readers read it
  // before that barrier (in round r − 1), its next writers append after round r + 1's first barrier, so
  // a round that merges nothing costs one barrier.
  __shared__ std::uint32_t counters[3];

  const unsigned tid = threadIdx.x;
  const std::size_t query = blockIdx.x;
  const float* ip = tile + query * ld;
  float* my_score = best_score + query * k;
  std::uint32_t* my_row = best_row + query * k;
  for (std::uint32_t i = tid; i < k; i += blockDim.x) {
    top_score[i] = fresh ? INFINITY : my_score[i];
    top_row[i] = fresh ? no_row : my_row[i];
  }
  if (tid < 3) counters[tid] = 0;
  __syncthreads();
  float tau_score = top_score[k - 1];
  std::uint32_t tau_row = top_row[k - 1];

  unsigned round = 0;
  std::uint32_t buffered = 0;  // candidates waiting in the buffer (uniform: every thread counts alike)
  for (std::size_t base = 0; base < len; base += candidates_per_round, ++round) {
    std::uint32_t* counter = &counters[round % 3];
    // Every read of the round first, then the tests: a thread has all its reads in flight at once.
    float s[scores_per_thread];
    for (unsigned r = 0; r < scores_per_thread; ++r) {
      const std::size_t j = base + r * blockDim.x + tid;
      s[r] = j < len ? score_of(ip, norms, j) : INFINITY;
    }
    for (unsigned r = 0; r < scores_per_thread; ++r) {
      const std::size_t j = base + r * blockDim.x + tid;
      const auto row = static_cast<std::uint32_t>(row0 + j);
      if (j < len && before(s[r], row, tau_score, tau_row)) {
        const std::uint32_t slot = buffered + atomicAdd(counter, 1u);
        cand_score[slot] = s[r];
        cand_row[slot] = row;
      }
    }
    __syncthreads();
    buffered += *counter;  // uniform: read after the barrier
    if (tid == 0) counters[(round + 2) % 3] = 0;
    // Merging costs a sort and a dozen barriers. With few candidates a round (k / r of them in round r, on
    // scores in no particular order) merging each round's would cost most of the scan; so they wait
    // until the next round might overflow the buffer, or the chunk ends. τ stays looser meanwhile, which
    // admits a few more.
    const bool last = base + candidates_per_round >= len;
    if (buffered == 0 || (!last && buffered + candidates_per_round <= candidate_capacity)) continue;
    const std::uint32_t m = buffered;
    buffered = 0;

    std::uint32_t size = 1;
    while (size < m) size <<= 1;
    for (std::uint32_t i = m + tid; i < size; i += blockDim.x) {
      cand_score[i] = INFINITY;
      cand_row[i] = no_row;
    }
    __syncthreads();
    bitonic_sort(cand_score, cand_row, size);
    // Merge: an entry's rank in the union is its index plus the count of the other list's entries before
    // it. Candidates are real rows absent from the top-k, so no two entries of the lists are equal, and
    // the empty slots (all alike) keep their own order.
    for (std::uint32_t i = tid; i < k; i += blockDim.x) {
      const std::uint32_t rank = i + count_before(cand_score, cand_row, m, top_score[i], top_row[i]);
      if (rank < k) {
        out_score[rank] = top_score[i];
        out_row[rank] = top_row[i];
      }
    }
    for (std::uint32_t i = tid; i < m; i += blockDim.x) {
      const std::uint32_t rank = i + count_before(top_score, top_row, k, cand_score[i], cand_row[i]);
      if (rank < k) {
        out_score[rank] = cand_score[i];
        out_row[rank] = cand_row[i];
      }
    }
    __syncthreads();
    for (std::uint32_t i = tid; i < k; i += blockDim.x) {
      top_score[i] = out_score[i];
      top_row[i] = out_row[i];
    }
    __syncthreads();
    tau_score = top_score[k - 1];
    tau_row = top_row[k - 1];
  }
  for (std::uint32_t i = tid; i < k; i += blockDim.x) {
    my_score[i] = top_score[i];
    my_row[i] = top_row[i];
  }
}

}  // namespace shoal::cuda::detail
