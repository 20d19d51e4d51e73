#pragma once
/// \file
/// Readers and writers for the vector file formats of the ANN field:
///  - texmex `.fvecs` / `.ivecs` / `.bvecs`: per vector a little-endian int32 dimension, then that many
///    float32 / int32 / uint8 values; every vector of a file must have the same dimension;
///  - NumPy `.npy` (format versions 1.0, 2.0 and 3.0): 2-D (or 1-D, read as n rows of dimension 1) C-order arrays of
///    float32, float16, int8, uint8 (and int32 / int64 for id arrays), little-endian.
///
/// Every reader validates what it reads: an unreadable, empty, truncated or malformed file, a dimension
/// that changes between rows, an unsupported dtype, Fortran order or big-endian data raise
/// `shoal::error` (`errc::io_error` or `errc::corrupt_file`) whose message names the file and the
/// problem. Readers never trust a header to size an allocation beyond what the file actually holds.
/// Writers create the file atomically (write a temporary beside it, then rename).

#include <cstddef>
#include <cstdint>
#include <filesystem>

#include "shoal/core/types.hpp"

namespace shoal::io {

/// Reads at most `max_rows` vectors (all when 0) of an `.fvecs` file.
[[nodiscard]] matrix<float> read_fvecs(const std::filesystem::path& path, std::size_t max_rows = 0);
/// Reads at most `max_rows` vectors of an `.ivecs` file (e.g. ground-truth ids).
[[nodiscard]] matrix<std::int32_t> read_ivecs(const std::filesystem::path& path, std::size_t max_rows = 0);
/// Reads at most `max_rows` vectors of a `.bvecs` file.
[[nodiscard]] matrix<std::uint8_t> read_bvecs(const std::filesystem::path& path, std::size_t max_rows = 0);

void write_fvecs(const std::filesystem::path& path, matrix_view<const float> data);
void write_ivecs(const std::filesystem::path& path, matrix_view<const std::int32_t> data);
void write_bvecs(const std::filesystem::path& path, matrix_view<const std::uint8_t> data);

/// Element type of an `.npy` array.
enum class npy_dtype { float32, float16, int8, uint8, int32, int64 };

/// Reads a `.npy` array of any supported dtype and converts it to float32 (float16 exactly, integers by
/// value). At most `max_rows` rows (all when 0).
[[nodiscard]] matrix<float> read_npy(const std::filesystem::path& path, std::size_t max_rows = 0);
/// Reads a `.npy` array of int32, int64 (each value must fit 32 bits) or int8/uint8 values as int32
/// (ground-truth ids).
[[nodiscard]] matrix<std::int32_t> read_npy_ids(const std::filesystem::path& path, std::size_t max_rows = 0);
/// The dtype and shape stored in a `.npy` header (rows, dim; dim is 1 for a 1-D array).
struct npy_header {
  npy_dtype dtype;
  std::size_t rows;
  std::size_t dim;
  std::size_t ndim = 2;  ///< dimensions of the stored array: 1 or 2
};
[[nodiscard]] npy_header read_npy_header(const std::filesystem::path& path);

/// Writes a 2-D `.npy` (format 1.0, or 2.0 when the header needs it).
void write_npy(const std::filesystem::path& path, matrix_view<const float> data);
void write_npy(const std::filesystem::path& path, matrix_view<const std::int32_t> data);
void write_npy(const std::filesystem::path& path, matrix_view<const std::uint8_t> data);
void write_npy(const std::filesystem::path& path, matrix_view<const std::int8_t> data);

/// Reads base or query vectors by extension: `.fvecs`, `.bvecs` (converted to float) or `.npy`.
[[nodiscard]] matrix<float> read_vectors(const std::filesystem::path& path, std::size_t max_rows = 0);
/// Reads ground-truth ids by extension: `.ivecs` or `.npy`.
[[nodiscard]] matrix<std::int32_t> read_ids(const std::filesystem::path& path, std::size_t max_rows = 0);

}  // namespace shoal::io
