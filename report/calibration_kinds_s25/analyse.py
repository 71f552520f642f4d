"""Why the 8-pass confidence is over-confident on profile crystals, and what would fix it.

    python report/calibration_kinds_s25/analyse.py data/cols_test2.npz

Reads ``report/depth_errors_s25/collect.py`` output for a mixed store (isolated particles
and crystals with a surface in profile). Prints the Ce ECE (10 bins, as ``atom3d
evaluate``) overall and per kind with the shipped confidences; the reliability per kind
and predicted-depth band; and, cross-validated over halves of the structures, the ECE
after one extra isotonic map fitted per group, for groupings a predictor could know
(predicted depth band; frame-level features of the predicted columns) and for the true
kind (an oracle).
"""
from __future__ import annotations

import sys

import numpy as np
from scipy.spatial import cKDTree

from atom3d.evaluation.metrics import ece
from atom3d.training.calibration import fit_confidence_map


def frame_features(meta: np.ndarray) -> dict[str, np.ndarray]:
    """Per column, features of its frame's predicted Ce columns."""
    out = {k: np.zeros(len(meta)) for k in ("same_depth_nb", "frame_mode_frac", "frame_max",
                                              "frame_std")}
    for i in np.unique(meta[:, 0]):
        s = np.flatnonzero(meta[:, 0] == i)
        d = meta[s, 4]
        xy = meta[s, 2:4]
        nb = cKDTree(xy).query_ball_point(xy, 3.9)
        out["same_depth_nb"][s] = [np.mean(d[[j for j in n if j != k]] == d[k])
                                   if len(n) > 1 else 0 for k, n in enumerate(nb)]
        vals, counts = np.unique(d, return_counts=True)
        out["frame_mode_frac"][s] = counts.max() / len(d)
        out["frame_max"][s] = d.max()
        out["frame_std"][s] = d.std()
    return out


def cv_ece(conf, ok, groups, struct):
    """ECE after an isotonic map per group, fitted on one half of the structures and
    applied to the other (both ways), pooled."""
    new = np.empty_like(conf)
    for r in (0, 1):
        fit, app = struct % 2 == r, struct % 2 != r
        for g in np.unique(groups):
            f, a = fit & (groups == g), app & (groups == g)
            if a.any():
                if f.sum() < 200:
                    new[a] = conf[a]
                    continue
                knots = fit_confidence_map(conf[f], ok[f])
                new[a] = np.interp(conf[a], knots["confidence"], knots["accuracy"])
    return new


def main(path: str) -> None:
    z = np.load(path)
    meta = z["Ce_meta"]
    meta = meta[meta[:, 7] >= 0]
    kinds = z["structure_kind"]
    struct = meta[:, 1].astype(int)
    kind = kinds[struct].astype(int)
    conf, ok = meta[:, 5], (meta[:, 4] == meta[:, 7]).astype(float)
    print(f"Ce matched columns {len(meta)}; ECE all {ece(conf, ok):.3f}; "
          + "; ".join(f"kind {k}: {ece(conf[kind == k], ok[kind == k]):.3f} "
                      f"(n {np.sum(kind == k)}, mean conf {conf[kind == k].mean():.3f}, "
                      f"accuracy {ok[kind == k].mean():.3f})" for k in (0, 1)))
    print("by predicted depth band: kind, n, mean confidence, accuracy")
    for lo, hi in ((1, 5), (5, 9), (9, 13), (13, 17), (17, 23)):
        for k in (0, 1):
            s = (kind == k) & (meta[:, 4] >= lo) & (meta[:, 4] < hi)
            if s.sum() > 50:
                print(f"  {lo}-{hi - 1} kind {k}: {s.sum():6d} {conf[s].mean():.3f} {ok[s].mean():.3f}")
    for k in (0, 1):
        gaps = [conf[(struct == s) & (kind == k)].mean() - ok[(struct == s) & (kind == k)].mean()
                for s in np.unique(struct[kind == k])]
        print(f"kind {k}: {len(gaps)} structures; confidence - accuracy per structure: mean "
              f"{np.mean(gaps):+.3f}, std {np.std(gaps):.3f}, range {np.min(gaps):+.3f} to "
              f"{np.max(gaps):+.3f}")
    f = frame_features(meta)
    for name, v in f.items():
        print(f"feature {name}: particles median {np.median(v[kind == 0]):.3f}, "
              f"profile median {np.median(v[kind == 1]):.3f}")
    band = np.digitize(meta[:, 4], [9, 13])
    candidates = {
        "one map (refit on all)": np.zeros(len(meta), int),
        "oracle kind": kind,
        "predicted depth band (<9, 9-12, >=13)": band,
        "frame mode fraction >= 0.3": (f["frame_mode_frac"] >= 0.3).astype(int),
        "same-depth neighbours >= 0.5": (f["same_depth_nb"] >= 0.5).astype(int),
    }
    for name, g in candidates.items():
        new = cv_ece(conf, ok, g, struct)
        print(f"{name}: ECE all {ece(new, ok):.3f}, particles {ece(new[kind == 0], ok[kind == 0]):.3f}, "
              f"profile {ece(new[kind == 1], ok[kind == 1]):.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
