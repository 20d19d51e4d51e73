#!/usr/bin/env bash
# Draws the session-15 IVF-PQ plots (shoal against FAISS 1.7.3's AVX2 build, same runs) from the
# ivfpq-faiss-avx2-s15-*.csv files of this directory:  bash benchmarks/results/ivfpq-s15-plot.sh
set -euo pipefail
cd "$(dirname "$0")"
bash plot-recall-qps.sh ivfpq-bigann10k.png \
  "bigann10k, IVF100,PQ64x4fs,Refine(Flat), nprobe 2-12, refine 2/4 (session 15, AMD EPYC VM, AVX2)" \
  ivfpq-faiss-avx2-s15-bigann10k.csv shoal "shoal (run 1)" ivfpq-faiss-avx2-s15-bigann10k-b.csv shoal "shoal (run 2)" \
  ivfpq-faiss-avx2-s15-bigann10k.csv faiss "FAISS 1.7.3 AVX2 (run 1)" ivfpq-faiss-avx2-s15-bigann10k-b.csv faiss "FAISS 1.7.3 AVX2 (run 2)"
bash plot-recall-qps.sh ivfpq-fashion-mnist.png \
  "fashion-mnist, IVF980,PQ392x4fs,Refine(Flat), nprobe 3-12, refine 2/4 (session 15, AMD EPYC VM, AVX2)" \
  ivfpq-faiss-avx2-s15-fashion-mnist.csv shoal "shoal" ivfpq-faiss-avx2-s15-fashion-mnist.csv faiss "FAISS 1.7.3 AVX2"
