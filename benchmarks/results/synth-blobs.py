#!/usr/bin/env python3
"""Writes the generated data set of BENCHMARKS.md's grouped-bounds k-means rows (session 12): 300,000
float32 vectors of 128 dimensions drawn around 2,000 Gaussian centres (centre coordinates N(0, 4²),
each centre's own spread uniform in [0.5, 2]), seed 5, as .fvecs.

    /usr/bin/python3 benchmarks/results/synth-blobs.py /tmp/synth300k.fvecs
"""
import sys

import numpy as np

rng = np.random.default_rng(5)
n, d, c = 300_000, 128, 2_000
centres = rng.normal(0, 1, (c, d)).astype(np.float32) * 4
spread = rng.uniform(0.5, 2.0, c).astype(np.float32)
label = rng.integers(0, c, n)
x = (centres[label] + rng.normal(0, 1, (n, d)).astype(np.float32) * spread[label, None]).astype(np.float32)
out = np.empty((n, d + 1), dtype=np.float32)
out[:, 0] = np.frombuffer(np.int32(d).tobytes(), dtype=np.float32)[0]
out[:, 1:] = x
out.tofile(sys.argv[1])
