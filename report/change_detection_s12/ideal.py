# Session 12 research script (not part of the package): see README.md in this folder.
"""Ideal-observer detectability of every true Ce change of a demo series.

For frames t and t+1: static (no thermal smearing, an upper bound on contrast) noise-free
images of the structure of frame t and of frame t+1 moved onto frame t (the shift of
their common atoms), with the demo's optics. Their difference lies only at the columns
that changed. Per changed Ce column: d' = sqrt(D · Σ ΔI² / I) over a 1.5 Å disc, D the
dose per pixel [e/px]: the signal-to-noise ratio of the best possible test of "this
column lost an atom between these two frames", given everything but the shot noise.
"""
import math
import sys
from pathlib import Path

import numpy as np

from atom3d.simulation.campaign import configure_abtem
from atom3d.simulation.hrtem import MultisliceConfig, exit_spectra, image_from_spectra, make_grid
from atom3d.simulation.optics import Optics, OpticsConfig, transfer_cutoff
from atom3d.structures.columns import Structure

PIX, NPX = 0.2, 176


def static_image(pos, spc, grid, ms, optics, k_cut):
    st = Structure(positions=pos, species=spc, column_xy=np.zeros((0, 2), np.float32),
                   column_species=np.zeros(0, np.uint8), column_depth=np.zeros(0, np.uint8))
    return image_from_spectra(exit_spectra(st, grid, ms, optics.energy_eV, k_cut, seed=0),
                              optics, focal_nodes=5)


def main(d: Path, dose: float):
    configure_abtem()
    cap = np.load(d / "capture.npz")
    n = cap["clean"].shape[0]
    ms = MultisliceConfig(sampling_A=0.05, frozen_phonons=1, sigma_ce_A=1e-4, sigma_o_A=1e-4)
    grid = make_grid(PIX, NPX, ms)
    optics = Optics(energy_eV=300e3, defocus_A=-60.0, cs_A=-13e4, c5_A=0.0,
                    focal_spread_A=25.0, astigmatism_A=0.0, astigmatism_angle_rad=0.0,
                    aperture_mrad=math.inf, angular_spread_mrad=0.1)
    k_cut = transfer_cutoff(OpticsConfig())
    D = dose * PIX ** 2
    rr, cc = np.mgrid[:NPX, :NPX]
    rows = []
    for t in range(n - 1):
        pa, sa = cap[f"pos{t}"], cap[f"spc{t}"]
        pb, sb = cap[f"pos{t + 1}"], cap[f"spc{t + 1}"]
        # common atoms: every atom of b is in a (losses only); match by lattice position
        # after removing the shift: nearest neighbours
        from scipy.spatial import cKDTree
        shift0 = np.median(pb[:, :2], 0) - np.median(pa[:, :2], 0)
        for _ in range(4):  # match in 3D (atoms of one column share x, y)
            q = pb.copy()
            q[:, :2] -= shift0
            dist, j = cKDTree(pa).query(q)
            shift0 = np.mean(pb[:, :2] - pa[j, :2], 0)
        assert len(np.unique(j)) == len(j) and dist.max() < 0.05, (dist.max(), len(np.unique(j)), len(j))
        pb2 = pb.copy()
        pb2[:, :2] -= shift0
        ia = static_image(pa, sa, grid, ms, optics, k_cut)
        ib = static_image(pb2, sb, grid, ms, optics, k_cut)
        lost = np.setdiff1d(np.arange(len(pa)), j)
        # changed Ce columns: group lost Ce atoms by projected position
        lost_ce = lost[sa[lost] == 0]
        xy = pa[lost_ce, :2]
        groups = []
        for p in xy:
            for g in groups:
                if np.hypot(*(g[0] - p)) < 0.8:
                    g[1] += 1
                    break
            else:
                groups.append([p.copy(), 1])
        dI = ia - ib
        for p, k in groups:
            m = (rr * PIX - p[1]) ** 2 + (cc * PIX - p[0]) ** 2 < 1.5 ** 2
            dprime = math.sqrt(D * float(np.sum(dI[m] ** 2 / np.maximum(ia[m], 1e-6))))
            rows.append({"t": t, "x": float(p[0]), "y": float(p[1]), "lost": k,
                         "dprime": dprime, "max_abs_dI": float(np.abs(dI[m]).max())})
        print(t, "shift", np.round(shift0, 3), "lost", len(lost), "Ce", len(lost_ce),
              [(round(r["dprime"], 2), r["lost"]) for r in rows if r["t"] == t],
              "corr static/clean", round(float(np.corrcoef(ia.ravel(), cap["clean"][t].ravel())[0, 1]), 3),
              flush=True)
    np.save(d / "ideal.npy", rows, allow_pickle=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), float(sys.argv[2]))
