#!/usr/bin/env bash
# Draws the session-8 HNSW plots (recall x, QPS log y) from the hnsw-s8-*.csv files of this directory:
#   bash benchmarks/results/hnsw-s8-plot.sh
set -euo pipefail
cd "$(dirname "$0")"
plot() { bash plot-recall-qps.sh "$@"; }  # OUT TITLE then (FILE LIBRARY LABEL)...
plot hnsw16-bigann10k.png "bigann10k, M 16, ef_construction 200 (session 8, final code; alpha 1 from the run before)" \
  hnsw-s8-bg16sq8-alpha-r1-final.csv hnswlib "hnswlib (round 1)" hnsw-s8-bg16sq8-alpha-r2-final.csv hnswlib "hnswlib (round 2)" \
  hnsw-s8-bg16sq8-alpha-r3-final.csv hnswlib "hnswlib (round 3)" \
  hnsw-s8-bg16-r1-late.csv shoal "shoal HNSW16 (earlier run)" \
  hnsw-s8-bg16-alpha-r1-final.csv shoal "shoal HNSW16 alpha 1.3 (round 1)" hnsw-s8-bg16-alpha-r2-final.csv shoal "shoal HNSW16 alpha 1.3 (round 2)" \
  hnsw-s8-bg16-alpha-r3-final.csv shoal "shoal HNSW16 alpha 1.3 (round 3)" \
  hnsw-s8-bg16sq8-alpha-r1-final.csv shoal "shoal HNSW16,SQ8 alpha 1.3 (round 1)" hnsw-s8-bg16sq8-alpha-r2-final.csv shoal "shoal HNSW16,SQ8 alpha 1.3 (round 2)" \
  hnsw-s8-bg16sq8-alpha-r3-final.csv shoal "shoal HNSW16,SQ8 alpha 1.3 (round 3)"
plot hnsw32-bigann10k.png "bigann10k, M 32, ef_construction 200 (session 8, after the branch-free visited filter)" \
  hnsw-s8-bg32sq8-alpha-r1-late.csv hnswlib "hnswlib (round 1)" hnsw-s8-bg32sq8-alpha-r2-late.csv hnswlib "hnswlib (round 2)" \
  hnsw-s8-bg32-alpha-r1-late.csv shoal "shoal HNSW32 alpha 1.3 (round 1)" hnsw-s8-bg32-alpha-r2-late.csv shoal "shoal HNSW32 alpha 1.3 (round 2)" \
  hnsw-s8-bg32sq8-alpha-r1-late.csv shoal "shoal HNSW32,SQ8 alpha 1.3 (round 1)" hnsw-s8-bg32sq8-alpha-r2-late.csv shoal "shoal HNSW32,SQ8 alpha 1.3 (round 2)"
plot hnsw16-fashion-mnist.png "fashion-mnist, M 16, ef_construction 200 (session 8, Sapphire Rapids VM)" \
  hnsw-s8-fm16-alpha-r1.csv hnswlib "hnswlib (round 1)" hnsw-s8-fm16-alpha-r2.csv hnswlib "hnswlib (round 2)" \
  hnsw-s8-fm16-r1.csv hnswlib "hnswlib (round 3)" hnsw-s8-fm16-r2.csv hnswlib "hnswlib (round 4)" \
  hnsw-s8-fm16-r1.csv shoal "shoal HNSW16 (round 3)" hnsw-s8-fm16-r2.csv shoal "shoal HNSW16 (round 4)" \
  hnsw-s8-fm16sq8-r1.csv shoal "shoal HNSW16,SQ8 (round 3)" hnsw-s8-fm16sq8-r2.csv shoal "shoal HNSW16,SQ8 (round 4)" \
  hnsw-s8-fm16-alpha-r1.csv shoal "shoal HNSW16 alpha 1.2 (round 1)" hnsw-s8-fm16-alpha-r2.csv shoal "shoal HNSW16 alpha 1.2 (round 2)" \
  hnsw-s8-fm16sq8-alpha-r1.csv shoal "shoal HNSW16,SQ8 alpha 1.2 (round 1)" hnsw-s8-fm16sq8-alpha-r2.csv shoal "shoal HNSW16,SQ8 alpha 1.2 (round 2)"
