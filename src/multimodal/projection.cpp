#include "shoal/multimodal/projection.hpp"

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <Eigen/SVD>
#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string_view>
#include <utility>

#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "shoal/io/format.hpp"
#include "shoal/io/vecs.hpp"

namespace shoal {
namespace {

using row_major = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using row_major_d = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using strided_map = Eigen::Map<row_major, 0, Eigen::OuterStride<>>;
using const_strided_map = Eigen::Map<const row_major, 0, Eigen::OuterStride<>>;

/// Rows converted to double at a time while accumulating XᵀX and XᵀY: bounded memory for any n.
constexpr std::size_t block_rows = 1024;

constexpr std::string_view serial_magic{"SHOALPRJ", 8};
constexpr std::uint16_t serial_major = 1;
constexpr std::uint16_t serial_minor = 0;
constexpr std::size_t serial_header_bytes = 8 + 2 + 2 + 4 + 8 + 8;
constexpr std::size_t serial_crc_bytes = 4;

Eigen::Index ei(std::size_t n) noexcept { return static_cast<Eigen::Index>(n); }

const_strided_map map(matrix_view<const float> v) {
  return {v.data, ei(v.rows), ei(v.dim), Eigen::OuterStride<>(ei(v.stride))};
}
strided_map map(matrix_view<float> v) { return {v.data, ei(v.rows), ei(v.dim), Eigen::OuterStride<>(ei(v.stride))}; }

void check_dims(std::size_t in_dim, std::size_t out_dim, const char* what) {
  SHOAL_CHECK(in_dim >= 1 && in_dim <= max_dim, what, ": input dimension ", in_dim, " is outside [1, ", max_dim, "]");
  SHOAL_CHECK(out_dim >= 1 && out_dim <= max_dim, what, ": output dimension ", out_dim, " is outside [1, ", max_dim,
              "]");
}

/// The checks both fitting methods share: shapes, finite values, enough rows.
void check_pairs(matrix_view<const float> x, matrix_view<const float> y, bool fit_bias, const char* what) {
  check_dims(x.dim, y.dim, what);
  SHOAL_CHECK(x.rows == y.rows, what, ": x has ", x.rows, " rows but y has ", y.rows, " (one y per x)");
  const std::size_t min_rows = fit_bias ? 2 : 1;
  SHOAL_CHECK(x.rows >= min_rows, what, ": too few rows: ", x.rows, " pairs, at least ", min_rows, " needed",
              fit_bias ? " to fit a bias" : "");
  const std::string x_name = detail::str(what, ": x");
  const std::string y_name = detail::str(what, ": y");
  detail::check_vectors(x, x.dim, x_name.c_str());
  detail::check_vectors(y, y.dim, y_name.c_str());
}

/// Column means of `v` in double (zeros when not centring).
Eigen::RowVectorXd column_means(matrix_view<const float> v, bool centre) {
  Eigen::RowVectorXd mean = Eigen::RowVectorXd::Zero(ei(v.dim));
  if (!centre) return mean;
  for (std::size_t i = 0; i < v.rows; ++i) mean += map(v.slice(i, 1)).cast<double>();
  return mean / static_cast<double>(v.rows);
}

/// Second moments of the centred pairs: xx = Σ (x − x̄)ᵀ(x − x̄) (in x in) and xy = Σ (x − x̄)ᵀ(y − ȳ)
/// (in x out), accumulated in double over blocks of rows.
struct moments {
  Eigen::RowVectorXd x_mean;
  Eigen::RowVectorXd y_mean;
  Eigen::MatrixXd xx;
  Eigen::MatrixXd xy;
};

moments accumulate(matrix_view<const float> x, matrix_view<const float> y, bool centre, bool want_xx) {
  moments m{column_means(x, centre), column_means(y, centre), {}, Eigen::MatrixXd::Zero(ei(x.dim), ei(y.dim))};
  if (want_xx) m.xx = Eigen::MatrixXd::Zero(ei(x.dim), ei(x.dim));
  row_major_d xb;
  row_major_d yb;
  for (std::size_t first = 0; first < x.rows; first += block_rows) {
    const std::size_t count = std::min(block_rows, x.rows - first);
    xb = map(x.slice(first, count)).cast<double>();
    yb = map(y.slice(first, count)).cast<double>();
    xb.rowwise() -= m.x_mean;
    yb.rowwise() -= m.y_mean;
    if (want_xx) m.xx.selfadjointView<Eigen::Lower>().rankUpdate(xb.transpose());
    m.xy.noalias() += xb.transpose() * yb;
  }
  if (want_xx) m.xx.triangularView<Eigen::StrictlyUpper>() = m.xx.transpose();
  return m;
}

/// The projection with W = `w` (out x in) and b = ȳ − W·x̄ (zero when not centred), rounded to float.
/// Throws if rounding overflows float (a nearly singular problem).
projection make_fitted(const Eigen::MatrixXd& w, const moments& m, const char* what) {
  const std::size_t out_dim = static_cast<std::size_t>(w.rows());
  const std::size_t in_dim = static_cast<std::size_t>(w.cols());
  const Eigen::VectorXd b = m.y_mean.transpose() - w * m.x_mean.transpose();
  std::vector<float> weights(out_dim * in_dim);
  Eigen::Map<row_major>(weights.data(), ei(out_dim), ei(in_dim)) = w.cast<float>();
  std::vector<float> bias(out_dim);
  Eigen::Map<Eigen::VectorXf>(bias.data(), ei(out_dim)) = b.cast<float>();
  const auto finite = [](float v) { return std::isfinite(v); };
  SHOAL_CHECK(std::all_of(weights.begin(), weights.end(), finite) && std::all_of(bias.begin(), bias.end(), finite),
              what, ": the solution does not fit in float (the problem is nearly singular; increase lambda)");
  return {in_dim, out_dim, std::move(weights), std::move(bias)};
}

// Little-endian fixed-width fields, whatever the host's byte order.
template <class U>
void put(std::vector<std::byte>& out, U value) {
  for (std::size_t i = 0; i < sizeof(U); ++i) out.push_back(static_cast<std::byte>((value >> (8 * i)) & 0xffu));
}
template <class U>
U get(const std::byte* in) noexcept {
  U value = 0;
  for (std::size_t i = 0; i < sizeof(U); ++i) value |= static_cast<U>(static_cast<U>(in[i]) << (8 * i));
  return value;
}

/// Every value of `m`, read from `path`, finite: the only bound a projection puts on its values (the
/// norm bound of indexed vectors would refuse weights a fit produces, e.g. 1e19 for inputs near 1e-20).
void check_finite(const matrix<float>& m, const std::filesystem::path& path) {
  const auto bad = std::find_if(m.values.begin(), m.values.end(), [](float v) { return !std::isfinite(v); });
  const auto at = static_cast<std::size_t>(bad - m.values.begin());
  SHOAL_CHECK_CODE(bad == m.values.end(), errc::non_finite, path.string(), ": value (", at / m.dim, ", ", at % m.dim,
                   ") is not finite (", bad == m.values.end() ? 0.0f : *bad, ")");
}

}  // namespace

projection::projection(std::size_t in_dim, std::size_t out_dim, std::vector<float> weights, std::vector<float> bias)
    : in_dim_(in_dim), out_dim_(out_dim), weights_(std::move(weights)), bias_(std::move(bias)) {
  check_dims(in_dim, out_dim, "projection");
  SHOAL_CHECK_CODE(weights_.size() == in_dim * out_dim, errc::dimension_mismatch, "projection: weights have ",
                   weights_.size(), " values, a ", out_dim, " x ", in_dim, " matrix needs ", in_dim * out_dim);
  if (bias_.empty()) bias_.assign(out_dim, 0.0f);
  SHOAL_CHECK_CODE(bias_.size() == out_dim, errc::dimension_mismatch, "projection: bias has ", bias_.size(),
                   " values, expected out_dim = ", out_dim);
  for (std::size_t i = 0; i < weights_.size(); ++i)
    SHOAL_CHECK_CODE(std::isfinite(weights_[i]), errc::non_finite, "projection: weight (", i / in_dim, ", ", i % in_dim,
                     ") is not finite (", weights_[i], ")");
  for (std::size_t i = 0; i < out_dim; ++i)
    SHOAL_CHECK_CODE(std::isfinite(bias_[i]), errc::non_finite, "projection: bias ", i, " is not finite (", bias_[i],
                     ")");
}

projection projection::identity(std::size_t dim) {
  check_dims(dim, dim, "projection::identity");
  std::vector<float> weights(dim * dim, 0.0f);
  for (std::size_t i = 0; i < dim; ++i) weights[i * dim + i] = 1.0f;
  return {dim, dim, std::move(weights)};
}

projection projection::fit_ridge(matrix_view<const float> x, matrix_view<const float> y, float lambda, bool fit_bias) {
  constexpr const char* what = "projection::fit_ridge";
  SHOAL_CHECK(std::isfinite(lambda) && lambda >= 0.0f, what, ": lambda must be a finite number >= 0, got ", lambda);
  check_pairs(x, y, fit_bias, what);
  moments m = accumulate(x, y, fit_bias, true);
  m.xx.diagonal().array() += static_cast<double>(lambda);
  const Eigen::LDLT<Eigen::MatrixXd> ldlt(m.xx);
  // rcond() estimates 1 / cond(XᵀX + λI); below this the solution carries no correct digits worth having.
  const double min_rcond = std::numeric_limits<double>::epsilon() * static_cast<double>(x.dim);
  // rcond() alone misses an exactly singular matrix: its estimate goes through solve(), which treats a
  // zero pivot as a pseudo-inverse would. The pivots of the (pivoted) factorisation bound it from the
  // other side: each lies between the smallest and the largest eigenvalue, so a smallest-to-largest
  // pivot ratio at or below min_rcond means a condition number at least that bad.
  const bool factored = ldlt.info() == Eigen::Success;
  const Eigen::VectorXd pivots = factored ? Eigen::VectorXd(ldlt.vectorD()) : Eigen::VectorXd();
  const double largest = factored ? pivots.cwiseAbs().maxCoeff() : 0.0;
  const double rcond = factored && largest > 0.0 ? std::min(ldlt.rcond(), pivots.minCoeff() / largest) : 0.0;
  SHOAL_CHECK(rcond > min_rcond, what, ": XᵀX + lambda·I is singular or nearly so (", "reciprocal condition number ",
              rcond, ", lambda ", lambda, ", ", x.rows, " rows for input dimension ", x.dim,
              "); use more independent rows or lambda > 0");
  const Eigen::MatrixXd wt = ldlt.solve(m.xy);  // in x out
  return make_fitted(wt.transpose(), m, what);
}

projection projection::fit_procrustes(matrix_view<const float> x, matrix_view<const float> y, bool fit_bias) {
  constexpr const char* what = "projection::fit_procrustes";
  SHOAL_CHECK_CODE(x.dim == y.dim, errc::dimension_mismatch, what, ": an orthogonal map needs equal dimensions, x has ",
                   x.dim, " and y has ", y.dim);
  check_pairs(x, y, fit_bias, what);
  const moments m = accumulate(x, y, fit_bias, false);
  // min ‖X·R − Y‖ over orthogonal R is R = U·Vᵀ for XᵀY = U·Σ·Vᵀ; W = Rᵀ = V·Uᵀ.
  const Eigen::BDCSVD<Eigen::MatrixXd> svd(m.xy, Eigen::ComputeFullU | Eigen::ComputeFullV);
  SHOAL_CHECK(svd.info() == Eigen::Success, what, ": the SVD of XᵀY did not converge");
  return make_fitted(svd.matrixV() * svd.matrixU().transpose(), m, what);
}

void projection::apply(matrix_view<const float> in, matrix_view<float> out) const {
  detail::check_vectors(in, in_dim_, "projection::apply: input");
  detail::check_output(out, in.rows, out_dim_, "projection::apply");
  if (in.rows == 0) return;
  const Eigen::Map<const row_major> w(weights_.data(), ei(out_dim_), ei(in_dim_));
  const Eigen::Map<const Eigen::RowVectorXf> b(bias_.data(), ei(out_dim_));
  strided_map y = map(out);
  if (detail::views_overlap(in, out))
    y = map(in) * w.transpose();  // Eigen evaluates a product into a temporary unless told noalias
  else
    y.noalias() = map(in) * w.transpose();
  y.rowwise() += b;
  // Finite rows can project past float's range (a review, session 38: W = {3e38, 3e38}, x = {10, −10}
  // gave NaN, which the store handed back from `to_shared`).
  detail::check_vectors(out, out_dim_, "projection::apply: projected");
}

matrix<float> projection::apply(matrix_view<const float> in) const {
  matrix<float> out(in.rows, out_dim_);
  apply(in, out.mutable_view());
  return out;
}

void projection::apply(std::span<const float> in, std::span<float> out) const {
  SHOAL_CHECK_CODE(in.size() == in_dim_, errc::dimension_mismatch, "projection::apply: input has dimension ", in.size(),
                   ", expected ", in_dim_);
  SHOAL_CHECK_CODE(out.size() == out_dim_, errc::dimension_mismatch, "projection::apply: output has dimension ",
                   out.size(), ", expected ", out_dim_);
  detail::check_vectors({in.data(), 1, in_dim_}, in_dim_, "projection::apply: input");
  const Eigen::Map<const row_major> w(weights_.data(), ei(out_dim_), ei(in_dim_));
  Eigen::Map<Eigen::VectorXf> y(out.data(), ei(out_dim_));
  const Eigen::Map<const Eigen::VectorXf> x(in.data(), ei(in_dim_));
  if (detail::views_overlap({in.data(), 1, in_dim_}, {out.data(), 1, out_dim_}))
    y = w * x;  // into a temporary first
  else
    y.noalias() = w * x;
  y += Eigen::Map<const Eigen::VectorXf>(bias_.data(), ei(out_dim_));
  detail::check_vectors({out.data(), 1, out_dim_}, out_dim_, "projection::apply: projected");
}

void projection::save_npy(const std::filesystem::path& weights_path, const std::filesystem::path& bias_path) const {
  io::write_npy(weights_path, matrix_view<const float>{weights_.data(), out_dim_, in_dim_});
  io::write_npy(bias_path, matrix_view<const float>{bias_.data(), 1, out_dim_});
}

projection projection::load_npy(const std::filesystem::path& weights_path, const std::filesystem::path& bias_path) {
  // A 1-D file would read as n x 1, the opposite of NumPy's `w @ x` for a 1-D w (a 1 x n map).
  SHOAL_CHECK_CODE(io::read_npy_header(weights_path).ndim == 2, errc::dimension_mismatch, weights_path.string(),
                   ": the weights are a 1-D array; a projection needs a 2-D (out_dim, in_dim) one");
  const matrix<float> w = io::read_npy(weights_path);
  const std::size_t out_dim = w.rows;
  const std::size_t in_dim = w.dim;
  SHOAL_CHECK(out_dim >= 1, weights_path.string(), ": the weight matrix has no rows");
  check_finite(w, weights_path);
  std::vector<float> bias;
  if (!bias_path.empty()) {
    const matrix<float> b = io::read_npy(bias_path);
    SHOAL_CHECK_CODE((b.rows == 1 || b.dim == 1) && b.rows * b.dim == out_dim, errc::dimension_mismatch,
                     bias_path.string(), ": bias has shape (", b.rows, ", ", b.dim, "), expected ", out_dim,
                     " values for the ", out_dim, " x ", in_dim, " weights of ", weights_path.string());
    check_finite(b, bias_path);
    bias.assign(b.values.begin(), b.values.end());
  }
  return {in_dim, out_dim, std::vector<float>(w.values.begin(), w.values.end()), std::move(bias)};
}

std::vector<std::byte> projection::serialize() const {
  std::vector<std::byte> out;
  out.reserve(serial_header_bytes + 4 * (weights_.size() + bias_.size()) + serial_crc_bytes);
  for (const char c : serial_magic) out.push_back(static_cast<std::byte>(c));
  put<std::uint16_t>(out, serial_major);
  put<std::uint16_t>(out, serial_minor);
  put<std::uint32_t>(out, 0);
  put<std::uint64_t>(out, in_dim_);
  put<std::uint64_t>(out, out_dim_);
  for (const float v : weights_) put(out, std::bit_cast<std::uint32_t>(v));
  for (const float v : bias_) put(out, std::bit_cast<std::uint32_t>(v));
  put(out, crc32c(out.data(), out.size()));
  return out;
}

projection projection::deserialize(std::span<const std::byte> bytes) {
  constexpr const char* what = "projection::deserialize";
  const std::size_t size = bytes.size();
  SHOAL_CHECK_CODE(size >= serial_header_bytes, errc::corrupt_file, what, ": truncated: ", size,
                   " bytes, the header alone has ", serial_header_bytes);
  const std::byte* p = bytes.data();
  SHOAL_CHECK_CODE(std::memcmp(p, serial_magic.data(), serial_magic.size()) == 0, errc::corrupt_file, what,
                   ": not a serialised projection (bad magic)");
  const auto major = get<std::uint16_t>(p + 8);
  const auto minor = get<std::uint16_t>(p + 10);
  SHOAL_CHECK_CODE(major <= serial_major, errc::unsupported, what, ": format version ", major, ".", minor,
                   " is newer than this library reads (", serial_major, ".x)");
  SHOAL_CHECK_CODE(major == serial_major, errc::corrupt_file, what, ": invalid format version ", major, ".", minor);
  SHOAL_CHECK_CODE(get<std::uint32_t>(p + 12) == 0, errc::corrupt_file, what, ": reserved field is not zero");
  const auto in_dim = get<std::uint64_t>(p + 16);
  const auto out_dim = get<std::uint64_t>(p + 24);
  SHOAL_CHECK_CODE(in_dim >= 1 && in_dim <= max_dim && out_dim >= 1 && out_dim <= max_dim, errc::corrupt_file, what,
                   ": dimensions ", out_dim, " x ", in_dim, " are outside [1, ", max_dim, "]");
  // Both at most 2^24: the count cannot overflow.
  const std::uint64_t values = out_dim * (in_dim + 1);
  const std::uint64_t expected = serial_header_bytes + 4 * values + serial_crc_bytes;
  SHOAL_CHECK_CODE(size >= expected, errc::corrupt_file, what, ": truncated: ", size, " bytes, a ", out_dim, " x ",
                   in_dim, " projection takes ", expected);
  SHOAL_CHECK_CODE(size == expected, errc::corrupt_file, what, ": ", size - expected, " bytes follow the ", expected,
                   " bytes of a ", out_dim, " x ", in_dim, " projection");
  const std::size_t body = size - serial_crc_bytes;
  const auto stored_crc = get<std::uint32_t>(p + body);
  const std::uint32_t actual_crc = crc32c(p, body);
  SHOAL_CHECK_CODE(stored_crc == actual_crc, errc::corrupt_file, what, ": checksum mismatch (stored ", stored_crc,
                   ", computed ", actual_crc, "): the bytes are damaged");
  std::vector<float> weights(static_cast<std::size_t>(out_dim * in_dim));
  std::vector<float> bias(static_cast<std::size_t>(out_dim));
  const std::byte* at = p + serial_header_bytes;
  for (auto* vec : {&weights, &bias})
    for (float& v : *vec) {
      v = std::bit_cast<float>(get<std::uint32_t>(at));
      at += 4;
      SHOAL_CHECK_CODE(std::isfinite(v), errc::corrupt_file, what, ": a stored value is not finite (", v, ")");
    }
  return {static_cast<std::size_t>(in_dim), static_cast<std::size_t>(out_dim), std::move(weights), std::move(bias)};
}

}  // namespace shoal
