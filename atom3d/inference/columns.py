"""From per-pixel class probabilities of one species to a table of atomic columns.

The network predicts, for one species, probabilities over classes ``0..K`` at every
pixel (0 = background, k = a column of k atoms). A column is a local maximum of the
(lightly smoothed) presence map ``1 - p0``; its position is refined to sub-pixel
precision, and its depth is read from the class probabilities pooled over a small disc
around the refined centre.

Coordinates follow the results-file contract: pixel ``(r, c)`` has its centre at
``x = c * p``, ``y = r * p`` [Å], with ``p`` the pixel size [Å/px].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

#: Defaults of :func:`find_columns` (and :func:`find_columns_from`): minimum presence
#: at a peak, radius of the pooling disc [Å], smoothing of the presence map [Å].
PRESENCE_THRESHOLD = 0.5
POOL_RADIUS_A = 0.4
SMOOTH_SIGMA_A = 0.1

__all__ = ["ColumnTable", "find_columns", "find_columns_from", "maps_from_probs", "pool_support"]


@dataclass(frozen=True)
class ColumnTable:
    """Atomic columns of one species in one frame.

    Attributes
    ----------
    x_A, y_A : numpy.ndarray
        float32, shape ``(N,)``: column centres [Å] (pixel ``(r, c)`` is at ``(c*p, r*p)``).
    depth : numpy.ndarray
        uint8, shape ``(N,)``: number of atoms in the column (1..K).
    confidence : numpy.ndarray
        float32, shape ``(N,)``: pooled probability of ``depth`` given that a column is
        there (classes 1..K renormalised).
    p_column : numpy.ndarray
        float32, shape ``(N,)``: pooled probability that a column is there (``1 - p0``).
    probs : numpy.ndarray, optional
        float32, shape ``(N, K + 1)``: pooled class probabilities (classes 0..K, rows sum
        to one); what time-series smoothing needs. ``None`` is stored as shape ``(N, 0)``.
    """

    x_A: np.ndarray
    y_A: np.ndarray
    depth: np.ndarray
    confidence: np.ndarray
    p_column: np.ndarray
    probs: np.ndarray | None = None

    def __post_init__(self) -> None:
        coerced = {
            "x_A": np.asarray(self.x_A, dtype=np.float32).reshape(-1),
            "y_A": np.asarray(self.y_A, dtype=np.float32).reshape(-1),
            "depth": np.asarray(self.depth, dtype=np.uint8).reshape(-1),
            "confidence": np.asarray(self.confidence, dtype=np.float32).reshape(-1),
            "p_column": np.asarray(self.p_column, dtype=np.float32).reshape(-1),
        }
        n = coerced["x_A"].size
        if self.probs is None:
            coerced["probs"] = np.zeros((n, 0), dtype=np.float32)
        else:
            coerced["probs"] = np.asarray(self.probs, dtype=np.float32)
            if coerced["probs"].ndim != 2:
                raise ValueError(f"ColumnTable.probs must be 2-D, got {coerced['probs'].shape}")
        for name, value in coerced.items():
            if value.shape[0] != n:
                raise ValueError(f"ColumnTable.{name} has {value.shape[0]} rows, x_A has {n}")
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return int(self.x_A.size)

    def select(self, keep: np.ndarray) -> ColumnTable:
        """The rows of the table where the boolean mask ``keep`` (shape ``(N,)``) is true."""
        return ColumnTable(self.x_A[keep], self.y_A[keep], self.depth[keep],
                           self.confidence[keep], self.p_column[keep], self.probs[keep])

    @classmethod
    def empty(cls, n_classes: int = 2) -> ColumnTable:
        """A table without columns; ``n_classes`` = K + 1 sets the width of ``probs``."""
        z = np.zeros(0, dtype=np.float32)
        return cls(z, z, z, z, z, np.zeros((0, n_classes), dtype=np.float32))


def maps_from_probs(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel most probable class and its probability.

    Parameters
    ----------
    probs : numpy.ndarray
        Class probabilities, shape ``(K + 1, H, W)``.

    Returns
    -------
    depth : numpy.ndarray
        uint8, shape ``(H, W)``: argmax class (0 = no column, k = k atoms).
    confidence : numpy.ndarray
        float32, shape ``(H, W)``: probability of that class.
    """
    probs = _check_probs(probs)
    depth = np.argmax(probs, axis=0)
    confidence = np.take_along_axis(probs, depth[None], axis=0)[0]
    return depth.astype(np.uint8), confidence.astype(np.float32)


def find_columns(
    probs: np.ndarray,
    pixel_size_A: float,
    min_separation_A: float,
    threshold: float = PRESENCE_THRESHOLD,
    pool_radius_A: float = POOL_RADIUS_A,
    smooth_sigma_A: float = SMOOTH_SIGMA_A,
) -> ColumnTable:
    """Detect the atomic columns of one species and read their depths.

    Parameters
    ----------
    probs : numpy.ndarray
        Class probabilities of one species, shape ``(K + 1, H, W)``; class 0 = background.
    pixel_size_A : float
        Pixel size [Å/px].
    min_separation_A : float
        No two columns closer than this [Å]; the stronger one wins (Ce: 2.6, O: 1.6 for
        CeO2 [110], whose nearest projected Ce–Ce and O–O distances are 3.31 and 1.91 Å).
    threshold : float
        Minimum presence ``1 - p0`` (unsmoothed) at the peak pixel of a column
        [probability].
    pool_radius_A : float
        Radius of the disc around the refined centre over which class probabilities are
        pooled [Å]; the centre pixel is always included.
    smooth_sigma_A : float
        Standard deviation of the Gaussian that smooths the presence map before peak
        finding and refinement [Å]; 0 disables smoothing.

    Returns
    -------
    ColumnTable
        Columns sorted by ``(y, x)`` of their peak pixel.

    Notes
    -----
    Peaks are 8-connected local maxima of the smoothed presence whose unsmoothed presence
    exceeds ``threshold``, thinned greedily in order of decreasing smoothed presence so
    that none is closer than ``min_separation_A`` to a stronger one. The centre is the centroid of the smoothed presence above half the peak value
    within ``min_separation_A / 2`` of the peak pixel, which is unbiased for a symmetric
    blob. Pooling weights each pixel by its presence ``1 - p0``.
    """
    probs = _check_probs(probs)

    def class_probs(pixels: np.ndarray) -> np.ndarray:
        return np.moveaxis(_gather(probs, pixels)[0], 0, -1)

    return find_columns_from(1.0 - probs[0].astype(np.float32), class_probs, probs.shape[0],
                             pixel_size_A, min_separation_A, threshold=threshold,
                             pool_radius_A=pool_radius_A, smooth_sigma_A=smooth_sigma_A)


def find_columns_from(
    presence: np.ndarray,
    class_probs: Callable[[np.ndarray], np.ndarray],
    n_classes: int,
    pixel_size_A: float,
    min_separation_A: float,
    threshold: float = PRESENCE_THRESHOLD,
    pool_radius_A: float = POOL_RADIUS_A,
    smooth_sigma_A: float = SMOOTH_SIGMA_A,
) -> ColumnTable:
    """:func:`find_columns` from the presence map and class probabilities on demand.

    Parameters
    ----------
    presence : numpy.ndarray
        ``(H, W)`` presence ``1 - p0`` of the species.
    class_probs : callable
        ``class_probs(pixels)`` with ``pixels`` int ``(..., 2)`` of ``(r, c)`` inside the
        image returns the class probabilities there, ``(..., K + 1)``. Only the pixels
        pooled into columns are asked for, so the full ``(K + 1, H, W)`` probabilities
        need never exist (the predictor computes them from the logits of these pixels).
    n_classes : int
        K + 1.
    pixel_size_A, min_separation_A, threshold, pool_radius_A, smooth_sigma_A
        As for :func:`find_columns`.
    """
    if pixel_size_A <= 0:
        raise ValueError(f"pixel_size_A must be > 0, got {pixel_size_A}")
    if min_separation_A < 0 or pool_radius_A < 0 or smooth_sigma_A < 0:
        raise ValueError("min_separation_A, pool_radius_A and smooth_sigma_A must be >= 0")
    presence = np.asarray(presence, dtype=np.float32)
    smooth = (ndimage.gaussian_filter(presence, smooth_sigma_A / pixel_size_A, mode="nearest")
              if smooth_sigma_A > 0 else presence)
    peaks = _local_maxima(smooth, candidates=presence > threshold)
    peaks = _suppress_non_maxima(
        peaks, smooth[peaks[:, 0], peaks[:, 1]], min_separation_A / pixel_size_A
    )
    if peaks.shape[0] == 0:
        return ColumnTable.empty(n_classes)
    peaks = peaks[np.lexsort((peaks[:, 1], peaks[:, 0]))]
    centres = _refine_centroid(smooth, peaks, max(min_separation_A / pixel_size_A / 2, 1.0))
    pixels, weights = pool_support(presence, centres, pool_radius_A / pixel_size_A)
    used = weights > 0  # row-major: grouped by column, each column has its centre pixel
    owner = np.nonzero(used)[0]
    values = np.asarray(class_probs(pixels[used]), dtype=np.float64)  # (P, K + 1)
    starts = np.searchsorted(owner, np.arange(len(centres)))
    pooled = np.add.reduceat(values * weights[used][:, None], starts, axis=0)
    pooled /= weights.sum(axis=1)[:, None]
    pooled /= pooled.sum(axis=1, keepdims=True)
    p_column = 1.0 - pooled[:, 0]
    given_column = pooled[:, 1:] / np.maximum(pooled[:, 1:].sum(axis=1, keepdims=True), 1e-12)
    depth_index = np.argmax(given_column, axis=1)
    return ColumnTable(
        x_A=centres[:, 1] * pixel_size_A,
        y_A=centres[:, 0] * pixel_size_A,
        depth=depth_index + 1,
        confidence=given_column[np.arange(len(depth_index)), depth_index],
        p_column=p_column,
        probs=pooled,
    )


def _check_probs(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[0] < 2:
        raise ValueError(f"probs must have shape (K + 1, H, W) with K >= 1, got {probs.shape}")
    if probs.shape[0] > 256:
        raise ValueError(f"at most 255 depth classes fit in uint8, got {probs.shape[0] - 1}")
    return probs


def _local_maxima(image: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
    """Pixels ``(r, c)`` that are > 0 and >= their 8 neighbours; shape ``(N, 2)``.

    Outside the image the edge values repeat (``maximum_filter(mode="nearest")``).
    ``candidates`` (bool, the image's shape) restricts the search to those pixels,
    in row-major order like the full search.
    """
    if candidates is None:
        is_max = (image == ndimage.maximum_filter(image, size=3, mode="nearest")) & (image > 0)
        return np.argwhere(is_max)
    r, c = np.nonzero(candidates)
    value = image[r, c]
    keep = value > 0
    h, w = image.shape
    for dr in (-1, 0, 1):
        rr = np.clip(r + dr, 0, h - 1)
        for dc in (-1, 0, 1):
            if dr or dc:
                keep &= value >= image[rr, np.clip(c + dc, 0, w - 1)]
    return np.column_stack([r[keep], c[keep]])


def _suppress_non_maxima(
    peaks: np.ndarray, values: np.ndarray, min_distance_px: float
) -> np.ndarray:
    """Keep the strongest peaks such that no two are closer than ``min_distance_px``."""
    if peaks.shape[0] == 0:
        return peaks
    order = np.argsort(-values, kind="stable")
    peaks = peaks[order]
    # all pairs closer than the minimum distance (strictly), i < j: i is the stronger one
    pairs = cKDTree(peaks).query_pairs(np.nextafter(min_distance_px, 0), output_type="ndarray")
    if len(pairs) == 0:
        return peaks
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    firsts, starts = np.unique(pairs[:, 0], return_index=True)
    ends = np.append(starts[1:], len(pairs))
    suppressed = np.zeros(len(peaks), dtype=bool)
    for i, a, b in zip(firsts.tolist(), starts.tolist(), ends.tolist(), strict=True):
        if not suppressed[i]:  # a kept peak suppresses its weaker neighbours
            suppressed[pairs[a:b, 1]] = True
    return peaks[~suppressed]


def _disc_offsets(radius_px: float) -> np.ndarray:
    """Integer offsets ``(dr, dc)`` within ``radius_px`` (+1 px guard), shape ``(M, 2)``."""
    n = int(np.ceil(radius_px)) + 1
    dr, dc = np.mgrid[-n : n + 1, -n : n + 1]
    return np.stack([dr.ravel(), dc.ravel()], axis=1)


def _gather(image: np.ndarray, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values at ``pixels`` (..., 2) and a mask of the pixels inside the image."""
    inside = (
        (pixels[..., 0] >= 0)
        & (pixels[..., 0] < image.shape[-2])
        & (pixels[..., 1] >= 0)
        & (pixels[..., 1] < image.shape[-1])
    )
    r = np.clip(pixels[..., 0], 0, image.shape[-2] - 1)
    c = np.clip(pixels[..., 1], 0, image.shape[-1] - 1)
    return image[..., r, c], inside


def _refine_centroid(smooth: np.ndarray, peaks: np.ndarray, radius_px: float) -> np.ndarray:
    """Sub-pixel centres [px] as the centroid of the presence above half the peak value."""
    offsets = _disc_offsets(radius_px)
    offsets = offsets[np.hypot(offsets[:, 0], offsets[:, 1]) <= radius_px]
    # gathered from a zero-padded copy with flat indices: outside the image the value
    # 0 is below half of any peak (> 0), so it weighs 0 as if masked
    pad = int(np.abs(offsets).max())
    height, width = smooth.shape
    stride = width + 2 * pad
    padded = np.zeros((height + 2 * pad, stride), smooth.dtype)
    padded[pad : pad + height, pad : pad + width] = smooth
    flat = (peaks[:, 0] + pad) * stride + (peaks[:, 1] + pad)
    values = padded.ravel()[flat[:, None] + (offsets[:, 0] * stride + offsets[:, 1])[None]]
    half = 0.5 * smooth[peaks[:, 0], peaks[:, 1]]
    weights = np.clip(values - half[:, None], 0.0, None)
    total = weights.sum(axis=1)
    shift = (weights[..., None] * offsets[None]).sum(axis=1) / np.maximum(total, 1e-300)[:, None]
    return peaks + np.where(total[:, None] > 0, shift, 0.0)


def pool_support(presence: np.ndarray, centres: np.ndarray,
                 radius_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixels and weights over which :func:`find_columns` pools each column's probabilities.

    Parameters
    ----------
    presence : numpy.ndarray
        ``(H, W)`` column presence ``1 - p0``.
    centres : numpy.ndarray
        ``(N, 2)`` refined centres ``(r, c)`` [px].
    radius_px : float
        Pooling radius [px]; the pixel nearest the centre is always included.

    Returns
    -------
    pixels : numpy.ndarray
        ``(N, M, 2)`` int pixel indices ``(r, c)``, clipped into the image.
    weights : numpy.ndarray
        ``(N, M)`` float64: the presence (+1e-12) inside the disc and the image, else 0.
    """
    base = np.rint(centres).astype(np.intp)
    offsets = _disc_offsets(radius_px)
    # a centre lies within sqrt(1/2) px of its rounded pixel: farther offsets are never
    # inside the disc (dropping them changes no weight, only the work)
    offsets = offsets[np.hypot(offsets[:, 0], offsets[:, 1]) <= radius_px + 0.7072]
    pixels = base[:, None, :] + offsets[None]
    distance = np.hypot(*(pixels - centres[:, None, :]).transpose(2, 0, 1))
    in_disc = (distance <= radius_px) | np.all(offsets == 0, axis=1)[None]
    weights, inside = _gather(presence, pixels)
    weights = np.where(in_disc & inside,
                       np.clip(weights.astype(np.float64), 0.0, None) + 1e-12, 0.0)
    pixels = np.stack([np.clip(pixels[..., 0], 0, presence.shape[0] - 1),
                       np.clip(pixels[..., 1], 0, presence.shape[1] - 1)], axis=-1)
    return pixels, weights
