"""Tests of atom3d.inference.tiling: coverage, blending weights and exactness of tiled inference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from atom3d.inference.tiling import predict_tiled, tile_starts, tile_weights


def local_filter(kernel: np.ndarray, mode: str = "constant"):
    """A translation-equivariant predictor with receptive-field radius ``kernel.shape[0] // 2``.

    Two output channels: a correlation and a pointwise nonlinearity of it.
    """

    def predict(batch: np.ndarray) -> np.ndarray:
        assert batch.ndim == 4 and batch.shape[1] == 1 and batch.dtype == np.float32
        lin = np.stack(
            [ndimage.correlate(b[0].astype(np.float64), kernel, mode=mode) for b in batch]
        )
        return np.stack([lin, np.tanh(lin)], axis=1)

    return predict


@st.composite
def tiling_case(draw):
    """Random image size, tile, overlap, margin and a receptive-field radius <= margin."""
    tile = draw(st.integers(8, 40))
    overlap = draw(st.integers(0, tile - 1))
    margin = draw(st.integers(0, overlap // 2))
    radius = draw(st.integers(0, margin))
    height = draw(st.integers(1, 3 * tile))
    width = draw(st.integers(1, 3 * tile))
    seed = draw(st.integers(0, 2**31 - 1))
    return height, width, tile, overlap, margin, radius, seed


@given(length=st.integers(1, 500), tile=st.integers(1, 64), data=st.data())
@settings(max_examples=200, deadline=None)
def test_tile_starts_cover_with_overlap(length, tile, data):
    overlap = data.draw(st.integers(0, tile - 1))
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0
    assert starts[-1] == max(length - tile, 0)
    gaps = np.diff(starts)
    assert np.all(gaps > 0)
    assert np.all(gaps <= tile - overlap)  # consecutive tiles overlap by >= overlap


def test_tile_starts_examples():
    assert tile_starts(100, 256, 64) == [0]
    assert tile_starts(256, 256, 64) == [0]
    assert tile_starts(257, 256, 64) == [0, 1]
    assert tile_starts(448, 256, 64) == [0, 192]
    starts = tile_starts(1000, 256, 64)
    assert starts[-1] == 744 and len(starts) == 5


@pytest.mark.parametrize("bad", [(0, 0), (8, 8), (8, -1)])
def test_tile_starts_rejects_bad_parameters(bad):
    with pytest.raises(ValueError):
        tile_starts(100, *bad)


def test_tile_weights_ramps_are_a_partition_of_unity():
    tile, overlap, margin = 32, 12, 3
    left = tile_weights(tile, overlap, margin, taper_start=False, taper_end=True)
    right = tile_weights(tile, overlap, margin, taper_start=True, taper_end=False)
    assert np.all(left[-margin:] == 0) and np.all(right[:margin] == 0)
    assert left[0] == 1 and right[-1] == 1
    np.testing.assert_allclose(left[tile - overlap :] + right[:overlap], 1.0, atol=1e-12)


@given(case=tiling_case())
@settings(max_examples=60, deadline=None)
def test_tiled_equals_whole_image_away_from_borders(case):
    height, width, tile, overlap, margin, radius, seed = case
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(height, width)).astype(np.float32)
    kernel = rng.normal(size=(2 * radius + 1, 2 * radius + 1))
    tiled = predict_tiled(
        image, local_filter(kernel), tile=tile, overlap=overlap, batch_size=3, margin=margin
    )
    assert tiled.shape == (2, height, width) and tiled.dtype == np.float32
    # the whole-image result, with a different boundary mode: borders must not matter inside
    whole = local_filter(kernel, mode="reflect")(image[None, None])[0]
    inner = (slice(None), slice(radius, height - radius), slice(radius, width - radius))
    np.testing.assert_allclose(tiled[inner], whole[inner], atol=1e-5, rtol=1e-5)


@given(case=tiling_case(), data=st.data())
@settings(max_examples=40, deadline=None)
def test_region_of_large_frame_equals_cropped_region_with_margin(case, data):
    height, width, tile, overlap, margin, radius, seed = case
    rng = np.random.default_rng(seed)
    big = rng.normal(size=(height + 2 * tile, width + 2 * tile)).astype(np.float32)
    kernel = rng.normal(size=(2 * radius + 1, 2 * radius + 1))
    predict = local_filter(kernel)
    y0 = data.draw(st.integers(radius, big.shape[0] - height - radius))
    x0 = data.draw(st.integers(radius, big.shape[1] - width - radius))
    kwargs = dict(tile=tile, overlap=overlap, margin=margin)
    full = predict_tiled(big, predict, **kwargs)[:, y0 : y0 + height, x0 : x0 + width]
    crop = big[y0 - radius : y0 + height + radius, x0 - radius : x0 + width + radius]
    cropped = predict_tiled(crop, predict, **kwargs)[
        :, radius : radius + height, radius : radius + width
    ]
    np.testing.assert_allclose(full, cropped, atol=1e-5, rtol=1e-5)


def test_default_margin_blends_without_seams():
    """A smooth input and a predictor with boundary artefacts: the default blend stays smooth."""
    yy, xx = np.mgrid[0:200, 0:300].astype(np.float32)
    image = np.sin(xx / 17.0) + np.cos(yy / 23.0)
    kernel = np.full((5, 5), 1 / 25)
    tiled = predict_tiled(image, local_filter(kernel), tile=64, overlap=16, batch_size=4)
    whole = local_filter(kernel, mode="reflect")(image[None, None])[0]
    np.testing.assert_allclose(tiled[:, 2:-2, 2:-2], whole[:, 2:-2, 2:-2], atol=1e-5)


def test_small_image_is_reflect_padded_and_cropped():
    image = np.arange(35, dtype=np.float32).reshape(5, 7)
    seen = []

    def identity(batch):
        seen.append(batch.shape)
        return batch.copy()

    out = predict_tiled(image, identity, tile=16, overlap=4)
    assert seen == [(1, 1, 16, 16)]
    np.testing.assert_array_equal(out[0], image)


def test_constant_predictor_is_reproduced_exactly():
    """Normalisation by the summed weights: a constant output stays constant everywhere."""
    image = np.zeros((123, 77), dtype=np.float32)
    out = predict_tiled(
        image, lambda b: np.full((b.shape[0], 3, 32, 32), 0.25), tile=32, overlap=10, n_out=3
    )
    np.testing.assert_allclose(out, 0.25, rtol=1e-6)


def test_wrong_output_shape_raises():
    image = np.zeros((40, 40), dtype=np.float32)
    with pytest.raises(ValueError, match="predict_fn returned shape"):
        predict_tiled(image, lambda b: np.zeros((b.shape[0], 2, 8, 8)), tile=16, overlap=4)
    with pytest.raises(ValueError, match="predict_fn returned shape"):
        predict_tiled(
            image, lambda b: np.zeros((b.shape[0], 2, 16, 16)), tile=16, overlap=4, n_out=3
        )
    with pytest.raises(ValueError):
        predict_tiled(np.zeros(10), lambda b: b, tile=16, overlap=4)
