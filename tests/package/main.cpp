// Links the installed library, runs a search and checks the answer; exit status 0 means the package works.
#include <cstdio>
#include <vector>

#include <shoal/shoal.hpp>
#ifdef CONSUMER_WITH_CUDA
#include <shoal/cuda/device.hpp>
#endif

// The one include names every public type (the multimodal store was once missing from it).
static_assert(sizeof(shoal::multimodal_store) > 0 && sizeof(shoal::collection) > 0 && sizeof(shoal::coarse_probe) > 0);

int main() {
  const std::vector<float> base = {0, 0, 10, 10, 3, 4};  // three 2-d points
  const std::vector<shoal::vector_id> ids = {100, 200, 300};
  shoal::flat_index index(2);
  index.add({base.data(), 3, 2}, ids);
  const std::vector<float> query = {2, 3};
  const shoal::neighbors result = index.search({query.data(), 1, 2}, 2);
  const bool ok = result.id(0, 0) == 300 && result.distance(0, 0) == 2.0f && result.id(0, 1) == 100;
#ifdef CONSUMER_WITH_CUDA
  std::printf("shoal::cuda devices: %d\n", shoal::cuda::device_count());
#endif
  std::printf("shoal %s (%s kernels): nearest %llu at %g, then %llu -> %s\n", SHOAL_VERSION_STRING,
              shoal::simd_level_name(), static_cast<unsigned long long>(result.id(0, 0)), result.distance(0, 0),
              static_cast<unsigned long long>(result.id(0, 1)), ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
