"""Electron optics: parameter ranges, per-image draws, and the transfer function.

Sign conventions (stated here once; every module of atom3d uses them)
---------------------------------------------------------------------
* **Defocus** ``defocus_A`` is abTEM's ``defocus`` and equals ``-C10``. Positive defocus is
  *underfocus* (a weaker objective lens): with C3 > 0 the Scherzer defocus is positive.
  In negative-Cs imaging (C3 < 0) the favourable focus is negative (overfocus).
* The aberration phase is (Krivanek notation, abTEM's convention)
  ``χ(α, φ) = 2π/λ · [ ½ C10 α² + ½ C12 α² cos(2(φ − φ12)) + ¼ C30 α⁴ + ⅙ C50 α⁶ ]``
  and the objective lens multiplies the exit wave's spectrum by ``exp(−i χ)``.
  ``α = λ k`` is the scattering angle [rad] and ``k`` the spatial frequency [1/Å].
* **Focal spread** ``focal_spread_A`` is the *standard deviation* σ of the Gaussian
  distribution of defocus values (chromatic aberration and lens-current instability).
  abTEM's ``focal_spread`` is the 1/e half-width Δ = √2 σ (see ``abtem.transfer.
  TemporalEnvelope``; some of abTEM's examples treat it as σ). atom3d does not use the
  quasi-coherent temporal envelope: it integrates image *intensities* over the defocus
  distribution by Gauss–Hermite quadrature, which also handles the non-linear
  interference terms of thick, strongly scattering crystals.
* **Angular spread** ``angular_spread_mrad`` (partial spatial coherence) enters through
  the quasi-coherent envelope ``exp(−(θ/2)² |∇_α χ|²)``, identical to
  ``abtem.transfer.SpatialEnvelope(angular_spread=θ)``.
* **Two-fold astigmatism** ``astigmatism_A`` is the magnitude of C12 and
  ``astigmatism_angle_rad`` its azimuth φ12.

References
----------
Kirkland, E. J. *Advanced Computing in Electron Microscopy*, 3rd ed., Springer (2020).
Madsen, J. & Susi, T. abTEM: transmission electron microscopy from first principles,
Open Research Europe 1:24 (2021).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from atom3d.config import Range


def wavelength_A(energy_eV: float) -> float:
    """Relativistic electron wavelength [Å] at ``energy_eV`` [eV]."""
    m0c2 = 510998.95  # electron rest energy [eV]
    hc = 12398.419843320026  # [eV Å]
    return hc / np.sqrt(energy_eV * (2 * m0c2 + energy_eV))


@dataclass(frozen=True)
class OpticsConfig:
    """Ranges from which the optics of every image are drawn (uniformly unless stated).

    Parameters
    ----------
    energy_keV
        Beam energy [keV] (300 by default; 200 and 80 also work).
    defocus_nm
        Defocus [nm]; positive = underfocus (see module docstring).
    cs_um
        Spherical aberration C3 (Cs) [µm].
    c5_mm
        Fifth-order spherical aberration C5 [mm].
    focal_spread_nm
        Standard deviation of the defocus distribution [nm] (partial temporal coherence).
    astigmatism_nm
        Two-fold astigmatism |C12| [nm], at a uniformly random azimuth.
    aperture_mrad
        Objective aperture semi-angle [mrad].
    p_no_aperture
        Probability that no objective aperture is inserted.
    angular_spread_mrad
        Illumination angular spread θ [mrad] (partial spatial coherence).
    focal_nodes
        Gauss–Hermite nodes for the integration over defocus.
    """

    energy_keV: float = 300.0
    defocus_nm: Range = (-10.0, 10.0)
    cs_um: Range = (-25.0, 5.0)
    c5_mm: Range = (0.0, 5.0)
    focal_spread_nm: Range = (1.5, 5.0)
    astigmatism_nm: Range = (0.0, 3.0)
    aperture_mrad: Range = (15.0, 40.0)
    p_no_aperture: float = 0.25
    angular_spread_mrad: Range = (0.05, 0.3)
    focal_nodes: int = 7

    def __post_init__(self):
        if not 10.0 <= self.energy_keV <= 1000.0:
            raise ValueError(f"energy_keV={self.energy_keV} is outside 10 … 1000 keV")
        if not 0.0 <= self.p_no_aperture <= 1.0:
            raise ValueError("p_no_aperture must be a probability in [0, 1]")
        if self.focal_spread_nm[0] < 0 or self.astigmatism_nm[0] < 0 or self.c5_mm[0] < -1e3:
            raise ValueError("focal spread and astigmatism must be >= 0")
        if self.aperture_mrad[0] <= 0:
            raise ValueError("aperture_mrad must be > 0 (use p_no_aperture for no aperture)")
        if not 1 <= self.focal_nodes <= 41:
            raise ValueError("focal_nodes must be between 1 and 41")


@dataclass(frozen=True)
class Optics:
    """One draw of the optics, in Å and rad (the units abTEM uses)."""

    energy_eV: float
    defocus_A: float
    cs_A: float
    c5_A: float
    focal_spread_A: float
    astigmatism_A: float
    astigmatism_angle_rad: float
    aperture_mrad: float  # inf = no aperture
    angular_spread_mrad: float

    @property
    def wavelength_A(self) -> float:
        return wavelength_A(self.energy_eV)

    def as_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


def draw_optics(cfg: OpticsConfig, rng: np.random.Generator) -> Optics:
    """Draw one set of optics from ``cfg`` (every parameter uniform in its range)."""
    u = rng.uniform
    no_aperture = rng.random() < cfg.p_no_aperture
    aperture = u(*cfg.aperture_mrad)
    return Optics(
        energy_eV=cfg.energy_keV * 1e3,
        defocus_A=u(*cfg.defocus_nm) * 10.0,
        cs_A=u(*cfg.cs_um) * 1e4,
        c5_A=u(*cfg.c5_mm) * 1e7,
        focal_spread_A=u(*cfg.focal_spread_nm) * 10.0,
        astigmatism_A=u(*cfg.astigmatism_nm) * 10.0,
        astigmatism_angle_rad=u(0.0, np.pi),
        aperture_mrad=np.inf if no_aperture else aperture,
        angular_spread_mrad=u(*cfg.angular_spread_mrad),
    )


def aberration_phase(kx: np.ndarray, ky: np.ndarray, optics: Optics,
                     defocus_offset_A: float = 0.0) -> np.ndarray:
    """χ(k) [rad] on a grid of spatial frequencies ``kx``, ``ky`` [1/Å].

    ``defocus_offset_A`` is added to the defocus (used for the focal-spread integration).
    """
    lam = optics.wavelength_A
    alpha2 = (kx**2 + ky**2) * lam**2
    phi = np.arctan2(ky, kx)
    c10 = -(optics.defocus_A + defocus_offset_A)
    c12 = optics.astigmatism_A
    return (2 * np.pi / lam) * (
        0.5 * (c10 + c12 * np.cos(2 * (phi - optics.astigmatism_angle_rad))) * alpha2
        + 0.25 * optics.cs_A * alpha2**2
        + optics.c5_A * alpha2**3 / 6.0
    )


def spatial_envelope(kx: np.ndarray, ky: np.ndarray, optics: Optics) -> np.ndarray:
    """Quasi-coherent envelope of partial spatial coherence (abTEM's SpatialEnvelope)."""
    if optics.angular_spread_mrad == 0:
        return np.ones(np.broadcast_shapes(kx.shape, ky.shape))
    lam = optics.wavelength_A
    alpha = np.sqrt(kx**2 + ky**2) * lam
    phi = np.arctan2(ky, kx)
    c10 = -optics.defocus_A
    c12, phi12 = optics.astigmatism_A, optics.astigmatism_angle_rad
    dchi_dalpha = (2 * np.pi / lam) * (
        (c10 + c12 * np.cos(2 * (phi - phi12))) * alpha + optics.cs_A * alpha**3
        + optics.c5_A * alpha**5
    )
    dchi_dphi = -(2 * np.pi / lam) * c12 * np.sin(2 * (phi - phi12)) * alpha
    theta = optics.angular_spread_mrad * 1e-3
    return np.exp(-((theta / 2) ** 2) * (dchi_dalpha**2 + dchi_dphi**2))


def aperture_mask(kx: np.ndarray, ky: np.ndarray, optics: Optics) -> np.ndarray:
    """Hard objective aperture (1 inside, 0 outside)."""
    if not np.isfinite(optics.aperture_mrad):
        return np.ones(np.broadcast_shapes(kx.shape, ky.shape))
    alpha = np.sqrt(kx**2 + ky**2) * optics.wavelength_A
    return (alpha <= optics.aperture_mrad * 1e-3).astype(float)


def focal_quadrature(focal_spread_A: float, n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Defocus offsets [Å] and weights integrating over N(0, σ²) (Gauss–Hermite)."""
    if focal_spread_A == 0 or n_nodes == 1:
        return np.zeros(1), np.ones(1)
    x, w = np.polynomial.hermite_e.hermegauss(n_nodes)  # weight exp(-x²/2)
    return x * focal_spread_A, w / w.sum()


def transfer_cutoff(cfg: OpticsConfig, envelope_floor: float = 1e-3) -> float:
    """Highest spatial frequency [1/Å] any image of ``cfg`` transfers above ``envelope_floor``.

    The temporal-coherence damping of the linear image terms,
    ``exp(−½ (π σ λ k²)²)``, is evaluated for the smallest focal spread; an aperture bounds
    it further unless images without aperture are allowed.
    """
    lam = wavelength_A(cfg.energy_keV * 1e3)
    sigma = cfg.focal_spread_nm[0] * 10.0
    k_env = np.inf if sigma == 0 else np.sqrt(
        np.sqrt(-2 * np.log(envelope_floor)) / (np.pi * sigma * lam))
    k_ap = np.inf if cfg.p_no_aperture > 0 else cfg.aperture_mrad[1] * 1e-3 / lam
    return float(min(k_env, k_ap))
