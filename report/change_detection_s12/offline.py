# Session 12 research script (not part of the package): see README.md in this folder.
"""Offline change detection on stored demo results (session 12 analysis, not shipped).

For each demo dir: read demo.h5 (columns with per-detection posteriors, tracks) and
truth_columns.csv; re-segment the Ce tracks with alternative rules; score with
atom3d.demo.temporal_scores.
"""
from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np

from atom3d.demo import temporal_scores
from atom3d.inference import tracking as T
from atom3d.inference.series import CHANGEPOINT_MIN_STEP, CHANGEPOINT_PENALTY
from atom3d.inference.tracking import depths_from_starts as _depths_from_starts
from atom3d.io.results import read_results

K = 22


def load(d: Path):
    # the results file: demo.h5 unless A3D_RESULTS names another (session 13)
    r = read_results(d / os.environ.get("A3D_RESULTS", "demo.h5"), load_maps=False)
    truth = {}
    with open(d / "truth_columns.csv") as h:
        for row in csv.DictReader(h):
            t = int(row["frame"])
            truth.setdefault(t, {"Ce": {"x": [], "y": [], "depth": []},
                                 "O": {"x": [], "y": [], "depth": []}})
            c = truth[t][row["species"]]
            c["x"].append(float(row["x_A"]))
            c["y"].append(float(row["y_A"]))
            c["depth"].append(int(row["depth"]))
    truth = [{sp: {k: np.asarray(v) for k, v in truth[t][sp].items()} for sp in ("Ce", "O")}
             for t in sorted(truth)]
    # the true drift: stored by atom3d demo since session 13 (truth_drift.csv); older
    # demo directories are named ..._s<seed> and their drift is re-drawn
    if (d / "truth_drift.csv").exists():
        drift = np.loadtxt(d / "truth_drift.csv", delimiter=",", skiprows=1)[:, 1:]
        return r, truth, drift.reshape(-1, 2)
    seed = int(d.name.split("_s")[-1])
    return r, truth, true_drift(seed, len(truth))


def true_drift(seed, n_frames, diameter_nm=3.0, drift_total_A=(2.5, -1.5)):
    """The demo's drift, reproduced from its random stream (see simulate_demo_series)."""
    from atom3d.structures.ceria import A_CEO2, lattice_sites
    from atom3d.structures.defects import remove_dangling_oxygen
    from atom3d.structures.shapes import particle_mask

    rng = np.random.default_rng(seed)
    diameter_A = 10.0 * diameter_nm
    half = 0.8 * diameter_A + A_CEO2
    sites = lattice_sites((1, 1, 0), (half, half, half))
    mask, _ = particle_mask(sites, rng, diameter_A=diameter_A, asymmetry=0.1,
                            p_flat_base=0.0, p_steps=0.0)
    remove_dangling_oxygen(sites, mask)
    ramp = np.linspace(0.0, 1.0, n_frames)[:, None] * np.asarray(drift_total_A)[None]
    jitter = rng.normal(0.0, 0.1, (n_frames, 2))
    jitter[0] = 0.0
    return ramp + jitter


def ce_tracks(r):
    cols = r["columns"]
    sel = np.flatnonzero(cols["species"] == "Ce")
    p = np.stack([cols[f"p_depth_{j + 1}"][sel].astype(np.float64) for j in range(K)], 1)
    p /= np.maximum(p.sum(1, keepdims=True), 1e-300)
    level = p @ np.arange(1, K + 1)
    var = p @ (np.arange(1, K + 1) ** 2) - level ** 2
    fd = np.argmax(p, 1) + 1
    tracks = {}
    for i, row in enumerate(sel):
        tracks.setdefault(int(cols["track"][row]), []).append((int(cols["frame"][row]), row,
                                                               level[i], fd[i], var[i]))
    out = {}
    for tr, v in tracks.items():
        v.sort()
        out[tr] = {"frames": np.array([a[0] for a in v]), "rows": np.array([a[1] for a in v]),
                   "level": np.array([a[2] for a in v]), "fd": np.array([a[3] for a in v]),
                   "var": np.array([a[4] for a in v])}
    return out


def sigma_of(tracks):
    d = np.concatenate([np.diff(t["level"]) for t in tracks.values() if len(t["level"]) > 1])
    return max(1.4826 * np.median(np.abs(d)) / np.sqrt(2), T.MIN_LEVEL_NOISE)


def rescore(r, truth, drift, tracks, depths_of):
    """Replace Ce depths and Ce depth_change events; keep the rest."""
    cols = dict(r["columns"])
    depth = cols["depth"].astype(np.int64).copy()
    ev = {k: list(v) for k, v in r["events"].items()}
    keep = [i for i in range(len(ev["frame"]))
            if not (ev["species"][i] == "Ce" and ev["kind"][i] == "depth_change")]
    ev = {k: [v[i] for i in keep] for k, v in ev.items()}
    for tr, t in tracks.items():
        d = depths_of(tr, t)
        depth[t["rows"]] = d
        for j in range(1, len(d)):
            if d[j] != d[j - 1]:
                new = {"frame": int(t["frames"][j]), "track": tr, "kind": "depth_change",
                       "species": "Ce", "depth_before": int(d[j - 1]),
                       "depth_after": int(d[j])}
                for k, v in new.items():
                    ev[k].append(v)
                for k in ev:
                    if len(ev[k]) < len(ev["frame"]):
                        ev[k].append(0.0)
    cols["depth"] = depth
    rr = {"columns": cols, "events": {k: np.asarray(v) for k, v in ev.items()}}
    return temporal_scores(rr, truth, drift)


def baseline_rule(penalty=CHANGEPOINT_PENALTY, min_step=CHANGEPOINT_MIN_STEP):
    def make(tracks):
        s = sigma_of(tracks)

        def f(tr, t):
            thr = penalty * s ** 2 * np.log(max(len(t["level"]), 2))
            return T.segment_track(t["level"], t["fd"], thr, 1, K, min_step)
        return f
    return make


if __name__ == "__main__":
    dirs = [Path(a) for a in sys.argv[1:]]
    for d in dirs:
        r, truth, drift = load(d)
        tracks = ce_tracks(r)
        s = baseline_rule()(tracks)
        print(d.name, rescore(r, truth, drift, tracks, s))


def optimal_partition(x, threshold, min_step=0.0, w=None):
    """Exact least-squares segmentation minimising SSE + threshold·(segments − 1)
    (optimal partitioning, O(n²)); adjacent segment means must differ by ≥ min_step
    (enforced by merging afterwards)."""
    x = np.asarray(x, float)
    n = len(x)
    w = np.ones(n) if w is None else np.asarray(w, float)
    cw = np.concatenate([[0], np.cumsum(w)])
    cx = np.concatenate([[0], np.cumsum(w * x)])
    cxx = np.concatenate([[0], np.cumsum(w * x * x)])

    def sse(a, b):
        sw = cw[b] - cw[a]
        return cxx[b] - cxx[a] - (cx[b] - cx[a]) ** 2 / sw

    F = np.full(n + 1, np.inf)
    F[0] = -threshold
    last = np.zeros(n + 1, int)
    for b in range(1, n + 1):
        best, arg = np.inf, 0
        for a in range(b):
            v = F[a] + threshold + sse(a, b)
            if v < best:
                best, arg = v, a
        F[b], last[b] = best, arg
    starts = []
    b = n
    while b > 0:
        a = last[b]
        if a > 0:
            starts.append(a)
        b = a
    starts = sorted(starts)
    # merge segments whose means differ by less than min_step
    changed = True
    while changed and starts:
        changed = False
        bounds = [0, *starts, n]
        means = [np.average(x[a:b], weights=w[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=False)]
        steps = np.abs(np.diff(means))
        j = int(np.argmin(steps))
        if steps[j] < min_step:
            starts.pop(j)
            changed = True
    return starts


def depths_from_starts(e, d0, starts, lowest=1, highest=K):
    return _depths_from_starts(e, d0, starts, lowest, highest)


def op_rule(penalty=CHANGEPOINT_PENALTY, min_step=CHANGEPOINT_MIN_STEP):
    def make(tracks):
        s = sigma_of(tracks)

        def f(tr, t):
            thr = penalty * s ** 2 * np.log(max(len(t["level"]), 2))
            st = optimal_partition(t["level"], thr, min_step)
            return depths_from_starts(t["level"], t["fd"], st)
        return f
    return make


def depth_sigma_rule(penalty=CHANGEPOINT_PENALTY, min_step=CHANGEPOINT_MIN_STEP, bins=(0, 4, 8, 12, 99)):
    """σ per bin of the track's median level (pooled over the series)."""
    def make(tracks):
        s_all = sigma_of(tracks)
        med = {tr: np.median(t["level"]) for tr, t in tracks.items()}
        sig = []
        for lo, hi in zip(bins[:-1], bins[1:], strict=False):
            d = [np.diff(t["level"]) for tr, t in tracks.items() if lo <= med[tr] < hi and len(t["level"]) > 1]
            d = np.concatenate(d) if d else np.zeros(0)
            sig.append(max(1.4826 * np.median(np.abs(d)) / np.sqrt(2), 0.05) if len(d) >= 20 else s_all)

        def f(tr, t):
            j = np.searchsorted(bins, med[tr], side="right") - 1
            s = sig[min(max(j, 0), len(sig) - 1)]
            thr = penalty * s ** 2 * np.log(max(len(t["level"]), 2))
            return T.segment_track(t["level"], t["fd"], thr, 1, K, min_step)
        f.sig = sig
        return f
    return make


def true_changes(truth, drift, species="Ce"):
    """Every true depth change: (t, i, before, after, drift-corrected xy) for column i of
    frame t whose depth differs in frame t + 1 (0 if it is gone there), followed by its
    drift-corrected position within 0.5 Å (as atom3d.demo.temporal_scores does)."""
    from scipy.spatial import cKDTree

    for t in range(len(truth) - 1):
        a, b = truth[t][species], truth[t + 1][species]
        xa = np.column_stack([a["x"], a["y"]]) - drift[t]
        xb = np.column_stack([b["x"], b["y"]]) - drift[t + 1]
        dist, j = cKDTree(xb).query(xa, distance_upper_bound=0.5)
        for i in range(len(xa)):
            da = int(a["depth"][i])
            db = int(b["depth"][j[i]]) if np.isfinite(dist[i]) else 0
            if da != db:
                yield t, i, da, db, xa[i]


def change_table(r, truth, drift, tracks):
    """Per true Ce change: frame t (change between t and t+1), depth before/after,
    E[k] step on the matched track (mean after - mean before, 2 frames each side), and
    the track's series σ-normalised step."""
    from atom3d.evaluation.metrics import match_columns
    cols = r["columns"]
    n = len(truth)
    matched = []
    for t in range(n):
        sel = np.flatnonzero((cols["frame"] == t) & (cols["species"] == "Ce"))
        true = truth[t]["Ce"]
        pi, ti = match_columns(np.column_stack([cols["x"][sel], cols["y"][sel]]),
                               np.column_stack([true["x"], true["y"]]), 1.0)
        matched.append({int(j): int(sel[i]) for i, j in zip(pi, ti, strict=False)})
    row_track = {}
    for tr, tk in tracks.items():
        for f, row, lv in zip(tk["frames"], tk["rows"], tk["level"], strict=False):
            row_track[int(row)] = (tr, int(f), lv)
    out = []
    for t, i, da, db, _ in true_changes(truth, drift):
        rec = {"t": t, "before": da, "after": db, "matched": i in matched[t]}
        if i in matched[t]:
            tr, f, _ = row_track[matched[t][i]]
            tk = tracks[tr]
            e, fr = tk["level"], tk["frames"]
            pre = e[(fr <= t) & (fr > t - 2)]
            post = e[(fr > t) & (fr <= t + 2)]
            rec.update(track=tr, step=(post.mean() - pre.mean()) if len(pre) and len(post) else np.nan,
                       n_track=len(e))
        out.append(rec)
    return out
