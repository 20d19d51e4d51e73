#pragma once
/// \file
/// Vocabulary types: ids, metrics, non-owning matrix views and owning row-major matrices.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <new>
#include <span>
#include <string_view>
#include <type_traits>
#include <vector>

#include "shoal/core/error.hpp"

namespace shoal {

/// External vector id: 64 bits, chosen by the user. Indexes map ids to dense internal slots.
/// (Not named `id_t`: that would collide with POSIX `::id_t` for anyone `using namespace shoal`.)
using vector_id = std::uint64_t;

/// Sentinel id that fills result slots when fewer than k neighbours exist (or pass the filter); reserved,
/// so no index stores it (adds and upserts refuse it, loaders report a file that holds it as corrupt).
inline constexpr vector_id no_id = std::numeric_limits<vector_id>::max();

/// Largest vector dimension an index, collection or file holds (2²⁴): far above any embedding, and small
/// enough that a corrupt file header can neither overflow a row size nor ask for a giant allocation per
/// row. Constructors refuse more, so that whatever is built can be saved and loaded again.
inline constexpr std::size_t max_dim = std::size_t{1} << 24;

/// Similarity measure. Every index reports a *distance* where smaller means closer, so results of any
/// metric sort and merge the same way:
///  - `l2`: squared Euclidean distance ‖q − x‖²;
///  - `inner_product`: the negated inner product −⟨q, x⟩ (maximum inner product search);
///  - `cosine`: 1 − cos(q, x). Vectors are normalised once when added and queries once per search,
///    after which cosine is an inner product on unit vectors. Zero vectors have no direction and are
///    rejected with `errc::invalid_argument`.
enum class metric { l2, inner_product, cosine };

/// "l2", "inner_product" or "cosine".
[[nodiscard]] const char* metric_name(metric m) noexcept;

/// Parses "l2", "ip" / "inner_product", "cos" / "cosine" in any case; throws `shoal::error` otherwise.
[[nodiscard]] metric parse_metric(std::string_view name);

/// Non-owning view of a row-major matrix: `rows` vectors of `dim` elements, row i at `data + i * stride`
/// (stride in elements, ≥ dim). `matrix_view<const float>` is how vectors enter every shoal API.
template <class T>
struct matrix_view {
  T* data = nullptr;
  std::size_t rows = 0;
  std::size_t dim = 0;
  std::size_t stride = 0;

  constexpr matrix_view() = default;
  constexpr matrix_view(T* data_, std::size_t rows_, std::size_t dim_) noexcept
      : data(data_), rows(rows_), dim(dim_), stride(dim_) {}
  constexpr matrix_view(T* data_, std::size_t rows_, std::size_t dim_, std::size_t stride_) noexcept
      : data(data_), rows(rows_), dim(dim_), stride(stride_) {}
  /// A view of mutable data converts to a view of const data.
  template <class U>
  requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>) constexpr matrix_view(
      const matrix_view<U>& other) noexcept  // NOLINT(google-explicit-constructor)
      : data(other.data), rows(other.rows), dim(other.dim), stride(other.stride) {}

  [[nodiscard]] constexpr T* row(std::size_t i) const noexcept { return data + i * stride; }
  [[nodiscard]] constexpr std::span<T> row_span(std::size_t i) const noexcept { return {row(i), dim}; }
  /// Rows [first, first + count) as a view.
  [[nodiscard]] constexpr matrix_view slice(std::size_t first, std::size_t count) const noexcept {
    return {row(first), count, dim, stride};
  }
  [[nodiscard]] constexpr bool empty() const noexcept { return rows == 0; }
};

namespace detail {
/// Allocates `bytes` aligned to 64 bytes; blocks of `huge_page_threshold` bytes or more are aligned to
/// 2 MiB and, on Linux, marked MADV_HUGEPAGE. Big scans (flat search, list scans, graph walks) then take
/// one TLB entry per 2 MiB instead of 512, and the hardware prefetcher is not stopped at every 4 KiB
/// page boundary. Throws std::bad_alloc.
[[nodiscard]] void* allocate_aligned(std::size_t bytes);
/// Frees a block of `allocate_aligned(bytes)` (the same `bytes`).
void deallocate_aligned(void* p, std::size_t bytes) noexcept;
inline constexpr std::size_t huge_page_threshold = std::size_t{4} << 20;

/// A count read without locks (an index's size) that, unlike std::atomic, can be moved: a moved-from
/// counter reads 0. Moving is not atomic with respect to other threads, like moving any index.
class movable_count {
 public:
  movable_count() = default;
  movable_count(movable_count&& other) noexcept : value_(other.value_.exchange(0)) {}
  movable_count& operator=(movable_count&& other) noexcept {
    value_.store(other.value_.exchange(0));
    return *this;
  }
  movable_count(const movable_count&) = delete;
  movable_count& operator=(const movable_count&) = delete;

  [[nodiscard]] std::size_t load() const noexcept { return value_.load(std::memory_order_acquire); }
  void store(std::size_t v) noexcept { value_.store(v, std::memory_order_release); }
  void add(std::size_t n) noexcept { value_.fetch_add(n, std::memory_order_release); }
  void subtract(std::size_t n) noexcept { value_.fetch_sub(n, std::memory_order_release); }

 private:
  std::atomic<std::size_t> value_{0};
};

/// A `Mutex` (std::mutex, std::shared_mutex) that lets the class holding it be moved: moving gives the
/// destination a fresh, unlocked mutex and leaves the source's alone. Moving is not atomic with respect
/// to other threads, like moving any index.
template <class Mutex>
class movable_mutex : public Mutex {
 public:
  movable_mutex() = default;
  movable_mutex(movable_mutex&& /*other*/) noexcept {}
  movable_mutex& operator=(movable_mutex&& /*other*/) noexcept { return *this; }
  movable_mutex(const movable_mutex&) = delete;
  movable_mutex& operator=(const movable_mutex&) = delete;
};

/// `rows * cols`, the element count of a `rows x cols` buffer of `T`, or a `shoal::error` naming `what`
/// when that buffer could not exist: without the check the product can wrap around to a small size, and
/// the buffer's owner would then index far past what it allocated.
template <class T>
[[nodiscard]] std::size_t checked_elements(std::size_t rows, std::size_t cols, const char* what) {
  constexpr std::size_t limit = static_cast<std::size_t>(std::numeric_limits<std::ptrdiff_t>::max()) / sizeof(T);
  SHOAL_CHECK(cols == 0 || rows <= limit / cols, what, ": ", rows, " x ", cols, " entries exceed the address space");
  return rows * cols;
}
}  // namespace detail

/// Allocator of shoal's vector storage: 64-byte aligned blocks, so that SIMD loads of row 0 never split
/// a cache line and memory-mapped layouts match in-memory ones; large blocks on huge pages (see
/// `detail::allocate_aligned`).
template <class T>
struct aligned_allocator {
  using value_type = T;
  aligned_allocator() = default;
  template <class U>
  constexpr aligned_allocator(const aligned_allocator<U>& /*other*/) noexcept {}  // NOLINT
  [[nodiscard]] T* allocate(std::size_t n) { return static_cast<T*>(detail::allocate_aligned(n * sizeof(T))); }
  void deallocate(T* p, std::size_t n) noexcept { detail::deallocate_aligned(p, n * sizeof(T)); }
  template <class U>
  constexpr bool operator==(const aligned_allocator<U>& /*other*/) const noexcept {
    return true;
  }
};

template <class T>
using aligned_vector = std::vector<T, aligned_allocator<T>>;

/// Owning dense row-major matrix (stride == dim), 64-byte aligned; what the file readers return.
template <class T>
struct matrix {
  aligned_vector<T> values;
  std::size_t rows = 0;
  std::size_t dim = 0;

  matrix() = default;
  matrix(std::size_t rows_, std::size_t dim_)
      : values(detail::checked_elements<T>(rows_, dim_, "matrix")), rows(rows_), dim(dim_) {}

  [[nodiscard]] T* row(std::size_t i) noexcept { return values.data() + i * dim; }
  [[nodiscard]] const T* row(std::size_t i) const noexcept { return values.data() + i * dim; }
  [[nodiscard]] matrix_view<const T> view() const noexcept { return {values.data(), rows, dim, dim}; }
  [[nodiscard]] matrix_view<T> mutable_view() noexcept { return {values.data(), rows, dim, dim}; }
  /// As `std::string` to `std::string_view`, a temporary converts too: safe as an argument (the matrix
  /// lives to the end of the call's statement), dangling once stored —
  /// `matrix_view<const float> q = make_uniform(4, 16, 7);` leaves `q` pointing at freed memory.
  operator matrix_view<const T>() const noexcept { return view(); }  // NOLINT(google-explicit-constructor)
};

}  // namespace shoal
