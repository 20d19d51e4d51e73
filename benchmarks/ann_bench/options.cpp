#include "options.hpp"

#include <algorithm>
#include <charconv>
#include <limits>
#include <optional>
#include <ostream>
#include <string_view>

#include "shoal/core/error.hpp"

namespace shoal::bench {
namespace {

/// The whole of `text` as a number of type T, or `usage_error` naming `option`.
template <class T>
T parse_number(std::string_view text, std::string_view option) {
  T value{};
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size())
    throw usage_error(std::string(option) + ": '" + std::string(text) + "' is not a valid number");
  return value;
}

std::size_t parse_count(std::string_view text, std::string_view option, std::size_t min,
                        std::size_t max = std::numeric_limits<std::size_t>::max()) {
  const auto value = parse_number<std::size_t>(text, option);
  if (value < min) throw usage_error(std::string(option) + " must be at least " + std::to_string(min));
  if (value > max) throw usage_error(std::string(option) + " must be at most " + std::to_string(max));
  return value;
}

/// One option: its name, its value's placeholder (empty for a flag), its help line, what it sets, and
/// whether it may be given more than once. A value option that may not is refused the second time: the
/// later value would otherwise silently replace the earlier (--index HNSW8 --index Flat measured Flat).
struct option_spec {
  std::string_view name;
  std::string_view value_name;
  std::string_view help;
  void (*apply)(options& o, std::string_view value);
  bool repeatable = false;
};

constexpr option_spec specs[] = {
    {"--base", "FILE", "base vectors (.fvecs, .bvecs, .npy); ids are row numbers (required)",
     [](options& o, std::string_view v) { o.base = v; }},
    {"--query", "FILE", "query vectors (.fvecs, .bvecs, .npy) (required)",
     [](options& o, std::string_view v) { o.query = v; }},
    {"--gt", "FILE", "ground-truth ids (.ivecs, .npy), >= k per query; default: computed exactly",
     [](options& o, std::string_view v) { o.gt = v; }},
    {"--metric", "l2|ip|cos", "distance (default l2); cos normalises base and queries",
     [](options& o, std::string_view v) {
       try {
         o.metric = shoal::parse_metric(v);
       } catch (const shoal::error&) {
         throw usage_error("--metric: unknown metric '" + std::string(v) + "' (expected l2, ip or cos)");
       }
     }},
    {"--k", "N", "neighbours per query (default 10)",
     [](options& o, std::string_view v) { o.k = parse_count(v, "--k", 1); }},
    {"--index", "SPEC", "index-factory spec, e.g. Flat or HNSW32 (required)",
     [](options& o, std::string_view v) { o.index = v; }},
    {"--build-param", "NAME=V", "build knob of the index (repeatable)",
     [](options& o, std::string_view v) { o.build_params.push_back(parse_param(v, "--build-param")); }, true},
    {"--sweep", "NAME=v1,v2,...", "search knob values, one row each (repeatable: Cartesian product)",
     [](options& o, std::string_view v) { o.sweeps.push_back(parse_sweep(v)); }, true},
    {"--threads", "N", "single-query workers, or the batch's thread count (default 1)",
     [](options& o, std::string_view v) { o.threads = parse_count(v, "--threads", 1, 4096); }},
    {"--batch", "", "search all queries in one call (latency columns: per batch)",
     [](options& o, std::string_view) { o.batch = true; }},
    {"--csv", "FILE",
     "also write the rows to FILE: to FILE.partial while the run lasts, renamed to FILE once every row is "
     "measured (a failed run removes FILE.partial and leaves an earlier FILE as it was)",
     [](options& o, std::string_view v) { o.csv = v; }},
    {"--plot", "FILE.png", "recall vs QPS plot (needs gnuplot)", [](options& o, std::string_view v) { o.plot = v; }},
    {"--peers", "", "also measure hnswlib / FAISS where built in",
     [](options& o, std::string_view) { o.peers = true; }},
    {"--peer", "NAME", "measure only this peer (hnswlib, faiss; repeatable; implies --peers)",
     [](options& o, std::string_view v) {
       o.peers = true;
       o.peer_names.emplace_back(v);
     },
     true},
    {"--min-time", "SECONDS", "minimum measuring time per sweep point (default 1.0)",
     [](options& o, std::string_view v) {
       o.min_time_s = parse_number<double>(v, "--min-time");
       if (!(o.min_time_s >= 0.0 && o.min_time_s <= 1e6)) throw usage_error("--min-time must be in [0, 1e6]");
     }},
    {"--rounds", "R",
     "measure every (library, sweep point) in R interleaved rounds of min-time / R each and report the "
     "totals (default 1); all indexes stay built meanwhile. On a host whose speed drifts, every point then "
     "sees the same drift. At most 1000: every round runs at least one pass over the queries",
     [](options& o, std::string_view v) { o.rounds = parse_count(v, "--rounds", 1, 1000); }},
    {"--max-base", "N", "use only the first N base vectors (default: all)",
     [](options& o, std::string_view v) { o.max_base = parse_count(v, "--max-base", 1); }},
    {"--max-query", "N", "use only the first N queries (default: all)",
     [](options& o, std::string_view v) { o.max_query = parse_count(v, "--max-query", 1); }},
    {"--save", "FILE", "write the built shoal index to FILE", [](options& o, std::string_view v) { o.save = v; }},
    {"--load", "FILE", "load the shoal index from FILE instead of building it (build_s: load time)",
     [](options& o, std::string_view v) { o.load = v; }},
    {"--mmap", "", "with --load: memory-map the file, search it in place",
     [](options& o, std::string_view) { o.mmap = true; }},
    {"--verify", "none|header|full",
     "with --load: how much of the file to check against its checksums (default full; full reads every "
     "page of a mapped file once and checks its vectors' values, none leaves untouched pages on disk)",
     [](options& o, std::string_view v) {
       if (v == "none")
         o.verify = shoal::verify_level::none;
       else if (v == "header")
         o.verify = shoal::verify_level::header;
       else if (v == "full")
         o.verify = shoal::verify_level::full;
       else
         throw usage_error("--verify: unknown level '" + std::string(v) + "' (expected none, header or full)");
       o.verify_given = true;
     }},
    {"--shards", "N", "build a shoal::collection of N shards, each an --index (peers stay one index)",
     [](options& o, std::string_view v) { o.shards = parse_count(v, "--shards", 1); }},
    {"--sharding", "POLICY", "with --shards: hash (default), range, semantic or hybrid",
     [](options& o, std::string_view v) { o.sharding = v; }},
    {"--shard-probe", "P",
     "with --shards: shards (semantic) or groups (hybrid) each query visits; same as --sweep "
     "shard_probe=P",
     [](options& o, std::string_view v) {
       o.sweeps.push_back({"shard_probe", {std::string(v)}});
     },
     true},  // a second one is a second shard_probe axis, refused below with its own message
    {"--replicas", "R", "with --shards: copies of every shard (default 1)",
     [](options& o, std::string_view v) { o.replicas = parse_count(v, "--replicas", 1); }},
    {"--groups", "G", "with --sharding hybrid: semantic groups (default shards / 2)",
     [](options& o, std::string_view v) { o.groups = parse_count(v, "--groups", 1); }},
    {"--help", "", "print this help and exit", [](options& o, std::string_view) { o.help = true; }},
};

/// A name that `names` holds twice, or nothing.
std::optional<std::string> repeated(const std::vector<std::string>& names) {
  for (std::size_t i = 0; i < names.size(); ++i)
    if (std::find(names.begin(), names.begin() + static_cast<std::ptrdiff_t>(i), names[i]) !=
        names.begin() + static_cast<std::ptrdiff_t>(i))
      return names[i];
  return {};
}

}  // namespace

options parse_options(std::span<const char* const> args) {
  options o;
  std::vector<std::string_view> given;  // the value options seen that may be given once
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string_view arg = args[i];
    if (arg == "-h") arg = "--help";
    // --name=value and --name value are both accepted.
    const std::size_t eq = arg.find('=');
    const std::string_view name = arg.substr(0, eq);
    const auto spec =
        std::find_if(std::begin(specs), std::end(specs), [&](const option_spec& s) { return s.name == name; });
    if (spec == std::end(specs)) throw usage_error("unknown option '" + std::string(arg) + "'");
    if (!spec->value_name.empty() && !spec->repeatable) {
      if (std::find(given.begin(), given.end(), name) != given.end())
        throw usage_error(std::string(name) + " given twice");
      given.push_back(name);
    }
    if (spec->value_name.empty()) {
      if (eq != std::string_view::npos) throw usage_error(std::string(name) + " takes no value");
      spec->apply(o, {});
    } else if (eq != std::string_view::npos) {
      // --load= (empty) read as "not given": an index built instead of loaded, a run without its CSV.
      if (eq + 1 == arg.size())
        throw usage_error(std::string(name) + " needs a value (" + std::string(spec->value_name) + ")");
      spec->apply(o, arg.substr(eq + 1));
    } else {
      if (i + 1 == args.size() || *args[i + 1] == '\0')
        throw usage_error(std::string(name) + " needs a value (" + std::string(spec->value_name) + ")");
      const std::string_view value = args[++i];
      // A forgotten value would otherwise swallow the next option (--csv --batch: a file named --batch).
      if (value.starts_with("--"))
        throw usage_error(std::string(name) + " needs a value (" + std::string(spec->value_name) +
                          "), got the option " + std::string(value) + " (write " + std::string(name) +
                          "=VALUE for a value that starts with --)");
      spec->apply(o, value);
    }
  }
  if (o.help) return o;
  if (o.base.empty()) throw usage_error("missing required option --base");
  if (o.query.empty()) throw usage_error("missing required option --query");
  if (o.index.empty()) throw usage_error("missing required option --index");
  if (o.mmap && o.load.empty()) throw usage_error("--mmap needs --load");
  if (o.verify_given && o.load.empty()) throw usage_error("--verify needs --load");
  // A loaded index was built with its own parameters: these would be reported as if they applied. Peers
  // are built whatever --load says, so with them the parameters still count.
  if (!o.load.empty() && !o.build_params.empty() && !o.peers)
    throw usage_error("--build-param has no effect with --load and no peers (the file holds an index already built)");
  // Given at all, even at their defaults (--sharding hash alone ran one index without a word; a user-eyes
  // review), and --shard-probe too (refused as a search parameter HNSW16 does not know).
  const auto was_given = [&](std::string_view name) {
    return std::find(given.begin(), given.end(), name) != given.end();
  };
  const bool probes =
      std::any_of(o.sweeps.begin(), o.sweeps.end(), [](const sweep_axis& a) { return a.name == "shard_probe"; });
  if (o.shards == 0 && (was_given("--sharding") || was_given("--replicas") || was_given("--groups") || probes))
    throw usage_error("--sharding, --replicas, --groups and --shard-probe need --shards");
  if (o.groups != 0 && o.sharding != "hybrid") throw usage_error("--groups needs --sharding hybrid");
  if (o.shards > 0 && (!o.save.empty() || !o.load.empty()))
    throw usage_error("--save / --load work on one index, not with --shards");

  std::vector<std::string> names;
  for (const param& p : o.build_params) names.push_back(p.name);
  if (const auto name = repeated(names)) throw usage_error("--build-param: parameter '" + *name + "' given twice");
  names.clear();
  for (const sweep_axis& axis : o.sweeps) names.push_back(axis.name);
  if (const auto name = repeated(names))
    throw usage_error(*name == "shard_probe"
                          ? "shard_probe given twice (--shard-probe P is --sweep shard_probe=P; sweep several "
                            "values with one --sweep shard_probe=v1,v2,...)"
                          : "--sweep: parameter '" + *name + "' given twice");
  return o;
}

void print_usage(std::ostream& out) {
  out << "usage: shoal-ann-bench --base B --query Q [--gt G.ivecs] --metric l2|ip|cos --k 10 --index SPEC\n"
         "                       [--build-param NAME=V ...] [--sweep NAME=v1,v2,...] [--threads N] [--batch]\n"
         "                       [--csv FILE] [--plot FILE.png] [--peers] [--peer NAME] [--min-time SECONDS]\n"
         "                       [--rounds R] [--max-base N] [--max-query N] [--save FILE]\n"
         "                       [--load FILE [--mmap] [--verify L]]\n"
         "                       [--shards N [--sharding hash|range|semantic|hybrid] [--shard-probe P]\n"
         "                        [--replicas R] [--groups G]]\n\n"
         "Builds the index, then per sweep point searches the queries (one per call and thread, or one batch\n"
         "with --batch) for at least --min-time seconds and prints one CSV row:\n"
         "  library,index,search_params,build_s,index_bytes,recall,qps,p50_ms,p99_ms,threads\n\n"
         "options:\n";
  for (const option_spec& s : specs) {
    std::string left(s.name);
    if (!s.value_name.empty()) append_item(left, s.value_name, " ");
    left.resize(std::max<std::size_t>(left.size() + 2, 30), ' ');
    out << "  " << left << s.help << '\n';
  }
  out << "\nrecall: the share of each query's k true ids among its k results, averaged over the queries. It\n"
         "compares ids, not distances: where another base vector ties the k-th true distance (e.g. a duplicate),\n"
         "a result holding it instead scores lower; ann-benchmarks counts any result within that distance + 1e-3.\n"
         "\nexit status: 0 success, 1 a failure while reading or running, 2 a bad command line or a parameter\n"
         "the index or the data rejects (unknown option, index spec or parameter; a value out of the index's or\n"
         "the collection's range, or too large for the data, e.g. more IVF lists than base vectors; ground truth\n"
         "that does not fit the queries, k or the base, or that fits another metric better than --metric: exact\n"
         "search of its first 100 queries is compared under each). Options, specs, sweep points, the --shards\n"
         "layout and the --load file's header are checked before the data is read (its first row gives the\n"
         "dimension).\n";
}

}  // namespace shoal::bench
