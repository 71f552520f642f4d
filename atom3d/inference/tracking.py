"""Time series: drift between frames, column tracks, depth smoothing and events.

Conventions
-----------
- ``estimate_drift`` works in pixels and returns ``(dy, dx)``: the content of ``img`` is
  the content of ``ref`` moved by ``+dy`` rows and ``+dx`` columns,
  ``img(r, c) ≈ ref(r - dy, c - dx)``.
- Drift of a series, ``drift_A``, has shape ``(T, 2)`` and holds ``[dx, dy]`` [Å] per
  frame: a column at ``(x, y)`` in frame 0 appears at ``(x + dx, y + dy)`` in frame ``t``
  (``drift_A[0] = 0``). This is what ``/frames`` stores as ``drift_x, drift_y``; the
  drift-corrected position is ``(x - dx, y - dy)``.
- Track ids are ``int32``; every detection gets one (new ids for unmatched detections).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.fft
from scipy.optimize import linear_sum_assignment
from scipy.signal.windows import tukey
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

__all__ = [
    "changepoint_depths",
    "changepoint_track_depths",
    "cumulative_drift",
    "detect_events",
    "estimate_drift",
    "level_noise",
    "link_tracks",
    "packed_level_noise",
    "RingCut",
    "choose_ring_cuts",
    "depths_from_starts",
    "ring_cuts",
    "ring_signature",
    "segment_packed",
    "segment_starts",
    "segment_track",
    "smooth_depths",
    "smooth_track_depths",
    "TrackLinker",
    "TrackPacker",
    "ViterbiBackward",
    "ViterbiForward",
]


# ---------------------------------------------------------------------------------------
# drift
# ---------------------------------------------------------------------------------------


def estimate_drift(
    ref: np.ndarray,
    img: np.ndarray,
    upsample: int = 20,
    whiten: float = 0.0,
    sigma_px: float = 1.0,
    window: bool = True,
) -> tuple[float, float]:
    """Sub-pixel shift of ``img`` relative to ``ref`` from the cross-power spectrum.

    The cross-power spectrum ``F(img) F(ref)*`` is divided by its magnitude to the power
    ``whiten``, damped by a Gaussian, transformed back, and its peak is located on the
    integer grid and then on a local upsampled DFT grid (Guizar-Sicairos et al., 2008).

    Parameters
    ----------
    ref, img : numpy.ndarray
        Images of the same shape ``(H, W)`` [any intensity unit].
    upsample : int
        Upsampling factor of the local DFT refinement; the peak is located on a grid of
        ``1 / upsample`` [px] and then refined by a parabola through its neighbours.
        1 refines the integer peak by a parabola only.
    whiten : float
        Exponent of the spectral normalisation, in ``[0, 1]``: 0 = cross-correlation
        (the most robust to shot noise, the default for low-dose frames), 1 = phase
        correlation (sharpest peak for clean images with uneven backgrounds).
    sigma_px : float
        Standard deviation of a Gaussian that smooths the correlation surface [px]; it
        damps the noisiest (highest) frequencies without moving a symmetric peak.
        0 disables it.
    window : bool
        Multiply both images by a Tukey window (flat centre, cosine edges over 12.5 % of
        each side) first, which suppresses the wrap-around of the image edges.

    Returns
    -------
    dy, dx : float
        Shift [px] such that ``img(r, c) ≈ ref(r - dy, c - dx)``; each in
        ``[-N/2, N/2)`` for an axis of length ``N`` (after the zero padding of
        :func:`_spectrum`).
    """
    ref = np.asarray(ref, dtype=np.float64)
    img = np.asarray(img, dtype=np.float64)
    if ref.ndim != 2 or ref.shape != img.shape:
        raise ValueError(
            f"ref and img must be 2-D of the same shape, got {ref.shape} and {img.shape}"
        )
    if upsample < 1:
        raise ValueError(f"upsample must be >= 1, got {upsample}")
    if not 0 <= whiten <= 1:
        raise ValueError(f"whiten must be in [0, 1], got {whiten}")
    return _drift_from_spectra(_spectrum(ref, window), _spectrum(img, window), upsample,
                               whiten, sigma_px)


def _drift_from_spectra(a: np.ndarray, b: np.ndarray, upsample: int, whiten: float,
                        sigma_px: float) -> tuple[float, float]:
    """:func:`estimate_drift` from the :func:`_spectrum` of ``ref`` (a) and ``img`` (b).

    The spectra are half spectra (``rfft2``) of a real ``(H, W)`` grid, ``W`` being
    ``2 (a.shape[1] - 1)`` (:func:`_spectrum` pads to an even width).
    """
    shape = (a.shape[0], 2 * (a.shape[1] - 1))
    spectrum = _cross_power(a, b, whiten, sigma_px, shape)
    coarse = scipy.fft.irfft2(spectrum, s=shape, workers=_FFT_WORKERS)
    peak = np.array(np.unravel_index(np.argmax(coarse), coarse.shape), dtype=np.float64)
    size = np.array(coarse.shape)
    peak = np.where(peak >= size // 2 + size % 2, peak - size, peak)  # signed shift
    if upsample == 1:
        dy, dx = peak + _parabolic_offset(coarse, peak.astype(int), wrap=True)
        return float(dy), float(dx)
    n = int(np.ceil(1.5 * upsample))
    grid = (np.arange(n) - n // 2) / upsample
    local = _dft_at(spectrum, shape, peak[0] + grid, peak[1] + grid)
    best = np.array(np.unravel_index(np.argmax(local), local.shape))
    refined = best + _parabolic_offset(local, best, wrap=False)
    dy, dx = peak + (refined - n // 2) / upsample
    return float(dy), float(dx)


def cumulative_drift(
    frames: Iterable[np.ndarray],
    pixel_size_A: float,
    reference: str = "previous",
    **kwargs,
) -> np.ndarray:
    """Drift of every frame of a series relative to the first.

    Parameters
    ----------
    frames : iterable of numpy.ndarray
        Frames ``(H, W)`` in time order (consumed once; may be a generator). Cleaner
        inputs (e.g. predicted presence maps) give better drift than raw noisy frames.
    pixel_size_A : float
        Pixel size [Å/px].
    reference : {'previous', 'first'}
        ``'previous'`` sums frame-to-frame shifts (follows a changing specimen; errors
        accumulate as a random walk); ``'first'`` compares every frame with frame 0.
    **kwargs
        Passed to :func:`estimate_drift` (``upsample``, ``whiten``, ``sigma_px``,
        ``window``).

    Returns
    -------
    numpy.ndarray
        float64, shape ``(T, 2)``: ``[dx, dy]`` [Å] per frame, first row zero.
    """
    if reference not in ("previous", "first"):
        raise ValueError(f"reference must be 'previous' or 'first', got {reference!r}")
    options = {"upsample": 20, "whiten": 0.0, "sigma_px": 1.0, "window": True, **kwargs}
    unknown = set(options) - {"upsample", "whiten", "sigma_px", "window"}
    if unknown:
        raise TypeError(f"unexpected drift options {sorted(unknown)}")
    window = options.pop("window")
    if options["upsample"] < 1:
        raise ValueError(f"upsample must be >= 1, got {options['upsample']}")
    if not 0 <= options["whiten"] <= 1:
        raise ValueError(f"whiten must be in [0, 1], got {options['whiten']}")
    drift = []
    first = previous = None  # spectra: each frame is transformed once
    shape = None
    for frame in frames:
        frame = np.asarray(frame, dtype=np.float64)
        if frame.ndim != 2 or (shape is not None and frame.shape != shape):
            raise ValueError(f"frames must be 2-D of one shape, got {frame.shape}")
        shape = frame.shape
        spectrum = _spectrum(frame, window)
        if first is None:
            first = previous = spectrum
            drift.append(np.zeros(2))
            continue
        if reference == "first":
            dy, dx = _drift_from_spectra(first, spectrum, **options)
            drift.append(np.array([dx, dy]) * pixel_size_A)
        else:
            dy, dx = _drift_from_spectra(previous, spectrum, **options)
            drift.append(drift[-1] + np.array([dx, dy]) * pixel_size_A)
        previous = spectrum
    return np.array(drift, dtype=np.float64).reshape(-1, 2)


def _spectrum(image: np.ndarray, window: bool) -> np.ndarray:
    """``rfft2((image - mean) · taper)``: one image's half of the cross-power spectrum.

    With the taper (which brings the image to zero at its edges) the image is zero-padded
    to an FFT-friendly even size (:func:`scipy.fft.next_fast_len`): a shift within the
    image is found the same way, and an awkward side (say 410 = 2·5·41 px) costs no more
    than a smooth one. Without it only an odd width gains one zero column (the half
    spectrum needs an even width).
    """
    h, w = image.shape
    if window:
        shape = (scipy.fft.next_fast_len(h, real=True),
                 _even_fast_len(w))
        values = (image - image.mean()) * _taper(image.shape)
    else:
        shape = (h, w + w % 2)
        values = image - image.mean()
    return scipy.fft.rfft2(values.astype(_FFT_DTYPE), s=shape, workers=_FFT_WORKERS)


def _even_fast_len(n: int) -> int:
    """The smallest even FFT-friendly length >= ``n``."""
    m = scipy.fft.next_fast_len(n, real=True)
    while m % 2:
        m = scipy.fft.next_fast_len(m + 1, real=True)
    return m


def _taper(shape: tuple[int, int]) -> np.ndarray:
    """Tukey window (flat centre, cosine edges over 12.5 % of each side), cached."""
    key = tuple(shape)
    if key not in _TAPERS:
        _TAPERS.clear()
        _TAPERS[key] = np.outer(tukey(shape[0], 0.25), tukey(shape[1], 0.25))
    return _TAPERS[key]


_TAPERS: dict[tuple[int, int], np.ndarray] = {}
#: Threads of the drift FFTs (scipy.fft; the results do not depend on it).
_FFT_WORKERS = 2
#: Precision of the drift FFTs. float32: a 432² real FFT takes 0.8 ms against 2.9 ms in
#: float64 (session 16); the drift of a 40-frame series moved by at most 2e-8 Å (the demo's
#: drift error is about 0.03 Å). The sub-pixel refinement (:func:`_dft_at`) sums in float64.
_FFT_DTYPE = np.float32


def _cross_power(a: np.ndarray, b: np.ndarray, whiten: float, sigma_px: float,
                 shape: tuple[int, int]) -> np.ndarray:
    """Cross-power half spectrum ``b a*`` of two :func:`_spectrum` of a real ``shape``
    grid, whitened and Gaussian-damped."""
    cross = b * np.conj(a)
    if whiten > 0:
        magnitude = np.abs(cross)
        cross /= np.maximum(magnitude, 1e-12 * max(magnitude.max(), 1e-300)) ** whiten
    if sigma_px > 0:
        fy = np.fft.fftfreq(shape[0])[:, None]
        fx = np.fft.rfftfreq(shape[1])[None, :]
        cross *= np.exp(-2 * np.pi**2 * sigma_px**2 * fy**2) * np.exp(
            -2 * np.pi**2 * sigma_px**2 * fx**2)
    return cross


def _dft_at(spectrum: np.ndarray, shape: tuple[int, int], ys: np.ndarray,
            xs: np.ndarray) -> np.ndarray:
    """The inverse DFT (real) at the points ``ys`` x ``xs`` [px] of the half spectrum of a
    real ``shape`` grid (even width): the columns between 0 and Nyquist count twice."""
    fy = np.fft.fftfreq(shape[0])
    fx = np.fft.rfftfreq(shape[1])
    weight = np.full(len(fx), 2.0)
    weight[0] = weight[-1] = 1.0
    ey = np.exp(2j * np.pi * np.outer(ys, fy))
    ex = np.exp(2j * np.pi * np.outer(fx, xs)) * weight[:, None]
    return (ey @ spectrum @ ex).real / (shape[0] * shape[1])


def _parabolic_offset(surface: np.ndarray, peak: np.ndarray, wrap: bool) -> np.ndarray:
    """Sub-sample offset of a maximum from a parabola through it and its two neighbours."""
    offset = np.zeros(2)
    for axis in range(2):
        n = surface.shape[axis]
        i = int(peak[axis])
        if not wrap and not 0 < i < n - 1:
            continue
        idx = [int(peak[0]), int(peak[1])]
        values = []
        for step in (-1, 0, 1):
            idx[axis] = (i + step) % n
            values.append(surface[tuple(idx)])
        lo, mid, hi = values
        curvature = lo - 2 * mid + hi
        if curvature < 0:
            offset[axis] = np.clip(0.5 * (lo - hi) / curvature, -0.5, 0.5)
    return offset


# ---------------------------------------------------------------------------------------
# linking
# ---------------------------------------------------------------------------------------


def link_tracks(
    frames: Sequence[tuple[np.ndarray, np.ndarray]],
    drift_A: np.ndarray | None,
    max_dist_A: float,
    max_gap: int = 2,
    first_id: int = 0,
) -> list[np.ndarray]:
    """Link the columns of consecutive frames into tracks.

    Detections are drift-corrected and matched to the tracks seen in the previous
    ``max_gap + 1`` frames by a minimum-cost assignment (Hungarian algorithm on each
    connected cluster of candidate pairs): as many pairs as possible closer than
    ``max_dist_A``, and among those the smallest total distance. A track's position is
    that of its latest detection.

    Parameters
    ----------
    frames : sequence of (x_A, y_A)
        Column positions [Å] per frame, in the frame's own coordinates.
    drift_A : numpy.ndarray or None
        Shape ``(T, 2)``, ``[dx, dy]`` [Å] per frame (see module notes); None = no drift.
    max_dist_A : float
        Largest drift-corrected displacement between two detections of one column [Å];
        keep it below half the nearest-neighbour distance (Ce 3.31 Å, O 1.91 Å).
    max_gap : int
        Number of consecutive frames a column may be missed and still keep its track.
    first_id : int
        Smallest track id to hand out (e.g. offset the O tracks past the Ce tracks).

    Returns
    -------
    list of numpy.ndarray
        Per frame, int32 track ids of its detections (same order as the input).
    """
    n_frames = len(frames)
    drift = np.zeros((n_frames, 2)) if drift_A is None else np.asarray(drift_A, dtype=np.float64)
    if drift.shape != (n_frames, 2):
        raise ValueError(f"drift_A must have shape ({n_frames}, 2), got {drift.shape}")
    linker = TrackLinker(max_dist_A, max_gap=max_gap, first_id=first_id)
    return [linker.step(x, y, drift[t]) for t, (x, y) in enumerate(frames)]


class TrackLinker:
    """Frame-by-frame form of :func:`link_tracks` (same result, constant memory).

    Call :meth:`step` once per frame, in time order; it holds only the tracks that can
    still be continued (seen in the last ``max_gap + 1`` frames).

    Parameters
    ----------
    max_dist_A, max_gap, first_id
        As in :func:`link_tracks`.
    """

    def __init__(self, max_dist_A: float, max_gap: int = 2, first_id: int = 0) -> None:
        if max_dist_A <= 0 or max_gap < 0:
            raise ValueError("max_dist_A must be > 0 and max_gap >= 0")
        self.max_dist_A = float(max_dist_A)
        self.max_gap = int(max_gap)
        self.next_id = int(first_id)
        self.t = 0
        self._pos = np.zeros((0, 2))
        self._id = np.zeros(0, dtype=np.int64)
        self._last = np.zeros(0, dtype=np.int64)

    def step(self, x: np.ndarray, y: np.ndarray, drift_A: np.ndarray | None = None) -> np.ndarray:
        """Track ids (int32) of the detections ``(x, y)`` [Å] of the next frame.

        ``drift_A`` is that frame's ``[dx, dy]`` [Å] (None = no drift).
        """
        t = self.t
        self.t += 1
        pos = np.stack([np.asarray(x, np.float64), np.asarray(y, np.float64)], axis=1).reshape(
            -1, 2
        )
        if drift_A is not None:
            pos = pos - np.asarray(drift_A, np.float64)
        alive = t - self._last <= self.max_gap + 1
        track_pos, track_id, track_last = self._pos[alive], self._id[alive], self._last[alive]
        rows, cols = _assign(track_pos, pos, self.max_dist_A)
        ids = np.full(len(pos), -1, dtype=np.int64)
        ids[cols] = track_id[rows]
        new = ids < 0
        ids[new] = self.next_id + np.arange(new.sum())
        self.next_id += int(new.sum())
        track_pos[rows] = pos[cols]
        track_last[rows] = t
        self._pos = np.concatenate([track_pos, pos[new]])
        self._id = np.concatenate([track_id, ids[new]])
        self._last = np.concatenate([track_last, np.full(new.sum(), t)])
        return ids.astype(np.int32)


def _assign(a: np.ndarray, b: np.ndarray, max_dist: float) -> tuple[np.ndarray, np.ndarray]:
    """Matched index pairs between point sets ``a`` and ``b`` (max cardinality, then min cost)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    # "ndarray" output keeps pairs at distance exactly 0 (a sparse matrix could drop them)
    pairs = cKDTree(a).sparse_distance_matrix(cKDTree(b), max_dist, output_type="ndarray")
    if len(pairs) == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    row, col, dist = pairs["i"], pairs["j"], pairs["v"]
    na, nb = len(a), len(b)
    graph = coo_matrix((np.ones(len(pairs)), (row, col + na)), shape=(na + nb, na + nb))
    _, label = connected_components(graph, directed=False)
    pair_label = label[row]
    single = np.bincount(pair_label)[pair_label] == 1  # the usual case: one candidate
    rows_out, cols_out = [row[single]], [col[single]]
    multi = np.flatnonzero(~single)
    order = multi[np.argsort(pair_label[multi], kind="stable")]
    bounds = np.flatnonzero(np.diff(pair_label[order])) + 1
    for group in np.split(order, bounds) if len(order) else ():
        r, c, d = row[group], col[group], dist[group]
        ur, ri = np.unique(r, return_inverse=True)
        uc, ci = np.unique(c, return_inverse=True)
        big = max_dist * (len(ur) + len(uc)) + 1.0  # > any sum of feasible costs
        cost = np.full((len(ur), len(uc)), big)
        cost[ri, ci] = d
        sr, sc = linear_sum_assignment(cost)
        ok = cost[sr, sc] < big
        rows_out.append(ur[sr[ok]])
        cols_out.append(uc[sc[ok]])
    rows, cols = np.concatenate(rows_out).astype(np.intp), np.concatenate(cols_out).astype(np.intp)
    by_row = np.argsort(rows, kind="stable")
    return rows[by_row], cols[by_row]


# ---------------------------------------------------------------------------------------
# depth smoothing
# ---------------------------------------------------------------------------------------


def smooth_depths(
    track_probs: np.ndarray,
    switch_prob: float = 0.02,
    max_step: int = 2,
    first_depth: int = 0,
) -> np.ndarray:
    """Most probable depth sequence of one column (Viterbi on a hidden Markov model).

    Parameters
    ----------
    track_probs : numpy.ndarray
        Shape ``(T, S)``: per frame, pooled probabilities of the depths
        ``first_depth .. first_depth + S - 1`` (the emission likelihoods). A row of NaN
        (column not detected in that frame) carries no information.
    switch_prob : float
        Probability per frame of leaving the current depth [probability]; it is shared
        evenly by the depths within ``max_step`` (the stay probability is
        ``1 - switch_prob``). A single-frame flip then costs two switches, a real step one.
    max_step : int
        Largest depth change in one frame [atoms].
    first_depth : int
        Depth of column 0 of ``track_probs``: 0 when class 0 (no column) is included,
        1 when only classes 1..K are given.

    Returns
    -------
    numpy.ndarray
        int64, shape ``(T,)``: the depth in every frame [atoms].
    """
    probs = np.asarray(track_probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 1:
        raise ValueError(f"track_probs must have shape (T, S), got {probs.shape}")
    if not 0 <= switch_prob < 1:
        raise ValueError(f"switch_prob must be in [0, 1), got {switch_prob}")
    n_frames, n_states = probs.shape
    if n_frames == 0:
        return np.zeros(0, dtype=np.int64)
    missing = np.isnan(probs).any(axis=1)
    with np.errstate(divide="ignore"):
        log_e = np.where(missing[:, None], 0.0, np.log(np.clip(np.nan_to_num(probs), 1e-300, None)))
    log_a = _log_transitions(n_states, switch_prob, max_step)
    score = log_e[0].copy()
    back = np.zeros((n_frames, n_states), dtype=np.intp)
    for t in range(1, n_frames):
        cand = score[:, None] + log_a  # [from, to]
        back[t] = np.argmax(cand, axis=0)
        score = cand[back[t], np.arange(n_states)] + log_e[t]
    path = np.empty(n_frames, dtype=np.intp)
    path[-1] = int(np.argmax(score))
    for t in range(n_frames - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path.astype(np.int64) + first_depth


def _log_transitions(n_states: int, switch_prob: float, max_step: int) -> np.ndarray:
    """Log transition matrix ``[from, to]``: stay ``1 - switch_prob``, else a step <= max_step."""
    step = np.abs(np.subtract.outer(np.arange(n_states), np.arange(n_states)))
    allowed = (step >= 1) & (step <= max_step)
    n_moves = allowed.sum(axis=1, keepdims=True)
    a = np.where(allowed, switch_prob / np.maximum(n_moves, 1), 0.0)
    a[np.arange(n_states), np.arange(n_states)] = np.where(n_moves[:, 0] > 0, 1 - switch_prob, 1.0)
    with np.errstate(divide="ignore"):
        return np.log(a)


def smooth_track_depths(
    track_ids: Sequence[np.ndarray],
    probs: Sequence[np.ndarray],
    switch_prob: float = 0.02,
    max_step: int = 2,
    first_depth: int = 1,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Smooth the depth of every track of a series with :func:`smooth_depths`.

    Parameters
    ----------
    track_ids : sequence of numpy.ndarray
        Per frame, track ids of its detections (from :func:`link_tracks`); ids < 0 mark
        untracked detections, which keep their per-frame most probable depth.
    probs : sequence of numpy.ndarray
        Per frame, shape ``(N_t, S)``: pooled probabilities of depths ``first_depth ..``
        of each detection (e.g. ``ColumnTable.probs[:, 1:]`` renormalised, with
        ``first_depth=1``). Frames in which a track is missing count as uninformative.
    switch_prob, max_step, first_depth
        As in :func:`smooth_depths`.

    Returns
    -------
    depths : list of numpy.ndarray
        Per frame, uint8 smoothed depth of each detection [atoms].
    confidences : list of numpy.ndarray
        Per frame, float32 pooled probability of the smoothed depth of each detection.
    """
    if len(track_ids) != len(probs):
        raise ValueError("track_ids and probs must have one entry per frame")
    n_states = next((np.shape(p)[1] for p in probs if np.ndim(p) == 2 and len(p)), 1)
    probs = [np.asarray(p, dtype=np.float64).reshape(-1, n_states) for p in probs]
    # untracked detections (id < 0) keep their per-frame most probable depth
    depths = [(np.argmax(p, axis=1) + first_depth).astype(np.uint8) for p in probs]
    confidences = [p.max(axis=1, initial=0.0).astype(np.float32) for p in probs]
    for frames, rows in _observations(track_ids).values():
        seq = np.full((frames[-1] - frames[0] + 1, n_states), np.nan)
        seq[frames - frames[0]] = [probs[f][i] for f, i in zip(frames, rows, strict=True)]
        smoothed = smooth_depths(seq, switch_prob, max_step, first_depth)[frames - frames[0]]
        for f, i, d in zip(frames, rows, smoothed, strict=True):
            depths[f][i] = d
            confidences[f][i] = probs[f][i][d - first_depth]
    return depths, confidences


# ---------------------------------------------------------------------------------------
# change-point segmentation of the expected depth
# ---------------------------------------------------------------------------------------

#: Robust noise estimate: fewer within-track differences than this use the default.
MIN_NOISE_SAMPLES = 20
#: Floor of the level noise (identical frames would otherwise split on any rounding).
MIN_LEVEL_NOISE = 0.05
#: Radial profile around a Ce column whose values over time the column's change points are
#: cut on (:func:`ring_means`, :func:`segment_track`): ``RING_COUNT`` hat-weighted means
#: at the radii 0, ``RING_STEP_A``, 2·``RING_STEP_A``, ... [Å] (session 17). Session 12
#: averaged hard rings 0-0.3-0.6-0.9-1.2-1.5 Å, where a pixel enters or leaves a ring as
#: the drift moves the column within its pixel; hat weights change continuously. On the
#: 20 series of report/domain_series_s17/ (the same segmentation settings) the hat
#: profile reports 573 against 548 of 647 true Ce changes at 2.2 against 2.0 % flicker
#: (worst series 3.3 against 4.3 %); 4 radii (to 0.9 Å) or 6 (to 1.5 Å) did worse.
RING_STEP_A = 0.3
RING_COUNT = 5
#: Pixels of the column windows :func:`ring_means` gathers at a time (about 40 MB).
_RING_WINDOW_BUDGET = 1 << 20


def segment_starts(values: np.ndarray, threshold: float, min_step: float = 0.0) -> list[int]:
    """Change points of a piecewise-constant fit of ``values`` (binary segmentation).

    The segment ``values[lo:hi]`` is split where the drop of the sum of squared
    deviations from the segment means is largest, if that drop exceeds ``threshold``
    (same units as ``values²``); both halves are then split in turn. Only splits whose
    two sides' means differ by at least ``min_step`` (units of ``values``) are candidates.

    ``values`` is a sequence (L,) or a sequence of vectors (L, B); for vectors the drop
    is summed over the B components (in units of each one's noise σ the drop of a split
    without a change is then about χ² with B degrees of freedom), ``min_step`` must be
    0, and NaN entries count as their component's sequence mean (no evidence).

    Returns
    -------
    list of int
        Sorted indices where a new segment starts (0 excluded).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return []
    x = _nan_as_mean(x.reshape(len(x), -1))
    if min_step > 0 and x.shape[1] != 1:
        raise ValueError("min_step applies to a scalar sequence only")
    out: list[int] = []
    stack = [(0, len(x))]
    while stack:
        lo, hi = stack.pop()
        n = hi - lo
        if n < 2:
            continue
        left = np.cumsum(x[lo:hi] - x[lo:hi].mean(axis=0), axis=0)[:-1]
        k = np.arange(1, n, dtype=np.float64)[:, None]
        scale = n / (k * (n - k))
        gain = (left ** 2 * scale).sum(axis=1)  # SSE(one mean) - SSE(two means)
        if min_step > 0:  # |mean(right) - mean(left)| = |left| · n / (k (n - k))
            gain[np.abs(left[:, 0]) * scale[:, 0] < min_step] = -np.inf
        j = int(np.argmax(gain))
        if gain[j] > threshold:
            out.append(lo + j + 1)
            stack += [(lo, lo + j + 1), (lo + j + 1, hi)]
    return sorted(out)


def _nan_as_mean(x: np.ndarray) -> np.ndarray:
    """``x`` (L, B) with each NaN replaced by its column's mean (0 if all NaN)."""
    finite = np.isfinite(x)
    if finite.all():
        return x
    fill = np.array([x[finite[:, j], j].mean() if finite[:, j].any() else 0.0
                     for j in range(x.shape[1])])
    return np.where(finite, x, fill[None, :])


def ring_radii_A(step_A: float = RING_STEP_A, count: int = RING_COUNT) -> np.ndarray:
    """Radii of the profile of :func:`ring_means` [Å]."""
    return np.arange(count) * float(step_A)


def ring_means(frame: np.ndarray, x_A: np.ndarray, y_A: np.ndarray, pixel_size_A: float,
               step_A: float = RING_STEP_A, count: int = RING_COUNT) -> np.ndarray:
    """Radial intensity profile of ``frame`` around points, relative to the frame's mean.

    Pixel (r, c) is at x = c·p, y = r·p [Å]. Profile value j (radius ``j·step_A``) is the
    mean of the pixels weighted by the hat ``max(0, 1 - |d - j·step_A| / step_A)`` of their
    centre's distance d to the point: each pixel within ``count·step_A`` of the point is
    shared between the two radii around its distance, so the profile changes
    continuously as the point moves within its pixel. Pixels outside the frame have no
    weight. The frame is divided by its mean (by its standard deviation, after
    subtracting the mean, if the mean is not positive), so that a change of exposure
    between frames is not a change of a column.

    Returns
    -------
    numpy.ndarray
        ``(N, count)`` float32; NaN for radii with no weight inside the frame.
    """
    frame = np.asarray(frame, dtype=np.float32)
    x = np.asarray(x_A, np.float64).reshape(-1)
    y = np.asarray(y_A, np.float64).reshape(-1)
    step, n_rings = float(step_A), int(count)
    if not (step > 0 and n_rings >= 1):
        raise ValueError("ring_means needs step_A > 0 and count >= 1")
    n = len(x)
    out = np.full((n, n_rings), np.nan, np.float32)
    if n == 0 or frame.size == 0:
        return out
    mean = float(frame.mean(dtype=np.float64))
    if mean > 0:
        offset, scale = 0.0, mean
    else:
        offset, scale = mean, float(frame.std(dtype=np.float64)) or 1.0
    p = float(pixel_size_A)
    outer = n_rings * step  # no weight at or beyond
    half = int(np.ceil(outer / p)) + 1
    off = np.arange(-half, half + 1)
    # the pixel offsets (row-major) whose centre can lie within the outer radius: a point
    # sits a fraction f in [0, 1) of a pixel past its base pixel floor(y / p), so offset o
    # comes no nearer than p·(o - 1) for o >= 1 and p·|o| for o <= 0 (the others would
    # all have no weight)
    near = np.where(off >= 1, off - 1, -off) * p
    dr, dc = np.meshgrid(off, off, indexing="ij")
    disc = (near[:, None] ** 2 + near[None, :] ** 2) <= outer ** 2 * (1 + 1e-9)
    dr, dc = dr[disc], dc[disc]
    h, w = frame.shape
    chunk = max(1, _RING_WINDOW_BUDGET // len(dr))  # bounded memory for any frame
    flat_frame = frame.reshape(-1)
    for lo in range(0, n, chunk):
        xs, ys = x[lo:lo + chunk], y[lo:lo + chunk]
        m = len(xs)
        base_r, base_c = np.floor(ys / p).astype(np.int64), np.floor(xs / p).astype(np.int64)
        rows = base_r[:, None] + dr[None, :]  # (m, M)
        cols = base_c[:, None] + dc[None, :]
        # distance / step from the pixel offsets and the point's place within its pixel
        ry = (base_r * p - ys) / step
        rx = (base_c * p - xs) / step
        u = np.sqrt((dr[None, :] * (p / step) + ry[:, None]) ** 2
                    + (dc[None, :] * (p / step) + rx[:, None]) ** 2)
        inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w) & (u < n_rings)
        u = u[inside]
        j = u.astype(np.int64)  # the pixel lies between radii j and j + 1
        f = u - j  # weight f for radius j + 1, 1 - f for radius j
        values = flat_frame[(rows * w + cols)[inside]].astype(np.float64)
        index = np.broadcast_to((np.arange(m) * n_rings)[:, None], inside.shape)[inside] + j
        size = m * n_rings
        # hat sums from sums over the intervals [j, j + 1): radius j gets 1 - f of interval
        # j and f of interval j - 1
        count = np.bincount(index, minlength=size).reshape(m, n_rings)
        f_sum = np.bincount(index, weights=f, minlength=size).reshape(m, n_rings)
        v_sum = np.bincount(index, weights=values, minlength=size).reshape(m, n_rings)
        fv_sum = np.bincount(index, weights=f * values, minlength=size).reshape(m, n_rings)
        wsum, vsum = count - f_sum, v_sum - fv_sum
        wsum[:, 1:] += f_sum[:, :-1]
        vsum[:, 1:] += fv_sum[:, :-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            means = (vsum / wsum - offset) / scale
        out[lo:lo + m] = np.where(wsum > 0, means, np.nan)
    return out


class TrackPacker:
    """Lays the detections of a series out track by track, in two passes over the frames.

    A first pass counts the detections of every track id (:meth:`count`);
    :meth:`allocate` then gives each track a contiguous slice
    ``offsets[id]:offsets[id + 1]`` of a packed array, and :meth:`positions` (frames in
    order) or :meth:`positions_reverse` (frames in reverse order, after :meth:`rewind`)
    return where each detection of a frame goes in it. Ids must be unique within a
    frame; ids < 0 get position -1.
    """

    def __init__(self) -> None:
        self.counts = np.zeros(0, np.int64)
        self.offsets = np.zeros(1, np.int64)
        self._fill = np.zeros(0, np.int64)

    def count(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64).reshape(-1)
        ids = ids[ids >= 0]
        if ids.size:
            if ids.max() >= len(self.counts):
                grown = np.zeros(max(int(ids.max()) + 1, 2 * len(self.counts)), np.int64)
                grown[:len(self.counts)] = self.counts
                self.counts = grown
            self.counts[ids] += 1

    def allocate(self) -> int:
        """Fix the layout (and start the forward replay); returns the packed length."""
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.restart()
        return int(self.offsets[-1])

    def restart(self) -> None:
        """Start a replay of the frames in order."""
        self._fill = self.offsets[:-1].copy()

    def rewind(self) -> None:
        """Start a replay of the frames in reverse order."""
        self._fill = self.offsets[1:].copy()

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Packed positions of one frame's detections (frames in order)."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        pos = np.full(len(ids), -1, np.int64)
        m = ids >= 0
        pos[m] = self._fill[ids[m]]
        self._fill[ids[m]] += 1
        return pos

    def positions_reverse(self, ids: np.ndarray) -> np.ndarray:
        """Packed positions of one frame's detections (frames in reverse order)."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        pos = np.full(len(ids), -1, np.int64)
        m = ids >= 0
        self._fill[ids[m]] -= 1
        pos[m] = self._fill[ids[m]]
        return pos

    def tracks(self) -> Iterable[tuple[int, int]]:
        """``(start, stop)`` of every track with detections in the packed array."""
        for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True):
            if b > a:
                yield int(a), int(b)


def packed_level_noise(levels: np.ndarray, offsets: np.ndarray, default: float) -> float:
    """Frame-to-frame noise σ of a level packed track by track (robust).

    σ = 1.4826 · median |Δ| / √2 over the differences Δ between consecutive detections
    of every track (a real change is one rare outlier among them); ``default`` with
    fewer than ``MIN_NOISE_SAMPLES`` differences; never below ``MIN_LEVEL_NOISE``.
    ``offsets`` are the track boundaries (:attr:`TrackPacker.offsets`).
    """
    diffs = np.abs(np.diff(np.asarray(levels, np.float32)))
    inside = np.ones(len(diffs), bool)
    ends = np.asarray(offsets, np.int64)[1:-1] - 1  # a difference across two tracks
    inside[ends[(ends >= 0) & (ends < len(diffs))]] = False
    diffs = diffs[inside]
    if len(diffs) < MIN_NOISE_SAMPLES:
        return max(float(default), MIN_LEVEL_NOISE)
    return max(1.4826 * float(np.median(diffs)) / np.sqrt(2.0), MIN_LEVEL_NOISE)


def packed_ring_noise(rings: np.ndarray, offsets: np.ndarray) -> np.ndarray | None:
    """Frame-to-frame noise σ of each ring's mean intensity, packed track by track.

    Per ring, ``1.4826 · median |Δ| / √2`` over the finite differences between
    consecutive detections of every track (as :func:`packed_level_noise`); None when a
    ring has fewer than ``MIN_NOISE_SAMPLES`` of them or no noise (the rings are then
    not used).
    """
    rings = np.asarray(rings, np.float32)
    if rings.ndim != 2 or len(rings) < 2:
        return None
    diffs = np.abs(np.diff(rings, axis=0))
    inside = np.ones(len(diffs), bool)
    ends = np.asarray(offsets, np.int64)[1:-1] - 1
    inside[ends[(ends >= 0) & (ends < len(diffs))]] = False
    diffs = diffs[inside]
    sigma = np.empty(rings.shape[1])
    for j in range(rings.shape[1]):
        d = diffs[:, j][np.isfinite(diffs[:, j])]
        if len(d) < MIN_NOISE_SAMPLES:
            return None
        sigma[j] = 1.4826 * float(np.median(d)) / np.sqrt(2.0)
    return sigma if np.all(sigma > 0) else None


def level_noise(track_ids: Sequence[np.ndarray], levels: Sequence[np.ndarray],
                default: float) -> float:
    """:func:`packed_level_noise` of per-frame track ids and levels."""
    packer, packed = _pack(track_ids, [levels], [np.float32])
    return packed_level_noise(packed[0], packer.offsets, default)


def segment_track(levels: np.ndarray, frame_depths: np.ndarray, threshold: float,
                  lowest: int, highest: int, min_step: float = 0.0,
                  rings: np.ndarray | None = None, ring_threshold: float = 0.0,
                  ring_min_step: float = 0.0, signature: np.ndarray | None = None,
                  signature_z: float = math.inf) -> np.ndarray:
    """Depths of one track from its levels (see :func:`changepoint_depths`).

    With ``rings`` ((L, B), each ring in units of its noise σ) the change points are
    those of the rings (:func:`ring_cuts`, ``ring_threshold``) at which the mean level of
    the two neighbouring segments differs by at least ``ring_min_step``, in the direction
    of that difference; ``threshold`` and ``min_step`` are then not used. With a
    ``signature`` (:func:`ring_signature`, a unit vector: how the rings change when the
    column loses atoms) a cut whose ring change projects on it with a significance of at
    least ``signature_z`` (``z = (Δrings · signature) · sqrt(n₁n₂/(n₁+n₂))``, rings in
    units of σ) is kept whatever the level does, as a loss for z > 0 and a gain for z < 0.
    """
    e = np.asarray(levels, np.float64)
    d0 = np.asarray(frame_depths, np.float64)
    if rings is None:
        return depths_from_starts(e, d0, segment_starts(e, threshold, min_step),
                                  lowest, highest)
    starts, directions = choose_ring_cuts(ring_cuts(rings, e, ring_threshold), ring_min_step,
                                          signature, signature_z)
    return depths_from_starts(e, d0, starts, lowest, highest, directions)


def choose_ring_cuts(cuts: Sequence[RingCut], min_level_step: float,
                     signature: np.ndarray | None = None,
                     signature_z: float = math.inf) -> tuple[list[int], list[int]]:
    """Starts and directions of the ring cuts kept (see :func:`segment_track`): ±1 where
    the signature decided, 0 where the level step did."""
    starts, directions = [], []
    for cut in cuts:
        z = cut.z(signature)
        if abs(z) >= signature_z:
            starts.append(cut.start)
            directions.append(-1 if z > 0 else 1)
        elif abs(cut.level_step) >= min_level_step:
            starts.append(cut.start)
            directions.append(0)  # the way the levels of the final segments step
    return starts, directions


@dataclass(frozen=True)
class RingCut:
    """A change point of a track's rings (:func:`ring_cuts`)."""

    start: int  #: first detection of the later segment
    gain: float  #: drop of squared error of the cut (rings in units of σ)
    level_step: float  #: mean level after minus before, between the neighbouring cuts
    ring_step: np.ndarray  #: mean rings after minus before (units of σ)
    weight: float  #: sqrt(n₁n₂/(n₁+n₂)) of the two neighbouring segments

    def z(self, signature: np.ndarray | None) -> float:
        """Significance of the ring step along ``signature`` (0 without one)."""
        if signature is None:
            return 0.0
        return float(self.ring_step @ signature) * self.weight


def ring_cuts(rings: np.ndarray, levels: np.ndarray, threshold: float) -> list[RingCut]:
    """The cuts of :func:`segment_starts` on ``rings`` (L, B), each with its gain and the
    steps of the rings and of ``levels`` between its neighbouring cuts (NaN rings count
    as their track mean)."""
    x = _nan_as_mean(np.asarray(rings, np.float64).reshape(len(rings), -1))
    e = np.asarray(levels, np.float64)
    found = segment_starts(x, threshold)
    if not found:
        return []
    edges = [0, *found, len(e)]
    out = []
    for i, start in enumerate(found):
        a, c = edges[i], edges[i + 2]
        n1, n2 = start - a, c - start
        seg = x[a:c]
        left = (seg[:n1] - seg.mean(axis=0)).sum(axis=0)
        out.append(RingCut(start=int(start),
                           gain=float((left ** 2).sum() * (n1 + n2) / (n1 * n2)),
                           level_step=float(e[start:c].mean() - e[a:start].mean()),
                           ring_step=seg[n1:].mean(axis=0) - seg[:n1].mean(axis=0),
                           weight=math.sqrt(n1 * n2 / (n1 + n2))))
    return out


def confident_steps(cuts: Sequence[tuple[float, Sequence[RingCut]]], strong: float,
                    min_level_step: float) -> tuple[np.ndarray, np.ndarray]:
    """The ring steps of the confident cuts of all tracks, turned the way of a loss.

    ``cuts`` holds per track its ring threshold and :func:`ring_cuts`; a cut is confident
    with a gain of at least ``strong`` times the track's threshold and a level step of at
    least ``min_level_step`` atoms. Its ring step is multiplied by the negative sign of
    the level step, so that it points the way the rings change when the column loses
    atoms. Returns ``(track, steps)``: the index in ``cuts`` of each one's track (C,) and
    the turned steps (C, B).
    """
    track, steps = [], []
    for i, (threshold, track_cuts) in enumerate(cuts):
        for c in track_cuts:
            if c.gain >= strong * threshold and abs(c.level_step) >= min_level_step:
                track.append(i)
                steps.append(-np.sign(c.level_step) * np.asarray(c.ring_step, np.float64))
    width = next((len(c.ring_step) for _, tc in cuts for c in tc), 0)
    return (np.asarray(track, np.int64),
            np.asarray(steps, np.float64).reshape(len(steps), width))


def ring_signature(cuts: Sequence[tuple[float, Sequence[RingCut]]], strong: float,
                   min_level_step: float, min_cuts: int) -> np.ndarray | None:
    """How the rings of this series change when a column loses atoms (a unit vector).

    The mean of :func:`confident_steps` (gain at least ``strong`` times the track's
    threshold, level step at least ``min_level_step`` atoms). None with fewer than
    ``min_cuts`` confident cuts. The optics decide whether a lost atom darkens or
    brightens each ring; the series' own confident cuts tell which.
    """
    return _mean_signature(confident_steps(cuts, strong, min_level_step)[1], min_cuts)


def _mean_signature(steps: np.ndarray, min_cuts: int) -> np.ndarray | None:
    """Unit mean of confident ring steps (C, B); None with fewer than ``min_cuts``."""
    if len(steps) < max(int(min_cuts), 1):
        return None
    return _unit(steps.mean(axis=0))


def local_signature(levels: np.ndarray, steps: np.ndarray, level: float, bandwidth: float,
                    min_weight: float, default: np.ndarray | None) -> np.ndarray | None:
    """The loss signature for a column of mean expected depth ``level`` [atoms].

    How a lost atom changes the image of a column depends on how thick it is (the
    contrast of a column oscillates with its thickness): the confident ring ``steps``
    (C, B) of columns whose mean level ``levels`` (C,) is near ``level`` count most,
    with Gaussian weights of width ``bandwidth`` [atoms]. Where the weights sum to less
    than ``min_weight`` (few confident cuts of columns of that thickness) the series'
    signature ``default`` is returned.
    """
    if len(steps) == 0 or not math.isfinite(bandwidth):
        return default
    w = np.exp(-0.5 * ((np.asarray(levels, np.float64) - float(level)) / bandwidth) ** 2)
    if w.sum() < min_weight:
        return default
    local = _unit(w @ steps / w.sum())
    return default if local is None else local


def _unit(v: np.ndarray) -> np.ndarray | None:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else None


def depths_from_starts(levels: np.ndarray, frame_depths: np.ndarray, starts: Sequence[int],
                       lowest: int, highest: int,
                       directions: Sequence[int] | None = None) -> np.ndarray:
    """One depth per segment of a track, given where its segments start.

    A segment's depth is the median of its frames' depths (rounded half up); where the
    mean level steps between two segments (or ``directions[i]``, if ±1 and not 0, says
    the depth steps at ``starts[i]``) but that depth does not step the same way, the later
    segment gets
    the earlier one's depth plus one atom in that direction (clipped to ``lowest …
    highest``), so every kept change point is a reported change.
    """
    e = np.asarray(levels, np.float64)
    d0 = np.asarray(frame_depths, np.float64)
    bounds = [0, *starts, len(e)]
    out = np.empty(len(e), np.int64)
    prev_d = prev_m = None
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        d, m = int(np.floor(np.median(d0[a:b]) + 0.5)), float(e[a:b].mean())
        if prev_d is not None:
            step = (int(np.sign(directions[i - 1])) if directions is not None
                    and directions[i - 1] else int(np.sign(m - prev_m)))
            if step and int(np.sign(d - prev_d)) != step:
                d = int(np.clip(prev_d + step, lowest, highest))
        out[a:b] = d
        prev_d, prev_m = d, m
    return out


def segment_packed(levels: np.ndarray, frame_depths: np.ndarray, packer: TrackPacker,
                   lowest: int, highest: int, penalty: float = 2.0,
                   noise: float | None = None, default_noise: float = 0.25,
                   min_step: float = 0.0, rings: np.ndarray | None = None,
                   ring_penalty: float = 4.5, ring_min_step: float = 0.2,
                   ring_min_step_sigma: float = 0.0, signature_z: float = math.inf,
                   signature_strong: float = 1.8, signature_min_step: float = 0.4,
                   signature_min_cuts: int = 5, level_weight: float = 0.0,
                   signature_bandwidth: float = math.inf,
                   signature_min_weight: float = 3.0) -> np.ndarray:
    """:func:`segment_track` for every track of packed arrays; uint8 depths, packed.

    ``rings`` ((n, B) ring means, packed like ``levels``) are divided by their series-wide
    noise (:func:`packed_ring_noise`) and cut with the threshold ``ring_penalty · ln L``,
    keeping the cuts where the level steps by at least ``ring_min_step`` and
    ``ring_min_step_sigma`` times the level noise σ; where the rings' noise cannot be
    measured the levels are used. With a finite ``signature_z`` the series' loss
    signature is learnt from all tracks' cuts first (:func:`ring_signature` with
    ``signature_strong``, ``signature_min_step``, ``signature_min_cuts``) and cuts
    significant along it are kept too (:func:`segment_track`); with a finite
    ``signature_bandwidth`` [atoms] each track uses the signature of columns of its
    thickness (:func:`local_signature` at the track's mean level, ``signature_min_weight``).
    With ``level_weight`` > 0
    the level, in units of its noise σ and times ``level_weight``, is cut together with
    the rings (one more component of the vectors).
    """
    sigma = (packed_level_noise(levels, packer.offsets, default_noise) if noise is None
             else float(noise))
    ring_sigma = packed_ring_noise(rings, packer.offsets) if rings is not None else None
    scaled = (np.asarray(rings, np.float64) / ring_sigma[None, :]
              if ring_sigma is not None else None)
    if scaled is not None and level_weight > 0:
        scaled = np.column_stack([scaled, level_weight / sigma * np.asarray(levels, np.float64)])
    out = np.empty(len(levels), np.uint8)
    if scaled is None:
        for a, b in packer.tracks():
            threshold = penalty * sigma ** 2 * np.log(max(b - a, 2))
            out[a:b] = segment_track(levels[a:b], frame_depths[a:b], threshold, lowest,
                                     highest, min_step)
        return out
    level_step = max(ring_min_step, ring_min_step_sigma * sigma)
    tracks = list(packer.tracks())
    cuts = []
    for a, b in tracks:
        threshold = ring_penalty * np.log(max(b - a, 2))
        cuts.append((threshold, ring_cuts(scaled[a:b], levels[a:b], threshold)))
    signature = None
    if math.isfinite(signature_z):
        cut_track, steps = confident_steps(cuts, signature_strong, signature_min_step)
        signature = _mean_signature(steps, signature_min_cuts)  # = ring_signature(cuts, ...)
    by_thickness = signature is not None and math.isfinite(signature_bandwidth)
    if by_thickness:  # each track's mean level, from the packed levels at once
        bounds = np.asarray(tracks, np.int64).reshape(-1, 2)
        track_levels = (np.add.reduceat(np.asarray(levels, np.float64), bounds[:, 0])
                        / (bounds[:, 1] - bounds[:, 0]))
    for i, ((a, b), (_, track_cuts)) in enumerate(zip(tracks, cuts, strict=True)):
        here = signature
        if by_thickness:
            here = local_signature(track_levels[cut_track], steps, track_levels[i],
                                   signature_bandwidth, signature_min_weight, signature)
        starts, directions = choose_ring_cuts(track_cuts, level_step, here, signature_z)
        out[a:b] = depths_from_starts(levels[a:b], frame_depths[a:b], starts, lowest,
                                      highest, directions)
    return out


def _pack(track_ids: Sequence[np.ndarray], fields: Sequence[Sequence[np.ndarray]],
          dtypes: Sequence[Any]) -> tuple[TrackPacker, list[np.ndarray]]:
    """Per-frame ``fields`` (each a list over frames) packed track by track."""
    packer = TrackPacker()
    for ids in track_ids:
        packer.count(ids)
    n = packer.allocate()
    packed = [np.empty(n, dtype) for dtype in dtypes]
    for t, ids in enumerate(track_ids):
        pos = packer.positions(ids)
        m = pos >= 0
        for out, field in zip(packed, fields, strict=True):
            out[pos[m]] = np.asarray(field[t]).reshape(-1)[m]
    return packer, packed


def changepoint_depths(
    track_ids: Sequence[np.ndarray],
    levels: Sequence[np.ndarray],
    frame_depths: Sequence[np.ndarray],
    lowest: int,
    highest: int,
    penalty: float = 2.0,
    noise: float | None = None,
    default_noise: float = 0.25,
    min_step: float = 0.0,
    rings: Sequence[np.ndarray] | None = None,
    ring_penalty: float = 4.5,
    ring_min_step: float = 0.2,
    ring_min_step_sigma: float = 0.0,
    signature_z: float = math.inf,
    level_weight: float = 0.0,
    signature_bandwidth: float = math.inf,
) -> list[np.ndarray]:
    """Piecewise-constant depth of every track from its expected depth over time.

    The network's depth errors on one column are mostly systematic (the same column in
    the same optics is misread the same way in every frame), while a real change moves
    the expected depth ``E[k] = Σ k·p(k)`` of the column even when it does not move its
    most probable depth. So each track's sequence of ``E[k]`` (as float32) is cut into
    segments of constant level by :func:`segment_starts`, with the Schwarz (BIC)
    threshold ``penalty · σ² · ln L`` (L = detections of the track, σ =
    :func:`packed_level_noise` of the series unless ``noise`` is given); ``penalty = 2``
    is the Schwarz criterion; a split must also move the level by at least ``min_step``
    [atoms]. A segment's depth is the median of its frame-by-frame
    depths (halves rounded up); where two consecutive segments would get depths that do
    not step the way their levels step, the later one is set one atom from the earlier
    in the direction of the step (within ``lowest .. highest``): a significant change of
    the column is at least one atom. Memory: 6 bytes per tracked detection (the
    sequences are packed track by track, :class:`TrackPacker`).

    Parameters
    ----------
    track_ids : sequence of numpy.ndarray
        Per frame, track ids of its detections (unique per frame); ids < 0 keep their
        frame depth.
    levels : sequence of numpy.ndarray
        Per frame, expected depth of each detection [atoms].
    frame_depths : sequence of numpy.ndarray
        Per frame, most probable depth of each detection [atoms].
    lowest, highest : int
        Depth range of the states [atoms], within 0..255.
    rings : sequence of numpy.ndarray, optional
        Per frame, ``(N_t, B)`` ring means of each detection (:func:`ring_means` at the
        track's position): the change points are then cut on them
        (:func:`segment_packed`, ``ring_penalty``, ``ring_min_step``,
        ``ring_min_step_sigma``, ``signature_z``, ``level_weight``,
        ``signature_bandwidth``).

    Returns
    -------
    list of numpy.ndarray
        Per frame, int64 depth of each detection [atoms].
    """
    if not len(track_ids) == len(levels) == len(frame_depths):
        raise ValueError("track_ids, levels and frame_depths must have one entry per frame")
    packer, (e, d0) = _pack(track_ids, [levels, frame_depths], [np.float32, np.uint8])
    packed_rings = None
    if rings is not None:
        if len(rings) != len(track_ids):
            raise ValueError("rings must have one entry per frame")
        n_rings = next((np.shape(r)[1] for r in rings if np.ndim(r) == 2), 1)
        packed_rings = np.full((len(e), n_rings), np.nan, np.float32)
        packer.restart()
        for ids, ring in zip(track_ids, rings, strict=True):
            pos = packer.positions(ids)
            m = pos >= 0
            packed_rings[pos[m]] = np.asarray(ring, np.float32).reshape(len(pos), n_rings)[m]
    packed = segment_packed(e, d0, packer, lowest, highest, penalty, noise, default_noise,
                            min_step, rings=packed_rings, ring_penalty=ring_penalty,
                            ring_min_step=ring_min_step,
                            ring_min_step_sigma=ring_min_step_sigma,
                            signature_z=signature_z, level_weight=level_weight,
                            signature_bandwidth=signature_bandwidth)
    packer.restart()
    depths = []
    for ids, fd in zip(track_ids, frame_depths, strict=True):
        d = np.asarray(fd).astype(np.int64).reshape(-1).copy()
        pos = packer.positions(ids)
        d[pos >= 0] = packed[pos[pos >= 0]]
        depths.append(d)
    return depths


def changepoint_track_depths(
    track_ids: Sequence[np.ndarray],
    probs: Sequence[np.ndarray],
    penalty: float = 2.0,
    first_depth: int = 1,
    noise: float | None = None,
    min_step: float = 0.0,
    rings: Sequence[np.ndarray] | None = None,
    ring_penalty: float = 4.5,
    ring_min_step: float = 0.2,
    ring_min_step_sigma: float = 0.0,
    signature_z: float = math.inf,
    level_weight: float = 0.0,
    signature_bandwidth: float = math.inf,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """:func:`changepoint_depths` from depth probabilities, like :func:`smooth_track_depths`.

    ``probs`` holds per frame the ``(N_t, S)`` probabilities of the depths
    ``first_depth .. first_depth + S - 1``. Returns per frame the uint8 depths and the
    float32 probability of each depth in its frame.
    """
    if len(track_ids) != len(probs):
        raise ValueError("track_ids and probs must have one entry per frame")
    n_states = next((np.shape(p)[1] for p in probs if np.ndim(p) == 2 and len(p)), 1)
    probs = [np.asarray(p, dtype=np.float64).reshape(-1, n_states) for p in probs]
    states = np.arange(n_states) + first_depth
    levels = [(p @ states).astype(np.float32) for p in probs]
    frame_depths = [np.argmax(p, axis=1) + first_depth for p in probs]
    depths = changepoint_depths(track_ids, levels, frame_depths, first_depth,
                                first_depth + n_states - 1, penalty, noise,
                                min_step=min_step, rings=rings, ring_penalty=ring_penalty,
                                ring_min_step=ring_min_step,
                                ring_min_step_sigma=ring_min_step_sigma,
                                signature_z=signature_z, level_weight=level_weight,
                                signature_bandwidth=signature_bandwidth)
    confidences = [p[np.arange(len(p)), d - first_depth].astype(np.float32)
                   for p, d in zip(probs, depths, strict=True)]
    return [d.astype(np.uint8) for d in depths], confidences


class ViterbiForward:
    """Forward pass of :func:`smooth_track_depths`, frame by frame (constant memory).

    Holds the Viterbi score of every track that can still be continued. For each
    detection :meth:`step` returns what the backward pass (:class:`ViterbiBackward`, run
    over the frames in reverse) needs, so that both together give exactly the depths of
    :func:`smooth_track_depths` without holding the series in memory.

    Parameters
    ----------
    n_states : int
        Number of depth states S (the width of the probabilities).
    switch_prob, max_step
        As in :func:`smooth_depths`.
    max_gap : int
        The linker's ``max_gap``: a track unseen for more than ``max_gap + 1`` frames is
        never continued, and its score is dropped.
    scores : bool
        False: follow the tracks only, for a backward pass that does not smooth
        (``ViterbiBackward(smooth=False)`` needs ``first`` alone); ``best`` and ``chain``
        are then zeros. Skips the (tracks × S × S) Viterbi update of every frame.
    """

    def __init__(self, n_states: int, switch_prob: float = 0.02, max_step: int = 2,
                 max_gap: int = 2, scores: bool = True) -> None:
        if not 0 <= switch_prob < 1:
            raise ValueError(f"switch_prob must be in [0, 1), got {switch_prob}")
        if not 1 <= n_states <= 255:
            raise ValueError(f"n_states must be in 1..255, got {n_states}")
        self.n_states = int(n_states)
        self.max_gap = int(max_gap)
        self.scores = bool(scores)
        self._log_a = _log_transitions(n_states, switch_prob, max_step)
        # tracks that can still be continued, ids ascending (new ids are always larger)
        self._ids = np.zeros(0, np.int64)
        self._score = np.zeros((0, n_states if self.scores else 0))
        self._last = np.zeros(0, np.int64)
        self.t = 0

    def step(self, track_ids: np.ndarray, probs: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Advance one frame.

        Parameters
        ----------
        track_ids : numpy.ndarray
            ``(N,)`` track ids of this frame's detections (unique; ids < 0: untracked).
        probs : numpy.ndarray
            ``(N, S)`` depth probabilities of the detections (as in
            :func:`smooth_track_depths`).

        Returns
        -------
        best : numpy.ndarray
            ``(N,)`` uint8: the most probable state if the track ended here.
        first : numpy.ndarray
            ``(N,)`` bool: the detection is its track's first (or untracked).
        chain : numpy.ndarray
            ``(N, S)`` uint8: for each state here, the most probable state at the
            track's previous detection (undefined where ``first``).
        """
        t = self.t
        self.t += 1
        s = self.n_states
        probs = np.asarray(probs, dtype=np.float64).reshape(-1, s)
        ids = np.asarray(track_ids, dtype=np.int64).reshape(-1)
        n = len(ids)
        if self.scores:
            with np.errstate(divide="ignore"):
                score = np.log(np.clip(np.nan_to_num(probs), 1e-300, None))
        else:  # tracks only: a (N, 0) score keeps the bookkeeping below unchanged
            score = np.zeros((n, 0))
        chain = np.zeros((n, s), np.uint8)
        pos = np.searchsorted(self._ids, ids)
        found = (ids >= 0) & (pos < len(self._ids))
        found[found] = self._ids[pos[found]] == ids[found]
        if found.any():
            j = pos[found]
            if self.scores:
                prev = self._score[j]
                gaps = t - self._last[j]
                link = np.broadcast_to(np.arange(s), prev.shape).copy()
                for g in range(int(gaps.max())):  # gap frames carry no emission (log 1 = 0)
                    m = gaps > g
                    cand = prev[m][:, :, None] + self._log_a[None]  # [track, from, to]
                    back = np.argmax(cand, axis=1)
                    prev[m] = np.take_along_axis(cand, back[:, None, :], axis=1)[:, 0, :]
                    link[m] = np.take_along_axis(link[m], back, axis=1)
                score[found] = prev + score[found]
                chain[found] = link
                self._score[j] = score[found]
            self._last[j] = t
        new = (ids >= 0) & ~found
        if new.any():
            order = np.argsort(ids[new])
            self._ids = np.concatenate([self._ids, ids[new][order]])
            self._score = np.concatenate([self._score, score[new][order]])
            self._last = np.concatenate([self._last, np.full(int(new.sum()), t)])
            if np.any(np.diff(self._ids) <= 0):  # ids out of order: keep them sorted
                o = np.argsort(self._ids, kind="stable")
                self._ids, self._score, self._last = self._ids[o], self._score[o], self._last[o]
        keep = t - self._last <= self.max_gap  # others are not continued at frame t + 1
        if not keep.all():
            self._ids, self._score, self._last = self._ids[keep], self._score[keep], self._last[keep]
        best = (np.argmax(score, axis=1).astype(np.uint8) if self.scores
                else np.zeros(n, np.uint8))
        return best, ~found, chain


class ViterbiBackward:
    """Backward pass of :class:`ViterbiForward`, and :func:`detect_events`, frame by frame.

    Call :meth:`step` for the frames in reverse order (last frame first) with what
    :meth:`ViterbiForward.step` returned for them; it returns the smoothed depths and
    their probabilities, equal to those of :func:`smooth_track_depths`, and collects the
    events of :func:`detect_events` in :attr:`events`.

    Parameters
    ----------
    n_frames : int
        Length of the series (tracks seen in the last frame did not vanish).
    first_depth : int
        Depth of state 0 (as in :func:`smooth_depths`).
    min_track_length, species
        As in :func:`detect_events`.
    smooth : bool
        False: keep the depths given to :meth:`step` (events only).
    """

    def __init__(self, n_frames: int, first_depth: int = 1, min_track_length: int = 1,
                 species: str | None = None, smooth: bool = True) -> None:
        self.n_frames = int(n_frames)
        self.first_depth = int(first_depth)
        self.min_track_length = int(min_track_length)
        self.species = species
        self.smooth = bool(smooth)
        self.events: list[dict] = []
        # id -> [state at its previous detection, later depth, later conf, later frame,
        #         detections seen, pending events]
        self._open: dict[int, list] = {}
        self.t = self.n_frames

    def step(self, track_ids: np.ndarray, probs: np.ndarray, best: np.ndarray,
             first: np.ndarray, chain: np.ndarray, depth: np.ndarray | None = None,
             confidence: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One frame, in reverse order. ``depth``/``confidence`` are needed if not smoothing.

        Returns
        -------
        depth : numpy.ndarray
            ``(N,)`` uint8 depth of each detection [atoms].
        confidence : numpy.ndarray
            ``(N,)`` float32 probability of that depth.
        """
        self.t -= 1
        t = self.t
        ids = np.asarray(track_ids).reshape(-1)
        n = len(ids)
        probs = np.asarray(probs, dtype=np.float64)
        probs = probs.reshape(n, probs.shape[-1] if probs.ndim == 2 else 1)
        if self.smooth:
            out_d = np.empty(n, np.uint8)
            out_c = np.empty(n, np.float32)
        else:
            out_d = np.asarray(depth).astype(np.uint8)
            out_c = np.asarray(confidence).astype(np.float32)
        for i in range(n):
            k = int(ids[i])
            if k < 0:
                if self.smooth:
                    out_d[i] = int(best[i]) + self.first_depth
                    out_c[i] = probs[i].max(initial=0.0)
                continue
            state = self._open.get(k)
            if self.smooth:
                s = int(best[i]) if state is None else state[0]
                out_d[i] = s + self.first_depth
                out_c[i] = probs[i][s]
                prev_state = int(chain[i][s])
            else:
                prev_state = 0
            d, c = int(out_d[i]), float(out_c[i])
            if state is None:  # the track's last detection
                pending = []
                if t < self.n_frames - 1:
                    pending.append(_event(t + 1, k, "vanished", d, 0, np.nan))
                state = [prev_state, d, c, t, 1, pending]
                self._open[k] = state
            else:
                if state[1] != d:
                    state[5].append(_event(state[3], k, "depth_change", d, state[1], state[2]))
                state[0], state[1], state[2], state[3] = prev_state, d, c, t
                state[4] += 1
            if first[i]:
                if t > 0:
                    state[5].append(_event(t, k, "appeared", 0, d, c))
                if state[4] >= self.min_track_length:
                    if self.species is not None:
                        for e in state[5]:
                            e["species"] = self.species
                    self.events += state[5]
                del self._open[k]
        return out_d, out_c

    def sorted_events(self) -> list[dict]:
        """The events, sorted as :func:`detect_events` sorts them."""
        return sorted(self.events, key=lambda e: (e["frame"], e["track"], _KIND_ORDER[e["kind"]]))


def _observations(track_ids: Sequence[np.ndarray]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per track id >= 0: the frames it is seen in (ascending) and its row in each frame."""
    if not track_ids:
        return {}
    ids = np.concatenate([np.asarray(t, dtype=np.int64).reshape(-1) for t in track_ids])
    frames = np.concatenate([np.full(len(t), f) for f, t in enumerate(track_ids)]).astype(np.int64)
    rows = np.concatenate([np.arange(len(t)) for t in track_ids]).astype(np.int64)
    tracked = ids >= 0
    ids, frames, rows = ids[tracked], frames[tracked], rows[tracked]
    order = np.lexsort((frames, ids))
    ids, frames, rows = ids[order], frames[order], rows[order]
    bounds = np.flatnonzero(np.diff(ids)) + 1
    return {
        int(ids[g[0]]): (frames[g], rows[g])
        for g in np.split(np.arange(len(ids)), bounds)
        if len(g)
    }


# ---------------------------------------------------------------------------------------
# events
# ---------------------------------------------------------------------------------------

_KIND_ORDER = {"vanished": 0, "appeared": 1, "depth_change": 2}


def detect_events(
    track_ids: Sequence[np.ndarray],
    depths: Sequence[np.ndarray],
    confidences: Sequence[np.ndarray],
    species: str | None = None,
    min_track_length: int = 1,
) -> list[dict]:
    """Events of a tracked series: depth changes, columns appearing and vanishing.

    Parameters
    ----------
    track_ids : sequence of numpy.ndarray
        Per frame, track ids of its detections (from :func:`link_tracks`); ids < 0
        (untracked) are ignored.
    depths : sequence of numpy.ndarray
        Per frame, depth of each detection [atoms] (preferably smoothed).
    confidences : sequence of numpy.ndarray
        Per frame, probability of that depth for each detection.
    species : str, optional
        Added to every event as ``'species'`` (``'Ce'`` or ``'O'``) when given.
    min_track_length : int
        Tracks with fewer detections are ignored (spurious detections) [frames].

    Returns
    -------
    list of dict
        Sorted by frame, then track. Keys: ``frame`` (where the new state is first seen),
        ``track``, ``kind`` (``'depth_change'``, ``'appeared'``, ``'vanished'``),
        ``depth_before``, ``depth_after`` (0 = no column), ``confidence`` (probability of
        ``depth_after`` at that frame; NaN for ``'vanished'``, which has no detection).
        A track present in the first frame did not appear; one present in the last frame
        did not vanish; a gap tolerated by the linker is not an event.
    """
    if not len(track_ids) == len(depths) == len(confidences):
        raise ValueError("track_ids, depths and confidences must have one entry per frame")
    n_frames = len(track_ids)
    events = []
    for track, (frames, rows) in _observations(track_ids).items():
        if len(frames) < min_track_length:
            continue
        seq = np.array([depths[f][i] for f, i in zip(frames, rows, strict=True)], dtype=np.int64)
        conf = np.array(
            [confidences[f][i] for f, i in zip(frames, rows, strict=True)], dtype=np.float64
        )
        if frames[0] > 0:
            events.append(_event(frames[0], track, "appeared", 0, seq[0], conf[0]))
        for j in np.flatnonzero(np.diff(seq)) + 1:
            events.append(_event(frames[j], track, "depth_change", seq[j - 1], seq[j], conf[j]))
        if frames[-1] < n_frames - 1:
            events.append(_event(frames[-1] + 1, track, "vanished", seq[-1], 0, np.nan))
    if species is not None:
        for e in events:
            e["species"] = species
    events.sort(key=lambda e: (e["frame"], e["track"], _KIND_ORDER[e["kind"]]))
    return events


def _event(frame, track, kind, before, after, confidence) -> dict:
    return {
        "frame": int(frame),
        "track": int(track),
        "kind": kind,
        "depth_before": int(before),
        "depth_after": int(after),
        "confidence": float(confidence),
    }
