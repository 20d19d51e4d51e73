#include "params.hpp"

#include <algorithm>

namespace shoal::bench {

param parse_param(std::string_view text, std::string_view option) {
  const std::size_t eq = text.find('=');
  if (eq == std::string_view::npos || eq == 0 || eq + 1 == text.size())
    throw config_error(std::string(option) + " expects NAME=VALUE, got '" + std::string(text) + "'");
  return {std::string(text.substr(0, eq)), std::string(text.substr(eq + 1))};
}

sweep_axis parse_sweep(std::string_view text) {
  const param whole = parse_param(text, "--sweep");
  sweep_axis axis{whole.name, {}};
  std::string_view rest = whole.value;
  for (;;) {
    const std::size_t comma = rest.find(',');
    const std::string_view value = rest.substr(0, comma);
    if (value.empty()) throw config_error("--sweep " + whole.name + ": empty value in '" + whole.value + "'");
    axis.values.emplace_back(value);
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  return axis;
}

std::vector<param_list> sweep_points(std::span<const sweep_axis> axes) {
  std::vector<param_list> points{param_list{}};
  for (const sweep_axis& axis : axes) {
    std::vector<param_list> next;
    next.reserve(points.size() * axis.values.size());
    for (const param_list& point : points) {
      for (const std::string& value : axis.values) {
        next.push_back(point);
        next.back().push_back({axis.name, value});
      }
    }
    points = std::move(next);
  }
  return points;
}

void append_item(std::string& list, std::string_view item, std::string_view separator) {
  if (!list.empty()) list += separator;
  list += item;
}

std::string format_params(const param_list& params) {
  if (params.empty()) return "-";
  std::string text;
  for (const param& p : params) append_item(text, p.name + "=" + p.value, ";");
  return text;
}

void check_param_names(const param_list& params, std::span<const std::string_view> known, std::string_view kind,
                       std::string_view index) {
  for (const param& p : params) {
    if (std::find(known.begin(), known.end(), p.name) != known.end()) continue;
    std::string names;
    for (const std::string_view name : known) append_item(names, name, ", ");
    throw config_error("unknown " + std::string(kind) + " parameter '" + p.name + "' for index " + std::string(index) +
                       " (known: " + (names.empty() ? "none" : names) + ")");
  }
}

}  // namespace shoal::bench
