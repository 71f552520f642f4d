"""Image formation physics on tiny grids: normalisation, positions, depth contrast, CTF, noise."""

import numpy as np
import pytest

pytest.importorskip("abtem")

from atom3d.data.noise import add_shot_noise  # noqa: E402
from atom3d.simulation.hrtem import (  # noqa: E402
    MultisliceConfig,
    exit_spectra,
    fourier_resize,
    image_from_spectra,
    make_grid,
)
from atom3d.simulation.optics import (  # noqa: E402
    Optics,
    aberration_phase,
    aperture_mask,
    focal_quadrature,
    spatial_envelope,
    wavelength_A,
)
from atom3d.structures.columns import Structure  # noqa: E402

MS = MultisliceConfig(sampling_A=0.08, slice_thickness_A=1.913, frozen_phonons=1,
                      ctf_margin_A=4.0, object_margin_A=4.0)
OPTICS = Optics(300e3, defocus_A=-50.0, cs_A=-1.5e5, c5_A=2.5e7, focal_spread_A=20.0,
                astigmatism_A=0.0, astigmatism_angle_rad=0.0, aperture_mrad=np.inf,
                angular_spread_mrad=0.1)


def ce_column(depth, x=3.0, y=6.0):
    z = np.arange(depth) * 3.826
    pos = np.column_stack([np.full(depth, x), np.full(depth, y), z])
    return Structure(pos, np.zeros(depth, np.uint8), np.array([[x, y]], np.float32),
                     np.zeros(1, np.uint8), np.array([depth], np.uint8))


def render(structure, optics=OPTICS, pixel=0.25, px=48):
    grid = make_grid(pixel, px, MS)
    sp = exit_spectra(structure, grid, MS, optics.energy_eV, 2.0, seed=1)
    return image_from_spectra(sp, optics, focal_nodes=5)


def test_wavelength_300kV():
    assert wavelength_A(300e3) == pytest.approx(0.019687, rel=1e-4)


def test_vacuum_image_is_one():
    empty = Structure(np.zeros((0, 3)), np.zeros(0, np.uint8), np.zeros((0, 2), np.float32),
                      np.zeros(0, np.uint8), np.zeros(0, np.uint8))
    img = render(empty)
    assert np.allclose(img, 1.0, atol=1e-5)


def test_column_appears_at_its_pixel_and_contrast_grows_with_depth():
    """A lone Ce column at (x, y) = (3, 6) Å shows its strongest contrast at pixel
    (r, c) = (y/p, x/p) = (24, 12): catches a transposed or shifted image."""
    contrasts = []
    for depth in (1, 3, 6):
        img = render(ce_column(depth))
        dev = np.abs(img - np.median(img))
        r, c = np.unravel_index(np.argmax(dev), img.shape)
        assert abs(r - 24) <= 1 and abs(c - 12) <= 1
        contrasts.append(dev[23:26, 11:14].max())
    assert contrasts[0] < contrasts[1] and contrasts[1] != pytest.approx(contrasts[2], rel=0.05)


def test_simulation_is_deterministic():
    a, b = render(ce_column(4)), render(ce_column(4))
    assert np.array_equal(a, b)


def test_lens_matches_abtem_ctf():
    """Our aberration phase, spatial envelope and aperture equal abTEM's CTF."""
    import abtem

    optics = Optics(300e3, defocus_A=35.0, cs_A=-1.2e5, c5_A=3e7, focal_spread_A=0.0,
                    astigmatism_A=12.0, astigmatism_angle_rad=0.7, aperture_mrad=30.0,
                    angular_spread_mrad=0.3)
    k = np.linspace(-2.5, 2.5, 41)
    kx, ky = k[None, :], k[:, None]
    lam = optics.wavelength_A
    alpha = np.sqrt(kx**2 + ky**2) * lam
    phi = np.arctan2(ky, kx)
    ctf = abtem.CTF(energy=300e3, defocus=35.0, Cs=-1.2e5, C50=3e7, C12=12.0, phi12=0.7,
                    angular_spread=0.3, semiangle_cutoff=30.0)
    theirs = np.asarray(ctf._evaluate_from_angular_grid(alpha, phi))
    ours = np.exp(-1j * aberration_phase(kx, ky, optics)) * spatial_envelope(kx, ky, optics) \
        * aperture_mask(kx, ky, optics)
    inside = alpha < 0.029  # abTEM's aperture edge is soft over one pixel
    assert np.allclose(ours[inside], theirs[inside], atol=2e-3)


def test_focal_quadrature_reproduces_gaussian_moments():
    dz, w = focal_quadrature(30.0, 7)
    assert w.sum() == pytest.approx(1.0)
    assert np.sum(w * dz) == pytest.approx(0.0, abs=1e-9)
    assert np.sqrt(np.sum(w * dz**2)) == pytest.approx(30.0, rel=1e-6)  # σ, not 1/e width


def test_focal_spread_damps_linear_transfer_like_abtem_temporal_envelope():
    """Weak-phase limit: integrating intensities over defocus damps frequency k by
    exp(-½(πσλk²)²) = abTEM's TemporalEnvelope with focal_spread = √2 σ."""
    import abtem

    sigma, lam, k = 40.0, wavelength_A(300e3), 1.2
    dz, w = focal_quadrature(sigma, 21)
    ours = abs(np.sum(w * np.exp(-1j * np.pi * lam * dz * k**2)))
    env = abtem.transfer.TemporalEnvelope(focal_spread=np.sqrt(2) * sigma, energy=300e3)
    theirs = float(np.asarray(env._evaluate_from_angular_grid(np.array([k * lam]), np.array([0.0])))[0])
    assert ours == pytest.approx(theirs, rel=1e-3)


def test_fourier_resize_keeps_band_limited_signal():
    n = 64
    x = np.arange(n)
    sig = np.cos(2 * np.pi * 3 * x / n)[None, :] * np.ones((n, 1))
    small = np.fft.ifft2(fourier_resize(np.fft.fft2(sig), 32)).real * (32 * 32) / (n * n)
    assert np.allclose(small, sig[::2, ::2], atol=1e-10)


def test_shot_noise_mean_and_variance_equal_dose_times_pixel_area():
    rng = np.random.default_rng(0)
    img = np.full((400, 400), 0.8, np.float32)
    dose, p = 1000.0, 0.2
    counts = add_shot_noise(img, dose, p, rng)
    lam = dose * p * p * 0.8
    assert counts.mean() == pytest.approx(lam, rel=0.01)
    assert counts.var() == pytest.approx(lam, rel=0.03)
    assert np.all(counts == np.round(counts))
