"""Placed structures and their ground truth: projected columns with positions and depths.

A column's *depth* is the number of atoms of one species in it. Its position is the mean
projected (x, y) of those atoms *after* rotation and tilt, in the field-of-view frame:
x and y in Å, with pixel (r, c) of an image of pixel size p centred at (x, y) = (c·p, r·p)
(the convention of the results file, see DESIGN.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from atom3d.structures.ceria import SPECIES, Sites


@dataclass
class Structure:
    """Atoms ready for simulation plus their column ground truth.

    Attributes
    ----------
    positions : (N, 3) float64
        Atom positions [Å]; x, y in the field-of-view frame, z along the beam with the
        entrance surface at z = 0.
    species : (N,) uint8
        0 = Ce, 1 = O.
    column_xy : (C, 2) float32
        Column positions [Å] (mean projected position of the column's atoms).
    column_species : (C,) uint8
    column_depth : (C,) uint8
        Atoms per column (≥ 1; empty columns are not listed).
    record : dict
        Every number drawn to make the structure.
    """

    positions: np.ndarray
    species: np.ndarray
    column_xy: np.ndarray
    column_species: np.ndarray
    column_depth: np.ndarray
    record: dict = field(default_factory=dict)

    @property
    def thickness_A(self) -> float:
        """Extent of the atoms along the beam [Å]."""
        return float(np.ptp(self.positions[:, 2])) if len(self.positions) else 0.0

    def symbols(self) -> list[str]:
        return [SPECIES[s] for s in self.species]


def rotation_z(angle_rad: float) -> np.ndarray:
    """Rotation about the beam axis (counter-clockwise in the x-y image plane)."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def tilt_matrix(tilt_rad: float, azimuth_rad: float) -> np.ndarray:
    """Rotation by ``tilt_rad`` about the in-plane axis at ``azimuth_rad`` from x (Rodrigues)."""
    k = np.array([np.cos(azimuth_rad), np.sin(azimuth_rad), 0.0])
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(tilt_rad) * kx + (1 - np.cos(tilt_rad)) * kx @ kx


def place(sites: Sites, occupied: np.ndarray, *, rotation_rad: float, tilt_rad: float,
          tilt_azimuth_rad: float, centre_xy_A: tuple[float, float],
          record: dict | None = None) -> Structure:
    """Rotate in plane, tilt, and move the occupied sites; count columns.

    The structure's projected bounding-box centre is moved to ``centre_xy_A``.
    """
    sub = sites.subset(occupied)
    m = tilt_matrix(tilt_rad, tilt_azimuth_rad) @ rotation_z(rotation_rad)
    pos = sub.xyz @ m.T
    if len(pos):
        lo, hi = pos[:, :2].min(0), pos[:, :2].max(0)
        pos[:, :2] += np.asarray(centre_xy_A) - (lo + hi) / 2
        pos[:, 2] -= pos[:, 2].min()
    cols, inverse, depth = np.unique(sub.column, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    xy = np.zeros((len(cols), 2))
    np.add.at(xy, inverse, pos[:, :2])
    xy /= np.maximum(depth, 1)[:, None]
    if depth.size and depth.max() > 255:
        raise ValueError("a column holds more than 255 atoms")
    rec = dict(record or {})
    rec.update(rotation_rad=float(rotation_rad), tilt_rad=float(tilt_rad),
               tilt_azimuth_rad=float(tilt_azimuth_rad),
               centre_x_A=float(centre_xy_A[0]), centre_y_A=float(centre_xy_A[1]))
    return Structure(pos, sub.species.copy(), xy.astype(np.float32),
                     sites.column_species[cols].astype(np.uint8), depth.astype(np.uint8), rec)


def to_ase(structure: Structure, cell_A: tuple[float, float, float],
           origin_A: tuple[float, float] = (0.0, 0.0)):
    """``ase.Atoms`` of the structure in a cell whose lower x-y corner is at ``origin_A``."""
    from ase import Atoms

    pos = structure.positions.copy()
    pos[:, 0] -= origin_A[0]
    pos[:, 1] -= origin_A[1]
    return Atoms(symbols=structure.symbols(), positions=pos, cell=cell_A, pbc=True)
