"""The pixel size measured from the CeO2 [110] lattice (``atom3d.inference.lattice``)."""

import argparse
import math

import numpy as np
import pytest

from atom3d.argtypes import LATTICE, pixel_size_or_lattice
from atom3d.inference.lattice import (
    A_CEO2,
    LATTICE_MIN_Z,
    LatticeCheck,
    lattice_attrs,
    measure_lattice,
    reflections_uw,
    series_lattice,
)


def ce_columns_image(rng, shape, pixel_A, angle_deg=0.0, dose=500.0, square_A=None,
                     hexagonal_A=None):
    """Shot-noise image of Gaussian columns (σ 0.35 Å) on the projected [110] Ce lattice
    of CeO2 (centred rectangle a × a/√2, [001] at ``angle_deg`` from x), or on a square
    lattice of side ``square_A`` or a hexagonal one of side ``hexagonal_A`` (not CeO2)."""
    r, c = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    x, y = c * pixel_A - c.mean() * pixel_A, r * pixel_A - r.mean() * pixel_A
    th = math.radians(angle_deg)
    w, u = x * math.cos(th) + y * math.sin(th), -x * math.sin(th) + y * math.cos(th)
    if square_A is not None:
        cells = [(square_A, square_A, 0.0, 0.0)]
    elif hexagonal_A is not None:  # a hexagonal lattice as a centred rectangle a × a√3
        cells = [(hexagonal_A, hexagonal_A * math.sqrt(3), 0.0, 0.0),
                 (hexagonal_A, hexagonal_A * math.sqrt(3), hexagonal_A / 2,
                  hexagonal_A * math.sqrt(3) / 2)]
    else:
        a, b = A_CEO2, A_CEO2 / math.sqrt(2)
        cells = [(a, b, 0.0, 0.0), (a, b, a / 2, b / 2)]
    d2 = np.full(shape, np.inf)
    for pw, pu, ow, ou in cells:
        fw, fu = (w - ow) / pw, (u - ou) / pu
        d2 = np.minimum(d2, ((fw - np.round(fw)) * pw) ** 2 + ((fu - np.round(fu)) * pu) ** 2)
    clean = 1.0 + 1.5 * np.exp(-d2 / (2 * 0.35**2))
    return rng.poisson(clean * dose * pixel_A**2).astype(np.float32)


def test_reflections_have_the_fluorite_spacings():
    d = 1.0 / np.hypot(*reflections_uw().T)
    expected = A_CEO2 / np.sqrt([3, 3, 4, 8, 11, 11, 12, 12, 16])  # {111} {002} {220} {113} {222} {004}
    np.testing.assert_allclose(d, expected, rtol=1e-12)
    g = reflections_uw()
    cos = g[0] @ g[1] / (np.linalg.norm(g[0]) * np.linalg.norm(g[1]))
    assert math.degrees(math.acos(cos)) == pytest.approx(70.53, abs=0.01)  # (1-11)^(1-1-1)


@pytest.mark.parametrize("pixel, angle, dose", [(0.2, 0.0, 500), (0.15, 71.0, 100),
                                                (0.28, 120.0, 100), (0.2, 33.0, 20)])
@pytest.mark.parametrize("told", [1.0, 1.08, 1 / 1.08])
def test_pixel_size_found_within_a_fraction_of_a_percent(pixel, angle, dose, told):
    f = ce_columns_image(np.random.default_rng(0), (256, 256), pixel, angle, dose)
    check = measure_lattice([f], pixel * told)
    assert check.found and check.z >= LATTICE_MIN_Z
    assert check.pixel_size_A == pytest.approx(pixel, rel=0.002)
    assert check.ratio == pytest.approx(1 / told, rel=0.002)
    assert min(abs(check.angle_deg - angle), 180 - abs(check.angle_deg - angle)) < 0.5


@pytest.mark.parametrize("pixel", [0.12, 0.2, 0.28, 0.45])
def test_wide_search_without_a_calibration_is_not_fooled_by_the_sqrt2_alias(pixel):
    # the pattern scaled by √2 and turned by 90° puts its even-l spots on reflections
    f = ce_columns_image(np.random.default_rng(1), (256, 256), pixel, 20.0, 300)
    check = measure_lattice([f], None)
    assert check.found and math.isnan(check.nominal_A) and math.isnan(check.ratio)
    assert check.pixel_size_A == pytest.approx(pixel, rel=0.005)


def test_wide_fallback_finds_a_binning_slip_on_the_same_spectrum():
    f = ce_columns_image(np.random.default_rng(9), (256, 256), 0.2, 50.0, 300)
    near = measure_lattice([f], 0.1)  # the file says half the pixel size
    assert not near.found and near.nominal_A == 0.1
    check = measure_lattice([f], 0.1, wide_fallback=True)
    assert check.found and check.nominal_A == 0.1
    assert check.pixel_size_A == pytest.approx(0.2, rel=0.005)
    assert check.ratio == pytest.approx(2.0, rel=0.005)


def test_noise_alone_has_no_lattice():
    rng = np.random.default_rng(2)
    for _ in range(3):
        f = rng.poisson(np.full((256, 256), 40.0)).astype(np.float32)
        for nominal in (0.2, None):
            check = measure_lattice([f], nominal)
            assert not check.found and check.z < LATTICE_MIN_Z
            assert math.isnan(check.pixel_size_A) and math.isnan(check.ratio)


@pytest.mark.parametrize("side", [3.905, 3.15, 2.75])
def test_other_lattices_are_not_taken_for_ceo2(side):
    # a square lattice can put one {111} (or {002}) on its reflections, never both {111}
    f = ce_columns_image(np.random.default_rng(3), (256, 256), 0.2, 15.0, 1000, square_A=side)
    for nominal in (0.2, None):
        check = measure_lattice([f], nominal)
        assert not check.found, (side, nominal, check)
        # the fit matched some reflections (a partial match), but not both {111}
        assert min(check.spot_z[:2]) < 4 < max(check.spot_z)


def test_a_hexagonal_lattice_is_not_taken_for_ceo2():
    # MoS2-like (a = 3.16 Å): {100} at 2.74 Å can sit on {002} and {004}, but its spots
    # at ±60° from them are no CeO2 [110] reflection
    f = ce_columns_image(np.random.default_rng(8), (256, 256), 0.2, 10.0, 1000,
                         hexagonal_A=3.16)
    for nominal in (0.2, None):
        check = measure_lattice([f], nominal)
        assert not check.found, (nominal, check)
    assert check.z > LATTICE_MIN_Z  # something matched: it is the other tests that refuse it


def test_frames_of_a_series_add_up_without_alignment():
    rng = np.random.default_rng(4)
    dose = 2.0  # e/Å²: one frame is not enough
    one = measure_lattice([ce_columns_image(rng, (192, 192), 0.2, 40.0, dose)], 0.2)
    frames = []
    for t in range(8):  # drifting: the power spectrum does not care
        f = ce_columns_image(rng, (224, 224), 0.2, 40.0, dose)
        frames.append(f[3 * t:3 * t + 192, 2 * t:2 * t + 192])
    many = measure_lattice(frames, 0.2)
    assert not one.found
    assert many.found and many.pixel_size_A == pytest.approx(0.2, rel=0.01)
    assert min(many.spot_z[:2]) > 2 * min(one.spot_z[:2])


def test_large_frames_are_cut_into_a_bounded_number_of_tiles():
    f = ce_columns_image(np.random.default_rng(5), (1100, 1300), 0.1, 60.0, 200)
    check = measure_lattice([f], 0.1)
    assert check.found and check.pixel_size_A == pytest.approx(0.1, rel=0.002)


class _Series:
    def __init__(self, frames, pixel):
        self.frames, self.n_frames, self.pixel_size_A = frames, len(frames), pixel

    def frame(self, i):
        return self.frames[i]


def test_series_lattice_skips_invalid_frames():
    rng = np.random.default_rng(6)
    frames = [ce_columns_image(rng, (128, 128), 0.2, 0.0, 300) for _ in range(3)]
    frames[1] = np.full((128, 128), np.nan, np.float32)
    check = series_lattice(_Series(frames, 0.2), 0.2)
    assert check.found and check.pixel_size_A == pytest.approx(0.2, rel=0.003)
    none = series_lattice(_Series([np.full((64, 64), np.nan), np.zeros((64, 64))], 0.2), 0.2)
    assert not none.found and none.z == 0.0
    tiny = series_lattice(_Series([np.ones((2, 16)), np.zeros((2, 16)) + 3], 0.2), 0.2)
    assert not tiny.found and tiny.z == 0.0


def test_lattice_attrs_record_source_and_result():
    attrs = lattice_attrs(LatticeCheck(0.201, 30.0, 12.0, 0.2), "file")
    assert attrs == {"pixel_size_source": "file", "lattice_pixel_size_A": 0.201,
                     "lattice_z": 30.0, "lattice_angle_deg": 12.0}


def test_pixel_size_argument():
    assert pixel_size_or_lattice("0.2") == 0.2
    assert pixel_size_or_lattice(" Lattice ") == LATTICE
    for bad in ("-0.2", "0", "nan", "lattices", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="pixel size in Å/px or 'lattice'"):
            pixel_size_or_lattice(bad)


def test_figure_note_says_where_the_pixel_size_came_from():
    from atom3d.inference.figures import pixel_size_note

    attrs = {"pixel_size_A": 0.22, **lattice_attrs(LatticeCheck(0.1998, 30.0, 12.0, 0.22), "file")}
    assert pixel_size_note(attrs) == ("0.2200 Å/px from the file; the CeO2 lattice gives "
                                      "0.1998 (-9.2 %)")
    attrs = {"pixel_size_A": 0.2, **lattice_attrs(LatticeCheck(math.nan, 3.0, 1.0, 0.2), "option")}
    assert pixel_size_note(attrs) == "0.2000 Å/px from --pixel-size; no CeO2 lattice found to check it"
    attrs = {"pixel_size_A": 0.1998, **lattice_attrs(LatticeCheck(0.1998, 30.0, 1.0, 0.22), "lattice")}
    assert pixel_size_note(attrs) == "0.1998 Å/px from the CeO2 lattice"
    assert pixel_size_note({"pixel_size_A": 0.2}) == "0.2000 Å/px"  # files before session 26


def test_reason_says_why_a_fit_is_not_ceo2():
    assert LatticeCheck(0.2, 30.0, 0.0, 0.2, (9.0, 9.0), 0.1).reason == ""
    assert "score 3.0, needs 8" in LatticeCheck(math.nan, 3.0, 0.0, 0.2, (9.0, 9.0)).reason
    why = LatticeCheck(math.nan, 30.0, 0.0, 0.2, (9.0, 1.0)).reason
    assert "{111} spots are not both there" in why
    why = LatticeCheck(math.nan, 30.0, 0.0, 0.2, (9.0, 9.0), 0.76).reason
    assert "0.76 of its strongest" in why
