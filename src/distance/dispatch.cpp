// Run-time selection of the kernel level. Compiled with baseline flags: nothing here may execute an
// instruction the CPU lacks. The choice is made lazily on first use (never in a static initialiser).

#ifdef SHOAL_HAVE_X86_KERNELS
#include <cpuid.h>
#endif
#ifdef SHOAL_HAVE_AMX_KERNELS
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "distance/stream_tuning.hpp"
#include "shoal/core/checks.hpp"
#include "shoal/core/error.hpp"
#include "shoal/distance/distance.hpp"

namespace shoal {
namespace detail {
namespace scalar {
const distance_kernels& table() noexcept;
}
#ifdef SHOAL_HAVE_X86_KERNELS
namespace avx2 {
const distance_kernels& table() noexcept;
}
namespace avx512 {
const distance_kernels& table() noexcept;
}
#endif
#ifdef SHOAL_HAVE_AMX_KERNELS
namespace amx {
const distance_kernels& table() noexcept;
}
#endif

namespace {

#ifdef SHOAL_HAVE_X86_KERNELS
/// CPUID leaf 1, ECX bit 29.
bool cpu_has_f16c() noexcept {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
}
#endif

#ifdef SHOAL_HAVE_AMX_KERNELS
/// AMX-TILE and AMX-BF16 (CPUID leaf 7 EDX bits 24, 22), AVX512-BF16 (leaf 7 subleaf 1 EAX bit 5), the
/// tile state enabled in XCR0 (bits 17, 18), and Linux's grant of the tile data to this process, asked
/// for once (arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA; kernels before 5.16 refuse it).
bool cpu_and_os_have_amx() noexcept {
  static const bool granted = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) == 0) return false;
    if ((edx & (1u << 24)) == 0 || (edx & (1u << 22)) == 0) return false;
    if (__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) == 0 || (eax & (1u << 5)) == 0) return false;
    unsigned xcr0_low = 0, xcr0_high = 0;
    __asm__("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
    constexpr unsigned tile_state = (1u << 17) | (1u << 18);
    if ((xcr0_low & tile_state) != tile_state) return false;
    constexpr long arch_req_xcomp_perm = 0x1023, xfeature_xtiledata = 18;
    return syscall(SYS_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata) == 0;
  }();
  return granted;
}
#endif

#ifdef SHOAL_HAVE_X86_KERNELS
/// CPUID leaf 0: the vendor string (EBX, EDX, ECX).
bool cpu_is_amd() noexcept {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(0, &eax, &ebx, &ecx, &edx) == 0) return false;
  char vendor[12];
  std::memcpy(vendor, &ebx, 4);
  std::memcpy(vendor + 4, &edx, 4);
  std::memcpy(vendor + 8, &ecx, 4);
  const std::string_view name(vendor, sizeof vendor);
  return name == "AuthenticAMD" || name == "HygonGenuine";  // Hygon: AMD's Zen cores
}
#endif

constexpr simd_level all_levels[] = {simd_level::scalar, simd_level::avx2, simd_level::avx512, simd_level::amx};

simd_level best_available_level() noexcept {
  simd_level best = simd_level::scalar;
  for (const simd_level level : all_levels)
    if (simd_level_available(level)) best = level;
  return best;
}

simd_level resolve_level() {
  const char* requested = std::getenv("SHOAL_SIMD");
  if (requested == nullptr || *requested == '\0') return best_available_level();
  const std::string_view name(requested);
  // Any case: SHOAL_SIMD=AVX2 was refused as "not a SIMD level" (a user-eyes review).
  const auto same = [&](std::string_view level) {
    return std::equal(name.begin(), name.end(), level.begin(), level.end(), [](char a, char b) {
      return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
    });
  };
  for (const simd_level level : all_levels) {
    if (!same(simd_level_name(level))) continue;
    SHOAL_CHECK_CODE(
        simd_level_available(level), errc::unsupported, "SHOAL_SIMD=", name,
        " requested, but this CPU cannot run it (best available: ", simd_level_name(best_available_level()), ")");
    return level;
  }
  SHOAL_CHECK(false, "SHOAL_SIMD=", name, " is not a SIMD level (use scalar, avx2, avx512 or amx)");
  return simd_level::scalar;  // unreachable
}

/// The tuning in force, set from the CPU on first use. Relaxed atomics: a test's replacement is the only
/// write after that, and either tuning gives the same results.
struct stream_tuning_cell {
  std::atomic<std::size_t> prefetch_bytes;
  std::atomic<bool> half_loads;
};

stream_tuning_cell& tuning_cell() noexcept {
  static stream_tuning_cell cell = [] {
    stream_tuning cpu;
#ifdef SHOAL_HAVE_X86_KERNELS
    if (cpu_is_amd()) cpu = {.prefetch_bytes = 0, .half_loads = true};
#endif
    return stream_tuning_cell{cpu.prefetch_bytes, cpu.half_loads};
  }();
  return cell;
}

}  // namespace

stream_tuning current_stream_tuning() noexcept {
  const stream_tuning_cell& cell = tuning_cell();
  return {.prefetch_bytes = cell.prefetch_bytes.load(std::memory_order_relaxed),
          .half_loads = cell.half_loads.load(std::memory_order_relaxed)};
}

stream_tuning replace_stream_tuning(stream_tuning tuning) noexcept {
  stream_tuning_cell& cell = tuning_cell();
  return {.prefetch_bytes = cell.prefetch_bytes.exchange(tuning.prefetch_bytes, std::memory_order_relaxed),
          .half_loads = cell.half_loads.exchange(tuning.half_loads, std::memory_order_relaxed)};
}

}  // namespace detail

const char* simd_level_name(simd_level level) noexcept {
  switch (level) {
    case simd_level::scalar:
      return "scalar";
    case simd_level::avx2:
      return "avx2";
    case simd_level::avx512:
      return "avx512";
    case simd_level::amx:
      return "amx";
  }
  return "unknown";
}

const char* simd_level_name() { return simd_level_name(active_simd_level()); }

bool simd_level_available(simd_level level) noexcept {
  switch (level) {
    case simd_level::scalar:
      return true;
#ifdef SHOAL_HAVE_X86_KERNELS
    // __builtin_cpu_supports also checks that the OS saves the wider registers (XCR0). F16C (half ↔
    // float conversion, part of x86-64-v3 with AVX2 and FMA) is read from CPUID directly: Clang's
    // builtin does not know its name.
    case simd_level::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && detail::cpu_has_f16c();
    case simd_level::avx512:
      return simd_level_available(simd_level::avx2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vl");
    case simd_level::amx:
#ifdef SHOAL_HAVE_AMX_KERNELS
      return simd_level_available(simd_level::avx512) && detail::cpu_and_os_have_amx();
#else
      return false;
#endif
#else
    default:
      return false;
#endif
  }
  return false;
}

std::vector<simd_level> available_simd_levels() {
  std::vector<simd_level> levels;
  for (const simd_level level : detail::all_levels)
    if (simd_level_available(level)) levels.push_back(level);
  return levels;
}

simd_level active_simd_level() { return active_kernels().level; }

const distance_kernels& kernels(simd_level level) {
  SHOAL_CHECK_CODE(simd_level_available(level), errc::unsupported, "SIMD level ", simd_level_name(level),
                   " is not available on this CPU");
  switch (level) {
#ifdef SHOAL_HAVE_X86_KERNELS
    case simd_level::avx2:
      return detail::avx2::table();
    case simd_level::avx512:
      return detail::avx512::table();
#endif
#ifdef SHOAL_HAVE_AMX_KERNELS
    case simd_level::amx:
      return detail::amx::table();
#endif
    default:
      return detail::scalar::table();
  }
}

const distance_kernels& active_kernels() {
  static const distance_kernels& table = kernels(detail::resolve_level());
  return table;
}

float l2sqr(const float* a, const float* b, std::size_t dim) { return active_kernels().l2sqr(a, b, dim); }
float inner_product(const float* a, const float* b, std::size_t dim) {
  return active_kernels().inner_product(a, b, dim);
}
float cosine_distance(const float* a, const float* b, std::size_t dim) {
  return active_kernels().cosine_distance(a, b, dim);
}

float distance(metric m, const float* a, const float* b, std::size_t dim) {
  detail::check_metric(m, "distance");
  const distance_kernels& k = active_kernels();
  switch (m) {
    case metric::l2:
      return k.l2sqr(a, b, dim);
    case metric::inner_product:
      return -k.inner_product(a, b, dim);
    case metric::cosine:
      return k.cosine_distance(a, b, dim);
  }
  return 0.0f;  // unreachable: the metric was checked
}

void distances_many(metric m, matrix_view<const float> a, matrix_view<const float> b, float* out, std::size_t ldo) {
  SHOAL_CHECK_CODE(a.dim == b.dim, errc::dimension_mismatch, "distances_many: dimensions differ (", a.dim, " vs ",
                   b.dim, ")");
  SHOAL_CHECK(ldo >= b.rows, "distances_many: output stride ", ldo, " is smaller than the ", b.rows, " columns");
  detail::check_metric(m, "distances_many");
  // The GEMM form would turn a NaN row into distance 0 (the clamp below) and lose precision past the
  // norm bound every index applies: the same input checks as an index's.
  detail::check_vectors(a, a.dim, "distances_many: a");
  detail::check_vectors(b, b.dim, "distances_many: b");
  if (a.rows == 0 || b.rows == 0) return;
  SHOAL_CHECK(out != nullptr, "distances_many: no output buffer for ", a.rows, " x ", b.rows, " distances");
  // The GEMM reads its inputs in tiles after it has begun to write: an output over an input is read
  // back half overwritten (every entry wrong in a review's reproducer).
  const matrix_view<const float> written{out, a.rows, b.rows, ldo};
  SHOAL_CHECK(!detail::views_overlap(written, a) && !detail::views_overlap(written, b),
              "distances_many: the output overlaps an input");
  const distance_kernels& k = active_kernels();
  k.inner_product_many(a.data, a.rows, a.stride, b.data, b.rows, b.stride, a.dim, out, ldo);
  if (m == metric::inner_product) {
    for (std::size_t i = 0; i < a.rows; ++i)
      for (std::size_t j = 0; j < b.rows; ++j) out[i * ldo + j] = -out[i * ldo + j];
    return;
  }
  std::vector<float> na(a.rows), nb(b.rows);
  k.squared_norms(a.data, a.rows, a.dim, a.stride, na.data());
  k.squared_norms(b.data, b.rows, b.dim, b.stride, nb.data());
  for (std::size_t i = 0; i < a.rows; ++i) {
    float* row = out + i * ldo;
    for (std::size_t j = 0; j < b.rows; ++j) {
      if (m == metric::l2) {
        row[j] = std::max(0.0f, na[i] + nb[j] - 2.0f * row[j]);  // clamp the GEMM form's cancellation
      } else {
        // As cosine_distance: the pair kernel (in double) where a squared norm underflowed, the roots one
        // at a time where their product underflows or overflows.
        if (!std::isnormal(na[i]) || !std::isnormal(nb[j])) {
          row[j] = k.cosine_distance(a.row(i), b.row(j), a.dim);
          continue;
        }
        const float product = na[i] * nb[j];
        const float denom = std::isnormal(product) ? std::sqrt(product) : std::sqrt(na[i]) * std::sqrt(nb[j]);
        row[j] = 1.0f - row[j] / denom;
      }
    }
  }
}

}  // namespace shoal
