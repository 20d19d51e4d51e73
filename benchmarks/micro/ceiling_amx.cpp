// The AMX BF16 ceiling: tile products in registers, no memory traffic (ISA flags come from CMake). Four
// independent accumulator tiles take products of tiles loaded once, as the 2 x 2 block of the amx
// GEMM does (src/distance/amx.cpp); 16 x 16 x 32 multiply-adds per product.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "micro/ceiling.hpp"

namespace shoal::bench {
namespace {

struct alignas(64) tile_config {
  std::uint8_t palette = 1;
  std::uint8_t start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

float amx_products(std::size_t iterations, float seed) noexcept {
  tile_config config;
  for (int t = 0; t < 8; ++t) {
    config.colsb[t] = 64;
    config.rows[t] = 16;
  }
  alignas(64) std::uint16_t operand[16 * 32];
  std::uint32_t bits = 0;
  static_assert(sizeof bits == sizeof seed);
  __builtin_memcpy(&bits, &seed, sizeof bits);
  for (std::uint16_t& v : operand) v = static_cast<std::uint16_t>(bits >> 16);  // seed as bfloat16
  alignas(64) float out[16 * 16];
  _tile_loadconfig(&config);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, operand, 64);
  _tile_loadd(5, operand, 64);
  _tile_loadd(6, operand, 64);
  _tile_loadd(7, operand, 64);
  for (std::size_t i = 0; i < iterations; ++i) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, out, 64);
  _tile_release();
  return out[0];
}

}  // namespace

const amx_ceiling_functions amx_ceilings{amx_products, 4 * 16 * 16 * 32 * 2};

}  // namespace shoal::bench
