// Product quantizer: training, encode/decode, ADC tables, and the fast-scan kernel at every SIMD level
// against its scalar reference (integer sums: exactly equal).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <catch2/catch.hpp>

#include "quant/sq8_estimate.hpp"
#include "quant/sq_range.hpp"
#include "shoal/eval/eval.hpp"
#include "shoal/quant/opq.hpp"
#include "shoal/quant/pq.hpp"
#include "shoal/quant/sq.hpp"
#include "test_support.hpp"

using namespace shoal;
using shoal::test::cauchy;
using shoal::test::fails_with;

namespace {

/// Mean squared reconstruction error of `x` through `pq`.
double reconstruction_error(const product_quantizer& pq, const matrix<float>& x) {
  const std::vector<std::uint8_t> codes = pq.encode(x.view());
  matrix<float> back(x.rows, x.dim);
  pq.decode(codes.data(), x.rows, back.mutable_view());
  double sum = 0.0;
  for (std::size_t i = 0; i < x.rows; ++i)
    for (std::size_t j = 0; j < x.dim; ++j) {
      const double d = static_cast<double>(x.row(i)[j]) - back.row(i)[j];
      sum += d * d;
    }
  return sum / static_cast<double>(x.rows);
}

/// Random unpacked 4-bit codes and a random byte table.
struct fast_scan_case {
  std::vector<std::uint8_t> codes;   // n x m unpacked
  std::vector<std::uint8_t> packed;  // blocks
  aligned_vector<std::uint8_t> table;
  fast_scan_case(std::size_t n, std::size_t m, std::uint64_t seed, bool saturated) : codes(n * m) {
    splitmix64 rng(seed);
    for (std::uint8_t& c : codes) c = static_cast<std::uint8_t>(rng.below(16));
    const std::size_t blocks = (n + fast_scan_block - 1) / fast_scan_block;
    packed.resize(blocks * fast_scan_block_bytes(m) + 3);  // +3: room to misalign below
    pack_fast_scan(codes.data(), n, m, packed.data());
    table.assign((m + (m & 1)) * 16, 0);
    for (std::size_t s = 0; s < m; ++s)
      for (std::size_t c = 0; c < 16; ++c)
        table[s * 16 + c] = saturated ? std::uint8_t{255} : static_cast<std::uint8_t>(rng.below(256));
  }
};

/// A table quantized by `k` (`pq_kernels::quantize`): codes, bias, scale and whether it was taken.
struct kernel_quantized {
  std::vector<std::uint8_t> codes;
  float bias = 0.0f;
  float scale = 0.0f;
  bool done = false;
};
[[nodiscard]] kernel_quantized quantize_with(const pq_kernels& k, const std::vector<float>& table, std::size_t m) {
  kernel_quantized q{std::vector<std::uint8_t>(m * 16)};
  q.done = k.quantize(table.data(), m, q.codes.data(), &q.bias, &q.scale);
  return q;
}
}  // namespace

TEST_CASE("fast-scan packing round-trips every code", "[pq]") {
  for (const std::size_t m : {1, 2, 3, 8, 17}) {
    for (const std::size_t n : {1, 31, 32, 33, 100}) {
      CAPTURE(m, n);
      const fast_scan_case c(n, m, m * 100 + n, false);
      bool same = true;
      for (std::size_t i = 0; i < n; ++i)
        for (std::size_t s = 0; s < m; ++s)
          same = same && fast_scan_get(c.packed.data(), m, i, s) == c.codes[i * m + s];
      CHECK(same);
      // Padding slots of the last block hold code 0.
      const std::size_t blocks = (n + fast_scan_block - 1) / fast_scan_block;
      for (std::size_t i = n; i < blocks * fast_scan_block; ++i)
        for (std::size_t s = 0; s < m; ++s) CHECK(fast_scan_get(c.packed.data(), m, i, s) == 0);
    }
  }
}

TEST_CASE("fast-scan kernels equal the scalar reference exactly at every level", "[pq][kernel]") {
  const pq_kernels& ref = quant_kernels(simd_level::scalar);
  // m up to 1030 crosses the 16-bit flush periods of both the AVX2 (256 pairs) and AVX-512 (128 pair
  // pairs) loops; saturated tables (all 255) are the worst case for 16-bit overflow.
  for (const std::size_t m : {1, 2, 3, 4, 5, 7, 8, 16, 31, 64, 255, 256, 392, 513, 1030}) {
    for (const bool saturated : {false, true}) {
      const std::size_t n = 96;
      const fast_scan_case c(n, m, m + (saturated ? 7 : 0), saturated);
      const std::size_t blocks = n / fast_scan_block;
      std::vector<std::uint32_t> want(n);
      ref.fast_scan(c.packed.data(), blocks, m, c.table.data(), want.data());
      // The reference against the definition.
      bool exact = true;
      for (std::size_t i = 0; i < n; ++i) {
        std::uint32_t sum = 0;
        for (std::size_t s = 0; s < m; ++s) sum += c.table[s * 16 + c.codes[i * m + s]];
        exact = exact && sum == want[i];
      }
      CAPTURE(m, saturated);
      CHECK(exact);
      for (const simd_level level : available_simd_levels()) {
        CAPTURE(simd_level_name(level));
        std::vector<std::uint32_t> got(n, 12345);
        quant_kernels(level).fast_scan(c.packed.data(), blocks, m, c.table.data(), got.data());
        CHECK(got == want);
        // Misaligned code and table pointers.
        std::vector<std::uint8_t> shifted(c.packed.size() + 1);
        std::copy(c.packed.begin(), c.packed.end(), shifted.begin() + 1);
        std::vector<std::uint8_t> table(c.table.size() + 3);
        std::copy(c.table.begin(), c.table.end(), table.begin() + 3);
        quant_kernels(level).fast_scan(shifted.data() + 1, blocks, m, table.data() + 3, got.data());
        CHECK(got == want);
      }
    }
  }
}

TEST_CASE("fast-scan bound masks equal the definition at every level", "[pq][kernel]") {
  // Sums around the bound (equal, one either side), at both ends of the range, and random; bounds at
  // 0, in the middle and at the top (where every sum passes).
  constexpr std::size_t blocks = 5;
  std::vector<std::uint32_t> sums(blocks * fast_scan_block + 1);
  splitmix64 rng(42);
  const std::uint32_t mid = 40000;
  for (std::size_t i = 0; i < sums.size(); ++i) {
    const std::uint64_t r = rng.next();
    switch (i % 6) {
      case 0:
        sums[i] = mid;
        break;
      case 1:
        sums[i] = mid - 1;
        break;
      case 2:
        sums[i] = mid + 1;
        break;
      case 3:
        sums[i] = r % 2 == 0 ? 0u : 0xffffffffu;
        break;
      default:
        sums[i] = static_cast<std::uint32_t>(r % 100000);
        break;
    }
  }
  for (const std::uint32_t bound : {0u, mid, 0x7fffffffu, 0x80000000u, 0xffffffffu}) {
    CAPTURE(bound);
    std::vector<std::uint32_t> want(blocks, 0);
    for (std::size_t i = 0; i < blocks * fast_scan_block; ++i)
      if (sums[i] <= bound) want[i / fast_scan_block] |= 1u << (i % fast_scan_block);
    for (const simd_level level : available_simd_levels()) {
      CAPTURE(simd_level_name(level));
      std::vector<std::uint32_t> got(blocks, 12345);
      quant_kernels(level).at_most(sums.data(), blocks, bound, got.data());
      CHECK(got == want);
      quant_kernels(level).at_most(sums.data() + 1, blocks - 1, bound, got.data());  // misaligned
      for (std::size_t b = 0; b + 1 < blocks; ++b) {
        std::uint32_t shifted = 0;
        for (std::size_t j = 0; j < fast_scan_block; ++j)
          shifted |= static_cast<std::uint32_t>(sums[1 + b * fast_scan_block + j] <= bound) << j;
        CHECK(got[b] == shifted);
      }
    }
  }
}

TEST_CASE("8-bit ADC scan equals the table sum at every level", "[pq][kernel]") {
  const std::size_t m = 12, n = 37;
  splitmix64 rng(3);
  std::vector<float> table(m * 256);
  for (float& t : table) t = rng.uniform();
  std::vector<std::uint8_t> codes(n * m);
  for (std::uint8_t& c : codes) c = static_cast<std::uint8_t>(rng.below(256));
  std::vector<float> want(n);
  for (std::size_t i = 0; i < n; ++i) {
    float sum = 0.0f;
    for (std::size_t s = 0; s < m; ++s) sum += table[s * 256 + codes[i * m + s]];
    want[i] = sum;
  }
  for (const simd_level level : available_simd_levels()) {
    CAPTURE(simd_level_name(level));
    std::vector<float> got(n);
    quant_kernels(level).scan_8bit(table.data(), codes.data(), n, m, got.data());
    CHECK(got == want);
  }
}

TEST_CASE("double ADC tables and the row-term scan are the same bits at every level", "[pq][kernel]") {
  // Products of floats are exact in double, so each table entry is its component sum in component order
  // whether the level fuses or not; the scan sums in sub-quantizer order from offset + term, clamps at 0,
  // and gives +inf beyond float's range.
  const std::size_t m = 5, dsub = 3, n = 11;
  splitmix64 rng(13);
  std::vector<float> query(m * dsub), books_t(m * dsub * 256);
  for (float& v : query) v = static_cast<float>(rng.normal() * 1e3);
  for (float& v : books_t) v = static_cast<float>(rng.normal());
  std::vector<double> want(m * 256);
  for (std::size_t s = 0; s < m; ++s)
    for (std::size_t c = 0; c < 256; ++c) {
      double sum = 0.0;
      for (std::size_t d = 0; d < dsub; ++d)
        sum += static_cast<double>(query[s * dsub + d]) * books_t[(s * dsub + d) * 256 + c];
      want[s * 256 + c] = sum;
    }
  std::vector<std::uint8_t> codes(n * m);
  for (std::uint8_t& c : codes) c = static_cast<std::uint8_t>(rng.below(256));
  std::vector<double> terms(n);
  for (double& t : terms) t = rng.normal() * 1e4;
  terms[3] = -1e12;  // a sum below 0: clamped
  terms[7] = 1e40;   // beyond float: +inf
  const double offset = 5e3;
  std::vector<float> want_scan(n);
  for (std::size_t i = 0; i < n; ++i) {
    double sum = offset + terms[i];
    for (std::size_t s = 0; s < m; ++s) sum += want[s * 256 + codes[i * m + s]];
    want_scan[i] =
        sum > 3.4028234663852886e38 ? std::numeric_limits<float>::infinity() : static_cast<float>(std::max(0.0, sum));
  }
  CHECK(want_scan[3] == 0.0f);
  CHECK(std::isinf(want_scan[7]));
  for (const simd_level level : available_simd_levels()) {
    CAPTURE(simd_level_name(level));
    std::vector<double> table(m * 256);
    quant_kernels(level).tables_ip_f64(query.data(), books_t.data(), m, dsub, table.data());
    CHECK(table == want);
    std::vector<float> got(n);
    quant_kernels(level).scan_8bit_f64(want.data(), codes.data(), n, m, terms.data(), offset, got.data());
    CHECK(got == want_scan);
  }
}

TEST_CASE("ADC tables at the vector levels equal the fused multiply-add chain exactly", "[pq][kernel]") {
  // Per entry: q_d − cw_d, then one fused multiply-add per component, in component order (L2), or one
  // fused multiply-add of q_d and cw_d (inner product): so AVX2 and AVX-512 build the same tables, bit
  // for bit, whatever the blocking of the codewords (16 and 256 codewords have kernels of their own).
  splitmix64 rng(11);
  for (const std::size_t ksub : {16, 256})
    for (const std::size_t dsub : {1, 2, 3, 8, 13}) {
      const std::size_t m = 3;
      std::vector<float> books(m * dsub * ksub), query(m * dsub);
      for (float& b : books) b = rng.uniform() * 8.0f - 4.0f;
      for (float& q : query) q = rng.uniform() * 8.0f - 4.0f;
      for (const bool l2 : {true, false}) {
        std::vector<float> want(m * ksub);
        for (std::size_t s = 0; s < m; ++s)
          for (std::size_t c = 0; c < ksub; ++c) {
            float acc = 0.0f;
            for (std::size_t d = 0; d < dsub; ++d) {
              const float q = query[s * dsub + d], b = books[(s * dsub + d) * ksub + c];
              acc = l2 ? std::fma(q - b, q - b, acc) : std::fma(q, b, acc);
            }
            want[s * ksub + c] = acc;
          }
        for (const simd_level level : available_simd_levels()) {
          if (level == simd_level::scalar) continue;  // no FMA at the baseline: within rounding (above)
          CAPTURE(ksub, dsub, l2, simd_level_name(level));
          std::vector<float> got(m * ksub);
          quant_kernels(level).tables(query.data(), books.data(), m, dsub, ksub, l2, got.data());
          CHECK(got == want);
        }
      }
    }
}

TEST_CASE("pq reconstruction error falls as m grows for 8 and 4 bits", "[pq]") {
  const std::size_t dim = 32;
  const matrix<float> x = make_clustered(2000, dim, 20, 5, 1.0f);
  pq_train_params tp;
  tp.iterations = 6;
  for (const std::size_t nbits : {4, 8}) {
    double previous = 1e30;
    for (const std::size_t m : {2, 4, 8, 16}) {
      product_quantizer pq(dim, m, nbits);
      pq.train(x.view(), tp);
      const double err = reconstruction_error(pq, x);
      CAPTURE(nbits, m, err, previous);
      CHECK(err < previous);
      previous = err;
    }
  }
  // 8 bits beat 4 bits at equal m.
  product_quantizer p4(dim, 8, 4), p8(dim, 8, 8);
  p4.train(x.view(), tp);
  p8.train(x.view(), tp);
  CHECK(reconstruction_error(p8, x) < reconstruction_error(p4, x));
}

TEST_CASE("pq tables give distances to the reconstruction and quantized tables approximate them", "[pq]") {
  const std::size_t dim = 24;
  const matrix<float> x = make_clustered(1000, dim, 10, 9, 1.0f);
  const matrix<float> queries = make_clustered(5, dim, 10, 10, 1.0f);
  for (const std::size_t nbits : {4, 8}) {
    product_quantizer pq(dim, 6, nbits);
    pq.train(x.view());
    CHECK(pq.codebooks().rows == 6 * pq.ksub());
    const std::vector<std::uint8_t> codes = pq.encode(x.view());
    matrix<float> back(x.rows, dim);
    pq.decode(codes.data(), x.rows, back.mutable_view());
    std::vector<std::uint8_t> packed(((x.rows + 31) / 32) * fast_scan_block_bytes(6));
    if (nbits == 4) pack_fast_scan(codes.data(), x.rows, 6, packed.data());
    for (const metric m : {metric::l2, metric::inner_product}) {
      std::vector<float> table(6 * pq.ksub());
      std::vector<float> adc(x.rows);
      quantized_table qt;
      std::vector<std::uint32_t> acc(packed.size() / fast_scan_block_bytes(6) * 32);
      for (std::size_t q = 0; q < queries.rows; ++q) {
        pq.compute_table(queries.row(q), m, table.data());
        pq.scan(table.data(), codes.data(), x.rows, adc.data());
        if (nbits == 4) {
          quantize_table(table.data(), 6, qt);
          active_quant_kernels().fast_scan(packed.data(), acc.size() / 32, 6, qt.values.data(), acc.data());
        }
        for (std::size_t i = 0; i < x.rows; ++i) {
          double exact = 0.0;
          for (std::size_t j = 0; j < dim; ++j) {
            const double a = queries.row(q)[j], b = back.row(i)[j];
            exact += m == metric::l2 ? (a - b) * (a - b) : a * b;
          }
          REQUIRE(adc[i] == Approx(exact).epsilon(1e-4).margin(1e-3));
          if (nbits == 4) {
            // Each of the 6 entries is rounded to within half a step of 1/scale.
            const double approx = qt.bias + static_cast<double>(acc[i]) / qt.scale;
            REQUIRE(std::abs(approx - adc[i]) <= 6 * 0.5 / qt.scale + 1e-3);
          }
        }
      }
    }
  }
}

TEST_CASE("pq rejects bad parameters", "[pq]") {
  REQUIRE_THROWS_MATCHES(product_quantizer(30, 7), shoal::error,
                         fails_with(errc::invalid_argument, "m = 7 does not divide dimension 30"));
  REQUIRE_THROWS_MATCHES(product_quantizer(32, 0), shoal::error, fails_with(errc::invalid_argument, "m (sub"));
  REQUIRE_THROWS_MATCHES(product_quantizer(0, 1), shoal::error, fails_with(errc::invalid_argument, "dimension"));
  REQUIRE_THROWS_MATCHES(product_quantizer(32, 4, 6), shoal::error, fails_with(errc::invalid_argument, "nbits = 6"));
  product_quantizer pq(16, 4, 8);
  const matrix<float> few = make_uniform(100, 16, 1);
  REQUIRE_THROWS_MATCHES(pq.encode(few.view()), shoal::error, fails_with(errc::invalid_argument, "not trained"));
  REQUIRE_THROWS_MATCHES(pq.train(few.view()), shoal::error,
                         fails_with(errc::invalid_argument, "need at least 256 training vectors, got 100"));
  const matrix<float> wrong = make_uniform(300, 17, 1);
  REQUIRE_THROWS_MATCHES(pq.train(wrong.view()), shoal::error,
                         fails_with(errc::dimension_mismatch, "has dimension 17, expected 16"));
}

TEST_CASE("pq trains where one sub-space barely varies, and says why when every sub-space does", "[pq]") {
  // Sub-space 3 spreads by ~1e-20, below what k-means can separate (its distances underflow): it refused
  // the whole set (a review), where a codebook of the sub-space's mean loses less than 1e-39 per vector.
  matrix<float> data = make_uniform(300, 16, 5);
  splitmix64 rng(9);
  for (std::size_t i = 0; i < data.rows; ++i)
    for (std::size_t j = 12; j < 16; ++j) data.row(i)[j] = 1e-20f * rng.normal();
  product_quantizer pq(16, 4, 4);
  pq.train(data.view());
  for (std::size_t c = 0; c < pq.ksub(); ++c)
    for (std::size_t j = 0; j < 4; ++j)
      CHECK(pq.codebooks().row(3 * pq.ksub() + c)[j] == pq.codebooks().row(3 * pq.ksub())[j]);
  // The other sub-spaces are coded as they were without it.
  product_quantizer without(12, 3, 4);
  matrix<float> head(300, 12);
  for (std::size_t i = 0; i < data.rows; ++i) std::copy_n(data.row(i), 12, head.row(i));
  without.train(head.view());
  for (std::size_t r = 0; r < 3 * pq.ksub(); ++r)
    for (std::size_t j = 0; j < 4; ++j) CHECK(pq.codebooks().row(r)[j] == without.codebooks().row(r)[j]);
  // Every sub-space that narrow: k-means says the data needs scaling up.
  for (float& v : data.values) v *= 1e-20f;
  REQUIRE_THROWS_MATCHES(pq.train(data.view()), shoal::error, fails_with(errc::invalid_argument, "spread by only"));
}

TEST_CASE("table quantization at every level matches the reference within one step", "[pq][kernel]") {
  const pq_kernels& ref = quant_kernels(simd_level::scalar);
  for (const std::size_t m : {1, 3, 16, 392}) {
    splitmix64 rng(m);
    std::vector<float> table(m * 16);
    for (float& t : table) t = rng.normal() * 10.0f;
    std::vector<std::uint8_t> want(m * 16);
    float want_bias = 0.0f, want_scale = 0.0f;
    REQUIRE(ref.quantize(table.data(), m, want.data(), &want_bias, &want_scale));
    // The reference: every row's minimum maps to 0 and the widest row's maximum to 255 (ordinary
    // tables keep the one scale: no row has a few entries far past the others).
    CHECK(std::count(want.begin(), want.end(), std::uint8_t{255}) >= 1);
    float widest = 0.0f;
    for (std::size_t s = 0; s < m; ++s)
      widest = std::max(widest, *std::max_element(table.begin() + s * 16, table.begin() + s * 16 + 16) -
                                    *std::min_element(table.begin() + s * 16, table.begin() + s * 16 + 16));
    CHECK(want_scale == 255.0f / widest);
    for (std::size_t s = 0; s < m; ++s)
      CHECK(*std::min_element(want.begin() + s * 16, want.begin() + s * 16 + 16) == 0);
    for (const simd_level level : available_simd_levels()) {
      CAPTURE(m, simd_level_name(level));
      std::vector<std::uint8_t> got(m * 16);
      float bias = 0.0f, scale = 0.0f;
      REQUIRE(quant_kernels(level).quantize(table.data(), m, got.data(), &bias, &scale));
      CHECK(bias == Approx(want_bias).epsilon(1e-5));
      CHECK(scale == want_scale);
      std::size_t off = 0;
      for (std::size_t i = 0; i < got.size(); ++i) off += std::abs(int{got[i]} - int{want[i]}) > 1 ? 1 : 0;
      CHECK(off == 0);
    }
  }
}

TEST_CASE("table quantization saturates a few far entries per row, exactly as the reference, at every level",
          "[pq][kernel]") {
  // Before, one scale of 255 / widest range: an entry at 10^6 among entries within ±30 rounded every
  // other entry to 0 or 1. Now each row may set aside up to three far entries (saturated at 255) and the
  // scale follows what is left. The saturated path is one scalar routine shared by every level, so
  // codes, bias and scale equal the reference's exactly.
  const pq_kernels& ref = quant_kernels(simd_level::scalar);
  for (const std::size_t m : {1, 3, 8, 9, 16, 17, 33, 392}) {
    for (const std::size_t far_per_row : {1, 3}) {
      for (const float offset : {0.0f, -50.0f, 1e4f}) {
        splitmix64 rng(m * 10 + far_per_row);
        std::vector<float> table(m * 16);
        for (float& t : table) t = offset + rng.normal() * 10.0f;
        std::vector<bool> far(m * 16, false);
        for (std::size_t s = 0; s < m; ++s)
          for (std::size_t k = 0; k < far_per_row; ++k) {
            const std::size_t i = s * 16 + (s * 5 + k * 7) % 16;
            table[i] = offset + 1e6f * static_cast<float>(k + 1);
            far[i] = true;
          }
        // The widest range left once each row's three largest entries are set aside.
        float robust = 0.0f;
        for (std::size_t s = 0; s < m; ++s) {
          std::vector<float> row(table.begin() + s * 16, table.begin() + s * 16 + 16);
          std::sort(row.begin(), row.end());
          robust = std::max(robust, row[12] - row[0]);
        }
        const kernel_quantized reference = quantize_with(ref, table, m);
        REQUIRE(reference.done);
        const std::vector<std::uint8_t>& want = reference.codes;
        const float want_scale = reference.scale;
        CAPTURE(m, far_per_row, offset, robust);
        CHECK(want_scale == Approx(255.0 / robust).epsilon(1e-5));
        for (std::size_t s = 0; s < m; ++s) {
          const float* row = table.data() + s * 16;
          const float lo = *std::min_element(row, row + 16);
          for (std::size_t c = 0; c < 16; ++c) {
            const std::size_t i = s * 16 + c;
            if (far[i] || row[c] - lo > robust) {
              CHECK(want[i] == 255);  // set aside (a far entry, or one of a row's three largest)
            } else {
              // Fine codes: within half a step (and float rounding) of the entry.
              CHECK(std::abs(want[i] / want_scale - (row[c] - lo)) <= 0.5 / want_scale + std::abs(row[c]) * 1e-6);
            }
          }
        }
        for (const simd_level level : available_simd_levels()) {
          CAPTURE(simd_level_name(level));
          const kernel_quantized got = quantize_with(quant_kernels(level), table, m);
          REQUIRE(got.done);
          CHECK(got.bias == reference.bias);
          CHECK(got.scale == want_scale);
          CHECK(got.codes == want);
        }
      }
    }
  }
}

TEST_CASE("saturated table quantization equals sorting each row, ties included", "[pq][kernel]") {
  // The saturated path finds each row's fourth largest entry without sorting (session 38); here against
  // a sort, on rows of few distinct values (ties at the top, at the fourth place, whole rows equal) with
  // one far entry in every other row, so that the rule holds. Scale and bytes must be exact.
  for (const std::size_t m : {1, 2, 5, 16, 63}) {
    for (const std::uint64_t seed : {1, 2, 3}) {
      splitmix64 rng(seed * 100 + m);
      std::vector<float> table(m * 16);
      for (std::size_t s = 0; s < m; ++s) {
        const std::size_t distinct = 1 + rng.below(4);
        for (std::size_t c = 0; c < 16; ++c) table[s * 16 + c] = static_cast<float>(rng.below(distinct)) * 0.75f;
        if (s % 2 == 0) table[s * 16 + rng.below(16)] = 1e4f;
      }
      for (std::size_t c = 0; c < 15; ++c) table[c] = static_cast<float>(c) * 0.125f;  // range left in row 0
      table[15] = 1e4f;
      float robust = 0.0f;
      for (std::size_t s = 0; s < m; ++s) {
        std::vector<float> row(table.begin() + s * 16, table.begin() + s * 16 + 16);
        std::sort(row.begin(), row.end());
        robust = std::max(robust, row[12] - row[0]);
      }
      CAPTURE(m, seed, robust);
      const float scale = 255.0f / robust;
      std::vector<std::uint8_t> want(m * 16);
      float bias = 0.0f;
      for (std::size_t s = 0; s < m; ++s) {
        const float* row = table.data() + s * 16;
        const float lo = *std::min_element(row, row + 16);
        bias += lo;
        for (std::size_t c = 0; c < 16; ++c)
          want[s * 16 + c] =
              static_cast<std::uint8_t>(static_cast<std::int32_t>(std::min((row[c] - lo) * scale + 0.5f, 255.0f)));
      }
      for (const simd_level level : available_simd_levels()) {
        CAPTURE(simd_level_name(level));
        const kernel_quantized got = quantize_with(quant_kernels(level), table, m);
        REQUIRE(got.done);
        CHECK(got.scale == scale);
        CHECK(got.bias == bias);
        CHECK(got.codes == want);
      }
    }
  }
}

TEST_CASE("table quantization keeps one scale unless a few entries per row dwarf the rest, alike at every level",
          "[pq][kernel]") {
  // Rows 0, 1/15, ..., 1 (plus an offset): set aside three entries of each, the widest range left is
  // 12/15. Row 0's three largest entries are moved out, its largest to just over or just under 16 times
  // that above its minimum (the rule saturates when the robust range is narrower than the widest by more
  // than 16): every level takes the reference's decision, also where |minimum| · scale is large (offsets
  // up to 10^6, where the AVX2 and AVX-512 codes can be several steps off the reference's).
  const pq_kernels& ref = quant_kernels(simd_level::scalar);
  for (const std::size_t m : {1, 7, 8, 17, 64}) {
    for (const float offset : {0.0f, 1e4f, -1e5f, 1e6f}) {
      for (const float factor : {16.02f, 15.98f}) {
        std::vector<float> table(m * 16);
        for (std::size_t s = 0; s < m; ++s)
          for (std::size_t c = 0; c < 16; ++c) table[s * 16 + c] = offset + static_cast<float>(c) / 15.0f;
        for (std::size_t c = 13; c < 16; ++c)
          table[c] = offset + factor * (12.0f / 15.0f) - 0.01f * static_cast<float>(15 - c);
        const kernel_quantized want = quantize_with(ref, table, m);
        REQUIRE(want.done);
        const float want_scale = want.scale;
        const float widest = *std::max_element(table.begin(), table.begin() + 16) - table[0];
        CAPTURE(m, offset, factor, want_scale);
        if (std::abs(offset) <= 1e4f) {  // further out, the entries' own rounding moves the boundary
          if (factor > 16.0f)
            CHECK(want_scale > 255.0f / widest * 15.0f);  // saturated: 255 / (12/15)
          else
            CHECK(want_scale == 255.0f / widest);
        }
        for (const simd_level level : available_simd_levels()) {
          CAPTURE(simd_level_name(level));
          const kernel_quantized got = quantize_with(quant_kernels(level), table, m);
          REQUIRE(got.done);
          CHECK(got.scale == want_scale);
          if (got.scale != 255.0f / widest)
            CHECK(got.codes == want.codes);  // the saturated path: the reference's bytes
        }
      }
    }
  }
  // A row that is wide throughout (a query far out along one sub-space: every codeword far, at spread
  // distances) is not an outlier: its fourth largest entry is far too, so the one scale stays.
  std::vector<float> wide(4 * 16);
  splitmix64 rng(3);
  for (float& t : wide) t = rng.normal();
  for (std::size_t c = 0; c < 16; ++c) wide[16 + c] = 1e6f + 2e3f * static_cast<float>(c);
  for (const simd_level level : available_simd_levels()) {
    const kernel_quantized got = quantize_with(quant_kernels(level), wide, 4);
    REQUIRE(got.done);
    CHECK(got.scale == 255.0f / (2e3f * 15.0f));
  }
}

TEST_CASE("table quantization refuses NaN, Inf and overflowing tables alike at every level", "[pq][kernel]") {
  // An Inf entry made the scale 0 and (Inf − min) · 0 NaN, converted to an integer: undefined in the
  // scalar reference, 0x80000000 at AVX2. Tables with rows of 1 to 33 (both sides of the SIMD kernels'
  // groups of 8 and 16 rows), a bad value in the first, a middle or the last row.
  constexpr float inf = std::numeric_limits<float>::infinity();
  const auto refused_everywhere = [](const std::vector<float>& table, std::size_t m) {
    bool all = true;
    for (const simd_level level : available_simd_levels()) {
      std::vector<std::uint8_t> out(m * 16, 0xab);
      float bias = 7.0f, scale = 7.0f;
      const bool done = quant_kernels(level).quantize(table.data(), m, out.data(), &bias, &scale);
      // Refused, and nothing written.
      all = all && !done && bias == 7.0f && scale == 7.0f &&
            std::all_of(out.begin(), out.end(), [](std::uint8_t b) { return b == 0xab; });
    }
    return all;
  };
  for (const std::size_t m : {1, 3, 8, 9, 16, 17, 33}) {
    splitmix64 rng(m + 100);
    std::vector<float> table(m * 16);
    for (float& t : table) t = rng.normal() * 10.0f;
    for (const std::size_t row : {std::size_t{0}, m / 2, m - 1}) {
      for (const std::size_t c : {0, 7, 8, 15}) {
        for (const float bad : {inf, -inf, std::numeric_limits<float>::quiet_NaN()}) {
          CAPTURE(m, row, c, bad);
          std::vector<float> t = table;
          t[row * 16 + c] = bad;
          CHECK(refused_everywhere(t, m));
          quantized_table qt;
          REQUIRE_THROWS_MATCHES(quantize_table(t.data(), m, qt), shoal::error,
                                 fails_with(errc::non_finite, "ADC table holds NaN or Inf"));
        }
      }
      // Finite entries whose row range overflows: max − min = 6e38.
      std::vector<float> wide = table;
      wide[row * 16 + 2] = -3e38f;
      wide[row * 16 + 11] = 3e38f;
      CAPTURE(m, row);
      CHECK(refused_everywhere(wide, m));
    }
    // Finite entries whose row minima overflow in their sum.
    if (m >= 2) {
      const std::vector<float> high(m * 16, 3e38f);
      CAPTURE(m);
      CHECK(refused_everywhere(high, m));
    }
  }
}

TEST_CASE("table quantization of ranges too small to scale gives zeros at every level", "[pq][kernel]") {
  // A widest range below 2^-120 made 255 / range Inf (and (x − min) · Inf NaN for x = min); such a table
  // now keeps scale 1, and every byte is 0.
  for (const std::size_t m : {1, 9, 17}) {
    std::vector<float> table(m * 16, 2.0f);
    table[5] = 2.0f + 0x1p-22f;  // a range of 2^-22 is fine: scale 255 · 2^22
    std::vector<float> tiny(m * 16, 0.0f);
    tiny[(m - 1) * 16 + 9] = 1e-38f;
    for (const simd_level level : available_simd_levels()) {
      CAPTURE(m, simd_level_name(level));
      std::vector<std::uint8_t> out(m * 16, 0xab);
      float bias = 0.0f, scale = 0.0f;
      REQUIRE(quant_kernels(level).quantize(tiny.data(), m, out.data(), &bias, &scale));
      CHECK(scale == 1.0f);
      CHECK(bias == 0.0f);
      CHECK(std::all_of(out.begin(), out.end(), [](std::uint8_t b) { return b == 0; }));
      REQUIRE(quant_kernels(level).quantize(table.data(), m, out.data(), &bias, &scale));
      CHECK(scale == 255.0f * 0x1p22f);
      CHECK(out[5] == 255);
    }
  }
}

// ------------------------------------------------------------------------------------- scalar quantizers

TEST_CASE("fp16 conversion rounds to nearest even and round-trips every half", "[pq][sq]") {
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const auto half = static_cast<std::uint16_t>(h);
    const float f = half_to_float(half);
    if (std::isnan(f)) {
      CHECK((half & 0x7c00) == 0x7c00);
      CHECK(std::isnan(half_to_float(float_to_half(f))));
      continue;
    }
    if (float_to_half(f) != half) FAIL("half " << h << " does not round-trip");
  }
  CHECK(half_to_float(float_to_half(1.0f)) == 1.0f);
  CHECK(half_to_float(float_to_half(65504.0f)) == 65504.0f);
  CHECK(std::isinf(half_to_float(float_to_half(65520.0f))));
  CHECK(half_to_float(float_to_half(65519.0f)) == 65504.0f);
  CHECK(half_to_float(float_to_half(0x1.0p-24f)) == 0x1.0p-24f);  // smallest subnormal
  CHECK(half_to_float(float_to_half(0x1.0p-26f)) == 0.0f);        // below half of it
  // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: ties to even (1).
  CHECK(half_to_float(float_to_half(1.0f + 0x1.0p-11f)) == 1.0f);
  CHECK(half_to_float(float_to_half(1.0f + 3 * 0x1.0p-11f)) == 1.0f + 0x1.0p-9f);
  CHECK(half_to_float(float_to_half(-2.5f)) == -2.5f);
}

TEST_CASE("fp16 encode saturates finite values beyond the half range instead of coding Inf", "[pq][sq]") {
  // 1e5 is a valid component (far below check_vectors' bound) but overflows a half: an Inf code made
  // every distance to the vector Inf, and it fell out of every top-k.
  const scalar_quantizer sq(4, sq_type::fp16);
  const std::vector<float> x{1e5f, -1e7f, 3.0f, 65504.0f};
  std::vector<std::uint8_t> codes(sq.code_size());
  sq.encode({x.data(), 1, 4}, codes.data());
  matrix<float> back(1, 4);
  sq.decode(codes.data(), 1, back.mutable_view());
  CHECK(back.row(0)[0] == max_half);
  CHECK(back.row(0)[1] == -max_half);
  CHECK(back.row(0)[2] == 3.0f);
  CHECK(back.row(0)[3] == max_half);
  float d = 0;
  const std::vector<float> q{0.0f, 0.0f, 0.0f, 0.0f};
  sq.distances(q.data(), metric::l2, codes.data(), 1, &d);
  CHECK(std::isfinite(d));
}

TEST_CASE("sq8 and fp16 encode, decode and distances agree with the reconstruction at every level", "[pq][sq]") {
  for (const std::size_t dim : {1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 100, 784}) {
    const matrix<float> x = make_clustered(200, dim, 5, dim, 1.0f);
    const matrix<float> queries = make_clustered(3, dim, 5, dim + 1, 1.0f);
    for (const sq_type type : {sq_type::sq8, sq_type::fp16}) {
      CAPTURE(dim, type == sq_type::sq8 ? "sq8" : "fp16");
      scalar_quantizer sq(dim, type);
      sq.train(x.view());
      std::vector<std::uint8_t> codes(x.rows * sq.code_size() + 1);
      // Codes at an odd address: kernels take any alignment.
      sq.encode(x.view(), codes.data() + 1);
      matrix<float> back(x.rows, dim);
      sq.decode(codes.data() + 1, x.rows, back.mutable_view());
      double worst = 0.0;
      for (std::size_t i = 0; i < x.rows; ++i)
        for (std::size_t d = 0; d < dim; ++d) {
          const double err = std::abs(static_cast<double>(back.row(i)[d]) - x.row(i)[d]);
          const double bound =
              type == sq_type::sq8 ? sq.steps()[d] * 0.5 + 1e-6 : std::abs(x.row(i)[d]) * 0x1.0p-11 + 1e-7;
          worst = std::max(worst, err - bound);
        }
      CHECK(worst <= 0.0);
      for (const metric m : {metric::l2, metric::inner_product}) {
        std::vector<float> got(x.rows);
        for (std::size_t q = 0; q < queries.rows; ++q) {
          sq.distances(queries.row(q), m, codes.data() + 1, x.rows, got.data());
          for (const simd_level level : available_simd_levels()) {
            const sq_kernels& k = scalar_quant_kernels(level);
            for (std::size_t i = 0; i < x.rows; ++i) {
              double want = 0.0, scale = 0.0;
              for (std::size_t d = 0; d < dim; ++d) {
                const double a = queries.row(q)[d], b = back.row(i)[d];
                want += m == metric::l2 ? (a - b) * (a - b) : a * b;
                scale += m == metric::l2 ? (a - b) * (a - b) : std::abs(a * b);
              }
              const std::uint8_t* c = codes.data() + 1 + i * sq.code_size();
              const bool l2 = m == metric::l2;
              const float v = type == sq_type::sq8 ? (l2 ? k.sq8_l2 : k.sq8_ip)(queries.row(q), c, sq.mins().data(),
                                                                                sq.steps().data(), dim)
                                                   : (l2 ? k.fp16_l2 : k.fp16_ip)(queries.row(q), c, dim);
              const double tol = 1e-5 * (scale + 1.0) * static_cast<double>(dim + 2);
              CAPTURE(simd_level_name(level), i, v, want);
              if (std::abs(v - want) > tol) FAIL("kernel off by " << std::abs(v - want));
              const double reported = l2 ? got[i] : -got[i];
              if (std::abs(reported - want) > tol) FAIL("distances() off by " << std::abs(reported - want));
            }
          }
        }
      }
      // Under cosine (codes of unit rows, a unit query) distances() is half the L2 one, exactly: the
      // form that cancels a reconstruction's length error (1 − ⟨q, x̂⟩ did not; test_ivf_pq).
      std::vector<float> l2(x.rows), cosine(x.rows);
      sq.distances(queries.row(0), metric::l2, codes.data() + 1, x.rows, l2.data());
      sq.distances(queries.row(0), metric::cosine, codes.data() + 1, x.rows, cosine.data());
      for (std::size_t i = 0; i < x.rows; ++i) REQUIRE(cosine[i] == 0.5f * l2[i]);
    }
  }
}

TEST_CASE("the sq8 estimate stays within its rounding bound, on two grids when one dimension dwarfs the rest",
          "[pq][sq]") {
  // Uniform data in [0, 1); with `far`, dimension 0 spans [0, 10,000), so that its coefficient is about
  // 10,000 times the others' and one integer grid would round them to a few steps (an error of 1/10 of
  // the dot part here, 1/50 of it on average). (A single outlier row no longer does that: training
  // clamps it, `scalar_quantizer::train`.)
  constexpr std::size_t dim = 64, n = 300, nq = 20;
  const matrix<float> queries = make_uniform(nq, dim, 8);
  for (const bool far : {false, true})
    for (const metric m : {metric::l2, metric::inner_product, metric::cosine}) {
      CAPTURE(far, metric_name(m));
      matrix<float> x = make_uniform(n, dim, 7);
      if (far)
        for (std::size_t i = 0; i < n; ++i) x.row(i)[0] *= 10000.0f;
      scalar_quantizer sq(dim, sq_type::sq8);
      sq.train(x.view());
      std::vector<std::uint8_t> codes(n * dim);
      sq.encode(x.view(), codes.data());
      const std::vector<float>&min = sq.mins(), &step = sq.steps();
      detail::sq8_estimator estimator;
      std::size_t two_grids = 0;  // queries that needed them (one grid suffices for a small y_0 under L2)
      for (std::size_t q = 0; q < nq; ++q) {
        const float* y = queries.row(q);
        estimator.prepare(sq, m, y);
        two_grids += estimator.two_grids() ? 1 : 0;
        for (std::size_t i = 0; i < n; ++i) {
          const std::uint8_t* c = codes.data() + i * dim;
          std::int64_t dot = 0, residual_dot = 0;
          // Under cosine half the L2 form (sq8_estimator), whatever the rows' lengths here.
          const double half = m == metric::cosine ? 0.5 : 1.0;
          double exact = 0.0, weighted = 0.0, code_sum = 0.0;
          for (std::size_t j = 0; j < dim; ++j) {
            dot += std::int64_t{estimator.coeffs()[j]} * c[j];
            residual_dot += std::int64_t{estimator.residual_coeffs()[j]} * c[j];
            const double decoded = double{min[j]} + double{step[j]} * c[j];
            exact += m == metric::inner_product ? -double{y[j]} * decoded : half * (y[j] - decoded) * (y[j] - decoded);
            const double a =
                m == metric::inner_product ? double{y[j]} * step[j] : 2.0 * half * (double{y[j]} - min[j]) * step[j];
            weighted += std::abs(a) * c[j];
            code_sum += c[j];
          }
          const float est = estimator.estimate(detail::sq8_estimator::term(sq, m, c), static_cast<std::int32_t>(dot),
                                               static_cast<std::int32_t>(residual_dot));
          const double error = std::abs(est - exact);
          const double float_rounding = 1e-6 * (std::abs(estimator.offset()) + std::abs(exact) + weighted);
          // The documented bound, and a rounding well below the codes' own (half a step: 1/510 of a range).
          CHECK(error <= 0.5 * estimator.unit() * code_sum + float_rounding);
          CHECK(error <= weighted / 512.0 + float_rounding);
        }
      }
      CAPTURE(two_grids);
      CHECK((far ? two_grids >= nq - 2 : two_grids == 0));
    }
  // Ordinary high-dimensional data keeps one grid although L shrinks with the dimension (2,056 here): a
  // first trigger took two grids for every one of these queries, doubling the integer work.
  constexpr std::size_t wide = 4096;
  const matrix<float> gaussian = make_clustered(200, wide, 1, 9, 1.0f);
  const matrix<float> asked = make_clustered(20, wide, 1, 10, 1.0f);
  for (const metric m : {metric::l2, metric::inner_product, metric::cosine}) {
    CAPTURE(metric_name(m));
    scalar_quantizer sq(wide, sq_type::sq8);
    sq.train(gaussian.view());
    detail::sq8_estimator estimator;
    for (std::size_t q = 0; q < asked.rows; ++q) {
      estimator.prepare(sq, m, asked.row(q));
      CHECK_FALSE(estimator.two_grids());
    }
  }
}

TEST_CASE("sq8 and fp16 kernels decode every component exactly as decode does, at every level", "[pq][sq][kernel]") {
  // The inner product with the unit vector e_j is the decoded component j alone (every other term is an
  // exact zero, at any summation order), so each kernel's decoding can be compared bit for bit. SQ8's
  // min + code · step was fused into one FMA in the AVX2 object only (GCC contracts by default there),
  // and differed from the scalar reference in the last bit.
  for (const std::size_t dim : {1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 100, 128, 784}) {
    const matrix<float> x = make_clustered(40, dim, 5, dim + 7, 3.0f);
    for (const sq_type type : {sq_type::sq8, sq_type::fp16}) {
      CAPTURE(dim, type == sq_type::sq8 ? "sq8" : "fp16");
      scalar_quantizer sq(dim, type);
      sq.train(x.view());
      const std::size_t rows = 4;
      std::vector<std::uint8_t> codes(rows * sq.code_size() + 1);
      sq.encode(x.view().slice(0, rows), codes.data() + 1);  // misaligned codes
      matrix<float> back(rows, dim);
      sq.decode(codes.data() + 1, rows, back.mutable_view());
      std::vector<float> unit(dim, 0.0f);
      for (const simd_level level : available_simd_levels()) {
        CAPTURE(simd_level_name(level));
        const sq_kernels& k = scalar_quant_kernels(level);
        std::size_t differ = 0;
        for (std::size_t i = 0; i < rows; ++i) {
          const std::uint8_t* c = codes.data() + 1 + i * sq.code_size();
          for (std::size_t j = 0; j < dim; ++j) {
            unit[j] = 1.0f;
            const float got = type == sq_type::sq8 ? k.sq8_ip(unit.data(), c, sq.mins().data(), sq.steps().data(), dim)
                                                   : k.fp16_ip(unit.data(), c, dim);
            unit[j] = 0.0f;
            differ += got == back.row(i)[j] ? 0 : 1;
          }
        }
        CHECK(differ == 0);
      }
    }
  }
}

TEST_CASE("sq8 ranges learnt from rows inside the norm bound load back", "[pq][sq]") {
  // One dimension from -3.07e18 to the largest float inside the bound: the rounded step put min + 255 ·
  // step past it, and sq8_with_ranges (a load) refused the ranges train had made (an IVF-PQ with
  // Refine(SQ8) could not load its own file; a review).
  float top = static_cast<float>(std::sqrt(detail::max_squared_norm));
  while (static_cast<double>(top) * top > detail::max_squared_norm) top = std::nextafter(top, 0.0f);
  const float low = -3.07020205e18f;
  matrix<float> rows(256, 1);
  for (std::size_t i = 0; i < rows.rows; ++i)
    rows.row(i)[0] = i == 0 ? low : i == 1 ? top : low + (top - low) * static_cast<float>(i) / 256.0f;
  for (const unsigned top_code : {255u, 15u}) {
    CAPTURE(top_code);
    scalar_quantizer q(1, sq_type::sq8);
    q.train(rows.view(), top_code);
    CHECK_NOTHROW(scalar_quantizer::sq8_with_ranges(q.mins(), q.steps(), top_code));
  }
}

TEST_CASE("scalar quantizers reject bad input", "[pq][sq]") {
  REQUIRE_THROWS_MATCHES(scalar_quantizer(0, sq_type::sq8), shoal::error,
                         fails_with(errc::invalid_argument, "dimension"));
  scalar_quantizer sq(8, sq_type::sq8);
  CHECK_FALSE(sq.is_trained());
  const matrix<float> x = make_uniform(10, 8, 1);
  std::vector<std::uint8_t> codes(80);
  REQUIRE_THROWS_MATCHES(sq.encode(x.view(), codes.data()), shoal::error,
                         fails_with(errc::invalid_argument, "not trained"));
  const matrix<float> wrong = make_uniform(10, 9, 1);
  REQUIRE_THROWS_MATCHES(sq.train(wrong.view()), shoal::error, fails_with(errc::dimension_mismatch, "has dimension 9"));
  REQUIRE_THROWS_MATCHES(sq.train(x.view().slice(0, 0)), shoal::error,
                         fails_with(errc::invalid_argument, "no training"));
  CHECK(scalar_quantizer(8, sq_type::fp16).is_trained());
  // Finite but extreme: a range of 6e38 would overflow its step (NaN codes, an Inf step in a saved
  // Refine(SQ8) index); such rows are refused by their norm, and the largest accepted ones keep every
  // step and reconstruction finite.
  matrix<float> extreme(2, 8);
  std::fill(extreme.values.begin(), extreme.values.end(), 0.0f);
  extreme.row(0)[2] = -3e38f;
  extreme.row(1)[2] = 3e38f;
  REQUIRE_THROWS_MATCHES(sq.train(extreme.view()), shoal::error, fails_with(errc::non_finite, "row 0 has norm"));
  extreme.row(0)[2] = -6.5e18f;
  extreme.row(1)[2] = 6.5e18f;
  sq.train(extreme.view());
  CHECK(std::isfinite(sq.steps()[2]));
  sq.encode(extreme.view(), codes.data());
  matrix<float> ends(2, 8);
  sq.decode(codes.data(), 2, ends.mutable_view());
  CHECK(ends.row(0)[2] == -6.5e18f);
  CHECK(std::abs(ends.row(1)[2] - 6.5e18f) <= 1e12f);
  // A constant dimension decodes to its value.
  matrix<float> constant = make_uniform(10, 8, 2);
  for (std::size_t i = 0; i < 10; ++i) constant.row(i)[3] = 0.25f;
  sq.train(constant.view());
  sq.encode(constant.view(), codes.data());
  matrix<float> back(10, 8);
  sq.decode(codes.data(), 10, back.mutable_view());
  for (std::size_t i = 0; i < 10; ++i) CHECK(back.row(i)[3] == 0.25f);
  // Trained with 15 steps (4-bit codes sharing the ranges), a value past the range clamps to code 15
  // (once: code 100, decoding far outside the trained range).
  matrix<float> grid(2, 8);
  for (std::size_t d = 0; d < 8; ++d) grid.row(1)[d] = 15.0f;
  sq.train(grid.view(), 15);
  CHECK(sq.top_code() == 15);
  for (std::size_t d = 0; d < 8; ++d) grid.row(1)[d] = 100.0f;
  sq.encode(grid.view(), codes.data());
  CHECK(codes[8] == 15);
  const scalar_quantizer given = scalar_quantizer::sq8_with_ranges(sq.mins(), sq.steps(), 15);
  given.encode(grid.view(), codes.data());
  CHECK(codes[8] == 15);
  REQUIRE_THROWS_MATCHES(scalar_quantizer::sq8_with_ranges(sq.mins(), sq.steps(), 0), shoal::error,
                         fails_with(errc::invalid_argument, "top_code 0 is outside 1-255"));
}

// ------------------------------------------------------------------------------------------------- OPQ

namespace {

/// Mean squared error of `x` coded by `sq` and decoded, over dimension `d` (all dimensions: npos).
double sq_error(const scalar_quantizer& sq, const matrix<float>& x, std::size_t d = std::size_t(-1)) {
  std::vector<std::uint8_t> codes(x.rows * sq.code_size());
  sq.encode(x.view(), codes.data());
  matrix<float> back(x.rows, x.dim);
  sq.decode(codes.data(), x.rows, back.mutable_view());
  double sum = 0.0;
  std::size_t count = 0;
  for (std::size_t i = 0; i < x.rows; ++i)
    for (std::size_t j = 0; j < x.dim; ++j)
      if (d == std::size_t(-1) || j == d) {
        const double e = static_cast<double>(back.row(i)[j]) - x.row(i)[j];
        sum += e * e;
        ++count;
      }
  return sum / static_cast<double>(count);
}

}  // namespace

TEST_CASE("sq8 ranges: the fit minimises the modelled error over every pair of ends", "[pq][sq]") {
  splitmix64 rng(11);
  for (const unsigned top : {255u, 15u, 1u}) {
    for (int trial = 0; trial < 4; ++trial) {
      std::vector<float> v(150);
      for (float& x : v) x = trial % 2 == 0 ? cauchy(rng) : rng.normal();
      if (trial == 3) v[7] = 500.0f;  // one outlier
      std::sort(v.begin(), v.end());
      const detail::code_range_model model(v, top);
      REQUIRE(model.has_spread());
      double best = std::numeric_limits<double>::infinity();
      for (std::size_t i = 0; i < v.size(); ++i)
        for (std::size_t j = i; j < v.size(); ++j) best = std::min(best, model.error({v[i], v[j]}));
      const detail::code_range fit = model.best();
      CAPTURE(top, trial, fit.lo, fit.hi);
      CHECK(fit.lo <= fit.hi);
      CHECK(model.error(fit) <= best * (1.0 + 1e-9));
    }
  }
  // A value holding the middle half: no spread to weigh by, and the extremes stay.
  std::vector<float> mass(100, 0.0f);
  mass.back() = 1e4f;
  const detail::code_range_model model(mass, 255);
  CHECK_FALSE(model.has_spread());
  CHECK(model.best().lo == 0.0f);
  CHECK(model.best().hi == 1e4f);
}

TEST_CASE("sq8 ranges: light tails and dense groups keep the extremes, and heavy tails and outliers are clamped",
          "[pq][sq]") {
  constexpr std::size_t n = 20000, dim = 5;
  splitmix64 rng(5);
  matrix<float> x(n, dim);
  for (std::size_t i = 0; i < n; ++i) {
    x.row(i)[0] = rng.normal();                                                    // light tails
    x.row(i)[1] = static_cast<float>(rng.below(256));                              // 8-bit pixels
    x.row(i)[2] = rng.below(200) == 0 ? static_cast<float>(rng.below(60)) : 0.0f;  // mostly 0
    x.row(i)[3] = rng.normal() + (i % 20 == 0 ? 1000.0f : 0.0f);                   // a small cluster far out
    x.row(i)[4] = rng.normal();
  }
  x.row(123)[4] = 1000.0f;  // one outlier in dimension 4
  for (const unsigned top : {255u, 15u}) {
    CAPTURE(top);
    scalar_quantizer sq(dim, sq_type::sq8);
    sq.train(x.view(), top);
    for (std::size_t d = 0; d < 4; ++d) {
      float lo = x.row(0)[d], hi = lo;
      for (std::size_t i = 0; i < n; ++i) {
        lo = std::min(lo, x.row(i)[d]);
        hi = std::max(hi, x.row(i)[d]);
      }
      CAPTURE(d);
      CHECK(sq.mins()[d] == lo);
      CHECK(sq.steps()[d] == (hi - lo) / static_cast<float>(top));
    }
    // The outlier's dimension: its range stops well short of 1000, so that ordinary values keep steps
    // like dimension 0's; the outlier itself is clamped.
    CHECK(sq.mins()[4] + static_cast<float>(top) * sq.steps()[4] < 20.0f);
    CHECK(sq.steps()[4] < 2.0f * sq.steps()[0]);
    matrix<float> ordinary(n - 1, dim);
    for (std::size_t i = 0, r = 0; i < n; ++i)
      if (i != 123) std::copy_n(x.row(i), dim, ordinary.row(r++));
    CHECK(sq_error(sq, ordinary, 4) < 4.0 * sq_error(sq, ordinary, 0));
  }
  // Heavy tails in every dimension: the fitted ranges are a small part of the extremes, and code the
  // values of the bulk (|x| < 10, 94% of them) far better than the extremes' ranges would.
  matrix<float> heavy(n, 4);
  for (float& v : heavy.values) v = cauchy(rng);
  scalar_quantizer fitted(4, sq_type::sq8);
  fitted.train(heavy.view());
  std::vector<float> lo(4), step(4);
  for (std::size_t d = 0; d < 4; ++d) {
    float a = heavy.row(0)[d], b = a;
    for (std::size_t i = 0; i < n; ++i) {
      a = std::min(a, heavy.row(i)[d]);
      b = std::max(b, heavy.row(i)[d]);
    }
    lo[d] = a;
    step[d] = (b - a) / 255.0f;
    CAPTURE(d, fitted.mins()[d], fitted.steps()[d], step[d]);
    CHECK(fitted.steps()[d] < step[d] / 20.0f);
  }
  std::vector<float> bulk;
  for (std::size_t i = 0; i < n; ++i)
    if (std::all_of(heavy.row(i), heavy.row(i) + 4, [](float v) { return std::abs(v) < 10.0f; }))
      bulk.insert(bulk.end(), heavy.row(i), heavy.row(i) + 4);
  matrix<float> inner(bulk.size() / 4, 4);
  std::copy(bulk.begin(), bulk.end(), inner.values.begin());
  const scalar_quantizer extremes = scalar_quantizer::sq8_with_ranges(lo, step);
  CHECK(sq_error(fitted, inner) < sq_error(extremes, inner) / 100.0);
  scalar_quantizer sq(dim, sq_type::sq8);
  for (const unsigned bad : {0u, 256u})
    REQUIRE_THROWS_MATCHES(sq.train(x.view(), bad), shoal::error, fails_with(errc::invalid_argument, "top_code"));
}

TEST_CASE("opq reports finite errors for data near the norm bound, and pq names a zero iteration count", "[pq][opq]") {
  // The error was summed in float: inf for valid vectors of norm ~1e18 (the rotation itself was fine).
  const std::size_t dim = 32;
  matrix<float> x = make_uniform(3000, dim, 3);  // norms below sqrt(32) · 1.1e18 = 6.2e18
  for (float& v : x.values) v *= 1.1e18f;
  opq_rotation opq(dim, 4, 4);
  opq_train_params tp;
  tp.iterations = 2;
  opq.train(x.view(), tp);
  for (const double e : opq.errors()) CHECK(std::isfinite(e));
  product_quantizer pq(dim, 4, 4);
  pq_train_params none;
  none.iterations = 0;
  REQUIRE_THROWS_MATCHES(pq.train(x.view(), none), shoal::error,
                         fails_with(errc::invalid_argument, "product_quantizer::train: iterations must be at least 1"));
}

TEST_CASE("opq learns an orthogonal rotation that lowers pq error on correlated data", "[pq][opq]") {
  // Correlated data: the variance sits in the first 4 of 16 components, mixed by a fixed rotation-like
  // blend, so that plain PQ (4 sub-spaces of 4) wastes most sub-quantizers.
  const std::size_t dim = 16, n = 2000;
  splitmix64 rng(5);
  matrix<float> x(n, dim);
  for (std::size_t i = 0; i < n; ++i) {
    float latent[4];
    for (float& l : latent) l = rng.normal() * 3.0f;
    for (std::size_t d = 0; d < dim; ++d) x.row(i)[d] = latent[d % 4] * (d < 4 ? 1.0f : 0.3f) + 0.1f * rng.normal();
  }
  opq_rotation opq(dim, 4, 4);
  CHECK_FALSE(opq.is_trained());
  opq_train_params tp;
  tp.iterations = 6;
  opq.train(x.view(), tp);
  REQUIRE(opq.is_trained());
  REQUIRE(opq.errors().size() == 6);
  CAPTURE(opq.errors().front(), opq.errors().back());
  CHECK(opq.errors().back() <= opq.errors().front() * 1.05);
  // R is orthogonal: RᵀR = I.
  const std::vector<float>& r = opq.matrix_values();
  for (std::size_t a = 0; a < dim; ++a)
    for (std::size_t b = 0; b < dim; ++b) {
      double dot = 0.0;
      for (std::size_t k = 0; k < dim; ++k) dot += static_cast<double>(r[k * dim + a]) * r[k * dim + b];
      CHECK(dot == Approx(a == b ? 1.0 : 0.0).margin(1e-4));
    }
  // Rotation keeps distances, and a PQ trained on rotated data reconstructs them better than plain PQ.
  const matrix<float> y = opq.apply(x.view());
  CHECK(l2sqr(y.row(0), y.row(1), dim) == Approx(l2sqr(x.row(0), x.row(1), dim)).epsilon(1e-4));
  pq_train_params pp;
  pp.iterations = 10;
  product_quantizer plain(dim, 4, 4), rotated(dim, 4, 4);
  plain.train(x.view(), pp);
  rotated.train(y.view(), pp);
  CAPTURE(reconstruction_error(rotated, y), reconstruction_error(plain, x));
  CHECK(reconstruction_error(rotated, y) < 0.9 * reconstruction_error(plain, x));
  REQUIRE_THROWS_MATCHES(opq_rotation(dim, 5), shoal::error, fails_with(errc::invalid_argument, "does not divide"));
  REQUIRE_THROWS_MATCHES(opq_rotation(dim, 4).apply(x.view()), shoal::error,
                         fails_with(errc::invalid_argument, "not trained"));
  // In place (output over the input): as out of place (it read rows it had already overwritten).
  matrix<float> inout = x;
  opq.apply(inout.view(), inout.mutable_view());
  CHECK(inout.values == y.values);
  // Shifted by a row (output row i over input row i + 1): every row still its own input's rotation.
  matrix<float> shifted(n + 1, dim);
  std::copy(x.values.begin(), x.values.end(), shifted.values.begin() + dim);
  opq.apply(shifted.view().slice(1, n), shifted.mutable_view().slice(0, n));
  CHECK(std::equal(y.values.begin(), y.values.end(), shifted.values.begin()));
  // A row rotated alone is the same bits as in a batch (a batch went through a GEMM, one row a GEMV, and
  // at 192 dimensions most values differed in the last bits).
  const matrix<float> wide = make_clustered(600, 192, 8, 43, 1.0f);
  opq_rotation opq192(192, 24, 4);
  tp.iterations = 1;
  opq192.train(wide.view(), tp);
  const matrix<float> rotated_wide = opq192.apply(wide.view());
  std::size_t same = 0;
  for (std::size_t i = 0; i < wide.rows; ++i) {
    const matrix<float> alone = opq192.apply(wide.view().slice(i, 1));
    same += std::equal(alone.values.begin(), alone.values.end(), rotated_wide.row(i)) ? 1 : 0;
  }
  CHECK(same == wide.rows);
}

TEST_CASE("opq evens out variance that sits in one sub-space, and keeps plain pq where it is better", "[pq][opq]") {
  // Variance in dimensions 0-3 (sigma 10), 0.1 elsewhere: the 4 sub-spaces of 4 leave three of them
  // nearly empty. Started from the identity, the alternation never left plain PQ's error (a review:
  // 141 against 133.7 for plain PQ); dealing the principal directions out one per sub-space codes each
  // large direction alone.
  const std::size_t dim = 16;
  splitmix64 rng(5);
  matrix<float> x(4000, dim);
  for (std::size_t i = 0; i < x.rows; ++i)
    for (std::size_t d = 0; d < dim; ++d) x.row(i)[d] = (d < 4 ? 10.0f : 0.1f) * rng.normal();
  opq_rotation opq(dim, 4, 4);
  opq.train(x.view());
  product_quantizer plain(dim, 4, 4);
  plain.train(x.view());
  CAPTURE(opq.errors(), reconstruction_error(plain, x));
  CHECK(opq.errors().back() < 0.1 * reconstruction_error(plain, x));
  // Uniform in a cube, which the axis-aligned sub-spaces code best (the principal directions of equal
  // variances are arbitrary and mix the axes): the identity start is kept, so the first error is plain
  // PQ's with the same seed.
  const matrix<float> cube = make_uniform(2000, dim, 3);
  opq_rotation second(dim, 4, 4);
  opq_train_params tp;
  tp.iterations = 3;
  second.train(cube.view(), tp);
  product_quantizer first_pq(dim, 4, 4);
  pq_train_params pp;
  pp.iterations = tp.pq_iterations;
  pp.seed = tp.seed;
  first_pq.train(cube.view(), pp);
  CHECK(second.errors().front() == Approx(reconstruction_error(first_pq, cube)).epsilon(1e-6));
}

TEST_CASE("quantizers refuse missing buffers and codes outside the codebook", "[pq][sq][opq]") {
  const matrix<float> x = make_uniform(300, 8, 3);
  product_quantizer pq4(8, 2, 4);
  pq4.train(x.view());
  scalar_quantizer sq(8, sq_type::sq8);
  sq.train(x.view());
  opq_rotation opq(8, 2, 4);
  opq.train(x.view());
  matrix<float> out(2, 8);
  const matrix_view<float> no_data{nullptr, 2, 8};
  std::vector<std::uint8_t> codes(2 * 8, 0);
  REQUIRE_THROWS_MATCHES(pq4.encode(x.view().slice(0, 2), nullptr), shoal::error,
                         fails_with(errc::invalid_argument, "product_quantizer::encode: no codes for 2 rows"));
  REQUIRE_THROWS_MATCHES(pq4.decode(nullptr, 2, out.mutable_view()), shoal::error,
                         fails_with(errc::invalid_argument, "product_quantizer::decode: no codes for 2 rows"));
  REQUIRE_THROWS_MATCHES(
      pq4.decode(codes.data(), 2, no_data), shoal::error,
      fails_with(errc::invalid_argument, "product_quantizer::decode: output has 2 rows but no data"));
  REQUIRE_THROWS_MATCHES(sq.encode(x.view().slice(0, 2), nullptr), shoal::error,
                         fails_with(errc::invalid_argument, "scalar_quantizer::encode: no codes for 2 rows"));
  REQUIRE_THROWS_MATCHES(sq.decode(codes.data(), 2, no_data), shoal::error,
                         fails_with(errc::invalid_argument, "scalar_quantizer::decode: output has 2 rows but no data"));
  REQUIRE_THROWS_MATCHES(opq.apply(x.view().slice(0, 2), no_data), shoal::error,
                         fails_with(errc::invalid_argument, "opq_rotation::apply: output has 2 rows but no data"));
  REQUIRE_THROWS_MATCHES(pq4.decode(codes.data(), 2, matrix_view<float>{out.values.data(), 2, 8, 4}), shoal::error,
                         fails_with(errc::invalid_argument, "stride 4 is smaller than its dimension 8"));
  // A 4-bit code is a byte below 16: 16 read the next sub-quantizer's first codeword, past the last one
  // read outside the codebooks.
  codes[3] = 16;
  REQUIRE_THROWS_MATCHES(pq4.decode(codes.data(), 2, out.mutable_view()), shoal::error,
                         fails_with(errc::invalid_argument, "code 16 of row 1 (sub-quantizer 1) is not below 16"));
}
