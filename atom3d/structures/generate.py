"""Random CeO2 structures for training: configuration ranges and one draw.

:func:`sample_structure` draws a shape (a faceted particle, or a crystal with one surface
in profile: slab or wedge), point defects, an in-plane rotation, a tilt and a position in
the field of view, and returns the placed :class:`~atom3d.structures.columns.Structure`
with every drawn number in ``structure.record``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atom3d.config import Range
from atom3d.structures.ceria import A_CEO2, lattice_sites, repeat_along_beam
from atom3d.structures.columns import Structure, place
from atom3d.structures.defects import (
    cerium_adatoms,
    oxygen_vacancies,
    remove_dangling_oxygen,
    surface_cation_vacancies,
)
from atom3d.structures.shapes import particle_mask, profile_mask

KINDS = ("particle", "profile")
SURFACES = ("100", "110", "111")
PROFILES = ("flat", "sawtooth", "stepped")


@dataclass(frozen=True)
class StructureConfig:
    """Ranges of the structures (uniform draws unless stated).

    Parameters
    ----------
    zone_axis
        Beam direction [uvw] in crystal indices ([110] default; [100], [111] work).
    p_particle
        Probability of a faceted particle; otherwise a crystal with a surface in profile.
    particle_diameter_nm
        Particle diameter [nm].
    facet_asymmetry
        Relative random spread of facet distances.
    p_flat_base, p_step
        Probabilities of a flat base (support) and of a monatomic surface step.
    slab_thickness_layers
        Atoms per column of the profile crystal (thickness / column repeat).
    p_wedge
        Probability that the profile crystal thickens across its width (a wedge).
    wedge_extra_layers
        Extra atoms per column from one side of a wedge to the other.
    slab_width_nm
        Width of the profile crystal along its surface [nm].
    surfaces, profiles
        Surfaces ({100}, {110}, {111}) and surface profiles (flat, saw-tooth, stepped)
        to choose from.
    tilt_mrad
        Specimen tilt off the zone axis [mrad], in a uniformly random direction.
    position_jitter
        The structure's centre is drawn uniformly within ± this fraction of the field of
        view around its centre.
    """

    zone_axis: tuple[int, ...] = (1, 1, 0)
    p_particle: float = 0.6
    particle_diameter_nm: Range = (1.5, 6.0)
    facet_asymmetry: float = 0.15
    p_flat_base: float = 0.3
    p_step: float = 0.3
    slab_thickness_layers: Range = (2.0, 14.0)
    p_wedge: float = 0.4
    wedge_extra_layers: Range = (1.0, 6.0)
    slab_width_nm: Range = (3.0, 6.0)
    surfaces: tuple[str, ...] = SURFACES
    profiles: tuple[str, ...] = PROFILES
    tilt_mrad: Range = (0.0, 10.0)
    position_jitter: float = 0.2

    def __post_init__(self):
        if len(self.zone_axis) != 3 or not any(self.zone_axis):
            raise ValueError("zone_axis must be three integers, not all zero")
        for name in ("p_particle", "p_flat_base", "p_step", "p_wedge"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1]")
        if self.particle_diameter_nm[0] < 0.5 or self.particle_diameter_nm[1] > 20:
            raise ValueError("particle_diameter_nm must lie within 0.5 … 20 nm")
        if self.slab_thickness_layers[0] < 1:
            raise ValueError("slab_thickness_layers must be >= 1")
        if not 0 <= self.tilt_mrad[0] and self.tilt_mrad[1] <= 100:
            raise ValueError("tilt_mrad must lie within 0 … 100 mrad")
        if not set(self.surfaces) <= set(SURFACES) or not self.surfaces:
            raise ValueError(f"surfaces must be chosen from {list(SURFACES)}")
        if not set(self.profiles) <= set(PROFILES) or not self.profiles:
            raise ValueError(f"profiles must be chosen from {list(PROFILES)}")
        if not 0 <= self.position_jitter <= 0.5:
            raise ValueError("position_jitter must lie within 0 … 0.5")

    def max_depth(self) -> int:
        """Largest column depth this config can produce (atoms per column)."""
        c = repeat_along_beam(self.zone_axis)
        particle = int(np.ceil(self.particle_diameter_nm[1] * 10 * 1.3 / c)) + 1
        profile = int(self.slab_thickness_layers[1] + self.wedge_extra_layers[1])
        if tuple(self.zone_axis) != (1, 1, 0):  # O columns can be denser than Ce columns
            profile *= 2
            particle *= 2
        return max(particle if self.p_particle > 0 else 0, profile if self.p_particle < 1 else 0)


@dataclass(frozen=True)
class DefectConfig:
    """Ranges of point defects.

    Parameters
    ----------
    o_vacancy_fraction
        Fraction of O atoms removed.
    o_vacancy_surface_enrichment
        Ratio of the removal probability of surface O to bulk O.
    ce_surface_vacancy_fraction
        Fraction of surface Ce atoms removed (cations that left).
    ce_adatoms
        Number of Ce adatoms on surface lattice sites.
    """

    o_vacancy_fraction: Range = (0.0, 0.10)
    o_vacancy_surface_enrichment: Range = (1.0, 5.0)
    ce_surface_vacancy_fraction: Range = (0.0, 0.15)
    ce_adatoms: Range = (0.0, 4.0)

    def __post_init__(self):
        if not 0 <= self.o_vacancy_fraction[0] and self.o_vacancy_fraction[1] <= 1:
            raise ValueError("o_vacancy_fraction must lie within 0 … 1")
        if not 0 <= self.ce_surface_vacancy_fraction[0] and self.ce_surface_vacancy_fraction[1] <= 1:
            raise ValueError("ce_surface_vacancy_fraction must lie within 0 … 1")
        if self.o_vacancy_surface_enrichment[0] <= 0 or self.ce_adatoms[0] < 0:
            raise ValueError("o_vacancy_surface_enrichment must be > 0 and ce_adatoms >= 0")


#: Names of the structure kinds, indexed by the ``kind`` structure parameter.
STRUCTURE_KINDS = ("particle", "profile_crystal")

#: Names of the numbers stored per structure (NaN where not applicable).
STRUCTURE_PARAMS = (
    "kind", "diameter_A", "flat_base", "step", "surface", "profile", "thickness_layers",
    "wedge_layers", "width_A", "n_o_vacancies", "o_vacancy_fraction", "n_ce_vacancies",
    "n_ce_adatoms", "rotation_rad", "tilt_mrad", "tilt_azimuth_rad", "centre_x_A",
    "centre_y_A", "thickness_A", "n_ce", "n_o", "max_ce_depth", "max_o_depth",
)


def sample_structure(cfg: StructureConfig, defects: DefectConfig, rng: np.random.Generator,
                     fov_A: float) -> Structure:
    """Draw one structure centred near the middle of a ``fov_A`` × ``fov_A`` field [Å]."""
    zone = tuple(int(v) for v in cfg.zone_axis)
    rec: dict = {}
    if rng.random() < cfg.p_particle:
        d = rng.uniform(*cfg.particle_diameter_nm) * 10.0
        half = 0.8 * d + A_CEO2
        sites = lattice_sites(zone, (half, half, half))
        mask, shape_rec = particle_mask(sites, rng, diameter_A=d, asymmetry=cfg.facet_asymmetry,
                                        p_flat_base=cfg.p_flat_base, p_steps=cfg.p_step)
        rec.update(kind=STRUCTURE_KINDS.index("particle"), diameter_A=d, flat_base=shape_rec["flat_base"], step=shape_rec["step"])
    else:
        width = rng.uniform(*cfg.slab_width_nm) * 10.0
        layers = int(rng.integers(int(cfg.slab_thickness_layers[0]),
                                  int(cfg.slab_thickness_layers[1]) + 1))
        wedge = 0
        if rng.random() < cfg.p_wedge:
            wedge = int(rng.integers(int(cfg.wedge_extra_layers[0]),
                                     int(cfg.wedge_extra_layers[1]) + 1))
        surface = cfg.surfaces[rng.integers(len(cfg.surfaces))]
        profile = cfg.profiles[rng.integers(len(cfg.profiles))]
        c = repeat_along_beam(zone)
        half_xy = 0.75 * width + 10.0
        sites = lattice_sites(zone, (half_xy, half_xy, (layers + wedge + 1) * c))
        mask, shape_rec = profile_mask(sites, rng, thickness_layers=layers, wedge_layers=wedge,
                                       width_A=width, surface=surface, profile=profile)
        rec.update(kind=STRUCTURE_KINDS.index("profile_crystal"), surface=SURFACES.index(surface), profile=PROFILES.index(profile),
                   thickness_layers=layers, wedge_layers=wedge, width_A=width)
    mask = remove_dangling_oxygen(sites, mask)
    frac = rng.uniform(*defects.ce_surface_vacancy_fraction)
    mask, n_ce_vac = surface_cation_vacancies(sites, mask, rng, fraction=frac)
    n_ad = int(np.floor(rng.uniform(defects.ce_adatoms[0], defects.ce_adatoms[1] + 1 - 1e-9)))
    mask, n_ad = cerium_adatoms(sites, mask, rng, count=n_ad)
    o_frac = rng.uniform(*defects.o_vacancy_fraction)
    enrich = rng.uniform(*defects.o_vacancy_surface_enrichment)
    mask, n_ovac = oxygen_vacancies(sites, mask, rng, fraction=o_frac, surface_enrichment=enrich)
    rec.update(n_o_vacancies=n_ovac, o_vacancy_fraction=o_frac, n_ce_vacancies=n_ce_vac,
               n_ce_adatoms=n_ad)
    rotation = rng.uniform(0, 2 * np.pi)
    tilt = rng.uniform(*cfg.tilt_mrad) * 1e-3
    azimuth = rng.uniform(0, 2 * np.pi)
    centre = fov_A / 2 + rng.uniform(-1, 1, 2) * cfg.position_jitter * fov_A
    st = place(sites, mask, rotation_rad=rotation, tilt_rad=tilt, tilt_azimuth_rad=azimuth,
               centre_xy_A=(float(centre[0]), float(centre[1])), record=rec)
    st.record["tilt_mrad"] = tilt * 1e3
    st.record["thickness_A"] = st.thickness_A
    st.record["n_ce"] = int((st.species == 0).sum())
    st.record["n_o"] = int((st.species == 1).sum())
    for code, name in ((0, "ce"), (1, "o")):
        d = st.column_depth[st.column_species == code]
        st.record[f"max_{name}_depth"] = int(d.max()) if d.size else 0
    return st


def record_vector(record: dict) -> np.ndarray:
    """The record as a float64 vector in the order of :data:`STRUCTURE_PARAMS`."""
    return np.array([float(record.get(k, np.nan)) for k in STRUCTURE_PARAMS], np.float64)
