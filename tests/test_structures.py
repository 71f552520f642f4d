"""Structures: lattice geometry, column counting on shapes with known answers, defects."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atom3d.structures.ceria import A_CEO2, CE, O, lattice_sites, repeat_along_beam, zone_axis_frame
from atom3d.structures.columns import place, tilt_matrix
from atom3d.structures.defects import cerium_adatoms, oxygen_vacancies, surface_cation_vacancies
from atom3d.structures.generate import DefectConfig, StructureConfig, sample_structure
from atom3d.structures.shapes import particle_mask, profile_mask


def test_fluorite_stoichiometry_and_110_geometry():
    sites = lattice_sites((1, 1, 0), (30, 30, 30))
    frac = sites.xyz @ zone_axis_frame((1, 1, 0)) / A_CEO2  # crystal coordinates [a]
    cells = np.all((frac > -1e-6) & (frac < 3 - 1e-6), axis=1)  # exactly 3x3x3 unit cells
    n_ce, n_o = (cells & (sites.species == CE)).sum(), (cells & (sites.species == O)).sum()
    assert (n_ce, n_o) == (4 * 27, 8 * 27)
    assert repeat_along_beam((1, 1, 0)) == pytest.approx(A_CEO2 / np.sqrt(2))
    # Projected nearest distances along [110]: Ce-Ce 3.31 Å, O-O 1.91 Å, Ce-O 1.35 Å.
    ce = sites.column_xy[sites.column_species == CE]
    ox = sites.column_xy[sites.column_species == O]
    from scipy.spatial.distance import cdist

    def nearest(a, b):
        d = cdist(a, b)
        return d[d > 1e-6].min()

    assert nearest(ce, ce) == pytest.approx(3.313, abs=0.01)
    assert nearest(ox, ox) == pytest.approx(1.913, abs=0.01)
    assert nearest(ce, ox) == pytest.approx(1.353, abs=0.01)


@pytest.mark.parametrize("zone", [(1, 1, 0), (1, 0, 0), (1, 1, 1)])
def test_zone_axis_frame_is_a_rotation(zone):
    r = zone_axis_frame(zone)
    assert np.allclose(r @ r.T, np.eye(3))
    assert np.allclose(r[2], np.asarray(zone) / np.linalg.norm(zone))


@pytest.mark.parametrize("n", [1, 2, 5, 9, 20])
def test_slab_of_n_layers_gives_depth_n_everywhere(n):
    sites = lattice_sites((1, 1, 0), (25, 25, (n + 2) * 3.9))
    mask, _ = profile_mask(sites, np.random.default_rng(0), thickness_layers=n, wedge_layers=0,
                           width_A=30, surface="110", profile="flat")
    s = place(sites, mask, rotation_rad=0, tilt_rad=0, tilt_azimuth_rad=0, centre_xy_A=(0, 0))
    assert np.all(s.column_depth[s.column_species == CE] == n)
    assert np.all(s.column_depth[s.column_species == O] == n)
    assert s.thickness_A < n * repeat_along_beam((1, 1, 0))


def test_wedge_depth_increases_across_width():
    sites = lattice_sites((1, 1, 0), (30, 30, 12 * 3.9))
    mask, _ = profile_mask(sites, np.random.default_rng(1), thickness_layers=3, wedge_layers=4,
                           width_A=40, surface="100", profile="flat")
    s = place(sites, mask, rotation_rad=0, tilt_rad=0, tilt_azimuth_rad=0, centre_xy_A=(0, 0))
    d = s.column_depth[s.column_species == CE]
    assert set(np.unique(d)) == {3, 4, 5, 6, 7}


def test_particle_depth_is_largest_in_the_middle():
    sites = lattice_sites((1, 1, 0), (30, 30, 30))
    mask, rec = particle_mask(sites, np.random.default_rng(2), diameter_A=40, asymmetry=0.0,
                              p_flat_base=0, p_steps=0)
    s = place(sites, mask, rotation_rad=0, tilt_rad=0, tilt_azimuth_rad=0, centre_xy_A=(0, 0))
    ce = s.column_species == CE
    r = np.linalg.norm(s.column_xy[ce], axis=1)
    d = s.column_depth[ce]
    assert d[r < 3].min() > d[r > 15].max()
    assert d.max() <= StructureConfig().max_depth()
    assert d.sum() == (s.species == CE).sum()


@settings(max_examples=25, deadline=None)
@given(tilt=st.floats(0, 0.01), az=st.floats(0, 2 * np.pi), rot=st.floats(0, 2 * np.pi))
def test_rotation_and_tilt_keep_depths_and_move_columns_by_tilt_times_height(tilt, az, rot):
    sites = lattice_sites((1, 1, 0), (12, 12, 20))
    mask = np.ones(len(sites), bool)
    a = place(sites, mask, rotation_rad=rot, tilt_rad=0, tilt_azimuth_rad=0, centre_xy_A=(0, 0))
    b = place(sites, mask, rotation_rad=rot, tilt_rad=tilt, tilt_azimuth_rad=az, centre_xy_A=(0, 0))
    assert np.array_equal(a.column_depth, b.column_depth)
    # Columns stay columns: projected spread of a column's atoms ≈ tilt × its height.
    assert np.allclose(tilt_matrix(tilt, az) @ tilt_matrix(tilt, az).T, np.eye(3))
    shift = np.linalg.norm(b.column_xy - a.column_xy, axis=1)
    assert shift.max() < tilt * 45 + 0.05


def test_defects_remove_and_add_what_they_say():
    rng = np.random.default_rng(3)
    sites = lattice_sites((1, 1, 0), (25, 25, 25))
    mask, _ = particle_mask(sites, rng, diameter_A=30, asymmetry=0.1, p_flat_base=0, p_steps=0)
    n_o = (mask & (sites.species == O)).sum()
    m2, n = oxygen_vacancies(sites, mask, rng, fraction=0.1, surface_enrichment=3)
    assert n == round(0.1 * n_o) and (m2 & (sites.species == O)).sum() == n_o - n
    m3, n_ce = surface_cation_vacancies(sites, mask, rng, fraction=0.2)
    assert n_ce > 0 and (m3 & (sites.species == CE)).sum() == (mask & (sites.species == CE)).sum() - n_ce
    m4, n_ad = cerium_adatoms(sites, mask, rng, count=3)
    assert n_ad == 3 and (m4 & (sites.species == CE)).sum() == (mask & (sites.species == CE)).sum() + 3


def test_sample_structure_is_deterministic_and_recorded():
    cfg, dcfg = StructureConfig(), DefectConfig()
    a = sample_structure(cfg, dcfg, np.random.default_rng(7), 50.0)
    b = sample_structure(cfg, dcfg, np.random.default_rng(7), 50.0)
    assert np.array_equal(a.positions, b.positions)
    assert a.record == b.record
    assert a.record["n_ce"] == (a.species == CE).sum()
    assert a.column_depth.max() <= cfg.max_depth()
