#pragma once
// Internal: the per-dimension code ranges that `scalar_quantizer::train` learns.

#include <span>
#include <vector>

namespace shoal::detail {

/// A dimension's code range: codes 0 … top decode to lo … hi.
struct code_range {
  float lo;
  float hi;
};

/// How well ranges code one dimension's values, and the best range by that measure.
///
/// The modelled error of coding the values on `top` uniform steps over [lo, hi] is what clamping costs
/// the values outside, Σ w·(lo − x)² + Σ w·(x − hi)², plus Σ w · step²/12 for rounding (the error of a
/// value uniform within its step), step = (hi − lo) / top. The weight w of a value says how much its
/// error matters to a nearest-neighbour search: s² / (g² + s²), where s is the values' robust spread
/// (interquartile range / 1.349, σ for Gaussian data) and g the span of the 2m + 1 values around it in
/// sorted order (m = max(2, n / 1000)). Inside the bulk, and in any dense group however far out (a
/// small distant cluster), g ≪ s and w ≈ 1: plain squared error, which clamping such a group would
/// blow up, so it is never clamped. An isolated outlier, or a value far out in a heavy tail, has
/// g ≫ s: few vectors lie anywhere near it, so what matters about it is only that it is far, which a
/// clamped code still says — its clamping costs at most about (x − hi)² · s² / g² ≲ s².
class code_range_model {
 public:
  /// `sorted`: the values, ascending, not empty (kept by reference). `top`: the largest code.
  code_range_model(std::span<const float> sorted, unsigned top);

  /// False when a single value holds the middle half of them (no spread to weigh errors against).
  [[nodiscard]] bool has_spread() const noexcept { return spread_ > 0.0; }
  /// The modelled error of `r` (needs `has_spread()`).
  [[nodiscard]] double error(code_range r) const noexcept;
  /// The range of least modelled error with ends among the values: alternating exact minimisations over
  /// each end (the error is jointly convex in the two ends), from [min, max]; [min, max] itself without
  /// spread.
  [[nodiscard]] code_range best() const;

 private:
  std::span<const float> x_;
  unsigned top_;
  double spread_ = 0.0;
  std::vector<double> w_;  // each value's weight
  double total_ = 0.0;     // Σ w
};

}  // namespace shoal::detail
