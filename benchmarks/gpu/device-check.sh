#!/usr/bin/env bash
# Issue 8's device checks in one call, for a session whose task is lent a GPU (docs/cuda.md "Running on a
# device"). The device image has nvcc and cuBLAS but none of the Debian packages shoal builds with, so
# the binaries are built here and travel with the libraries that image lacks.
#
#   benchmarks/gpu/device-check.sh pack   here: build test_cuda and shoal-gpu-bench (the release preset's
#                                         build/, CUDA found) and copy them, with the shared libraries
#                                         that are neither the C/C++ runtime nor CUDA's, into .gpu-pack/
#                                         (ignored by git; name it in the device call's `carry`)
#   benchmarks/gpu/device-check.sh run    there: the [gpu] tests (at most 2 minutes), shoal-gpu-bench's
#                                         whole grid (at most 6 minutes), then the smaller tests under
#                                         compute-sanitizer's memcheck and racecheck (where the runtime
#                                         allows them: 45 s and 90 s); logs and the benchmark's JSON into $OUT (else
#                                         ./gpu-results). A failing step is logged and the next one still
#                                         runs: device time is scarce. Arguments after `run` go to the
#                                         benchmark (e.g. --benchmark_filter=BM_ivf for a second call).
#   benchmarks/gpu/device-check.sh profile [FILTER]
#                                         there: Nsight Compute (ncu, clocks left alone) on one call of one
#                                         benchmark (default: the fp32 coarse pass at nq 16,384, nlist
#                                         65,536, d 128), each kernel's duration, into $OUT/ncu.txt: how
#                                         the pass splits between cuBLAS's GEMM tiles and merge_chunk.
#                                         Not yet tried on a device (written after session 22's calls).
set -euo pipefail
cd "$(dirname "$0")/../.."
pack=.gpu-pack

case "${1:-}" in
pack)
  cmake --build build --target test_cuda shoal-gpu-bench
  rm -rf "$pack"
  mkdir -p "$pack/lib"
  cp build/tests/test_cuda build/benchmarks/shoal-gpu-bench "$pack/"
  ldd "$pack/test_cuda" "$pack/shoal-gpu-bench" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u |
    grep -Ev '/usr/local/cuda|/(libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+|ld-linux[^/]*)\.so' |
    while read -r lib; do cp -L "$lib" "$pack/lib/"; done
  grep -qx "/$pack/" .git/info/exclude 2>/dev/null || echo "/$pack/" >>.git/info/exclude
  ls "$pack/lib"
  du -sh "$pack"
  ;;
run)
  out=${OUT:-gpu-results}
  mkdir -p "$out"
  export LD_LIBRARY_PATH="$PWD/$pack/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}" PATH="$PATH:/usr/local/cuda/bin"
  { nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv || true; nproc; } |
    tee "$out/device.txt"
  # The [gpu] tests fail, rather than check the no-device path, if CUDA cannot start here.
  export SHOAL_REQUIRE_GPU=1
  # CUDA's libraries where the image keeps them, if not under /usr/local/cuda.
  if ldd "$pack/test_cuda" | grep -q "libcublas.*not found"; then
    for lib in $(find /usr /opt -name 'libcublas.so.1*' 2>/dev/null | head -3); do
      LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$(dirname "$lib")"
    done
  fi
  ldd "$pack/test_cuda" "$pack/shoal-gpu-bench" | grep "not found" | tee -a "$out/device.txt" || true
  timeout 120 "$pack/test_cuda" --durations yes 2>&1 | tee "$out/test_cuda.txt" || echo "test_cuda FAILED" | tee -a "$out/test_cuda.txt"
  timeout 360 "$pack/shoal-gpu-bench" --benchmark_min_time=0.2 --benchmark_out="$out/gpu-bench.json" \
    --benchmark_out_format=json "${@:2}" 2>&1 | tee "$out/gpu-bench.txt" || echo "shoal-gpu-bench FAILED or cut" |
    tee -a "$out/gpu-bench.txt"
  # Last, on the small tests only (the sanitizers slow kernels down by orders of magnitude).
  for check in memcheck:45 racecheck:90; do
    tool=${check%:*}
    timeout "${check#*:}" compute-sanitizer --tool "$tool" --error-exitcode 1 "$pack/test_cuda" "~[heavy]" 2>&1 |
      tail -40 | tee "$out/sanitizer-$tool.txt" || echo "compute-sanitizer $tool FAILED" | tee -a "$out/sanitizer-$tool.txt"
  done
  ;;
profile)
  out=${OUT:-gpu-results}
  mkdir -p "$out"
  export LD_LIBRARY_PATH="$PWD/$pack/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}" PATH="$PATH:/usr/local/cuda/bin"
  filter=${2:-'^BM_coarse_probe/nq:16384/nlist:65536/d:128/'}
  # One iteration (min time 0), the first 400 kernels: one probe call at that point is 144 GEMM tiles and
  # 144 selects, after the norms of construction.
  timeout 300 ncu --clock-control none --launch-count 400 --metrics gpu__time_duration.sum --csv --print-units base \
    "$pack/shoal-gpu-bench" --benchmark_filter="$filter" --benchmark_min_time=0 >"$out/ncu.txt" 2>&1 ||
    echo "ncu FAILED or cut" | tee -a "$out/ncu.txt"
  # Durations (ns) summed per kernel name.
  awk -F'","' '/gpu__time_duration.sum/ {gsub(/[",]/, "", $NF); t[$5] += $NF; n[$5]++}
    END {for (k in t) printf "%10.1f us %5d launches  %s\n", t[k] / 1000, n[k], k}' "$out/ncu.txt" |
    sort -rn | tee "$out/ncu-summary.txt"
  ;;
*)
  echo "usage: $0 pack | run [shoal-gpu-bench options] | profile [benchmark filter]" >&2
  exit 2
  ;;
esac
