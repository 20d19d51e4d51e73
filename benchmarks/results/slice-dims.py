#!/usr/bin/env python3
"""Cuts dimensions [first, first + count) out of an .fvecs file, as one PQ sub-space sees them:

    /usr/bin/python3 benchmarks/results/slice-dims.py IN.fvecs OUT.fvecs FIRST COUNT

docs/ivf.md's empty-cluster figures use fashion-mnist dims 392-393 and 392-399 (FIRST 392, COUNT 2 / 8),
then `shoal-kmeans-bench OUT.fvecs 256 25 1` (random initialisation, against FAISS in the same run).
"""
import sys

import numpy as np

src, dst, first, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
raw = np.fromfile(src, dtype=np.int32)
dim = int(raw[0])
rows = raw.reshape(-1, dim + 1)[:, 1:].view(np.float32)[:, first:first + count]
out = np.empty((rows.shape[0], count + 1), dtype=np.float32)
out[:, 0] = np.frombuffer(np.int32(count).tobytes(), dtype=np.float32)[0]
out[:, 1:] = rows
out.tofile(dst)
