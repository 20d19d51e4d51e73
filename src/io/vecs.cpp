// texmex .fvecs / .ivecs / .bvecs, and the by-extension readers.
//
// A file is a sequence of rows, each a little-endian int32 dimension followed by that many values. Row 0's
// dimension fixes the row size, so the file size alone says how many whole rows there are: the result is
// sized from that (never from anything larger than the file), then filled chunk by chunk while every row's
// dimension is checked against row 0's.

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "io/file_util.hpp"
#include "shoal/core/error.hpp"
#include "shoal/io/vecs.hpp"

namespace shoal::io {
namespace {

namespace fs = std::filesystem;
using dim_field = std::int32_t;  // the per-row dimension of the texmex formats

void check_row_dim(const std::string& name, std::uint64_t row, dim_field dim, dim_field first_dim) {
  SHOAL_CHECK_CODE(dim == first_dim, errc::corrupt_file, name, ": row ", row, " has dimension ", dim, ", row 0 has ",
                   first_dim);
}

/// Reads at most `max_rows` rows (all when 0) of `Stored` values, converted to `Out`.
template <class Stored, class Out>
matrix<Out> read_vecs(const fs::path& path, std::size_t max_rows) {
  const detail::input_file file(path);
  const std::string& name = file.name();
  const std::uint64_t size = file.size();
  SHOAL_CHECK_CODE(size > 0, errc::corrupt_file, name, ": empty file");
  SHOAL_CHECK_CODE(size >= sizeof(dim_field), errc::corrupt_file, name, ": truncated: ", size,
                   " bytes, too short for the dimension of row 0");
  const auto first_dim = file.read_value<dim_field>(0);
  SHOAL_CHECK_CODE(first_dim > 0, errc::corrupt_file, name, ": non-positive dimension ", first_dim, " in row 0");
  const auto dim = static_cast<std::size_t>(first_dim);
  SHOAL_CHECK_CODE(dim <= detail::max_dim, errc::corrupt_file, name, ": dimension ", dim,
                   " in row 0 exceeds the limit of ", detail::max_dim);

  const std::uint64_t row_bytes = sizeof(dim_field) + dim * sizeof(Stored);
  const std::uint64_t whole_rows = size / row_bytes;
  // With a row limit below what the file holds, the rest of the file is neither read nor checked.
  const bool read_all = max_rows == 0 || max_rows > whole_rows;
  const std::size_t rows = read_all ? static_cast<std::size_t>(whole_rows) : max_rows;
  matrix<Out> out(rows, dim);

  const std::size_t rows_per_chunk = std::max<std::size_t>(1, detail::chunk_bytes / row_bytes);
  std::vector<std::byte> chunk(std::min(rows, rows_per_chunk) * row_bytes);
  for (std::size_t first = 0; first < rows; first += rows_per_chunk) {
    const std::size_t n = std::min(rows - first, rows_per_chunk);
    file.read_at(first * row_bytes, chunk.data(), n * row_bytes);
    for (std::size_t r = 0; r < n; ++r) {
      const std::byte* row = chunk.data() + r * row_bytes;
      dim_field row_dim = 0;
      std::memcpy(&row_dim, row, sizeof row_dim);
      check_row_dim(name, first + r, row_dim, first_dim);
      detail::convert_values<Stored>(row + sizeof(dim_field), dim, out.row(first + r));
    }
  }

  const std::uint64_t left = size - whole_rows * row_bytes;
  if (read_all && left > 0) {
    // A partial last row: a row whose dimension differs explains more than "truncated" does.
    if (left >= sizeof(dim_field))
      check_row_dim(name, whole_rows, file.read_value<dim_field>(whole_rows * row_bytes), first_dim);
    SHOAL_CHECK_CODE(false, errc::corrupt_file, name, ": truncated: expected ", sizeof(dim_field), " + ",
                     sizeof(Stored), "*", dim, " bytes for row ", whole_rows, ", ", left, " left");
  }
  return out;
}

template <class T>
void write_vecs(const fs::path& path, matrix_view<const T> data) {
  // A texmex file stores its dimension only inside rows: zero rows would make an unreadable empty file.
  SHOAL_CHECK(data.rows > 0, path.string(), ": cannot write 0 rows (the format has no header to keep the dimension)");
  SHOAL_CHECK(data.dim >= 1 && data.dim <= detail::max_dim, path.string(), ": dimension ", data.dim, " is outside [1, ",
              detail::max_dim, "]");
  SHOAL_CHECK(data.data != nullptr && data.stride >= data.dim, path.string(), ": invalid matrix view (stride ",
              data.stride, " < dimension ", data.dim, " or no data)");
  detail::atomic_writer out(path);
  const auto dim = static_cast<dim_field>(data.dim);
  for (std::size_t r = 0; r < data.rows; ++r) {
    out.write_value(dim);
    out.write(data.row(r), data.dim * sizeof(T));
  }
  out.commit();
}

/// The extension in lower case (".FVECS" is ".fvecs").
std::string lower_extension(const fs::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext;
}

}  // namespace

matrix<float> read_fvecs(const fs::path& path, std::size_t max_rows) { return read_vecs<float, float>(path, max_rows); }
matrix<std::int32_t> read_ivecs(const fs::path& path, std::size_t max_rows) {
  return read_vecs<std::int32_t, std::int32_t>(path, max_rows);
}
matrix<std::uint8_t> read_bvecs(const fs::path& path, std::size_t max_rows) {
  return read_vecs<std::uint8_t, std::uint8_t>(path, max_rows);
}

void write_fvecs(const fs::path& path, matrix_view<const float> data) { write_vecs(path, data); }
void write_ivecs(const fs::path& path, matrix_view<const std::int32_t> data) { write_vecs(path, data); }
void write_bvecs(const fs::path& path, matrix_view<const std::uint8_t> data) { write_vecs(path, data); }

matrix<float> read_vectors(const fs::path& path, std::size_t max_rows) {
  const std::string ext = lower_extension(path);
  if (ext == ".fvecs") return read_fvecs(path, max_rows);
  if (ext == ".bvecs") return read_vecs<std::uint8_t, float>(path, max_rows);
  if (ext == ".npy") return read_npy(path, max_rows);
  SHOAL_CHECK(false, path.string(), ": unknown vector file extension '", path.extension().string(),
              "' (expected .fvecs, .bvecs or .npy)");
  return {};  // unreachable
}

matrix<std::int32_t> read_ids(const fs::path& path, std::size_t max_rows) {
  const std::string ext = lower_extension(path);
  if (ext == ".ivecs") return read_ivecs(path, max_rows);
  if (ext == ".npy") return read_npy_ids(path, max_rows);
  SHOAL_CHECK(false, path.string(), ": unknown id file extension '", path.extension().string(),
              "' (expected .ivecs or .npy)");
  return {};  // unreachable
}

}  // namespace shoal::io
