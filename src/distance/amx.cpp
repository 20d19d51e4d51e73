// The amx level: the avx512 kernels, with the GEMM (`inner_product_many`) run on the AMX tile unit.
//
// Why: the batched flat search, k-means and the IVF coarse pass spend their time in a float GEMM, and
// on a CPU with two 512-bit FMA ports Eigen's kernel reaches only 60-70% of the FMA peak (BENCHMARKS.md,
// session 6). One AMX BF16 tile product (TDPBF16PS, 16 x 16 x 32) does 16,384 flops in about 16 cycles,
// sixteen times the FMA ports' 64 flops per cycle, but on bfloat16 inputs (8 significant bits).
//
// Precision: every float is split into up to three bfloat16 parts, x = p0 + p1 + p2 + r, each part the
// remainder of the ones before rounded to nearest even, so |r| <= 2^-24 |x|. The kernel sums the tile
// products of parts pi·qj with i + j <= 2 (at most six), every tile accumulating in float32; what it
// drops (r, and the products with i + j >= 3) is within 2^-22 of each |a_i b_i|, so the GEMM is as
// accurate as a float32 one (tests/test_kernels.cpp holds it to a float summation bound). Two parts were
// not enough: 2^-16 per value is lost again in the cancellation of ||x||^2 - 2<x, c> + ||c||^2 when the
// data sit far from the origin (a k-means test caught it). Parts that are zero throughout a packed block
// (up to 512 rows of A, 128 rows of B) are skipped: data exact in bfloat16 (8-bit pixels, SIFT's bytes) need one part,
// so a GEMM over them is one tile product per block, and a GEMM of such data with generic floats three.
//
// The operating system must grant the process the tile state (arch_prctl ARCH_REQ_XCOMP_PERM, done
// once by the dispatcher before it reports the level available). Each call loads its tile
// configuration and releases the tiles before returning, so no tile state outlives a call.

#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>

#include "distance/amx_tiles.hpp"
#include "shoal/core/types.hpp"
#include "shoal/distance/distance.hpp"

namespace shoal::detail {
namespace avx512 {
const distance_kernels& table() noexcept;
}

namespace amx {
namespace {

constexpr std::size_t tile_rows = 16;  // rows of an A tile and of a C tile; columns of a C tile
constexpr std::size_t tile_k = 32;     // bfloat16 values per tile row (64 bytes)

// Tiles 0-3: the 2 x 2 block of C; 4-5: two row groups of A; 6-7: two column groups of B. Every tile is
// 16 rows of 64 bytes. Macros, not constants: the intrinsics paste the tile number into the instruction.
#define SHOAL_TILE_C00 0
#define SHOAL_TILE_C01 1
#define SHOAL_TILE_C10 2
#define SHOAL_TILE_C11 3
#define SHOAL_TILE_A0 4
#define SHOAL_TILE_A1 5
#define SHOAL_TILE_B0 6
#define SHOAL_TILE_B1 7

/// Number of bfloat16 parts a float is split into: x = p0 + p1 + p2 + r, |r| <= 2^-24 |x|.
constexpr std::size_t max_parts = 3;

/// A grow-only, 64-byte aligned buffer of bfloat16 words (contents undefined), of a type local to this
/// file. A `std::vector` here would emit weak members compiled with this file's AVX-512 and AMX flags,
/// and the linker may keep those for every other file's copy of the same vector, running AVX-512 code on
/// any CPU (tests/simd_objects.sh checks that the ISA-specific objects define no such symbols).
class word_buffer {
 public:
  /// At least `n` words.
  std::uint16_t* reserve(std::size_t n) {
    if (n > words_) {
      data_.reset();
      words_ = 0;  // so that a failed allocation below leaves an empty buffer, not a dangling size
      data_ = storage(static_cast<std::uint16_t*>(allocate_aligned(n * sizeof(std::uint16_t))),
                      release{n * sizeof(std::uint16_t)});
      words_ = n;
    }
    return data_.get();
  }

 private:
  struct release {
    std::size_t bytes;
    void operator()(std::uint16_t* p) const noexcept { deallocate_aligned(p, bytes); }
  };
  using storage = std::unique_ptr<std::uint16_t[], release>;
  storage data_{nullptr, release{0}};
  std::size_t words_ = 0;
};

/// Splits 32 floats (`valid` of them read, the rest zero) into up to `max_parts` bfloat16 parts: part i
/// is the float remainder after parts 0..i-1, rounded to nearest even, two floats to a 32-bit word (lower
/// depth in the low half). Stops once the remainder is zero and returns the parts made (at least 1).
/// Inputs are finite (the indexes reject NaN and infinity). bfloat16 keeps float's exponent range: only
/// values within 2^-8 of FLT_MAX round to infinity, far past where a float product overflows anyway. The
/// conversion flushes subnormals to zero (as the tile products do), an absolute error below 2^-126.
inline std::size_t split32(const float* x, std::size_t valid, __m512i (&parts)[max_parts]) noexcept {
  const __mmask16 m0 = valid >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << valid) - 1u);
  const __mmask16 m1 = valid >= 32   ? __mmask16(0xFFFF)
                       : valid <= 16 ? __mmask16(0)
                                     : static_cast<__mmask16>((1u << (valid - 16)) - 1u);
  __m512 r0 = _mm512_maskz_loadu_ps(m0, x);
  __m512 r1 = _mm512_maskz_loadu_ps(m1, x + 16);
  for (std::size_t i = 0;; ++i) {
    const __m512bh h = _mm512_cvtne2ps_pbh(r1, r0);  // r0 in the low 16 values, r1 in the high 16
    parts[i] = reinterpret_cast<const __m512i&>(h);
    if (i + 1 == max_parts) return max_parts;
    // The part back as floats (a bfloat16 is the top half of a float), off the remainder.
    const __m512i lo16 = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(parts[i]));
    const __m512i hi16 = _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(parts[i], 1));
    r0 = _mm512_sub_ps(r0, _mm512_castsi512_ps(_mm512_slli_epi32(lo16, 16)));
    r1 = _mm512_sub_ps(r1, _mm512_castsi512_ps(_mm512_slli_epi32(hi16, 16)));
    if (_mm512_cmpneq_ps_mask(r0, _mm512_setzero_ps()) == 0 && _mm512_cmpneq_ps_mask(r1, _mm512_setzero_ps()) == 0)
      return i + 1;
  }
}

/// In place: rows[i] word j becomes rows[j] word i (16 x 16 32-bit words).
inline void transpose16(__m512i (&r)[16]) noexcept {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  // r[4i + c] now holds, lane L, words c + 4L of rows 4i..4i+3.
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512i v0 = _mm512_shuffle_i32x4(r[c], r[c + 4], 0x44), v1 = _mm512_shuffle_i32x4(r[c + 8], r[c + 12], 0x44);
    const __m512i v2 = _mm512_shuffle_i32x4(r[c], r[c + 4], 0xEE), v3 = _mm512_shuffle_i32x4(r[c + 8], r[c + 12], 0xEE);
    t[c] = _mm512_shuffle_i32x4(v0, v1, 0x88);
    t[c + 4] = _mm512_shuffle_i32x4(v0, v1, 0xDD);
    t[c + 8] = _mm512_shuffle_i32x4(v2, v3, 0x88);
    t[c + 12] = _mm512_shuffle_i32x4(v2, v3, 0xDD);
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

/// One packed operand: `groups` groups of 16 rows (zero rows past the end), each `chunks` tiles of
/// 16 rows x 32 depth, part after part; `parts` counts the leading parts that are not all zero.
struct packed {
  const std::uint16_t* data;
  std::size_t groups, chunks, parts;
  static constexpr std::size_t tile_values = tile_rows * tile_k;  // 1 KiB
  const std::uint16_t* tile(std::size_t part, std::size_t group, std::size_t chunk) const noexcept {
    return data + ((part * groups + group) * chunks + chunk) * tile_values;
  }
};

/// Packs `n` rows of `x` into `groups` x 16 rows. `columns` selects the layout: false for A tiles (row r
/// of a tile holds depth 32c..32c+31 of one row of x), true for B tiles, pair-interleaved ("VNNI"): row p
/// of a tile holds, for each of 16 rows of x, its depth values 32c + 2p and 32c + 2p + 1. A part is
/// written only from the first tile that needs it on (the tiles before are zero-filled then), so data
/// exact in bfloat16 pays for one part only.
packed pack(const float* x, std::size_t n, std::size_t ldx, std::size_t dim, std::size_t groups, bool columns,
            word_buffer& buffer) {
  const std::size_t chunks = (dim + tile_k - 1) / tile_k;
  const std::size_t part_values = groups * chunks * packed::tile_values;
  std::uint16_t* out = buffer.reserve(max_parts * part_values);
  std::size_t parts = 1;  // parts written so far
  for (std::size_t g = 0; g < groups; ++g) {
    for (std::size_t c = 0; c < chunks; ++c) {
      const std::size_t at = (g * chunks + c) * packed::tile_values;  // this tile, within a part
      __m512i words[max_parts][16];
      std::size_t needed = 1;
      for (std::size_t r = 0; r < tile_rows; ++r) {
        const std::size_t row = g * tile_rows + r;
        __m512i split[max_parts];
        const std::size_t made = row < n
                                     ? split32(x + row * ldx + c * tile_k, std::min(tile_k, dim - c * tile_k), split)
                                     : (split[0] = _mm512_setzero_si512(), 1);
        for (std::size_t i = 0; i < max_parts; ++i) words[i][r] = i < made ? split[i] : _mm512_setzero_si512();
        needed = std::max(needed, made);
      }
      if (needed > parts) {
        for (std::size_t i = parts; i < needed; ++i) std::fill_n(out + i * part_values, at, std::uint16_t{0});
        parts = needed;
      }
      for (std::size_t i = 0; i < parts; ++i) {
        if (columns) transpose16(words[i]);
        std::uint16_t* tile = out + i * part_values + at;
        for (std::size_t r = 0; r < tile_rows; ++r) _mm512_store_si512(tile + r * tile_k, words[i][r]);
      }
    }
  }
  return {out, groups, chunks, parts};
}

/// Stores a C tile (rows `row`.., columns `col`..) into c with `store(pointer, byte stride)`, through a
/// bounce buffer where it overhangs.
template <class Store>
void store_tile(float* c, std::size_t ldc, std::size_t na, std::size_t nb, std::size_t row, std::size_t col,
                Store store) {
  if (row >= na || col >= nb) return;
  if (row + tile_rows <= na && col + tile_rows <= nb) {
    store(c + row * ldc + col, static_cast<long>(ldc * sizeof(float)));
    return;
  }
  alignas(64) float bounce[tile_rows * tile_rows];
  store(bounce, static_cast<long>(tile_rows * sizeof(float)));
  const std::size_t rows = std::min(tile_rows, na - row), cols = std::min(tile_rows, nb - col);
  for (std::size_t r = 0; r < rows; ++r) std::memcpy(c + (row + r) * ldc + col, bounce + r * tile_rows, cols * 4);
}

/// The products of parts summed: (i, j) with i + j <= 2 of those present. A dropped product is at most
/// 2^-24 of |a_i b_i|, as is what the three parts leave out, so the sum is as close as float32 inputs.
struct product {
  std::size_t a, b;
};
std::size_t products(std::size_t parts_a, std::size_t parts_b, product (&out)[6]) noexcept {
  std::size_t n = 0;
  for (std::size_t i = 0; i < parts_a; ++i)
    for (std::size_t j = 0; j < parts_b && i + j < max_parts; ++j) out[n++] = {i, j};
  return n;
}

/// Column groups per panel: B is packed a panel at a time (8 groups, 128 rows of B: 8 x 25 KiB per part
/// at 784 dims), just before every row pair of the A block passes over it from L2. Each 2 x 2 block of C
/// accumulates over the whole depth in its tiles: blocking the depth too (C through memory between
/// passes, to keep A's tiles in L1) measured 20-30% slower, tile stores and loads of C being the dearer
/// traffic.
constexpr std::size_t panel_groups = 8;
/// A is packed up to 512 rows at a time. With the panel, this bounds the scratch memory of a call (about
/// 3 MiB per thread at 784 dims) whatever the shape.
constexpr std::size_t block_groups = 32;

/// C (rows of `pa` x rows of `pb`, at `c`) = the sum of `list`'s products of parts.
void multiply(const packed& pa, const packed& pb, const product* list, std::size_t nproducts, float* c, std::size_t ldc,
              std::size_t na, std::size_t nb) noexcept {
  constexpr long stride = 64;
  for (std::size_t ga = 0; ga < pa.groups; ga += 2) {
    for (std::size_t gb = 0; gb < pb.groups; gb += 2) {
      _tile_zero(SHOAL_TILE_C00);
      _tile_zero(SHOAL_TILE_C01);
      _tile_zero(SHOAL_TILE_C10);
      _tile_zero(SHOAL_TILE_C11);
      for (const product& pr : std::span(list, nproducts)) {
        for (std::size_t chunk = 0; chunk < pa.chunks; ++chunk) {
          _tile_loadd(SHOAL_TILE_A0, pa.tile(pr.a, ga, chunk), stride);
          _tile_loadd(SHOAL_TILE_A1, pa.tile(pr.a, ga + 1, chunk), stride);
          _tile_loadd(SHOAL_TILE_B0, pb.tile(pr.b, gb, chunk), stride);
          _tile_loadd(SHOAL_TILE_B1, pb.tile(pr.b, gb + 1, chunk), stride);
          _tile_dpbf16ps(SHOAL_TILE_C00, SHOAL_TILE_A0, SHOAL_TILE_B0);
          _tile_dpbf16ps(SHOAL_TILE_C01, SHOAL_TILE_A0, SHOAL_TILE_B1);
          _tile_dpbf16ps(SHOAL_TILE_C10, SHOAL_TILE_A1, SHOAL_TILE_B0);
          _tile_dpbf16ps(SHOAL_TILE_C11, SHOAL_TILE_A1, SHOAL_TILE_B1);
        }
      }
      const std::size_t row = ga * tile_rows, col = gb * tile_rows;
      store_tile(c, ldc, na, nb, row, col, [](float* q, long s) { _tile_stored(SHOAL_TILE_C00, q, s); });
      store_tile(c, ldc, na, nb, row, col + tile_rows, [](float* q, long s) { _tile_stored(SHOAL_TILE_C01, q, s); });
      store_tile(c, ldc, na, nb, row + tile_rows, col, [](float* q, long s) { _tile_stored(SHOAL_TILE_C10, q, s); });
      store_tile(c, ldc, na, nb, row + tile_rows, col + tile_rows,
                 [](float* q, long s) { _tile_stored(SHOAL_TILE_C11, q, s); });
    }
  }
}

void inner_product_many(const float* a, std::size_t na, std::size_t lda, const float* b, std::size_t nb,
                        std::size_t ldb, std::size_t dim, float* c, std::size_t ldc) noexcept {
  if (na == 0 || nb == 0) return;
  if (dim == 0) {
    for (std::size_t i = 0; i < na; ++i) std::fill_n(c + i * ldc, nb, 0.0f);
    return;
  }
  // Operands padded to an even number of 16-row groups, so that the 2 x 2 tile block never overhangs the
  // packed data (padded rows are zero and never stored).
  const auto even_groups = [](std::size_t n) { return ((n + 2 * tile_rows - 1) / (2 * tile_rows)) * 2; };
  thread_local word_buffer a_buffer, b_buffer;  // packed operands, per thread
  // Both buffers at the size of the first (largest) block and panel before any tile work, so packing never
  // allocates: without the memory this kernel (noexcept, as every table entry) runs the AVX-512 GEMM,
  // which needs no buffer, instead of terminating.
  const std::size_t chunks = (dim + tile_k - 1) / tile_k;
  const auto words = [&](std::size_t rows) { return max_parts * even_groups(rows) * chunks * packed::tile_values; };
  try {
    a_buffer.reserve(words(std::min(block_groups * tile_rows, na)));
    b_buffer.reserve(words(std::min(panel_groups * tile_rows, nb)));
  } catch (...) {
    avx512::table().inner_product_many(a, na, lda, b, nb, ldb, dim, c, ldc);
    return;
  }
  configure_full_tiles();
  for (std::size_t r = 0; r < na; r += block_groups * tile_rows) {
    const std::size_t rows = std::min(block_groups * tile_rows, na - r);
    const packed pa = pack(a + r * lda, rows, lda, dim, even_groups(rows), false, a_buffer);
    for (std::size_t col = 0; col < nb; col += panel_groups * tile_rows) {
      const std::size_t cols = std::min(panel_groups * tile_rows, nb - col);
      const packed pb = pack(b + col * ldb, cols, ldb, dim, even_groups(cols), true, b_buffer);
      product list[6];
      const std::size_t nproducts = products(pa.parts, pb.parts, list);
      multiply(pa, pb, list, nproducts, c + r * ldc + col, ldc, rows, cols);
    }
  }
  _tile_release();
}

}  // namespace

const distance_kernels& table() noexcept {
  static const distance_kernels k = [] {
    distance_kernels t = avx512::table();
    t.level = simd_level::amx;
    t.inner_product_many = inner_product_many;
    return t;
  }();
  return k;
}

}  // namespace amx
}  // namespace shoal::detail
