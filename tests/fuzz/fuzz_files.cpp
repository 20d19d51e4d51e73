// libFuzzer target over the readers of everything that is not an index file: NumPy `.npy`, `.fvecs` /
// `.ivecs` / `.bvecs`, a collection directory's manifest and write-ahead log, a multimodal store's
// manifest, and a serialised projection. Whatever the bytes, a reader must either succeed or throw
// shoal::error — never crash, hang, leak or read out of bounds (build with -fsanitize=fuzzer,address;
// fuzz_load.cpp covers the index files).
//
//   mkdir -p /tmp/fuzz-new && fuzz_files -max_total_time=60 /tmp/fuzz-new tests/fuzz/corpus-files
//
// The first input byte picks the reader (its low three bits, `reader` below) and whether checksums are
// recomputed before the file is read (bit 3): the log's per-record checksums, the store manifest's and
// the projection's whole-file checksum. A mutated file then fails the structural checks behind the
// checksum (ops, sizes, sequences, ids, routing keys, names, dimensions) instead of the checksum itself,
// which a fuzzer cannot forge. The rest is the file. A collection manifest or log is read as part of a
// template collection directory (range-sharded, so that logged routing keys matter; 2 Flat shards of
// dimension 4), a store manifest as part of a template store (a native and a projected modality,
// linked), each built once per process.
//
// The checked-in corpus (tests/fuzz/corpus-files) is what this target writes, with the selector byte,
// when SHOAL_FUZZ_WRITE_SEEDS names a directory:
//   SHOAL_FUZZ_WRITE_SEEDS=tests/fuzz/corpus-files fuzz_files -runs=0

#include <sys/mman.h>
#include <unistd.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "shoal/collection/collection.hpp"
#include "shoal/core/error.hpp"
#include "shoal/io/format.hpp"
#include "shoal/io/vecs.hpp"
#include "shoal/multimodal/projection.hpp"
#include "shoal/multimodal/store.hpp"

namespace {

namespace fs = std::filesystem;

enum reader : std::uint8_t { npy = 0, vecs = 1, manifest = 2, wal = 3, store_manifest = 4, projection = 5 };
constexpr std::uint8_t fix_checksums = 8;
constexpr std::size_t dim = 4;
constexpr const char* wal_name = "wal.log";
constexpr const char* manifest_name = "MANIFEST.shoal";
constexpr const char* store_manifest_name = "MULTIMODAL.shoal";

std::vector<char> file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const fs::path& path, const void* data, std::size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out) std::abort();
}

/// A private scratch folder for this process, on tmpfs where there is one. Nothing stays in it between
/// calls (libFuzzer may end the process without running exit handlers): see `scratch_use`.
const fs::path& scratch() {
  static const fs::path dir = (fs::exists("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path()) /
                              ("shoal-fuzz-files-" + std::to_string(::getpid()));
  return dir;
}

/// The scratch folder, created for one call and removed with everything in it afterwards.
struct scratch_use {
  scratch_use() { fs::create_directories(scratch()); }
  ~scratch_use() {
    std::error_code ec;
    fs::remove_all(scratch(), ec);
  }
  scratch_use(const scratch_use&) = delete;
  scratch_use& operator=(const scratch_use&) = delete;
};

/// A directory tree kept in memory (path relative to its root → bytes), written out afresh for each input.
struct directory_template {
  std::map<std::string, std::vector<char>> files;

  void capture(const fs::path& root) {
    for (const auto& entry : fs::recursive_directory_iterator(root))
      if (entry.is_regular_file()) files[fs::relative(entry.path(), root).string()] = file_bytes(entry.path());
  }
  [[nodiscard]] const std::vector<char>& file(const std::string& name) const { return files.at(name); }

  /// A fresh copy in `target`, the file `name` (relative) holding `bytes` instead when `bytes` is given.
  void copy_to(const fs::path& target, const std::string& name = {}, const std::vector<char>* bytes = nullptr) const {
    fs::remove_all(target);
    for (const auto& [path, content] : files) {
      const std::vector<char>& use = path == name && bytes != nullptr ? *bytes : content;
      fs::create_directories((target / path).parent_path());
      write_file(target / path, use.data(), use.size());
    }
    if (bytes != nullptr && !files.contains(name)) write_file(target / name, bytes->data(), bytes->size());
  }
};

/// A collection directory: a snapshot holding ids 1-3, and an empty log.
const directory_template& collection_dir() {
  static const directory_template t = [] {
    const scratch_use use;
    const fs::path dir = scratch() / "template";
    shoal::collection_options o;
    o.dim = dim;
    o.index = "Flat";
    o.policy = shoal::sharding::range;
    o.shards = 2;
    o.range_bounds = {100};
    o.directory = dir;
    o.sync = shoal::wal_sync::os_buffered;
    {
      shoal::collection c(o);
      const std::array<float, 3 * dim> v{1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0};
      const std::array<shoal::vector_id, 3> ids{1, 2, 3};
      const std::array<std::uint64_t, 3> keys{10, 150, 20};
      c.add({v.data(), 3, dim}, ids, keys);
      c.checkpoint();
    }
    directory_template d;
    d.capture(dir);
    return d;
  }();
  return t;
}

/// The projection of the template store's "text" modality: 3 dimensions into the 4 of the shared space.
shoal::projection text_projection() {
  return {3, dim, {1, 0, 0, 0, 1, 0, 0, 0, 1, 0.5f, 0.5f, 0.5f}, {0, 0, 0, 0.25f}};
}

/// A multimodal store directory: a native "image" modality and a projected "text" one, linked pairwise.
const directory_template& store_dir() {
  static const directory_template t = [] {
    const scratch_use use;
    const fs::path dir = scratch() / "store";
    shoal::multimodal_store store({.shared_dim = dim, .shared_metric = shoal::metric::cosine});
    shoal::modality_options image;
    image.collection.dim = dim;
    image.collection.metric = shoal::metric::cosine;
    image.collection.index = "Flat";
    image.native = true;
    store.add_modality("image", image);
    shoal::modality_options text;
    text.collection.dim = 3;
    text.collection.index = "Flat";
    text.to_shared = text_projection();
    store.add_modality("text", text);
    const std::array<float, 2 * dim> images{1, 0, 0, 0, 0, 1, 1, 0};
    const std::array<float, 2 * 3> texts{1, 0, 0, 0, 1, 1};
    const std::array<shoal::vector_id, 2> ids{5, 6};
    store.add("image", {images.data(), 2, dim}, ids);
    store.add("text", {texts.data(), 2, 3}, ids);
    store.link("image", ids, "text", ids);
    store.save(dir);
    directory_template d;
    d.capture(dir);
    return d;
  }();
  return t;
}

/// Recomputes every whole record's checksum (the log layout of src/collection/wal.hpp).
void fix_record_checksums(std::vector<char>& log) {
  constexpr std::size_t header = 24, head = 8;
  for (std::size_t at = header; log.size() - at >= head && at < log.size();) {
    std::uint32_t payload = 0;
    std::memcpy(&payload, log.data() + at, 4);
    if (payload > log.size() - at - head) break;
    const std::uint32_t crc = shoal::crc32c(log.data() + at + head, payload);
    std::memcpy(log.data() + at + 4, &crc, 4);
    at += head + payload;
  }
}

/// Recomputes the trailing whole-file checksum (a store manifest, a serialised projection).
void fix_trailing_checksum(std::vector<char>& bytes) {
  if (bytes.size() < 4) return;
  const std::uint32_t crc = shoal::crc32c(bytes.data(), bytes.size() - 4);
  std::memcpy(bytes.data() + bytes.size() - 4, &crc, 4);
}

void open_and_use(const fs::path& dir, bool mapped) {
  try {
    const shoal::collection c = shoal::collection::open(dir, {.mmap = mapped, .verify = shoal::verify_level::none});
    const std::array<float, dim> query{0.5f, 0.5f, 0.5f, 0.5f};
    (void)c.search({query.data(), 1, dim}, 3);
    (void)c.size();
    (void)c.contains(1);
  } catch (const shoal::error&) {
  }
}

void open_store_and_use(const fs::path& dir) {
  try {
    const shoal::multimodal_store store = shoal::multimodal_store::open(dir);
    const std::array<float, 3> query{0.5f, 0.5f, 0.5f};
    (void)store.search("text", {query.data(), 1, 3}, "image", 2);
  } catch (const shoal::error&) {
  }
}

template <class Read>
void read_quietly(const Read& read) {
  try {
    (void)read();
  } catch (const shoal::error&) {
  }
}

/// Writes the seed corpus into `out`: one valid file per reader, each behind its selector byte.
void write_seeds(const fs::path& out) {
  fs::create_directories(out);
  const auto seed_bytes = [&](const char* name, std::uint8_t selector, std::vector<char> bytes) {
    bytes.insert(bytes.begin(), static_cast<char>(selector));
    write_file(out / name, bytes.data(), bytes.size());
  };
  const auto seed = [&](const char* name, std::uint8_t selector, const fs::path& from) {
    seed_bytes(name, selector, file_bytes(from));
  };
  const scratch_use use;
  const fs::path tmp = scratch() / "seeds";
  fs::create_directories(tmp);
  shoal::matrix<float> x(3, dim);
  for (std::size_t i = 0; i < x.values.size(); ++i) x.values[i] = static_cast<float>(i) * 0.25f;
  shoal::matrix<std::int32_t> ids(3, 2);
  for (std::size_t i = 0; i < ids.values.size(); ++i) ids.values[i] = static_cast<std::int32_t>(i);
  shoal::matrix<std::uint8_t> bytes(2, 3);
  for (std::size_t i = 0; i < bytes.values.size(); ++i) bytes.values[i] = static_cast<std::uint8_t>(i * 40);
  shoal::io::write_npy(tmp / "f.npy", x.view());
  shoal::io::write_npy(tmp / "i.npy", ids.view());
  shoal::io::write_fvecs(tmp / "f.fvecs", x.view());
  shoal::io::write_ivecs(tmp / "i.ivecs", ids.view());
  shoal::io::write_bvecs(tmp / "b.bvecs", bytes.view());
  seed("npy-float32", npy, tmp / "f.npy");
  seed("npy-int32", npy, tmp / "i.npy");
  seed("fvecs", vecs, tmp / "f.fvecs");
  seed("ivecs", vecs, tmp / "i.ivecs");
  seed("bvecs", vecs, tmp / "b.bvecs");
  seed_bytes("manifest", manifest, collection_dir().file(manifest_name));
  seed_bytes("store-manifest", store_manifest | fix_checksums, store_dir().file(store_manifest_name));
  const std::vector<std::byte> p = text_projection().serialize();
  seed_bytes("projection", projection | fix_checksums,
             {reinterpret_cast<const char*>(p.data()), reinterpret_cast<const char*>(p.data()) + p.size()});
  // A log of every kind of record: open the template and write to it.
  const fs::path dir = tmp / "collection";
  collection_dir().copy_to(dir);
  {
    shoal::collection c = shoal::collection::open(dir);
    const std::array<float, 2 * dim> v{0, 0, 0, 1, 1, 1, 0, 0};
    const std::array<shoal::vector_id, 2> add_ids{7, 8};
    const std::array<std::uint64_t, 2> keys{30, 170};
    c.add({v.data(), 2, dim}, add_ids);
    c.upsert({v.data(), 2, dim}, std::span(add_ids), keys);
    c.remove(2);
  }
  seed("wal", wal | fix_checksums, dir / wal_name);
  seed("wal-raw", wal, dir / wal_name);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)collection_dir();
  (void)store_dir();
  if (const char* out = std::getenv("SHOAL_FUZZ_WRITE_SEEDS")) write_seeds(out);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::uint8_t selector = data[0];
  std::vector<char> body(reinterpret_cast<const char*>(data) + 1, reinterpret_cast<const char*>(data) + size);
  const scratch_use use;
  const fs::path file = scratch() / "input";
  const bool fix = (selector & fix_checksums) != 0;
  switch (selector & 7) {
    case npy:
      write_file(file, body.data(), body.size());
      read_quietly([&] { return shoal::io::read_npy_header(file); });
      read_quietly([&] { return shoal::io::read_npy(file); });
      read_quietly([&] { return shoal::io::read_npy(file, 2); });
      read_quietly([&] { return shoal::io::read_npy_ids(file); });
      break;
    case vecs:
      write_file(file, body.data(), body.size());
      read_quietly([&] { return shoal::io::read_fvecs(file); });
      read_quietly([&] { return shoal::io::read_fvecs(file, 2); });
      read_quietly([&] { return shoal::io::read_ivecs(file); });
      read_quietly([&] { return shoal::io::read_bvecs(file); });
      break;
    case manifest: {
      const fs::path dir = scratch() / "collection";
      collection_dir().copy_to(dir, manifest_name, &body);
      open_and_use(dir, false);
      collection_dir().copy_to(dir, manifest_name, &body);
      open_and_use(dir, true);
      break;
    }
    case wal: {
      if (fix) fix_record_checksums(body);
      const fs::path dir = scratch() / "collection";
      collection_dir().copy_to(dir, wal_name, &body);
      open_and_use(dir, false);
      break;
    }
    case store_manifest: {
      if (fix) fix_trailing_checksum(body);
      const fs::path dir = scratch() / "store";
      store_dir().copy_to(dir, store_manifest_name, &body);
      open_store_and_use(dir);
      break;
    }
    case projection:
      if (fix) fix_trailing_checksum(body);
      read_quietly([&] {
        return shoal::projection::deserialize({reinterpret_cast<const std::byte*>(body.data()), body.size()});
      });
      break;
    default:
      break;
  }
  return 0;
}
