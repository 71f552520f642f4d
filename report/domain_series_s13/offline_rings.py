# Session 13 research script (not part of the package): see README.md in this folder.
"""Re-run the Ce change-point rule of ``atom3d predict`` offline on stored series.

For each series directory (``demo_series.tif``, ``demo.h5``, ``truth_*.csv``) the ring
means are computed with the package's :func:`atom3d.inference.tracking.ring_means` at
each Ce track's mean drift-corrected position (as ``postprocess`` does), standardised by
their series-wide frame-to-frame noise, cut by :func:`~atom3d.inference.tracking.segment_starts`
and filtered by the E[k] step; depths by :func:`~atom3d.inference.tracking.depths_from_starts`.
Scored by :func:`atom3d.demo.temporal_scores` through ``offline.rescore``.

    GRID="4.5:0.2:1.0,4.0:0.2:1.0" python offline_rings.py DIR [DIR ...]

``GRID`` lists ``penalty:min_step:min_step_sigma`` rules. ``MISSED=1`` prints, per missed
true change, its ring gain and E[k] step.
"""
import os
import sys
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "change_detection_s12"))
from offline import ce_tracks, load, rescore, sigma_of, true_changes  # noqa: E402

from atom3d.inference import tracking as T  # noqa: E402
from atom3d.io.readers import open_series  # noqa: E402

K = 22


def ring_tracks(d, r, tracks):
    """Standardised ring means (L, 5) of every Ce track, and the rings' σ."""
    frames = tifffile.imread(d / "demo_series.tif").astype(np.float32)
    with open_series(d / "demo_series.tif") as s:
        pix = float(s.pixel_size_A)
    fr = r["frames"]
    drift = np.column_stack([fr["drift_x"], fr["drift_y"]]).astype(np.float64)
    cols = r["columns"]
    pos = {}
    for tr, t in tracks.items():
        x0 = float(np.mean(cols["x"][t["rows"]] - drift[t["frames"], 0]))
        y0 = float(np.mean(cols["y"][t["rows"]] - drift[t["frames"], 1]))
        pos[tr] = (x0, y0)
    per_frame = {f: [] for f in range(len(frames))}
    for tr, t in tracks.items():
        for i, f in enumerate(t["frames"]):
            per_frame[int(f)].append((tr, i))
    rings = {tr: np.full((len(t["frames"]), len(T.RING_EDGES_A) - 1), np.nan)
             for tr, t in tracks.items()}
    for f, items in per_frame.items():
        if not items:
            continue
        xs = np.array([pos[tr][0] + drift[f, 0] for tr, _ in items])
        ys = np.array([pos[tr][1] + drift[f, 1] for tr, _ in items])
        m = T.ring_means(frames[f], xs, ys, pix)
        for (tr, i), row in zip(items, m, strict=True):
            rings[tr][i] = row
    order = sorted(rings)
    packed = np.concatenate([rings[tr] for tr in order])
    offsets = np.concatenate([[0], np.cumsum([len(rings[tr]) for tr in order])])
    sigma = T.packed_ring_noise(packed, offsets)
    return {tr: rings[tr] / sigma[None, :] for tr in order}, sigma, pix


def rule(std_rings, penalty, step, step_sigma):
    def make(tracks):
        s = sigma_of(tracks)
        need = max(step, step_sigma * s)

        def f(tr, t):  # the package's rule (atom3d.inference.tracking.segment_track)
            return T.segment_track(t["level"], t["fd"], 0.0, 1, K, rings=std_rings[tr],
                                   ring_threshold=penalty * np.log(max(len(t["level"]), 2)),
                                   ring_min_step=need)
        return f
    return make


def score(data, make_rule):
    """Changes reported, flicker and the worst series' flicker of a rule over the series.

    ``data`` holds ``(dir, results, truth, drift, tracks, std_rings)`` per series;
    ``make_rule(std_rings)`` returns the rule (tracks -> per-track depth function).
    """
    tot = [0, 0, 0, 0]
    worst = 0.0
    line = []
    for d, r, truth, drift, tracks, sr in data:
        sc = rescore(r, truth, drift, tracks, make_rule(sr)(tracks))
        tot[0] += sc["changes_reported"]
        tot[1] += sc["changes_true"]
        tot[2] += sc["flickers"]
        tot[3] += sc["steady_pairs"]
        worst = max(worst, sc["flicker"])
        line.append(f"{d.name}:{sc['changes_reported']}/{sc['changes_true']}"
                    f"@{sc['flicker']:.1%}")
    return (f"{tot[0]}/{tot[1]} ({tot[0] / tot[1]:.0%}) flicker {tot[2] / tot[3]:.1%} "
            f"worst {worst:.1%} | " + " ".join(line))


def load_all(dirs):
    """Per series: ``(dir, results, truth, drift, Ce tracks, standardised rings)``."""
    data = []
    for d in dirs:
        r, truth, drift = load(d)
        tracks = ce_tracks(r)
        data.append((d, r, truth, drift, tracks, ring_tracks(d, r, tracks)[0]))
    return data


def main(dirs, grid):
    data = load_all(dirs)
    for pen, step, ssig in grid:
        print(f"penalty {pen} step {step} sigma {ssig}: "
              + score(data, lambda sr, pen=pen, step=step, ssig=ssig:
                      rule(sr, pen, step, ssig)), flush=True)


def missed(d):
    """Print every true Ce change the file's events miss, with what its track shows."""
    from atom3d.evaluation.metrics import match_columns

    r, truth, drift = load(d)
    tracks = ce_tracks(r)
    sr, _, _ = ring_tracks(d, r, tracks)
    cols, ev = r["columns"], r["events"]
    evs = {(int(k), int(f)) for k, f, kind, sp in zip(ev["track"], ev["frame"], ev["kind"],
                                                      ev["species"], strict=True)
           if sp == "Ce" and kind in ("depth_change", "vanished")}
    n = len(truth)
    matched = []
    for t in range(n):
        sel = np.flatnonzero((cols["frame"] == t) & (cols["species"] == "Ce"))
        tr = truth[t]["Ce"]
        pi, ti = match_columns(np.column_stack([cols["x"][sel], cols["y"][sel]]),
                               np.column_stack([tr["x"], tr["y"]]), 1.0)
        matched.append({int(j): int(cols["track"][sel[i]]) for i, j in zip(pi, ti, strict=True)})
    for t, i, da, db, _ in true_changes(truth, drift):
        tr = matched[t].get(i)
        hit = tr is not None and any((tr, f) in evs for f in (t, t + 1, t + 2))
        if hit:
            continue
        if tr is None:
            print(f"{d.name} t={t} {da}->{db}: not detected in frame {t}")
            continue
        tk = tracks[tr]
        k = int(np.searchsorted(tk["frames"], t + 1))
        rings = sr[tr]
        L = len(rings)
        # gain of a split at k against the whole track (one split, all rings)
        x = np.where(np.isfinite(rings), rings, np.nanmean(rings, axis=0))
        if 0 < k < L:
            left = (x[:k] - x.mean(0)).sum(0)
            gain = float((left ** 2 * L / (k * (L - k))).sum())
            step = float(tk["level"][k:].mean() - tk["level"][:k].mean())
        else:
            gain = step = float("nan")
        print(f"{d.name} t={t} {da}->{db} track {tr} frames {tk['frames'].min()}-"
              f"{tk['frames'].max()} gain@{k} {gain:.1f} (thr {4.5 * np.log(max(L, 2)):.1f})"
              f" E[k] step {step:+.2f} | E[k] {np.round(tk['level'], 1).tolist()}")


def cut_census(d, penalty=4.5):
    """Classify every ring cut (no E[k] filter) by what the truth did there.

    own: the track's column changed within ±1 frame of the cut; neighbour: a Ce column
    within 4 Å did (and this one did not); none: nothing changed near it. Printed with
    the gain and the E[k] step, to see what tells true cuts from the others.
    """


    r, truth, drift = load(d)
    tracks = ce_tracks(r)
    sr, _, _ = ring_tracks(d, r, tracks)
    cols = r["columns"]
    n = len(truth)
    # true changes per frame pair: drift-corrected positions of changing columns
    changed = [np.zeros((0, 2)) for _ in range(n - 1)]
    for t, _, _, _, xy in true_changes(truth, drift):
        changed[t] = np.vstack([changed[t], xy])
    # track -> its drift-corrected mean position
    out = []
    for tr, t in tracks.items():
        x0 = np.mean(cols["x"][t["rows"]] - r["frames"]["drift_x"][t["frames"]])
        y0 = np.mean(cols["y"][t["rows"]] - r["frames"]["drift_y"][t["frames"]])
        for st, gain, step, dvec, weight in _cuts(sr[tr], t["level"], penalty):
            f = int(t["frames"][st])  # first frame after the cut
            kind = "none"
            near = np.inf
            for pair in (f - 2, f - 1, f):
                if 0 <= pair < n - 1 and len(changed[pair]):
                    dd = np.hypot(*(changed[pair] - [x0, y0]).T).min()
                    near = min(near, dd)
            if near < 0.6:
                kind = "own"
            elif near < 4.0:
                kind = "neighbour"
            out.append({"kind": kind, "gain": gain, "step": step, "near": near,
                        "dvec": dvec, "track": tr, "frame": f, "weight": weight})
            if os.environ.get("CENSUS") == "print":
                print(f"{d.name} track {tr} cut@frame {f} {kind:9s} gain {gain:6.1f} "
                      f"E[k] step {step:+.2f} nearest change {near:.1f} A")
    return out


def sign_study(dirs, strong=20.0):
    """Does the ring-change direction tell a loss from a gain when E[k] cannot?

    Per series, the mean standardised ring change of the confident cuts (gain ≥
    ``strong`` and E[k] step ≤ −0.4) is the series' loss signature; every own cut is
    then signed by its projection on it (leave-one-out), against the truth (all true
    changes here are losses).
    """
    for d in dirs:
        cuts = cut_census(d)
        conf = [c for c in cuts if c["gain"] >= strong and c["step"] <= -0.4]
        if len(conf) < 3:
            print(d.name, "fewer than 3 confident cuts")
            continue
        rows = []
        for c in cuts:
            others = [o["dvec"] for o in conf if o is not c]
            sig = np.mean(others, axis=0)
            proj = float(c["dvec"] @ sig / np.linalg.norm(sig)) * c["weight"]
            rows.append((c["kind"], c["gain"], c["step"], proj))
        sig = np.mean([o["dvec"] for o in conf], axis=0)
        print(f"{d.name}: {len(conf)} confident cuts, loss signature "
              f"{np.round(sig / np.linalg.norm(sig), 2).tolist()}")
        for kind in ("own", "neighbour", "none"):
            sel = [r for r in rows if r[0] == kind]
            if not sel:
                continue
            pos = sum(r[3] > 0 for r in sel)
            amb = [r for r in sel if abs(r[2]) < 0.2]
            print(f"  {kind:9s} {len(sel):3d} cuts, projection > 0: {pos}; "
                  f"with |E[k] step| < 0.2: {len(amb)}, of which projection > 0: "
                  f"{sum(r[3] > 0 for r in amb)}, gain >= {strong:g}: "
                  f"{sum(r[1] >= strong for r in amb)}")
            print("    z along the signature:", " ".join(f"{r[3]:+.1f}" for r in sorted(
                sel, key=lambda r: r[3])))



def _cuts(rings, level, penalty):
    """Ring cuts of one track (:func:`atom3d.inference.tracking.ring_cuts`) as tuples
    (start, gain, E[k] step, Δrings, weight)."""
    threshold = penalty * np.log(max(len(level), 2))
    return [(c.start, c.gain, c.level_step, c.ring_step, c.weight)
            for c in T.ring_cuts(rings, level, threshold)]


def signature_rule(std_rings, penalty, z_min, mode, strong=None, min_conf=None,
                   step=0.2, step_sigma=1.0):
    """Cuts signed by the series' loss signature (see sign_study).

    mode "sig": keep cuts with |z| >= z_min, direction from z (a loss when z > 0);
    mode "or": the default rule's cuts, plus cuts with z >= z_min as losses;
    mode "and": the default rule's cuts whose z agrees in sign, plus none.
    """
    strong = float(os.environ.get("STRONG", 1.8 if mode == "sym" else 20.0)) \
        if strong is None else strong
    min_conf = int(os.environ.get("MIN_CONF", 5 if mode == "sym" else 3)) \
        if min_conf is None else min_conf

    def make(tracks):
        s = sigma_of(tracks)
        need = max(step, step_sigma * s)
        cuts = {tr: _cuts(std_rings[tr], t["level"], penalty) for tr, t in tracks.items()}
        if mode == "sym":  # losses and gains, strong relative to each track's threshold
            conf = [-np.sign(c[2]) * c[3] for tr, cs in cuts.items() for c in cs
                    if c[1] >= strong * penalty * np.log(max(len(tracks[tr]["level"]), 2))
                    and abs(c[2]) >= 0.4]
        else:
            conf = [c[3] for cs in cuts.values() for c in cs if c[1] >= strong and c[2] <= -0.4]
        u = np.mean(conf, axis=0) if len(conf) >= min_conf else None
        if u is not None:
            u = u / np.linalg.norm(u)

        def f(tr, t):
            starts, dirs = [], []
            for st, _gain, dstep, dvec, w in cuts[tr]:
                default = abs(dstep) >= need
                z = float(dvec @ u) * w if u is not None else 0.0
                if u is None:
                    keep, sign = default, int(np.sign(dstep))
                elif mode == "sig":
                    keep, sign = abs(z) >= z_min, -int(np.sign(z))
                elif mode == "or":
                    keep = z >= z_min or default
                    sign = -1 if z >= z_min else int(np.sign(dstep))
                elif mode == "sym":
                    keep = abs(z) >= z_min or default
                    sign = -int(np.sign(z)) if abs(z) >= z_min else int(np.sign(dstep))
                else:  # and
                    keep, sign = default and np.sign(z) == -np.sign(dstep), int(np.sign(dstep))
                if keep and sign:
                    starts.append(st)
                    dirs.append(sign)
            return T.depths_from_starts(t["level"], t["fd"], starts, 1, K, dirs)
        return f
    return make


def main_signature(dirs, grid):
    data = load_all(dirs)
    alpha = float(os.environ.get("LEVEL_CHANNEL", "0"))
    if alpha > 0:  # E[k] / σ as a sixth channel of the segmentation
        for i, (d, r, truth, drift, tracks, sr) in enumerate(data):
            sk = sigma_of(tracks)
            sr = {tr: np.column_stack([v, alpha * tracks[tr]["level"] / sk])
                  for tr, v in sr.items()}
            data[i] = (d, r, truth, drift, tracks, sr)
    for pen, z, mode in grid:
        print(f"{mode} penalty {pen} z {z}: "
              + score(data, lambda sr, pen=pen, z=z, mode=mode:
                      signature_rule(sr, pen, z, mode)), flush=True)

if __name__ == "__main__":
    if os.environ.get("CENSUS") == "print":
        for a in sys.argv[1:]:
            cut_census(Path(a))
    elif os.environ.get("SIG"):
        main_signature([Path(a) for a in sys.argv[1:]],
                       [(float(a), float(b), c) for a, b, c in
                        (g.split(":") for g in os.environ["SIG"].split(","))])
    elif os.environ.get("CENSUS") == "sign":
        sign_study([Path(a) for a in sys.argv[1:]])
    elif os.environ.get("MISSED"):
        for a in sys.argv[1:]:
            missed(Path(a))
    else:
        main([Path(a) for a in sys.argv[1:]],
             [tuple(float(v) for v in g.split(":"))
              for g in os.environ.get("GRID", "4.5:0.2:1.0").split(",")])
