"""CeO2 (fluorite) lattice sites in the beam frame, and the shapes cut from them.

Conventions (stated once, used by every structure module):

* The *beam frame* has z along the zone axis (the beam direction, pointing from the
  entrance to the exit surface of the specimen), x and y in the image plane.
  For the [110] zone axis x is along [001] and y along [1-10].
* Lengths are in ångström [Å]; angles in radians unless a name says otherwise.
* A *lattice site* is a position of the perfect crystal. Shapes and defects select and
  modify sets of sites; the perfect-crystal projection defines which *column* a site
  belongs to (a line of sites along the zone axis), so a column keeps its identity after
  atoms are removed, and after the structure is rotated or tilted.

Only NumPy (and SciPy) are used here; ``ase.Atoms`` are produced at the boundary to the
simulation by :func:`atom3d.structures.columns.to_ase`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: CeO2 lattice constant [Å] (fluorite, Fm-3m).
A_CEO2 = 5.411

#: Species codes used in every array of atom3d: 0 = Ce, 1 = O.
CE, O = 0, 1
SPECIES = ("Ce", "O")

# Fractional coordinates of the conventional cubic cell.
_CE_FRAC = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
_O_FRAC = np.array(
    [[x, y, z] for x in (0.25, 0.75) for y in (0.25, 0.75) for z in (0.25, 0.75)]
)


def zone_axis_frame(zone_axis: tuple[int, int, int]) -> np.ndarray:
    """Rotation matrix whose rows are the beam-frame axes (x, y, z) in crystal coordinates.

    Parameters
    ----------
    zone_axis
        Miller indices [uvw] of the beam direction.

    Returns
    -------
    (3, 3) array ``R``; ``R @ r_crystal`` gives beam-frame coordinates.
    """
    z = np.asarray(zone_axis, float)
    if not np.any(z):
        raise ValueError("zone axis must not be [000]")
    z /= np.linalg.norm(z)
    # x: the <001>-like or <1-10>-like direction perpendicular to z with the smallest indices.
    candidates = [(0, 0, 1), (1, -1, 0), (0, 1, -1), (1, 0, -1), (0, 1, 0), (1, 0, 0), (1, 1, -2)]
    for c in candidates:
        x = np.asarray(c, float)
        if abs(x @ z) < 1e-9:
            break
    else:  # pragma: no cover - every low-index zone has one of the above
        x = np.cross(z, [1.0, 0, 0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z])


@dataclass
class Sites:
    """A set of lattice sites in the beam frame.

    Attributes
    ----------
    xyz : (N, 3) float64
        Positions [Å].
    species : (N,) uint8
        :data:`CE` or :data:`O`.
    column : (N,) int64
        Column index: sites with the same species and the same perfect-crystal projected
        position share it.
    column_xy : (C, 2) float64
        Perfect-crystal projected position of each column [Å].
    column_species : (C,) uint8
    """

    xyz: np.ndarray
    species: np.ndarray
    column: np.ndarray
    column_xy: np.ndarray
    column_species: np.ndarray
    meta: dict = field(default_factory=dict)

    def subset(self, mask: np.ndarray) -> Sites:
        """Sites where ``mask`` is true (columns keep their indices)."""
        return Sites(self.xyz[mask], self.species[mask], self.column[mask], self.column_xy,
                     self.column_species, dict(self.meta))

    def __len__(self) -> int:
        return len(self.species)


def lattice_sites(
    zone_axis: tuple[int, int, int], half_extent_A: tuple[float, float, float],
    a_A: float = A_CEO2,
) -> Sites:
    """All CeO2 lattice sites inside a beam-frame box centred on a Ce site.

    Parameters
    ----------
    zone_axis
        Beam direction [uvw].
    half_extent_A
        Half widths of the box along beam-frame x, y, z [Å].
    a_A
        Lattice constant [Å].
    """
    rot = zone_axis_frame(zone_axis)
    half = np.asarray(half_extent_A, float)
    # Integer cells needed to cover the box (the box's bounding sphere, generously).
    n = int(np.ceil(np.linalg.norm(half) / a_A)) + 1
    g = np.arange(-n, n + 1)
    cells = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3).astype(float)
    xyz_all, species_all = [], []
    for frac, code in ((_CE_FRAC, CE), (_O_FRAC, O)):
        pts = (cells[:, None, :] + frac[None]).reshape(-1, 3) * a_A
        # Centre on the (0, 0, 0) Ce site but shift by a tiny amount along z so that
        # box faces never pass exactly through a plane of sites.
        b = pts @ rot.T
        inside = np.all(np.abs(b - [0, 0, 1e-3]) <= half, axis=1)
        xyz_all.append(b[inside])
        species_all.append(np.full(inside.sum(), code, np.uint8))
    xyz = np.concatenate(xyz_all)
    species = np.concatenate(species_all)
    # Columns: identical species and identical projected position (to 0.01 Å; the offset
    # keeps rounding boundaries away from lattice positions, which are multiples of a/8).
    key = np.round(xyz[:, :2] * 100 + 0.0137).astype(np.int64)
    full = np.column_stack([species.astype(np.int64), key])
    uniq, column = np.unique(full, axis=0, return_inverse=True)
    column_xy = (uniq[:, 1:] - 0.0137) / 100.0
    return Sites(xyz, species, column.ravel(), column_xy, uniq[:, 0].astype(np.uint8),
                 {"zone_axis": tuple(int(v) for v in zone_axis), "a_A": a_A})


def repeat_along_beam(zone_axis: tuple[int, int, int], a_A: float = A_CEO2) -> float:
    """Distance between consecutive Ce sites in one column [Å] (a/√2 for [110])."""
    u = np.asarray(zone_axis, float)
    # Smallest fcc lattice vector along [uvw]: fcc translations are (h,k,l)/2 with h+k+l even.
    u = u / np.gcd.reduce(np.abs(u[u != 0]).astype(int))
    vec = u / 2 if int(np.sum(u)) % 2 == 0 else u
    return float(np.linalg.norm(vec) * a_A)


def family_normals(family: str) -> np.ndarray:
    """Unit normals of the {100}, {110} or {111} planes, in crystal coordinates."""
    if family == "100":
        v = np.vstack([np.eye(3), -np.eye(3)])
    elif family == "111":
        v = np.array([[sx, sy, sz] for sx in (1, -1) for sy in (1, -1) for sz in (1, -1)], float)
    elif family == "110":
        base = [(1, 1, 0), (1, -1, 0), (1, 0, 1), (1, 0, -1), (0, 1, 1), (0, 1, -1)]
        v = np.array([s * np.array(b) for b in base for s in (1, -1)], float)
    else:
        raise ValueError(f"unknown plane family {family!r}")
    return v / np.linalg.norm(v, axis=1, keepdims=True)
