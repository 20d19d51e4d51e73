#!/usr/bin/env bash
# Usage: simd_objects.sh NM LIBRARY MEMBER...
# Fails when one of the ISA-specific objects of the static LIBRARY (compiled with -mavx2, -mavx512f, ...)
# defines a weak or unique symbol (an inline function or template instantiated there). Other objects
# may define the same symbol, compiled for the baseline CPU, and the linker keeps one copy for every
# caller: possibly this one, which then runs AVX-512 code on any CPU. Allowed: the per-level copies of
# Eigen (namespaces shoal_eigen_<level>, see src/distance/kernels-inl.hpp) and the personality
# reference every object with exception handling carries.
set -euo pipefail
nm_tool=$1 library=$2
shift 2
members=$(ar t "$library")
status=0
for member in "$@"; do
  if ! grep -qxF "$member" <<<"$members"; then
    echo "simd_objects: $library has no member $member" >&2
    status=1
    continue
  fi
  shared=$("$nm_tool" -A -C --defined-only "$library" | awk -F: -v m="$member" '$2 == m' |
           grep -E ' [uVW] ' | grep -v -e 'shoal_eigen_' -e 'DW\.ref\.__gxx_personality_v0' || true)
  if [[ -n $shared ]]; then
    echo "simd_objects: $member defines symbols other objects may define too:" >&2
    echo "$shared" >&2
    status=1
  fi
done
[[ $status == 0 ]] && echo "simd_objects: $# ISA-specific objects, no shared weak symbols"
exit $status
