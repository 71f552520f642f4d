"""HRTEM image formation: abTEM multislice exit waves, objective lens, detector, shot noise.

The expensive step, the multislice exit wave, is computed once per structure, tilt and
frozen-phonon set (:func:`exit_spectra`). Its band-limited spectrum is then reused for
many optics draws (:func:`image_from_spectra`), each a few inverse FFTs.

Grids and units
---------------
* Images are arrays indexed ``[row, col]`` = ``[y, x]``; pixel (r, c) of an image with
  pixel size p has its centre at (x, y) = (c·p, r·p) [Å] in the field-of-view frame.
  abTEM indexes its arrays ``[x, y]``; this module transposes at the boundary.
* Intensities are in units of the incident beam: vacuum images equal 1. The expected
  number of electrons in a detector pixel is ``dose_e_per_A2 × p² × intensity``.
* The field of view is padded by ``ctf_margin_A`` on every side before the lens is
  applied, so that the delocalisation of the aberrated image does not wrap around.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atom3d.config import Range
from atom3d.simulation.optics import (
    Optics,
    aberration_phase,
    aperture_mask,
    focal_quadrature,
    spatial_envelope,
)
from atom3d.structures.columns import Structure, to_ase


@dataclass(frozen=True)
class MultisliceConfig:
    """Numerical and thermal settings of the multislice simulation.

    Parameters
    ----------
    sampling_A
        Wave and potential sampling [Å] (chosen by the convergence test in
        ``simulate/convergence/``).
    slice_thickness_A
        Multislice slice thickness [Å].
    frozen_phonons
        Number of frozen-phonon configurations averaged incoherently.
    sigma_ce_A, sigma_o_A
        Root-mean-square thermal displacement per Cartesian direction [Å]
        (room temperature: 0.06 Å for Ce, 0.09 Å for O).
    parametrization
        Atomic potential parametrisation ('lobato' or 'kirkland').
    ctf_margin_A
        Padding of the field of view before the lens is applied [Å].
    object_margin_A
        Vacuum margin around the atoms in the multislice cell [Å].
    """

    sampling_A: float = 0.035
    slice_thickness_A: float = 0.9565
    frozen_phonons: int = 4
    sigma_ce_A: float = 0.06
    sigma_o_A: float = 0.09
    parametrization: str = "lobato"
    ctf_margin_A: float = 12.0
    object_margin_A: float = 6.0

    def __post_init__(self):
        if not 0.005 <= self.sampling_A <= 0.2:
            raise ValueError(f"sampling_A={self.sampling_A} must be within 0.005 … 0.2 Å")
        if not 0.2 <= self.slice_thickness_A <= 5:
            raise ValueError("slice_thickness_A must be within 0.2 … 5 Å")
        if not 1 <= self.frozen_phonons <= 64:
            raise ValueError("frozen_phonons must be within 1 … 64")
        if self.parametrization not in ("lobato", "kirkland"):
            raise ValueError("parametrization must be 'lobato' or 'kirkland'")


@dataclass(frozen=True)
class DetectorConfig:
    """Detector sampling, blur and dose.

    Parameters
    ----------
    pixel_size_A
        Range of detector pixel sizes [Å/px], drawn per structure.
    image_px
        Image side [px] (square images).
    dose_e_per_A2
        Range of doses [e/Å²] per frame, drawn log-uniformly per image.
    mtf_cutoff_nyquist
        Optional extra detector blur: ``MTF(q) = 1 / (1 + (q / (c·q_N))²)`` with q_N the
        detector Nyquist frequency and c this value; 0 disables it. Pixel integration
        (a sinc MTF) is always applied.
    """

    pixel_size_A: Range = (0.15, 0.3)
    image_px: int = 256
    dose_e_per_A2: Range = (50.0, 20000.0)
    mtf_cutoff_nyquist: float = 0.0

    def __post_init__(self):
        if not 0.05 <= self.pixel_size_A[0] <= self.pixel_size_A[1] <= 1.0:
            raise ValueError("pixel_size_A must lie within 0.05 … 1.0 Å/px")
        if not 16 <= self.image_px <= 2048 or self.image_px % 2:
            raise ValueError(f"image_px={self.image_px} must be an even number within 16 … 2048")
        if self.dose_e_per_A2[0] <= 0:
            raise ValueError("dose_e_per_A2 must be > 0")


@dataclass(frozen=True)
class Grid:
    """The detector and wave grids of one structure.

    ``extent_A`` is the padded square side; detector pixel j (padded frame) sits at
    X = j·p; field-of-view pixel c sits at X = (c + margin_px)·p; wave sample i at i·s.
    """

    pixel_size_A: float
    image_px: int
    margin_px: int
    n_wave: int

    @property
    def n_det(self) -> int:
        return self.image_px + 2 * self.margin_px

    @property
    def extent_A(self) -> float:
        return self.n_det * self.pixel_size_A

    @property
    def wave_sampling_A(self) -> float:
        return self.extent_A / self.n_wave

    @property
    def origin_A(self) -> float:
        """Field-of-view coordinate x of padded-frame X = 0 (negative) [Å]."""
        return -self.margin_px * self.pixel_size_A


def _good_size(n: int) -> int:
    """Smallest even n' ≥ n whose prime factors are 2, 3, 5 (fast FFTs)."""
    n = max(2, int(n))
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1 and n % 2 == 0:
            return n
        n += 1


def make_grid(pixel_size_A: float, image_px: int, ms: MultisliceConfig) -> Grid:
    margin = int(np.ceil(ms.ctf_margin_A / pixel_size_A))
    n_det = image_px + 2 * margin
    n_wave = _good_size(int(np.ceil(n_det * pixel_size_A / ms.sampling_A)))
    return Grid(pixel_size_A, image_px, margin, n_wave)


def fourier_resize(spectrum: np.ndarray, n_out: int) -> np.ndarray:
    """Crop or zero-pad the last two axes of an (unshifted) spectrum to ``n_out``².

    Frequencies −n_out/2 … n_out/2−1 are kept; the Nyquist row and column of the output
    are zeroed so that a real image stays real.
    """
    n_in = spectrum.shape[-1]
    s = np.fft.fftshift(spectrum, axes=(-2, -1))
    out = np.zeros(spectrum.shape[:-2] + (n_out, n_out), dtype=spectrum.dtype)
    m = min(n_in, n_out)
    i0, o0 = n_in // 2 - m // 2, n_out // 2 - m // 2
    out[..., o0:o0 + m, o0:o0 + m] = s[..., i0:i0 + m, i0:i0 + m]
    out[..., 0, :] = 0
    out[..., :, 0] = 0
    return np.fft.ifftshift(out, axes=(-2, -1))


def frequencies(n: int, extent_A: float) -> tuple[np.ndarray, np.ndarray]:
    """Spatial frequency grids (kx, ky) [1/Å] for an n×n array indexed [y, x]."""
    k = np.fft.fftfreq(n, d=extent_A / n)
    return k[None, :], k[:, None]


@dataclass
class ExitSpectra:
    """Band-limited spectra of the exit waves of one structure (one per phonon config).

    ``array`` (n_fp, n, n) complex64, normalised so that ``ifft2(array)·n²/n_wave²`` is
    the exit wave (vacuum = 1) on an n×n grid of the padded field of view.
    """

    array: np.ndarray
    grid: Grid
    k_cut: float
    energy_eV: float

    @property
    def n(self) -> int:
        return self.array.shape[-1]


def exit_waves(structure: Structure, grid: Grid, ms: MultisliceConfig, energy_eV: float,
               seed: int) -> np.ndarray:
    """Multislice exit waves [y, x] on the full wave grid of the padded field of view.

    Only a cell around the atoms (plus ``object_margin_A``) is propagated with abTEM; the
    rest of the field is vacuum (wave = 1).

    Returns
    -------
    (frozen_phonons, n_wave, n_wave) complex64
    """
    import abtem

    s = grid.wave_sampling_A
    out = np.ones((ms.frozen_phonons, grid.n_wave, grid.n_wave), np.complex64)
    if len(structure.positions) == 0:
        return out
    # Padded-frame coordinates of the atoms; keep those inside the padded field.
    pos = structure.positions.copy()
    pos[:, :2] -= grid.origin_A
    inside = np.all((pos[:, :2] >= 0) & (pos[:, :2] < grid.extent_A), axis=1)
    if not inside.any():
        return out
    sub = Structure(pos[inside], structure.species[inside], structure.column_xy,
                    structure.column_species, structure.column_depth)
    lo = np.floor((sub.positions[:, :2].min(0) - ms.object_margin_A) / s).astype(int)
    hi = np.ceil((sub.positions[:, :2].max(0) + ms.object_margin_A) / s).astype(int)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, grid.n_wave)
    size = hi - lo
    size = np.array([_good_size(v) for v in size])
    lo = np.maximum(np.minimum(lo, grid.n_wave - size), 0)
    size = np.minimum(size, grid.n_wave)
    thickness = float(np.ptp(sub.positions[:, 2]))
    sub.positions[:, 2] += 1.0
    atoms = to_ase(sub, (size[0] * s, size[1] * s, thickness + 2.0), origin_A=tuple(lo * s))
    fp = abtem.FrozenPhonons(atoms, num_configs=ms.frozen_phonons,
                             sigmas={"Ce": ms.sigma_ce_A, "O": ms.sigma_o_A}, seed=int(seed))
    potential = abtem.Potential(fp, gpts=(int(size[0]), int(size[1])),
                                slice_thickness=ms.slice_thickness_A,
                                parametrization=ms.parametrization, projection="infinite")
    waves = abtem.PlaneWave(energy=energy_eV).multislice(potential)
    arr = np.asarray(waves.compute(scheduler="synchronous", progress_bar=False).array)
    arr = arr.reshape((ms.frozen_phonons,) + arr.shape[-2:])  # [fp, x, y]
    out[:, lo[1]:lo[1] + size[1], lo[0]:lo[0] + size[0]] = np.swapaxes(arr, -1, -2)
    return out


def exit_spectra(structure: Structure, grid: Grid, ms: MultisliceConfig, energy_eV: float,
                 k_cut: float, seed: int) -> ExitSpectra:
    """Exit waves of ``structure`` as spectra band-limited to |k| ≤ ``k_cut`` [1/Å].

    The kept grid has n ≥ 4·k_cut·L points, so intensities formed from it are free of
    aliasing.
    """
    return band_limited_spectra(exit_waves(structure, grid, ms, energy_eV, seed), grid, k_cut,
                                energy_eV)


def band_limited_spectra(waves: np.ndarray, grid: Grid, k_cut: float,
                         energy_eV: float) -> ExitSpectra:
    """Exit waves ``(configs, n_wave, n_wave)`` as :func:`exit_spectra` keeps them."""
    k_cut = min(k_cut, (2 / 3) / (2 * grid.wave_sampling_A))  # abTEM's antialiasing limit
    n = min(_good_size(int(np.ceil(4 * k_cut * grid.extent_A)) + 2), grid.n_wave)
    spec = fourier_resize(np.fft.fft2(waves), n)
    kx, ky = frequencies(n, grid.extent_A)
    spec *= (kx**2 + ky**2 <= k_cut**2)
    spec *= n * n / float(grid.n_wave) ** 2
    return ExitSpectra(spec.astype(np.complex64), grid, k_cut, energy_eV)


def image_from_spectra(spectra: ExitSpectra, optics: Optics, *, focal_nodes: int = 7,
                       mtf_cutoff_nyquist: float = 0.0) -> np.ndarray:
    """Noise-free image (vacuum = 1) of the field of view for one draw of the optics.

    Intensities are averaged over frozen-phonon configurations and integrated over the
    defocus distribution; then the detector integrates over its pixels (sinc MTF, plus an
    optional extra blur) and samples at its pixel size.

    Returns
    -------
    (image_px, image_px) float32
    """
    if abs(optics.energy_eV - spectra.energy_eV) > 1e-6:
        raise ValueError("optics energy differs from the energy of the exit waves")
    g, n = spectra.grid, spectra.n
    kx, ky = frequencies(n, g.extent_A)
    lens = spatial_envelope(kx, ky, optics) * aperture_mask(kx, ky, optics)
    offsets, weights = focal_quadrature(optics.focal_spread_A, focal_nodes)
    intensity = np.zeros((n, n), np.float64)
    for dz, w in zip(offsets, weights, strict=True):
        h = (np.exp(-1j * aberration_phase(kx, ky, optics, dz)) * lens).astype(np.complex64)
        psi = np.fft.ifft2(spectra.array * h)
        intensity += w * np.mean(np.abs(psi) ** 2, axis=0)
    return detect(intensity, g, mtf_cutoff_nyquist)


def detect(intensity: np.ndarray, grid: Grid, mtf_cutoff_nyquist: float = 0.0) -> np.ndarray:
    """Integrate a band-limited intensity over detector pixels and crop the field of view."""
    n = intensity.shape[-1]
    p = grid.pixel_size_A
    kx, ky = frequencies(n, grid.extent_A)
    mtf = np.sinc(kx * p) * np.sinc(ky * p)
    if mtf_cutoff_nyquist > 0:
        qn = 0.5 / p
        mtf = mtf / (1 + (kx**2 + ky**2) / (mtf_cutoff_nyquist * qn) ** 2)
    spec = fourier_resize(np.fft.fft2(intensity) * mtf, grid.n_det)
    img = np.fft.ifft2(spec).real * (grid.n_det**2 / float(n) ** 2)
    m = grid.margin_px
    return img[m:m + grid.image_px, m:m + grid.image_px].astype(np.float32)
