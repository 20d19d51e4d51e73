// The examples, run as a user runs them: input they cannot use ends them with status 1 and a message
// that names the file, instead of a crash or a meaningless report.

#include <string>

#include <catch2/catch.hpp>

#include "shoal/eval/eval.hpp"
#include "shoal/io/vecs.hpp"
#include "test_support.hpp"

namespace shoal {
namespace {

TEST_CASE("shoal-demo refuses a query file without vectors", "[examples]") {
  const test::scratch_dir dir("shoal-examples");
  io::write_npy(dir / "base.npy", make_clustered(50, 8, 2, 1).view());
  io::write_npy(dir / "none.npy", matrix<float>(0, 8).view());
  test::check_outcome(test::run_command(std::string(SHOAL_DEMO) + " " + (dir / "base.npy") + " " + (dir / "none.npy") +
                                        " --index Flat --k 5"),
                      1, "none.npy: no query vectors");
}

TEST_CASE("cross_modal_search refuses image or caption files without vectors", "[examples]") {
  const test::scratch_dir dir("shoal-examples");
  io::write_npy(dir / "images.npy", make_clustered(20, 8, 2, 1).view());
  io::write_npy(dir / "texts.npy", make_clustered(20, 8, 2, 2).view());
  io::write_npy(dir / "none.npy", matrix<float>(0, 8).view());
  io::write_npy(dir / "pairs.npy", matrix<std::int32_t>(20, 1).view());
  const std::string program = std::string(SHOAL_CROSS_MODAL_SEARCH) + " --pairs " + (dir / "pairs.npy");
  test::check_outcome(
      test::run_command(program + " --images " + (dir / "images.npy") + " --texts " + (dir / "none.npy")), 1,
      "none.npy: no vectors");
  test::check_outcome(
      test::run_command(program + " --images " + (dir / "none.npy") + " --texts " + (dir / "texts.npy")), 1,
      "none.npy: no vectors");
}

}  // namespace
}  // namespace shoal
