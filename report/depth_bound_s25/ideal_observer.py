"""How well could *any* method tell a column of k atoms from k ± 1 in one image?

The ideal observer knows everything but the depth of one column: the structure, every
other column, the optics, the pixel size and the dose. Between two hypotheses that
differ by one atom in one column, its discrimination under Poisson noise is

    d'^2 = sum over pixels of (lambda_1 - lambda_0)^2 / lambda_0,
    lambda = I * dose * p^2   (I: noise-free image, vacuum = 1; p: pixel size [Å]),

so d' grows as sqrt(dose). Telling k from both k - 1 and k + 1 it errs with probability
about Phi(-d'_-/2) + Phi(-d'_+/2), an upper bound on the exact-depth accuracy of any
method that has less to go on (ours does not know the optics, nor the other columns).

Particles of the test store are re-drawn from their seeds (the same structure as the
store, checked on the column table); for chosen Ce columns an atom is removed at the
exit surface (k - 1) and one added one lattice repeat beyond it (k + 1). The images of
the three structures are made for each of the store's optics draws of that particle, with
the same frozen-phonon displacements for every atom common to them (own displacements,
per atom: abTEM's would reshuffle when an atom is removed), so the difference holds no
phonon noise. Output: JSON lines per column and image, then a summary.

    python report/depth_bound_s25/ideal_observer.py data/test_particles.zarr OUT.jsonl \
        --structures 0 1 2 3 4 --columns 5 --phonons 2
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
from scipy.stats import norm

from atom3d.data.store import PARAM_NAMES, open_store, structure_columns
from atom3d.simulation.campaign import configure_abtem, load_campaign_config
from atom3d.simulation.hrtem import (
    ExitSpectra,
    _good_size,
    band_limited_spectra,
    image_from_spectra,
    make_grid,
)
from atom3d.simulation.optics import Optics, transfer_cutoff
from atom3d.structures.columns import Structure
from atom3d.structures.generate import sample_structure

DOSES = (100, 300, 1000, 3000, 10000)


def box_of(st: Structure, grid, ms) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The potential box of ``exit_waves`` for ``st``: lateral origin and size [samples],
    entrance z and thickness [Å]. Fixed for the three structures of a column, so that
    their exit planes coincide (``exit_waves`` fits the box to the atoms, and one atom
    more on top would move the exit plane of the whole particle, a defocus)."""
    s = grid.wave_sampling_A
    pos = st.positions.copy()
    pos[:, :2] -= grid.origin_A
    lo = np.floor((pos[:, :2].min(0) - ms.object_margin_A - 2) / s).astype(int)
    hi = np.ceil((pos[:, :2].max(0) + ms.object_margin_A + 2) / s).astype(int)
    lo, hi = np.maximum(lo, 0), np.minimum(hi, grid.n_wave)
    size = np.array([_good_size(v) for v in hi - lo])
    lo = np.maximum(np.minimum(lo, grid.n_wave - size), 0)
    size = np.minimum(size, grid.n_wave)
    return lo, size, float(pos[:, 2].min()) - 1.0, float(np.ptp(pos[:, 2])) + 2.0 + 4.0


def exit_wave_in_box(st: Structure, grid, ms, energy: float, box) -> np.ndarray:
    """One static exit wave of ``st`` on the full wave grid, potential in ``box``."""
    import abtem

    from atom3d.structures.columns import to_ase

    lo, size, z0, thick = box
    s = grid.wave_sampling_A
    pos = st.positions.copy()
    pos[:, :2] -= grid.origin_A
    pos[:, 2] -= z0
    sub = dataclasses.replace(st, positions=pos)
    atoms = to_ase(sub, (size[0] * s, size[1] * s, thick), origin_A=tuple(lo * s))
    potential = abtem.Potential(atoms, gpts=(int(size[0]), int(size[1])),
                                slice_thickness=ms.slice_thickness_A,
                                parametrization=ms.parametrization, projection="infinite")
    wave = abtem.PlaneWave(energy=energy).multislice(potential)
    arr = np.asarray(wave.compute(scheduler="synchronous", progress_bar=False).array)
    out = np.ones((grid.n_wave, grid.n_wave), np.complex64)
    out[lo[1]:lo[1] + size[1], lo[0]:lo[0] + size[0]] = arr.reshape(arr.shape[-2:]).T
    return out


def spectra(st: Structure, grid, ms, energy, k_cut, disp: np.ndarray, box) -> ExitSpectra:
    """Exit spectra averaged over the given displacements (configs, atoms, 3)."""
    waves = []
    for d in disp:
        moved = dataclasses.replace(st, positions=st.positions + d)
        waves.append(exit_wave_in_box(moved, grid, ms, energy, box))
    return band_limited_spectra(np.stack(waves), grid, k_cut, energy)


#: Optics the observer may not know: finite-difference steps (Å, mrad), and the image's
#: gain and offset (the detector's, unknown to us too).
NUISANCE_STEPS = {"defocus_A": 2.0, "cs_A": 1e4, "c5_A": 1e6, "focal_spread_A": 2.0,
                  "astig_x_A": 2.0, "astig_y_A": 2.0, "angular_spread_mrad": 0.02}


def perturbed(o: Optics, name: str, h: float) -> Optics:
    if name.startswith("astig_"):
        ax = o.astigmatism_A * np.cos(2 * o.astigmatism_angle_rad)
        ay = o.astigmatism_A * np.sin(2 * o.astigmatism_angle_rad)
        ax, ay = (ax + h, ay) if name == "astig_x_A" else (ax, ay + h)
        return dataclasses.replace(o, astigmatism_A=float(np.hypot(ax, ay)),
                                   astigmatism_angle_rad=float(np.arctan2(ay, ax) / 2))
    value = getattr(o, name) + h
    if name in ("focal_spread_A", "angular_spread_mrad"):
        value = max(value, 0.0)
    return dataclasses.replace(o, **{name: value})


def nuisance_basis(spec: ExitSpectra, o: Optics, image: np.ndarray, nodes: int) -> np.ndarray:
    """(pixels, m) derivatives of the image with respect to the unknown optics, gain, offset."""
    cols = [image.ravel(), np.ones(image.size)]
    for name, h in NUISANCE_STEPS.items():
        up = image_from_spectra(spec, perturbed(o, name, h), focal_nodes=nodes)
        down = image_from_spectra(spec, perturbed(o, name, -h), focal_nodes=nodes)
        cols.append(((up - down) / (2 * h)).ravel())
    return np.column_stack(cols).astype(np.float64)


def fisher(a: np.ndarray, image: np.ndarray, basis: np.ndarray, pixel: float) -> tuple[float, float]:
    """d'^2 per unit dose: known optics, and with the nuisance directions projected out."""
    w = pixel**2 / np.maximum(image.ravel(), 1e-6)
    a = a.ravel().astype(np.float64)
    known = float(a @ (w * a))
    bw = basis * w[:, None]
    g = basis.T @ bw
    v = bw.T @ a
    coef = np.linalg.lstsq(g, v, rcond=None)[0]
    return known, max(known - float(v @ coef), 0.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("out")
    ap.add_argument("--structures", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--columns", type=int, default=5)
    ap.add_argument("--phonons", type=int, default=2)
    a = ap.parse_args()
    configure_abtem()
    root = open_store(a.store)
    cfg = load_campaign_config(root.attrs["config"])
    seed, per = int(root.attrs["seed"]), int(root.attrs["images_per_structure"])
    ms, det = cfg.multislice, cfg.detector
    energy = cfg.optics.energy_keV * 1e3
    k_cut = transfer_cutoff(cfg.optics)
    sig = np.array([ms.sigma_ce_A, ms.sigma_o_A])
    out = open(a.out, "w")
    for s in a.structures:
        rng = np.random.default_rng(np.random.SeedSequence([seed, s]))
        pixel = float(rng.uniform(*det.pixel_size_A))
        st = sample_structure(cfg.structure, cfg.defects, rng, det.image_px * pixel)
        stored = structure_columns(root, s)
        assert np.array_equal(np.sort(stored["depth"]), np.sort(st.column_depth)), "re-draw differs"
        grid = make_grid(pixel, det.image_px, ms)
        # own frozen-phonon displacements, one row per atom (+1 spare row for an added atom)
        prng = np.random.default_rng(1000 + s)
        disp = (prng.normal(size=(a.phonons, len(st.positions) + 1, 3))
                * sig[np.r_[st.species, 0]][None, :, None])
        # Ce atoms to columns: nearest Ce column (projected)
        ce = np.flatnonzero(st.species == 0)
        cols = np.flatnonzero(st.column_species == 0)
        d2 = ((st.positions[ce, None, :2] - st.column_xy[None, cols]) ** 2).sum(-1)
        owner = cols[np.argmin(d2, 1)]
        fov = det.image_px * pixel
        inner = [c for c in cols if st.column_depth[c] >= 2
                 and np.all((st.column_xy[c] > 6) & (st.column_xy[c] < fov - 6))]
        depths = st.column_depth[inner]
        pick = [inner[i] for i in np.unique(np.argsort(depths)[
            np.linspace(0, len(inner) - 1, a.columns).round().astype(int)])]
        t0 = time.perf_counter()
        box = box_of(st, grid, ms)  # 4 Å of headroom above the top for an added atom
        ref = spectra(st, grid, ms, energy, k_cut, disp[:, :-1], box)
        images = range(s * per, (s + 1) * per)
        params = [dict(zip(PARAM_NAMES, np.asarray(root["params"][i], float), strict=True))
                  for i in images]
        optics = [Optics(**{f.name: p[f.name] for f in dataclasses.fields(Optics)}) for p in params]
        i_ref = [image_from_spectra(ref, o, focal_nodes=cfg.optics.focal_nodes) for o in optics]
        bases = [nuisance_basis(ref, o, ir, cfg.optics.focal_nodes) for o, ir in zip(optics, i_ref, strict=True)]
        for c in pick:
            atoms = ce[owner == c]
            z = st.positions[atoms, 2]
            order = atoms[np.argsort(z)]
            last = order[-1]
            keep = np.ones(len(st.positions), bool)
            keep[last] = False
            minus = dataclasses.replace(st, positions=st.positions[keep], species=st.species[keep])
            step = st.positions[order[-1]] - st.positions[order[-2]]
            plus = dataclasses.replace(st, positions=np.vstack([st.positions, st.positions[last] + step]),
                                       species=np.r_[st.species, 0])
            sp_m = spectra(minus, grid, ms, energy, k_cut, disp[:, :-1][:, keep], box)
            sp_p = spectra(plus, grid, ms, energy, k_cut, disp, box)
            for img, o, p, ir, basis in zip(images, optics, params, i_ref, bases, strict=True):
                im = image_from_spectra(sp_m, o, focal_nodes=cfg.optics.focal_nodes)
                ip = image_from_spectra(sp_p, o, focal_nodes=cfg.optics.focal_nodes)
                d2m, e2m = fisher(im - ir, ir, basis, pixel)
                d2p, e2p = fisher(ip - ir, ir, basis, pixel)
                row = {"structure": s, "image": img, "column": int(c), "depth": int(st.column_depth[c]),
                       "step_A": float(np.linalg.norm(step)), "pixel_A": pixel,
                       "defocus_nm": p["defocus_A"] / 10, "cs_um": p["cs_A"] / 1e4,
                       "tilt_mrad": p["tilt_mrad"], "dose": p["dose_e_per_A2"],
                       "dprime2_minus_per_dose": d2m, "dprime2_plus_per_dose": d2p,
                       "dprime2_minus_per_dose_optics_unknown": e2m,
                       "dprime2_plus_per_dose_optics_unknown": e2p}
                for dose in DOSES:
                    dm, dp = np.sqrt(d2m * dose), np.sqrt(d2p * dose)
                    row[f"p_exact_max_{dose}"] = float(1 - norm.cdf(-dm / 2) - norm.cdf(-dp / 2))
                out.write(json.dumps(row) + "\n")
                out.flush()
        print(f"structure {s}: {len(pick)} columns, {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
