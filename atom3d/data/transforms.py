"""Resampling and input normalisation shared by training and prediction (pure NumPy/SciPy).

Both ``atom3d train`` and ``atom3d predict`` call these functions, so the network sees the
same kind of input in both.

Resampling keeps the physical coordinates: pixel (r, c) of an image with pixel size p has
its centre at (x, y) = (c·p, r·p) [Å], on the input and on the output grid.

Normalisation (:func:`normalize`) makes the input independent of the detector gain and
offset (counts, electrons or arbitrary units all give the same result): the frame is
standardised by its own mean and standard deviation computed over the whole frame after
resampling, ``x = (I − mean(I)) / std(I)``. At low dose the standard deviation is dominated
by shot noise; the network is trained over 50–20 000 e/Å² and learns that range.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def resampled_shape(shape: tuple[int, int], pixel_in_A: float, pixel_out_A: float) -> tuple[int, int]:
    """Shape of the output grid covering the same field: ``floor((n − 1)·p_in/p_out) + 1``."""
    return tuple(int(np.floor((n - 1) * pixel_in_A / pixel_out_A + 1e-9)) + 1 for n in shape)


def resample(image: np.ndarray, pixel_in_A: float, pixel_out_A: float, *, order: int = 1,
             shape: tuple[int, int] | None = None) -> np.ndarray:
    """Resample a 2-D image from pixel size ``pixel_in_A`` to ``pixel_out_A`` [Å].

    Output pixel (r, c) samples the input at (r·p_out/p_in, c·p_out/p_in). When shrinking
    by more than 1.5× the image is first smoothed (Gaussian, σ = 0.4·factor px) against
    aliasing. ``order`` is the spline order (1 = bilinear; 0 = nearest for label maps).
    """
    image = np.asarray(image, np.float32)
    if shape is None:
        shape = resampled_shape(image.shape, pixel_in_A, pixel_out_A)
    if abs(pixel_in_A - pixel_out_A) < 1e-9 * pixel_out_A and tuple(shape) == image.shape:
        return image.copy()
    factor = pixel_out_A / pixel_in_A
    src = image
    if factor > 1.5 and order > 0:
        src = ndimage.gaussian_filter(image, 0.4 * factor, mode="nearest")
    r = np.arange(shape[0], dtype=np.float64) * factor
    c = np.arange(shape[1], dtype=np.float64) * factor
    if order <= 1:
        # Separable bilinear/nearest interpolation: fast and exact for these grids.
        return _interp_axis(_interp_axis(src, r, 0, order), c, 1, order)
    rr, cc = np.meshgrid(r, c, indexing="ij")
    return ndimage.map_coordinates(src, [rr, cc], order=order, mode="nearest").astype(np.float32)


def source_window(n_in: int, pixel_in_A: float, pixel_out_A: float, lo: int,
                  hi: int) -> tuple[int, int]:
    """Input pixels ``[a, b)`` that bilinear output pixels ``lo … hi − 1`` read (one axis).

    For an axis of ``n_in`` input pixels resampled as :func:`resample` does (output
    pixel i samples input coordinate i·p_out/p_in, no anti-alias smoothing).
    """
    f = pixel_out_A / pixel_in_A
    return max(int(np.floor(lo * f)), 0), min(int(np.floor((hi - 1) * f)) + 2, n_in)


def resample_block(window: np.ndarray, offset: tuple[int, int], pixel_in_A: float,
                   pixel_out_A: float, origin: tuple[int, int], size: tuple[int, int], *,
                   squared_weights: bool = False) -> np.ndarray:
    """Output pixels ``[r0, r0 + h) × [c0, c0 + w)`` of a bilinear :func:`resample`, from a part.

    ``window`` is the part of the input image that starts at input pixel ``offset`` and
    holds at least the :func:`source_window` of the block on both axes. The result
    equals ``resample(image, pixel_in_A, pixel_out_A)[r0:r0 + h, c0:c0 + w]`` whenever
    :func:`resample` does not smooth first (``pixel_out_A ≤ 1.5 · pixel_in_A``) and the
    block lies inside the output grid. ``squared_weights`` interpolates with the
    squares of the bilinear weights: applied to Poisson means it gives the noise
    variance of every output pixel.
    """
    f = pixel_out_A / pixel_in_A
    (r0, c0), (h, w) = origin, size
    r = np.arange(r0, r0 + h, dtype=np.float64) * f - offset[0]
    c = np.arange(c0, c0 + w, dtype=np.float64) * f - offset[1]
    out = _interp_axis(np.asarray(window, np.float32), r, 0, 1, squared_weights)
    return _interp_axis(out, c, 1, 1, squared_weights)


def _interp_axis(a: np.ndarray, coords: np.ndarray, axis: int, order: int,
                 squared_weights: bool = False) -> np.ndarray:
    n = a.shape[axis]
    coords = np.clip(coords, 0, n - 1)
    if order == 0:
        return np.take(a, np.rint(coords).astype(np.int64), axis=axis)
    i0 = np.floor(coords).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    w = (coords - i0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    if squared_weights:
        return (np.take(a, i0, axis=axis) * (1 - w) ** 2
                + np.take(a, i1, axis=axis) * w**2).astype(np.float32)
    return (np.take(a, i0, axis=axis) * (1 - w) + np.take(a, i1, axis=axis) * w).astype(np.float32)


def normalize(image: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Standardise a frame by its own mean and standard deviation (gain- and offset-free)."""
    image = np.asarray(image, np.float32)
    mean = float(image.mean(dtype=np.float64))
    std = float(image.std(dtype=np.float64))
    return ((image - mean) / max(std, eps)).astype(np.float32)
