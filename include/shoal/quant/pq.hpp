#pragma once
/// \file
/// Product quantization (Jégou, Douze & Schmid, 2011): a vector of `dim` floats is cut into `m`
/// sub-vectors of `dim / m`, and each sub-vector is replaced by the index of its nearest codeword in a
/// per-sub-space codebook of `2^nbits` entries learned by k-means. Distances from a float query to an
/// encoded vector are sums of `m` table look-ups (asymmetric distance computation, ADC).
///
/// Two code widths:
///  - 8 bits (256 codewords per sub-space): one byte per sub-quantizer, scanned through float tables;
///  - 4 bits (16 codewords): packed into blocks of 32 vectors for the **fast-scan** kernel, which holds
///    the tables quantized to 8 bits in SIMD registers and looks up 32 (AVX2) or 64 (AVX-512) codes per
///    byte-shuffle instruction, accumulating exact 16-bit integer sums.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "shoal/core/types.hpp"
#include "shoal/distance/distance.hpp"

namespace shoal {

/// How a product quantizer learns its codebooks (one k-means per sub-space).
struct pq_train_params {
  /// Lloyd iterations per sub-space (FAISS's PQ trains 25).
  std::size_t iterations = 25;
  /// Seeds each sub-space's k-means (sub-space s uses seed + s): same seed and data → same codebooks.
  std::uint64_t seed = 1234;
  /// At most `2^nbits * max_points_per_centroid` training vectors per sub-space (0: all of them).
  std::size_t max_points_per_centroid = 256;
};

/// Product quantizer: m sub-quantizers of 2^nbits codewords each (nbits = 4 or 8).
///
/// An *unpacked code* is `m` bytes, byte s holding sub-quantizer s's codeword index (< 2^nbits). The
/// 4-bit fast-scan layout packs unpacked codes into blocks (see `pack_fast_scan`).
///
/// Thread safety: `train` needs exclusive access; every const member may be called concurrently.
class product_quantizer {
 public:
  /// An empty quantizer, useful only as a moved-to placeholder.
  product_quantizer() = default;
  /// An untrained quantizer. Throws `shoal::error` if dim or m is 0, m does not divide dim, or nbits is
  /// neither 4 nor 8.
  product_quantizer(std::size_t dim, std::size_t m, std::size_t nbits = 8);
  /// A trained quantizer with the given codebooks, laid out as `codebooks()` returns them ((m · ksub) x
  /// dsub) — e.g. read back from an index file. Throws `shoal::error` as the constructor does, and on a
  /// wrong shape or a non-finite value.
  [[nodiscard]] static product_quantizer with_codebooks(std::size_t dim, std::size_t m, std::size_t nbits,
                                                        matrix<float> codebooks);

  [[nodiscard]] std::size_t dim() const noexcept { return dim_; }
  /// Number of sub-quantizers.
  [[nodiscard]] std::size_t m() const noexcept { return m_; }
  [[nodiscard]] std::size_t nbits() const noexcept { return nbits_; }
  /// Codewords per sub-quantizer, 2^nbits.
  [[nodiscard]] std::size_t ksub() const noexcept { return std::size_t{1} << nbits_; }
  /// Dimension of one sub-vector, dim / m.
  [[nodiscard]] std::size_t dsub() const noexcept { return dsub_; }
  [[nodiscard]] bool is_trained() const noexcept { return !codebooks_.values.empty(); }
  /// The codebooks as an (m · ksub) x dsub matrix: sub-quantizer s's codeword c is row s · ksub + c.
  [[nodiscard]] matrix_view<const float> codebooks() const noexcept { return codebooks_.view(); }

  /// Learns the m codebooks from `vectors` (k-means with k = ksub per sub-space, in parallel over
  /// sub-spaces on the caller's oneTBB arena). A sub-space whose values spread by less than k-means can
  /// separate (`kmeans_min_mean_square`) gets ksub copies of their mean. Throws `shoal::error` on a
  /// dimension mismatch, NaN/Inf, fewer than ksub training vectors, or when every sub-space is that
  /// narrow and one is not constant (k-means's error: the data needs scaling up).
  void train(matrix_view<const float> vectors, const pq_train_params& params = {});

  /// Unpacked codes of `vectors`: row i's m bytes at `codes + i * m`, each the nearest codeword of its
  /// sub-vector under L2. Throws `shoal::error` if untrained, on a dimension mismatch or NaN/Inf.
  void encode(matrix_view<const float> vectors, std::uint8_t* codes) const;
  /// Allocating form of `encode`: rows · m bytes.
  [[nodiscard]] std::vector<std::uint8_t> encode(matrix_view<const float> vectors) const;
  /// Reconstructions of `n` unpacked codes (concatenated codewords) into `out` (n rows of dim). Throws
  /// `shoal::error` if untrained or `out` has the wrong shape.
  void decode(const std::uint8_t* codes, std::size_t n, matrix_view<float> out) const;

  /// ADC look-up table of one query: `table[s * ksub + c]` = ‖q_s − codeword(s, c)‖² under L2, or
  /// ⟨q_s, codeword(s, c)⟩ under inner product and cosine (the caller negates the sum). `table` holds
  /// m · ksub floats. Unchecked: the quantizer must be trained and `query` hold dim floats.
  void compute_table(const float* query, metric m, float* table) const noexcept;
  /// 8-bit codes: `table[s · 256 + c]` = ⟨q_s, codeword⟩ in double (`pq_kernels::tables_ip_f64`), the
  /// same bits at every level.
  void compute_ip_table_f64(const float* query, double* table) const noexcept;

  /// Σ_s table[s · ksub + code_s] for `n` unpacked codes (m bytes each) into `out[i]`. Unchecked.
  void scan(const float* table, const std::uint8_t* codes, std::size_t n, float* out) const noexcept;

 private:
  /// Installs trained codebooks and their transposed copy.
  void set_codebooks(matrix<float> books);

  std::size_t dim_ = 0;
  std::size_t m_ = 0;
  std::size_t nbits_ = 8;
  std::size_t dsub_ = 0;
  matrix<float> codebooks_;
  std::vector<float> codebooks_t_;  // per sub-space, component-major (see pq_kernels::tables)
};

// ------------------------------------------------------------------------------------------ fast-scan

/// Vectors per fast-scan block.
inline constexpr std::size_t fast_scan_block = 32;

/// Bytes of one fast-scan block of 4-bit codes with m sub-quantizers: 16 · round_up(m, 2).
///
/// Layout: m is padded to an even count m2 (the padding sub-quantizer has code 0 and a zero table).
/// Sub-quantizers pair up; pair p (sub-quantizers 2p and 2p + 1) takes 32 consecutive bytes, pairs in
/// order. In pair p, byte j < 16 holds sub-quantizer 2p's code of vector j in its low nibble and that of
/// vector j + 16 in its high nibble; byte 16 + j holds the same for sub-quantizer 2p + 1. One 256-bit
/// load thus puts sub-quantizer 2p in the low 128-bit lane and 2p + 1 in the high lane — exactly where a
/// 256-bit load of the quantized tables (16 bytes per sub-quantizer, in order) puts their tables — so
/// an in-lane byte shuffle looks up 32 codes at once; AVX-512 loads two pairs and four tables.
[[nodiscard]] constexpr std::size_t fast_scan_block_bytes(std::size_t m) noexcept { return 16 * (m + (m & 1)); }

/// Packs `n` unpacked 4-bit codes (m bytes each, values < 16) into ceil(n / 32) fast-scan blocks at
/// `packed` (which must hold that many `fast_scan_block_bytes(m)`); the unused slots of the last block
/// get code 0.
void pack_fast_scan(const std::uint8_t* codes, std::size_t n, std::size_t m, std::uint8_t* packed) noexcept;
/// Sub-quantizer s's code of vector `i` of the blocks at `packed`.
[[nodiscard]] std::uint8_t fast_scan_get(const std::uint8_t* packed, std::size_t m, std::size_t i,
                                         std::size_t s) noexcept;
/// Sets sub-quantizer s's code of vector `i` (code < 16).
void fast_scan_set(std::uint8_t* packed, std::size_t m, std::size_t i, std::size_t s, std::uint8_t code) noexcept;

/// A float look-up table quantized to bytes: entry (s, c) ≈ (table[s][c] − min_s) · scale, rounded,
/// so that Σ_s table[s][code_s] ≈ bias + acc / scale, where acc is the exact integer sum of the bytes.
struct quantized_table {
  /// round_up(m, 2) · 16 bytes, sub-quantizer-major (the padding sub-quantizer is all zero).
  aligned_vector<std::uint8_t> values;
  float bias = 0.0f;
  /// One scale for every sub-quantizer, so that integer sums are comparable: 255 / (largest per-row
  /// range), or 1 when that range is 0 or below 2^-120 (every byte is then 0). When a few entries per row
  /// dwarf the rest (docs/pq.md, "Outlier entries saturate"), 255 / (the widest range left once each row's
  /// three largest entries are set aside), and entries beyond it are 255: their estimate is then low.
  float scale = 1.0f;
};

/// Quantizes an m x 16 float table (as `compute_table` writes it for 4-bit codes) into `out`, reusing
/// its storage. Throws `shoal::error` (`errc::non_finite`) — leaving `out` unspecified — when an entry is
/// NaN or infinite, or the sum of the row minima or a row's range overflows float: a query (or codebook)
/// so far out that its distances to the codewords do not fit a float. The levels add the row minima in
/// different orders (AVX2 eight rows at a time), so where that sum comes within rounding of float's
/// overflow (minima near ±3e38 that cancel), one level may refuse a table another takes.
void quantize_table(const float* table, std::size_t m, quantized_table& out);

/// The fast-scan and ADC scan kernels of one SIMD level.
///  - `fast_scan`: for each of the `nblocks` blocks of 4-bit codes at `packed` (layout of
///    `fast_scan_block_bytes`), `out[b * 32 + v]` = Σ_{s < m} table[s · 16 + code(v, s)] over the
///    quantized `table` (round_up(m, 2) · 16 bytes), summed exactly in integers: every level returns the
///    same values.
///  - `scan_8bit`: `out[i]` = Σ_s table[s · 256 + codes[i · m + s]] in float, summed in s order.
///  - `tables_ip_f64`: ⟨q_s, codeword⟩ for 256 codewords per sub-space (layout of `tables`) in double:
///    products of floats are exact in double, so each entry is its sum over components in component
///    order — the same bits at every level, fused or not.
///  - `scan_8bit_f64`: `out[i]` = float(max(0, (offset + terms[i]) + Σ_s table[s · 256 + codes[i · m + s]]))
///    in double, summed in s order: the row-term scoring of 8-bit IVF-PQ codes (docs/pq.md).
///  - `tables`: the ADC table of `query` (m · dsub floats) against codebooks stored transposed per
///    sub-space (`books_t[(s · dsub + d) · ksub + c]` = component d of codeword c of sub-quantizer s):
///    `out[s · ksub + c]` = ‖q_s − codeword‖² when `l2`, else ⟨q_s, codeword⟩. Float results may differ
///    in the last bits between levels (FMA contraction), and so may `quantize`'s bytes, by one step.
struct pq_kernels {
  simd_level level;
  void (*tables)(const float* query, const float* books_t, std::size_t m, std::size_t dsub, std::size_t ksub, bool l2,
                 float* out) noexcept;
  /// `quantize_table`'s work on raw buffers: `out` gets m · 16 bytes, `bias` and `scale` the mapping.
  /// Returns false, having written nothing, for a table that cannot be quantized (see `quantize_table`):
  /// every level decides alike, except on the sum of the row minima at the edge of float's range.
  bool (*quantize)(const float* table, std::size_t m, std::uint8_t* out, float* bias, float* scale) noexcept;
  void (*fast_scan)(const std::uint8_t* packed, std::size_t nblocks, std::size_t m, const std::uint8_t* table,
                    std::uint32_t* out) noexcept;
  /// Over `nblocks` blocks of `fast_scan_block` sums: bit j of `masks[b]` is set iff sum 32 · b + j ≤ `bound`.
  void (*at_most)(const std::uint32_t* sums, std::size_t nblocks, std::uint32_t bound, std::uint32_t* masks) noexcept;
  void (*scan_8bit)(const float* table, const std::uint8_t* codes, std::size_t n, std::size_t m, float* out) noexcept;
  void (*tables_ip_f64)(const float* query, const float* books_t, std::size_t m, std::size_t dsub,
                        double* out) noexcept;
  void (*scan_8bit_f64)(const double* table, const std::uint8_t* codes, std::size_t n, std::size_t m,
                        const double* terms, double offset, float* out) noexcept;
};

/// The PQ kernels of `level`; throws `shoal::error` (`errc::unsupported`) if the CPU cannot run it.
[[nodiscard]] const pq_kernels& quant_kernels(simd_level level);
/// The PQ kernels of the active level (the level of `active_kernels()`).
[[nodiscard]] const pq_kernels& active_quant_kernels();

}  // namespace shoal
