"""Label properties: shape, range, decay, soft targets, weights (hypothesis)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from atom3d.simulation.labels import (
    class_mass,
    column_targets,
    dequantise_amplitude,
    quantise_amplitude,
    weight_map,
)


@settings(max_examples=40, deadline=None)
@given(x=st.floats(2, 14), y=st.floats(2, 14), depth=st.integers(1, 20),
       p=st.floats(0.1, 0.6), sigma=st.floats(0.3, 0.5))
def test_single_column_target(x, y, depth, p, sigma):
    shape = (int(16 / p), int(16 / p))
    cls, amp = column_targets(np.array([[x, y]]), np.array([depth]), shape, p, sigma)
    assert cls.shape == shape and amp.shape == shape
    assert cls.dtype == np.uint8 and set(np.unique(cls)) <= {0, depth}
    assert amp.min() >= 0 and amp.max() <= 1
    # Peak at the pixel nearest the column centre, amplitude there ≥ exp(-(p/√2)²/2σ²).
    r, c = np.unravel_index(np.argmax(amp), shape)
    assert abs(c * p - x) <= p / 2 + 1e-9 and abs(r * p - y) <= p / 2 + 1e-9
    assert amp[r, c] >= np.exp(-(p**2 / 2) / (2 * sigma**2)) - 1e-6
    # Gaussian decay with distance.
    rr, cc = np.indices(shape)
    d = np.hypot(cc * p - x, rr * p - y)
    expect = np.exp(-d**2 / (2 * sigma**2))
    expect[expect < 1 / 255] = 0
    assert np.allclose(amp, expect, atol=1e-6)
    assert np.all(cls[amp > 0] == depth)


def test_overlapping_columns_take_the_nearer_class():
    cls, amp = column_targets(np.array([[2.0, 2.0], [3.3, 2.0]]), np.array([3, 7]),
                              (20, 30), 0.2, 0.4)
    assert cls[10, 10] == 3 and cls[10, int(3.3 / 0.2)] == 7


def test_soft_targets_sum_to_one_and_quantisation_round_trips():
    rng = np.random.default_rng(0)
    xy = rng.uniform(1, 9, (12, 2))
    cls, amp = column_targets(xy, rng.integers(1, 10, 12), (50, 50), 0.2, 0.4)
    amp = dequantise_amplitude(quantise_amplitude(amp))
    import torch

    from atom3d.training.losses import soft_targets

    t = soft_targets(torch.from_numpy(cls[None].astype(np.int64)), torch.from_numpy(amp[None]), 11)[0].numpy()
    assert np.allclose(t.sum(0), 1.0, atol=1e-6)
    assert np.all(t >= 0)
    m = class_mass(cls, amp, 11)
    assert np.isclose(m.sum(), 50 * 50)
    assert np.allclose(m, t.sum(axis=(1, 2)), rtol=1e-5)


def test_weight_map_up_weights_cores_and_rims():
    amp = np.array([0.0, 0.5, 1.0], np.float32)
    w = weight_map(amp, core_weight=4.0, rim_weight=2.0)
    assert w[0] == 1.0 and w[1] == 1 + 2 + 2 and w[2] == 5.0
