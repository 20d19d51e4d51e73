#!/usr/bin/env python3
"""Writes the generated million-vector set of BENCHMARKS.md's session 13 IVF-PQ rows: 1,000,000 base and
1,000 held-out query float32 vectors of 128 dimensions, each drawn from one of 20,000 clusters (centre
coordinates N(0, 3²)); a cluster spans its own random 16-dimensional subspace (offsets 1.5 · z · B, z ~
N(0, I₁₆), B random 16 × 128 with rows of expected norm 1) plus isotropic noise N(0, 0.3²). Seed 7.

    /usr/bin/python3 benchmarks/results/synth-1m.py /tmp/s1m-base.fvecs /tmp/s1m-query.fvecs
"""
import sys

import numpy as np

rng = np.random.default_rng(7)
n, nq, d, c, r = 1_000_000, 1_000, 128, 20_000, 16
centres = rng.normal(0, 1, (c, d)).astype(np.float32) * 3
bases = rng.normal(0, 1, (c, r, d)).astype(np.float32) / np.sqrt(r)


def generate(m, path):
    label = rng.integers(0, c, m)
    out = np.empty((m, d + 1), dtype=np.float32)
    out[:, 0] = np.frombuffer(np.int32(d).tobytes(), dtype=np.float32)[0]
    for s in range(0, m, 50_000):
        lab = label[s:s + 50_000]
        z = rng.normal(0, 1, (len(lab), r)).astype(np.float32)
        x = centres[lab] + np.einsum('nr,nrd->nd', z, bases[lab]) * 1.5 + \
            rng.normal(0, 0.3, (len(lab), d)).astype(np.float32)
        out[s:s + len(lab), 1:] = x
    out.tofile(path)


generate(n, sys.argv[1])
generate(nq, sys.argv[2])
