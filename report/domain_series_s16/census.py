# Session 16 research script (not part of the package): see README.md in this folder.
"""Where the Ce change detection of a stored series goes wrong.

For each series directory (``demo.h5`` or ``$A3D_RESULTS``, ``truth_*.csv``): every
missed true change (as :func:`atom3d.demo.temporal_scores` counts them) is classified as
not detected in its frame, on a track broken at the change, on a track with no event,
with an event of the wrong sign or kind within the scoring window, or with events only
elsewhere; every flicker (a steady true column whose reported depth changes) as within
one track (a false cut) or across a track switch, with the distance to the nearest true
Ce change and whether an O column within 1.7 Å changed at the same time.

    python census.py DIR [DIR ...]
"""
import collections
import sys
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "change_detection_s12"))
from offline import load  # noqa: E402

from atom3d.demo import MATCH_DIST_A  # noqa: E402
from atom3d.evaluation.metrics import match_columns  # noqa: E402


def matched_columns(cols, truth, species="Ce"):
    """Per frame: true index -> (reported depth, track, frame-by-frame depth)."""
    out = []
    for t, true in enumerate(truth):
        sel = np.flatnonzero((cols["frame"] == t) & (cols["species"] == species))
        pi, ti = match_columns(np.column_stack([cols["x"][sel], cols["y"][sel]]),
                               np.column_stack([true[species]["x"], true[species]["y"]]),
                               MATCH_DIST_A[species])
        out.append({int(j): (int(cols["depth"][sel[i]]), int(cols["track"][sel[i]]),
                             int(cols["depth_frame"][sel[i]]))
                    for i, j in zip(pi, ti, strict=True)})
    return out


def pairs(truth, drift, t, species):
    """True columns of frame t, their partner in t + 1 (or -1) and both depths."""
    a, b = truth[t][species], truth[t + 1][species]
    xa = np.column_stack([a["x"], a["y"]]) - drift[t]
    xb = np.column_stack([b["x"], b["y"]]) - drift[t + 1]
    dist, j = cKDTree(xb).query(xa, distance_upper_bound=0.5)
    found = np.isfinite(dist)
    j = np.where(found, j, -1)
    db = np.where(found, b["depth"][np.clip(j, 0, len(xb) - 1)], 0)
    return xa, j, a["depth"].astype(int), db.astype(int)


def census(d: Path) -> collections.Counter:
    r, truth, drift = load(d)
    cols, ev = r["columns"], r["events"]
    events = [(int(f), int(k), str(kind), int(b), int(a)) for f, k, kind, b, a, sp in zip(
        ev["frame"], ev["track"], ev["kind"], ev["depth_before"], ev["depth_after"],
        ev["species"], strict=True) if sp == "Ce"]
    matched = matched_columns(cols, truth)
    c = collections.Counter()
    for t in range(len(truth) - 1):
        xa, j, da, db = pairs(truth, drift, t, "Ce")
        xo, _, dao, dbo = pairs(truth, drift, t, "O")
        o_changed = xo[dao != dbo]
        ce_changed = xa[da != db]
        for i in range(len(xa)):
            here, there = matched[t].get(i), matched[t + 1].get(int(j[i]))
            if da[i] == db[i]:
                if here is None or there is None:
                    continue
                c["steady pairs"] += 1
                if here[0] == there[0]:
                    continue
                kind = "flicker, one track" if here[1] == there[1] else "flicker, track switch"
                c[kind] += 1
                near_ce = np.hypot(*(ce_changed - xa[i]).T).min() if len(ce_changed) else np.inf
                near_o = np.hypot(*(o_changed - xa[i]).T).min() if len(o_changed) else np.inf
                c["  of which a Ce change within 4 Å"] += bool(near_ce < 4.0)
                c["  of which an O change within 1.7 Å"] += bool(near_o < 1.7)
                c["  of which a step down"] += bool(there[0] < here[0])
                continue
            c["true changes"] += 1
            if here is None:
                c["missed: not detected in its frame"] += 1
                continue
            track, down = here[1], db[i] < da[i]
            if any(k == track and kind in ("depth_change", "vanished") and t <= f <= t + 2
                   and (a < b) == down for f, k, kind, b, a in events):
                c["reported"] += 1
                continue
            own = [f for f, k, *_ in events if k == track]
            if there is not None and there[1] != track:
                why = "track broken"
            elif not own:
                why = "no event on its track"
            elif any(t <= f <= t + 2 for f in own):
                why = "event of the wrong sign or kind"
            else:
                why = "events elsewhere on its track"
            c[f"missed: {why}"] += 1
    return c


if __name__ == "__main__":
    total = collections.Counter()
    for d in map(Path, sys.argv[1:]):
        c = census(d)
        total.update(c)
        print(d.name, dict(sorted(c.items())))
    print("all", dict(sorted(total.items())))
