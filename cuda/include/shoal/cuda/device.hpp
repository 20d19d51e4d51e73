#pragma once
/// \file
/// shoal::cuda — the optional GPU component. This header has no CUDA in it: callers compile it with any
/// C++ compiler and link `shoal::cuda`. Device discovery and a one-query kernel that proves the
/// toolchain; batched exact search is `shoal/cuda/flat.hpp`, the IVF coarse pass
/// `shoal/cuda/coarse_quantizer.hpp` (docs/cuda.md).

#include <cstddef>
#include <string>
#include <vector>

#include "shoal/core/types.hpp"

namespace shoal::cuda {

/// Number of CUDA devices usable by this process; 0 when there is no driver or no device (never throws).
[[nodiscard]] int device_count() noexcept;

/// Why `device_count()` is 0, as the errors of a call without a device say it: "no CUDA device" when the
/// runtime found none, "no CUDA device: no CUDA driver is installed", else the runtime's reason, e.g.
/// "CUDA driver version is insufficient for CUDA runtime version" (a driver older than the runtime: a GPU
/// is there, and the driver needs an update). Empty when a device is usable. Never throws.
[[nodiscard]] std::string no_device_reason() noexcept;

/// Name and compute capability of device `index`, e.g. "NVIDIA H100 80GB HBM3 (sm_90)".
/// Throws `shoal::error` (`errc::unsupported`) if there is no such device.
[[nodiscard]] std::string device_name(int index = 0);

/// Squared L2 distances from `query` (x.dim floats) to every row of `x`, computed on device 0.
/// Throws `shoal::error`: the argument errors of `check_vectors` (layout, non-finite values) first, then
/// `errc::unsupported` without a device (`no_device_reason`), `errc::io_error` on a CUDA failure.
[[nodiscard]] std::vector<float> l2sqr_one_to_many(const float* query, matrix_view<const float> x);

}  // namespace shoal::cuda
