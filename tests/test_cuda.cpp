// The CUDA component end to end. Without a GPU only the no-device behaviour is checked (and said so).
#include <vector>

#include <catch2/catch.hpp>

#include "shoal/cuda/device.hpp"
#include "shoal/distance/distance.hpp"
#include "shoal/eval/eval.hpp"
#include "test_support.hpp"

using namespace shoal;

TEST_CASE("CUDA l2sqr kernel matches the CPU kernel, or reports no device", "[gpu]") {
  const matrix<float> x = make_uniform(1000, 100, 4);
  const matrix<float> q = make_uniform(1, 100, 5);
  if (cuda::device_count() == 0) {
    WARN("no CUDA device: checking the error path only");
    REQUIRE_THROWS_MATCHES(cuda::l2sqr_one_to_many(q.row(0), x.view()), shoal::error,
                           test::fails_with(errc::unsupported, "no CUDA device"));
    return;
  }
  INFO(cuda::device_name(0));
  const std::vector<float> got = cuda::l2sqr_one_to_many(q.row(0), x.view());
  REQUIRE(got.size() == 1000);
  for (std::size_t i = 0; i < 1000; ++i) CHECK(got[i] == Approx(l2sqr(q.row(0), x.row(i), 100)).epsilon(1e-5));
}
