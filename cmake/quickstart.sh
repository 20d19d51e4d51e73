#!/usr/bin/env bash
# shoal's quick start, on a fresh Debian 12 machine (as root, or with sudo):
#   cmake/quickstart.sh demo [BASE QUERY [GT]] [--metric l2|ip|cos] [--k K] [--index SPEC]...
#                                           build and run the demo (Flat, HNSW and IVF-PQ side by side)
#   cmake/quickstart.sh test                build and run the full test suite
# Each installs the Debian packages it is missing, configures the `release` preset (build/) and builds.
set -euo pipefail
caller=$PWD  # the demo's files are named relative to where it was called from
cd "$(dirname "$0")/.."
root=$PWD

mode=${1:-}
[[ $mode == demo || $mode == test ]] || { sed -n '2,6p' "$0" >&2; exit 2; }
shift

packages=(build-essential cmake ninja-build pkg-config libeigen3-dev libxsimd-dev libtbb-dev)
# The test suite also builds the benchmarks against their peers, so that they never rot.
# The loader's fuzz run needs Clang and its libFuzzer runtime.
[[ $mode == test ]] && packages+=(catch2 libbenchmark-dev libhnswlib-dev libfaiss-dev gnuplot-nox clang libclang-rt-14-dev)
missing=()
for p in "${packages[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if ((${#missing[@]})); then
  echo "quickstart: installing ${missing[*]}" >&2
  sudo=""; ((EUID == 0)) || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

jobs=$(nproc)
if [[ $mode == demo ]]; then
  cmake --preset release -DSHOAL_BUILD_TESTS=OFF -DSHOAL_BUILD_BENCHMARKS=OFF >/dev/null
  cmake --build build --target shoal-demo -j "$jobs"
  cd "$caller"
  exec "$root/build/examples/shoal-demo" "$@"
fi

cmake --preset release -DSHOAL_BUILD_TESTS=ON -DSHOAL_BUILD_BENCHMARKS=ON -DSHOAL_BUILD_EXAMPLES=ON
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs"
# Once more on the scalar reference kernels (the package check does not depend on the level).
SHOAL_SIMD=scalar ctest --test-dir build --output-on-failure -j "$jobs" -LE package
# The file readers under libFuzzer and AddressSanitizer, a bounded minute each (index files; vector files
# and collection directories), from the checked-in corpora (tests/fuzz), in their own Clang build directory.
CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHOAL_BUILD_FUZZ=ON \
  -DSHOAL_SANITIZE=address -DSHOAL_BUILD_TESTS=OFF -DSHOAL_BUILD_BENCHMARKS=OFF -DSHOAL_BUILD_EXAMPLES=OFF \
  -DSHOAL_WITH_CUDA=OFF -DSHOAL_INSTALL=OFF >/dev/null
cmake --build build-fuzz --target fuzz_load fuzz_files -j "$jobs"
ctest --test-dir build-fuzz --output-on-failure -L fuzz
