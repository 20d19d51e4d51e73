// CRC-32C with SSE4.2's crc32 instruction, eight bytes per instruction. Compiled with -msse4.2 and
// called only after the CPU was found to have it (src/io/crc32c.cpp).

#include <nmmintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace shoal::detail {

std::uint32_t crc32c_sse42(const void* data, std::size_t bytes, std::uint32_t crc) noexcept {
  const auto* p = static_cast<const unsigned char*>(data);
  std::uint64_t c = ~crc;
  for (; bytes > 0 && (reinterpret_cast<std::uintptr_t>(p) & 7u) != 0; --bytes, ++p)
    c = _mm_crc32_u8(static_cast<std::uint32_t>(c), *p);
  for (; bytes >= 8; bytes -= 8, p += 8) {
    std::uint64_t word = 0;
    std::memcpy(&word, p, 8);
    c = _mm_crc32_u64(c, word);
  }
  for (; bytes > 0; --bytes, ++p) c = _mm_crc32_u8(static_cast<std::uint32_t>(c), *p);
  return ~static_cast<std::uint32_t>(c);
}

}  // namespace shoal::detail
