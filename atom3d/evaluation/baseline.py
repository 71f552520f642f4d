"""The classical baseline: what a microscopist does without machine learning, done well.

1. Normalise the frame to the incident beam: ``I = counts / (dose · p²)`` (vacuum = 1;
   the dose is known from the dataset, as a microscopist knows it from the vacuum level).
2. Denoise: Gaussian (σ = ``sigma_A``), non-local means, or none.
3. Ce columns: local maxima of the contrast magnitude ``|I − 1|`` at least 2.6 Å apart,
   above a threshold set from the shot noise; positions refined by a 2-D Gaussian
   (moment) fit of the contrast around each maximum.
4. O columns: the same on the image with Ce column disks masked, keeping only maxima at
   the [110] fluorite Ce–O distance (1.35 Å, accepted 1.0–1.7 Å) from a found Ce column.
5. Depth: each column's mean contrast in a disk is matched with a thickness library
   simulated for that image's own optics (oracle optics: the strongest fair version of
   intensity matching); the posterior over depths under Gaussian shot noise gives the
   confidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from atom3d.simulation.library import CE_RADIUS_A, O_RADIUS_A

CE_MIN_SEPARATION_A = 2.6
O_MIN_SEPARATION_A = 1.6
CE_O_DISTANCE_A = (1.0, 1.7)


@dataclass(frozen=True)
class BaselineConfig:
    """Parameters of the classical baseline.

    Parameters
    ----------
    denoise
        'gaussian', 'nlmeans' or 'none'.
    sigma_A
        Width of the Gaussian filter [Å] (also the smoothing used to find maxima).
    n_sigma
        Detection threshold in standard deviations of the filtered shot noise.
    """

    denoise: str = "gaussian"
    sigma_A: float = 0.3
    n_sigma: float = 4.0


def denoise(intensity: np.ndarray, pixel_size_A: float, method: str, sigma_A: float,
            dose_e_per_A2: float) -> np.ndarray:
    """Denoise a normalised image (vacuum = 1)."""
    if method == "none":
        return intensity
    if method == "gaussian":
        return ndimage.gaussian_filter(intensity, sigma_A / pixel_size_A, mode="nearest")
    if method == "nlmeans":
        from skimage.restoration import denoise_nl_means

        noise = 1.0 / np.sqrt(max(dose_e_per_A2 * pixel_size_A**2, 1e-9))
        patch = max(3, int(round(0.6 / pixel_size_A)) | 1)
        return denoise_nl_means(intensity.astype(np.float64), patch_size=patch,
                                patch_distance=2 * patch, h=0.8 * noise, sigma=noise,
                                fast_mode=True).astype(np.float32)
    raise ValueError(f"unknown denoising method {method!r}")


def _maxima(score: np.ndarray, threshold: float, min_sep_px: float) -> np.ndarray:
    """(N, 2) row/col of local maxima of ``score`` above ``threshold``, greedy NMS."""
    size = max(3, int(2 * np.floor(min_sep_px / 2) + 1))
    peaks = (score == ndimage.maximum_filter(score, size=size, mode="nearest")) & (score > threshold)
    rc = np.argwhere(peaks)
    if not len(rc):
        return rc.reshape(0, 2)
    order = np.argsort(-score[rc[:, 0], rc[:, 1]])
    kept: list[np.ndarray] = []
    for p in rc[order]:
        if all(np.hypot(*(p - q)) >= min_sep_px for q in kept):
            kept.append(p)
    return np.array(kept, float)


def _refine(contrast: np.ndarray, rc: np.ndarray, radius_px: float) -> np.ndarray:
    """Sub-pixel centres: contrast-weighted centroid (a moment fit of a 2-D Gaussian)."""
    out = rc.astype(float).copy()
    r = int(np.ceil(radius_px))
    h, w = contrast.shape
    for i, (y, x) in enumerate(rc.astype(int)):
        y0, y1, x0, x1 = max(y - r, 0), min(y + r + 1, h), max(x - r, 0), min(x + r + 1, w)
        win = np.abs(contrast[y0:y1, x0:x1]).astype(np.float64)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        mask = (yy - y) ** 2 + (xx - x) ** 2 <= radius_px**2
        wgt = np.where(mask, win - win[mask].min(), 0.0)
        if wgt.sum() > 0:
            out[i] = [(wgt * yy).sum() / wgt.sum(), (wgt * xx).sum() / wgt.sum()]
    return out


def _disk_means(image: np.ndarray, rc: np.ndarray, radius_px: float) -> np.ndarray:
    h, w = image.shape
    r = int(np.ceil(radius_px))
    out = np.zeros(len(rc))
    for i, (y, x) in enumerate(rc):
        yi, xi = int(round(y)), int(round(x))
        y0, y1, x0, x1 = max(yi - r, 0), min(yi + r + 1, h), max(xi - r, 0), min(xi + r + 1, w)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        m = (yy - y) ** 2 + (xx - x) ** 2 <= radius_px**2
        out[i] = image[y0:y1, x0:x1][m].mean() if m.any() else 0.0
    return out


def _depth_posterior(measured: np.ndarray, library: np.ndarray, sigma: float) -> np.ndarray:
    """(N, K) posterior over depths 1 … K under Gaussian measurement noise ``sigma``."""
    d = measured[:, None] - library[None, 1:]
    logp = -0.5 * (d / sigma) ** 2
    logp -= logp.max(axis=1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(axis=1, keepdims=True)


def run_baseline(counts: np.ndarray, pixel_size_A: float, dose_e_per_A2: float,
                 library: dict[str, np.ndarray], cfg: BaselineConfig = BaselineConfig()
                 ) -> dict[str, dict[str, np.ndarray]]:
    """Columns of both species: ``{'Ce': {x, y, depth, confidence}, 'O': {...}}`` [Å].

    ``library`` maps species to the mean disk contrast for 0 … K layers
    (:func:`atom3d.simulation.library.contrast_library` for the image's optics).
    """
    p = pixel_size_A
    electrons = dose_e_per_A2 * p * p
    intensity = np.asarray(counts, np.float32) / electrons
    smooth = denoise(intensity, p, cfg.denoise, cfg.sigma_A, dose_e_per_A2)
    contrast = smooth - 1.0
    score = np.abs(ndimage.gaussian_filter(contrast, cfg.sigma_A / p, mode="nearest")
                   if cfg.denoise == "none" else contrast)
    # Shot noise of a pixel is 1/sqrt(dose·p²) (vacuum); a Gaussian filter of σ px
    # lowers it by 2√π σ. Threshold: n_sigma of that, and at least a third of the
    # weakest contrast the library predicts for a real column.
    sigma_px = max(cfg.sigma_A / p, 0.5)
    noise_f = 1.0 / np.sqrt(electrons) / (2 * np.sqrt(np.pi) * sigma_px)
    out: dict[str, dict[str, np.ndarray]] = {}
    taken = np.zeros(contrast.shape, bool)
    ce_rc = np.zeros((0, 2))
    for sp, min_sep, radius in (("Ce", CE_MIN_SEPARATION_A, CE_RADIUS_A),
                                ("O", O_MIN_SEPARATION_A, O_RADIUS_A)):
        lib = np.asarray(library[sp], float)
        weakest = np.min(np.abs(lib[1:])) if len(lib) > 1 else 0.0
        thr = max(cfg.n_sigma * noise_f, weakest / 3)
        s = np.where(taken, 0.0, score)
        rc = _maxima(s, thr, min_sep / p)
        rc = _refine(contrast, rc, radius / p) if len(rc) else rc
        if sp == "O" and len(rc):
            if len(ce_rc):
                d = np.min(np.hypot(rc[:, None, 0] - ce_rc[None, :, 0],
                                    rc[:, None, 1] - ce_rc[None, :, 1]), axis=1) * p
                rc = rc[(d >= CE_O_DISTANCE_A[0]) & (d <= CE_O_DISTANCE_A[1])]
            else:
                rc = rc[:0]
        # Depth from the unfiltered image: the library is unfiltered too (no bias).
        measured = _disk_means(intensity - 1.0, rc, radius / p) if len(rc) else np.zeros(0)
        # Noise of a disk mean on the unfiltered image: 1/sqrt(electrons in the disk).
        sigma_disk = 1.0 / np.sqrt(dose_e_per_A2 * np.pi * radius**2)
        post = _depth_posterior(measured, lib, sigma_disk) if len(rc) else np.zeros((0, len(lib) - 1))
        depth = post.argmax(axis=1) + 1 if len(rc) else np.zeros(0, int)
        out[sp] = {"x": rc[:, 1] * p if len(rc) else np.zeros(0),
                   "y": rc[:, 0] * p if len(rc) else np.zeros(0),
                   "depth": depth.astype(np.uint8),
                   "confidence": post.max(axis=1).astype(np.float32) if len(rc) else np.zeros(0, np.float32)}
        if sp == "Ce":
            ce_rc = rc
            yy, xx = np.indices(contrast.shape)
            for y, x in rc:
                taken |= (yy - y) ** 2 + (xx - x) ** 2 <= (1.0 / p) ** 2
    return out
