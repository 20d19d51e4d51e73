#include "shoal/quant/pq.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/parallel.hpp"
#include "shoal/cluster/kmeans.hpp"
#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"

namespace shoal {
namespace detail {
namespace pq_scalar {
const pq_kernels& pq_table() noexcept;
}
#ifdef SHOAL_HAVE_X86_KERNELS
namespace pq_avx2 {
const pq_kernels& pq_table() noexcept;
}
namespace pq_avx512 {
const pq_kernels& pq_table() noexcept;
}
#endif
}  // namespace detail

namespace {

/// Columns [first, first + count) of `v` as a dense matrix (one sub-space of every vector).
matrix<float> sub_columns(matrix_view<const float> v, std::size_t first, std::size_t count) {
  matrix<float> out(v.rows, count);
  for (std::size_t i = 0; i < v.rows; ++i) std::copy_n(v.row(i) + first, count, out.row(i));
  return out;
}

}  // namespace

product_quantizer::product_quantizer(std::size_t dim, std::size_t m, std::size_t nbits)
    : dim_(dim), m_(m), nbits_(nbits) {
  detail::check_dimension(dim, "product_quantizer");
  SHOAL_CHECK(m > 0, "product_quantizer: m (sub-quantizers) must be at least 1");
  SHOAL_CHECK(dim % m == 0, "product_quantizer: m = ", m, " does not divide dimension ", dim);
  SHOAL_CHECK(nbits == 4 || nbits == 8, "product_quantizer: nbits = ", nbits, " is not supported (use 4 or 8)");
  dsub_ = dim / m;
  (void)active_quant_kernels();  // surface a bad SHOAL_SIMD here rather than in the first scan
}

void product_quantizer::train(matrix_view<const float> vectors, const pq_train_params& params) {
  detail::check_vectors(vectors, dim_, "product_quantizer::train: vector");
  const std::size_t k = ksub();
  SHOAL_CHECK(vectors.rows >= k, "product_quantizer::train: ", k, " codewords per sub-quantizer need at least ", k,
              " training vectors, got ", vectors.rows);
  SHOAL_CHECK(params.iterations > 0, "product_quantizer::train: iterations must be at least 1");
  // A sub-space whose values (nearly) coincide gets k copies of their mean: k-means refuses a spread
  // this small (its distances underflow), and what its codes could tell apart is below the rounding of
  // the other sub-spaces' distances. Unless every sub-space is like that: then k-means says why.
  std::vector<std::vector<double>> means(m_, std::vector<double>(dsub_, 0.0));
  std::vector<char> narrow(m_, 0);
  for (std::size_t s = 0; s < m_; ++s) {
    for (std::size_t i = 0; i < vectors.rows; ++i)
      for (std::size_t j = 0; j < dsub_; ++j) means[s][j] += vectors.row(i)[s * dsub_ + j];
    for (double& mean : means[s]) mean /= static_cast<double>(vectors.rows);
    double spread = 0.0;
    for (std::size_t i = 0; i < vectors.rows; ++i)
      for (std::size_t j = 0; j < dsub_; ++j) {
        const double d = vectors.row(i)[s * dsub_ + j] - means[s][j];
        spread += d * d;
      }
    narrow[s] = spread / static_cast<double>(vectors.rows * dsub_) < kmeans_min_mean_square;
  }
  const bool all_narrow = std::all_of(narrow.begin(), narrow.end(), [](char n) { return n != 0; });
  matrix<float> books(m_ * k, dsub_);
  detail::parallel_for(m_, [&](std::size_t s) {
    if (narrow[s] && !all_narrow) {
      for (std::size_t c = 0; c < k; ++c)
        for (std::size_t j = 0; j < dsub_; ++j) books.row(s * k + c)[j] = static_cast<float>(means[s][j]);
      return;
    }
    const matrix<float> sub = sub_columns(vectors, s * dsub_, dsub_);
    kmeans_params kp;
    kp.k = k;
    kp.iterations = params.iterations;
    kp.seed = params.seed + s;
    kp.max_points_per_centroid = params.max_points_per_centroid;
    const kmeans_result r = kmeans(sub.view(), kp);
    std::copy_n(r.centroids.values.data(), k * dsub_, books.row(s * k));
  });
  set_codebooks(std::move(books));
}

product_quantizer product_quantizer::with_codebooks(std::size_t dim, std::size_t m, std::size_t nbits,
                                                    matrix<float> codebooks) {
  product_quantizer pq(dim, m, nbits);
  SHOAL_CHECK(codebooks.rows == m * pq.ksub() && codebooks.dim == pq.dsub() &&
                  codebooks.values.size() == codebooks.rows * codebooks.dim,
              "product_quantizer::with_codebooks: codebooks of ", codebooks.rows, " x ", codebooks.dim, ", expected ",
              m * pq.ksub(), " x ", pq.dsub());
  SHOAL_CHECK_CODE(
      std::all_of(codebooks.values.begin(), codebooks.values.end(), [](float v) { return std::isfinite(v); }),
      errc::non_finite, "product_quantizer::with_codebooks: a codeword holds a non-finite value");
  double largest = 0;  // squared norm of the largest vector the codebooks decode to
  for (std::size_t s = 0; s < m; ++s) {
    double widest = 0;
    for (std::size_t c = 0; c < pq.ksub(); ++c) {
      const float* word = codebooks.row(s * pq.ksub() + c);
      double norm = 0;
      for (std::size_t j = 0; j < pq.dsub(); ++j) norm += static_cast<double>(word[j]) * word[j];
      widest = std::max(widest, norm);
    }
    largest += widest;
  }
  detail::check_squared_norm(largest, "product_quantizer::with_codebooks: the largest vector the codebooks decode to");
  pq.set_codebooks(std::move(codebooks));
  return pq;
}

void product_quantizer::set_codebooks(matrix<float> books) {
  const std::size_t k = ksub();
  codebooks_ = std::move(books);
  codebooks_t_.resize(m_ * k * dsub_);
  for (std::size_t s = 0; s < m_; ++s)
    for (std::size_t c = 0; c < k; ++c)
      for (std::size_t d = 0; d < dsub_; ++d) codebooks_t_[(s * dsub_ + d) * k + c] = codebooks_.row(s * k + c)[d];
}

void product_quantizer::encode(matrix_view<const float> vectors, std::uint8_t* codes) const {
  SHOAL_CHECK(is_trained(), "product_quantizer::encode: the quantizer is not trained");
  detail::check_vectors(vectors, dim_, "product_quantizer::encode: vector");
  detail::check_codes(codes, vectors.rows, "product_quantizer::encode");
  const std::size_t k = ksub();
  const std::size_t n = vectors.rows;
  // The L2 table of a vector holds its distance to every codeword of every sub-space: the code is the
  // argmin of each row (ties to the smaller index). Blocks of rows in parallel.
  constexpr std::size_t block = 256;
  const pq_kernels& kern = active_quant_kernels();
  detail::parallel_for((n + block - 1) / block, [&](std::size_t b) {
    std::vector<float> table(m_ * k);
    for (std::size_t i = b * block; i < std::min(n, (b + 1) * block); ++i) {
      kern.tables(vectors.row(i), codebooks_t_.data(), m_, dsub_, k, true, table.data());
      for (std::size_t s = 0; s < m_; ++s) {
        const float* row = table.data() + s * k;
        std::size_t best = 0;
        for (std::size_t c = 1; c < k; ++c)
          if (row[c] < row[best]) best = c;
        codes[i * m_ + s] = static_cast<std::uint8_t>(best);
      }
    }
  });
}

std::vector<std::uint8_t> product_quantizer::encode(matrix_view<const float> vectors) const {
  std::vector<std::uint8_t> codes(vectors.rows * m_);
  encode(vectors, codes.data());
  return codes;
}

void product_quantizer::decode(const std::uint8_t* codes, std::size_t n, matrix_view<float> out) const {
  SHOAL_CHECK(is_trained(), "product_quantizer::decode: the quantizer is not trained");
  detail::check_output(out, n, dim_, "product_quantizer::decode");
  detail::check_codes(codes, n, "product_quantizer::decode");
  const std::size_t k = ksub();
  // A 4-bit quantizer's code is a byte like an 8-bit one's: one of 16 or more would read another
  // sub-quantizer's codewords, or past the last.
  if (k < 256)
    for (std::size_t i = 0; i < n * m_; ++i)
      SHOAL_CHECK(codes[i] < k, "product_quantizer::decode: code ", static_cast<unsigned>(codes[i]), " of row ", i / m_,
                  " (sub-quantizer ", i % m_, ") is not below ", k);
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t s = 0; s < m_; ++s)
      std::copy_n(codebooks_.row(s * k + codes[i * m_ + s]), dsub_, out.row(i) + s * dsub_);
}

void product_quantizer::compute_table(const float* query, metric m, float* table) const noexcept {
  active_quant_kernels().tables(query, codebooks_t_.data(), m_, dsub_, ksub(), m == metric::l2, table);
}

void product_quantizer::compute_ip_table_f64(const float* query, double* table) const noexcept {
  active_quant_kernels().tables_ip_f64(query, codebooks_t_.data(), m_, dsub_, table);
}

void product_quantizer::scan(const float* table, const std::uint8_t* codes, std::size_t n, float* out) const noexcept {
  if (nbits_ == 8) {
    active_quant_kernels().scan_8bit(table, codes, n, m_, out);
    return;
  }
  for (std::size_t i = 0; i < n; ++i) {
    float sum = 0.0f;
    for (std::size_t s = 0; s < m_; ++s) sum += table[s * 16 + codes[i * m_ + s]];
    out[i] = sum;
  }
}

// ------------------------------------------------------------------------------------------ fast-scan

namespace {
/// Byte holding (vector i, sub-quantizer s) within the blocks, and whether it is the high nibble.
struct nibble_at {
  std::size_t byte;
  bool high;
};
constexpr nibble_at locate(std::size_t m, std::size_t i, std::size_t s) noexcept {
  const std::size_t block = i / fast_scan_block;
  const std::size_t v = i % fast_scan_block;
  return {block * fast_scan_block_bytes(m) + 32 * (s / 2) + 16 * (s % 2) + v % 16, v >= 16};
}
}  // namespace

void pack_fast_scan(const std::uint8_t* codes, std::size_t n, std::size_t m, std::uint8_t* packed) noexcept {
  const std::size_t blocks = (n + fast_scan_block - 1) / fast_scan_block;
  std::fill_n(packed, blocks * fast_scan_block_bytes(m), std::uint8_t{0});
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t s = 0; s < m; ++s) fast_scan_set(packed, m, i, s, codes[i * m + s]);
}

std::uint8_t fast_scan_get(const std::uint8_t* packed, std::size_t m, std::size_t i, std::size_t s) noexcept {
  const nibble_at at = locate(m, i, s);
  return static_cast<std::uint8_t>(at.high ? packed[at.byte] >> 4 : packed[at.byte] & 15u);
}

void fast_scan_set(std::uint8_t* packed, std::size_t m, std::size_t i, std::size_t s, std::uint8_t code) noexcept {
  const nibble_at at = locate(m, i, s);
  std::uint8_t& b = packed[at.byte];
  b = at.high ? static_cast<std::uint8_t>((b & 0x0fu) | (code << 4)) : static_cast<std::uint8_t>((b & 0xf0u) | code);
}

void quantize_table(const float* table, std::size_t m, quantized_table& out) {
  const std::size_t m2 = m + (m & 1);
  out.values.resize(m2 * 16);
  if (m2 != m) std::fill_n(out.values.data() + m * 16, 16, std::uint8_t{0});
  SHOAL_CHECK_CODE(active_quant_kernels().quantize(table, m, out.values.data(), &out.bias, &out.scale),
                   errc::non_finite, "quantize_table: the ", m,
                   " x 16 ADC table holds NaN or Inf, or its row ranges or the sum of its row minima overflow "
                   "float (the query's distances to the codewords do not fit a float)");
}

const pq_kernels& quant_kernels(simd_level level) {
  SHOAL_CHECK_CODE(simd_level_available(level), errc::unsupported, "SIMD level ", simd_level_name(level),
                   " is not available on this CPU");
  switch (level) {
#ifdef SHOAL_HAVE_X86_KERNELS
    case simd_level::avx2:
      return detail::pq_avx2::pq_table();
    case simd_level::avx512:
    case simd_level::amx:  // the amx level differs only in its GEMM
      return detail::pq_avx512::pq_table();
#endif
    default:
      return detail::pq_scalar::pq_table();
  }
}

const pq_kernels& active_quant_kernels() {
  static const pq_kernels& table = quant_kernels(active_simd_level());
  return table;
}

}  // namespace shoal
