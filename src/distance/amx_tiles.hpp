#pragma once
// AMX tile set-up shared by the amx GEMM (amx.cpp) and the micro-benchmark's AMX ceiling. Include only
// from files compiled with -mamx-tile.

#include <immintrin.h>

#include <cstdint>

namespace shoal::detail::amx {

/// Loads palette 1 with all eight tiles at their largest: 16 rows of 64 bytes (16 x 16 floats, or
/// 16 x 32 bfloat16). The caller releases them (`_tile_release`) when done.
inline void configure_full_tiles() noexcept {
  struct alignas(64) tile_config {  // the 64-byte LDTILECFG operand (Intel SDM)
    std::uint8_t palette = 1;
    std::uint8_t start_row = 0;
    std::uint8_t reserved[14] = {};
    std::uint16_t colsb[16] = {};
    std::uint8_t rows[16] = {};
  } config;
  for (int t = 0; t < 8; ++t) {
    config.colsb[t] = 64;
    config.rows[t] = 16;
  }
  _tile_loadconfig(&config);
}

}  // namespace shoal::detail::amx
