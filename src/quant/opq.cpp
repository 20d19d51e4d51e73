#include "shoal/quant/opq.hpp"

#include <Eigen/Core>
#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <numeric>

#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "shoal/eval/eval.hpp"

namespace shoal {
namespace {

using row_major = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using row_major_d = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

Eigen::Map<const row_major, 0, Eigen::OuterStride<>> map(matrix_view<const float> v) {
  return {v.data, static_cast<Eigen::Index>(v.rows), static_cast<Eigen::Index>(v.dim),
          Eigen::OuterStride<>(static_cast<Eigen::Index>(v.stride))};
}

}  // namespace

opq_rotation::opq_rotation(std::size_t dim, std::size_t m, std::size_t nbits) : dim_(dim), m_(m), nbits_(nbits) {
  (void)product_quantizer(dim, m, nbits);  // the same parameter checks
}

opq_rotation opq_rotation::with_rotation(std::size_t dim, std::size_t m, std::size_t nbits,
                                         std::vector<float> rotation) {
  opq_rotation r(dim, m, nbits);
  SHOAL_CHECK(rotation.size() == dim * dim, "opq_rotation::with_rotation: ", rotation.size(), " values, expected ", dim,
              " x ", dim);
  SHOAL_CHECK_CODE(std::all_of(rotation.begin(), rotation.end(), [](float v) { return std::isfinite(v); }),
                   errc::non_finite, "opq_rotation::with_rotation: the matrix holds a non-finite value");
  r.rotation_ = std::move(rotation);
  return r;
}

void opq_rotation::train(matrix_view<const float> vectors, const opq_train_params& params) {
  detail::check_vectors(vectors, dim_, "opq_rotation::train: vector");
  const std::size_t ksub = std::size_t{1} << nbits_;
  SHOAL_CHECK(vectors.rows >= ksub, "opq_rotation::train: ", ksub, " codewords per sub-quantizer need at least ", ksub,
              " training vectors, got ", vectors.rows);
  SHOAL_CHECK(params.iterations > 0 && params.pq_iterations > 0, "opq_rotation::train: iterations must be at least 1");
  // A seeded sample, in row order.
  std::vector<std::size_t> rows(vectors.rows);
  std::iota(rows.begin(), rows.end(), std::size_t{0});
  const std::size_t keep = std::max(params.max_training_vectors, ksub);  // the PQ needs ksub rows
  if (params.max_training_vectors > 0 && rows.size() > keep) {
    splitmix64 rng(params.seed);
    for (std::size_t i = 0; i < keep; ++i) std::swap(rows[i], rows[i + rng.below(rows.size() - i)]);
    rows.resize(keep);
    std::sort(rows.begin(), rows.end());
  }
  const std::size_t n = rows.size();
  row_major x(static_cast<Eigen::Index>(n), static_cast<Eigen::Index>(dim_));
  for (std::size_t i = 0; i < n; ++i)
    std::copy_n(vectors.row(rows[i]), dim_, x.data() + static_cast<Eigen::Index>(i * dim_));

  row_major r = row_major::Identity(static_cast<Eigen::Index>(dim_), static_cast<Eigen::Index>(dim_));
  row_major rotated(x.rows(), x.cols());
  matrix<float> rebuilt(n, dim_);
  std::vector<std::uint8_t> codes(n * m_);
  errors_.clear();
  for (std::size_t it = 0; it < params.iterations; ++it) {
    rotated.noalias() = x * r;
    const matrix_view<const float> y{rotated.data(), n, dim_};
    product_quantizer pq(dim_, m_, nbits_);
    pq_train_params pp;
    pp.iterations = params.pq_iterations;
    pp.seed = params.seed + it;
    pq.train(y, pp);
    pq.encode(y, codes.data());
    pq.decode(codes.data(), n, rebuilt.mutable_view());
    const Eigen::Map<const row_major> yhat(rebuilt.values.data(), static_cast<Eigen::Index>(n),
                                           static_cast<Eigen::Index>(dim_));
    errors_.push_back((rotated - yhat).cast<double>().squaredNorm() / static_cast<double>(n));  // float overflows
    if (it + 1 == params.iterations) break;
    // Orthogonal Procrustes: argmin_R ‖X·R − Ŷ‖_F over orthogonal R is U·Vᵀ for Xᵀ·Ŷ = U·Σ·Vᵀ (in
    // double precision: the product sums n terms per entry).
    const row_major_d cross = x.cast<double>().transpose() * yhat.cast<double>();
    const Eigen::BDCSVD<row_major_d> svd(cross, Eigen::ComputeFullU | Eigen::ComputeFullV);
    r = (svd.matrixU() * svd.matrixV().transpose()).cast<float>();
  }
  rotation_.assign(r.data(), r.data() + r.size());
}

void opq_rotation::apply(matrix_view<const float> vectors, matrix_view<float> out) const {
  SHOAL_CHECK(is_trained(), "opq_rotation::apply: the rotation is not trained");
  detail::check_vectors(vectors, dim_, "opq_rotation::apply: vector");
  detail::check_output(out, vectors.rows, dim_, "opq_rotation::apply");
  const Eigen::Map<const row_major> r(rotation_.data(), static_cast<Eigen::Index>(dim_),
                                      static_cast<Eigen::Index>(dim_));
  Eigen::Map<row_major, 0, Eigen::OuterStride<>> result(out.data, static_cast<Eigen::Index>(out.rows),
                                                        static_cast<Eigen::Index>(dim_),
                                                        Eigen::OuterStride<>(static_cast<Eigen::Index>(out.stride)));
  if (detail::views_overlap(vectors, out))
    result = map(vectors) * r;  // Eigen evaluates a product into a temporary unless told noalias
  else
    result.noalias() = map(vectors) * r;
}

matrix<float> opq_rotation::apply(matrix_view<const float> vectors) const {
  matrix<float> out(vectors.rows, dim_);
  apply(vectors, out.mutable_view());
  return out;
}

}  // namespace shoal
