# Session 17 research script (not part of the package): see README.md in this folder.
"""Frame-to-frame noise of the radial profiles of stored series, hard rings and hat profile.

For each series the profile of every Ce detection is computed as post-processing does;
per radius it prints the robust σ of the within-track differences (what the change
points divide by) over the σ that shot noise alone would give (Poisson counts of the
frame's mean dose, weights averaged over positions within the pixel), the fraction of
differences beyond 3 σ, and the plain standard deviation over the robust σ (tails).

    python ring_noise.py DIR [DIR ...]
"""
import sys
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import profile_variants as V  # noqa: E402

import atom3d.inference.tracking as T  # noqa: E402

NOISE = T.packed_ring_noise


def shot_noise_factor(p, hard, rng):
    """Mean over positions in the pixel of sqrt(Σw²)/Σw per radius."""
    rr, cc = np.mgrid[-10:11, -10:11] * p
    out = []
    for _ in range(200):
        x0, y0 = rng.uniform(0, p, 2)
        d = np.hypot(rr - y0, cc - x0)
        if hard:
            e = [0, .3, .6, .9, 1.2, 1.5]
            w = np.stack([((d >= a) & (d < b)).astype(float) for a, b in zip(e[:-1], e[1:])])
        else:
            w = np.stack([np.clip(1 - np.abs(d - r) / 0.3, 0, None) for r in (0, .3, .6, .9, 1.2)])
        s1, s2 = w.sum((1, 2)), (w ** 2).sum((1, 2))
        out.append(np.sqrt(s2) / np.where(s1 > 0, s1, np.nan))
    return np.nanmean(out, 0)


def main(dirs):
    hard_means = V.hard_ring_means()
    for hard in (False, True):
        for d in dirs:
            got = {}

            def noise(rings, offsets):
                s = NOISE(rings, offsets)
                diff = np.diff(rings, axis=0)
                inside = np.ones(len(diff), bool)
                ends = np.asarray(offsets)[1:-1] - 1
                inside[ends[(ends >= 0) & (ends < len(diff))]] = False
                z = np.abs(diff[inside]) / (s * np.sqrt(2))
                got.update(s=s, m=np.nanmean(rings, 0),
                           tail=[np.nanmean(z[:, j] > 3) for j in range(z.shape[1])],
                           sd=np.nanstd(diff[inside], 0) / (s * np.sqrt(2)))
                return s

            T.packed_ring_noise = noise
            settings = {"segment_packed": V.segment}
            if hard:
                settings["ring_means"] = hard_means
            try:
                V.PV.run(d, settings)
            finally:
                T.packed_ring_noise = NOISE
            img = tifffile.imread(d / "demo_series.tif").astype(float)
            with tifffile.TiffFile(d / "demo_series.tif") as tf:
                xr = tf.pages[0].tags["XResolution"].value
            p = 10 * xr[1] / xr[0]  # ImageJ calibration in nm
            poisson = shot_noise_factor(p, hard, np.random.default_rng(0)) * np.sqrt(
                got["m"] / img.mean())
            print(d.name, f"{p:.3f} A/px", "hard" if hard else "hat ",
                  "sigma/shot", (got["s"] / poisson).round(2),
                  "P(>3 sigma)", np.round(got["tail"], 3), "std/sigma", got["sd"].round(2))


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]])
