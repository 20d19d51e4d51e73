#!/bin/bash
# usage: par.sh ROUNDS A_BIN B_BIN -- bench args ; runs A and B at the same time on cpu 0/1 (swapped each round)
rounds=$1; a=$2; b=$3; shift 4
for r in $(seq $rounds); do
  if (( r % 2 )); then ca=0; cb=1; else ca=1; cb=0; fi
  taskset -c $ca $a "$@" 2>/dev/null | grep "^shoal" | sed "s/^/A,$r,/" > /tmp/par-a.txt &
  taskset -c $cb $b "$@" 2>/dev/null | grep "^shoal" | sed "s/^/B,$r,/" > /tmp/par-b.txt &
  wait
  cat /tmp/par-a.txt /tmp/par-b.txt
done | /usr/bin/python3 -c "
import sys,csv,collections,math
q=collections.defaultdict(dict); rec={}
for r in csv.reader(sys.stdin):
    q[r[4]][(r[0],int(r[1]))]=float(r[8]); rec[r[4]]=r[7]
for p in sorted(q):
    d=q[p]; rs=sorted({k[1] for k in d})
    ratios=[d[('B',r)]/d[('A',r)] for r in rs if ('A',r) in d and ('B',r) in d]
    g=math.exp(sum(map(math.log,ratios))/len(ratios))
    print(p,'recall',rec[p],'B/A geo-mean %.3f'%g,'A',[round(d[('A',r)]) for r in rs],'B',[round(d[('B',r)]) for r in rs])
"
