"""Shot noise: the one place where electron counts are drawn from noise-free images."""

from __future__ import annotations

import numpy as np


def expected_counts(image: np.ndarray, dose_e_per_A2: float, pixel_size_A: float) -> np.ndarray:
    """Mean electrons per pixel, ``dose × p² × intensity`` (intensity: vacuum = 1)."""
    return np.clip(image, 0, None) * (dose_e_per_A2 * pixel_size_A**2)


def add_shot_noise(image: np.ndarray, dose_e_per_A2: float, pixel_size_A: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Poisson counts [e/px] for a noise-free image in units of the incident intensity.

    Each pixel is drawn from Poisson(dose × p² × intensity): its mean and variance both
    equal ``dose_e_per_A2 × pixel_size_A² × image``.

    Parameters
    ----------
    image
        Noise-free intensity, vacuum = 1.
    dose_e_per_A2
        Electron dose of the frame [e/Å²].
    pixel_size_A
        Detector pixel size [Å].
    """
    return rng.poisson(expected_counts(image, dose_e_per_A2, pixel_size_A)).astype(np.float32)
