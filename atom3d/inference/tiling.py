"""Tiled inference: run a fixed-size predictor over an image of any size and blend the tiles.

A network is applied to square tiles of ``tile`` pixels that overlap by at least
``overlap`` pixels. Inside each overlap, the ``margin`` pixels next to a tile's inner
edge (the edge it shares with a neighbouring tile) get weight zero, and the remaining
``overlap - 2 * margin`` pixels are cross-faded with a cosine ramp whose two halves sum to
one. Tile edges that lie on the image border are not tapered, so the summed weight is
positive everywhere and the result is the weighted mean of the tiles.

Consequence (tested): for a translation-equivariant predictor whose receptive field has
a radius of at most ``margin`` pixels, the tiled result equals the whole-image result at
every pixel at least that radius away from the image border. With the default
``margin = overlap // 4`` the middle half of every overlap is blended smoothly; with
``margin = overlap // 2`` the tiles are cut hard at the middle of the overlap, which is
exact for receptive fields up to ``overlap / 2`` but no longer blends.

Images smaller than a tile are padded by reflection and cropped back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

__all__ = ["predict_tiled", "tile_starts", "tile_weights"]

PredictFn = Callable[[np.ndarray], np.ndarray]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the tiles that cover ``[0, length)`` along one axis.

    Tiles are spread evenly: the first starts at 0, the last ends flush with
    ``length``, and consecutive tiles overlap by at least ``overlap`` pixels.

    Parameters
    ----------
    length : int
        Length of the axis [px], >= 1.
    tile : int
        Tile size [px], >= 1.
    overlap : int
        Minimum overlap of consecutive tiles [px], ``0 <= overlap < tile``.

    Returns
    -------
    list of int
        Start offsets [px], strictly increasing. ``[0]`` when ``length <= tile``
        (the caller pads the axis up to ``tile``).
    """
    _check_tiling(tile, overlap)
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if length <= tile:
        return [0]
    stride = tile - overlap
    span = length - tile
    n_gaps = -(-span // stride)  # ceil: every gap <= stride
    return [round(i * span / n_gaps) for i in range(n_gaps + 1)]


def tile_weights(
    tile: int, overlap: int, margin: int, taper_start: bool, taper_end: bool
) -> np.ndarray:
    """One-dimensional blending weights of one tile.

    Parameters
    ----------
    tile : int
        Tile size [px].
    overlap : int
        Nominal overlap of consecutive tiles [px].
    margin : int
        Pixels next to a tapered edge that get weight zero [px],
        ``0 <= margin <= overlap // 2``.
    taper_start, taper_end : bool
        Whether the edge at index 0 / index ``tile - 1`` is shared with a neighbouring
        tile (tapered) or lies on the image border (weight one up to the edge).

    Returns
    -------
    numpy.ndarray
        float64 weights, shape ``(tile,)``, in ``[0, 1]``. A ramp of
        ``overlap - 2 * margin`` pixels follows the zero margin; the ramps of two tiles
        overlapping by exactly ``overlap`` pixels sum to one.
    """
    _check_tiling(tile, overlap)
    if not 0 <= margin <= overlap // 2:
        raise ValueError(f"margin must be in [0, overlap // 2 = {overlap // 2}], got {margin}")
    n_ramp = overlap - 2 * margin
    ramp = np.sin(0.5 * np.pi * (np.arange(n_ramp) + 0.5) / max(n_ramp, 1)) ** 2
    edge = np.concatenate([np.zeros(margin), ramp])
    w = np.ones(tile)
    if taper_start:
        w[: edge.size] = np.minimum(w[: edge.size], edge)
    if taper_end:
        w[tile - edge.size :] = np.minimum(w[tile - edge.size :], edge[::-1])
    return w


def predict_tiled(
    image: np.ndarray,
    predict_fn: PredictFn,
    tile: int = 256,
    overlap: int = 64,
    batch_size: int = 8,
    n_out: int | None = None,
    margin: int | None = None,
) -> np.ndarray:
    """Apply ``predict_fn`` to overlapping tiles of ``image`` and blend the results.

    Parameters
    ----------
    image : numpy.ndarray
        Image, shape ``(H, W)``; converted to float32.
    predict_fn : callable
        ``predict_fn(batch) -> out`` with ``batch`` float32 of shape ``(B, 1, tile, tile)``
        and ``out`` array-like of shape ``(B, C, tile, tile)`` (probabilities or logits).
        ``B <= batch_size``.
    tile : int
        Tile size [px].
    overlap : int
        Minimum overlap of neighbouring tiles [px], ``0 <= overlap < tile``.
    batch_size : int
        Maximum number of tiles per call of ``predict_fn``.
    n_out : int, optional
        Number of output channels ``C``; checked against the predictor's output when given.
    margin : int, optional
        Pixels at each inner tile edge that are discarded [px]; default ``overlap // 4``.
        The result is exact for predictors with receptive-field radius <= ``margin``.

    Returns
    -------
    numpy.ndarray
        float32, shape ``(C, H, W)``: the weighted mean of the tile predictions.

    Raises
    ------
    ValueError
        On a non-2-D image, inconsistent tiling parameters or a predictor output of the
        wrong shape.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"image must be a non-empty 2-D array, got shape {image.shape}")
    _check_tiling(tile, overlap)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    margin = overlap // 4 if margin is None else margin

    padded, crop = _pad_to_tile(image, tile)
    starts_y = tile_starts(padded.shape[0], tile, overlap)
    starts_x = tile_starts(padded.shape[1], tile, overlap)
    wy = [_axis_weights(s, starts_y, tile, overlap, margin) for s in starts_y]
    wx = [_axis_weights(s, starts_x, tile, overlap, margin) for s in starts_x]
    norm_y = _summed_weights(starts_y, wy, padded.shape[0])
    norm_x = _summed_weights(starts_x, wx, padded.shape[1])

    out: np.ndarray | None = None
    positions = [(iy, ix) for iy in range(len(starts_y)) for ix in range(len(starts_x))]
    for chunk in _chunks(positions, batch_size):
        batch = np.stack(
            [
                padded[starts_y[iy] : starts_y[iy] + tile, starts_x[ix] : starts_x[ix] + tile]
                for iy, ix in chunk
            ]
        )[:, None]
        pred = np.asarray(predict_fn(batch), dtype=np.float32)
        if pred.ndim != 4:
            raise ValueError(f"predict_fn must return (B, C, tile, tile), got shape {pred.shape}")
        if out is None:
            n_out = pred.shape[1] if n_out is None else n_out
            out = np.zeros((n_out, *padded.shape), dtype=np.float32)
        if pred.shape != (len(chunk), n_out, tile, tile):
            raise ValueError(
                f"predict_fn returned shape {pred.shape}, expected {(len(chunk), n_out, tile, tile)}"
            )
        for (iy, ix), p in zip(chunk, pred, strict=True):
            w = (wy[iy][:, None] * wx[ix][None, :]).astype(np.float32)
            y0, x0 = starts_y[iy], starts_x[ix]
            out[:, y0 : y0 + tile, x0 : x0 + tile] += p * w
    assert out is not None  # at least one tile always exists
    out /= (norm_y[:, None] * norm_x[None, :]).astype(np.float32)
    return out[(slice(None), *crop)]


def _check_tiling(tile: int, overlap: int) -> None:
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got overlap={overlap}, tile={tile}")


def _pad_to_tile(image: np.ndarray, tile: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Reflect-pad each axis shorter than ``tile`` symmetrically; return the crop back."""
    pads, crop = [], []
    for n in image.shape:
        extra = max(tile - n, 0)
        before = extra // 2
        pads.append((before, extra - before))
        crop.append(slice(before, before + n))
    if any(p != (0, 0) for p in pads):
        image = np.pad(image, pads, mode="reflect")
    return image, (crop[0], crop[1])


def _axis_weights(
    start: int, starts: list[int], tile: int, overlap: int, margin: int
) -> np.ndarray:
    return tile_weights(
        tile, overlap, margin, taper_start=start > starts[0], taper_end=start < starts[-1]
    )


def _summed_weights(starts: list[int], weights: list[np.ndarray], length: int) -> np.ndarray:
    total = np.zeros(length)
    for s, w in zip(starts, weights, strict=True):
        total[s : s + w.size] += w
    return total


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
