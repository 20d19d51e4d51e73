#include "shoal/quant/sq.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <span>
#include <vector>

#include "core/parallel.hpp"
#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "sq_range.hpp"

namespace shoal {
namespace detail {
namespace pq_scalar {
const sq_kernels& sq_table() noexcept;
}
#ifdef SHOAL_HAVE_X86_KERNELS
namespace pq_avx2 {
const sq_kernels& sq_table() noexcept;
}
namespace pq_avx512 {
const sq_kernels& sq_table() noexcept;
}
#endif
}  // namespace detail

std::uint16_t float_to_half(float x) noexcept {
  std::uint32_t bits = 0;
  std::memcpy(&bits, &x, sizeof bits);
  const auto sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  bits &= 0x7fffffffu;
  if (bits >= 0x7f800000u) return static_cast<std::uint16_t>(sign | (bits > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (bits >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // ≥ 65520 rounds to Inf
  if (bits < 0x38800000u) {
    // Below 2^-14: a half subnormal. Adding 0.5 lines the float's mantissa up with the half's, and the
    // FPU's own rounding (to nearest even) does the rest.
    float f = 0.0f;
    std::memcpy(&f, &bits, sizeof f);
    f += 0.5f;
    std::memcpy(&bits, &f, sizeof f);
    return static_cast<std::uint16_t>(sign | (bits - 0x3f000000u));
  }
  // Normal: re-bias the exponent (127 → 15) and round the 13 dropped bits to nearest even.
  const std::uint32_t odd = (bits >> 13) & 1u;
  bits += 0xc8000fffu + odd;
  return static_cast<std::uint16_t>(sign | (bits >> 13));
}

float half_to_float(std::uint16_t h) noexcept {
  const std::uint32_t em = h & 0x7fffu;
  std::uint32_t bits = em << 13;
  float f = 0.0f;
  std::memcpy(&f, &bits, sizeof f);
  f *= 0x1.0p112f;  // re-bias 15 → 127 exactly (subnormal halves become normal floats)
  std::memcpy(&bits, &f, sizeof f);
  if (em >= 0x7c00u) bits |= 0x7f800000u;
  bits |= static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

scalar_quantizer::scalar_quantizer(std::size_t dim, sq_type type) : dim_(dim), type_(type) {
  detail::check_dimension(dim, "scalar_quantizer");
  (void)active_scalar_quant_kernels();
}

scalar_quantizer scalar_quantizer::sq8_with_ranges(std::vector<float> mins, std::vector<float> steps,
                                                   unsigned top_code) {
  SHOAL_CHECK(mins.size() == steps.size(), "scalar_quantizer::sq8_with_ranges: ", mins.size(), " minima but ",
              steps.size(), " steps");
  SHOAL_CHECK(top_code >= 1 && top_code <= 255, "scalar_quantizer::sq8_with_ranges: top_code ", top_code,
              " is outside 1-255");
  scalar_quantizer q(mins.size(), sq_type::sq8);
  // Each dimension's ends are components of vectors within the norm bound, as training on such vectors
  // gives them: a range past it decodes to vectors no index accepts (a step of 3e38 decoded past
  // FLT_MAX). Their combination may decode to a larger norm (one-hot vectors near the bound: 1.7e19 at
  // 64 dimensions) — checking that refused files built from valid vectors.
  for (std::size_t d = 0; d < mins.size(); ++d) {
    SHOAL_CHECK(std::isfinite(mins[d]) && std::isfinite(steps[d]) && steps[d] >= 0.0f,
                "scalar_quantizer::sq8_with_ranges: dimension ", d, " has min ", mins[d], " and step ", steps[d]);
    const double top = static_cast<double>(mins[d]) + static_cast<double>(top_code) * steps[d];
    detail::check_squared_norm(std::max(static_cast<double>(mins[d]) * mins[d], top * top),
                               "scalar_quantizer::sq8_with_ranges: the end of the range of dimension", " ", d);
  }
  q.min_ = std::move(mins);
  q.step_ = std::move(steps);
  q.top_ = top_code;
  return q;
}

namespace detail {

code_range_model::code_range_model(std::span<const float> sorted, unsigned top) : x_(sorted), top_(top) {
  const std::size_t n = sorted.size();
  spread_ = (static_cast<double>(sorted[3 * (n - 1) / 4]) - sorted[(n - 1) / 4]) / 1.349;
  if (!has_spread()) return;
  const std::size_t m = std::max<std::size_t>(2, n / 1000);
  w_.resize(n);
  for (std::size_t k = 0; k < n; ++k) {
    const double g = static_cast<double>(sorted[std::min(k + m, n - 1)]) - sorted[k >= m ? k - m : 0];
    w_[k] = spread_ * spread_ / (g * g + spread_ * spread_);
    total_ += w_[k];
  }
}

double code_range_model::error(code_range r) const noexcept {
  double clamped = 0.0;
  for (std::size_t k = 0; k < x_.size(); ++k) {
    const double x = x_[k];
    const double out = x < r.lo ? r.lo - x : x > r.hi ? x - r.hi : 0.0;
    clamped += w_[k] * out * out;
  }
  const double step = (static_cast<double>(r.hi) - r.lo) / top_;
  return clamped + total_ * step * step / 12.0;
}

code_range code_range_model::best() const {
  const std::size_t n = x_.size();
  if (!has_spread()) return {x_.front(), x_.back()};
  // Weighted prefix sums of the values and their squares, shifted by the median so that the clamping
  // errors a²·Σw − 2a·Σwx + Σwx² do not cancel away the values' own spread.
  const double centre = x_[n / 2];
  const auto y = [&](std::size_t k) { return x_[k] - centre; };
  std::vector<double> s0(n + 1, 0.0), s1(n + 1, 0.0), s2(n + 1, 0.0);
  for (std::size_t k = 0; k < n; ++k) {
    s0[k + 1] = s0[k] + w_[k];
    s1[k + 1] = s1[k] + w_[k] * y(k);
    s2[k + 1] = s2[k] + w_[k] * y(k) * y(k);
  }
  // Clamping every value below x[i] up to it, and every value above x[j] down to it.
  const auto below = [&](std::size_t i) {
    const double a = y(i);
    return a * a * s0[i] - 2.0 * a * s1[i] + s2[i];
  };
  const auto above = [&](std::size_t j) {
    const double b = y(j);
    return b * b * (s0[n] - s0[j + 1]) - 2.0 * b * (s1[n] - s1[j + 1]) + (s2[n] - s2[j + 1]);
  };
  const double rounding = total_ / (12.0 * top_ * top_);
  const auto error = [&](std::size_t i, std::size_t j) {
    const double width = y(j) - y(i);
    return below(i) + above(j) + rounding * width * width;
  };
  std::size_t lo = 0, hi = n - 1;
  for (int round = 0; round < 64; ++round) {
    const std::size_t was_lo = lo, was_hi = hi;
    double least = error(lo, hi);
    for (std::size_t j = lo; j < n; ++j)
      if (const double e = error(lo, j); e < least) {
        least = e;
        hi = j;
      }
    for (std::size_t i = 0; i <= hi; ++i)
      if (const double e = error(i, hi); e < least) {
        least = e;
        lo = i;
      }
    if (lo == was_lo && hi == was_hi) break;
  }
  return {x_[lo], x_[hi]};
}

}  // namespace detail

void scalar_quantizer::train(matrix_view<const float> vectors, unsigned top_code) {
  detail::check_vectors(vectors, dim_, "scalar_quantizer::train: vector");
  SHOAL_CHECK(vectors.rows > 0, "scalar_quantizer::train: no training vectors");
  SHOAL_CHECK(top_code >= 1 && top_code <= 255, "scalar_quantizer::train: top_code ", top_code, " is outside 1-255");
  if (type_ == sq_type::fp16) return;
  const std::size_t n = vectors.rows;
  std::vector<float> lo(vectors.row(0), vectors.row(0) + dim_);
  std::vector<float> hi = lo;
  for (std::size_t i = 1; i < n; ++i) {
    const float* x = vectors.row(i);
    for (std::size_t d = 0; d < dim_; ++d) {
      lo[d] = std::min(lo[d], x[d]);
      hi[d] = std::max(hi[d], x[d]);
    }
  }
  // A dimension whose range spans more than `heavy_spread` standard deviations (Gaussian data needs
  // over 10⁸ samples for that; n values can span at most √(2n) of them, so under 73 rows never do) has
  // its range fitted to up to `fit_rows` of its values (evenly spaced rows, which also give the standard
  // deviation: a sample that misses the one far value only makes the test readier); the fit is kept
  // where it cuts the modelled error at least `fit_gain`-fold, so that data with light tails, or on a
  // grid the extremes already code exactly (8-bit pixels), keep their [min, max].
  constexpr double heavy_spread = 12.0;
  constexpr double fit_gain = 4.0;
  constexpr std::size_t fit_rows = 16384;
  const std::size_t sample = std::min(n, fit_rows);
  const auto sampled = [&](std::size_t k) { return vectors.row(k * n / sample); };
  // Sums of x − x₀ (the first sampled row) and their squares over the sample.
  std::vector<double> s1(dim_, 0.0), s2(dim_, 0.0);
  const float* x0 = vectors.row(0);
  for (std::size_t k = 0; k < sample; ++k) {
    const float* x = sampled(k);
    for (std::size_t d = 0; d < dim_; ++d) {
      const double y = static_cast<double>(x[d]) - x0[d];
      s1[d] += y;
      s2[d] += y * y;
    }
  }
  std::vector<std::size_t> heavy;
  for (std::size_t d = 0; d < dim_; ++d) {
    const double mean = s1[d] / static_cast<double>(sample);
    const double spread = std::sqrt(std::max(0.0, s2[d] / static_cast<double>(sample) - mean * mean));
    if (static_cast<double>(hi[d]) - lo[d] > heavy_spread * spread) heavy.push_back(d);
  }
  // The sampled values of up to `block` such dimensions at a time, gathered in one pass over the rows.
  constexpr std::size_t block = 64;
  std::vector<float> columns(std::min(block, heavy.size()) * sample);
  for (std::size_t first = 0; first < heavy.size(); first += block) {
    const std::size_t count = std::min(block, heavy.size() - first);
    for (std::size_t k = 0; k < sample; ++k) {
      const float* x = sampled(k);
      for (std::size_t c = 0; c < count; ++c) columns[c * sample + k] = x[heavy[first + c]];
    }
    detail::parallel_for(count, [&](std::size_t c) {  // each dimension's own lo[d], hi[d]
      const std::span<float> column(columns.data() + c * sample, sample);
      std::sort(column.begin(), column.end());
      const detail::code_range_model model(column, top_code);
      if (!model.has_spread()) return;
      const detail::code_range fit = model.best();
      // Against the whole data's extremes: the sample may have missed the one value that stretched them.
      const std::size_t d = heavy[first + c];
      if (fit_gain * model.error(fit) <= model.error({lo[d], hi[d]})) {
        lo[d] = fit.lo;
        hi[d] = fit.hi;
      }
    });
  }
  std::vector<float> step(dim_);
  for (std::size_t d = 0; d < dim_; ++d) {
    step[d] = (hi[d] - lo[d]) / static_cast<float>(top_code);
    // The rounded step can carry the range's end, min + top · step, past a top at the norm bound, which a
    // load (`sq8_with_ranges`) refuses: an index trained on vectors inside the bound saved a file it could
    // not load again (a review). The step comes down by ulps until the end is inside.
    const auto end_squared = [&] {
      const double end = static_cast<double>(lo[d]) + static_cast<double>(top_code) * step[d];
      return end * end;
    };
    while (step[d] > 0.0f && !(end_squared() <= detail::max_squared_norm)) step[d] = std::nextafter(step[d], 0.0f);
  }
  min_ = std::move(lo);
  step_ = std::move(step);
  top_ = top_code;
}

void scalar_quantizer::encode(matrix_view<const float> vectors, std::uint8_t* codes) const {
  SHOAL_CHECK(is_trained(), "scalar_quantizer::encode: the quantizer is not trained");
  detail::check_vectors(vectors, dim_, "scalar_quantizer::encode: vector");
  detail::check_codes(codes, vectors.rows, "scalar_quantizer::encode");
  for (std::size_t i = 0; i < vectors.rows; ++i) {
    const float* x = vectors.row(i);
    std::uint8_t* out = codes + i * code_size();
    if (type_ == sq_type::fp16) {
      for (std::size_t d = 0; d < dim_; ++d) {
        const std::uint16_t h = float_to_half(std::clamp(x[d], -max_half, max_half));
        out[2 * d] = static_cast<std::uint8_t>(h & 0xffu);
        out[2 * d + 1] = static_cast<std::uint8_t>(h >> 8);
      }
      continue;
    }
    for (std::size_t d = 0; d < dim_; ++d) {
      const float level = step_[d] > 0.0f ? (x[d] - min_[d]) / step_[d] : 0.0f;
      out[d] = static_cast<std::uint8_t>(std::clamp(std::nearbyint(level), 0.0f, static_cast<float>(top_)));
    }
  }
}

void scalar_quantizer::decode(const std::uint8_t* codes, std::size_t n, matrix_view<float> out) const {
  SHOAL_CHECK(is_trained(), "scalar_quantizer::decode: the quantizer is not trained");
  detail::check_output(out, n, dim_, "scalar_quantizer::decode");
  detail::check_codes(codes, n, "scalar_quantizer::decode");
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint8_t* c = codes + i * code_size();
    float* x = out.row(i);
    for (std::size_t d = 0; d < dim_; ++d)
      x[d] = type_ == sq_type::fp16 ? half_to_float(static_cast<std::uint16_t>(c[2 * d] | (c[2 * d + 1] << 8)))
                                    : std::fma(static_cast<float>(c[d]), step_[d], min_[d]);  // as the kernels
  }
}

void scalar_quantizer::distances(const float* query, metric m, const std::uint8_t* codes, std::size_t n,
                                 float* out) const noexcept {
  const sq_kernels& k = active_scalar_quant_kernels();
  const bool l2 = m != metric::inner_product;  // cosine in the L2 form, halved (see the declaration)
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint8_t* c = codes + i * code_size();
    float v = 0.0f;
    if (type_ == sq_type::sq8) {
      v = (l2 ? k.sq8_l2 : k.sq8_ip)(query, c, min_.data(), step_.data(), dim_);
    } else {
      v = (l2 ? k.fp16_l2 : k.fp16_ip)(query, c, dim_);
    }
    out[i] = m == metric::l2 ? v : (m == metric::cosine ? 0.5f * v : -v);
  }
}

const sq_kernels& scalar_quant_kernels(simd_level level) {
  SHOAL_CHECK_CODE(simd_level_available(level), errc::unsupported, "SIMD level ", simd_level_name(level),
                   " is not available on this CPU");
  switch (level) {
#ifdef SHOAL_HAVE_X86_KERNELS
    case simd_level::avx2:
      return detail::pq_avx2::sq_table();
    case simd_level::avx512:
    case simd_level::amx:  // the amx level differs only in its GEMM
      return detail::pq_avx512::sq_table();
#endif
    default:
      return detail::pq_scalar::sq_table();
  }
}

const sq_kernels& active_scalar_quant_kernels() {
  static const sq_kernels& table = scalar_quant_kernels(active_simd_level());
  return table;
}

}  // namespace shoal
