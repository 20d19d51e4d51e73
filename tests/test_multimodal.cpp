#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "shoal/eval/eval.hpp"
#include "shoal/index/flat.hpp"
#include "shoal/io/format.hpp"
#include "shoal/io/vecs.hpp"
#include "shoal/multimodal/fusion.hpp"
#include "shoal/multimodal/projection.hpp"
#include "test_support.hpp"

using namespace shoal;
using shoal::test::fails_with;

namespace {

/// rows x cols values, each `scale` times a standard normal.
matrix<float> gaussian(std::size_t rows, std::size_t cols, std::uint64_t seed, float scale = 1.0f) {
  matrix<float> m(rows, cols);
  splitmix64 rng(seed);
  for (float& v : m.values) v = scale * rng.normal();
  return m;
}

/// out = in · Aᵀ + noise · N(0, 1), for a linear "encoder" A (out_dim x in_dim, row-major).
matrix<float> encode(const matrix<float>& in, const matrix<float>& a, float noise, std::uint64_t seed) {
  matrix<float> out(in.rows, a.rows);
  splitmix64 rng(seed);
  for (std::size_t i = 0; i < in.rows; ++i)
    for (std::size_t r = 0; r < a.rows; ++r) {
      double sum = 0.0;
      for (std::size_t j = 0; j < in.dim; ++j) sum += static_cast<double>(a.row(r)[j]) * in.row(i)[j];
      out.row(i)[r] = static_cast<float>(sum) + noise * rng.normal();
    }
  return out;
}

/// A random dim x dim orthogonal matrix: Gram–Schmidt (twice, for accuracy) on Gaussian rows.
matrix<float> random_orthogonal(std::size_t dim, std::uint64_t seed) {
  splitmix64 rng(seed);
  std::vector<double> q(dim * dim);
  for (double& v : q) v = rng.normal();
  for (std::size_t i = 0; i < dim; ++i)
    for (int pass = 0; pass < 2; ++pass) {
      for (std::size_t p = 0; p < i; ++p) {
        double dot = 0.0;
        for (std::size_t j = 0; j < dim; ++j) dot += q[i * dim + j] * q[p * dim + j];
        for (std::size_t j = 0; j < dim; ++j) q[i * dim + j] -= dot * q[p * dim + j];
      }
      double norm = 0.0;
      for (std::size_t j = 0; j < dim; ++j) norm += q[i * dim + j] * q[i * dim + j];
      for (std::size_t j = 0; j < dim; ++j) q[i * dim + j] /= std::sqrt(norm);
    }
  matrix<float> out(dim, dim);
  for (std::size_t i = 0; i < q.size(); ++i) out.values[i] = static_cast<float>(q[i]);
  return out;
}

/// W·x + b in double, the reference for `apply`.
std::vector<double> reference_apply(const projection& p, const float* x) {
  std::vector<double> y(p.out_dim());
  for (std::size_t i = 0; i < p.out_dim(); ++i) {
    double sum = p.bias()[i];
    for (std::size_t j = 0; j < p.in_dim(); ++j) sum += static_cast<double>(p.weights()[i * p.in_dim() + j]) * x[j];
    y[i] = sum;
  }
  return y;
}

double frobenius(std::span<const float> v) {
  double sum = 0.0;
  for (const float x : v) sum += static_cast<double>(x) * x;
  return std::sqrt(sum);
}

/// Fraction of queries whose paired base row (same row number) is among their k nearest.
double paired_recall(const matrix<float>& queries, const matrix<float>& base, std::size_t k) {
  flat_index index(base.dim, metric::l2);
  std::vector<vector_id> ids(base.rows);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = i;
  index.add(base.view(), ids);
  const neighbors found = index.search(queries.view(), k);
  std::size_t hits = 0;
  for (std::size_t q = 0; q < queries.rows; ++q)
    for (std::size_t j = 0; j < k; ++j) hits += found.id(q, j) == q ? 1 : 0;
  return static_cast<double>(hits) / static_cast<double>(queries.rows);
}

/// A projection with arbitrary finite values.
projection random_projection(std::size_t in_dim, std::size_t out_dim, std::uint64_t seed) {
  const matrix<float> w = gaussian(out_dim, in_dim, seed);
  const matrix<float> b = gaussian(1, out_dim, seed + 1);
  return {in_dim, out_dim, std::vector<float>(w.values.begin(), w.values.end()),
          std::vector<float>(b.values.begin(), b.values.end())};
}

candidate_list list_of(const std::vector<vector_id>& ids, const std::vector<float>& distances) {
  return {ids, distances};
}

std::vector<vector_id> ids_of(const std::vector<fused_id>& fused) {
  std::vector<vector_id> out;
  for (const fused_id& f : fused) out.push_back(f.id);
  return out;
}

}  // namespace

// ------------------------------------------------------------------------------------------- projection

TEST_CASE("ridge projection aligns two modalities encoded from the same latent vectors", "[multimodal]") {
  constexpr std::size_t latent = 32, image_dim = 64, text_dim = 48, n_train = 2000, n_test = 500, k = 10;
  const float scale = 1.0f / std::sqrt(static_cast<float>(latent));
  const float noise = 0.5f;  // per component, against a signal of unit variance per component
  const matrix<float> image_encoder = gaussian(image_dim, latent, 11, scale);
  const matrix<float> text_encoder = gaussian(text_dim, latent, 12, scale);
  const matrix<float> z_train = gaussian(n_train, latent, 13);
  const matrix<float> z_test = gaussian(n_test, latent, 14);
  const matrix<float> image_train = encode(z_train, image_encoder, noise, 15);
  const matrix<float> text_train = encode(z_train, text_encoder, noise, 16);
  const matrix<float> image_test = encode(z_test, image_encoder, noise, 17);
  const matrix<float> text_test = encode(z_test, text_encoder, noise, 18);

  const projection text_to_image = projection::fit_ridge(text_train.view(), image_train.view(), 1.0f);
  REQUIRE(text_to_image.in_dim() == text_dim);
  REQUIRE(text_to_image.out_dim() == image_dim);
  const matrix<float> projected = text_to_image.apply(text_test.view());
  REQUIRE(projected.rows == n_test);
  REQUIRE(projected.dim == image_dim);
  const double fitted = paired_recall(projected, image_test, k);

  // No fit: a random map of the same shape finds the pair about as often as chance (k / n_test).
  const projection random = random_projection(text_dim, image_dim, 19);
  const double baseline = paired_recall(random.apply(text_test.view()), image_test, k);
  CAPTURE(fitted, baseline);
  CHECK(fitted >= 0.9);
  CHECK(baseline <= 0.2);

  // Held-out residual relative to the image vectors' energy: predicting 0 scores 1, and the image noise
  // alone, which no map from text can predict, noise² / (1 + noise²) = 0.2. The text noise carried
  // through the map adds about as much again.
  double err = 0.0, energy = 0.0;
  for (std::size_t i = 0; i < n_test; ++i)
    for (std::size_t j = 0; j < image_dim; ++j) {
      const double d = projected.row(i)[j] - image_test.row(i)[j];
      err += d * d;
      energy += static_cast<double>(image_test.row(i)[j]) * image_test.row(i)[j];
    }
  CAPTURE(err / energy);
  CHECK(err / energy < 0.5);
}

TEST_CASE("ridge regression matches hand-computed and exact solutions", "[multimodal]") {
  SECTION("one dimension, by hand") {
    // x = 1, 2, 3; y = 2, 4, 7: x̄ = 2, ȳ = 13/3, Sxx = 2, Sxy = 5; λ = 1: w = 5 / 3, b = ȳ − w·x̄ = 1.
    const std::array<float, 3> x{1, 2, 3};
    const std::array<float, 3> y{2, 4, 7};
    const projection p = projection::fit_ridge({x.data(), 3, 1}, {y.data(), 3, 1}, 1.0f);
    CHECK(p.weights()[0] == Approx(5.0 / 3.0).epsilon(1e-6));
    CHECK(p.bias()[0] == Approx(1.0).epsilon(1e-6));
    // Without a bias: w = Σxy / (Σx² + λ) = 31 / 15.
    const projection q = projection::fit_ridge({x.data(), 3, 1}, {y.data(), 3, 1}, 1.0f, false);
    CHECK(q.weights()[0] == Approx(31.0 / 15.0).epsilon(1e-6));
    CHECK(q.bias()[0] == 0.0f);
  }
  SECTION("an exact affine map is recovered with lambda = 0") {
    constexpr std::size_t in = 12, out = 7, n = 300;
    const matrix<float> m = gaussian(out, in, 21);
    const matrix<float> c = gaussian(1, out, 22);
    const matrix<float> x = gaussian(n, in, 23);
    matrix<float> y = encode(x, m, 0.0f, 24);
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < out; ++j) y.row(i)[j] += c.values[j];
    const projection p = projection::fit_ridge(x.view(), y.view(), 0.0f);
    for (std::size_t i = 0; i < m.values.size(); ++i) CHECK(p.weights()[i] == Approx(m.values[i]).margin(1e-4));
    for (std::size_t j = 0; j < out; ++j) CHECK(p.bias()[j] == Approx(c.values[j]).margin(1e-4));

    // Without a bias on data without one: the same W, b = 0.
    const matrix<float> y0 = encode(x, m, 0.0f, 24);
    const projection q = projection::fit_ridge(x.view(), y0.view(), 0.0f, false);
    for (std::size_t i = 0; i < m.values.size(); ++i) CHECK(q.weights()[i] == Approx(m.values[i]).margin(1e-4));
    for (const float b : q.bias()) CHECK(b == 0.0f);
  }
}

TEST_CASE("ridge regularisation shrinks the weights as lambda grows", "[multimodal]") {
  constexpr std::size_t in = 20, out = 10, n = 500;
  const matrix<float> m = gaussian(out, in, 31);
  const matrix<float> x = gaussian(n, in, 32);
  matrix<float> y = encode(x, m, 0.1f, 33);
  for (std::size_t i = 0; i < n; ++i) y.row(i)[0] += 5.0f;  // a mean the bias must carry
  double previous = std::numeric_limits<double>::infinity();
  double unregularised = 0.0;
  for (const float lambda : {0.0f, 10.0f, 1e3f, 1e5f, 1e7f, 1e9f}) {
    CAPTURE(lambda);
    const projection p = projection::fit_ridge(x.view(), y.view(), lambda);
    const double norm = frobenius(p.weights());
    if (lambda == 0.0f) unregularised = norm;
    CHECK(norm < previous);
    previous = norm;
  }
  CHECK(previous < 1e-3 * unregularised);
  // With W ≈ 0 the bias is the mean of y.
  const projection flat = projection::fit_ridge(x.view(), y.view(), 1e9f);
  std::vector<double> mean(out, 0.0);
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < out; ++j) mean[j] += y.row(i)[j] / static_cast<double>(n);
  for (std::size_t j = 0; j < out; ++j) CHECK(flat.bias()[j] == Approx(mean[j]).margin(1e-3));
}

TEST_CASE("Procrustes recovers a known rotation", "[multimodal]") {
  constexpr std::size_t dim = 16, n = 400;
  const matrix<float> q = random_orthogonal(dim, 41);
  const matrix<float> x = gaussian(n, dim, 42);
  const matrix<float> t = gaussian(1, dim, 43, 3.0f);
  matrix<float> y = encode(x, q, 0.0f, 44);  // y = Q·x
  matrix<float> shifted = y;
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < dim; ++j) shifted.row(i)[j] += t.values[j];

  const projection p = projection::fit_procrustes(x.view(), shifted.view());
  for (std::size_t i = 0; i < q.values.size(); ++i) CHECK(p.weights()[i] == Approx(q.values[i]).margin(1e-4));
  for (std::size_t j = 0; j < dim; ++j) CHECK(p.bias()[j] == Approx(t.values[j]).margin(1e-4));

  const projection r = projection::fit_procrustes(x.view(), y.view(), false);
  for (std::size_t i = 0; i < q.values.size(); ++i) CHECK(r.weights()[i] == Approx(q.values[i]).margin(1e-4));
  for (const float b : r.bias()) CHECK(b == 0.0f);

  // Noisy, anisotropically scaled targets: the fit is still orthogonal (W·Wᵀ = I).
  matrix<float> noisy = encode(x, q, 0.5f, 45);
  for (std::size_t i = 0; i < n; ++i) noisy.row(i)[0] *= 4.0f;
  const projection s = projection::fit_procrustes(x.view(), noisy.view());
  for (std::size_t a = 0; a < dim; ++a)
    for (std::size_t b = 0; b < dim; ++b) {
      double dot = 0.0;
      for (std::size_t j = 0; j < dim; ++j)
        dot += static_cast<double>(s.weights()[a * dim + j]) * s.weights()[b * dim + j];
      CHECK(dot == Approx(a == b ? 1.0 : 0.0).margin(1e-5));
    }
}

TEST_CASE("projection apply matches W x + b for batches, strided views and single rows", "[multimodal]") {
  constexpr std::size_t in = 9, out = 5, rows = 37, stride = 13;
  const projection p = random_projection(in, out, 51);
  const matrix<float> dense = gaussian(rows, stride, 52);
  const matrix_view<const float> x{dense.values.data(), rows, in, stride};
  std::vector<float> buffer(rows * 8, -1.0f);
  p.apply(x, matrix_view<float>{buffer.data(), rows, out, 8});
  const matrix<float> y = p.apply(x);
  for (std::size_t i = 0; i < rows; ++i) {
    const std::vector<double> want = reference_apply(p, x.row(i));
    std::vector<float> one(out);
    p.apply(std::span<const float>(x.row(i), in), std::span<float>(one));
    for (std::size_t j = 0; j < out; ++j) {
      CHECK(y.row(i)[j] == Approx(want[j]).margin(1e-4));
      CHECK(buffer[i * 8 + j] == y.row(i)[j]);
      CHECK(one[j] == Approx(want[j]).margin(1e-4));
    }
    for (std::size_t j = out; j < 8; ++j) CHECK(buffer[i * 8 + j] == -1.0f);  // padding untouched
  }
  CHECK(p.apply(x.slice(0, 0)).rows == 0);

  // In place (a square map over the same memory): as out of place.
  const projection square = random_projection(in, in, 53);
  const matrix<float> want = square.apply(x);
  matrix<float> inout(rows, in);
  for (std::size_t i = 0; i < rows; ++i) std::copy_n(x.row(i), in, inout.row(i));
  square.apply(inout.view(), inout.mutable_view());
  for (std::size_t i = 0; i < inout.values.size(); ++i) CHECK(inout.values[i] == Approx(want.values[i]).margin(1e-5));
  std::vector<float> one(x.row(3), x.row(3) + in);
  square.apply(std::span<const float>(one), std::span<float>(one));
  for (std::size_t j = 0; j < in; ++j) CHECK(one[j] == Approx(want.row(3)[j]).margin(1e-5));

  const projection id = projection::identity(in);
  const matrix<float> same = id.apply(x);
  for (std::size_t i = 0; i < rows; ++i)
    for (std::size_t j = 0; j < in; ++j) CHECK(same.row(i)[j] == x.row(i)[j]);
}

TEST_CASE("projection serialisation and .npy files round-trip exactly", "[multimodal][io]") {
  const projection p = random_projection(7, 3, 61);
  SECTION("bytes") {
    const std::vector<std::byte> bytes = p.serialize();
    REQUIRE(bytes.size() == 36 + 4 * 3 * (7 + 1));
    // Fixed little-endian layout: magic, version 1.0, reserved, in_dim, out_dim.
    CHECK(std::string(reinterpret_cast<const char*>(bytes.data()), 8) == "SHOALPRJ");
    CHECK(bytes[8] == std::byte{1});
    CHECK(bytes[9] == std::byte{0});
    CHECK(bytes[16] == std::byte{7});
    CHECK(bytes[24] == std::byte{3});
    const projection back = projection::deserialize(bytes);
    CHECK(back == p);
    CHECK(back.serialize() == bytes);

    for (std::size_t len = 0; len < bytes.size(); ++len) {
      CAPTURE(len);
      REQUIRE_THROWS_MATCHES(projection::deserialize(std::span(bytes).first(len)), shoal::error,
                             fails_with(errc::corrupt_file, "truncated"));
    }
    std::vector<std::byte> longer = bytes;
    longer.push_back(std::byte{0});
    CHECK_THROWS_MATCHES(projection::deserialize(longer), shoal::error, fails_with(errc::corrupt_file, "follow"));

    std::vector<std::byte> flipped = bytes;
    flipped[40] ^= std::byte{0x10};
    CHECK_THROWS_MATCHES(projection::deserialize(flipped), shoal::error, fails_with(errc::corrupt_file, "checksum"));
    std::vector<std::byte> magic = bytes;
    magic[0] = std::byte{'X'};
    CHECK_THROWS_MATCHES(projection::deserialize(magic), shoal::error, fails_with(errc::corrupt_file, "magic"));
    std::vector<std::byte> newer = bytes;
    newer[8] = std::byte{2};
    CHECK_THROWS_MATCHES(projection::deserialize(newer), shoal::error, fails_with(errc::unsupported, "newer"));
    std::vector<std::byte> huge = bytes;
    huge[20] = std::byte{1};  // in_dim 2^32 + 7
    CHECK_THROWS_MATCHES(projection::deserialize(huge), shoal::error, fails_with(errc::corrupt_file, "outside"));
    std::vector<std::byte> zero = bytes;
    zero[24] = std::byte{0};
    CHECK_THROWS_MATCHES(projection::deserialize(zero), shoal::error, fails_with(errc::corrupt_file, "outside"));

    // A NaN under a valid checksum: damage the checksum cannot see.
    std::vector<std::byte> nan = bytes;
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(std::numeric_limits<float>::quiet_NaN());
    for (std::size_t i = 0; i < 4; ++i) nan[32 + i] = static_cast<std::byte>((bits >> (8 * i)) & 0xffu);
    const std::uint32_t crc = crc32c(nan.data(), nan.size() - 4);
    for (std::size_t i = 0; i < 4; ++i) nan[nan.size() - 4 + i] = static_cast<std::byte>((crc >> (8 * i)) & 0xffu);
    CHECK_THROWS_MATCHES(projection::deserialize(nan), shoal::error, fails_with(errc::corrupt_file, "not finite"));
  }
  SECTION(".npy") {
    const test::scratch_dir dir("shoal-projection");
    p.save_npy(dir / "w.npy", dir / "b.npy");
    const io::npy_header wh = io::read_npy_header(dir / "w.npy");
    CHECK(wh.rows == 3);
    CHECK(wh.dim == 7);
    CHECK(projection::load_npy(dir / "w.npy", dir / "b.npy") == p);

    const projection no_bias = projection::load_npy(dir / "w.npy");
    CHECK(std::equal(no_bias.weights().begin(), no_bias.weights().end(), p.weights().begin(), p.weights().end()));
    for (const float b : no_bias.bias()) CHECK(b == 0.0f);

    // A column bias (out_dim x 1) is accepted too; any other shape is not.
    const matrix<float> column(3, 1);
    io::write_npy(dir / "column.npy", column.view());
    CHECK(projection::load_npy(dir / "w.npy", dir / "column.npy").bias().size() == 3);
    const matrix<float> wrong(2, 3);
    io::write_npy(dir / "wrong.npy", wrong.view());
    CHECK_THROWS_MATCHES(projection::load_npy(dir / "w.npy", dir / "wrong.npy"), shoal::error,
                         fails_with(errc::dimension_mismatch, "bias has shape (2, 3)"));
    CHECK_THROWS_MATCHES(projection::load_npy(dir / "missing.npy"), shoal::error, fails_with(errc::io_error));

    // Weights a fit makes for inputs near 1e-20 (about 1e19, past the norm bound of indexed vectors)
    // load back: a projection's values need only be finite.
    const projection large(2, 1, {1e19f, -3e19f}, {2e19f});
    large.save_npy(dir / "large-w.npy", dir / "large-b.npy");
    CHECK(projection::load_npy(dir / "large-w.npy", dir / "large-b.npy") == large);
    test::write_bytes(dir / "nan.npy", test::npy_file(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }",
                                                      test::raw(std::vector<float>{1.0f, std::nanf("")})));
    CHECK_THROWS_MATCHES(projection::load_npy(dir / "nan.npy"), shoal::error,
                         fails_with(errc::non_finite, "nan.npy: value (0, 1) is not finite"));
    // A 1-D weights file: NumPy's `w @ x` would make it a 1 x n map; it is refused, not read as n x 1.
    test::write_bytes(dir / "flat.npy", test::npy_file(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }",
                                                       test::raw(std::vector<float>{1, 2, 3, 4})));
    CHECK_THROWS_MATCHES(projection::load_npy(dir / "flat.npy"), shoal::error,
                         fails_with(errc::dimension_mismatch, "1-D array"));
  }
}

TEST_CASE("projection rejects bad input", "[multimodal]") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  SECTION("construction") {
    CHECK_THROWS_MATCHES(projection(0, 2, {}), shoal::error, fails_with(errc::invalid_argument, "input dimension 0"));
    CHECK_THROWS_MATCHES(projection(2, 0, {}), shoal::error, fails_with(errc::invalid_argument, "output dimension 0"));
    CHECK_THROWS_MATCHES(projection(2, 2, {1, 2, 3}), shoal::error,
                         fails_with(errc::dimension_mismatch, "weights have 3 values"));
    CHECK_THROWS_MATCHES(projection(2, 2, {1, 0, 0, 1}, {1, 2, 3}), shoal::error,
                         fails_with(errc::dimension_mismatch, "bias has 3 values"));
    CHECK_THROWS_MATCHES(projection(2, 2, {1, nan, 0, 1}), shoal::error, fails_with(errc::non_finite, "weight (0, 1)"));
    CHECK_THROWS_MATCHES(projection(2, 2, {1, 0, 0, 1}, {0, inf}), shoal::error,
                         fails_with(errc::non_finite, "bias 1"));
    CHECK_THROWS_MATCHES(projection::identity(0), shoal::error, fails_with(errc::invalid_argument, "dimension 0"));
    CHECK(projection(2, 1, {1, 2}).bias().size() == 1);
  }
  SECTION("fitting") {
    const matrix<float> x = gaussian(10, 4, 71);
    const matrix<float> y = gaussian(10, 3, 72);
    const matrix<float> y4 = gaussian(10, 4, 73);
    CHECK_THROWS_MATCHES(projection::fit_ridge(x.view(), y.view().slice(0, 9), 1.0f), shoal::error,
                         fails_with(errc::invalid_argument, "x has 10 rows but y has 9"));
    CHECK_THROWS_MATCHES(projection::fit_ridge(x.view().slice(0, 1), y.view().slice(0, 1), 1.0f), shoal::error,
                         fails_with(errc::invalid_argument, "too few rows"));
    CHECK_THROWS_MATCHES(projection::fit_ridge(x.view().slice(0, 0), y.view().slice(0, 0), 1.0f, false), shoal::error,
                         fails_with(errc::invalid_argument, "too few rows"));
    CHECK_NOTHROW(projection::fit_ridge(x.view().slice(0, 1), y.view().slice(0, 1), 1.0f, false));
    CHECK_THROWS_MATCHES(projection::fit_ridge(x.view(), y.view(), -1.0f), shoal::error,
                         fails_with(errc::invalid_argument, "lambda"));
    CHECK_THROWS_MATCHES(projection::fit_ridge(x.view(), y.view(), nan), shoal::error,
                         fails_with(errc::invalid_argument, "lambda"));
    CHECK_THROWS_MATCHES(projection::fit_ridge(x.view(), y.view(), inf), shoal::error,
                         fails_with(errc::invalid_argument, "lambda"));
    // 3 centred rows span 2 dimensions of 4: singular without regularisation, fine with it.
    CHECK_THROWS_MATCHES(projection::fit_ridge(x.view().slice(0, 3), y.view().slice(0, 3), 0.0f), shoal::error,
                         fails_with(errc::invalid_argument, "singular"));
    CHECK_NOTHROW(projection::fit_ridge(x.view().slice(0, 3), y.view().slice(0, 3), 0.1f));
    // Exactly singular: one column twice. The factorisation meets an exact zero pivot, which its own
    // condition estimate (through a pseudo-inverse solve) does not see.
    matrix<float> twin(10, 2);
    for (std::size_t i = 0; i < 10; ++i) twin.row(i)[0] = twin.row(i)[1] = x.row(i)[0];
    for (const bool bias : {false, true})
      CHECK_THROWS_MATCHES(projection::fit_ridge(twin.view(), y.view(), 0.0f, bias), shoal::error,
                           fails_with(errc::invalid_argument, "singular"));
    CHECK_NOTHROW(projection::fit_ridge(twin.view(), y.view(), 0.1f));

    matrix<float> bad_x = x;
    bad_x.row(4)[2] = nan;
    matrix<float> bad_y = y;
    bad_y.row(7)[0] = -inf;
    CHECK_THROWS_MATCHES(projection::fit_ridge(bad_x.view(), y.view(), 1.0f), shoal::error,
                         fails_with(errc::non_finite, "x row 4"));
    CHECK_THROWS_MATCHES(projection::fit_ridge(x.view(), bad_y.view(), 1.0f), shoal::error,
                         fails_with(errc::non_finite, "y row 7"));

    CHECK_THROWS_MATCHES(projection::fit_procrustes(x.view(), y.view()), shoal::error,
                         fails_with(errc::dimension_mismatch, "equal dimensions"));
    CHECK_THROWS_MATCHES(projection::fit_procrustes(x.view(), y4.view().slice(0, 8)), shoal::error,
                         fails_with(errc::invalid_argument, "x has 10 rows but y has 8"));
    CHECK_THROWS_MATCHES(projection::fit_procrustes(x.view().slice(0, 1), y4.view().slice(0, 1)), shoal::error,
                         fails_with(errc::invalid_argument, "too few rows"));
    matrix<float> bad_y4 = y4;
    bad_y4.row(0)[0] = nan;
    CHECK_THROWS_MATCHES(projection::fit_procrustes(x.view(), bad_y4.view()), shoal::error,
                         fails_with(errc::non_finite, "y row 0"));
  }
  SECTION("apply") {
    const projection p = random_projection(4, 3, 74);
    const matrix<float> x = gaussian(5, 4, 75);
    const matrix<float> wrong = gaussian(5, 3, 76);
    CHECK_THROWS_MATCHES(p.apply(wrong.view()), shoal::error,
                         fails_with(errc::dimension_mismatch, "input has dimension 3, expected 4"));
    matrix<float> out(5, 4);
    CHECK_THROWS_MATCHES(p.apply(x.view(), out.mutable_view()), shoal::error,
                         fails_with(errc::dimension_mismatch, "output has dimension 4, expected 3"));
    matrix<float> short_out(4, 3);
    CHECK_THROWS_MATCHES(p.apply(x.view(), short_out.mutable_view()), shoal::error,
                         fails_with(errc::invalid_argument, "output has 4 rows for 5"));
    matrix<float> bad = x;
    bad.row(2)[1] = inf;
    CHECK_THROWS_MATCHES(p.apply(bad.view()), shoal::error, fails_with(errc::non_finite, "row 2"));
    std::vector<float> one(3);
    CHECK_THROWS_MATCHES(p.apply(std::span<const float>(x.row(0), 3), std::span<float>(one)), shoal::error,
                         fails_with(errc::dimension_mismatch, "input has dimension 3"));
    CHECK_THROWS_MATCHES(p.apply(std::span<const float>(x.row(0), 4), std::span<float>(one).first(2)), shoal::error,
                         fails_with(errc::dimension_mismatch, "output has dimension 2"));
    CHECK_THROWS_MATCHES(p.apply(std::span<const float>(bad.row(2), 4), std::span<float>(one)), shoal::error,
                         fails_with(errc::non_finite));
    // Finite rows that project past float's range (a review, session 38: NaN came back unnoticed).
    const projection huge(2, 1, {3e38f, 3e38f});
    const float far[2] = {10.0f, -10.0f};
    float projected[1];
    CHECK_THROWS_MATCHES(huge.apply(std::span<const float>(far), std::span<float>(projected)), shoal::error,
                         fails_with(errc::non_finite, "projection::apply: projected"));
    CHECK_THROWS_MATCHES(huge.apply(matrix_view<const float>{far, 1, 2}), shoal::error,
                         fails_with(errc::non_finite, "projection::apply: projected row 0"));
  }
}

// ----------------------------------------------------------------------------------------------- fusion

TEST_CASE("reciprocal-rank fusion orders hand-made lists", "[multimodal]") {
  const std::vector<vector_id> ids1{10, 20, 30}, ids2{30, 10, 40};
  const std::vector<float> d1{0.1f, 0.2f, 0.3f}, d2{1.0f, 2.0f, 3.0f};
  const std::vector<candidate_list> lists{list_of(ids1, d1), list_of(ids2, d2)};

  SECTION("scores and order") {
    // 10: ranks 1, 2; 30: ranks 3, 1; 20: rank 2; 40: rank 3.
    const std::vector<fused_id> got = reciprocal_rank_fusion(lists, 10);
    REQUIRE(ids_of(got) == std::vector<vector_id>{10, 30, 20, 40});
    CHECK(got[0].score == Approx(1.0 / 61 + 1.0 / 62));
    CHECK(got[1].score == Approx(1.0 / 63 + 1.0 / 61));
    CHECK(got[2].score == Approx(1.0 / 62));
    CHECK(got[3].score == Approx(1.0 / 63));
    CHECK(ids_of(reciprocal_rank_fusion(lists, 2)) == std::vector<vector_id>{10, 30});
    // rrf_k = 0: 10 scores 1 + 1/2, 30 scores 1/3 + 1.
    const std::vector<fused_id> sharp = reciprocal_rank_fusion(lists, 1, {}, 0.0);
    CHECK(sharp == std::vector<fused_id>{{10, 1.5}});
  }
  SECTION("weights") {
    // Weight 3 on the second list: 30 = 3/61 + 1/63 beats 10 = 3/62 + 1/61.
    const std::vector<float> w{1.0f, 3.0f};
    const std::vector<fused_id> got = reciprocal_rank_fusion(lists, 4, w);
    REQUIRE(ids_of(got) == std::vector<vector_id>{30, 10, 40, 20});
    CHECK(got[0].score == Approx(1.0 / 63 + 3.0 / 61));
    CHECK(got[2].score == Approx(3.0 / 63));
    // A zero weight leaves that list's ids in the result with nothing from it.
    const std::vector<float> w0{0.0f, 1.0f};
    CHECK(ids_of(reciprocal_rank_fusion(lists, 4, w0)) == std::vector<vector_id>{30, 10, 40, 20});
  }
  SECTION("ties go to the smaller id; ranks come from (distance, id) order; sentinels are skipped") {
    const std::vector<vector_id> a{7, 5}, b{5, 7};
    const std::vector<float> da{1.0f, 2.0f}, db{1.0f, 2.0f};
    const std::vector<candidate_list> tie{list_of(a, da), list_of(b, db)};
    CHECK(ids_of(reciprocal_rank_fusion(tie, 2)) == std::vector<vector_id>{5, 7});

    // Unsorted input and equal distances: ranks 4 (0.5, smaller id), 8 (0.5), 2 (0.9).
    const std::vector<vector_id> u{2, 8, 4};
    const std::vector<float> du{0.9f, 0.5f, 0.5f};
    const std::vector<candidate_list> unsorted{list_of(u, du)};
    const std::vector<fused_id> got = reciprocal_rank_fusion(unsorted, 3);
    REQUIRE(ids_of(got) == std::vector<vector_id>{4, 8, 2});
    CHECK(got[2].score == Approx(1.0 / 63));

    // Sentinel slots take no rank, whatever distance they carry (here NaN).
    const std::vector<vector_id> s{no_id, 3, no_id};
    const std::vector<float> ds{std::nanf(""), 0.2f, no_distance};
    const std::vector<vector_id> t{3};
    const std::vector<float> dt{0.7f};
    const std::vector<candidate_list> padded{list_of(s, ds), list_of(t, dt)};
    const std::vector<fused_id> one = reciprocal_rank_fusion(padded, 5);
    REQUIRE(one.size() == 1);
    CHECK(one[0].id == 3);
    CHECK(one[0].score == Approx(2.0 / 61));
    // Nothing valid at all: an empty result.
    const std::vector<vector_id> none{no_id, no_id};
    const std::vector<float> dn{no_distance, no_distance};
    const std::vector<candidate_list> empty{list_of(none, dn)};
    CHECK(reciprocal_rank_fusion(empty, 3).empty());
  }
  SECTION("from a search result row") {
    neighbors n(1, 3);
    n.view().row_ids(0)[0] = 42;
    n.view().row_distances(0)[0] = 0.5f;
    const std::vector<candidate_list> from_result{{n.row_ids(0), n.row_distances(0)}};
    CHECK(reciprocal_rank_fusion(from_result, 3) == std::vector<fused_id>{{42, 1.0 / 61}});
  }
}

TEST_CASE("weighted score fusion with each normalisation", "[multimodal]") {
  // List 1: similarities 0, −1, −4; list 2 (ids 3, 4): −2, −3.
  const std::vector<vector_id> ids1{1, 2, 3}, ids2{3, 4};
  const std::vector<float> d1{0.0f, 1.0f, 4.0f}, d2{2.0f, 3.0f};
  const std::vector<candidate_list> lists{list_of(ids1, d1), list_of(ids2, d2)};

  SECTION("min-max") {
    // List 1 → 1, 0.75, 0 (worst 0); list 2 → 1, 0. Absent ids take the list's worst (0 here).
    const std::vector<fused_id> got = weighted_score_fusion(lists, 10, score_normalization::min_max);
    CHECK(got == std::vector<fused_id>{{1, 1.0}, {3, 1.0}, {2, 0.75}, {4, 0.0}});  // 1 and 3 tie: smaller id first
    const std::vector<float> w{1.0f, 2.0f};
    CHECK(weighted_score_fusion(lists, 10, score_normalization::min_max, w) ==
          std::vector<fused_id>{{3, 2.0}, {1, 1.0}, {2, 0.75}, {4, 0.0}});
    CHECK(weighted_score_fusion(lists, 1, score_normalization::min_max, w) == std::vector<fused_id>{{3, 2.0}});
  }
  SECTION("z-score") {
    // List 1: mean −5/3, sd √26 / 3 → 5/√26, 2/√26, −7/√26; list 2: mean −2.5, sd 0.5 → 1, −1.
    const double r = std::sqrt(26.0);
    const std::vector<fused_id> got = weighted_score_fusion(lists, 10, score_normalization::z_score);
    REQUIRE(ids_of(got) == std::vector<vector_id>{1, 3, 2, 4});
    CHECK(got[0].score == Approx(5.0 / r - 1.0));  // absent from list 2: its worst, −1
    CHECK(got[1].score == Approx(-7.0 / r + 1.0));
    CHECK(got[2].score == Approx(2.0 / r - 1.0));
    CHECK(got[3].score == Approx(-7.0 / r - 1.0));  // absent from list 1: its worst, −7/√26
  }
  SECTION("none") {
    // Raw similarities; absent ids take the list's lowest similarity (−4 and −3).
    const std::vector<fused_id> got = weighted_score_fusion(lists, 10, score_normalization::none);
    CHECK(got == std::vector<fused_id>{{1, -3.0}, {2, -4.0}, {3, -6.0}, {4, -7.0}});
  }
  SECTION("constant lists") {
    const std::vector<vector_id> a{9, 8};
    const std::vector<float> da{0.7f, 0.7f};
    const std::vector<candidate_list> flat{list_of(a, da)};
    CHECK(weighted_score_fusion(flat, 2, score_normalization::min_max) == std::vector<fused_id>{{8, 1.0}, {9, 1.0}});
    CHECK(weighted_score_fusion(flat, 2, score_normalization::z_score) == std::vector<fused_id>{{8, 0.0}, {9, 0.0}});
    // A one-entry list still counts: its id scores above the ids it does not hold (the review's case:
    // id 5, the only and best hit of one list, used to tie with the other list's worst entry).
    const std::vector<vector_id> one{5}, three{1, 2, 3};
    const std::vector<float> d_one{0.3f}, d_three{1.0f, 2.0f, 3.0f};
    const std::vector<candidate_list> uneven{list_of(one, d_one), list_of(three, d_three)};
    CHECK(weighted_score_fusion(uneven, 4, score_normalization::min_max) ==
          std::vector<fused_id>{{1, 1.0}, {5, 1.0}, {2, 0.5}, {3, 0.0}});  // 5: 1 + 0 ties 1: 0 + 1
    // z: 1 → −1 + 1.22, 2 → −1 + 0, 5 → 0 − 1.22, 3 → −1 − 1.22 (it tied with 3 before).
    CHECK(ids_of(weighted_score_fusion(uneven, 4, score_normalization::z_score)) == std::vector<vector_id>{1, 2, 5, 3});
  }
  SECTION("an empty list contributes nothing; sentinels are skipped") {
    const std::vector<vector_id> none{no_id};
    const std::vector<float> dn{no_distance};
    const std::vector<vector_id> pad{1, 2, no_id, 3};
    const std::vector<float> dpad{0.0f, 1.0f, no_distance, 4.0f};
    const std::vector<candidate_list> with_empty{list_of(pad, dpad), list_of(none, dn)};
    CHECK(weighted_score_fusion(with_empty, 3, score_normalization::min_max) ==
          std::vector<fused_id>{{1, 1.0}, {2, 0.75}, {3, 0.0}});
  }
}

TEST_CASE("intersection fusion keeps ids in every list, by weighted rank sum", "[multimodal]") {
  const std::vector<vector_id> ids1{1, 2, 3, 4}, ids2{3, 1, 5}, ids3{1, 3, 6, 2};
  const std::vector<float> d1{0.1f, 0.2f, 0.3f, 0.4f}, d2{0.1f, 0.2f, 0.3f}, d3{1.0f, 2.0f, 3.0f, 4.0f};
  const std::vector<candidate_list> lists{list_of(ids1, d1), list_of(ids2, d2), list_of(ids3, d3)};
  // 1: ranks 1, 2, 1; 3: ranks 3, 1, 2; 2 is not in list 2.
  CHECK(intersection_fusion(lists, 10) == std::vector<fused_id>{{1, -4.0}, {3, -6.0}});
  CHECK(intersection_fusion(lists, 1) == std::vector<fused_id>{{1, -4.0}});
  const std::vector<float> tie{0.0f, 1.0f, 1.0f};  // 1: 2 + 1, 3: 1 + 2
  CHECK(intersection_fusion(lists, 10, tie) == std::vector<fused_id>{{1, -3.0}, {3, -3.0}});
  const std::vector<float> flip{0.0f, 3.0f, 1.0f};  // 1: 6 + 1, 3: 3 + 2
  CHECK(intersection_fusion(lists, 10, flip) == std::vector<fused_id>{{3, -5.0}, {1, -7.0}});

  const std::vector<vector_id> other{7, 8};
  const std::vector<float> d_other{0.1f, 0.2f};
  const std::vector<candidate_list> disjoint{list_of(ids1, d1), list_of(other, d_other)};
  CHECK(intersection_fusion(disjoint, 5).empty());
  const std::vector<vector_id> none{no_id};
  const std::vector<float> dn{no_distance};
  const std::vector<candidate_list> with_empty{list_of(ids1, d1), list_of(none, dn)};
  CHECK(intersection_fusion(with_empty, 5).empty());
}

TEST_CASE("fusion rejects bad input", "[multimodal]") {
  const std::vector<vector_id> ids{1, 2}, dup{1, 2, 1};
  const std::vector<float> d{0.1f, 0.2f}, d3{0.1f, 0.2f, 0.3f}, dnan{0.1f, std::nanf("")};
  const std::vector<candidate_list> good{list_of(ids, d), list_of(ids, d)};
  const std::vector<candidate_list> mismatched{list_of(ids, d3)};
  const std::vector<candidate_list> duplicated{list_of(ids, d), list_of(dup, d3)};
  const std::vector<candidate_list> not_finite{list_of(ids, dnan)};
  const std::vector<float> three{1.0f, 1.0f, 1.0f}, negative{1.0f, -0.5f}, nan_weight{std::nanf(""), 1.0f};
  const std::vector<float> inf_weight{1.0f, std::numeric_limits<float>::infinity()};

  // The same checks in all three rules.
  const auto rrf = [](std::span<const candidate_list> l, std::size_t k, std::span<const float> w) {
    return reciprocal_rank_fusion(l, k, w);
  };
  const auto weighted = [](std::span<const candidate_list> l, std::size_t k, std::span<const float> w) {
    return weighted_score_fusion(l, k, score_normalization::z_score, w);
  };
  const auto intersect = [](std::span<const candidate_list> l, std::size_t k, std::span<const float> w) {
    return intersection_fusion(l, k, w);
  };
  using rule = std::vector<fused_id> (*)(std::span<const candidate_list>, std::size_t, std::span<const float>);
  for (const rule fuse : std::array<rule, 3>{rrf, weighted, intersect}) {
    CHECK_NOTHROW(fuse(good, 1, {}));
    CHECK_THROWS_MATCHES(fuse(good, 0, {}), shoal::error, fails_with(errc::invalid_argument, "k must"));
    CHECK_THROWS_MATCHES(fuse({}, 1, {}), shoal::error, fails_with(errc::invalid_argument, "no candidate lists"));
    CHECK_THROWS_MATCHES(fuse(good, 1, three), shoal::error, fails_with(errc::invalid_argument, "3 weights for 2"));
    CHECK_THROWS_MATCHES(fuse(good, 1, negative), shoal::error, fails_with(errc::invalid_argument, "weight 1 is"));
    CHECK_THROWS_MATCHES(fuse(good, 1, nan_weight), shoal::error, fails_with(errc::invalid_argument, "weight 0 is"));
    CHECK_THROWS_MATCHES(fuse(good, 1, inf_weight), shoal::error, fails_with(errc::invalid_argument, "weight 1 is"));
    CHECK_THROWS_MATCHES(fuse(mismatched, 1, {}), shoal::error,
                         fails_with(errc::invalid_argument, "2 ids but 3 distances"));
    CHECK_THROWS_MATCHES(fuse(duplicated, 1, {}), shoal::error,
                         fails_with(errc::duplicate_id, "list 1 holds id 1 twice"));
    CHECK_THROWS_MATCHES(fuse(not_finite, 1, {}), shoal::error, fails_with(errc::non_finite, "id 2"));
  }
  CHECK_THROWS_MATCHES(reciprocal_rank_fusion(good, 1, {}, -1.0), shoal::error,
                       fails_with(errc::invalid_argument, "rrf_k"));
  CHECK_THROWS_MATCHES(reciprocal_rank_fusion(good, 1, {}, std::nan("")), shoal::error,
                       fails_with(errc::invalid_argument, "rrf_k"));
}
