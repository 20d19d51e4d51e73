#pragma once
// The FAISS peers' thread count, shared by shoal-ann-bench and shoal-kmeans-bench (both only when FAISS
// was found).

#include <dlfcn.h>
#include <omp.h>

#include <cstddef>

namespace shoal::bench {

/// FAISS's thread count: OpenMP's, and that of its GEMMs (k-means, batched flat search), which run in the
/// BLAS library — Debian's OpenBLAS is the pthread build, which ignores OpenMP's setting and takes every
/// core: a one-thread FAISS IVF build ran at 191% CPU before this (session 13). OpenBLAS is looked up at
/// run time; under another BLAS only OpenMP's count is set.
inline void use_faiss_threads(std::size_t threads) {
  omp_set_num_threads(static_cast<int>(threads));
  using setter = void (*)(int);
  static const auto openblas = reinterpret_cast<setter>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (openblas != nullptr) openblas(static_cast<int>(threads));
}

}  // namespace shoal::bench
