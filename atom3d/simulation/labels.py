"""Smoothed column-occupancy targets and spatial weight maps on the detector grid.

For each species the target of a pixel is a probability distribution over classes
0 (background) … K (a column of K atoms). At a column centre it is the column's class;
moving away it blends into background with a Gaussian of width ``sigma_A``:

    target = a · onehot(k) + (1 − a) · onehot(0),   a(r) = exp(−r² / 2σ²)

where k is the depth of the column whose Gaussian is largest at that pixel. The pair
(class map k, amplitude map a) stores the whole target compactly (the soft targets
themselves are built on the batch by :func:`atom3d.training.losses.soft_targets`) (two uint8 arrays; a is
quantised to 1/255). Pixels with a < 1/255 are background.

The spatial weight map up-weights column cores and their rims, where the boundary between
a column and background is decided:

    w = 1 + core_weight · a + rim_weight · 4a(1 − a)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabelConfig:
    """Parameters of the targets.

    Parameters
    ----------
    sigma_A
        Gaussian width of the column targets [Å] (0.3–0.5 Å is sensible).
    core_weight, rim_weight
        Extra loss weight at column cores and rims (see module docstring).
    max_depth
        Largest class K for every species; deeper columns are an error.
    """

    sigma_A: float = 0.4
    core_weight: float = 4.0
    rim_weight: float = 2.0
    max_depth: int = 20

    def __post_init__(self):
        if not 0.1 <= self.sigma_A <= 1.5:
            raise ValueError(f"sigma_A={self.sigma_A} must be within 0.1 … 1.5 Å")
        if not 1 <= self.max_depth <= 254:
            raise ValueError("max_depth must be within 1 … 254")
        if self.core_weight < 0 or self.rim_weight < 0:
            raise ValueError("core_weight and rim_weight must be >= 0")


def column_targets(xy_A: np.ndarray, depth: np.ndarray, shape: tuple[int, int],
                   pixel_size_A: float, sigma_A: float) -> tuple[np.ndarray, np.ndarray]:
    """Class map (uint8) and amplitude map (float32 in [0, 1]) of one species.

    Parameters
    ----------
    xy_A
        (C, 2) column positions [Å], pixel (r, c) centred at (c·p, r·p).
    depth
        (C,) atoms per column (the class).
    shape
        (H, W) of the detector grid.
    pixel_size_A
        Detector pixel size p [Å].
    sigma_A
        Gaussian width [Å].
    """
    h, w = shape
    cls = np.zeros(shape, np.uint8)
    amp = np.zeros(shape, np.float32)
    xy = np.asarray(xy_A, float).reshape(-1, 2)
    depth = np.asarray(depth)
    if len(xy) != len(depth):
        raise ValueError(f"{len(xy)} positions but {len(depth)} depths")
    keep = depth != 0
    if not keep.any():
        return cls, amp
    xy, depth = xy[keep], depth[keep]
    p = float(pixel_size_A)
    rad = 3.5 * sigma_A / p
    cx, cy = xy[:, 0] / p, xy[:, 1] / p
    c0 = np.maximum(np.floor(cx - rad).astype(np.int64), 0)
    c1 = np.minimum(np.ceil(cx + rad).astype(np.int64) + 1, w)
    r0 = np.maximum(np.floor(cy - rad).astype(np.int64), 0)
    r1 = np.minimum(np.ceil(cy + rad).astype(np.int64) + 1, h)
    # The Gaussian is separable: one row and one column profile per column, computed for
    # all columns at once; the loop only takes the pixel-wise maximum.
    offsets = np.arange(int(np.ceil(2 * rad)) + 2)
    k2 = p * p / (2 * sigma_A**2)
    gx = np.exp(-((c0[:, None] + offsets - cx[:, None]) ** 2) * k2)
    gy = np.exp(-((r0[:, None] + offsets - cy[:, None]) ** 2) * k2)
    for i, (a0, a1, b0, b1, k) in enumerate(zip(r0.tolist(), r1.tolist(), c0.tolist(),
                                                c1.tolist(), depth.tolist(), strict=True)):
        if b0 >= b1 or a0 >= a1:
            continue
        a = gy[i, :a1 - a0, None] * gx[i, None, :b1 - b0]
        win_amp = amp[a0:a1, b0:b1]
        better = a > win_amp
        win_amp[better] = a[better]
        cls[a0:a1, b0:b1][better] = k
    low = amp < 1 / 255
    cls[low] = 0
    amp[low] = 0
    return cls, amp


def quantise_amplitude(amp: np.ndarray) -> np.ndarray:
    """Amplitude in [0, 1] → uint8 (0 … 255)."""
    return np.round(np.clip(amp, 0, 1) * 255).astype(np.uint8)


def dequantise_amplitude(q: np.ndarray) -> np.ndarray:
    """uint8 (0 … 255) → amplitude float32 in [0, 1]."""
    return q.astype(np.float32) / 255.0


def weight_map(amp: np.ndarray, core_weight: float, rim_weight: float) -> np.ndarray:
    """Spatial loss weights from an amplitude map (see module docstring)."""
    return (1.0 + core_weight * amp + rim_weight * 4.0 * amp * (1.0 - amp)).astype(np.float32)


def class_mass(cls: np.ndarray, amp: np.ndarray, n_classes: int) -> np.ndarray:
    """Summed soft-target mass per class over an image (for class frequencies)."""
    mass = np.bincount(cls.ravel().astype(np.int64), weights=amp.ravel(), minlength=n_classes)
    mass[0] += float((1.0 - amp).sum())
    return mass[:n_classes]
