// NumPy .npy files: format versions 1.0, 2.0 and 3.0, little-endian C-order 1-D and 2-D arrays.
//
// Layout: "\x93NUMPY", major and minor version bytes, the header length (uint16 in 1.0, uint32 in 2.0 and
// 3.0), then the header: a Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (r, d)}
// padded with spaces and a newline, then the raw data. The header is parsed as the small subset of Python
// literals it uses, and its shape is checked against the number of bytes the file really holds before
// anything is allocated.

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "io/file_util.hpp"
#include "shoal/core/error.hpp"
#include "shoal/io/vecs.hpp"

namespace shoal::io {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view npy_magic{"\x93NUMPY", 6};
/// Header bytes accepted at most; numpy itself refuses headers above 10 000 bytes unless told otherwise.
constexpr std::uint64_t max_header_bytes = std::uint64_t{1} << 20;
/// numpy pads preamble + header to a multiple of this, so that the data is aligned for memory mapping.
constexpr std::size_t header_alignment = 64;

/// Exact IEEE 754 binary16 → binary32: every half value, subnormals, infinities and NaNs (payload kept)
/// included, is representable as a float.
float half_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1fu;
  const std::uint32_t mantissa = h & 0x3ffu;
  std::uint32_t bits = 0;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13);
  } else {
    // Zero or subnormal: mantissa · 2^-24, a normal float for every mantissa > 0, so the product is exact.
    bits = sign | std::bit_cast<std::uint32_t>(static_cast<float>(mantissa) * 0x1p-24f);
  }
  return std::bit_cast<float>(bits);
}

/// A stored float16; `convert_values` turns it into float through the explicit conversion.
struct half {
  std::uint16_t bits;
  explicit operator float() const noexcept { return half_to_float(bits); }
};

struct dtype_info {
  npy_dtype dtype;
  std::string_view descr;  // as written, little-endian or byte-order free
  std::size_t itemsize;
};
constexpr std::array<dtype_info, 6> dtypes{{{npy_dtype::float32, "<f4", 4},
                                            {npy_dtype::float16, "<f2", 2},
                                            {npy_dtype::int8, "|i1", 1},
                                            {npy_dtype::uint8, "|u1", 1},
                                            {npy_dtype::int32, "<i4", 4},
                                            {npy_dtype::int64, "<i8", 8}}};

const dtype_info& info_of(npy_dtype dtype) noexcept {
  return *std::find_if(dtypes.begin(), dtypes.end(), [&](const dtype_info& d) { return d.dtype == dtype; });
}

/// Maps a 'descr' string to a dtype. Byte order: '<' or '=' (native, little-endian by the static_assert in
/// file_util.hpp) for multi-byte types; any of '<', '>', '=', '|' for single bytes, where it means nothing.
npy_dtype parse_descr(const std::string& name, const std::string& descr) {
  const char order = descr.empty() ? '\0' : descr[0];
  const std::string_view type = descr.empty() ? std::string_view{} : std::string_view(descr).substr(1);
  const bool has_order = order != '\0' && std::string_view("<>=|").find(order) != std::string_view::npos;
  const auto known = !has_order ? dtypes.end() : std::find_if(dtypes.begin(), dtypes.end(), [&](const dtype_info& d) {
    return d.descr.substr(1) == type;
  });
  SHOAL_CHECK_CODE(known != dtypes.end(), errc::unsupported, name, ": unsupported dtype '", descr,
                   "' (supported: <f4, <f2, |i1, |u1, <i4, <i8)");
  if (known->itemsize > 1) {
    SHOAL_CHECK_CODE(order != '>', errc::unsupported, name, ": big-endian dtype '", descr,
                     "' is not supported (convert with astype('<", type, "'))");
    SHOAL_CHECK_CODE(order != '|', errc::unsupported, name, ": dtype '", descr, "' has no byte order");
  }
  return known->dtype;
}

/// A value of the Python literal subset .npy headers use.
struct py_value {
  enum class kind { string, boolean, integer, sequence };
  kind type = kind::integer;
  std::string text;             // string
  bool flag = false;            // boolean
  std::int64_t number = 0;      // integer
  std::vector<py_value> items;  // tuple or list
};

/// Recursive-descent parser of the header dict: keys in any order, any white space, trailing commas,
/// 'single' or "double" quotes, Python 2's `10L` integers.
class header_parser {
 public:
  header_parser(const std::string& name, std::string_view text) : name_(name), text_(text) {}

  std::vector<std::pair<std::string, py_value>> parse_dict() {
    std::vector<std::pair<std::string, py_value>> entries;
    skip_space();
    expect('{');
    for (;;) {
      skip_space();
      if (consume('}')) break;
      if (peek() != '\'' && peek() != '"') fail("expected a quoted key");
      std::string key = parse_string();
      skip_space();
      expect(':');
      entries.emplace_back(std::move(key), parse_value(0));
      skip_space();
      if (consume(',')) continue;
      expect('}');
      break;
    }
    skip_space();
    if (pos_ != text_.size()) fail("unexpected text after the dictionary");
    return entries;
  }

 private:
  static constexpr int max_depth = 4;

  [[noreturn]] void fail(std::string_view what) const {
    constexpr std::size_t excerpt = 80;
    ::shoal::detail::throw_error(errc::corrupt_file,
                                 ::shoal::detail::str(name_, ": malformed .npy header: ", what, " at character ", pos_,
                                                      " of \"", ::shoal::detail::printable(text_.substr(0, excerpt)),
                                                      text_.size() > excerpt ? "..." : "", "\""));
  }
  [[nodiscard]] char peek() const noexcept { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  void skip_space() noexcept {
    while (pos_ < text_.size() && std::string_view(" \t\r\n").find(text_[pos_]) != std::string_view::npos) ++pos_;
  }
  bool consume(char c) noexcept {
    if (peek() != c || pos_ >= text_.size()) return false;
    ++pos_;
    return true;
  }
  void expect(char c) {
    if (!consume(c)) fail(std::string("expected '") + c + "'");
  }
  [[nodiscard]] static bool is_word_char(char c) noexcept {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  }

  py_value parse_value(int depth) {
    if (depth > max_depth) fail("nesting too deep");
    skip_space();
    py_value v;
    const char c = peek();
    if (c == '\'' || c == '"') {
      v.type = py_value::kind::string;
      v.text = parse_string();
    } else if (c == '(' || c == '[') {
      v.type = py_value::kind::sequence;
      const char close = c == '(' ? ')' : ']';
      ++pos_;
      for (;;) {
        skip_space();
        if (consume(close)) break;
        v.items.push_back(parse_value(depth + 1));
        skip_space();
        if (consume(',')) continue;
        expect(close);
        break;
      }
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      v.type = py_value::kind::integer;
      v.number = parse_integer();
    } else if (c == 'T' || c == 'F') {
      v.type = py_value::kind::boolean;
      v.flag = c == 'T';
      const std::string_view word = v.flag ? "True" : "False";
      if (text_.substr(pos_, word.size()) != word) fail("unknown name");
      pos_ += word.size();
      if (is_word_char(peek())) fail("unknown name");
    } else {
      fail("expected a value");
    }
    return v;
  }

  std::string parse_string() {
    const char quote = text_[pos_++];
    std::string out;
    for (;;) {
      if (pos_ >= text_.size()) fail("unterminated string");
      char c = text_[pos_++];
      if (c == quote) break;
      if (c == '\\') {
        if (pos_ >= text_.size()) fail("unterminated string");
        c = text_[pos_++];
      }
      out.push_back(c);
    }
    return out;
  }

  std::int64_t parse_integer() {
    const bool negative = consume('-');
    if (!(peek() >= '0' && peek() <= '9')) fail("expected a digit");
    constexpr std::int64_t limit = 1'000'000'000'000'000'000;  // far beyond any real shape, far from overflow
    std::int64_t value = 0;
    while (peek() >= '0' && peek() <= '9') {
      const int digit = text_[pos_++] - '0';
      if (value > (limit - digit) / 10) fail("integer too large");
      value = value * 10 + digit;
    }
    consume('L');
    if (is_word_char(peek())) fail("malformed integer");
    return negative ? -value : value;
  }

  const std::string& name_;
  std::string_view text_;
  std::size_t pos_ = 0;
};

/// "(10, 3)" / "(10,)" for messages.
std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string out = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) out += (i > 0 ? ", " : "") + std::to_string(shape[i]);
  return out + (shape.size() == 1 ? ",)" : ")");
}

/// Where the header text lies: after the magic, the version and the header length.
struct header_span {
  std::uint64_t offset = 0;
  std::uint64_t bytes = 0;
};

/// Checks magic, version and header length against the file size.
header_span read_preamble(const detail::input_file& file) {
  const std::string& name = file.name();
  const std::uint64_t size = file.size();
  SHOAL_CHECK_CODE(size > 0, errc::corrupt_file, name, ": empty file");
  std::array<char, 12> preamble{};
  file.read_at(0, preamble.data(), static_cast<std::size_t>(std::min<std::uint64_t>(size, preamble.size())));
  SHOAL_CHECK_CODE(size >= npy_magic.size() && std::string_view(preamble.data(), npy_magic.size()) == npy_magic,
                   errc::corrupt_file, name, ": not a .npy file (bad magic)");
  SHOAL_CHECK_CODE(size >= 8, errc::corrupt_file, name, ": truncated: ", size, " bytes, no format version");
  const auto major = static_cast<unsigned char>(preamble[6]);
  const auto minor = static_cast<unsigned char>(preamble[7]);
  SHOAL_CHECK_CODE(major >= 1 && major <= 3 && minor == 0, errc::unsupported, name, ": .npy format version ",
                   int{major}, ".", int{minor}, " is not supported (1.0, 2.0 and 3.0 are)");
  // 1.0 has a 2-byte header length; 2.0 and 3.0 (3.0: utf-8 header) a 4-byte one.
  const std::size_t length_bytes = major == 1 ? 2 : 4;
  header_span span;
  span.offset = 8 + length_bytes;
  SHOAL_CHECK_CODE(size >= span.offset, errc::corrupt_file, name, ": truncated: ", size, " bytes, shorter than the ",
                   span.offset, "-byte preamble of format ", int{major}, ".0");
  std::uint32_t length_field = 0;
  std::memcpy(&length_field, preamble.data() + 8, length_bytes);
  span.bytes = length_field;
  SHOAL_CHECK_CODE(span.bytes <= max_header_bytes, errc::corrupt_file, name, ": header length ", span.bytes,
                   " exceeds the limit of ", max_header_bytes);
  SHOAL_CHECK_CODE(span.bytes <= size - span.offset, errc::corrupt_file, name, ": truncated: header length ",
                   span.bytes, ", ", size - span.offset, " bytes left");
  return span;
}

/// The three entries of a header dict, checked for kind and supported values; the shape as written.
struct header_fields {
  npy_dtype dtype{};
  std::string descr;
  std::vector<std::int64_t> shape;
};

header_fields interpret_dict(const std::string& name, const std::vector<std::pair<std::string, py_value>>& entries) {
  const py_value* descr = nullptr;
  const py_value* fortran_order = nullptr;
  const py_value* shape = nullptr;
  for (const auto& [key, value] : entries) {
    const py_value** slot = key == "descr"           ? &descr
                            : key == "fortran_order" ? &fortran_order
                            : key == "shape"         ? &shape
                                                     : nullptr;
    SHOAL_CHECK_CODE(slot != nullptr, errc::corrupt_file, name, ": unexpected key '", key, "' in the .npy header");
    SHOAL_CHECK_CODE(*slot == nullptr, errc::corrupt_file, name, ": key '", key, "' repeated in the .npy header");
    *slot = &value;
  }
  SHOAL_CHECK_CODE(descr != nullptr && fortran_order != nullptr && shape != nullptr, errc::corrupt_file, name,
                   ": the .npy header lacks '",
                   descr == nullptr           ? "descr"
                   : fortran_order == nullptr ? "fortran_order"
                                              : "shape",
                   "'");

  header_fields fields;
  SHOAL_CHECK_CODE(descr->type != py_value::kind::sequence, errc::unsupported, name,
                   ": structured dtypes are not supported");
  SHOAL_CHECK_CODE(descr->type == py_value::kind::string, errc::corrupt_file, name, ": 'descr' is not a string");
  fields.descr = descr->text;
  fields.dtype = parse_descr(name, descr->text);
  SHOAL_CHECK_CODE(fortran_order->type == py_value::kind::boolean, errc::corrupt_file, name,
                   ": 'fortran_order' is not True or False");
  SHOAL_CHECK_CODE(!fortran_order->flag, errc::unsupported, name,
                   ": Fortran-order arrays are not supported (save np.ascontiguousarray(a))");
  SHOAL_CHECK_CODE(shape->type == py_value::kind::sequence, errc::corrupt_file, name, ": 'shape' is not a tuple");
  for (const py_value& item : shape->items) {
    SHOAL_CHECK_CODE(item.type == py_value::kind::integer, errc::corrupt_file, name,
                     ": 'shape' holds something other than integers");
    fields.shape.push_back(item.number);
  }
  return fields;
}

/// A checked header and where the data starts; the data's byte count equals rows · dim · itemsize exactly.
struct npy_layout {
  npy_header header{};
  std::uint64_t data_offset = 0;
};

npy_layout read_layout(const detail::input_file& file) {
  const std::string& name = file.name();
  const header_span span = read_preamble(file);
  std::string text(static_cast<std::size_t>(span.bytes), '\0');
  file.read_at(span.offset, text.data(), text.size());
  const header_fields fields = interpret_dict(name, header_parser(name, text).parse_dict());

  const std::vector<std::int64_t>& extents = fields.shape;
  const std::string shape_str = shape_text(extents);
  SHOAL_CHECK_CODE(std::all_of(extents.begin(), extents.end(), [](std::int64_t e) { return e >= 0; }),
                   errc::corrupt_file, name, ": negative extent in shape ", shape_str);
  SHOAL_CHECK_CODE(extents.size() == 1 || extents.size() == 2, errc::unsupported, name, ": shape ", shape_str, " has ",
                   extents.size(), " dimensions; only 1-D and 2-D arrays are supported");
  const auto rows = static_cast<std::uint64_t>(extents[0]);
  const std::uint64_t dim = extents.size() == 2 ? static_cast<std::uint64_t>(extents[1]) : 1;
  SHOAL_CHECK_CODE(dim >= 1 && dim <= detail::max_dim, errc::corrupt_file, name, ": dimension ", dim, " of shape ",
                   shape_str, " is outside [1, ", detail::max_dim, "]");

  // Checked by division first: a header may claim a shape whose byte count overflows 64 bits.
  const std::uint64_t row_bytes = dim * info_of(fields.dtype).itemsize;
  const std::uint64_t data_offset = span.offset + span.bytes;
  const std::uint64_t data_bytes = file.size() - data_offset;
  SHOAL_CHECK_CODE(rows <= data_bytes / row_bytes, errc::corrupt_file, name, ": truncated: shape ", shape_str, " of '",
                   fields.descr, "' needs ", rows, " rows of ", row_bytes, " bytes, the file holds ", data_bytes,
                   " bytes of data");
  SHOAL_CHECK_CODE(rows * row_bytes == data_bytes, errc::corrupt_file, name, ": ", data_bytes - rows * row_bytes,
                   " bytes follow the data of shape ", shape_str, " of '", fields.descr, "'");
  return {npy_header{fields.dtype, static_cast<std::size_t>(rows), static_cast<std::size_t>(dim), extents.size()},
          data_offset};
}

template <class Out>
matrix<Out> read_npy_as(const fs::path& path, std::size_t max_rows) {
  const detail::input_file file(path);
  const npy_layout layout = read_layout(file);
  const npy_header& h = layout.header;
  constexpr bool want_float = std::is_same_v<Out, float>;
  if constexpr (!want_float) {
    SHOAL_CHECK_CODE(h.dtype != npy_dtype::float32 && h.dtype != npy_dtype::float16, errc::unsupported, file.name(),
                     ": ids must be integers (<i4, <i8, |i1 or |u1), the file holds '", info_of(h.dtype).descr, "'");
  } else {
    // int64 values as float32 would lose digits silently; vectors come as floats or 8-bit integers.
    SHOAL_CHECK_CODE(h.dtype != npy_dtype::int64, errc::unsupported, file.name(),
                     ": int64 ('<i8') data can be read as ids, not as vectors");
  }
  const std::size_t rows = max_rows == 0 ? h.rows : std::min(h.rows, max_rows);
  matrix<Out> out(rows, h.dim);
  const std::size_t count = rows * h.dim;
  Out* dst = out.values.data();
  const std::uint64_t at = layout.data_offset;
  switch (h.dtype) {
    case npy_dtype::float32:
      if constexpr (want_float) detail::read_values<float>(file, at, count, dst);
      break;
    case npy_dtype::float16:
      if constexpr (want_float) detail::read_values<half>(file, at, count, dst);
      break;
    case npy_dtype::int8:
      detail::read_values<std::int8_t>(file, at, count, dst);
      break;
    case npy_dtype::uint8:
      detail::read_values<std::uint8_t>(file, at, count, dst);
      break;
    case npy_dtype::int32:
      if constexpr (want_float) {  // exactly, or not at all (every integer up to 2^24 in magnitude, some beyond)
        std::vector<std::int32_t> wide(count);
        detail::read_values<std::int32_t>(file, at, count, wide.data());
        for (std::size_t i = 0; i < count; ++i) {
          dst[i] = static_cast<float>(wide[i]);
          SHOAL_CHECK_CODE(static_cast<double>(dst[i]) == static_cast<double>(wide[i]), errc::unsupported, file.name(),
                           ": int32 value ", wide[i], " at row ", i / h.dim,
                           " has no exact float32 value (vectors are read as float32)");
        }
      } else {
        detail::read_values<std::int32_t>(file, at, count, dst);
      }
      break;
    case npy_dtype::int64:  // numpy's default integer: ground truth often comes this way
      if constexpr (!want_float) {
        std::vector<std::int64_t> wide(count);
        detail::read_values<std::int64_t>(file, at, count, wide.data());
        for (std::size_t i = 0; i < count; ++i) {
          SHOAL_CHECK_CODE(wide[i] >= std::numeric_limits<std::int32_t>::min() &&
                               wide[i] <= std::numeric_limits<std::int32_t>::max(),
                           errc::unsupported, file.name(), ": id ", wide[i], " at row ", i / h.dim,
                           " does not fit 32 bits");
          dst[i] = static_cast<std::int32_t>(wide[i]);
        }
      }
      break;
  }
  return out;
}

template <class T>
void write_npy_as(const fs::path& path, matrix_view<const T> data, npy_dtype dtype) {
  SHOAL_CHECK(data.dim >= 1 && data.dim <= detail::max_dim, path.string(), ": dimension ", data.dim, " is outside [1, ",
              detail::max_dim, "]");
  SHOAL_CHECK(data.rows == 0 || (data.data != nullptr && data.stride >= data.dim), path.string(),
              ": invalid matrix view (stride ", data.stride, " < dimension ", data.dim, " or no data)");
  std::string header = ::shoal::detail::str("{'descr': '", info_of(dtype).descr,
                                            "', 'fortran_order': False, 'shape': (", data.rows, ", ", data.dim, "), }");
  // Pad with spaces and end with '\n' so that the data starts at a multiple of 64 bytes, as numpy does.
  // Format 2.0 only when the header outgrows 1.0's 16-bit length.
  const auto padded = [&](std::size_t prefix) {
    return (prefix + header.size() + 1 + header_alignment - 1) / header_alignment * header_alignment - prefix;
  };
  const bool v2 = padded(10) > 0xffff;
  const std::size_t prefix = v2 ? 12 : 10;
  header.append(padded(prefix) - header.size() - 1, ' ');
  header.push_back('\n');

  detail::atomic_writer out(path);
  out.write(npy_magic.data(), npy_magic.size());
  const std::array<unsigned char, 2> version{static_cast<unsigned char>(v2 ? 2 : 1), 0};
  out.write(version.data(), version.size());
  if (v2)
    out.write_value(static_cast<std::uint32_t>(header.size()));
  else
    out.write_value(static_cast<std::uint16_t>(header.size()));
  out.write(header.data(), header.size());
  if (data.rows == 0) {
    // nothing after the header
  } else if (data.stride == data.dim) {
    out.write(data.data, data.rows * data.dim * sizeof(T));
  } else {
    for (std::size_t r = 0; r < data.rows; ++r) out.write(data.row(r), data.dim * sizeof(T));
  }
  out.commit();
}

}  // namespace

npy_header read_npy_header(const fs::path& path) { return read_layout(detail::input_file(path)).header; }

matrix<float> read_npy(const fs::path& path, std::size_t max_rows) { return read_npy_as<float>(path, max_rows); }
matrix<std::int32_t> read_npy_ids(const fs::path& path, std::size_t max_rows) {
  return read_npy_as<std::int32_t>(path, max_rows);
}

void write_npy(const fs::path& path, matrix_view<const float> data) { write_npy_as(path, data, npy_dtype::float32); }
void write_npy(const fs::path& path, matrix_view<const std::int32_t> data) {
  write_npy_as(path, data, npy_dtype::int32);
}
void write_npy(const fs::path& path, matrix_view<const std::uint8_t> data) {
  write_npy_as(path, data, npy_dtype::uint8);
}
void write_npy(const fs::path& path, matrix_view<const std::int8_t> data) { write_npy_as(path, data, npy_dtype::int8); }

}  // namespace shoal::io
