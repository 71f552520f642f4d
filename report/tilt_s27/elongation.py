"""Does a tilted particle show in the shape of its mean column image?

A column tilted by θ off the beam spreads its atoms over t·θ along the tilt direction
(1 Å for 5 nm at 20 mrad), so the column images elongate along one common direction.
Per image: the noisy image is sampled on a 0.05 Å grid within 1.2 Å of every Ce column
the model finds (one pass), averaged over the columns, and the quadrupole moment of the
averaged patch's deviation from its rim, |Σ w (dx² − dy², 2 dx dy)| / Σ |w| r², is its
elongation (0 for a round column image; sign-free, since columns can be dark or bright).
Prints per tilt the median and quartiles over the images, all doses and ≥ 1000 e/Å².

    python report/tilt_s27/elongation.py data/tilt/tilt0.zarr data/tilt/tilt20.zarr ...
"""
from __future__ import annotations

import sys

import numpy as np
from scipy import ndimage

from atom3d.data.store import open_store
from atom3d.evaluation.evaluate import evaluation_image
from atom3d.inference.predictor import Predictor
from atom3d.models.artifact import load_artifact

STEP_A = 0.05
RADIUS_A = 1.2


def elongation(image: np.ndarray, x_A: np.ndarray, y_A: np.ndarray, p: float) -> float:
    """Quadrupole elongation of the mean column image (see the module docstring)."""
    g = np.arange(-RADIUS_A, RADIUS_A + STEP_A / 2, STEP_A)
    dx, dy = np.meshgrid(g, g)
    r2 = dx**2 + dy**2
    disc = r2 <= RADIUS_A**2
    h, w = image.shape
    keep = ((x_A > RADIUS_A + p) & (x_A < (w - 2) * p - RADIUS_A)
            & (y_A > RADIUS_A + p) & (y_A < (h - 2) * p - RADIUS_A))
    if keep.sum() < 5:
        return float("nan")
    total = np.zeros_like(dx)
    for x, y in zip(x_A[keep], y_A[keep], strict=True):
        total += ndimage.map_coordinates(image, [(y + dy) / p, (x + dx) / p], order=1)
    mean = total / keep.sum()
    rim = (r2 > (RADIUS_A - 0.15) ** 2) & disc
    wgt = np.where(disc, mean - mean[rim].mean(), 0.0)
    q1 = np.sum(wgt * (dx**2 - dy**2))
    q2 = np.sum(wgt * 2 * dx * dy)
    return float(np.hypot(q1, q2) / np.sum(np.abs(wgt) * r2))


def main(paths: list[str], noise_seed: int = 12345) -> None:
    pred = Predictor(load_artifact("ceo2-110"), device="cpu", batch_size=8, tta=1)
    for data in paths:
        root = open_store(data)
        names = list(root.attrs["param_names"])
        n = int(root.attrs["n_images"])
        values, high = [], []
        for i in range(n):
            im = evaluation_image(root, i, names, noise_seed, 1.0)
            p = im.params["pixel_size_A"]
            ce = pred.predict(im.counts, p).columns["Ce"]
            e = elongation(np.asarray(im.counts, float), ce.x_A, ce.y_A, p)
            values.append(e)
            high.append(im.params["dose_e_per_A2"] >= 1000)
        v, hi = np.asarray(values), np.asarray(high)

        def q(a):
            a = a[np.isfinite(a)]
            mid, lo, hi = np.percentile(a, [50, 25, 75])
            return f"{mid:.3f} ({lo:.3f}–{hi:.3f})"

        tilt = float(np.median(np.asarray(root["params"][:, names.index("tilt_mrad")])))
        print(f"tilt {tilt:.0f} mrad: elongation {q(v)}; at ≥ 1000 e/Å² {q(v[hi])}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
