#include "shoal/core/id_set.hpp"

#include <algorithm>

#include "core/linear_probing.hpp"
#include "shoal/core/error.hpp"

namespace shoal {

id_set::id_set(std::span<const vector_id> ids) : ids_(ids.begin(), ids.end()) {
  std::sort(ids_.begin(), ids_.end());
  ids_.erase(std::unique(ids_.begin(), ids_.end()), ids_.end());
  SHOAL_CHECK(ids_.empty() || ids_.back() != no_id,
              "id_set: no_id (2^64 - 1) is reserved for a missing result and is "
              "never stored");
  namespace lp = detail::linear_probing;
  table_.assign(lp::rebuilt_capacity(ids_.size()), no_id);
  for (const vector_id id : ids_) {
    std::size_t i = lp::home(lp::mix(id), table_.size());
    while (table_[i] != no_id) i = lp::next(i, table_.size());
    table_[i] = id;
  }
}

bool id_set::contains(vector_id id) const noexcept {
  if (table_.empty() || id == no_id) return false;
  namespace lp = detail::linear_probing;
  for (std::size_t i = lp::home(lp::mix(id), table_.size());; i = lp::next(i, table_.size())) {
    if (table_[i] == id) return true;
    if (table_[i] == no_id) return false;
  }
}

}  // namespace shoal
