#pragma once
// A CUDA thread-block emulator for testing shoal's kernels on the CPU, where CI has no device.
//
// Include it before a kernel source (`cuda/*.cuh`) in a host C++ translation unit. It supplies the subset
// of CUDA those kernels use: `__global__`/`__device__` (no-ops), `__shared__` (a function-local static:
// one copy shared by every thread, which is shared memory's meaning while blocks run one at a time),
// dynamic shared memory (`SHOAL_DYNAMIC_SHARED`), `threadIdx`/`blockIdx`/`blockDim`/`gridDim`,
// `__syncthreads()` and `atomicAdd` on 32-bit unsigned integers.
//
// `emulate::launch(grid, block, shared_bytes, kernel, args...)` runs the grid's blocks one after another,
// each with `block` real threads that meet at a std::barrier in `__syncthreads()`. So a kernel that reads
// shared memory before the barrier that publishes it races here too (TSan reports it), and one that calls
// `__syncthreads()` from divergent code deadlocks rather than passing by luck. Warp-level intrinsics are
// not emulated: kernels meant for this emulator use block-wide barriers and shared atomics only.
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define SHOAL_DYNAMIC_SHARED(name) unsigned char* const name = ::shoal::emulate::dynamic_shared()

namespace shoal::emulate {

struct dim3 {
  unsigned x = 1;
};

inline thread_local dim3 thread_index;
inline thread_local dim3 block_index;
inline dim3 block_dim;
inline dim3 grid_dim;
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<unsigned char> shared_memory;

inline unsigned char* dynamic_shared() { return shared_memory.data(); }

/// Runs kernel(args...) as `grid` blocks of `block` threads with `shared_bytes` of dynamic shared memory.
template <class Kernel, class... Args>
void launch(unsigned grid, unsigned block, std::size_t shared_bytes, Kernel kernel, Args... args) {
  std::barrier<> sync(static_cast<std::ptrdiff_t>(block));
  block_barrier = &sync;
  block_dim.x = block;
  grid_dim.x = grid;
  shared_memory.assign(shared_bytes, 0xcd);  // garbage, as on a device: kernels must not read before writing
  {
    std::vector<std::jthread> threads;
    threads.reserve(block);
    for (unsigned t = 0; t < block; ++t)
      threads.emplace_back([&, t] {
        thread_index.x = t;
        for (unsigned b = 0; b < grid; ++b) {
          block_index.x = b;
          std::invoke(kernel, args...);
          sync.arrive_and_wait();  // the block is done with shared memory before the next one starts
        }
      });
  }
  block_barrier = nullptr;
}

}  // namespace shoal::emulate

#define threadIdx (::shoal::emulate::thread_index)
#define blockIdx (::shoal::emulate::block_index)
#define blockDim (::shoal::emulate::block_dim)
#define gridDim (::shoal::emulate::grid_dim)

inline void __syncthreads() { ::shoal::emulate::block_barrier->arrive_and_wait(); }

inline unsigned atomicAdd(unsigned* address, unsigned value) {
  return std::atomic_ref<unsigned>(*address).fetch_add(value);
}
