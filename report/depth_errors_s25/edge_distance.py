"""Exact Ce depth by distance to the particle edge and by true depth (>= 1000 e/Å²).

    python report/depth_errors_s25/edge_distance.py data/cols_particles.npz

Distance: from the column to the edge of the convex hull of the true columns of its
image [Å]. Tests whether columns far from vacuum (beyond the network's view of the
vacuum level) are read worse at the same depth.
"""
from __future__ import annotations

import sys

import numpy as np
from scipy.spatial import ConvexHull

DEPTHS = ((2, 5), (5, 8), (8, 11), (11, 14), (14, 17))
DISTANCES = ((0, 5), (5, 10), (10, 15), (15, 20), (20, 30))


def main(path: str) -> None:
    z = np.load(path)
    meta, truth = z["Ce_meta"], z["truth"]
    names = list(z["param_names"])
    dose_of = dict(zip(z["indices"].tolist(),
                       z["params"][:, names.index("dose_e_per_A2")].tolist(), strict=True))
    meta = meta[meta[:, 7] >= 0]
    dist = np.zeros(len(meta))
    for i in np.unique(meta[:, 0]):
        eq = ConvexHull(truth[truth[:, 0] == i][:, 3:5]).equations  # n·x + d <= 0 inside
        sel = meta[:, 0] == i
        dist[sel] = np.min(-(meta[sel][:, 2:4] @ eq[:, :2].T + eq[:, 2]), axis=1)
    true, pred = meta[:, 7].astype(int), meta[:, 4].astype(int)
    hi = np.array([dose_of[int(i)] for i in meta[:, 0]]) >= 1000
    print("exact (columns) by distance to the edge [Å] (rows) and true depth (columns)")
    print("distance", *[f"{a}-{b - 1}" for a, b in DEPTHS])
    for lo, up in DISTANCES:
        s = (dist >= lo) & (dist < up) & hi
        row = []
        for a, b in DEPTHS:
            ss = s & (true >= a) & (true < b)
            row.append(f"{np.mean(pred[ss] == true[ss]):.2f}({ss.sum()})" if ss.sum() >= 30 else "-")
        print(f"{lo}-{up}", *row)
    print("depth 8-13: distance, columns, mean signed error, MAE")
    for lo, up in DISTANCES:
        ss = (dist >= lo) & (dist < up) & hi & (true >= 8) & (true < 14)
        if ss.sum() > 30:
            e = pred[ss] - true[ss]
            print(lo, up, ss.sum(), round(e.mean(), 3), round(np.abs(e).mean(), 3))


if __name__ == "__main__":
    main(sys.argv[1])
