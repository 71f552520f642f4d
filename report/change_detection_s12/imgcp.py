# Session 12 research script (not part of the package): see README.md in this folder.
"""Prototype: change points from radial intensity profiles around each Ce track."""
import sys
from pathlib import Path

import numpy as np
import tifffile
from offline import ce_tracks, depths_from_starts, load, rescore, sigma_of

from atom3d.inference import tracking as T

PIX = 0.2
EDGES = np.array([0.0, 0.3, 0.6, 0.9, 1.2, 1.5])


def profiles(d, r, tracks):
    frames = tifffile.imread(d / "demo_series.tif").astype(np.float64)
    frames /= frames.mean(axis=(1, 2), keepdims=True)
    fr = r["frames"]
    drift = np.column_stack([fr["drift_x"], fr["drift_y"]]).astype(np.float64)
    cols = r["columns"]
    n, h, w = frames.shape
    out = {}
    for tr, t in tracks.items():
        xs = cols["x"][t["rows"]] - drift[t["frames"], 0]
        ys = cols["y"][t["rows"]] - drift[t["frames"], 1]
        x0, y0 = np.median(xs), np.median(ys)
        prof = np.zeros((len(t["frames"]), len(EDGES) - 1))
        cnt = np.zeros(len(EDGES) - 1)
        for i, f in enumerate(t["frames"]):
            cx, cy = x0 + drift[f, 0], y0 + drift[f, 1]
            c0, r0 = int(cx / PIX), int(cy / PIX)
            rr, cc = np.mgrid[max(r0 - 9, 0):min(r0 + 10, h), max(c0 - 9, 0):min(c0 + 10, w)]
            dist = np.hypot(cc * PIX - cx, rr * PIX - cy)
            b = np.digitize(dist, EDGES) - 1
            vals = frames[f][rr, cc]
            for k in range(len(EDGES) - 1):
                m = b == k
                prof[i, k] = vals[m].mean() if m.any() else np.nan
                cnt[k] = m.sum()
        out[tr] = prof
    return out


def standardise(profs):
    """Divide each bin's series by the series-wide robust σ of its first differences."""
    diffs = np.concatenate([np.diff(p, axis=0) for p in profs.values() if len(p) > 1])
    s = 1.4826 * np.nanmedian(np.abs(diffs), axis=0) / np.sqrt(2)
    return {tr: p / s for tr, p in profs.items()}, s


def mv_segment_starts(y, threshold):
    """Binary segmentation of a (n, d) sequence: gain summed over dimensions."""
    y = np.asarray(y, float)
    out, stack = [], [(0, len(y))]
    while stack:
        lo, hi = stack.pop()
        n = hi - lo
        if n < 2:
            continue
        left = np.cumsum(y[lo:hi] - y[lo:hi].mean(0), axis=0)[:-1]
        k = np.arange(1, n, dtype=float)[:, None]
        gain = (left ** 2 * n / (k * (n - k))).sum(1)
        j = int(np.argmax(gain))
        if gain[j] > threshold:
            out.append(lo + j + 1)
            stack += [(lo, lo + j + 1), (lo + j + 1, hi)]
    return sorted(out)


def img_rule(std_profs, penalty, combine=None, ek_penalty=2.4, min_step=0.4, need_ek_step=0.0):
    def make(tracks):
        s = sigma_of(tracks)

        def f(tr, t):
            L = len(t["level"])
            starts = set(mv_segment_starts(std_profs[tr], penalty * np.log(max(L, 2))))
            if combine == "union":
                thr = ek_penalty * s ** 2 * np.log(max(L, 2))
                starts |= set(T.segment_starts(t["level"], thr, min_step))
            starts = sorted(starts)
            if need_ek_step > 0 and starts:  # keep splits whose E[k] means differ enough
                keep = []
                b = [0, *starts, L]
                for i, st in enumerate(starts):
                    a, c = b[i], b[i + 2]
                    if abs(t["level"][st:c].mean() - t["level"][a:st].mean()) >= need_ek_step:
                        keep.append(st)
                starts = keep
            return depths_from_starts(t["level"], t["fd"], starts)
        return f
    return make


def total(data, make_rule):
    """Changes reported, flicker and the worst series' flicker over several series."""
    reported = true = flickers = steady = 0
    worst = 0.0
    for _d, r, truth, drift, tracks, sp in data:
        sc = rescore(r, truth, drift, tracks, make_rule(sp)(tracks))
        reported += sc["changes_reported"]
        true += sc["changes_true"]
        flickers += sc["flickers"]
        steady += sc["steady_pairs"]
        worst = max(worst, sc["flicker"])
    return (f"{reported}/{true} ({reported / true:.0%}) flicker {flickers / steady:.1%} "
            f"worst {worst:.1%}")


def main(dirs, grid):
    from offline import baseline_rule

    data = []
    for d in dirs:
        r, truth, drift = load(d)
        tracks = ce_tracks(r)
        sp, s = standardise(profiles(d, r, tracks))
        print(d.name, "bin sigma", np.round(s, 4), flush=True)
        data.append((d, r, truth, drift, tracks, sp))
    print("baseline (E[k], penalty 2.4, step 0.4)", total(data, lambda sp: baseline_rule()))
    for pen, need in grid:
        print(f"image profiles, penalty {pen}, E[k] step {need}",
              total(data, lambda sp, pen=pen, need=need: img_rule(sp, pen, need_ek_step=need)))


if __name__ == "__main__":
    import os

    grid = [(float(a), float(b)) for a, b in (
        x.split(":") for x in os.environ.get("GRID", "4:0.2").split(","))]
    main([Path(a) for a in sys.argv[1:]], grid)
