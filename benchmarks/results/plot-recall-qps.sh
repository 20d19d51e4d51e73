#!/usr/bin/env bash
# Draws recall@10 (x) against QPS (log y) from shoal-ann-bench CSVs, one line per (file, library):
#   bash plot-recall-qps.sh OUT.png TITLE FILE LIBRARY LABEL [FILE LIBRARY LABEL ...]
# Points are joined in recall order (a sweep over two knobs is not monotone in its own order).
set -euo pipefail
out=$1 title=$2
shift 2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmds=()
i=0
while (($#)); do
  awk -F, -v lib="$2" 'NR > 1 && $1 == lib { print $(NF-4), $(NF-3) }' "$1" | sort -g > "$tmp/$i.dat"
  cmds+=("'$tmp/$i.dat' using 1:2 with linespoints title '$3'")
  shift 3
  i=$((i + 1))
done
gnuplot <<GP
set terminal pngcairo size 900,600 noenhanced
set output '$out'
set title '$title'
set xlabel 'recall@10'
set ylabel 'queries per second (one thread)'
set logscale y
set grid
set key bottom left
plot $(IFS=,; echo "${cmds[*]}")
GP
