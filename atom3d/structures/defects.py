"""Point defects on a CeO2 shape: O vacancies, surface Ce vacancies, Ce adatoms.

Each function takes the lattice :class:`~atom3d.structures.ceria.Sites` and the boolean
occupancy mask of a shape and returns a new mask plus the number of sites changed. Surface
sites are found by coordination: in bulk fluorite every O has 4 Ce neighbours at
a√3/4 = 2.343 Å and every Ce has 12 Ce neighbours at a/√2 = 3.826 Å.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from atom3d.structures.ceria import CE, O, Sites

_CE_O_CUTOFF_A = 2.6
_CE_CE_CUTOFF_A = 4.0


def _neighbour_counts(sites: Sites, occupied: np.ndarray, of: int, around: int,
                      cutoff_A: float) -> np.ndarray:
    """Number of occupied ``of`` sites within ``cutoff_A`` of every ``around`` site."""
    idx_around = np.flatnonzero(sites.species == around)
    idx_of = np.flatnonzero((sites.species == of) & occupied)
    counts = np.zeros(len(sites), np.int32)
    if len(idx_of) == 0 or len(idx_around) == 0:
        return counts
    tree = cKDTree(sites.xyz[idx_of])
    nb = tree.query_ball_point(sites.xyz[idx_around], cutoff_A, return_length=True)
    counts[idx_around] = nb
    return counts


def remove_dangling_oxygen(sites: Sites, occupied: np.ndarray) -> np.ndarray:
    """Drop O atoms bound to fewer than two Ce (they would not stay on a real surface)."""
    n_ce = _neighbour_counts(sites, occupied, CE, O, _CE_O_CUTOFF_A)
    return occupied & ~((sites.species == O) & (n_ce < 2))


def oxygen_vacancies(sites: Sites, occupied: np.ndarray, rng: np.random.Generator, *,
                     fraction: float, surface_enrichment: float) -> tuple[np.ndarray, int]:
    """Remove ``fraction`` of the O atoms, surface O (< 4 Ce neighbours) preferred.

    ``surface_enrichment`` is the ratio of the removal probability of a surface O atom to
    that of a bulk O atom (1 = uniform).
    """
    cand = np.flatnonzero(occupied & (sites.species == O))
    n = int(round(fraction * len(cand)))
    if n == 0:
        return occupied, 0
    n_ce = _neighbour_counts(sites, occupied, CE, O, _CE_O_CUTOFF_A)[cand]
    w = np.where(n_ce < 4, surface_enrichment, 1.0)
    chosen = rng.choice(cand, size=n, replace=False, p=w / w.sum())
    out = occupied.copy()
    out[chosen] = False
    return out, n


def surface_cation_vacancies(sites: Sites, occupied: np.ndarray, rng: np.random.Generator, *,
                             fraction: float) -> tuple[np.ndarray, int]:
    """Remove ``fraction`` of the surface Ce atoms (fewer than 12 Ce neighbours)."""
    n_cece = _neighbour_counts(sites, occupied, CE, CE, _CE_CE_CUTOFF_A)
    cand = np.flatnonzero(occupied & (sites.species == CE) & (n_cece < 12))
    n = int(round(fraction * len(cand)))
    if n == 0:
        return occupied, 0
    chosen = rng.choice(cand, size=n, replace=False)
    out = occupied.copy()
    out[chosen] = False
    return remove_dangling_oxygen(sites, out), n


def cerium_adatoms(sites: Sites, occupied: np.ndarray, rng: np.random.Generator, *,
                   count: int) -> tuple[np.ndarray, int]:
    """Add up to ``count`` Ce atoms on empty Ce lattice sites next to the surface.

    A site qualifies when it has at least 3 occupied Ce neighbours (a hollow on the
    surface); adatoms therefore sit on lattice sites and join existing or new columns.
    """
    if count <= 0:
        return occupied, 0
    n_cece = _neighbour_counts(sites, occupied, CE, CE, _CE_CE_CUTOFF_A)
    cand = np.flatnonzero(~occupied & (sites.species == CE) & (n_cece >= 3))
    n = min(count, len(cand))
    if n == 0:
        return occupied, 0
    out = occupied.copy()
    out[rng.choice(cand, size=n, replace=False)] = True
    return out, n
