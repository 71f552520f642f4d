# Session 17 research script (not part of the package): see README.md in this folder.
"""How far the change rule's channels separate true changes from steady columns.

For each stored series the post-processing runs once (``profile_variants.segment``, the
package's settings) and keeps the channels it cuts Ce tracks on: the profile (hard rings
with ``HARD=1``, the session-16 rule) and E[k], each in units of its noise. For every
full-length Ce track matched to one true column in every frame it prints, pooled:

- steady tracks: the largest split gain over all frames (what a false cut must beat);
- true changes: the gain of the split at the true frame (within the segment between the
  neighbouring true changes), its z along the series' loss signature, and whether the
  rule reported it.

    [HARD=1] python oracle_gain.py DIR [DIR ...]
"""
import collections
import math
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "change_detection_s12"))
sys.path.insert(0, str(HERE.parent / "domain_series_s16"))
import profile_variants as V  # noqa: E402
from census import matched_columns  # noqa: E402
from offline import load  # noqa: E402

import atom3d.inference.tracking as T  # noqa: E402
from atom3d.io.results import read_results  # noqa: E402

KEPT: dict = {}


def keeping_segment(levels, frame_depths, packer, lowest, highest, *args, **kw):
    out = V.segment(levels, frame_depths, packer, lowest, highest, *args, **kw)
    rings = kw.get("rings")
    if rings is not None:
        sigma = T.packed_level_noise(levels, packer.offsets, kw.get("default_noise", 0.25))
        scaled = np.column_stack([np.asarray(rings, np.float64)
                                  / T.packed_ring_noise(rings, packer.offsets),
                                  kw["level_weight"] / sigma * np.asarray(levels, np.float64)])
        cuts = [(kw["ring_penalty"] * np.log(max(b - a, 2)),
                 T.ring_cuts(scaled[a:b], levels[a:b], kw["ring_penalty"] * np.log(max(b - a, 2))))
                for a, b in packer.tracks()]
        KEPT.update(offsets=packer.offsets.copy(), scaled=scaled,
                    signature=T.ring_signature(cuts, 1.8, 0.4, 5))
    return out


def split(x, c):
    """Gain and mean step of splitting x (L, B) at c."""
    n = len(x)
    d = x[c:].mean(0) - x[:c].mean(0)
    return float((d ** 2).sum() * c * (n - c) / n), d


def main(dirs):
    settings = {"segment_packed": keeping_segment}
    if os.environ.get("HARD"):
        settings["ring_means"] = V.hard_ring_means()
    steady, changes = [], []
    for d in dirs:
        KEPT.clear()
        V.PV.run(d, settings)
        _, truth, _ = load(d)
        r = read_results(d / "variant.h5", load_maps=False)
        cols, ev = r["columns"], r["events"]
        events = [(int(f), int(k)) for f, k, sp in zip(ev["frame"], ev["track"], ev["species"],
                                                         strict=True) if sp == "Ce"]
        matched = matched_columns(cols, truth)
        n = len(truth)
        true_depth = collections.defaultdict(dict)
        for t in range(n):
            for j, v in matched[t].items():
                true_depth[v[1]][t] = int(truth[t]["Ce"]["depth"][j])
        off, sig = KEPT["offsets"], KEPT["signature"]
        for k, by_frame in true_depth.items():
            a, b = off[k], off[k + 1]
            if b - a != n or len(by_frame) != n:
                continue
            x = T._nan_as_mean(KEPT["scaled"][a:b])
            seq = [by_frame[t] for t in range(n)]
            cuts = [t for t in range(1, n) if seq[t] != seq[t - 1]]
            if not cuts:
                steady.append(max(split(x, c)[0] for c in range(1, n)))
            bounds = [0, *cuts, n]
            for i, c in enumerate(cuts, start=1):
                lo, hi = bounds[i - 1], bounds[i + 1]
                gain, step = split(x[lo:hi], c - lo)
                z = (float(step @ sig) * math.sqrt((c - lo) * (hi - c) / (hi - lo))
                     if sig is not None else 0.0)
                hit = any(kk == k and c - 1 <= f <= c + 1 for f, kk in events)
                changes.append((gain, z, hit))
    steady = np.array(steady)
    g = np.array([c[0] for c in changes])
    z = np.array([c[1] for c in changes])
    hit = np.array([c[2] for c in changes])
    print(f"steady full tracks {len(steady)}: largest split gain, quartiles and 90th percentile",
          np.percentile(steady, [25, 50, 75, 90]).round(1))
    for name, m in (("reported", hit), ("missed", ~hit)):
        print(f"{name} changes {m.sum()}: gain at the true frame, quartiles",
              np.percentile(g[m], [25, 50, 75]).round(1), "z along the signature",
              np.percentile(z[m], [25, 50, 75]).round(2))


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]])
