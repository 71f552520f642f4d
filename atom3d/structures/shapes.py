"""Shapes cut from the CeO2 lattice: faceted nanoparticles, slabs and wedges in profile.

All functions take lattice :class:`~atom3d.structures.ceria.Sites` in the beam frame
(see :mod:`atom3d.structures.ceria` for conventions) and return a boolean mask of the
sites that belong to the shape. Random choices come from the ``rng`` passed in; every
drawn number is returned in a ``record`` dict so that datasets can store it.
"""

from __future__ import annotations

import numpy as np

from atom3d.structures.ceria import Sites, family_normals, repeat_along_beam, zone_axis_frame


def particle_mask(
    sites: Sites, rng: np.random.Generator, *, diameter_A: float, asymmetry: float,
    p_flat_base: float, p_steps: float,
) -> tuple[np.ndarray, dict]:
    """A faceted particle: the intersection of half-spaces bounded by {111}, {100}, {110}.

    Every facet is at its own random distance from the centre (an asymmetric Wulff-like
    shape). {111} facets dominate (as for CeO2), {100} and {110} truncate corners and edges
    by random amounts.

    Parameters
    ----------
    diameter_A
        Nominal particle diameter [Å] (twice the mean {111} facet distance × √3/... see
        code: the {111} distance is ``diameter_A / 2 × 0.85``).
    asymmetry
        Relative spread of the facet distances (0 = symmetric shape).
    p_flat_base
        Probability of a flat base (as for a particle sitting on a support; the base is a
        cut with its normal in the image plane, so it is seen in profile).
    p_steps
        Probability of a monatomic surface step on one facet.
    """
    rot = zone_axis_frame(sites.meta["zone_axis"])
    xyz = sites.xyz
    keep = np.ones(len(sites), bool)
    d111 = 0.5 * diameter_A * 0.85
    ratios = {"111": (1.0, 1.0), "100": (1.0, 1.45), "110": (1.05, 1.35)}
    record: dict = {"diameter_A": diameter_A}
    for fam, (lo, hi) in ratios.items():
        normals = family_normals(fam) @ rot.T  # beam frame
        base = d111 * (rng.uniform(lo, hi) if fam != "111" else 1.0)
        dist = base * (1 + asymmetry * rng.uniform(-1, 1, len(normals)))
        keep &= np.all(xyz @ normals.T <= dist[None, :], axis=1)
        record[f"d{fam}_mean_A"] = float(dist.mean())
    record["flat_base"] = bool(rng.random() < p_flat_base)
    if record["flat_base"]:
        angle = rng.uniform(0, 2 * np.pi)
        n = np.array([np.cos(angle), np.sin(angle), 0.0])
        cut = d111 * rng.uniform(0.5, 0.8)
        keep &= xyz @ n <= cut
        record["base_angle_rad"] = float(angle)
    record["step"] = bool(rng.random() < p_steps)
    if record["step"]:
        keep &= ~_step_mask(xyz, keep, rng, rot)
    return keep, record


def _step_mask(xyz: np.ndarray, keep: np.ndarray, rng: np.random.Generator,
               rot: np.ndarray) -> np.ndarray:
    """Sites removed to make a monatomic step on a random {111} facet."""
    normals = family_normals("111") @ rot.T
    n = normals[rng.integers(len(normals))]
    proj = xyz @ n
    top = proj[keep].max() if keep.any() else 0.0
    layer = (proj > top - 3.2) & keep  # the outermost O-Ce-O trilayer (d111 = 3.12 Å)
    t = np.cross(n, rng.normal(size=3))
    t /= np.linalg.norm(t)
    s = xyz @ t
    cut = np.quantile(s[layer], rng.uniform(0.3, 0.7)) if layer.any() else 0.0
    return layer & (s > cut)


def profile_mask(
    sites: Sites, rng: np.random.Generator, *, thickness_layers: int, wedge_layers: int,
    width_A: float, surface: str, profile: str,
) -> tuple[np.ndarray, dict]:
    """A crystal seen with one surface in profile: flat, saw-tooth or stepped.

    The crystal occupies ``y <= s(x)`` in a surface frame whose normal is a {100}, {110}
    or {111} direction lying in the image plane, is ``width_A`` wide along the surface and
    about 0.6 × width deep, and has ``thickness_layers`` column repeats along the beam,
    increasing linearly across the width by up to ``wedge_layers`` (a wedge).
    """
    rot = zone_axis_frame(sites.meta["zone_axis"])
    normals = family_normals(surface) @ rot.T
    in_plane = normals[np.abs(normals[:, 2]) < 1e-6]
    if not len(in_plane):
        raise ValueError(f"no {{{surface}}} plane is seen edge-on along this zone axis")
    n = in_plane[rng.integers(len(in_plane))]
    t = np.array([-n[1], n[0], 0.0])
    u, v = sites.xyz @ t, sites.xyz @ n  # along the surface, along its normal
    depth_A = 0.6 * width_A
    amp = rng.uniform(3.0, 8.0)
    period = rng.uniform(8.0, 20.0)
    if profile == "flat":
        s = np.zeros_like(u)
    elif profile == "sawtooth":
        s = amp * (2 * np.abs((u / period) % 1.0 - 0.5) - 0.5)
    elif profile == "stepped":
        s = amp * np.floor(u / period) / 2
        s -= s.mean() if len(s) else 0.0
    else:
        raise ValueError(f"unknown profile {profile!r}")
    c = repeat_along_beam(sites.meta["zone_axis"], sites.meta.get("a_A", 5.411))
    frac = np.clip((u + width_A / 2) / width_A, 0, 1)
    layers = thickness_layers + np.floor(frac * (wedge_layers + 1) - 1e-9).clip(0, wedge_layers)
    z = sites.xyz[:, 2]
    keep = (np.abs(u) <= width_A / 2) & (v <= s + 0.013) & (v >= -depth_A)  # 0.013: off-plane
    # Every column (Ce at z = k·c or (k + ½)·c, O at (k ± ¼)·c) gets exactly ``layers``
    # sites from a window of length layers·c whose ends avoid all site planes.
    z0 = -0.125 * c
    keep &= (z > z0) & (z < z0 + layers * c)
    record = {"surface": surface, "profile": profile, "thickness_layers": int(thickness_layers),
              "wedge_layers": int(wedge_layers), "width_A": float(width_A),
              "profile_amplitude_A": float(amp), "profile_period_A": float(period),
              "surface_normal_angle_rad": float(np.arctan2(n[1], n[0]))}
    return keep, record
