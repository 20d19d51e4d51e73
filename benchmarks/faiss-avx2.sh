#!/usr/bin/env bash
# Builds FAISS's AVX2 library from Debian's own source package, so that the FAISS peer of shoal-ann-bench
# and shoal-kmeans-bench can be measured with real SIMD fast-scan kernels.
#
# Why: Debian's binary libfaiss-dev is a generic (SSE) build whose 4-bit fast-scan is emulated, tens of
# times slower than the AVX2 build FAISS ships through conda; beating it proves nothing (issue 4). The
# source package is the same FAISS (1.7.3 on Debian 12, with Debian's patches); only the target differs:
# FAISS's own `faiss_avx2` library (-mavx2 -mfma -mf16c -mpopcnt, FAISS_OPT_LEVEL=avx2).
#
#   bash benchmarks/faiss-avx2.sh [PREFIX]          # default PREFIX /opt/faiss-avx2; as root (apt-get)
#   cmake -S . -B build-faiss -DCMAKE_BUILD_TYPE=Release -Dfaiss_DIR=PREFIX/lib/cmake/faiss
#   cmake --build build-faiss --target shoal-ann-bench
#
# The prefix holds FAISS's headers, libfaiss_avx2.so and a small CMake package that names it `faiss`, the
# target the benchmarks link, so nothing else changes. shoal-ann-bench prints FAISS's compile options
# (`faiss::get_compile_options()`: "AVX2" for this build) on stderr. About 6 minutes on 2 cores.
set -euo pipefail
prefix=${1:-/opt/faiss-avx2}
work=${FAISS_AVX2_WORK:-/tmp/faiss-avx2-src}

# The source package needs a deb-src line; Debian 12 images ship only binary ones.
if ! apt-get source --print-uris faiss/bookworm >/dev/null 2>&1; then
  cat >/etc/apt/sources.list.d/shoal-faiss-src.sources <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  apt-get update -qq
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dpkg-dev cmake ninja-build g++ libopenblas-dev \
  liblapack-dev >/dev/null

rm -rf "$work" && mkdir -p "$work" && cd "$work"
apt-get source -qq faiss/bookworm >/dev/null  # unpacks and applies Debian's patches
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'faiss-*' | head -n 1)
cmake -S "$src" -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DBUILD_TESTING=OFF \
  -DFAISS_OPT_LEVEL=avx2 -DFAISS_ENABLE_GPU=OFF -DFAISS_ENABLE_PYTHON=OFF -DFAISS_ENABLE_C_API=OFF >/dev/null
cmake --build build --target faiss_avx2

# FAISS's install rule also wants the generic library; install the AVX2 one and the headers by hand.
mkdir -p "$prefix/lib/cmake/faiss" "$prefix/include"
cp -P build/faiss/libfaiss_avx2.so* "$prefix/lib/"
(cd "$src" && find faiss -name '*.h' -not -path 'faiss/gpu/*' -exec cp --parents {} "$prefix/include/" \;)
cat >"$prefix/lib/cmake/faiss/faiss-config.cmake" <<'EOF'
# FAISS's AVX2 library from Debian's source package (benchmarks/faiss-avx2.sh in shoal), as target `faiss`.
get_filename_component(_faiss_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
if(NOT TARGET faiss)
  add_library(faiss SHARED IMPORTED)
  set_target_properties(faiss PROPERTIES
    IMPORTED_LOCATION "${_faiss_prefix}/lib/libfaiss_avx2.so"
    INTERFACE_INCLUDE_DIRECTORIES "${_faiss_prefix}/include")
endif()
set(faiss_FOUND TRUE)
EOF
echo "FAISS AVX2 installed in $prefix; configure shoal with -Dfaiss_DIR=$prefix/lib/cmake/faiss"
