// The 4-bit fast-scan kernel at every SIMD level: codes per second over an L1/L2-resident list (the
// shape of one IVF list) and a DRAM-sized one, and the 8-bit ADC scan. "codes" counts sub-quantizer
// look-ups (vectors x m); a byte shuffle of the AVX2 kernel performs 32 of them, of the AVX-512 one 64.
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "micro/common.hpp"
#include "shoal/eval/eval.hpp"
#include "shoal/quant/pq.hpp"

namespace shoal::bench {
namespace {

/// `n` vectors of m random 4-bit codes, packed, and a random quantized table.
struct fast_scan_data {
  aligned_vector<std::uint8_t> packed;
  aligned_vector<std::uint8_t> table;
  std::size_t blocks;
  fast_scan_data(std::size_t n, std::size_t m) : blocks((n + fast_scan_block - 1) / fast_scan_block) {
    splitmix64 rng(7);
    std::vector<std::uint8_t> codes(n * m);
    for (std::uint8_t& c : codes) c = static_cast<std::uint8_t>(rng.below(16));
    packed.resize(blocks * fast_scan_block_bytes(m));
    pack_fast_scan(codes.data(), n, m, packed.data());
    table.resize((m + (m & 1)) * 16);
    for (std::uint8_t& t : table) t = static_cast<std::uint8_t>(rng.below(256));
  }
};

void bm_fast_scan(benchmark::State& state, const pq_kernels& k) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto m = static_cast<std::size_t>(state.range(1));
  const fast_scan_data data(n, m);
  std::vector<std::uint32_t> out(data.blocks * fast_scan_block);
  for (auto _ : state) {
    k.fast_scan(data.packed.data(), data.blocks, m, data.table.data(), out.data());
    benchmark::ClobberMemory();
  }
  const auto iterations = static_cast<double>(state.iterations());
  state.SetBytesProcessed(static_cast<std::int64_t>(iterations * static_cast<double>(data.packed.size())));
  state.counters["codes/s"] = benchmark::Counter(iterations * static_cast<double>(data.blocks * fast_scan_block * m),
                                                 benchmark::Counter::kIsRate);
}

/// The 8-bit scan over random codes: `T` float is `scan_8bit`, double the row-term scan of 8-bit IVF-PQ
/// (`scan_8bit_f64`: a double table and a double term per row).
template <class T>
void bm_scan_8bit(benchmark::State& state, const pq_kernels& k) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto m = static_cast<std::size_t>(state.range(1));
  splitmix64 rng(9);
  std::vector<std::uint8_t> codes(n * m);
  for (std::uint8_t& c : codes) c = static_cast<std::uint8_t>(rng.below(256));
  std::vector<T> table(m * 256);
  for (T& t : table) t = rng.uniform();
  std::vector<double> terms(std::is_same_v<T, double> ? n : 0);
  for (double& t : terms) t = rng.uniform();
  std::vector<float> out(n);
  for (auto _ : state) {
    if constexpr (std::is_same_v<T, double>)
      k.scan_8bit_f64(table.data(), codes.data(), n, m, terms.data(), 1.0, out.data());
    else
      k.scan_8bit(table.data(), codes.data(), n, m, out.data());
    benchmark::ClobberMemory();
  }
  state.counters["codes/s"] = benchmark::Counter(static_cast<double>(state.iterations()) * static_cast<double>(n * m),
                                                 benchmark::Counter::kIsRate);
}

}  // namespace

void register_pq_benchmarks() {
  for (const simd_level level : available_simd_levels()) {
    const pq_kernels& k = quant_kernels(level);
    const std::string suffix = std::string("/") + simd_level_name(level);
    // 64 vectors x 392 sub-quantizers: one fashion-mnist list of IVF980,PQ392x4fs (12.5 KB, L1/L2);
    // 1024 x 64: a list of PQ64x4fs; 1 M x 32: a DRAM-sized scan (16 MB).
    benchmark::RegisterBenchmark(("fast_scan" + suffix).c_str(), bm_fast_scan, k)
        ->Args({64, 392})
        ->Args({1024, 64})
        ->Args({1 << 20, 32});
    benchmark::RegisterBenchmark(("scan_8bit" + suffix).c_str(), bm_scan_8bit<float>, k)->Args({1024, 64});
    // 234 x 98: one list of fashion-mnist's IVF256,PQ98.
    benchmark::RegisterBenchmark(("scan_8bit_f64" + suffix).c_str(), bm_scan_8bit<double>, k)->Args({234, 98});
  }
}

}  // namespace shoal::bench
