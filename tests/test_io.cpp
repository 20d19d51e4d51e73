#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include <catch2/catch.hpp>

#include "shoal/core/error.hpp"
#include "shoal/core/types.hpp"
#include "shoal/eval/eval.hpp"
#include "shoal/io/vecs.hpp"
#include "test_support.hpp"

using namespace shoal;
using namespace shoal::io;
using shoal::test::fails_with;
namespace fs = std::filesystem;

namespace {

/// A fresh directory under the system's temporary directory, removed with its content at scope exit.
class temp_dir {
 public:
  temp_dir() {
    static int counter = 0;
    const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
    path_ = fs::temp_directory_path() / ("shoal-test-io-" + std::to_string(::getpid()) + "-" +
                                         std::to_string(counter++) + "-" + std::to_string(now));
    REQUIRE(fs::create_directory(path_));
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  [[nodiscard]] fs::path operator/(std::string_view name) const { return path_ / name; }
  [[nodiscard]] const fs::path& path() const noexcept { return path_; }
  /// Names of the entries in the directory, to see that no temporary file was left behind.
  [[nodiscard]] std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(path_)) names.push_back(e.path().filename().string());
    return names;
  }

 private:
  fs::path path_;
};

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

using test::npy_file;
using test::raw;
using test::raw_value;
using test::write_bytes;

/// A .fvecs/.ivecs/.bvecs row by hand: the int32 dimension, then the values.
template <class T>
std::string vecs_row(std::int32_t dim, const std::vector<T>& values) {
  return raw_value(dim) + raw(values);
}

template <class T>
matrix<T> random_matrix(std::size_t rows, std::size_t dim, std::uint64_t seed) {
  matrix<T> m(rows, dim);
  splitmix64 rng(seed);
  for (T& v : m.values) {
    if constexpr (std::is_floating_point_v<T>)
      v = rng.uniform() * 200.0f - 100.0f;
    else
      v = static_cast<T>(rng.next());  // wraps: every bit pattern of T
  }
  return m;
}

template <class To, class From>
std::vector<To> converted(const matrix<From>& m) {
  return std::vector<To>(m.values.begin(), m.values.end());
}

template <class T>
std::vector<T> as_vector(const matrix<T>& m) {
  return std::vector<T>(m.values.begin(), m.values.end());
}

/// Writes a seeded rows x dim matrix of a texmex format, reads it back and compares; the file holds per row
/// a 4-byte dimension and the values.
template <class T>
void round_trip(const fs::path& path, std::size_t rows, std::size_t dim,
                void (*write)(const fs::path&, matrix_view<const T>), matrix<T> (*read)(const fs::path&, std::size_t)) {
  const auto m = random_matrix<T>(rows, dim, rows * 1000 + dim);
  write(path, m);
  const matrix<T> back = read(path, 0);
  CHECK(back.rows == rows);
  CHECK(back.dim == dim);
  CHECK(back.values == m.values);
  CHECK(fs::file_size(path) == rows * (4 + sizeof(T) * dim));
}

}  // namespace

TEST_CASE("fvecs, ivecs and bvecs round-trip exactly", "[io]") {
  const temp_dir dir;
  for (const std::size_t dim : {1u, 7u, 128u}) {
    CAPTURE(dim);
    round_trip<float>(dir / "a.fvecs", 33, dim, write_fvecs, read_fvecs);
    round_trip<std::int32_t>(dir / "a.ivecs", 20, dim, write_ivecs, read_ivecs);
    round_trip<std::uint8_t>(dir / "a.bvecs", 17, dim, write_bvecs, read_bvecs);
  }
  // A strided view writes only its columns.
  const auto wide = random_matrix<float>(5, 10, 9);
  write_fvecs(dir / "s.fvecs", matrix_view<const float>(wide.values.data(), 5, 3, 10));
  const matrix<float> narrow = read_fvecs(dir / "s.fvecs");
  REQUIRE(narrow.dim == 3);
  for (std::size_t r = 0; r < 5; ++r)
    for (std::size_t j = 0; j < 3; ++j) CHECK(narrow.row(r)[j] == wide.row(r)[j]);
  CHECK(dir.entries().size() == 4);  // no temporary files left
}

TEST_CASE("npy round-trips float32, int32, uint8 and int8", "[io]") {
  const temp_dir dir;
  const auto f = random_matrix<float>(9, 13, 1);
  write_npy(dir / "f.npy", f);
  CHECK(read_npy(dir / "f.npy").values == f.values);
  const npy_header hf = read_npy_header(dir / "f.npy");
  CHECK(hf.dtype == npy_dtype::float32);
  CHECK(hf.rows == 9);
  CHECK(hf.dim == 13);

  const auto i = random_matrix<std::int32_t>(6, 4, 2);
  write_npy(dir / "i.npy", i);
  CHECK(read_npy_header(dir / "i.npy").dtype == npy_dtype::int32);
  CHECK(read_npy_ids(dir / "i.npy").values == i.values);
  // As vectors (float32), exactly or not at all: values beyond 2^24 would be rounded silently.
  REQUIRE_THROWS_MATCHES(read_npy(dir / "i.npy"), shoal::error, fails_with(errc::unsupported, "no exact float32"));
  matrix<std::int32_t> small_ints = i;
  for (std::int32_t& v : small_ints.values) v %= std::int32_t{1} << 24;
  small_ints.values[0] = std::int32_t{1} << 24;
  // Larger values that float32 holds exactly are read too.
  small_ints.values[1] = (std::int32_t{1} << 24) + 2;
  small_ints.values[2] = std::numeric_limits<std::int32_t>::min();
  small_ints.values[3] = std::int32_t{3} << 29;
  write_npy(dir / "i.npy", small_ints);
  CHECK(as_vector(read_npy(dir / "i.npy")) == converted<float>(small_ints));

  const auto u = random_matrix<std::uint8_t>(7, 5, 3);
  write_npy(dir / "u.npy", u);
  CHECK(read_npy_header(dir / "u.npy").dtype == npy_dtype::uint8);
  CHECK(as_vector(read_npy(dir / "u.npy")) == converted<float>(u));
  CHECK(as_vector(read_npy_ids(dir / "u.npy")) == converted<std::int32_t>(u));

  const auto s = random_matrix<std::int8_t>(8, 3, 4);
  write_npy(dir / "s.npy", s);
  CHECK(read_npy_header(dir / "s.npy").dtype == npy_dtype::int8);
  CHECK(as_vector(read_npy(dir / "s.npy")) == converted<float>(s));
  CHECK(as_vector(read_npy_ids(dir / "s.npy")) == converted<std::int32_t>(s));
  CHECK(*std::min_element(s.values.begin(), s.values.end()) < 0);  // negative bytes really were written

  // Zero rows is a valid array.
  write_npy(dir / "e.npy", matrix_view<const float>(nullptr, 0, 6));
  const matrix<float> e = read_npy(dir / "e.npy");
  CHECK(e.rows == 0);
  CHECK(e.dim == 6);
}

TEST_CASE("write_npy writes numpy's own layout: format 1.0, header padded to 64 bytes", "[io]") {
  const temp_dir dir;
  const auto f = random_matrix<float>(3, 5, 1);
  write_npy(dir / "f.npy", f);
  const std::string bytes = read_bytes(dir / "f.npy");
  REQUIRE(bytes.size() == 128 + 3 * 5 * 4);  // 10 + 60 + 1 bytes of preamble and header, padded to 128
  CHECK(bytes.substr(0, 8) == std::string("\x93NUMPY\x01\x00", 8));
  std::uint16_t header_len = 0;
  std::memcpy(&header_len, bytes.data() + 8, 2);
  CHECK(header_len == 128 - 10);
  const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 5), }";
  CHECK(bytes.substr(10, dict.size()) == dict);
  CHECK(bytes.substr(10 + dict.size(), 128 - 11 - dict.size()) == std::string(128 - 11 - dict.size(), ' '));
  CHECK(bytes[127] == '\n');
  CHECK(bytes.substr(128) == raw(as_vector(f)));

  write_npy(dir / "u.npy", random_matrix<std::uint8_t>(2, 2, 1));
  CHECK(read_bytes(dir / "u.npy").find("'descr': '|u1'") != std::string::npos);
  write_npy(dir / "s.npy", random_matrix<std::int8_t>(2, 2, 1));
  CHECK(read_bytes(dir / "s.npy").find("'descr': '|i1'") != std::string::npos);
  write_npy(dir / "i.npy", random_matrix<std::int32_t>(2, 2, 1));
  CHECK(read_bytes(dir / "i.npy").find("'descr': '<i4'") != std::string::npos);

  // A strided view is written row by row.
  write_npy(dir / "v.npy", matrix_view<const float>(f.values.data(), 2, 2, 5));
  const matrix<float> v = read_npy(dir / "v.npy");
  REQUIRE(v.rows == 2);
  REQUIRE(v.dim == 2);
  CHECK(v.values == aligned_vector<float>{f.row(0)[0], f.row(0)[1], f.row(1)[0], f.row(1)[1]});
}

TEST_CASE("npy float16 converts exactly, subnormals, infinities and NaN included", "[io]") {
  const temp_dir dir;
  const std::vector<std::uint16_t> halves = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x7C00, 0xFC00,
                                             0x8000, 0x03FF, 0x0400, 0x3555, 0x7E00, 0xFD01};
  write_bytes(dir / "h.npy", npy_file(1, "{'descr': '<f2', 'fortran_order': False, 'shape': (3, 4), }", raw(halves)));
  const npy_header h = read_npy_header(dir / "h.npy");
  CHECK(h.dtype == npy_dtype::float16);
  CHECK(h.rows == 3);
  CHECK(h.dim == 4);
  const matrix<float> m = read_npy(dir / "h.npy");
  REQUIRE(m.values.size() == 12);
  CHECK(m.values[0] == 1.0f);
  CHECK(m.values[1] == -2.0f);
  CHECK(m.values[2] == 65504.0f);
  CHECK(m.values[3] == std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK(m.values[4] == std::numeric_limits<float>::infinity());
  CHECK(m.values[5] == -std::numeric_limits<float>::infinity());
  CHECK(m.values[6] == 0.0f);
  CHECK(std::signbit(m.values[6]));
  CHECK(m.values[7] == std::ldexp(1023.0f, -24));  // largest subnormal
  CHECK(m.values[8] == std::ldexp(1.0f, -14));     // smallest normal
  CHECK(m.values[9] == std::ldexp(1365.0f, -12));  // 0x3555 = 1.0101010101b · 2^-2
  CHECK(std::isnan(m.values[10]));
  CHECK(std::isnan(m.values[11]));
  CHECK(std::signbit(m.values[11]));
  REQUIRE_THROWS_MATCHES(read_npy_ids(dir / "h.npy"), shoal::error, fails_with(errc::unsupported, "<f2"));
}

TEST_CASE("npy float16: all 65536 values match the definition", "[io]") {
  const temp_dir dir;
  std::vector<std::uint16_t> all(65536);
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = static_cast<std::uint16_t>(i);
  write_bytes(dir / "all.npy", npy_file(1, "{'descr': '<f2', 'fortran_order': False, 'shape': (65536,), }", raw(all)));
  const matrix<float> m = read_npy(dir / "all.npy");
  REQUIRE(m.rows == 65536);
  REQUIRE(m.dim == 1);
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < all.size(); ++i) {
    const int exponent = static_cast<int>((i >> 10) & 0x1f);
    const auto mantissa = static_cast<float>(i & 0x3ff);
    const float sign = (i & 0x8000) != 0 ? -1.0f : 1.0f;
    const float got = m.values[i];
    bool ok = std::signbit(got) == (sign < 0);
    if (exponent == 31)
      ok = ok && (mantissa == 0 ? std::isinf(got) : std::isnan(got));
    else if (exponent == 0)
      ok = ok && got == sign * std::ldexp(mantissa, -24);
    else
      ok = ok && got == sign * std::ldexp(1024.0f + mantissa, exponent - 25);
    if (!ok) ++wrong;
  }
  CHECK(wrong == 0);
}

TEST_CASE("npy headers of format 2.0 and 3.0, in any key order and spacing", "[io]") {
  const temp_dir dir;
  const std::vector<float> values = {1, 2, 3, 4, 5, 6};
  write_bytes(dir / "v2.npy", npy_file(2, "{'shape': (2, 3), 'fortran_order': False, 'descr': '<f4'}", raw(values)));
  const matrix<float> a = read_npy(dir / "v2.npy");
  CHECK(a.rows == 2);
  CHECK(a.dim == 3);
  CHECK(as_vector(a) == values);

  const std::vector<std::int32_t> ids = {7, -1, 9, 11};
  write_bytes(dir / "v3.npy",
              npy_file(3, "{ \"descr\" : '<i4' ,\t'fortran_order':False,'shape':( 4 , ) , }   ", raw(ids)));
  const npy_header h = read_npy_header(dir / "v3.npy");
  CHECK(h.rows == 4);  // 1-D: n rows of dimension 1
  CHECK(h.dim == 1);
  CHECK(as_vector(read_npy_ids(dir / "v3.npy")) == ids);

  // Python 2's long integers, '=' (native) byte order.
  write_bytes(dir / "py2.npy",
              npy_file(1, "{'descr': '=f4', 'fortran_order': False, 'shape': (3L, 2L), }", raw(values)));
  const matrix<float> c = read_npy(dir / "py2.npy");
  CHECK(c.rows == 3);
  CHECK(c.dim == 2);
  CHECK(as_vector(c) == values);

  // Byte order means nothing for single bytes.
  write_bytes(dir / "b.npy", npy_file(1, "{'descr': '<u1', 'fortran_order': False, 'shape': (2,), }", "\x05\xff"));
  CHECK(as_vector(read_npy(dir / "b.npy")) == std::vector<float>{5.0f, 255.0f});
}

TEST_CASE("npy int64 ids (numpy's default integer) read when every value fits 32 bits", "[io]") {
  const temp_dir dir;
  const std::vector<std::int64_t> ids = {0, 59999, -1, 2147483647};
  write_bytes(dir / "gt.npy", npy_file(1, "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 2), }", raw(ids)));
  CHECK(as_vector(read_npy_ids(dir / "gt.npy")) == std::vector<std::int32_t>{0, 59999, -1, 2147483647});
  CHECK(as_vector(read_ids(dir / "gt.npy")) == std::vector<std::int32_t>{0, 59999, -1, 2147483647});
  // As vectors, int64 would lose digits in float32: refused rather than rounded.
  REQUIRE_THROWS_MATCHES(read_npy(dir / "gt.npy"), shoal::error, fails_with(errc::unsupported, "int64"));
  const std::vector<std::int64_t> big = {1, std::int64_t{1} << 40};
  write_bytes(dir / "big.npy", npy_file(1, "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }", raw(big)));
  REQUIRE_THROWS_MATCHES(read_npy_ids(dir / "big.npy"), shoal::error,
                         fails_with(errc::unsupported, "id 1099511627776 at row 1 does not fit 32 bits"));
}

TEST_CASE("npy rejects valid but unsupported arrays as unsupported", "[io]") {
  const temp_dir dir;
  const std::string data = raw(std::vector<float>{1, 2, 3, 4, 5, 6});
  const auto rejects = [&](std::string_view dict, const std::string& fragment, int major = 1) {
    CAPTURE(dict);
    write_bytes(dir / "x.npy", npy_file(major, dict, data));
    REQUIRE_THROWS_MATCHES(read_npy(dir / "x.npy"), shoal::error, fails_with(errc::unsupported, fragment));
    REQUIRE_THROWS_MATCHES(read_npy_header(dir / "x.npy"), shoal::error, fails_with(errc::unsupported, fragment));
  };
  rejects("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", "Fortran");
  rejects("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", "big-endian dtype '>f4'");
  rejects("{'descr': '|f4', 'fortran_order': False, 'shape': (2, 3), }", "no byte order");
  rejects("{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", "unsupported dtype '<f8'");
  rejects("{'descr': '<u8', 'fortran_order': False, 'shape': (3,), }", "unsupported dtype '<u8'");
  rejects("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (6,), }", "structured");
  rejects("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 3), }", "3 dimensions");
  rejects("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", "0 dimensions");
  rejects("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", "version 4.0", 4);
  REQUIRE_THROWS_MATCHES(read_npy(dir / "x.npy"), shoal::error,
                         fails_with(errc::unsupported, (dir / "x.npy").string()));
}

TEST_CASE("npy rejects malformed and truncated files as corrupt", "[io]") {
  const temp_dir dir;
  const std::string data = raw(std::vector<float>(12, 1.0f));  // 48 bytes
  const auto corrupt = [&](const std::string& bytes, const std::string& fragment, std::size_t max_rows = 0) {
    write_bytes(dir / "x.npy", bytes);
    REQUIRE_THROWS_MATCHES(read_npy(dir / "x.npy", max_rows), shoal::error, fails_with(errc::corrupt_file, fragment));
    REQUIRE_THROWS_MATCHES(read_npy(dir / "x.npy", max_rows), shoal::error,
                           fails_with(errc::corrupt_file, (dir / "x.npy").string()));
  };
  const auto dict = [](std::string_view shape) {
    return "{'descr': '<f4', 'fortran_order': False, 'shape': " + std::string(shape) + ", }";
  };
  corrupt(npy_file(1, dict("(3, 3)"), data), "x.npy: 12 bytes follow the data of shape (3, 3)");
  corrupt(npy_file(1, dict("(5, 3)"), data), "truncated: shape (5, 3) of '<f4' needs 5 rows of 12 bytes");
  corrupt(npy_file(1, dict("(1000000000000, 128)"), data), "truncated", 1);  // not a bad_alloc
  corrupt(npy_file(1, dict("(100000000000000000,)"), data), "truncated");
  corrupt(npy_file(1, dict("(2, 0)"), ""), "dimension 0");
  corrupt(npy_file(1, dict("(-2, 3)"), data), "negative extent");
  corrupt(npy_file(1, dict("(2, 100000000)"), data), "dimension 100000000");
  corrupt(npy_file(1, dict("(99999999999999999999, 3)"), data), "integer too large");
  corrupt(std::string("\x93NUMPZ\x01\x00", 8) + data, "bad magic");
  corrupt("PK\x03\x04", "bad magic");
  corrupt("", "empty file");
  corrupt(std::string("\x93NUMPY\x02\x00\x10", 9), "truncated");
  corrupt(npy_file(1, dict("(2, 3)"), data).substr(0, 30), "truncated: header length");
  corrupt(npy_file(1, "{'descr': '<f4', 'fortran_order': False}", data), "lacks 'shape'");
  corrupt(npy_file(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (12,), 'x': 1}", data), "unexpected key 'x'");
  corrupt(npy_file(1, "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (12,)}", data), "repeated");
  corrupt(npy_file(1, "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (12,)}", data), "malformed .npy header");
  corrupt(npy_file(1, "{'descr': '<f4', 'fortran_order': Falsey, 'shape': (12,)}", data), "malformed .npy header");
  corrupt(npy_file(1, "{'descr': '<f4', 'fortran_order': 0, 'shape': (12,)}", data), "'fortran_order' is not");
  corrupt(npy_file(1, "{'descr': '<f4', 'fortran_order': False, 'shape': 12}", data), "'shape' is not a tuple");
  corrupt(npy_file(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (12,)", data), "expected '}'");
  corrupt(npy_file(1, "{'descr': '<f4, 'fortran_order': False, 'shape': (12,)}", data), "malformed .npy header");
  corrupt(npy_file(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (12,)} x", data), "after the dictionary");
  corrupt(npy_file(1, std::string(50, '(') + std::string(50, ')'), data), "malformed .npy header");
  corrupt(npy_file(1, "{'shape': " + std::string(10000, '(') + "}", data), "nesting too deep");
  // Bytes of a damaged header are quoted escaped: a NUL cut the message short, control bytes garbled it.
  corrupt(npy_file(1, std::string("{\0\x1b[2J\\ 'descr'", 15), data),
          "at character 1 of \"{\\x00\\x1b[2J\\x5c 'descr'");
}

TEST_CASE("fvecs, ivecs and bvecs readers report inconsistent, truncated and invalid files", "[io]") {
  const temp_dir dir;
  const fs::path f = dir / "x.fvecs";
  const auto corrupt = [&](const std::string& bytes, const std::string& fragment) {
    write_bytes(f, bytes);
    REQUIRE_THROWS_MATCHES(read_fvecs(f), shoal::error, fails_with(errc::corrupt_file, fragment));
    REQUIRE_THROWS_MATCHES(read_fvecs(f), shoal::error, fails_with(errc::corrupt_file, f.string() + ": "));
  };
  const std::vector<float> four = {1, 2, 3, 4};
  // Row 1 shorter, file size not a multiple of row 0's row size.
  corrupt(vecs_row(4, four) + vecs_row(3, std::vector<float>{1, 2, 3}) + vecs_row(4, four),
          "row 1 has dimension 3, row 0 has 4");
  // Row 2 of a different dimension although the size is a multiple of 20 bytes.
  corrupt(vecs_row(4, four) + vecs_row(4, four) + vecs_row(2, std::vector<float>{1, 2}) + std::string(8, '\0'),
          "row 2 has dimension 2, row 0 has 4");
  // The last, partial row declares a different dimension.
  corrupt(vecs_row(4, four) + vecs_row(2, std::vector<float>{1, 2}), "row 1 has dimension 2, row 0 has 4");
  corrupt(vecs_row(-5, four), "non-positive dimension -5");
  corrupt(vecs_row(0, four), "non-positive dimension 0");
  corrupt(vecs_row(1 << 30, four), "dimension 1073741824 in row 0 exceeds the limit");
  corrupt("", "empty file");
  corrupt(std::string("\x04\x00", 2), "truncated: 2 bytes");
  corrupt(vecs_row(4, std::vector<float>{1, 2}), "truncated: expected 4 + 4*4 bytes for row 0, 12 left");

  // Cut mid-row: a valid file missing its last 10 bytes.
  write_fvecs(f, random_matrix<float>(3, 8, 5));
  fs::resize_file(f, 3 * 36 - 10);
  REQUIRE_THROWS_MATCHES(
      read_fvecs(f), shoal::error,
      fails_with(errc::corrupt_file, f.string() + ": truncated: expected 4 + 4*8 bytes for row 2, 26 left"));

  const fs::path b = dir / "x.bvecs";
  write_bytes(b, vecs_row(3, std::vector<std::uint8_t>{1, 2, 3}) + vecs_row(3, std::vector<std::uint8_t>{1}));
  REQUIRE_THROWS_MATCHES(read_bvecs(b), shoal::error,
                         fails_with(errc::corrupt_file, "truncated: expected 4 + 1*3 bytes for row 1, 5 left"));
  const fs::path i = dir / "x.ivecs";
  write_bytes(i, vecs_row(2, std::vector<std::int32_t>{1, 2}) + vecs_row(1, std::vector<std::int32_t>{1, 2}));
  REQUIRE_THROWS_MATCHES(read_ivecs(i), shoal::error,
                         fails_with(errc::corrupt_file, "row 1 has dimension 1, row 0 has 2"));
}

TEST_CASE("unreadable files are io errors naming the path", "[io]") {
  const temp_dir dir;
  const fs::path missing = dir / "missing.fvecs";
  REQUIRE_THROWS_MATCHES(read_fvecs(missing), shoal::error, fails_with(errc::io_error, missing.string()));
  REQUIRE_THROWS_MATCHES(read_fvecs(missing), shoal::error, fails_with(errc::io_error, "No such file"));
  REQUIRE_THROWS_MATCHES(read_npy(dir / "missing.npy"), shoal::error,
                         fails_with(errc::io_error, (dir / "missing.npy").string()));
  REQUIRE_THROWS_MATCHES(read_vectors(missing), shoal::error, fails_with(errc::io_error, missing.string()));
  REQUIRE_THROWS_MATCHES(read_ids(dir / "missing.ivecs"), shoal::error, fails_with(errc::io_error, "missing.ivecs"));
  fs::create_directory(dir / "d.fvecs");
  REQUIRE_THROWS_MATCHES(read_fvecs(dir / "d.fvecs"), shoal::error, fails_with(errc::io_error, "not a regular file"));
  // A FIFO without a writer would block a plain open.
  REQUIRE(::mkfifo((dir / "p.npy").c_str(), 0600) == 0);
  REQUIRE_THROWS_MATCHES(read_npy(dir / "p.npy"), shoal::error, fails_with(errc::io_error, "not a regular file"));
}

TEST_CASE("max_rows limits the rows read", "[io]") {
  const temp_dir dir;
  const auto f = random_matrix<float>(10, 6, 11);
  write_fvecs(dir / "a.fvecs", f);
  const matrix<float> first3 = read_fvecs(dir / "a.fvecs", 3);
  REQUIRE(first3.rows == 3);
  CHECK(first3.dim == 6);
  CHECK(std::equal(first3.values.begin(), first3.values.end(), f.values.begin()));
  CHECK(read_fvecs(dir / "a.fvecs", 10).rows == 10);
  CHECK(read_fvecs(dir / "a.fvecs", 1000).values == f.values);

  // The rows after the limit are not read: a damaged tail does not matter.
  fs::resize_file(dir / "a.fvecs", 10 * 28 - 5);
  CHECK(read_fvecs(dir / "a.fvecs", 9).rows == 9);
  CHECK(read_fvecs(dir / "a.fvecs", 2).rows == 2);
  REQUIRE_THROWS_MATCHES(read_fvecs(dir / "a.fvecs", 10), shoal::error, fails_with(errc::corrupt_file, "row 9"));

  const auto i = random_matrix<std::int32_t>(5, 2, 12);
  write_ivecs(dir / "a.ivecs", i);
  CHECK(read_ivecs(dir / "a.ivecs", 4).rows == 4);
  const auto b = random_matrix<std::uint8_t>(5, 2, 13);
  write_bvecs(dir / "a.bvecs", b);
  const matrix<std::uint8_t> b1 = read_bvecs(dir / "a.bvecs", 1);
  REQUIRE(b1.rows == 1);
  CHECK(b1.values[1] == b.values[1]);

  write_npy(dir / "a.npy", f);
  const matrix<float> n4 = read_npy(dir / "a.npy", 4);
  REQUIRE(n4.rows == 4);
  CHECK(std::equal(n4.values.begin(), n4.values.end(), f.values.begin()));
  CHECK(read_npy(dir / "a.npy", 11).rows == 10);
  write_npy(dir / "i.npy", i);
  CHECK(read_npy_ids(dir / "i.npy", 2).rows == 2);
  CHECK(read_vectors(dir / "a.npy", 5).rows == 5);
  CHECK(read_ids(dir / "a.ivecs", 3).rows == 3);
}

TEST_CASE("read_vectors and read_ids dispatch by extension", "[io]") {
  const temp_dir dir;
  const auto f = random_matrix<float>(4, 3, 21);
  const auto b = random_matrix<std::uint8_t>(4, 3, 22);
  const auto i = random_matrix<std::int32_t>(4, 3, 23);
  write_fvecs(dir / "a.fvecs", f);
  write_bvecs(dir / "a.bvecs", b);
  write_npy(dir / "a.npy", f);
  write_ivecs(dir / "a.ivecs", i);
  write_npy(dir / "i.npy", i);
  CHECK(read_vectors(dir / "a.fvecs").values == f.values);
  const matrix<float> bf = read_vectors(dir / "a.bvecs");
  CHECK(bf.dim == 3);
  CHECK(as_vector(bf) == converted<float>(b));
  CHECK(read_vectors(dir / "a.npy").values == f.values);
  CHECK(read_ids(dir / "a.ivecs").values == i.values);
  CHECK(read_ids(dir / "i.npy").values == i.values);

  fs::copy_file(dir / "a.fvecs", dir / "UPPER.FVECS");
  CHECK(read_vectors(dir / "UPPER.FVECS").values == f.values);
  fs::copy_file(dir / "a.fvecs", dir / "a.txt");
  REQUIRE_THROWS_MATCHES(read_vectors(dir / "a.txt"), shoal::error, fails_with(errc::invalid_argument, "'.txt'"));
  REQUIRE_THROWS_MATCHES(read_vectors(dir / "a.ivecs"), shoal::error, fails_with(errc::invalid_argument, "a.ivecs"));
  REQUIRE_THROWS_MATCHES(read_ids(dir / "a.fvecs"), shoal::error, fails_with(errc::invalid_argument, "'.fvecs'"));
  REQUIRE_THROWS_MATCHES(read_ids(dir / "a.npy"), shoal::error, fails_with(errc::unsupported, "<f4"));
}

TEST_CASE("writers replace files atomically and report failures", "[io]") {
  const temp_dir dir;
  const fs::path target = dir / "t.fvecs";
  write_fvecs(target, random_matrix<float>(100, 16, 31));
  const auto small = random_matrix<float>(1, 2, 32);
  write_fvecs(target, small);
  CHECK(fs::file_size(target) == 12);
  CHECK(read_fvecs(target).values == small.values);
  write_npy(dir / "t.npy", random_matrix<float>(100, 16, 33));
  write_npy(dir / "t.npy", small);
  CHECK(fs::file_size(dir / "t.npy") == 128 + 8);
  CHECK(read_npy(dir / "t.npy").values == small.values);
  CHECK(dir.entries().size() == 2);

  // A rewritten file keeps its mode (a private file stays private), and a name near NAME_MAX, whose
  // temporary name would be too long with its suffix, still writes.
  fs::permissions(target, fs::perms::owner_read | fs::perms::owner_write);
  write_fvecs(target, small);
  CHECK(fs::status(target).permissions() == (fs::perms::owner_read | fs::perms::owner_write));
  const fs::path long_name = dir / (std::string(240, 'n') + ".fvecs");
  write_fvecs(long_name, small);
  CHECK(read_fvecs(long_name).values == small.values);
  fs::remove(long_name);
  CHECK(dir.entries().size() == 2);

  // The directory does not exist: nothing can be created.
  const fs::path nowhere = dir / "no" / "such" / "dir" / "x.fvecs";
  REQUIRE_THROWS_MATCHES(write_fvecs(nowhere, small), shoal::error, fails_with(errc::io_error, nowhere.string()));
  REQUIRE_THROWS_MATCHES(write_npy(dir / "no" / "x.npy", small), shoal::error,
                         fails_with(errc::io_error, "No such file or directory"));
  REQUIRE_THROWS_MATCHES(write_ivecs(dir / "no" / "x.ivecs", random_matrix<std::int32_t>(1, 1, 1)), shoal::error,
                         fails_with(errc::io_error, "x.ivecs"));

  // A target that is a directory is refused before anything is written (the whole file was written and
  // the rename failed, until a review): no temporary is left.
  fs::create_directories(dir / "busy.fvecs" / "inside");
  REQUIRE_THROWS_MATCHES(write_fvecs(dir / "busy.fvecs", small), shoal::error,
                         fails_with(errc::invalid_argument, "busy.fvecs is a directory, not a file to save to"));
  CHECK(dir.entries().size() == 3);
  CHECK(read_fvecs(target).values == small.values);  // untouched

  // What the formats cannot hold is refused before anything is written.
  const std::uint8_t byte[1] = {0};
  REQUIRE_THROWS_MATCHES(write_fvecs(dir / "e.fvecs", matrix_view<const float>(nullptr, 0, 4)), shoal::error,
                         fails_with(errc::invalid_argument, "0 rows"));
  REQUIRE_THROWS_MATCHES(write_bvecs(dir / "e.bvecs", matrix_view<const std::uint8_t>(byte, 1, 0)), shoal::error,
                         fails_with(errc::invalid_argument, "dimension 0"));
  REQUIRE_THROWS_MATCHES(write_npy(dir / "e.npy", matrix_view<const float>(small.values.data(), 1, 0)), shoal::error,
                         fails_with(errc::invalid_argument, "dimension 0"));
  CHECK(dir.entries().size() == 3);
}
