// Every kernel at every SIMD level this CPU has, against a double-precision reference, over odd and
// even dimensions and misaligned pointers.

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "distance/stream_tuning.hpp"  // src/: the streaming scans' tuning
#include "shoal/distance/distance.hpp"
#include "shoal/eval/eval.hpp"
#include "test_support.hpp"

using namespace shoal;
using shoal::test::fails_with;

namespace {

const std::vector<std::size_t> dims = {1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 100, 128, 784, 960};
constexpr double eps = std::numeric_limits<float>::epsilon();

struct reference {
  double l2 = 0, ip = 0, aa = 0, bb = 0, abs_l2 = 0, abs_ip = 0;
};

reference reference_of(const float* a, const float* b, std::size_t d) {
  reference r;
  for (std::size_t i = 0; i < d; ++i) {
    const double x = a[i], y = b[i];
    r.l2 += (x - y) * (x - y);
    r.ip += x * y;
    r.abs_ip += std::abs(x * y);
    r.aa += x * x;
    r.bb += y * y;
  }
  r.abs_l2 = r.l2;
  return r;
}

/// Float summation of d terms in any order stays within d·ε·Σ|terms| (plus the per-term rounding).
double bound(std::size_t d, double abs_sum) { return 2.0 * (static_cast<double>(d) + 2.0) * eps * abs_sum + 1e-30; }

/// Two vectors of `d` values starting `offset` floats into their buffers (offset 1 or 3 misaligns them).
struct pair_data {
  std::vector<float> a, b;
  pair_data(std::size_t d, std::size_t offset, std::uint64_t seed) : a(d + offset), b(d + offset) {
    splitmix64 rng(seed);
    for (std::size_t i = 0; i < d + offset; ++i) {
      a[i] = rng.normal();
      b[i] = rng.normal();
    }
  }
};

}  // namespace

TEST_CASE("dispatch reports the active level and honours SHOAL_SIMD", "[kernel]") {
  const auto levels = available_simd_levels();
  REQUIRE(!levels.empty());
  CHECK(levels.front() == simd_level::scalar);
  const std::string active = simd_level_name();
  if (const char* requested = std::getenv("SHOAL_SIMD"); requested != nullptr && *requested != '\0') {
    std::string lower(requested);  // any case names the level
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    CHECK(active == lower);
  } else {
    CHECK(active_simd_level() == levels.back());  // the best level by default
  }
  for (const simd_level level : {simd_level::scalar, simd_level::avx2, simd_level::avx512, simd_level::amx}) {
    if (simd_level_available(level)) {
      CHECK(kernels(level).level == level);
    } else {
      REQUIRE_THROWS_MATCHES(kernels(level), shoal::error, fails_with(errc::unsupported, simd_level_name(level)));
    }
  }
}

TEST_CASE("float pair kernels match the double reference at every level", "[kernel]") {
  for (const simd_level level : available_simd_levels()) {
    const distance_kernels& k = kernels(level);
    for (const std::size_t d : dims) {
      for (const std::size_t offset : {0, 1, 3}) {
        CAPTURE(simd_level_name(level), d, offset);
        const pair_data v(d, offset, d * 31 + offset);
        const float* a = v.a.data() + offset;
        const float* b = v.b.data() + offset;
        const reference r = reference_of(a, b, d);
        CHECK(std::abs(k.l2sqr(a, b, d) - r.l2) <= bound(d, r.abs_l2));
        CHECK(std::abs(k.inner_product(a, b, d) - r.ip) <= bound(d, r.abs_ip));
        const double cos_ref = 1.0 - r.ip / std::sqrt(r.aa * r.bb);
        CHECK(std::abs(k.cosine_distance(a, b, d) - cos_ref) <=
              4.0 * bound(d, r.abs_ip) / std::sqrt(r.aa * r.bb) + 4 * eps);
      }
    }
  }
}

TEST_CASE("one-to-many and gather kernels equal the pair kernels bit for bit", "[kernel]") {
  // 11 rows stay in cache; the larger block spans over 64 KiB, which the one-to-many kernels stream (one
  // row at a time) under each stream tuning, whichever this CPU would pick: with or without the software
  // prefetch, 512-bit registers loaded whole or by halves.
  struct shape {
    std::size_t d, n;
    detail::stream_tuning tuning;
  };
  std::vector<shape> shapes;
  for (const std::size_t d : dims) {
    shapes.push_back({d, 11, {}});
    for (const std::size_t prefetch : {0, 4096})
      for (const bool halves : {false, true})
        shapes.push_back({d, (std::size_t{64} << 10) / ((d + 5) * sizeof(float)) + 3, {prefetch, halves}});
  }
  struct restore_tuning {
    detail::stream_tuning saved = detail::current_stream_tuning();
    ~restore_tuning() { detail::replace_stream_tuning(saved); }
  } restore;
  for (const simd_level level : available_simd_levels()) {
    const distance_kernels& k = kernels(level);
    for (const auto& [d, n, tuning] : shapes) {
      CAPTURE(simd_level_name(level), d, n, tuning.prefetch_bytes, tuning.half_loads);
      detail::replace_stream_tuning(tuning);
      const std::size_t stride = d + 5;  // rows not multiples of the vector width apart
      const matrix<float> x = make_uniform(n, stride, d);
      const pair_data q(d, 1, d + 7);
      const float* query = q.a.data() + 1;
      std::vector<float> l2(n), ip(n), cs(n), norms(n);
      k.l2sqr_one_to_many(query, x.values.data(), n, d, stride, l2.data());
      k.inner_product_one_to_many(query, x.values.data(), n, d, stride, ip.data());
      k.cosine_distance_one_to_many(query, x.values.data(), n, d, stride, cs.data());
      k.squared_norms(x.values.data(), n, d, stride, norms.data());
      // The gather forms, over the rows in a scrambled order.
      std::vector<const float*> rows(n);
      for (std::size_t i = 0; i < n; ++i) rows[i] = x.values.data() + (i * 7 % n) * stride;
      std::vector<float> l2g(n), ipg(n);
      k.l2sqr_gather(query, rows.data(), n, d, l2g.data());
      k.inner_product_gather(query, rows.data(), n, d, ipg.data());
      for (std::size_t i = 0; i < n; ++i) {
        CHECK(l2g[i] == k.l2sqr(query, rows[i], d));
        CHECK(ipg[i] == k.inner_product(query, rows[i], d));
      }
      for (std::size_t i = 0; i < n; ++i) {
        const float* row = x.values.data() + i * stride;
        CHECK(l2[i] == k.l2sqr(query, row, d));
        CHECK(ip[i] == k.inner_product(query, row, d));
        CHECK(cs[i] == k.cosine_distance(query, row, d));
        CHECK(norms[i] == k.inner_product(row, row, d));
      }
    }
  }
}

TEST_CASE("cosine distance of a zero vector is 1", "[kernel]") {
  const std::vector<float> zero(33, 0.0f), one(33, 1.0f);
  for (const simd_level level : available_simd_levels()) {
    CAPTURE(simd_level_name(level));
    CHECK(kernels(level).cosine_distance(zero.data(), one.data(), 33) == 1.0f);
  }
}

TEST_CASE("cosine distance of tiny and huge vectors with themselves is 0", "[kernel]") {
  // ‖a‖²‖a‖² underflows to 0 (a distance of −inf) or overflows to inf (a distance of 1) in float, for
  // vectors that pass the library's input checks; below 1e-19 ‖a‖² itself underflows (a distance of 1,
  // as for a zero vector), and above 1.8e19 it overflows (NaN). Against 2a too: a single rounding differs.
  for (const float scale : {1e-12f, 1e-15f, 1e10f, 3e12f, 1e-23f, 1e-40f, 1e19f, 1e30f}) {
    CAPTURE(scale);
    matrix<float> a(2, 3);
    a.row(0)[0] = scale;
    a.row(0)[1] = 0.5f * scale;
    a.row(0)[2] = -2.0f * scale;
    for (std::size_t j = 0; j < 3; ++j) a.row(1)[j] = 2.0f * a.row(0)[j];
    for (const simd_level level : available_simd_levels()) {
      CAPTURE(simd_level_name(level));
      CHECK(std::abs(kernels(level).cosine_distance(a.row(0), a.row(0), 3)) <= 1e-6f);
      CHECK(std::abs(kernels(level).cosine_distance(a.row(0), a.row(1), 3)) <= 1e-6f);
    }
    if (scale > 1e18f) continue;  // beyond the norm bound distances_many shares with every index
    float many[4] = {NAN, NAN, NAN, NAN};
    distances_many(metric::cosine, a.view(), a.view(), many, 2);
    for (const float d : many) CHECK(std::abs(d) <= 1e-6f);
  }
}

TEST_CASE("distance and distances_many refuse what an index refuses", "[kernel]") {
  const matrix<float> a = make_clustered(3, 5, 1, 1);
  matrix<float> bad = a;
  const auto unknown = static_cast<metric>(7);
  float out[9];
  REQUIRE_THROWS_MATCHES(distance(unknown, a.row(0), a.row(1), 5), shoal::error,
                         fails_with(errc::invalid_argument, "distance: unknown metric 7"));
  REQUIRE_THROWS_MATCHES(distances_many(unknown, a.view(), a.view(), out, 3), shoal::error,
                         fails_with(errc::invalid_argument, "distances_many: unknown metric 7"));
  // The GEMM form's clamp turned a NaN or Inf row's L2 distances into 0, the best there is.
  for (const float v : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    CAPTURE(v);
    bad.row(1)[2] = v;
    for (const metric m : {metric::l2, metric::inner_product, metric::cosine}) {
      REQUIRE_THROWS_MATCHES(distances_many(m, a.view(), bad.view(), out, 3), shoal::error,
                             fails_with(errc::non_finite, "distances_many: b"));
      REQUIRE_THROWS_MATCHES(distances_many(m, bad.view(), a.view(), out, 3), shoal::error,
                             fails_with(errc::non_finite, "distances_many: a"));
    }
  }
  // No output (once: a crash in the GEMM), or one over an input (once: every entry wrong).
  REQUIRE_THROWS_MATCHES(distances_many(metric::l2, a.view(), a.view(), nullptr, 3), shoal::error,
                         fails_with(errc::invalid_argument, "no output buffer for 3 x 3 distances"));
  matrix<float> in_place = make_clustered(8, 8, 2, 3);
  const matrix_view<const float> rows = in_place.view();
  REQUIRE_THROWS_MATCHES(distances_many(metric::l2, rows, rows, in_place.values.data(), 8), shoal::error,
                         fails_with(errc::invalid_argument, "the output overlaps an input"));
  REQUIRE_THROWS_MATCHES(distances_many(metric::l2, rows.slice(0, 2), rows.slice(4, 4), in_place.row(5), 4),
                         shoal::error, fails_with(errc::invalid_argument, "the output overlaps an input"));
  // Beside the inputs, and with nothing to write, it is fine.
  std::vector<float> beside(8 * 8);
  distances_many(metric::l2, rows, rows, beside.data(), 8);
  CHECK(beside[1] == Approx(l2sqr(in_place.row(0), in_place.row(1), 8)).epsilon(1e-5));
  CHECK_NOTHROW(distances_many(metric::l2, rows.slice(0, 0), rows, nullptr, 8));
}

/// The GEMM's error bound at `level`: float summation; at amx a rounding per pair of bfloat16 products
/// (up to six products per term: 3·d roundings), plus what the split and the dropped products leave out
/// (4 · 2^-24 of each |a_i b_i|).
double gemm_bound(simd_level level, std::size_t d, double abs_sum) {
  if (level != simd_level::amx) return bound(d, abs_sum);
  return bound(3 * d, abs_sum) + 4.0 * std::ldexp(1.0, -24) * abs_sum;
}

/// Operand kinds for the GEMM test. The amx level splits floats into up to three bfloat16 parts and
/// skips the products of parts that are zero: small integers need one part, 16-bit integers two,
/// uniform floats three; `mixed` holds rows of both ends (a part first needed half-way through).
enum class operand { uniform, small_integers, wide_integers, mixed };

matrix<float> make_operand(operand kind, std::size_t rows, std::size_t stride, std::uint64_t seed) {
  matrix<float> m = make_uniform(rows, stride, seed);
  for (std::size_t i = 0; i < rows; ++i) {
    const float scale = kind == operand::small_integers || (kind == operand::mixed && i < rows / 2) ? 8.0f
                        : kind == operand::wide_integers                                            ? 30000.0f
                                                                                                    : 0.0f;
    if (scale != 0.0f)
      for (std::size_t j = 0; j < stride; ++j) m.row(i)[j] = std::round(m.row(i)[j] * scale);
  }
  return m;
}

TEST_CASE("GEMM kernel matches the double reference with strides and odd shapes", "[kernel]") {
  struct shape {
    std::size_t na, nb, d;
  };
  constexpr operand kinds[] = {operand::uniform, operand::small_integers, operand::wide_integers, operand::mixed};
  for (const simd_level level : available_simd_levels()) {
    const distance_kernels& k = kernels(level);
    // Odd shapes, and depths past 256 with a ragged tail (300), where blocked GEMMs switch k-blocks; more
    // than 512 rows by more than 128 columns crosses the amx kernel's row blocks and column panels.
    for (const shape s : {shape{1, 1, 1}, shape{3, 5, 7}, shape{7, 13, 33}, shape{70, 33, 100}, shape{65, 130, 784},
                          shape{29, 97, 300}, shape{12, 64, 256}, shape{530, 140, 40}}) {
      for (const operand kind_a : kinds) {
        for (const operand kind_b : kinds) {
          CAPTURE(simd_level_name(level), s.na, s.nb, s.d, kind_a, kind_b);
          const std::size_t lda = s.d + 3, ldb = s.d + 1, ldc = s.nb + 2;
          const matrix<float> a = make_operand(kind_a, s.na, lda, s.d);
          const matrix<float> b = make_operand(kind_b, s.nb, ldb, s.d + 1);
          std::vector<float> c(s.na * ldc, -7.0f);
          k.inner_product_many(a.values.data(), s.na, lda, b.values.data(), s.nb, ldb, s.d, c.data(), ldc);
          // Small integers and their sums are exact in float at every level.
          const bool exact = kind_a == operand::small_integers && kind_b == operand::small_integers;
          for (std::size_t i = 0; i < s.na; ++i) {
            for (std::size_t j = 0; j < s.nb; ++j) {
              const reference r = reference_of(a.row(i), b.row(j), s.d);
              if (exact) {
                CHECK(c[i * ldc + j] == r.ip);
              } else {
                CHECK(std::abs(c[i * ldc + j] - r.ip) <= gemm_bound(level, s.d, r.abs_ip));
              }
            }
            for (std::size_t j = s.nb; j < ldc; ++j) CHECK(c[i * ldc + j] == -7.0f);  // padding untouched
          }
        }
      }
    }
  }
}

namespace {
/// n int16 coefficients in [-limit, limit], every third one at an extreme so that the kernels' bound
/// is reached.
std::vector<std::int16_t> code_coefficients(std::size_t n, std::int32_t limit, splitmix64& rng) {
  std::vector<std::int16_t> coeffs(n);
  for (std::size_t i = 0; i < n; ++i)
    coeffs[i] = static_cast<std::int16_t>(i % 3 == 0 ? (i % 2 == 0 ? limit : -limit)
                                                     : static_cast<std::int32_t>(rng.below(2 * limit + 1)) - limit);
  return coeffs;
}

/// Runs `check(kernels, d, offset, limit, a, rng)` at every SIMD level the CPU has, over every test
/// dimension and three misalignments, with coefficients `a` from `code_coefficients` (at `offset`
/// int16s past an aligned start) under the coefficient limit of d.
template <class Check>
void for_each_code_case(std::uint64_t salt, const Check& check) {
  for (const simd_level level : available_simd_levels()) {
    for (const std::size_t d : dims) {
      for (const std::size_t offset : {0, 1, 3}) {
        CAPTURE(simd_level_name(level), d, offset);
        const std::int32_t limit = dot_u8_i16_limit(d);
        splitmix64 rng(d + salt * offset);
        const std::vector<std::int16_t> coeffs = code_coefficients(d + offset, limit, rng);
        check(kernels(level), d, offset, limit, coeffs.data() + offset, rng);
      }
    }
  }
}
}  // namespace

TEST_CASE("int16 x uint8 code kernels are exact at every level up to their coefficient limit", "[kernel]") {
  CHECK(dot_u8_i16_limit(1) == 32767);
  CHECK(dot_u8_i16_limit(784) == 10741);
  for_each_code_case(7, [](const distance_kernels& k, std::size_t d, std::size_t offset, std::int32_t limit,
                           const std::int16_t* a, splitmix64& rng) {
    constexpr std::size_t n = 5;
    std::vector<std::vector<std::uint8_t>> codes(n, std::vector<std::uint8_t>(d + offset));
    std::vector<const std::uint8_t*> rows(n);
    std::vector<std::int32_t> gathered(n);
    for (std::size_t r = 0; r < n; ++r) {
      for (std::uint8_t& c : codes[r]) c = static_cast<std::uint8_t>(rng.below(256));
      codes[r][offset] = 255;  // the widening must treat codes as unsigned
      rows[r] = codes[r].data() + offset;
    }
    // The worst case: every product at the limit with one sign.
    std::vector<std::int16_t> top(d, static_cast<std::int16_t>(limit));
    std::vector<std::uint8_t> full(d, 255);
    CHECK(k.dot_u8_i16(top.data(), full.data(), d) == std::int64_t{limit} * 255 * static_cast<std::int64_t>(d));
    const std::vector<const std::uint8_t*> fulls(n, full.data());  // and through the gather's row groups
    k.dot_u8_i16_gather(top.data(), fulls.data(), n, d, gathered.data());
    for (const std::int32_t g : gathered) CHECK(g == std::int64_t{limit} * 255 * static_cast<std::int64_t>(d));
    k.dot_u8_i16_gather(a, rows.data(), n, d, gathered.data());
    // The same rows back to back (misaligned by `offset`) for the one-to-many form.
    std::vector<std::uint8_t> table(n * d + offset);
    for (std::size_t r = 0; r < n; ++r) std::copy_n(rows[r], d, table.data() + offset + r * d);
    std::vector<std::int32_t> streamed(n);
    k.dot_u8_i16_one_to_many(a, table.data() + offset, n, d, streamed.data());
    for (std::size_t r = 0; r < n; ++r) {
      std::int64_t ref = 0;
      for (std::size_t i = 0; i < d; ++i) ref += std::int64_t{a[i]} * rows[r][i];
      CHECK(k.dot_u8_i16(a, rows[r], d) == ref);
      CHECK(gathered[r] == ref);
      CHECK(streamed[r] == ref);
    }
  });
}

TEST_CASE("4-bit codes pack two to a byte and their kernels are exact at every level", "[kernel]") {
  // The layout: in each block of 32 components, byte b holds component b (low) and 16 + b (high).
  std::vector<std::uint8_t> codes(40);
  for (std::size_t j = 0; j < codes.size(); ++j) codes[j] = static_cast<std::uint8_t>((j * 7 + 3) % 16);
  std::vector<std::uint8_t> packed(u4_code_bytes(codes.size()) + 1, 0xee);
  CHECK(u4_code_bytes(40) == 32);
  CHECK(u4_code_bytes(1) == 16);
  CHECK(u4_code_bytes(32) == 16);
  pack_u4(codes.data(), codes.size(), packed.data());
  CHECK(packed[0] == (codes[0] | codes[16] << 4));
  CHECK(packed[16] == (codes[32] | 0));  // the last block's missing components are zero codes
  CHECK(packed[31] == 0);
  CHECK(packed[32] == 0xee);  // nothing written beyond u4_code_bytes
  for (std::size_t j = 0; j < codes.size(); ++j) CHECK(u4_code(packed.data(), j) == codes[j]);

  for_each_code_case(11, [](const distance_kernels& k, std::size_t d, std::size_t offset, std::int32_t limit,
                            const std::int16_t* a, splitmix64& rng) {
    constexpr std::size_t n = 6;
    std::vector<std::vector<std::uint8_t>> plain(n, std::vector<std::uint8_t>(d));
    std::vector<std::vector<std::uint8_t>> rows(n, std::vector<std::uint8_t>(u4_code_bytes(d) + offset));
    std::vector<const std::uint8_t*> row_ptrs(n);
    for (std::size_t r = 0; r < n; ++r) {
      for (std::uint8_t& c : plain[r]) c = static_cast<std::uint8_t>(rng.below(16));
      plain[r][d - 1] = 15;
      pack_u4(plain[r].data(), d, rows[r].data() + offset);
      row_ptrs[r] = rows[r].data() + offset;
    }
    std::vector<std::int32_t> gathered(n);
    k.dot_u4_i16_gather(a, row_ptrs.data(), n, d, gathered.data());
    for (std::size_t r = 0; r < n; ++r) {
      std::int64_t ref = 0;
      for (std::size_t i = 0; i < d; ++i) ref += std::int64_t{a[i]} * plain[r][i];
      CHECK(k.dot_u4_i16(a, row_ptrs[r], d) == ref);
      CHECK(gathered[r] == ref);
    }
    // The worst case: every code 15 against the limit with one sign.
    const std::vector<std::int16_t> top(d, static_cast<std::int16_t>(-limit));
    std::vector<std::uint8_t> full(u4_code_bytes(d));
    pack_u4(std::vector<std::uint8_t>(d, 15).data(), d, full.data());
    CHECK(k.dot_u4_i16(top.data(), full.data(), d) == -std::int64_t{limit} * 15 * static_cast<std::int64_t>(d));
  });
}

TEST_CASE("int16 code kernels past their coefficient limit wrap modulo 2^32 at every level", "[kernel]") {
  // Out of contract, but defined (and so identical at every level): the scalar tail's int32 sum was UB.
  const auto wrapped = [](std::int64_t sum) { return static_cast<std::int32_t>(static_cast<std::uint32_t>(sum)); };
  for (const std::size_t d : {1000, 1001, 1023, 5000, 5003}) {
    CAPTURE(d);
    const std::vector<std::int16_t> top(d, 32767);
    const std::vector<std::uint8_t> full(d, 255);
    std::vector<std::uint8_t> packed(u4_code_bytes(d));
    pack_u4(std::vector<std::uint8_t>(d, 15).data(), d, packed.data());
    const auto dd = static_cast<std::int64_t>(d);
    for (const simd_level level : available_simd_levels()) {
      CAPTURE(simd_level_name(level));
      CHECK(kernels(level).dot_u8_i16(top.data(), full.data(), d) == wrapped(32767 * 255 * dd));
      CHECK(kernels(level).dot_u4_i16(top.data(), packed.data(), d) == wrapped(32767 * 15 * dd));
    }
  }
}

TEST_CASE("integer kernels are exact at every level", "[kernel]") {
  for (const simd_level level : available_simd_levels()) {
    const distance_kernels& k = kernels(level);
    for (const std::size_t d : dims) {
      for (const std::size_t offset : {0, 1}) {
        CAPTURE(simd_level_name(level), d, offset);
        splitmix64 rng(d + offset);
        std::vector<std::uint8_t> ua(d + offset), ub(d + offset);
        std::vector<std::int8_t> sa(d + offset), sb(d + offset);
        for (std::size_t i = 0; i < d + offset; ++i) {
          // Include the extremes: 0/255 and −128/127 stress the widening arithmetic.
          ua[i] = static_cast<std::uint8_t>(i % 5 == 0 ? 255 : rng.below(256));
          ub[i] = static_cast<std::uint8_t>(i % 7 == 0 ? 0 : rng.below(256));
          sa[i] = static_cast<std::int8_t>(i % 5 == 0 ? -128 : static_cast<int>(rng.below(256)) - 128);
          sb[i] = static_cast<std::int8_t>(i % 7 == 0 ? 127 : static_cast<int>(rng.below(256)) - 128);
        }
        std::int64_t l2u = 0, ipu = 0, l2s = 0, ips = 0;
        for (std::size_t i = offset; i < d + offset; ++i) {
          l2u += (std::int64_t{ua[i]} - ub[i]) * (std::int64_t{ua[i]} - ub[i]);
          ipu += std::int64_t{ua[i]} * ub[i];
          l2s += (std::int64_t{sa[i]} - sb[i]) * (std::int64_t{sa[i]} - sb[i]);
          ips += std::int64_t{sa[i]} * sb[i];
        }
        CHECK(k.l2sqr_u8(ua.data() + offset, ub.data() + offset, d) == l2u);
        CHECK(k.inner_product_u8(ua.data() + offset, ub.data() + offset, d) == ipu);
        CHECK(k.l2sqr_i8(sa.data() + offset, sb.data() + offset, d) == l2s);
        CHECK(k.inner_product_i8(sa.data() + offset, sb.data() + offset, d) == ips);
      }
    }
  }
}

namespace {

/// A GEMM row for the rank kernels: whole-number inner products and centroid norms (exact in float, so
/// ties are planted, not accidental), NaN products where `nan_at(j)`.
struct rank_row {
  std::vector<float> ip;
  std::vector<float> norms;
  template <class NanAt>
  rank_row(std::size_t n, std::uint64_t seed, NanAt nan_at) : ip(n), norms(n) {
    splitmix64 rng(seed);
    for (std::size_t j = 0; j < n; ++j) {
      ip[j] = static_cast<float>(rng.below(200)) - 100.0f;
      norms[j] = static_cast<float>(rng.below(400));
      if (nan_at(j)) ip[j] = std::numeric_limits<float>::quiet_NaN();
    }
  }
  /// The kernels' `norms` argument: null ranks by −ip alone.
  [[nodiscard]] const float* norms_for(bool l2) const { return l2 ? norms.data() : nullptr; }
  /// Rank score of position j, the scalar reference: NaN ranks as +∞.
  [[nodiscard]] float score(bool l2, std::size_t j) const {
    const float s = l2 ? norms[j] - 2.0f * ip[j] : -ip[j];
    return std::isnan(s) ? std::numeric_limits<float>::infinity() : s;
  }
};

}  // namespace

TEST_CASE("rank_filter keeps exactly the rank scores at most the bound, in order, at every level", "[kernel]") {
  // Whole-number scores (exact in float): bounds that equal a score must keep it; NaN scores rank as +∞,
  // kept only under an infinite bound.
  constexpr float inf = std::numeric_limits<float>::infinity();
  for (const simd_level level : available_simd_levels()) {
    const distance_kernels& k = kernels(level);
    for (std::size_t n : {0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 100, 513}) {
      for (const bool l2 : {true, false}) {
        for (const bool nans : {false, true}) {
          const rank_row row(n, n * 13 + (l2 ? 1 : 0) + (nans ? 2 : 0),
                             [&](std::size_t j) { return nans && j % 7 == 2; });
          std::vector<float> score(n);
          for (std::size_t j = 0; j < n; ++j) score[j] = row.score(l2, j);
          // No bound, none passes, a score itself (ties kept), and the median.
          std::vector<float> bounds = {inf, -inf};
          if (n > 0) {
            bounds.push_back(score[n / 2]);
            std::vector<float> sorted = score;
            std::sort(sorted.begin(), sorted.end());
            bounds.push_back(sorted[n / 2]);
          }
          for (const float bound : bounds) {
            CAPTURE(simd_level_name(level), n, l2, nans, bound);
            std::vector<std::uint32_t> want_at;
            std::vector<float> want_score;
            for (std::size_t j = 0; j < n; ++j)
              if (score[j] <= bound) {
                want_at.push_back(static_cast<std::uint32_t>(j));
                want_score.push_back(score[j]);
              }
            std::vector<std::uint32_t> at(n + 1, 77);
            std::vector<float> got(n + 1, -7.0f);
            const std::size_t m = k.rank_filter(row.ip.data(), row.norms_for(l2), n, bound, at.data(), got.data());
            REQUIRE(m == want_at.size());
            CHECK(std::equal(want_at.begin(), want_at.end(), at.begin()));
            CHECK(std::equal(want_score.begin(), want_score.end(), got.begin()));
            CHECK(at[n] == 77);  // nothing written past n
          }
        }
      }
    }
  }
}

TEST_CASE("rank_argmin finds the first smallest rank score at every level", "[kernel]") {
  // Scores from whole numbers (exact in float), so ties are planted, not accidental; NaNs rank last.
  constexpr float inf = std::numeric_limits<float>::infinity();
  for (const simd_level level : available_simd_levels()) {
    const distance_kernels& k = kernels(level);
    for (std::size_t n : {0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 100, 513}) {
      for (const bool l2 : {true, false}) {
        // Plain; the smallest score three times (two of them side by side: the first must win) among
        // scattered NaNs; NaNs filling the last whole 16 scores (the last a SIMD lane sees, at 8 or 16
        // lanes: a NaN there must not hide the lane's minimum); every score NaN.
        for (const int pattern : {0, 1, 2, 3}) {
          CAPTURE(simd_level_name(level), n, l2, pattern);
          const std::size_t last16 = n / 16 * 16;
          rank_row row(n, n * 7 + static_cast<std::size_t>(pattern), [&](std::size_t j) {
            return pattern == 3 || (pattern == 1 && j % 5 == 3) || (pattern == 2 && j + 16 >= last16 && j < last16);
          });
          if (pattern == 1 && n >= 4) {
            for (const std::size_t j : {n / 3, n / 3 + 1, n - 1}) {
              row.ip[j] = 1000.0f;
              row.norms[j] = 0.0f;
            }
          }
          const std::vector<float>& ip = row.ip;
          const float* nrm = row.norms_for(l2);
          float want = inf;
          std::uint32_t want_at = 7;  // untouched unless lowered
          for (std::size_t j = 0; j < n; ++j) {
            const float s = row.score(l2, j);
            if (s < want) {
              want = s;
              want_at = static_cast<std::uint32_t>(j);
            }
          }
          float best = inf;
          std::uint32_t at = 7;
          k.rank_argmin(ip.data(), nrm, n, &best, &at);
          CHECK(best == want);
          CHECK(at == want_at);
          float only = inf;  // the minimum alone, without a position
          k.rank_argmin(ip.data(), nrm, n, &only, nullptr);
          CHECK(only == want);
          // A best already below every score stays, and so does its position.
          best = -1e9f;
          at = 7;
          k.rank_argmin(ip.data(), nrm, n, &best, &at);
          CHECK(best == -1e9f);
          CHECK(at == 7);
        }
      }
    }
  }
}

TEST_CASE("rank scores of zero are +0 at every level, in rank_argmin and rank_filter", "[kernel]") {
  // −ip of ip = +0 is −0 where AVX-512's negation gave +0: levels differed in the sign of the scores
  // rank_filter kept and `assign` reported (a review), and a lane minimum of −0 and +0 keeps either.
  for (const simd_level level : available_simd_levels()) {
    CAPTURE(simd_level_name(level));
    for (const std::size_t n : {1, 7, 17, 40}) {
      CAPTURE(n);
      std::vector<float> ip(n, 0.0f);
      for (std::size_t j = 0; j < n; j += 3) ip[j] = -0.0f;
      std::vector<float> norms(n, 0.0f);
      for (const float* nrm : {static_cast<const float*>(nullptr), static_cast<const float*>(norms.data())}) {
        float best = std::numeric_limits<float>::infinity();
        std::uint32_t at = 7;
        kernels(level).rank_argmin(ip.data(), nrm, n, &best, &at);
        CHECK(best == 0.0f);
        CHECK_FALSE(std::signbit(best));
        CHECK(at == 0);
        std::vector<std::uint32_t> kept(n);
        std::vector<float> scores(n);
        REQUIRE(kernels(level).rank_filter(ip.data(), nrm, n, 0.0f, kept.data(), scores.data()) == n);
        for (const float s : scores) CHECK_FALSE(std::signbit(s));
      }
    }
  }
}

TEST_CASE("distances_many agrees with the pairwise distance for every metric", "[kernel]") {
  const matrix<float> a = make_clustered(40, 31, 4, 1);
  const matrix<float> b = make_clustered(50, 31, 4, 2);
  std::vector<float> out(40 * 52);
  for (const metric m : {metric::l2, metric::inner_product, metric::cosine}) {
    CAPTURE(metric_name(m));
    distances_many(m, a.view(), b.view(), out.data(), 52);
    for (std::size_t i = 0; i < 40; ++i)
      for (std::size_t j = 0; j < 50; ++j) {
        const float expected = distance(m, a.row(i), b.row(j), 31);
        const reference r = reference_of(a.row(i), b.row(j), 31);
        // The GEMM form loses up to ε·(‖a‖² + ‖b‖²) to cancellation.
        CHECK(std::abs(out[i * 52 + j] - expected) <= 64 * eps * (r.aa + r.bb + 1.0));
      }
  }
  REQUIRE_THROWS_MATCHES(distances_many(metric::l2, a.view(), make_uniform(2, 30, 1).view(), out.data(), 52),
                         shoal::error, fails_with(errc::dimension_mismatch, "31 vs 30"));
  REQUIRE_THROWS_MATCHES(distances_many(metric::l2, a.view(), b.view(), out.data(), 49), shoal::error,
                         fails_with(errc::invalid_argument, "output stride"));
}
