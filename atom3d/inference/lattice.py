"""The pixel size checked against the CeO2 [110] lattice in the frames themselves.

A file's calibration is the commonest silent error of real HRTEM data: nominal
magnifications are off by a few percent, and a unit or binning slip is off by far more.
The network is trained at 0.2 Å/px with the pixel size jittered by ±3 %, and its depths
degrade beyond that (``report/calibration_tolerance_s26/``). The lattice is a ruler in
every frame: this module finds the projected fluorite lattice of CeO2 along [110] in the
frames' power spectrum and measures the pixel size from it.

Conventions
-----------
Spatial frequencies are in cycles/Å (d = 1/|g|). CeO2 is fluorite with a = 5.411 Å
(``atom3d.structures.ceria.A_CEO2``, the lattice constant the simulations use). In the zone plane of
[110], with unit vectors u = [1-10]/√2 and w = [001], the reflection (h k l) (h + k = 0)
is g = ((h − k)/√2, l) / a: {111} (√2, ±1)/a at d = 3.124 Å, {002} (0, 2)/a at 2.706 Å,
{220} (2√2, 0)/a at 1.913 Å, {113} (√2, ±3)/a at 1.631 Å, {222} (2√2, ±2)/a at 1.562 Å and
{004} (0, 4)/a at 1.353 Å (one of each Friedel pair: the power spectrum of a real image
is centro-symmetric).

Method
------
Power spectra of Hann-windowed square tiles (side ``T``, half overlapping, zero-padded
to ``2T``) of up to ``MAX_FRAMES`` frames are summed (Welch; a sum of power spectra
needs no drift alignment), whitened by their radial median (each ring divided by its
median, so the amorphous background and the CTF envelope drop out) and smoothed by a
Gaussian of ``SMOOTH_PX`` px. Every pixel size ``p`` (log grid) and in-plane rotation
θ of the pattern is scored by the mean whitened power at the nine reflections placed at
frequency ``R(θ) g · p`` (cycles/px) on the spectrum binned to at most ``COARSE_N`` px
a side; the best grid point is refined by a local search on the full spectrum,
and finally on the un-whitened excess power (ring median subtracted) with cubic-spline
interpolation, each reflection weighted by 1 / its ring median (unbiased to < 0.1 % on
synthetic lattices; 0.4 % before). ``lattice_z`` is the best score above the median of
all grid points, in units of their spread (1.4826 × MAD). A lattice is *found* when
``lattice_z`` ≥ ``LATTICE_MIN_Z``, both {111} spots stand ≥ ``SPOT_MIN_Z`` spreads
above their ring, and no spot the pattern leaves unexplained reaches ``UNEXPLAINED_MAX``
of the strongest it explains. Measured (``report/calibration_tolerance_s26/``): found in
85–88 % of single simulated test images, 95 % of them within 0.5–0.8 % (all within
3.4 %); never on noise, amorphous blobs, or real SrTiO3 and MoS2 images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.fft import fft2, fftshift

from atom3d.errors import InputFileError
from atom3d.structures.ceria import A_CEO2  # the simulations' lattice constant [Å]

__all__ = ["LATTICE_MIN_Z", "LATTICE_SEARCH", "LATTICE_TOLERANCE", "LATTICE_WIDE_A", "REFLECTIONS_UW", "LatticeCheck",
           "frames_lattice", "lattice_attrs", "measure_lattice", "reflections_uw", "sample_frames",
           "series_lattice"]

#: The nine reflections of the [110] zone, in units of 1/a along (u, w) (see module doc).
REFLECTIONS_UW = np.array([
    (math.sqrt(2), 1.0), (math.sqrt(2), -1.0),     # {111}
    (0.0, 2.0),                                    # {002}
    (2 * math.sqrt(2), 0.0),                       # {220}
    (math.sqrt(2), 3.0), (math.sqrt(2), -3.0),     # {113}
    (2 * math.sqrt(2), 2.0), (2 * math.sqrt(2), -2.0),  # {222}
    (0.0, 4.0),                                    # {004}
])
#: Every reflection of the [110] zone out to 1.5 × |{004}| (both Friedel mates), in units
#: of 1/a along (u, w): (√2 h, l) with h and l both odd or both even.
_ALL_UW = np.array([(math.sqrt(2) * h, k) for h in range(-5, 6) for k in range(-6, 7)
                    if (h - k) % 2 == 0 and (h, k) != (0, 0) and 2 * h * h + k * k <= 36])
#: Rows of :data:`REFLECTIONS_UW` with odd l ({111}, {113}), and the two {111}.
_ODD_L = [0, 1, 4, 5]
_111 = [0, 1]
#: Both {111} reflections (70.5° apart) must stand this many spreads above their ring:
#: other lattices (a square one of 3.15 Å matches one {111}) then fail the test.
SPOT_MIN_Z = 4.0
#: ... and no spot the pattern leaves unexplained may reach this fraction of the strongest
#: one it explains (MoS2's hexagonal spots do; see :func:`_unexplained`).
UNEXPLAINED_MAX = 0.5
#: An unexplained spot only counts above this many ring spreads (the largest of the
#: thousands of noise pixels in the annulus reaches 10–15).
UNEXPLAINED_MIN_Z = 30.0
#: A spot whose peak lies within this fraction of |{111}| of a reflection is explained:
#: the fit puts CeO2's own within a few hundredths, while MoS2's hexagonal spots sit
#: 0.13–0.18 from the {111} positions (only peaks count, so a broad spot's flank does not).
EXCLUDE = 0.08
#: ... and at least this many grid px: the Hann window's main lobe (±4 px of the 2T
#: grid), for small frames whose grid is coarse.
EXCLUDE_MIN_PX = 4.0
#: A lattice is reported as found when its score is at least this many spreads above the
#: median of the search grid (measured: noise and amorphous images at most 5.8;
#: ``report/calibration_tolerance_s26/``).
LATTICE_MIN_Z = 8.0
#: Calibration errors the shipped model tolerates: within ±6 % its Ce exact depth stays
#: within 0.025 of a true calibration and its F1 ≥ 0.988 at ≥ 1000 e/Å²; at ±10 % exact
#: falls by 0.05–0.12 (``report/calibration_tolerance_s26/``). ``atom3d predict`` warns
#: when the lattice and the calibration differ by more than this fraction.
LATTICE_TOLERANCE = 0.05
#: Relative half-width of the search around a given pixel size (``--pixel-size lattice``
#: and the check of every run).
LATTICE_SEARCH = 0.25
#: Range [Å/px] searched without a pixel size (the upper end: every reflection up to
#: {004} below Nyquist).
LATTICE_WIDE_A = (0.05, 0.66)
#: Frames whose power spectra are summed (evenly spread over the series).
MAX_FRAMES = 8
#: Frames smaller than this [px a side] are not searched (reported as no lattice).
MIN_SIDE = 32
#: Largest tile side [px]; tiles are half overlapping.
MAX_TILE = 512
#: At most this many tiles per measurement (the rest of a huge frame is skipped evenly).
MAX_TILES = 64
#: The grid search runs on the spectrum binned to at most this many px a side.
COARSE_N = 512
#: Gaussian smoothing of the whitened spectrum [px of the 2T grid].
SMOOTH_PX = 1.5


def reflections_uw(a_A: float = A_CEO2) -> np.ndarray:
    """(9, 2) reflection vectors of the [110] zone in cycles/Å along (u, w)."""
    return REFLECTIONS_UW / a_A


@dataclass(frozen=True)
class LatticeCheck:
    """What the lattice says about a pixel size.

    Attributes
    ----------
    pixel_size_A : float
        Pixel size [Å/px] at which the frames' lattice is CeO2's (NaN if none was found).
    z : float
        Score of the best fit above the search grid's median, in robust spreads
        (see :data:`LATTICE_MIN_Z`).
    angle_deg : float
        In-plane angle of [001] (w) from the image x axis towards +y (down the rows:
        clockwise as an image is displayed) [°], in [0, 180).
    nominal_A : float
        The pixel size it is compared with [Å/px] (the file's or the user's; NaN for a
        wide search without one).
    spot_z : tuple of float
        Each reflection of :data:`REFLECTIONS_UW` at the fit: its whitened power above
        the median of its ring, in robust spreads of that ring.
    unexplained : float
        The strongest spot of the spectrum the pattern does not explain, over the
        strongest it does (0 when there is no clear other spot); a lattice is only
        reported when this is below ``UNEXPLAINED_MAX``.
    """

    pixel_size_A: float
    z: float
    angle_deg: float
    nominal_A: float
    spot_z: tuple[float, ...] = ()
    unexplained: float = 0.0

    @property
    def found(self) -> bool:
        """Whether a CeO2 [110] lattice was found."""
        return bool(np.isfinite(self.pixel_size_A))

    @property
    def reason(self) -> str:
        """Why the best fit is not a CeO2 [110] lattice ('' when it is one)."""
        if self.found:
            return ""
        if self.z < LATTICE_MIN_Z or len(self.spot_z) < 2:
            return f"score {self.z:.1f}, needs {LATTICE_MIN_Z:g}"
        if min(self.spot_z[:2]) < SPOT_MIN_Z:
            return (f"score {self.z:.0f}, but the two {{111}} spots are not both there "
                    f"({self.spot_z[0]:.0f} and {self.spot_z[1]:.0f} spreads, need "
                    f"{SPOT_MIN_Z:g}): another lattice or zone?")
        return (f"score {self.z:.0f}, but a spot it does not explain is "
                f"{self.unexplained:.2f} of its strongest: another lattice or crystal?")

    @property
    def ratio(self) -> float:
        """Lattice pixel size over the nominal one (NaN when either is missing)."""
        return self.pixel_size_A / self.nominal_A if self.found else math.nan


def _tiles(shape: tuple[int, int]) -> tuple[int, list[tuple[int, int]]]:
    h, w = shape
    t = min(MAX_TILE, h, w)
    t -= t % 2
    step = max(t // 2, 1)
    rows = list(range(0, h - t + 1, step)) or [0]
    cols = list(range(0, w - t + 1, step)) or [0]
    return t, [(r, c) for r in rows for c in cols]


def power_spectrum(frames: Sequence[np.ndarray]) -> np.ndarray:
    """Summed power spectrum (Welch) of ``frames``, centred, on a ``2T × 2T`` grid.

    Parameters
    ----------
    frames : sequence of (H, W) arrays
        Frames of one series (finite values).

    Returns
    -------
    numpy.ndarray
        float64 (2T, 2T); frequency (fy, fx) = (i − T, j − T) / (2T) cycles/px.
    """
    t, corners = _tiles(frames[0].shape)
    per_frame = max(1, MAX_TILES // len(frames))
    if len(corners) > per_frame:
        corners = [corners[i] for i in np.linspace(0, len(corners) - 1, per_frame).astype(int)]
    window = np.outer(np.hanning(t), np.hanning(t))
    total = np.zeros((2 * t, 2 * t))
    for frame in frames:
        for r, c in corners:
            tile = np.asarray(frame[r:r + t, c:c + t], np.float64)
            tile = (tile - tile.mean()) * window
            total += np.abs(fft2(tile, s=(2 * t, 2 * t))) ** 2
    return fftshift(total)


@dataclass(frozen=True)
class _Spectrum:
    """A summed power spectrum prepared for the search (see the module doc)."""

    white: np.ndarray  # smoothed P / M(r) − 1 (search and scores)
    excess: np.ndarray  # smoothed P − M(r) (final position, no radial tilt)
    ring_median: np.ndarray  # M at integer radii [grid px]
    white_median: np.ndarray  # per ring: median of ``white``
    white_spread: np.ndarray  # per ring: 1.4826 × MAD of ``white``

    def at_radius(self, values: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Per-ring ``values`` linearly interpolated at radii ``r`` [grid px]."""
        return np.interp(r, np.arange(len(values)), values)


def _ring_reduce(values: np.ndarray, ring: np.ndarray, fn: Callable) -> np.ndarray:
    order = np.argsort(ring, axis=None)
    ring_sorted, v_sorted = ring.ravel()[order], values.ravel()[order]
    bounds = np.searchsorted(ring_sorted, np.arange(ring.max() + 2))
    return np.array([fn(v_sorted[bounds[k]:bounds[k + 1]]) if bounds[k + 1] > bounds[k]
                     else np.nan for k in range(ring.max() + 1)])


def prepare(power: np.ndarray) -> _Spectrum:
    """Whiten ``power`` by its ring medians and smooth it (see the module doc)."""
    n = power.shape[0]
    yy, xx = np.indices(power.shape) - n // 2
    r = np.hypot(yy, xx)
    ring = np.rint(r).astype(int)
    median = np.maximum(np.nan_to_num(_ring_reduce(power, ring, np.median), nan=1.0), 1e-300)
    m_r = np.interp(r, np.arange(len(median)), median)
    centre = r < 2
    white = power / m_r - 1.0
    excess = power - m_r
    white[centre] = 0.0
    excess[centre] = 0.0
    white = ndimage.gaussian_filter(white, SMOOTH_PX)
    excess = ndimage.gaussian_filter(excess, SMOOTH_PX)
    w_med = np.nan_to_num(_ring_reduce(white, ring, np.median))
    w_mad = np.nan_to_num(_ring_reduce(white, ring, lambda v: np.median(np.abs(v - np.median(v)))))
    return _Spectrum(white, excess, median, w_med, np.maximum(1.4826 * w_mad, 1e-12))


def _positions(n: int, g_uw: np.ndarray, pixel_A: np.ndarray,
               angle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grid positions (fy, fx) [px], shape (reflection, pixel size, angle), of the
    reflections for every (pixel size, angle): [001] (w) at ``angle`` from x."""
    c, s = np.cos(angle), np.sin(angle)
    gx = g_uw[:, 0, None] * (-s) + g_uw[:, 1, None] * c          # (R, A) cycles/Å
    gy = g_uw[:, 0, None] * c + g_uw[:, 1, None] * s
    fx = gx[:, None, :] * pixel_A[None, :, None] * n + n // 2
    fy = gy[:, None, :] * pixel_A[None, :, None] * n + n // 2
    return fy, fx


def _sample(image: np.ndarray, fy: np.ndarray, fx: np.ndarray, order: int = 1) -> np.ndarray:
    """``image`` at (fy, fx), 0 outside; ``order`` 3: ``image`` holds cubic B-spline
    coefficients (``ndimage.spline_filter``), whose maxima fall between grid nodes
    (a bilinear interpolant peaks on a node: the fit would snap to the grid)."""
    n = image.shape[0]
    inside = (fx >= 0) & (fx <= n - 1) & (fy >= 0) & (fy <= n - 1)
    values = ndimage.map_coordinates(image, [fy.ravel(), fx.ravel()], order=order,
                                     mode="constant", cval=0.0,
                                     prefilter=False).reshape(fx.shape)
    values[~inside] = 0.0
    return values


def _scores(white: np.ndarray, g_uw: np.ndarray, pixel_A: np.ndarray,
            angle: np.ndarray, weights: np.ndarray | None = None,
            order: int = 1) -> np.ndarray:
    """Mean of ``white`` (times ``weights`` per reflection) at the reflections for every
    (pixel size, angle) pair: (P, A). ``order``: see :func:`_sample`."""
    chunk = max(1, 200_000 // (len(g_uw) * len(angle)))  # bounded memory on wide searches
    if len(pixel_A) > chunk:
        return np.concatenate([_scores(white, g_uw, pixel_A[k:k + chunk], angle, weights,
                                       order)
                               for k in range(0, len(pixel_A), chunk)])
    values = _sample(white, *_positions(white.shape[0], g_uw, pixel_A, angle), order)
    if weights is not None:
        values = values * weights[:, None, None]
    return values.mean(axis=0)


def measure_lattice(frames: Sequence[np.ndarray], nominal_A: float | None = None, *,
                    search: float = LATTICE_SEARCH, wide: tuple[float, float] = LATTICE_WIDE_A,
                    a_A: float = A_CEO2, wide_fallback: bool = False) -> LatticeCheck:
    """Pixel size [Å/px] at which ``frames`` show the CeO2 [110] lattice.

    Parameters
    ----------
    frames : sequence of (H, W) arrays
        Frames of one series (all the same shape, finite).
    nominal_A : float, optional
        Pixel size to search around [Å/px] (within a factor ``1 ± search``); None: the
        whole range ``wide``.
    search : float
        Relative half-width of the search around ``nominal_A``.
    wide : (float, float)
        Range [Å/px] searched without a nominal pixel size.
    a_A : float
        Lattice constant [Å].
    wide_fallback : bool
        When nothing is found near ``nominal_A``, search ``wide`` too (on the same
        spectrum): a unit or binning slip puts the lattice far from the calibration.

    Returns
    -------
    LatticeCheck
        ``pixel_size_A`` NaN when no CeO2 [110] lattice is found (frames smaller than
        ``MIN_SIDE``, or a best fit that fails a test of the module doc:
        :attr:`LatticeCheck.reason` says which); ``nominal_A`` is the one given.
    """
    nominal = float(nominal_A) if nominal_A is not None else math.nan
    if min(frames[0].shape) < MIN_SIDE:
        return LatticeCheck(math.nan, 0.0, math.nan, nominal, ())
    spec = prepare(power_spectrum(frames))
    if nominal_A is not None:
        check = _search(spec, a_A, nominal_A / (1 + search), nominal_A * (1 + search),
                        alias=False, nominal=nominal)
        if check.found or not wide_fallback:
            return check
    return _search(spec, a_A, *wide, alias=True, nominal=nominal)


def _search(spec: _Spectrum, a_A: float, lo: float, hi: float, *, alias: bool,
            nominal: float) -> LatticeCheck:
    """Fit the pattern to ``spec`` for pixel sizes in [lo, hi] Å/px (``alias``: settle the
    √2 ambiguity of a range that spans it)."""
    white = spec.white
    n = white.shape[0]
    g = reflections_uw(a_A)
    g_max = float(np.hypot(*g.T).max())
    hi = min(hi, 0.5 / g_max * 0.98)  # every reflection below Nyquist
    if hi <= lo:
        return LatticeCheck(math.nan, 0.0, math.nan, nominal, ())
    # the grid search runs on the spectrum binned to at most COARSE_N px a side (the cost
    # grows with the square of the grid), the refinements on the full one
    f = max(1, n // COARSE_N)
    coarse = white if f == 1 else white.reshape(n // f, f, n // f, f).mean(axis=(1, 3))
    r_max = g_max * hi * coarse.shape[0]  # outermost reflection's radius [grid px]
    step = 0.5 / r_max  # half a grid pixel at the outermost reflection
    pixel = np.exp(np.arange(math.log(lo), math.log(hi) + step, step))
    angle = np.arange(0.0, math.pi, step)
    scores = _scores(coarse, g, pixel, angle)
    median = float(np.median(scores))
    spread = 1.4826 * float(np.median(np.abs(scores - median))) or 1e-12
    i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
    p0, a0 = _refine(lambda p, a: _scores(coarse, g, p, a), pixel[i], angle[j], step)
    z = (float(_scores(coarse, g, np.array([p0]), np.array([a0]))[0, 0]) - median) / spread
    p0, a0 = _refine(lambda p, a: _scores(white, g, p, a), p0, a0, step)
    if alias:
        p0, a0 = _odd_family_choice(white, g, p0, a0, step / f, lo, hi)
    # final position on the excess power, each reflection weighted by 1 / M at its place:
    # the whitened spectrum is tilted outwards across a spot by the falling M (+0.5 %)
    fy, fx = _positions(n, g, np.array([p0]), np.array([a0]))
    radius = np.hypot(fy - n // 2, fx - n // 2)[:, 0, 0]
    weights = 1.0 / spec.at_radius(spec.ring_median, radius)
    coeffs = ndimage.spline_filter(spec.excess, order=3, mode="constant")
    p1, a1 = _refine(lambda p, a: _scores(coeffs, g, p, a, weights, order=3), p0, a0, step)
    spot = (_sample(white, *_positions(n, g, np.array([p1]), np.array([a1])))[:, 0, 0]
            - spec.at_radius(spec.white_median, radius)) / spec.at_radius(spec.white_spread,
                                                                           radius)
    other = _unexplained(spec, a_A, p1, a1, float(spot.max()))
    found = (z >= LATTICE_MIN_Z and float(spot[_111].min()) >= SPOT_MIN_Z
             and other < UNEXPLAINED_MAX)
    return LatticeCheck(float(p1) if found else math.nan, float(z),
                        float(np.degrees(a1) % 180.0), nominal,
                        tuple(float(v) for v in spot), other)


def _unexplained(spec: _Spectrum, a_A: float, p: float, a: float,
                 explained_z: float) -> float:
    """The strongest spot the fitted pattern does not explain, over its strongest one.

    Within the annulus of the pattern's reflections (0.6 × {111} to 1.08 × {004}),
    away from every reflection (both Friedel mates) by more than ``EXCLUDE`` × |{111}|
    (at least ``EXCLUDE_MIN_PX``), the largest local maximum (5 × 5 px) of the
    ring-normalised whitened power; 0 when it is not a clear spot (below
    ``UNEXPLAINED_MIN_Z`` ring spreads: the largest of thousands of noise pixels reaches
    10–15). A hexagonal lattice (MoS2) that puts its spots on
    {002} and {004} has spots of the same strength at ±60°, which CeO2 [110] has not.
    """
    n = spec.white.shape[0]
    yy, xx = np.indices(spec.white.shape) - n // 2
    r = np.hypot(yy, xx)
    g = reflections_uw(a_A)
    r111 = float(np.hypot(*g[0])) * p * n  # radius of {111} [grid px]
    r_out = float(np.hypot(*g.T).max()) * p * n * 1.08
    # every reflection of the zone near the annulus is explained ({331} lies just outside)
    fy, fx = _positions(n, _ALL_UW / a_A, np.array([p]), np.array([a]))
    fy, fx = fy[:, 0, 0] - n // 2, fx[:, 0, 0] - n // 2
    # local maxima only: the flank of an explained spot (broad for a small particle in a
    # small frame) falls away from it and is not one
    peak = spec.white >= ndimage.maximum_filter(spec.white, size=5)
    cy, cx = np.nonzero((r >= 0.6 * r111) & (r <= r_out) & peak)
    cy, cx = cy - n // 2, cx - n // 2
    distance = np.hypot(cy[:, None] - fy[None, :], cx[:, None] - fx[None, :]).min(axis=1)
    keep = distance > max(EXCLUDE * r111, EXCLUDE_MIN_PX)
    if not keep.any():
        return 0.0
    cy, cx = cy[keep], cx[keep]
    ring = np.rint(np.hypot(cy, cx)).astype(int)
    zmap = (spec.white[cy + n // 2, cx + n // 2] - spec.white_median[ring]) / spec.white_spread[ring]
    strongest = float(zmap.max())
    if strongest < UNEXPLAINED_MIN_Z or explained_z <= 0:
        return 0.0
    return strongest / explained_z


def _odd_family_choice(white: np.ndarray, g: np.ndarray, p0: float, a0: float, step: float,
                       lo: float, hi: float) -> tuple[float, float]:
    """Settle the √2 ambiguity of a wide search.

    The [110] pattern scaled by √2 and turned by 90° puts its even-l reflections ({002},
    {220}, {004}, ...) on reflections again, so a search over a wide range of pixel sizes
    can lock on p·√2 or p/√2. Only the true scale puts the odd-l reflections ({111},
    {113}) on the lattice: the candidate whose odd-l spots are strongest wins.
    """
    def odd(p: float, a: float) -> float:
        return float(_scores(white, g[_ODD_L], np.array([p]), np.array([a]))[0, 0])

    best = (odd(p0, a0), p0, a0)
    for factor in (math.sqrt(2), 1 / math.sqrt(2)):
        p = p0 * factor
        if not lo <= p <= hi:
            continue
        for turn in (math.pi / 2, -math.pi / 2):
            pr, ar = _refine(lambda pp, aa: _scores(white, g, pp, aa), p, a0 + turn, step)
            best = max(best, (odd(pr, ar), pr, ar))
    return best[1], best[2]


def _refine(score: Callable[[np.ndarray, np.ndarray], np.ndarray], p0: float, a0: float,
            step: float) -> tuple[float, float]:
    """Refine a grid maximum on finer local grids (three rounds, 1/5 of the step each)."""
    for _ in range(3):
        p = p0 * np.exp(np.linspace(-step, step, 11))
        a = a0 + np.linspace(-step, step, 11)
        s = score(p, a)
        i, j = np.unravel_index(int(np.argmax(s)), s.shape)
        p0, a0 = float(p[i]), float(a[j])
        step /= 5
    return p0, a0


def sample_frames(series) -> list[np.ndarray]:
    """Up to :data:`MAX_FRAMES` frames of ``series``, evenly spread (float64); frames with
    NaN/Inf or no signal, or that cannot be read, are skipped (predict marks them invalid
    and goes on)."""
    n = int(series.n_frames)
    picks = np.unique(np.linspace(0, n - 1, min(n, MAX_FRAMES)).astype(int))
    frames = []
    for i in picks:
        try:
            f = np.asarray(series.frame(int(i)), np.float64)
        except InputFileError:
            continue
        if np.all(np.isfinite(f)) and float(np.std(f)) > 0:
            frames.append(f)
    return frames


def frames_lattice(frames: Sequence[np.ndarray], nominal_A: float | None = None) -> LatticeCheck:
    """:func:`measure_lattice` of :func:`sample_frames` near ``nominal_A`` and, when not
    found there, over the wide range (nothing found when there is no frame)."""
    if not frames:
        return LatticeCheck(math.nan, 0.0, math.nan,
                            nominal_A if nominal_A is not None else math.nan, ())
    return measure_lattice(frames, nominal_A, wide_fallback=True)


def series_lattice(series, nominal_A: float | None = None) -> LatticeCheck:
    """What ``atom3d predict`` checks: :func:`frames_lattice` of :func:`sample_frames`."""
    return frames_lattice(sample_frames(series), nominal_A)


def lattice_attrs(check: LatticeCheck, source: str) -> dict[str, float | str]:
    """Root attributes of a results file recording the pixel size's origin and check.

    ``source``: ``'file'`` (the file's calibration), ``'option'`` (``--pixel-size A``)
    or ``'lattice'`` (``--pixel-size lattice``).
    """
    return {"pixel_size_source": source,
            "lattice_pixel_size_A": float(check.pixel_size_A),
            "lattice_z": float(check.z),
            "lattice_angle_deg": float(check.angle_deg)}
