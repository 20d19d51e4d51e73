// The AMX BF16 ceiling: tile products in registers, no memory traffic (ISA flags come from CMake). Four
// independent accumulator tiles take products of tiles loaded once, as the 2 x 2 block of the amx
// GEMM does (src/distance/amx.cpp); 16 x 16 x 32 multiply-adds per product.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "distance/amx_tiles.hpp"
#include "micro/ceiling.hpp"

namespace shoal::bench {
namespace {

float amx_products(std::size_t iterations, float seed) noexcept {
  alignas(64) std::uint16_t operand[16 * 32];
  std::uint32_t bits = 0;
  static_assert(sizeof bits == sizeof seed);
  __builtin_memcpy(&bits, &seed, sizeof bits);
  for (std::uint16_t& v : operand) v = static_cast<std::uint16_t>(bits >> 16);  // seed as bfloat16
  alignas(64) float out[16 * 16];
  detail::amx::configure_full_tiles();
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
