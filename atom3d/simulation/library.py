"""Thickness libraries for the classical (intensity-matching) baseline.

A perfect CeO2 crystal seen along [110] is simulated once as a thickness series (abTEM
exit waves after every layer of a/√2 = 3.826 Å, frozen phonons averaged). For any optics
the library then gives, per thickness n = 1 … K, the mean image contrast ``I − 1``
(vacuum = 1) inside a disk around a Ce column and around an O column. A microscopist's
intensity-matching method compares each measured column with this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from atom3d.simulation.optics import (
    Optics,
    aberration_phase,
    aperture_mask,
    focal_quadrature,
    spatial_envelope,
)
from atom3d.structures.ceria import A_CEO2, CE, lattice_sites, repeat_along_beam

#: Disk radii [Å] in which column contrast is integrated.
CE_RADIUS_A = 0.6
O_RADIUS_A = 0.45


@dataclass(frozen=True)
class ThicknessSeries:
    """Exit-wave spectra of a periodic [110] slab after 0 … K layers.

    ``spectra`` (K+1, n_fp, ny, nx) complex64 (unshifted FFTs of the exit waves);
    ``extent_A`` (Lx, Ly) of the periodic cell; ``ce_xy``/``o_xy`` one column of each
    species [Å] in the cell.
    """

    spectra: np.ndarray
    extent_A: tuple[float, float]
    ce_xy: tuple[float, float]
    o_xy: tuple[float, float]
    energy_eV: float


@lru_cache(maxsize=4)
def thickness_series(max_layers: int = 22, energy_eV: float = 300e3, sampling_A: float = 0.035,
                     frozen_phonons: int = 4, seed: int = 0) -> ThicknessSeries:
    """Simulate the thickness series (cached per argument set; a few seconds)."""
    import abtem
    from ase import Atoms

    c = repeat_along_beam((1, 1, 0))
    lx, ly = 2 * A_CEO2, 3 * c  # 2 × 3 projected cells (5.411 Å × 3.826 Å)
    sites = lattice_sites((1, 1, 0), (lx + 3, ly + 3, (max_layers + 2) * c))
    z0 = -0.125 * c
    keep = (np.all(sites.xyz[:, :2] >= -1e-6, axis=1) & (sites.xyz[:, 0] < lx - 1e-6)
            & (sites.xyz[:, 1] < ly - 1e-6) & (sites.xyz[:, 2] > z0)
            & (sites.xyz[:, 2] < z0 + max_layers * c))
    pos = sites.xyz[keep].copy()
    pos[:, 2] -= z0 - 0.125 * c  # first plane inside the first slice
    symbols = ["Ce" if s == CE else "O" for s in sites.species[keep]]
    atoms = Atoms(symbols, positions=pos, cell=(lx, ly, max_layers * c + 0.5 * c), pbc=True)
    abtem.config.set({"fftw.planning_effort": "FFTW_ESTIMATE", "diagnostics.progress_bar": False})
    fp = abtem.FrozenPhonons(atoms, num_configs=frozen_phonons,
                             sigmas={"Ce": 0.06, "O": 0.09}, seed=seed)
    potential = abtem.Potential(fp, sampling=sampling_A, slice_thickness=c / 4,
                                parametrization="lobato", projection="infinite",
                                exit_planes=4)
    waves = abtem.PlaneWave(energy=energy_eV).multislice(potential)
    arr = np.asarray(waves.compute(scheduler="synchronous", progress_bar=False).array)
    # arr: [fp, planes, x, y] → [planes, fp, y, x]; keep planes 0 … max_layers.
    arr = np.moveaxis(arr.reshape((frozen_phonons, -1) + arr.shape[-2:]), 0, 1)
    arr = np.swapaxes(arr, -1, -2)[: max_layers + 1]
    o_xy = (1.3528, 0.0)  # the O column next to the Ce column at the origin
    return ThicknessSeries(np.fft.fft2(arr).astype(np.complex64), (lx, ly), (0.0, 0.0), o_xy,
                           energy_eV)


def _disk_mean(image: np.ndarray, extent_A: tuple[float, float], xy: tuple[float, float],
               radius_A: float) -> float:
    ny, nx = image.shape
    x = np.arange(nx) * extent_A[0] / nx
    y = np.arange(ny) * extent_A[1] / ny
    dx = (x[None, :] - xy[0] + extent_A[0] / 2) % extent_A[0] - extent_A[0] / 2
    dy = (y[:, None] - xy[1] + extent_A[1] / 2) % extent_A[1] - extent_A[1] / 2
    return float(image[dx**2 + dy**2 <= radius_A**2].mean())


def contrast_library(series: ThicknessSeries, optics: Optics, pixel_size_A: float,
                     focal_nodes: int = 7) -> dict[str, np.ndarray]:
    """Mean contrast ``I − 1`` in the Ce and O column disks for 0 … K layers.

    The image of every thickness is formed as in :func:`atom3d.simulation.hrtem.
    image_from_spectra` (focal integration, spatial envelope, aperture, detector pixel
    integration at ``pixel_size_A``).
    """
    k_layers, _, ny, nx = series.spectra.shape
    lx, ly = series.extent_A
    kx = np.fft.fftfreq(nx, d=lx / nx)[None, :]
    ky = np.fft.fftfreq(ny, d=ly / ny)[:, None]
    lens = spatial_envelope(kx, ky, optics) * aperture_mask(kx, ky, optics)
    mtf = np.sinc(kx * pixel_size_A) * np.sinc(ky * pixel_size_A)
    offsets, weights = focal_quadrature(optics.focal_spread_A, focal_nodes)
    out = {"Ce": np.zeros(k_layers), "O": np.zeros(k_layers)}
    for n in range(k_layers):
        intensity = np.zeros((ny, nx))
        for dz, w in zip(offsets, weights, strict=True):
            h = np.exp(-1j * aberration_phase(kx, ky, optics, dz)) * lens
            psi = np.fft.ifft2(series.spectra[n] * h)
            intensity += w * np.mean(np.abs(psi) ** 2, axis=0)
        intensity = np.fft.ifft2(np.fft.fft2(intensity) * mtf).real
        out["Ce"][n] = _disk_mean(intensity, series.extent_A, series.ce_xy, CE_RADIUS_A) - 1
        out["O"][n] = _disk_mean(intensity, series.extent_A, series.o_xy, O_RADIUS_A) - 1
    return out
