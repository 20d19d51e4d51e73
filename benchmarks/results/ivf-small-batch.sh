#!/usr/bin/env bash
# IVF4096,Flat on fashion-mnist (60,000 x 784, L2, nprobe 16), searched in one batch of 64 and of 256
# queries on 2 threads, side by side with FAISS's IndexIVFFlat (3 interleaved rounds): the CPU coarse
# pass of batches smaller than a thread's share of 256-point blocks. Run from the repository root:
#   benchmarks/results/ivf-small-batch.sh [path/to/shoal-ann-bench built with FAISS]   (default build-faiss/)
set -euo pipefail
bench=${1:-build-faiss/benchmarks/shoal-ann-bench}
data=../shared/data/fashion-mnist
for nq in 64 256; do
  "$bench" --base "$data/fashion-mnist_base.fvecs" --query "$data/fashion-mnist_query.fvecs" \
    --gt "$data/fashion-mnist_groundtruth_l2.ivecs" --metric l2 --k 10 --index IVF4096,Flat --sweep nprobe=16 \
    --max-query "$nq" --batch --threads 2 --peer faiss --rounds 3 | grep -v '^library'
done
