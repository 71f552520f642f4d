"""Tests of atom3d.inference.columns: column detection, sub-pixel positions and pooled depths."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial import cKDTree

from atom3d.inference.columns import ColumnTable, find_columns, maps_from_probs

A_CEO2 = 5.411  # lattice constant [Å]
K = 8  # maximum depth in these tests


def ceo2_110_columns(extent_A: float, offset_A=(0.0, 0.0), border_A: float = 1.2):
    """Projected Ce and O column positions (x, y) [Å] of CeO2 along [110] inside a square.

    Ce: centred rectangular cell a/sqrt(2) x a; O: rectangular cell a/(2 sqrt(2)) x a/2,
    shifted by a/4 along y. Nearest distances Ce-Ce 3.31, O-O 1.91, Ce-O 1.35 Å.
    """
    ax, ay = A_CEO2 / np.sqrt(2), A_CEO2
    i, j = np.mgrid[-2:12, -2:12].reshape(2, -1)
    ce = np.concatenate(
        [np.stack([i * ax, j * ay], 1), np.stack([i * ax + ax / 2, j * ay + ay / 2], 1)]
    )
    o = np.stack([i * ax / 2, j * ay / 2 + A_CEO2 / 4], 1)

    def inside(p):
        p = p + np.asarray(offset_A)
        keep = np.all((p >= border_A) & (p <= extent_A - border_A), axis=1)
        return p[keep]

    return inside(ce), inside(o)


def synthetic_probs(
    xy_A, depths, shape, pixel_size_A, sigma_A, p_depth=0.85, amplitude=None, flat_top=False
):
    """Class probabilities (K + 1, H, W) of columns with known depths.

    Presence ``1 - p0`` is a sum of Gaussians (or flat-topped super-Gaussians) of peak
    ``amplitude`` (default 1); a column's presence goes to its depth with probability
    ``p_depth`` and evenly to the other depths.
    """
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    x, y = cols * pixel_size_A, rows * pixel_size_A
    probs = np.zeros((K + 1, *shape))
    amplitude = np.ones(len(depths)) if amplitude is None else np.asarray(amplitude)
    for (cx, cy), d, a in zip(xy_A, depths, amplitude, strict=True):
        u = ((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma_A**2)
        g = a * np.exp(-(u**3) if flat_top else -u)
        share = np.full(K, (1 - p_depth) / (K - 1))
        share[d - 1] = p_depth
        probs[1:] += share[:, None, None] * g
    probs[0] = 1 - probs[1:].sum(axis=0)
    assert probs[0].min() > -1e-6
    return probs.astype(np.float32)


def match(found: ColumnTable, xy_true):
    """Index of the nearest found column for each true column and the distances [Å]."""
    tree = cKDTree(np.stack([found.x_A, found.y_A], 1))
    dist, idx = tree.query(xy_true)
    return dist, idx


@pytest.mark.parametrize(("species", "min_sep"), [("Ce", 2.6), ("O", 1.6)])
def test_ceo2_lattice_all_columns_found_with_exact_depths(species, min_sep):
    rng = np.random.default_rng(1)
    pixel, extent = 0.1, 16.0
    ce, o = ceo2_110_columns(extent, offset_A=(0.437, 0.283))
    xy = ce if species == "Ce" else o
    depths = rng.integers(1, K + 1, size=len(xy))
    shape = (int(extent / pixel), int(extent / pixel))
    probs = synthetic_probs(xy, depths, shape, pixel, sigma_A=0.3)
    table = find_columns(probs, pixel, min_separation_A=min_sep)
    assert len(table) == len(xy)
    dist, idx = match(table, xy)
    assert len(np.unique(idx)) == len(xy)
    assert dist.max() < 0.05
    np.testing.assert_array_equal(table.depth[idx], depths)
    np.testing.assert_allclose(table.confidence, 0.85, atol=1e-3)
    # presence-weighted mean of a unit Gaussian (sigma s) over a disc of radius R = 0.4 Å
    q = 0.4**2 / (2 * 0.3**2)
    expected = 0.5 * (1 - np.exp(-2 * q)) / (1 - np.exp(-q))
    np.testing.assert_allclose(table.p_column, expected, atol=0.03)
    assert table.probs.shape == (len(xy), K + 1)
    np.testing.assert_allclose(table.probs.sum(axis=1), 1.0, atol=1e-5)
    assert table.x_A.dtype == np.float32 and table.depth.dtype == np.uint8
    assert table.confidence.dtype == np.float32 and table.p_column.dtype == np.float32


@given(
    pixel=st.floats(0.05, 0.2),
    sigma_A=st.floats(0.2, 0.45),
    frac=st.tuples(st.floats(0, 1), st.floats(0, 1)),
    shift_px=st.tuples(st.integers(0, 7), st.integers(0, 7)),
    depth=st.integers(1, K),
)
@settings(max_examples=60, deadline=None)
def test_subpixel_position_and_translation(pixel, sigma_A, frac, shift_px, depth):
    """A column anywhere between pixels is located within 0.05 Å; shifting the map by whole
    pixels shifts the result by exactly that many pixel sizes."""
    size = int(np.ceil(4.0 / pixel))
    xy = np.array([[2.0 + frac[0] * pixel, 1.9 + frac[1] * pixel]])
    probs = synthetic_probs(xy, [depth], (size, size), pixel, sigma_A=sigma_A)
    table = find_columns(probs, pixel, min_separation_A=2.6)
    assert len(table) == 1
    assert np.hypot(table.x_A[0] - xy[0, 0], table.y_A[0] - xy[0, 1]) < 0.05
    assert table.depth[0] == depth

    dr, dc = shift_px
    shifted = np.pad(probs, ((0, 0), (dr, 0), (dc, 0)), mode="edge")  # background padding
    moved = find_columns(shifted, pixel, min_separation_A=2.6)
    assert len(moved) == 1
    assert abs(moved.x_A[0] - table.x_A[0] - dc * pixel) < 1e-4
    assert abs(moved.y_A[0] - table.y_A[0] - dr * pixel) < 1e-4
    assert moved.depth[0] == depth


def test_empty_map_gives_empty_table():
    probs = np.zeros((K + 1, 32, 40), dtype=np.float32)
    probs[0] = 1.0
    table = find_columns(probs, 0.1, 2.6)
    assert len(table) == 0
    assert table.x_A.shape == (0,) and table.depth.dtype == np.uint8
    assert table.probs.shape == (0, K + 1)


def test_threshold_selects_columns_by_presence():
    pixel = 0.1
    xy = np.array([[1.0, 1.5], [2.0, 1.5], [3.0, 1.5]]) * 2.0
    probs = synthetic_probs(
        xy, [3, 4, 5], (30, 80), pixel, sigma_A=0.7, amplitude=[0.3, 0.7, 0.95], flat_top=True
    )
    counts = {t: len(find_columns(probs, pixel, 1.6, threshold=t)) for t in (0.1, 0.5, 0.9, 0.99)}
    assert counts == {0.1: 3, 0.5: 2, 0.9: 1, 0.99: 0}
    table = find_columns(probs, pixel, 1.6, threshold=0.1)
    np.testing.assert_array_equal(table.depth, [3, 4, 5])
    np.testing.assert_allclose(table.p_column, [0.3, 0.7, 0.95], atol=0.03)
    assert np.all(np.diff(table.p_column) > 0)


def test_min_separation_keeps_the_stronger_of_two_close_columns():
    pixel = 0.1
    xy = np.array([[2.0, 2.0], [4.0, 2.0]])  # 2.0 Å apart
    probs = synthetic_probs(xy, [2, 6], (40, 60), pixel, sigma_A=0.3, amplitude=[0.8, 0.95])
    assert len(find_columns(probs, pixel, min_separation_A=1.6)) == 2
    one = find_columns(probs, pixel, min_separation_A=2.6)
    assert len(one) == 1 and one.depth[0] == 6
    assert abs(one.x_A[0] - 4.0) < 0.05


def test_column_touching_the_border_is_found():
    pixel = 0.1
    probs = synthetic_probs(np.array([[0.0, 1.5]]), [4], (30, 30), pixel, sigma_A=0.3)
    table = find_columns(probs, pixel, 2.6)
    assert len(table) == 1 and table.depth[0] == 4
    assert abs(table.x_A[0]) < 0.1 and abs(table.y_A[0] - 1.5) < 0.05


def test_maps_from_probs():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(K + 1), size=(12, 10)).transpose(2, 0, 1)
    depth, confidence = maps_from_probs(probs)
    assert depth.dtype == np.uint8 and confidence.dtype == np.float32
    np.testing.assert_array_equal(depth, probs.argmax(axis=0))
    np.testing.assert_allclose(confidence, probs.max(axis=0), rtol=1e-6)


def test_bad_input_raises():
    with pytest.raises(ValueError):
        find_columns(np.zeros((1, 8, 8)), 0.1, 2.6)
    with pytest.raises(ValueError):
        find_columns(np.zeros((3, 8, 8)), 0.0, 2.6)
    with pytest.raises(ValueError):
        ColumnTable([0.0, 1.0], [0.0], [1], [1.0], [1.0])


def test_peak_thinning_equals_greedy_reference():
    """The vectorised thinning keeps exactly the peaks of the plain greedy loop."""
    from scipy.spatial import cKDTree

    from atom3d.inference.columns import _suppress_non_maxima

    def greedy(peaks, values, d):
        order = np.argsort(-values, kind="stable")
        peaks = peaks[order]
        tree = cKDTree(peaks)
        suppressed = np.zeros(len(peaks), bool)
        keep = []
        for i in range(len(peaks)):
            if not suppressed[i]:
                keep.append(i)
                suppressed[tree.query_ball_point(peaks[i], np.nextafter(d, 0))] = True
        return peaks[keep]

    rng = np.random.default_rng(0)
    for _ in range(30):
        peaks = np.unique(rng.integers(0, 200, (int(rng.integers(1, 800)), 2)), axis=0)
        values = rng.integers(0, 4, len(peaks)).astype(float)  # many ties
        d = float(rng.uniform(1, 15))
        np.testing.assert_array_equal(_suppress_non_maxima(peaks, values, d),
                                      greedy(peaks, values, d))


def test_local_maxima_on_candidates_equal_the_full_search():
    from atom3d.inference.columns import _local_maxima

    rng = np.random.default_rng(4)
    image = np.round(rng.uniform(-0.2, 1, (40, 37)), 1).astype(np.float32)  # plateaus too
    image[0, :] = 1.0  # maxima on the border, equal neighbours outside
    full = _local_maxima(image)
    everywhere = _local_maxima(image, candidates=np.ones(image.shape, bool))
    np.testing.assert_array_equal(everywhere, full)
    mask = rng.uniform(size=image.shape) > 0.5
    some = _local_maxima(image, candidates=mask)
    np.testing.assert_array_equal(some, full[mask[full[:, 0], full[:, 1]]])
    assert len(some) > 5


def test_column_table_select_keeps_rows_aligned():
    from atom3d.inference.columns import ColumnTable

    n = 5
    table = ColumnTable(np.arange(n), 10 + np.arange(n), np.arange(1, n + 1),
                        np.linspace(0.1, 0.5, n), np.linspace(0.6, 1.0, n),
                        np.eye(n, 3))
    keep = np.array([True, False, True, False, True])
    sub = table.select(keep)
    assert len(sub) == 3
    np.testing.assert_array_equal(sub.x_A, [0, 2, 4])
    np.testing.assert_array_equal(sub.y_A, [10, 12, 14])
    np.testing.assert_array_equal(sub.depth, [1, 3, 5])
    np.testing.assert_allclose(sub.p_column, table.p_column[keep])
    np.testing.assert_array_equal(sub.probs, np.eye(n, 3)[keep])
    assert len(ColumnTable([], [], [], [], []).select(np.zeros(0, bool))) == 0
