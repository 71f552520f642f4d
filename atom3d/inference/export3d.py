"""3D atom models implied by the column depths, as extended XYZ files (one per frame).

A column of depth ``k`` at ``(x, y)`` becomes ``k`` atoms at ``(x, y, z_j)``, spaced along
the beam (z) by the [110] repeat ``c = a/√2 = 3.826 Å`` (a = 5.411 Å).

Placement along z
    ``align='centre'`` (default): every column is centred on z = 0, i.e. the particle is
    assumed symmetric about its mid-plane (a single projection cannot tell where along
    the beam a column's atoms sit). ``align='bottom'``: the lowest atom of every column is
    at z = 0 (a particle on a support normal to the beam; a flat base).

Sublattice interleaving (``interleave=True``, default)
    In [110] fluorite, Ce columns that are nearest neighbours in projection (3.31 Å apart)
    belong to the two fcc sublattices whose atoms are offset by c/2 = 1.913 Å along z; an
    O column is offset by c/2 from its nearest Ce column (1.35 Å away). The sublattice of
    each Ce column is found by two-colouring the graph of Ce–Ce links of 2.9–3.6 Å
    (breadth first; a link that contradicts the colouring, from a misplaced column, is
    ignored), and O columns take the opposite phase of their nearest Ce column (within
    1.8 Å; phase 0 otherwise). Phase-1 columns are then shifted by +c/4 and phase-0 columns
    by −c/4, so the model stays centred on z = 0 while neighbouring columns interleave as
    in the crystal. With ``interleave=False`` all columns are strictly centred (or
    bottom-aligned) and the half-repeat offset is ignored.

x, y are drift-corrected (``x − drift_x``, ``y − drift_y`` from ``/frames``) so that a movie
of the files stands still; the comment line says so. Files are plain text written without
ase; ``ase.io.read(path, format='extxyz')`` reads them (arrays ``track``, ``depth``,
``confidence`` per atom, ``info['frame']``).
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from atom3d.io.results import open_results

__all__ = ["C_110_A", "column_atoms", "export_xyz", "sublattice_phase", "write_extxyz"]

#: CeO2 lattice constant [Å] and the [110] repeat along the beam, a/√2 [Å].
A_CEO2_A = 5.411
C_110_A = A_CEO2_A / math.sqrt(2)
#: Range of projected nearest-neighbour Ce–Ce links (3.31 Å) used for the 2-colouring [Å].
CE_LINK_A = (2.9, 3.6)
#: Largest distance of an O column to "its" Ce column (1.35 Å in the crystal) [Å].
O_CE_LINK_A = 1.8


def sublattice_phase(ce_xy: np.ndarray, o_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Phase (0 or 1: offset 0 or c/2 along z) of every Ce and O column.

    Parameters
    ----------
    ce_xy, o_xy : numpy.ndarray
        ``(N, 2)`` column positions [Å].

    Returns
    -------
    ce_phase, o_phase : numpy.ndarray
        int8 arrays of 0/1 (see the module docstring).
    """
    ce_xy = np.asarray(ce_xy, np.float64).reshape(-1, 2)
    o_xy = np.asarray(o_xy, np.float64).reshape(-1, 2)
    ce_phase = np.full(len(ce_xy), -1, np.int8)
    if len(ce_xy):
        tree = cKDTree(ce_xy)
        pairs = tree.query_pairs(CE_LINK_A[1], output_type="ndarray")
        if len(pairs):
            d = np.hypot(*(ce_xy[pairs[:, 0]] - ce_xy[pairs[:, 1]]).T)
            pairs = pairs[d >= CE_LINK_A[0]]
        neighbours: list[list[int]] = [[] for _ in range(len(ce_xy))]
        for a, b in pairs:
            neighbours[a].append(int(b))
            neighbours[b].append(int(a))
        for seed in range(len(ce_xy)):
            if ce_phase[seed] >= 0:
                continue
            ce_phase[seed] = 0
            queue = deque([seed])
            while queue:
                a = queue.popleft()
                for b in neighbours[a]:
                    if ce_phase[b] < 0:
                        ce_phase[b] = 1 - ce_phase[a]
                        queue.append(b)
    o_phase = np.zeros(len(o_xy), np.int8)
    if len(o_xy) and len(ce_xy):
        dist, nearest = cKDTree(ce_xy).query(o_xy)
        close = dist <= O_CE_LINK_A
        o_phase[close] = 1 - ce_phase[nearest[close]]
    return ce_phase, o_phase


def column_atoms(x_A: np.ndarray, y_A: np.ndarray, depth: np.ndarray, phase: np.ndarray | None,
                 *, align: str = "centre", repeat_A: float = C_110_A) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """Atom positions of columns of one species.

    Parameters
    ----------
    x_A, y_A : array_like
        Column positions [Å].
    depth : array_like
        Atoms per column.
    phase : array_like or None
        Sublattice phase per column (0/1, see :func:`sublattice_phase`); None = no
        interleaving.
    align : {'centre', 'bottom'}
        Column mid-points at z = 0 (± c/4 with interleaving), or lowest atom at z = 0
        (+ c/2 for phase 1 with interleaving).
    repeat_A : float
        Spacing of the atoms along z [Å].

    Returns
    -------
    positions : numpy.ndarray
        float64 ``(M, 3)`` [Å], M = sum of depths.
    column : numpy.ndarray
        int64 ``(M,)``: index of the column each atom belongs to.
    """
    if align not in ("centre", "bottom"):
        raise ValueError(f"align must be 'centre' or 'bottom', got {align!r}")
    depth = np.asarray(depth, np.int64).reshape(-1)
    column = np.repeat(np.arange(depth.size), depth)
    start = np.cumsum(depth) - depth
    j = np.arange(column.size) - start[column]  # atom index within its column
    if align == "centre":
        z = (j - (depth[column] - 1) / 2.0) * repeat_A
        if phase is not None:
            z += (np.asarray(phase, np.float64)[column] - 0.5) * repeat_A / 2
    else:
        z = j * repeat_A
        if phase is not None:
            z += np.asarray(phase, np.float64)[column] * repeat_A / 2
    x = np.asarray(x_A, np.float64).reshape(-1)[column]
    y = np.asarray(y_A, np.float64).reshape(-1)[column]
    return np.column_stack([x, y, z]), column


def write_extxyz(path: str | os.PathLike, species: Iterable[str], positions: np.ndarray, *,
                 track: np.ndarray, depth: np.ndarray, confidence: np.ndarray,
                 info: dict[str, object]) -> Path:
    """Write one extended-XYZ frame (plain text, readable by ``ase.io.read``).

    Parameters
    ----------
    path : path
        File to write (replaced atomically).
    species : iterable of str
        Chemical symbol per atom.
    positions : numpy.ndarray
        ``(M, 3)`` positions [Å].
    track, depth, confidence : numpy.ndarray
        Per atom: track id of its column, the column's depth, its confidence.
    info : dict
        Extra ``key=value`` pairs for the comment line (numbers, booleans or simple
        strings).
    """
    path = Path(path)
    species = list(species)
    positions = np.asarray(positions, np.float64).reshape(-1, 3)
    pairs = ["Properties=species:S:1:pos:R:3:track:I:1:depth:I:1:confidence:R:1",
             'pbc="F F F"']
    for key, value in info.items():
        if isinstance(value, bool | np.bool_):
            text = "T" if value else "F"
        elif isinstance(value, float | np.floating):
            text = "NaN" if not math.isfinite(float(value)) else f"{float(value):.6g}"
        elif isinstance(value, int | np.integer):
            text = str(int(value))
        else:
            text = '"' + str(value).replace('"', "'") + '"'
        pairs.append(f"{key}={text}")
    lines = [str(len(species)), " ".join(pairs)]
    for s, (x, y, z), t, d, c in zip(species, positions, track, depth, confidence, strict=True):
        conf = float(c) if math.isfinite(float(c)) else 0.0
        lines.append(f"{s:<2s} {x:12.5f} {y:12.5f} {z:12.5f} {int(t):7d} {int(d):4d} {conf:8.5f}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="ascii")
    os.replace(tmp, path)
    return path


def export_xyz(results: str | os.PathLike, out_dir: str | os.PathLike, *,
               frames: Iterable[int] | None = None, align: str = "centre",
               interleave: bool = True, drift_corrected: bool = True) -> list[Path]:
    """Write ``frame_NNNNN.xyz`` per frame of a results file (see the module docstring).

    Parameters
    ----------
    results : path
        A complete results file.
    out_dir : path
        Created if missing.
    frames : iterable of int, optional
        Frames to export (default all; invalid frames give files with 0 atoms).
    align, interleave, drift_corrected
        See the module docstring and :func:`column_atoms`.

    Returns
    -------
    list of Path
        The files written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open_results(results) as r:
        cols, table = r["columns"], r["frames"]
        attrs = r["attrs"]
    n_frames = len(table["frame"])
    wanted = range(n_frames) if frames is None else sorted(set(int(f) for f in frames))
    bounds = np.searchsorted(cols["frame"], np.arange(n_frames + 1))
    written = []
    for t in wanted:
        if not 0 <= t < n_frames:
            raise ValueError(f"frame {t} outside [0, {n_frames})")
        rows = np.arange(bounds[t], bounds[t + 1])
        dx, dy = float(table["drift_x"][t]), float(table["drift_y"][t])
        shift = drift_corrected and math.isfinite(dx) and math.isfinite(dy)
        x = cols["x"][rows].astype(np.float64) - (dx if shift else 0.0)
        y = cols["y"][rows].astype(np.float64) - (dy if shift else 0.0)
        species = cols["species"][rows]
        ce, o = species == "Ce", species == "O"
        phase = np.zeros(len(rows), np.int8)
        if interleave:
            ce_phase, o_phase = sublattice_phase(np.column_stack([x[ce], y[ce]]),
                                                 np.column_stack([x[o], y[o]]))
            phase[ce], phase[o] = ce_phase, o_phase
        depth = cols["depth"][rows].astype(np.int64)
        positions, column = column_atoms(x, y, depth, phase if interleave else None,
                                         align=align)
        info = {"frame": t, "valid": bool(table["valid"][t]),
                "source_frame": int(table["source_frame"][t]) if "source_frame" in table else t,
                "source": attrs.get("source", ""),
                "model": attrs.get("model", ""), "align": align, "interleaved": interleave,
                "drift_corrected": bool(shift), "repeat_A": C_110_A}
        written.append(write_extxyz(
            out_dir / f"frame_{t:05d}.xyz", species[column], positions,
            track=cols["track"][rows][column], depth=depth[column],
            confidence=cols["confidence"][rows][column], info=info))
    return written
