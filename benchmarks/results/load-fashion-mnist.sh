D=../shared/data/fashion-mnist
B="build/benchmarks/shoal-ann-bench --base $D/fashion-mnist_base.fvecs --query $D/fashion-mnist_query.fvecs --gt $D/fashion-mnist_groundtruth_l2.ivecs --metric l2 --k 10 --min-time 1 --max-query 2000"
declare -A SW=( [Flat]="" [HNSW16]="--sweep ef=16" ["IVF1024_HNSW32,Flat"]="--sweep nprobe=16" ["IVF980,PQ392x4fs,Refine(Flat)"]="--sweep nprobe=8 --sweep refine=4" )
declare -A F=( [Flat]=flat [HNSW16]=hnsw16 ["IVF1024_HNSW32,Flat"]=ivfhnsw ["IVF980,PQ392x4fs,Refine(Flat)"]=ivfpq )
for spec in Flat "IVF1024_HNSW32,Flat" "IVF980,PQ392x4fs,Refine(Flat)" HNSW16; do
  f=/tmp/${F[$spec]}.shoal
  [[ -f $f ]] || $B --index "$spec" ${SW[$spec]} --save $f --max-query 200 --min-time 0.1 | tail -1
  for mode in "" "--mmap"; do
    dd if=$f iflag=nocache count=0 status=none
    echo "# $spec load $mode cold"; $B --index "$spec" ${SW[$spec]} --load $f $mode | tail -1
    echo "# $spec load $mode warm"; $B --index "$spec" ${SW[$spec]} --load $f $mode | tail -1
  done
done
