import math

import numpy as np
import pytest

from atom3d.inference.dose import estimate_dose


def _phase_contrast(shape=(256, 256), pixel=0.2, seed=0):
    """Band-limited contrast around the incident intensity 1 (like an HRTEM image)."""
    r, c = np.mgrid[: shape[0], : shape[1]] * pixel
    rng = np.random.default_rng(seed)
    img = np.ones(shape)
    for _ in range(12):  # spatial frequencies up to 1 / Å
        k = rng.uniform(0.2, 1.0)
        a = rng.uniform(0, np.pi)
        img += 0.03 * np.cos(2 * np.pi * k * (np.cos(a) * c + np.sin(a) * r) + rng.uniform(0, 6))
    return img


@pytest.mark.parametrize("dose", [50.0, 1000.0, 20000.0])
@pytest.mark.parametrize("pixel", [0.15, 0.3])
def test_dose_from_shot_noise_any_gain(dose, pixel):
    img = _phase_contrast(pixel=pixel)
    counts = np.random.default_rng(1).poisson(img * dose * pixel**2).astype(np.float64)
    assert estimate_dose(counts, pixel) == pytest.approx(dose, rel=0.1)
    # a detector gain scales mean and noise alike: the estimate does not move
    assert estimate_dose(7.3 * counts, pixel) == pytest.approx(estimate_dose(counts, pixel))


def test_an_offset_or_lost_noise_biases_the_estimate():
    img = _phase_contrast()
    counts = np.random.default_rng(2).poisson(img * 1000 * 0.04).astype(np.float64)
    assert estimate_dose(counts + 100, 0.2) > 2 * estimate_dose(counts, 0.2)


@pytest.mark.parametrize("frame", [np.zeros((64, 64)), np.full((64, 64), 5.0),
                                   -np.ones((64, 64)), np.ones((4, 64)), np.ones(64)])
def test_no_dose_without_mean_or_noise(frame):
    assert math.isnan(estimate_dose(frame, 0.2))


def test_large_frames_are_measured_on_their_centre():
    img = _phase_contrast(shape=(1500, 1100))
    counts = np.random.default_rng(3).poisson(img * 500 * 0.04).astype(np.float32)
    assert estimate_dose(counts, 0.2) == pytest.approx(500, rel=0.1)
