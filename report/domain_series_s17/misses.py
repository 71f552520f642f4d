# Session 17 research script (not part of the package): see README.md in this folder.
"""Every missed true Ce change of stored series: the column's true, reported and
frame-by-frame depths over the series and its track's events.

    A3D_RESULTS=variant.h5 python misses.py DIR [DIR ...]
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "change_detection_s12"))
sys.path.insert(0, str(HERE.parent / "domain_series_s16"))
from offline import load
from census import matched_columns, pairs

def track_view(cols, truth, matched, track):
    T = len(truth)
    rep, fr, tru = [], [], []
    for t in range(T):
        hit = [(j, v) for j, v in matched[t].items() if v[1] == track]
        if hit:
            j, v = hit[0]
            rep.append(v[0]); fr.append(v[2]); tru.append(int(truth[t]["Ce"]["depth"][j]))
        else:
            rep.append(-1); fr.append(-1); tru.append(-1)
    return rep, fr, tru

for d in map(Path, sys.argv[1:]):
    r, truth, drift = load(d)
    cols, ev = r["columns"], r["events"]
    events = [(int(f), int(k), str(kind), int(b), int(a)) for f, k, kind, b, a, sp in zip(
        ev["frame"], ev["track"], ev["kind"], ev["depth_before"], ev["depth_after"], ev["species"]) if sp == "Ce"]
    matched = matched_columns(cols, truth)
    for t in range(len(truth) - 1):
        xa, j, da, db = pairs(truth, drift, t, "Ce")
        for i in range(len(xa)):
            if da[i] == db[i]: continue
            here = matched[t].get(i)
            if here is None: continue
            track, down = here[1], db[i] < da[i]
            if any(k == track and kind in ("depth_change", "vanished") and t <= f <= t + 2 and (a < b) == down for f, k, kind, b, a in events):
                continue
            own = [(f, b, a) for f, k, kind, b, a in events if k == track]
            rep, fr, tru = track_view(cols, truth, matched, track)
            tag = "ELSE" if own else "NONE"
            print(d.name, tag, "trk", track, f"t={t+1} {da[i]}->{db[i]}", "true", tru, "rep", rep, "frame", fr, "ev", own)
