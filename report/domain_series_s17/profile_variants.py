# Session 17 research script (not part of the package): see README.md in this folder.
"""Variants of the Ce change-point rule, re-run from the stored files before post-processing.

Like ``report/domain_series_s16/pp_variants.py`` (which it uses: each series directory
holds ``pre_post.h5.partial`` and ``pre_post.pkl``), but a variant may also replace the
radial profile and the segmentation itself:

- ``hard``: the hard rings 0-0.3-...-1.5 Å of sessions 12-16 (``ring_means`` of commit
  9502d73, read with ``git show``);
- ``nodes`` [Å] (with ``hat`` [Å], default the node spacing): a hat-weighted profile at
  these radii (the package's ``ring_means`` is the case 0, 0.3, ..., 1.2);
- ``ring_penalty``, ``level_weight``, ``sigz``, ``minsig``: the constants
  ``CHANGEPOINT_RING_PENALTY``, ``_LEVEL_WEIGHT``, ``_SIGNATURE_Z``, ``_RING_MIN_STEP_SIGMA``;
- ``sig_strong``, ``sig_min_cuts``: what makes a cut confident for the signature (gain
  ≥ sig_strong × threshold) and how many the series needs;
- ``scan_z``: after the cuts of the rule, a binary segmentation of each track's profile
  projected on the series' loss signature, adding cuts with |z| >= scan_z;
- ``sig_bw`` [atoms] (with ``sig_min_weight``): ``CHANGEPOINT_SIGNATURE_BANDWIDTH``, each
  track's loss signature from the series' confident cuts weighted by a Gaussian in the
  difference of their tracks' mean E[k] (the package's default since session 17 is 2;
  ``1e9`` is one signature per series, the rule before);
- ``op``: optimal partitioning (exact, dynamic programming) instead of binary
  segmentation, same penalty.
- ``refine`` (session 18; with ``refine_iter``, default 1): each kept cut moved to the best
  split between its kept neighbours, ``"sig"`` on the profile projected on the track's
  loss signature, ``"full"`` on the whole scaled profile (30 series: 841 and 848 of 964
  changes against 847; not kept).

    VARIANTS='[{"hard": 1, "sig_bw": 1e9}, {}]' python profile_variants.py DIR [DIR ...]
"""
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "domain_series_s16"))
import pp_variants as PV  # noqa: E402

import atom3d.inference.tracking as T  # noqa: E402

CFG: dict = {}
_SEGMENT_STARTS = T.segment_starts


def hard_ring_means():
    """``ring_means`` as it was before session 17 (hard rings)."""
    src = subprocess.run(["git", "show", "9502d73:atom3d/inference/tracking.py"],
                         cwd=HERE, check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "tracking_s16.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("tracking_s16", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["tracking_s16"] = mod
    spec.loader.exec_module(mod)
    return mod.ring_means


def hat_ring_means(frame, x_A, y_A, pixel_size_A):
    """Hat-weighted profile at CFG["nodes"] (brute force over a window; for variants)."""
    nodes = np.asarray(CFG.get("nodes", [0.0, 0.3, 0.6, 0.9, 1.2]), float)
    h = CFG.get("hat", float(nodes[1] - nodes[0]))
    frame = np.asarray(frame, np.float32)
    x = np.asarray(x_A, np.float64).reshape(-1)
    y = np.asarray(y_A, np.float64).reshape(-1)
    out = np.full((len(x), len(nodes)), np.nan, np.float32)
    if len(x) == 0:
        return out
    mean = float(frame.mean(dtype=np.float64))
    offset, scale = (0.0, mean) if mean > 0 else (mean, float(frame.std()) or 1.0)
    p = float(pixel_size_A)
    half = int(np.ceil((nodes[-1] + h) / p)) + 1
    off = np.arange(-half, half + 1)
    dr, dc = (a.ravel() for a in np.meshgrid(off, off, indexing="ij"))
    hgt, wid = frame.shape
    for lo in range(0, len(x), 512):
        xs, ys = x[lo:lo + 512], y[lo:lo + 512]
        rows = np.floor(ys / p).astype(np.int64)[:, None] + dr[None, :]
        cols = np.floor(xs / p).astype(np.int64)[:, None] + dc[None, :]
        r = np.sqrt((rows * p - ys[:, None]) ** 2 + (cols * p - xs[:, None]) ** 2)
        inside = (rows >= 0) & (rows < hgt) & (cols >= 0) & (cols < wid)
        vals = frame[np.clip(rows, 0, hgt - 1), np.clip(cols, 0, wid - 1)]
        for j, rj in enumerate(nodes):
            w = np.clip(1 - np.abs(r - rj) / h, 0, None) * inside
            sw = w.sum(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[lo:lo + len(xs), j] = np.where(sw > 0, ((w * vals).sum(1) / sw - offset)
                                                   / scale, np.nan)
    return out


def best_split(s):
    """Position and z of the best single split of a 1-D sequence in units of its σ."""
    n = len(s)
    left = np.cumsum(s - s.mean())[:-1]
    k = np.arange(1, n, dtype=float)
    z = -left * np.sqrt(n / (k * (n - k)))
    j = int(np.argmax(np.abs(z)))
    return j + 1, float(z[j])


def signature_scan(s, starts, dirs, zmin):
    """Add binary-segmentation cuts of the projection ``s`` with |z| >= zmin."""
    starts, dirs = list(starts), list(dirs)
    bounds = [0, *starts, len(s)]
    stack = list(zip(bounds[:-1], bounds[1:], strict=True))
    while stack:
        lo, hi = stack.pop()
        if hi - lo < 2:
            continue
        j, z = best_split(s[lo:hi])
        if abs(z) >= zmin:
            starts.append(lo + j)
            dirs.append(-1 if z > 0 else 1)
            stack += [(lo, lo + j), (lo + j, hi)]
    order = np.argsort(starts, kind="stable")
    kept = {}
    for i in order:
        kept.setdefault(starts[i], dirs[i])
    return list(kept), list(kept.values())


def refine(x, starts, sig, mode):
    """Move each kept cut to the best split between its kept neighbours (session 18):
    ``mode`` "sig" on the profile projected on the track's loss signature, "full" on the
    whole scaled profile."""
    x = T._nan_as_mean(np.asarray(x, np.float64).reshape(len(x), -1))
    starts = list(starts)
    for _ in range(CFG.get("refine_iter", 1)):
        for i in range(len(starts)):
            a = starts[i - 1] if i else 0
            c = starts[i + 1] if i + 1 < len(starts) else len(x)
            if c - a < 2:
                continue
            seg = x[a:c]
            if mode == "sig":
                if sig is None:
                    continue
                seg = (seg @ sig)[:, None]
            n = len(seg)
            left = np.cumsum(seg - seg.mean(0), 0)[:-1]
            k = np.arange(1, n, dtype=float)
            g = (left ** 2).sum(1) * n / (k * (n - k))
            starts[i] = a + 1 + int(np.argmax(g))
    return starts


def optimal_starts(values, threshold, min_step=0.0):
    """Optimal partitioning (cost SSE + threshold per cut) of vector sequences."""
    x = np.asarray(values, np.float64)
    if x.ndim == 1 or min_step > 0 or not CFG.get("op"):
        return _SEGMENT_STARTS(values, threshold, min_step)
    x = T._nan_as_mean(x.reshape(len(x), -1))
    n = len(x)
    if n < 2:
        return []
    s1 = np.vstack([np.zeros(x.shape[1]), np.cumsum(x, 0)])
    s2 = np.concatenate([[0.0], np.cumsum((x ** 2).sum(1))])
    best = np.full(n + 1, np.inf)
    best[0] = -threshold
    prev = np.zeros(n + 1, int)
    for b in range(1, n + 1):
        a = np.arange(b)
        total = best[a] + (s2[b] - s2[a]) - ((s1[b] - s1[a]) ** 2).sum(1) / (b - a) + threshold
        prev[b] = int(np.argmin(total))
        best[b] = total[prev[b]]
    out, b = [], n
    while b > 0:
        if prev[b] > 0:
            out.append(int(prev[b]))
        b = prev[b]
    return sorted(out)


T.segment_starts = optimal_starts


def segment(levels, frame_depths, packer, lowest, highest, penalty=2.0, noise=None,
            default_noise=0.25, min_step=0.0, rings=None, ring_penalty=4.5, ring_min_step=0.2,
            ring_min_step_sigma=0.0, signature_z=math.inf, signature_strong=1.8,
            signature_min_step=0.4, signature_min_cuts=5, level_weight=0.0,
            signature_bandwidth=math.inf, signature_min_weight=3.0):
    """``segment_packed`` of the package with the variant's settings."""
    if rings is None:
        return T.segment_packed(levels, frame_depths, packer, lowest, highest, penalty,
                                noise, default_noise, min_step)
    level_weight = CFG.get("level_weight", level_weight)
    signature_z = CFG.get("sigz", signature_z)
    ring_min_step_sigma = CFG.get("minsig", ring_min_step_sigma)
    ring_penalty = CFG.get("ring_penalty", ring_penalty)
    signature_strong = CFG.get("sig_strong", signature_strong)
    signature_min_cuts = CFG.get("sig_min_cuts", signature_min_cuts)
    sigma = (T.packed_level_noise(levels, packer.offsets, default_noise) if noise is None
             else float(noise))
    scaled = np.asarray(rings, np.float64) / T.packed_ring_noise(rings, packer.offsets)
    if level_weight > 0:
        scaled = np.column_stack([scaled, level_weight / sigma * np.asarray(levels, np.float64)])
    out = np.empty(len(levels), np.uint8)
    level_step = max(ring_min_step, ring_min_step_sigma * sigma)
    tracks = list(packer.tracks())
    cuts = []
    for a, b in tracks:
        threshold = ring_penalty * np.log(max(b - a, 2))
        cuts.append((threshold, T.ring_cuts(scaled[a:b], levels[a:b], threshold)))
    signature = T.ring_signature(cuts, signature_strong, signature_min_step, signature_min_cuts)
    proj = None
    if signature is not None and math.isfinite(CFG.get("scan_z", math.inf)):
        proj = np.empty(len(levels))
        for a, b in tracks:
            proj[a:b] = T._nan_as_mean(scaled[a:b]) @ signature
        proj /= T.packed_level_noise(proj.astype(np.float32), packer.offsets, 1.0)
    bandwidth = CFG.get("sig_bw", signature_bandwidth)
    min_weight = CFG.get("sig_min_weight", signature_min_weight)
    track_levels = np.array([float(np.mean(levels[a:b], dtype=np.float64)) for a, b in tracks])
    cut_track, steps = T.confident_steps(cuts, signature_strong, signature_min_step)
    for i, ((a, b), (_, track_cuts)) in enumerate(zip(tracks, cuts, strict=True)):
        sig_here = signature
        if signature is not None:
            sig_here = T.local_signature(track_levels[cut_track], steps, track_levels[i],
                                         bandwidth, min_weight, signature)
        starts, directions = T.choose_ring_cuts(track_cuts, level_step, sig_here, signature_z)
        if CFG.get("refine") and starts:
            starts = refine(scaled[a:b], starts, sig_here, CFG["refine"])
        if proj is not None:
            starts, directions = signature_scan(proj[a:b], starts, directions, CFG["scan_z"])
        out[a:b] = T.depths_from_starts(levels[a:b], frame_depths[a:b], starts, lowest,
                                        highest, directions)
    return out


def main(dirs):
    hard = None
    for variant in json.loads(os.environ.get("VARIANTS", "[{}]")):
        CFG.clear()
        CFG.update(variant)
        settings = {"segment_packed": segment}
        if variant.get("hard"):
            hard = hard or hard_ring_means()
            settings["ring_means"] = hard
        elif "nodes" in variant:
            settings["ring_means"] = hat_ring_means
            settings["RING_COUNT"] = len(variant["nodes"])
        PV.score(dirs, settings, variant)

if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]])
