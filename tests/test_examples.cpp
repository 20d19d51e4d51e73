// The examples, run as a user runs them: input they cannot use ends them with status 1 and a message
// that names the file, instead of a crash or a meaningless report.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

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

TEST_CASE("shoal-demo refuses a bad index spec before computing anything", "[examples]") {
  // It generated the data, computed the ground truth and printed the table's header first (a user-eyes
  // review): the error now comes before any of that.
  const test::scratch_dir dir("shoal-examples");
  io::write_npy(dir / "base.npy", make_clustered(50, 8, 2, 1).view());
  const test::outcome o = test::run_command(std::string(SHOAL_DEMO) + " " + (dir / "base.npy") + " " +
                                            (dir / "base.npy") + " --index Flat --index HNSW --k 5");
  test::check_outcome(o, 1, "HNSW");
  CHECK(o.output.find("ground truth") == std::string::npos);
  CHECK(o.output.find("recall@k") == std::string::npos);
}

TEST_CASE("shoal-demo checks real files up front and runs its default line-up on a tiny one", "[examples]") {
  // From a user-eyes review: queries of another dimension were named only by the first search's message,
  // a ground truth listing an id twice was refused only after the first index was built, and a base of
  // fewer than 16 vectors ended the default run at IVF-PQ's training, after two rows.
  const test::scratch_dir dir("shoal-examples");
  io::write_fvecs(dir / "base.fvecs", make_clustered(12, 8, 2, 1).view());
  io::write_fvecs(dir / "narrow.fvecs", make_clustered(4, 3, 2, 2).view());
  const std::string demo = std::string(SHOAL_DEMO) + " " + (dir / "base.fvecs") + " ";
  test::check_outcome(test::run_command(demo + (dir / "narrow.fvecs")), 1,
                      "base.fvecs holds vectors of dimension 8, " + (dir / "narrow.fvecs") + " queries of dimension 3");
  matrix<std::int32_t> truth(12, 3);
  for (std::size_t q = 0; q < 12; ++q)
    for (std::size_t j = 0; j < 3; ++j) truth.row(q)[j] = static_cast<std::int32_t>((q + j) % 12);
  truth.row(5)[2] = truth.row(5)[0];
  io::write_ivecs(dir / "twice.ivecs", truth.view());
  const test::outcome twice = test::run_command(demo + (dir / "base.fvecs") + " " + (dir / "twice.ivecs") + " --k 3");
  test::check_outcome(twice, 1, "twice.ivecs: row 5 lists the id 5 more than once in its first 3");
  CHECK(twice.output.find("recall@k") == std::string::npos);
  // The default line-up leaves out what cannot train on 12 vectors; an index asked for is refused.
  const test::outcome tiny = test::run_command(demo + (dir / "base.fvecs") + " --k 3");
  test::check_outcome(tiny, 0, "left out: IVF3,PQ4x4fs,RFlat, which trains on at least 16 vectors");
  CHECK(tiny.output.find("HNSW32") != std::string::npos);
  test::check_outcome(test::run_command(demo + (dir / "base.fvecs") + " --k 3 --index IVF3,PQ4x4fs"), 1,
                      "IVF3,PQ4x4fs trains on at least 16 vectors; the base holds 12");
}

TEST_CASE("shoal-demo refuses ground truth made under another metric before building anything", "[examples]") {
  // Exact search scored a plausible 0.972 against it, without a word (a user-eyes review).
  const test::scratch_dir dir("shoal-examples");
  const matrix<float> base = make_clustered(300, 8, 4, 1);
  const matrix<float> queries = make_clustered(20, 8, 4, 2);
  io::write_fvecs(dir / "base.fvecs", base.view());
  io::write_fvecs(dir / "query.fvecs", queries.view());
  io::write_ivecs(dir / "gt.ivecs", ground_truth_ids(ground_truth(base.view(), queries.view(), 5, metric::l2)).view());
  const std::string demo = std::string(SHOAL_DEMO) + " " + (dir / "base.fvecs") + " " + (dir / "query.fvecs") + " " +
                           (dir / "gt.ivecs") + " --k 5 --index Flat";
  const test::outcome ip = test::run_command(demo + " --metric ip");
  test::check_outcome(ip, 1, "gt.ivecs fits the metric l2, not inner_product");
  CHECK(ip.output.find("recall@k") == std::string::npos);
  test::check_outcome(test::run_command(demo + " --metric l2"), 0, "Flat");
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
  // A pairs file of more than one id per row (a ground-truth file) was read by its first column.
  io::write_npy(dir / "wide.npy", matrix<std::int32_t>(20, 3).view());
  test::check_outcome(test::run_command(std::string(SHOAL_CROSS_MODAL_SEARCH) + " --pairs " + (dir / "wide.npy") +
                                        " --images " + (dir / "images.npy") + " --texts " + (dir / "texts.npy")),
                      1, "wide.npy: 3 ids per row; a pairs file holds one");
}

TEST_CASE("cross_modal_search counts image2text recall over the images a caption describes", "[examples]") {
  // 20 images, 40 captions that copy images 0-9: a perfect search scored R@1 0.5 (the ten images without
  // a caption counted as misses; a review).
  const test::scratch_dir dir("shoal-examples");
  const matrix<float> images = make_clustered(20, 8, 20, 3);
  matrix<float> texts(40, 8);
  matrix<std::int32_t> pairs(40, 1);
  for (std::size_t c = 0; c < 40; ++c) {
    std::copy_n(images.row(c % 10), 8, texts.row(c));
    pairs.row(c)[0] = static_cast<std::int32_t>(c % 10);
  }
  io::write_npy(dir / "images.npy", images.view());
  io::write_npy(dir / "texts.npy", texts.view());
  io::write_npy(dir / "pairs.npy", pairs.view());
  const test::outcome run =
      test::run_command(std::string(SHOAL_CROSS_MODAL_SEARCH) + " --images " + (dir / "images.npy") + " --texts " +
                        (dir / "texts.npy") + " --pairs " + (dir / "pairs.npy") + " --index Flat --k 10");
  test::check_outcome(run, 0, "image2text recall over the 10 of 20 images that a caption describes");
  CHECK(run.output.find("image2text indexed R@1=1.0000") != std::string::npos);
  CHECK(run.output.find("in-sample") == std::string::npos);
  // Captions of another dimension: the projection is fitted on the same pairs it is scored on, which
  // the output says (it did not; a user-eyes review).
  matrix<float> narrow(40, 6);
  for (std::size_t c = 0; c < 40; ++c) std::copy_n(texts.row(c), 6, narrow.row(c));
  io::write_npy(dir / "narrow.npy", narrow.view());
  test::check_outcome(
      test::run_command(std::string(SHOAL_CROSS_MODAL_SEARCH) + " --images " + (dir / "images.npy") + " --texts " +
                        (dir / "narrow.npy") + " --pairs " + (dir / "pairs.npy") + " --index Flat --k 10"),
      0, "the caption projection is fitted on these same 40 pairs, so the recall below is in-sample");
}

TEST_CASE("cross_modal_search runs over every kind of shard its --index names", "[examples]") {
  // IVF shards were never trained: every IVF spec failed at its first add.
  for (const char* spec : {"IVF16,Flat", "HNSW16,SQ8"}) {
    CAPTURE(spec);
    test::check_outcome(test::run_command(std::string(SHOAL_CROSS_MODAL_SEARCH) + " --index " + spec), 0,
                        "text2image indexed R@1=");
  }
}

/// Sends `request` to 127.0.0.1:`port` and returns everything the server answers until it closes.
std::string http_exchange(int port, const std::string& request) {
  const int peer = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(peer >= 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<std::uint16_t>(port));
  REQUIRE(::connect(peer, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
  for (std::size_t sent = 0; sent < request.size();) {
    const ::ssize_t n = ::send(peer, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    REQUIRE(n > 0);
    sent += static_cast<std::size_t>(n);
  }
  std::string answer;
  char piece[4096];
  for (::ssize_t n; (n = ::recv(peer, piece, sizeof piece, 0)) > 0;) answer.append(piece, static_cast<std::size_t>(n));
  ::close(peer);
  return answer;
}

TEST_CASE("shoal-metrics-server names why it cannot listen, before it builds the collection", "[examples]") {
  // It said only "cannot listen on 127.0.0.1:N", after building (a user-eyes review).
  const int taken = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(taken >= 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(taken, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
  REQUIRE(::listen(taken, 1) == 0);
  socklen_t length = sizeof address;
  REQUIRE(::getsockname(taken, reinterpret_cast<sockaddr*>(&address), &length) == 0);
  const std::string port = std::to_string(ntohs(address.sin_port));
  const test::outcome busy =
      test::run_command(std::string(SHOAL_METRICS_SERVER) + " --port " + port + " --seconds 1 --index Flat --shards 2");
  ::close(taken);
  test::check_outcome(busy, 1, "cannot listen on 127.0.0.1:" + port + ": Address already in use");
  CHECK(busy.output.find("vectors in") == std::string::npos);
}

TEST_CASE("shoal-metrics-server serves /metrics and answers other requests with their status", "[examples]") {
  // 5 hybrid shards: a prime count, which only one group divides. Flat shards keep the start quick.
  FILE* server = ::popen(
      (std::string(SHOAL_METRICS_SERVER) + " --port 0 --seconds 6 --index Flat --shards 5 --sharding hybrid 2>&1")
          .c_str(),
      "r");
  REQUIRE(server != nullptr);
  std::string output;
  int port = 0;
  char line[512];
  while (port == 0 && std::fgets(line, sizeof line, server) != nullptr) {
    output += line;
    std::sscanf(line, "shoal-metrics-server: serving http://127.0.0.1:%d/", &port);
  }
  INFO(output);
  if (port != 0) {
    const std::string metrics = http_exchange(port, "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    CHECK(metrics.starts_with("HTTP/1.1 200 OK\r\n"));
    CHECK(metrics.find("shoal_shard_vectors{collection=\"example\",shard=\"4\"}") != std::string::npos);
    const std::string post = http_exchange(port, "POST /metrics HTTP/1.1\r\n\r\n");
    CHECK(post.starts_with("HTTP/1.1 405 "));
    CHECK(post.find("\r\nAllow: GET, HEAD\r\n") != std::string::npos);  // RFC 9110 15.5.6 (once: missing)
    // Only HTTP/1.x (once: anything after "HTTP/" was taken).
    CHECK(http_exchange(port, "GET /metrics HTTP/1.1garbage\r\n\r\n").starts_with("HTTP/1.1 400 "));
    CHECK(http_exchange(port, "GET /metrics HTTP/9.9\r\n\r\n").starts_with("HTTP/1.1 505 "));
    CHECK(http_exchange(port, "GET /other HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
    CHECK(http_exchange(port, "nonsense\r\n\r\n").starts_with("HTTP/1.1 400 "));
    // Over the 16 KiB limit by less than one read: the blank line arrives in the piece that crosses it.
    const std::string padded = "GET /metrics HTTP/1.1\r\nX-Pad: " + std::string(17000, 'a') + "\r\n\r\n";
    CHECK(http_exchange(port, padded).starts_with("HTTP/1.1 431 "));
    // Lines ending in a bare LF (went unanswered), also before a blank line ending in CRLF (a review).
    CHECK(http_exchange(port, "GET /metrics HTTP/1.0\n\n").starts_with("HTTP/1.1 200 OK\r\n"));
    CHECK(http_exchange(port, "GET /metrics HTTP/1.1\nHost: a\n\r\n").starts_with("HTTP/1.1 200 OK\r\n"));
    // An empty line before the request line is ignored and an absolute-form target accepted (RFC 9112,
    // 2.2 and 3.2.2); an empty method is a bad request (they gave 400, 404 and 405; a review).
    CHECK(http_exchange(port, "\r\nGET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 OK\r\n"));
    CHECK(http_exchange(port, "GET http://localhost/metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 OK\r\n"));
    CHECK(http_exchange(port, " /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400 "));
    CHECK(http_exchange(port, "GET  /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400 "));  // was 404
    CHECK(http_exchange(port, "GET /metrics  HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400 "));
    // Idle connections do not hold a scrape up: each client waits for itself (served one at a time,
    // five idle ones held it up 10 s, Prometheus's default scrape timeout; a review).
    {
      std::vector<int> idle;
      for (int i = 0; i < 5; ++i) {
        const int peer = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        address.sin_port = htons(static_cast<std::uint16_t>(port));
        if (peer >= 0 && ::connect(peer, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0)
          idle.push_back(peer);
      }
      const auto started = std::chrono::steady_clock::now();
      CHECK(http_exchange(port, "GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 OK\r\n"));
      CHECK(std::chrono::steady_clock::now() - started < std::chrono::milliseconds(1500));
      for (const int peer : idle) ::close(peer);
    }
    // A client trickling its head in a byte at a time does not hold a scrape behind it up (each read had
    // its own 2 s: the scrape waited until it stopped; then the client's 2 s in all; now nothing).
    std::atomic<bool> trickling{true};
    std::thread trickler([&] {
      const int peer = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in address{};
      address.sin_family = AF_INET;
      address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      address.sin_port = htons(static_cast<std::uint16_t>(port));
      if (peer >= 0 && ::connect(peer, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0) {
        const std::string head = "GET /metrics HTTP/1.1\r\nX-Slow: ";
        (void)::send(peer, head.data(), head.size(), MSG_NOSIGNAL);
        for (int i = 0; i < 20 && ::send(peer, "a", 1, MSG_NOSIGNAL) == 1; ++i)
          std::this_thread::sleep_for(std::chrono::milliseconds(200));
      }
      trickling.store(false);
      if (peer >= 0) ::close(peer);
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const std::string behind = http_exchange(port, "GET /metrics HTTP/1.1\r\n\r\n");
    const bool answered_while_trickling = trickling.load();
    trickler.join();
    CHECK(behind.starts_with("HTTP/1.1 200 OK\r\n"));
    CHECK(answered_while_trickling);
  }
  while (std::fgets(line, sizeof line, server) != nullptr) output += line;
  const int status = ::pclose(server);
  INFO(output);
  REQUIRE(port != 0);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(output.find("queries ") != std::string::npos);
}

}  // namespace
}  // namespace shoal
