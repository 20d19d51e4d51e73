// The peer libraries compiled into this binary; CMake defines SHOAL_BENCH_HAVE_<LIBRARY> for each one
// it found and compiles its peer_<library>.cpp.
#include <vector>

#include "adapter.hpp"

namespace shoal::bench {

std::span<const peer_library> peer_libraries() {
  static const std::vector<peer_library> peers{
#ifdef SHOAL_BENCH_HAVE_HNSWLIB
      {"hnswlib", make_hnswlib_adapter},
#endif
#ifdef SHOAL_BENCH_HAVE_FAISS
      {"faiss", make_faiss_adapter},
#endif
  };
  return peers;
}

}  // namespace shoal::bench
