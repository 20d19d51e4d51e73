#include "shoal/quant/opq.hpp"

#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>

#include "core/parallel.hpp"
#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "shoal/distance/distance.hpp"
#include "shoal/eval/eval.hpp"

namespace shoal {
namespace {

using row_major = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using row_major_d = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// The parametric OPQ solution (Ge et al. 2013, "eigenvalue allocation"), for Gaussian data: the
/// principal directions of `x`, dealt out largest variance first, each to the sub-space (of those not
/// yet full) whose product of variances so far is smallest, so that every sub-space ends with about the
/// same product. Column block s of the result spans sub-space s.
row_major eigenvalue_allocation(const row_major& x, std::size_t m) {
  const auto d = static_cast<std::size_t>(x.cols());
  const std::size_t dsub = d / m;
  const row_major_d centred = x.cast<double>().rowwise() - x.cast<double>().colwise().mean();
  const row_major_d covariance = centred.transpose() * centred / static_cast<double>(x.rows());
  const Eigen::SelfAdjointEigenSolver<row_major_d> eigen(covariance);
  // Eigen sorts the eigenvalues in increasing order: walk them from the last.
  std::vector<double> log_product(m, 0.0);
  std::vector<std::size_t> filled(m, 0);
  row_major r(x.cols(), x.cols());
  for (std::size_t e = d; e-- > 0;) {
    std::size_t best = m;
    for (std::size_t s = 0; s < m; ++s)
      if (filled[s] < dsub && (best == m || log_product[s] < log_product[best])) best = s;
    // A zero (or rounding-negative) variance: a direction the data does not use; any place does.
    log_product[best] += std::log(std::max(eigen.eigenvalues()(static_cast<Eigen::Index>(e)), 1e-300));
    r.col(static_cast<Eigen::Index>(best * dsub + filled[best]++)) =
        eigen.eigenvectors().col(static_cast<Eigen::Index>(e)).cast<float>();
  }
  return r;
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
  r.set_rotation(std::move(rotation));
  return r;
}

void opq_rotation::set_rotation(std::vector<float> rotation) {
  std::vector<double> column(dim_, 0.0);
  double row_max = 0.0;
  for (std::size_t i = 0; i < dim_; ++i) {
    double row = 0.0;
    for (std::size_t j = 0; j < dim_; ++j) {
      const double v = std::abs(static_cast<double>(rotation[i * dim_ + j]));
      row += v;
      column[j] += v;
    }
    row_max = std::max(row_max, row);
  }
  const double column_max = *std::max_element(column.begin(), column.end());
  gain_ = std::sqrt(column_max * row_max) * (1.0 + static_cast<double>(dim_) * 0x1p-23);
  std::vector<float> columns(dim_ * dim_);
  for (std::size_t i = 0; i < dim_; ++i)
    for (std::size_t j = 0; j < dim_; ++j) columns[j * dim_ + i] = rotation[i * dim_ + j];
  rotation_ = std::move(rotation);
  columns_ = std::move(columns);
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

  row_major rotated(x.rows(), x.cols());
  matrix<float> rebuilt(n, dim_);
  std::vector<std::uint8_t> codes(n * m_);
  // Trains iteration `it`'s PQ on x·r, leaves its reconstruction in `rebuilt`, returns its mean squared
  // error (summed in double: float overflows for valid vectors of norm ~1e18).
  const auto quantize = [&](const row_major& r, std::size_t it) {
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
    return (rotated - yhat).cast<double>().squaredNorm() / static_cast<double>(n);
  };
  // Two starts, the better kept after one PQ each. The alternation only refines the start it is given
  // (it stayed at plain PQ's error on data whose variance sits in one sub-space; a review), and neither
  // start wins everywhere (final error after 8 iterations, identity / allocation: bigann10k PQ16
  // 9,744 / 15,590, CLIP captions PQ64x4 0.073 / 0.099; variance in 4 of 16 dimensions PQ4x4 141 / 4.3,
  // 64-d clusters PQ16x4 7.27 / 6.58). The start with the lower first error ended lower in each. The
  // second start costs one PQ, a covariance and its eigen-decomposition: 16,384 clustered vectors,
  // 768-d PQ96x4, 31.2 s → 36.2 s (final error 194 → 163), bigann10k PQ16 3.3 s → 3.7 s (unchanged).
  const row_major identity = row_major::Identity(static_cast<Eigen::Index>(dim_), static_cast<Eigen::Index>(dim_));
  const row_major allocated = eigenvalue_allocation(x, m_);
  const double allocated_error = quantize(allocated, 0);
  const double identity_error = quantize(identity, 0);  // ties keep the identity: plain PQ
  row_major r = identity;
  if (allocated_error < identity_error) {
    r = allocated;
    (void)quantize(r, 0);  // its reconstruction again (the same seed: the same codes)
  }
  errors_.assign(1, std::min(identity_error, allocated_error));
  for (std::size_t it = 0; it < params.iterations; ++it) {
    if (it > 0) errors_.push_back(quantize(r, it));
    const Eigen::Map<const row_major> yhat(rebuilt.values.data(), static_cast<Eigen::Index>(n),
                                           static_cast<Eigen::Index>(dim_));
    if (it + 1 == params.iterations) break;
    // Orthogonal Procrustes: argmin_R ‖X·R − Ŷ‖_F over orthogonal R is U·Vᵀ for Xᵀ·Ŷ = U·Σ·Vᵀ (in
    // double precision: the product sums n terms per entry).
    const row_major_d cross = x.cast<double>().transpose() * yhat.cast<double>();
    const Eigen::BDCSVD<row_major_d> svd(cross, Eigen::ComputeFullU | Eigen::ComputeFullV);
    r = (svd.matrixU() * svd.matrixV().transpose()).cast<float>();
  }
  set_rotation(std::vector<float>(r.data(), r.data() + r.size()));
}

void opq_rotation::apply(matrix_view<const float> vectors, matrix_view<float> out) const {
  SHOAL_CHECK(is_trained(), "opq_rotation::apply: the rotation is not trained");
  detail::check_vectors(vectors, dim_, "opq_rotation::apply: vector");
  detail::check_output(out, vectors.rows, dim_, "opq_rotation::apply");
  // Row by row through the dispatched one-to-many kernel (each output value ⟨x, column j of R⟩), so a
  // row's rotation is the same bits whatever rows share its call: as one Eigen product, a batch went
  // through a GEMM and one row through a GEMV, which round differently, and a query searched alone found
  // other neighbours than in a batch (a review: OPQ24,IVF64,PQ24 over data offset by 300, ids differing
  // in 3 of 400 rows), against "each row is exactly its own query's answer". The kernel is also faster
  // than Eigen's product in this file's baseline build (BENCHMARKS.md, session 42).
  // Blocks of 16 rows, each scored against 64 columns at a time (256 KB at dim 1,024) so that the
  // columns stay in the core's cache across the block's rows. An output over the input (in any way) is
  // written from a copy once every row is rotated, as Eigen's product did.
  const distance_kernels& kernels = active_kernels();
  std::optional<matrix<float>> staged;
  if (detail::views_overlap(vectors, out)) staged.emplace(vectors.rows, dim_);
  const matrix_view<float> target = staged ? staged->mutable_view() : out;
  constexpr std::size_t block = 16, columns_at_once = 64;
  detail::parallel_for((vectors.rows + block - 1) / block, [&](std::size_t b) {
    const std::size_t first = b * block, rows = std::min(vectors.rows - first, block);
    for (std::size_t c = 0; c < dim_; c += columns_at_once) {
      const std::size_t n = std::min(columns_at_once, dim_ - c);
      for (std::size_t r = first; r < first + rows; ++r)
        kernels.inner_product_one_to_many(vectors.row(r), columns_.data() + c * dim_, n, dim_, dim_,
                                          target.data + r * target.stride + c);
    }
  });
  if (staged)
    for (std::size_t r = 0; r < vectors.rows; ++r) std::copy_n(staged->row(r), dim_, out.data + r * out.stride);
}

matrix<float> opq_rotation::apply(matrix_view<const float> vectors) const {
  matrix<float> out(vectors.rows, dim_);
  apply(vectors, out.mutable_view());
  return out;
}

}  // namespace shoal
