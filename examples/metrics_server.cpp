// shoal-metrics-server: a sharded collection under a mixed search/upsert load, its metrics served over
// HTTP in the Prometheus text format — point a Prometheus scrape job (or curl) at it.
//
//   shoal-metrics-server [--port 9464] [--seconds 0] [--shards 4] [--index HNSW16] [--sharding semantic]
//
//   curl -s localhost:9464/metrics | grep shoal_stage_latency_quantile_seconds
//
// --seconds 0 (the default) serves until interrupted (SIGINT / SIGTERM); --port 0 takes any free port and
// prints which. Up to 64 clients are served at once, each for at most 2 s in all. The data is seeded and
// generated (20,000 x 128 clustered vectors); one thread searches without pause, one upserts a vector
// every millisecond or so (a review counted 82% searches over HNSW16 shards, 94% over IVF16,Flat).

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <numeric>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include "args.hpp"
#include "shoal/collection/collection.hpp"
#include "shoal/eval/eval.hpp"

namespace {

struct options {
  int port = 9464;
  double seconds = 0;
  std::size_t shards = 4;
  std::string index = "HNSW16";
  std::string sharding = "semantic";
};

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::puts("usage: shoal-metrics-server [--port P] [--seconds S] [--shards N] [--index SPEC] [--sharding P]");
      std::exit(0);
    }
    if (i + 1 >= argc) throw std::invalid_argument(arg + " needs a value");
    const std::string value = argv[++i];
    if (arg == "--port")
      o.port = static_cast<int>(shoal::examples::whole_number(arg, value, 0, 65535));
    else if (arg == "--seconds")
      o.seconds = shoal::examples::non_negative(arg, value);
    else if (arg == "--shards")
      o.shards = shoal::examples::whole_number(arg, value, 1, 4096);  // the collection's own bound
    else if (arg == "--index")
      o.index = value;
    else if (arg == "--sharding")
      o.sharding = value;
    else
      throw std::invalid_argument("unknown option " + arg);
  }
  return o;
}

/// A client gets this long in all, from its connection on, to send its request and to take the answer
/// (and to close once answered): however slowly it trickles bytes in (a per-read timeout let a client
/// sending one byte a second hold every scrape up).
constexpr std::chrono::milliseconds client_time{2000};
/// The longest request head read; a longer one is answered 431.
constexpr std::size_t max_request_bytes = 16 * 1024;
/// Connections served at once; a new one past it closes the oldest (idle clients cannot lock a scrape out).
constexpr std::size_t max_clients = 64;

using clock_type = std::chrono::steady_clock;

volatile std::sig_atomic_t interrupted = 0;
extern "C" void on_signal(int) { interrupted = 1; }

/// The request head's lines, each without its line end (CRLF, or a bare LF, which HTTP lets a server
/// accept: RFC 9112, 2.2), from the first line that is not empty (empty lines before the request line
/// are ignored, as 2.2 advises) up to the blank line that ends the head. `end` is just past that blank
/// line, or npos while the head is incomplete. (Looking for "\r\n\r\n" or "\n\n" missed a head whose
/// last line ended in a bare LF and its blank line in CRLF: such a request went unanswered; a review.)
std::vector<std::string> head_lines(const std::string& head, std::size_t& end) {
  std::vector<std::string> lines;
  end = std::string::npos;
  for (std::size_t at = 0;;) {
    const std::size_t lf = head.find('\n', at);
    if (lf == std::string::npos) return lines;
    std::string line = head.substr(at, lf - at);
    if (line.ends_with('\r')) line.pop_back();
    at = lf + 1;
    if (!line.empty()) {
      lines.push_back(std::move(line));
    } else if (!lines.empty()) {
      end = at;
      return lines;
    }
  }
}

/// The response to a request head: GET /metrics gets the exposition, another path 404, a request line
/// that is not "METHOD TARGET HTTP/d.d" (single spaces) 400, a version other than 1.x 505, another method on /metrics
/// 405 (with the `Allow` header RFC 9110 requires), a head over 16 KiB 431. The target may be in
/// absolute form ("http://host/metrics", which RFC 9112, 3.2.2 has servers accept).
std::string respond(const std::string& line, bool too_long, const shoal::collection& c) {
  const std::size_t space1 = line.find(' '), space2 = line.rfind(' ');
  const std::string_view version =
      space2 == std::string::npos ? std::string_view() : std::string_view(line).substr(space2 + 1);
  const auto digit = [](char ch) { return ch >= '0' && ch <= '9'; };
  // Exactly two single spaces: a target holds none (a double space made the target " /metrics": 404).
  const bool well_formed = !too_long && space1 != std::string::npos && space1 > 0 && space2 > space1 + 1 &&
                           line.find(' ', space1 + 1) == space2 && version.size() == 8 &&
                           version.starts_with("HTTP/") && digit(version[5]) && version[6] == '.' && digit(version[7]);
  const std::string method = well_formed ? line.substr(0, space1) : "";
  std::string path = well_formed ? line.substr(space1 + 1, space2 - space1 - 1) : "";
  if (const std::size_t scheme = path.find("://"); scheme != std::string::npos && path[0] != '/') {
    const std::size_t slash = path.find('/', scheme + 3);
    path = slash == std::string::npos ? "/" : path.substr(slash);
  }
  const bool metrics = path == "/metrics" || path.starts_with("/metrics?");
  const bool allowed = method == "GET" || method == "HEAD";
  const char* status = too_long            ? "431 Request Header Fields Too Large"
                       : !well_formed      ? "400 Bad Request"
                       : version[5] != '1' ? "505 HTTP Version Not Supported"
                       : !metrics          ? "404 Not Found"
                       : !allowed          ? "405 Method Not Allowed"
                                           : "200 OK";
  const bool ok = std::strcmp(status, "200 OK") == 0;
  const std::string body = ok ? c.metrics_text("example") : std::string(status) + ": try GET /metrics\n";
  const std::string head =
      std::string("HTTP/1.1 ") + status +
      "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: " + std::to_string(body.size()) +
      (well_formed && metrics && !allowed ? "\r\nAllow: GET, HEAD" : "") + "\r\nConnection: close\r\n\r\n";
  return method == "HEAD" ? head : head + body;
}

/// One client: its request read in as many pieces as it arrives, the response sent, then what it still
/// sends read until it closes (an unread rest would make close() reset the connection under the
/// response), all by its deadline.
struct connection {
  int fd = -1;
  clock_type::time_point deadline;
  std::string in, out;
  std::size_t sent = 0;
  enum class state { reading, writing, draining } now = state::reading;
};

/// Advances `k` on what poll reported (`revents`); false once it is done (closed, failed or answered
/// and drained).
bool serve(connection& k, short revents, const shoal::collection& c) {
  char piece[4096];
  if (k.now == connection::state::writing) {
    if ((revents & (POLLOUT | POLLERR | POLLHUP)) == 0) return true;
    const ::ssize_t n = ::send(k.fd, k.out.data() + k.sent, k.out.size() - k.sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    k.sent += static_cast<std::size_t>(n);
    if (k.sent == k.out.size()) {
      ::shutdown(k.fd, SHUT_WR);
      k.now = connection::state::draining;
    }
    return true;
  }
  if ((revents & (POLLIN | POLLERR | POLLHUP)) == 0) return true;
  const ::ssize_t got = ::recv(k.fd, piece, sizeof piece, MSG_DONTWAIT);
  if (got < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
  if (got == 0) return false;  // closed: before a whole request, or after the answer
  if (k.now == connection::state::draining) return true;
  k.in.append(piece, static_cast<std::size_t>(got));
  // Measured after every piece: the blank line may arrive in the piece that carries the head past the limit.
  std::size_t end = 0;
  const std::vector<std::string> lines = head_lines(k.in, end);
  const bool too_long = (end == std::string::npos ? k.in.size() : end) > max_request_bytes;
  if (end == std::string::npos && !too_long) return true;
  k.out = respond(lines.empty() ? std::string() : lines.front(), too_long, c);
  k.now = connection::state::writing;
  return true;
}

}  // namespace

int main(int argc, char** argv) try {
  const options o = parse(argc, argv);
  constexpr std::size_t n = 20000, dim = 128;
  const shoal::matrix<float> base = shoal::make_clustered(n, dim, 64, 42);
  std::vector<shoal::vector_id> ids(n);
  std::iota(ids.begin(), ids.end(), shoal::vector_id{0});

  // Listening first: a busy port fails here, before the collection is built (it was found only after, a
  // few seconds in; a user-eyes review) and before any thread runs that would have to be joined.
  const int server = ::socket(AF_INET, SOCK_STREAM, 0);
  if (server < 0) throw std::runtime_error("socket() failed");
  const int yes = 1;
  ::setsockopt(server, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<std::uint16_t>(o.port));
  if (::bind(server, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 || ::listen(server, 16) != 0)
    throw std::runtime_error("cannot listen on 127.0.0.1:" + std::to_string(o.port) + ": " +
                             std::system_category().message(errno));
  socklen_t length = sizeof address;  // the port bound, which --port 0 leaves to the system
  if (::getsockname(server, reinterpret_cast<sockaddr*>(&address), &length) != 0)
    throw std::runtime_error("getsockname() failed");

  shoal::collection_options co;
  co.dim = dim;
  co.index = o.index;
  co.policy = shoal::parse_sharding(o.sharding);
  co.shards = o.shards;
  if (co.policy == shoal::sharding::hybrid) co.groups = shoal::examples::hybrid_groups(o.shards);
  if (co.policy == shoal::sharding::range)
    for (std::size_t s = 1; s < o.shards; ++s) co.range_bounds.push_back(n * s / o.shards);
  shoal::collection c(co);
  c.train(base.view());
  c.add(base.view(), ids);
  std::fprintf(stderr, "shoal-metrics-server: %zu vectors in %zu %s shards of %s\n", n, o.shards, o.sharding.c_str(),
               o.index.c_str());
  std::fprintf(stderr, "shoal-metrics-server: serving http://127.0.0.1:%d/metrics\n", ntohs(address.sin_port));

  std::atomic<bool> stop{false};
  std::thread searcher([&] {
    shoal::splitmix64 rng(1);
    while (!stop.load())
      for (int i = 0; i < 9; ++i) (void)c.search(base.view().slice(rng.below(n), 1), 10, {.shard_probe = 2});
  });
  std::thread writer([&] {
    shoal::splitmix64 rng(2);
    while (!stop.load()) {
      const shoal::vector_id id = rng.below(n);
      c.upsert(base.view().slice(rng.below(n), 1), std::span<const shoal::vector_id>(&id, 1));
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });

  // SIGINT / SIGTERM end the serving loop as --seconds does, so that the closing line is printed (the
  // default --seconds 0 serves until one arrives).
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  const auto start = std::chrono::steady_clock::now();
  // One poll over the listening socket and every client: each client waits only for itself (served one
  // at a time, five idle connections held a scrape up 10 s, Prometheus's default timeout; a review).
  std::vector<connection> clients;
  std::vector<pollfd> polled;
  while (
      interrupted == 0 &&
      (o.seconds <= 0 || std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < o.seconds)) {
    polled.assign(1, pollfd{server, POLLIN, 0});
    for (const connection& k : clients)
      polled.push_back({k.fd, static_cast<short>(k.now == connection::state::writing ? POLLOUT : POLLIN), 0});
    if (::poll(polled.data(), polled.size(), 100) < 0 && errno != EINTR) throw std::runtime_error("poll() failed");
    const clock_type::time_point now = clock_type::now();
    std::size_t kept = 0;
    for (std::size_t i = 0; i < clients.size(); ++i) {
      if (!(now < clients[i].deadline && serve(clients[i], polled[i + 1].revents, c)))
        ::close(clients[i].fd);
      else if (kept++ != i)  // (a self-move would empty the strings)
        clients[kept - 1] = std::move(clients[i]);
    }
    clients.resize(kept);
    if ((polled[0].revents & POLLIN) != 0) {
      const int fd = ::accept(server, nullptr, nullptr);
      if (fd >= 0) {
        if (clients.size() == max_clients) {  // the oldest makes room
          ::close(clients.front().fd);
          clients.erase(clients.begin());
        }
        clients.push_back({fd, now + client_time, {}, {}, 0, connection::state::reading});
      }
    }
  }
  for (const connection& k : clients) ::close(k.fd);
  ::close(server);
  stop.store(true);
  searcher.join();
  writer.join();
  const shoal::collection_stats s = c.stats();
  std::printf("queries %llu, writes %llu, search p50 %.3f ms, p99 %.3f ms\n",
              static_cast<unsigned long long>(s.queries), static_cast<unsigned long long>(s.writes),
              s.p50_seconds * 1e3, s.p99_seconds * 1e3);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "shoal-metrics-server: %s\n", e.what());
  return 1;
}
