"""``atom3d demo``: simulate a small in situ series, predict it, and compare with the truth.

Without arguments and without downloads, the demo

1. builds a faceted CeO2 particle (about 3 nm, [110] zone axis) from the fluorite lattice
   (:mod:`atom3d.structures`), and for every frame removes a few *surface* Ce atoms from the
   same lattice-site mask (:func:`~atom3d.structures.defects.surface_cation_vacancies`,
   which also drops O atoms left with fewer than two Ce neighbours) and translates the
   particle rigidly by a slow drift (a few Å over the series, sub-pixel per frame, plus a
   small random jitter);
2. simulates each frame with abTEM multislice (:mod:`atom3d.simulation.hrtem`: the
   average of 4 frozen-phonon configurations per frame (``--frozen-phonons``), 0.05 Å
   sampling; 300 kV, Cs = −13 µm, defocus −6 nm (overfocus), focal spread 2.5 nm, no
   aperture) at 0.2 Å/px and draws Poisson shot noise at a low dose
   (default 1000 e/Å² per frame, :mod:`atom3d.data.noise`);
3. saves the series as an ImageJ hyperstack TIFF (``demo_series.tif``; float32 counts,
   X/YResolution in pixels per nm with ``unit=nm``, ``finterval`` in s, as ImageJ and
   :func:`atom3d.io.readers.open_series` read it) and the ground-truth columns per frame
   (``truth_columns.csv``: frame, species, x [Å], y [Å], depth [atoms]) and the true
   drift (``truth_drift.csv``: frame, dx [Å], dy [Å], relative to frame 0);
4. runs the ``atom3d predict`` pipeline on the TIFF with the default model (or
   ``--model``) into ``demo.h5``, with figures (``figures/``) and 3D models (``xyz/``);
5. prints how the found columns and depths compare with the truth (Ce/O detection F1,
   exact depth and depth within ±1 atom, :mod:`atom3d.evaluation.metrics`) and writes
   them to ``metrics.json``.

Everything lands in ``--out`` (default ``./demo_out``). A full run takes about 2 minutes on
two CPU cores, most of it the simulation (4 frozen phonons × 12 frames).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atom3d.errors import UserError

__all__ = [
    "DemoSeries",
    "configure_demo_parser",
    "demo_main",
    "evaluate_against_truth",
    "run_demo",
    "simulate_demo_series",
]

#: Frozen-phonon configurations averaged per demo frame: as in the training campaign
#: (``configs/simulate/ceo2_110.yaml``). A frame's exposure (≥ 0.01 s) averages ~10¹¹
#: lattice vibration periods, so one thermal snapshot per frame would add noise no
#: microscope records (session 10: ~40 % of the frame-to-frame variance of a column's
#: expected depth at 1000 e/Å²).
DEMO_FROZEN_PHONONS = 4

#: Optics of the demo series [Å, rad; defocus > 0 is underfocus]: 300 kV, Cs = −13 µm,
#: 6 nm overfocus (the negative-Cs imaging condition of aberration-corrected in situ work:
#: bright atoms on a dark background), focal spread 2.5 nm, no objective aperture.
DEMO_OPTICS_KW = dict(energy_eV=300e3, defocus_A=-60.0, cs_A=-13e4, c5_A=0.0,
                      focal_spread_A=25.0, astigmatism_A=0.0, astigmatism_angle_rad=0.0,
                      aperture_mrad=math.inf, angular_spread_mrad=0.1)


def _demo_optics():
    from atom3d.simulation.optics import Optics

    return Optics(**DEMO_OPTICS_KW)


#: Default field of view of the demo frames [Å] (176 px at 0.2 Å/px).
DEMO_FIELD_A = 35.2

#: Matching distance of predicted to true columns [Å] (below half the nearest distances).
MATCH_DIST_A = {"Ce": 1.0, "O": 0.7}


@dataclass
class DemoSeries:
    """A simulated series and its ground truth.

    Attributes
    ----------
    tif : Path
        The ImageJ TIFF.
    truth : list of dict
        Per frame, ``{"Ce": {"x", "y", "depth"}, "O": {...}}`` [Å, atoms].
    drift_A : numpy.ndarray
        ``(T, 2)`` true drift ``[dx, dy]`` [Å] relative to frame 0.
    pixel_size_A : float
        Pixel size [Å/px].
    """

    tif: Path
    truth: list[dict]
    drift_A: np.ndarray
    pixel_size_A: float


def _surface_ce_count(sites, mask: np.ndarray) -> int:
    """Occupied Ce sites with fewer than 12 Ce neighbours within 4.0 Å (the surface)."""
    from scipy.spatial import cKDTree

    ce = np.flatnonzero(mask & (sites.species == 0))
    if ce.size == 0:
        return 0
    xyz = sites.xyz[ce]
    n = cKDTree(xyz).query_ball_point(xyz, 4.0, return_length=True) - 1
    return int(np.sum(n < 12))


def simulate_demo_series(out_dir: str | Path, *, n_frames: int = 12, image_px: int = 176,
                         pixel_size_A: float = 0.2, diameter_nm: float = 3.0,
                         dose_e_per_A2: float = 1000.0, ce_loss_per_frame: int = 3,
                         drift_total_A: tuple[float, float] = (2.5, -1.5),
                         frame_interval_s: float = 1.0, seed: int = 0,
                         frozen_phonons: int = DEMO_FROZEN_PHONONS,
                         optics=None, rotation_rad: float = 0.2,
                         tilt_mrad: float | Sequence[float] = 0.0,
                         tilt_azimuth_rad: float = 0.0,
                         progress: bool = True) -> DemoSeries:
    """Simulate the demo series and write ``demo_series.tif`` and ``truth_columns.csv``.

    Parameters
    ----------
    out_dir : path
        Output directory (created).
    n_frames : int
        Number of frames.
    image_px : int
        Frame side [px] (even).
    pixel_size_A : float
        Detector pixel size [Å/px].
    diameter_nm : float
        Nominal particle diameter [nm].
    dose_e_per_A2 : float
        Electron dose per frame [e/Å²].
    ce_loss_per_frame : int
        Surface Ce atoms removed per frame (after frame 0).
    drift_total_A : (float, float)
        Drift ``(dx, dy)`` [Å] accumulated linearly over the series (plus a 0.1 Å jitter).
    frame_interval_s : float
        Time between frames [s] (stored in the TIFF).
    seed : int
        Random seed (structure, cation loss, jitter, phonons, noise).
    frozen_phonons : int
        Thermal configurations averaged per frame (each frame draws its own).
    optics : atom3d.simulation.optics.Optics, optional
        The electron optics; default :data:`DEMO_OPTICS_KW` (300 kV, Cs = −13 µm, 6 nm
        overfocus, focal spread 2.5 nm, no aperture).
    rotation_rad : float
        In-plane rotation of the lattice against the pixel rows [rad].
    tilt_mrad : float or sequence of float
        Tilt of the particle away from the [110] zone axis [mrad]: one value, or one per
        frame (a particle that tilts during the series).
    tilt_azimuth_rad : float
        Azimuth of the tilt axis [rad].
    progress : bool
        Progress bar over frames.
    """
    import tifffile
    from tqdm import tqdm

    from atom3d.data.noise import add_shot_noise
    from atom3d.simulation.campaign import configure_abtem
    from atom3d.simulation.hrtem import (
        MultisliceConfig,
        exit_spectra,
        image_from_spectra,
        make_grid,
    )
    from atom3d.simulation.optics import OpticsConfig, transfer_cutoff
    from atom3d.structures.ceria import A_CEO2, lattice_sites
    from atom3d.structures.columns import place, rotation_z
    from atom3d.structures.defects import remove_dangling_oxygen, surface_cation_vacancies
    from atom3d.structures.shapes import particle_mask

    configure_abtem()  # deterministic FFT plans: the same series in every run
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    diameter_A = 10.0 * diameter_nm
    half = 0.8 * diameter_A + A_CEO2
    sites = lattice_sites((1, 1, 0), (half, half, half))
    mask, _ = particle_mask(sites, rng, diameter_A=diameter_A, asymmetry=0.1,
                            p_flat_base=0.0, p_steps=0.0)
    mask = remove_dangling_oxygen(sites, mask)
    rotation = float(rotation_rad)  # the lattice is not aligned with the pixel rows
    rot = rotation_z(rotation)

    def bbox_centre(m: np.ndarray) -> np.ndarray:
        xy = (sites.xyz[m] @ rot.T)[:, :2]
        return (xy.min(axis=0) + xy.max(axis=0)) / 2

    fov_centre = np.full(2, (image_px - 1) * pixel_size_A / 2)
    translation0 = fov_centre - bbox_centre(mask)
    ramp = np.linspace(0.0, 1.0, n_frames)[:, None] * np.asarray(drift_total_A)[None]
    jitter = rng.normal(0.0, 0.1, (n_frames, 2))
    jitter[0] = 0.0
    drift = ramp + jitter

    tilts = np.broadcast_to(np.asarray(tilt_mrad, float), (n_frames,))
    if int(frozen_phonons) < 1:
        raise ValueError(f"frozen_phonons must be >= 1, got {frozen_phonons}")
    ms = MultisliceConfig(sampling_A=0.05, frozen_phonons=int(frozen_phonons))
    grid = make_grid(pixel_size_A, image_px, ms)
    optics_cfg = OpticsConfig()
    optics = _demo_optics() if optics is None else optics
    if abs(optics.energy_eV - 1e3 * optics_cfg.energy_keV) > 1.0:
        optics_cfg = OpticsConfig(energy_keV=optics.energy_eV / 1e3)
    k_cut = transfer_cutoff(optics_cfg)
    frames = np.zeros((n_frames, image_px, image_px), np.float32)
    truth: list[dict] = []
    for t in tqdm(range(n_frames), desc="simulating", unit="frame",
                  disable=None if progress else True):
        if t > 0 and ce_loss_per_frame > 0:
            n_surface = _surface_ce_count(sites, mask)
            if n_surface:
                fraction = min(1.0, (ce_loss_per_frame + 0.25) / n_surface)
                mask, _ = surface_cation_vacancies(sites, mask, rng, fraction=fraction)
        centre = bbox_centre(mask) + translation0 + drift[t]
        st = place(sites, mask, rotation_rad=rotation, tilt_rad=1e-3 * float(tilts[t]),
                   tilt_azimuth_rad=float(tilt_azimuth_rad),
                   centre_xy_A=(float(centre[0]), float(centre[1])))
        spectra = exit_spectra(st, grid, ms, optics.energy_eV, k_cut,
                               seed=int(rng.integers(2**31)))
        clean = image_from_spectra(spectra, optics, focal_nodes=5)
        frames[t] = add_shot_noise(clean, dose_e_per_A2, pixel_size_A, rng)
        truth.append({
            name: {"x": st.column_xy[st.column_species == code, 0].astype(np.float64),
                   "y": st.column_xy[st.column_species == code, 1].astype(np.float64),
                   "depth": st.column_depth[st.column_species == code].astype(np.int64)}
            for code, name in ((0, "Ce"), (1, "O"))
        })

    tif = out_dir / "demo_series.tif"
    pixel_nm = pixel_size_A / 10.0
    tifffile.imwrite(tif, frames, imagej=True, resolution=(1.0 / pixel_nm, 1.0 / pixel_nm),
                     metadata={"axes": "TYX", "unit": "nm", "finterval": frame_interval_s,
                               "tunit": "s"})
    with open(out_dir / "truth_columns.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["frame", "species", "x_A", "y_A", "depth"])
        for t, per in enumerate(truth):
            for species, cols in per.items():
                for x, y, d in zip(cols["x"], cols["y"], cols["depth"], strict=True):
                    writer.writerow([t, species, f"{x:.4f}", f"{y:.4f}", int(d)])
    with open(out_dir / "truth_drift.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["frame", "dx_A", "dy_A"])
        for t, (dx, dy) in enumerate(drift):
            writer.writerow([t, f"{dx:.5f}", f"{dy:.5f}"])
    return DemoSeries(tif, truth, drift, pixel_size_A)


def evaluate_against_truth(results: str | Path, truth: Sequence[dict],
                           drift_A: np.ndarray | None = None) -> dict:
    """Column detection and depth scores of a results file against the true columns.

    Returns
    -------
    dict
        Per species: ``f1``, ``precision``, ``recall``, ``exact``, ``within1``, ``mae``
        (pooled over frames, :func:`atom3d.evaluation.metrics.aggregate`), and per frame
        the true and predicted atom counts ``n_ce_true``, ``n_ce_pred``; with the true
        drift ``drift_A`` [Å] also ``Ce_time`` (:func:`temporal_scores`).
    """
    from atom3d.evaluation.metrics import aggregate, column_metrics
    from atom3d.io.results import read_results

    r = read_results(results, load_maps=False)
    cols = r["columns"]
    out: dict = {}
    for species in ("Ce", "O"):
        per_frame = []
        for t, true in enumerate(truth):
            sel = (cols["frame"] == t) & (cols["species"] == species)
            pred = {"x": cols["x"][sel], "y": cols["y"][sel], "depth": cols["depth"][sel],
                    "confidence": cols["confidence"][sel]}
            per_frame.append(column_metrics(pred, true[species], MATCH_DIST_A[species]))
        pooled = aggregate(per_frame)
        out[species] = {k: float(pooled[k]) for k in
                        ("f1", "precision", "recall", "exact", "within1", "mae")}
        out[species].update(tp=int(pooled["tp"]), fp=int(pooled["fp"]), fn=int(pooled["fn"]))
    out["n_ce_true"] = [int(np.sum(t["Ce"]["depth"])) for t in truth]
    out["n_ce_pred"] = [int(v) for v in r["frames"]["n_ce"]]
    if drift_A is not None and len(truth) > 1:
        out["Ce_time"] = temporal_scores(r, truth, drift_A, "Ce")
    return out


def temporal_scores(r: dict, truth: Sequence[dict], drift_A: np.ndarray,
                    species: str = "Ce") -> dict:
    """Flicker and reported depth changes of a predicted series against the truth.

    True columns are followed from frame to frame by their drift-corrected positions
    (``drift_A`` [Å], ``(T, 2)``, the true drift; within 0.5 Å). For every pair of
    consecutive frames:

    - a *steady* column (same true depth in both frames) whose predicted columns (the
      ones matched to it, :func:`~atom3d.evaluation.metrics.match_columns`, in both
      frames) report different depths is a *flicker*; ``flicker`` = flickers / steady
      column pairs matched in both frames;
    - a *true change* (a column whose depth changes, or that vanishes) is *reported*
      when ``/events`` lists, for the track of the predicted column matched to it in
      the earlier frame, a ``depth_change`` or ``vanished`` event of the same sign within
      one frame of the change; ``change_recall`` = reported / true changes.

    Returns
    -------
    dict
        ``flicker``, ``steady_pairs``, ``flickers``, ``changes_true``,
        ``changes_reported``, ``change_recall`` (NaN when undefined).
    """
    from scipy.spatial import cKDTree

    from atom3d.evaluation.metrics import match_columns

    cols, events = r["columns"], r["events"]
    n = len(truth)
    matched = []  # per frame: true index -> (predicted depth, track)
    for t in range(n):
        sel = np.flatnonzero((cols["frame"] == t) & (cols["species"] == species))
        true = truth[t][species]
        pi, ti = match_columns(np.column_stack([cols["x"][sel], cols["y"][sel]]),
                               np.column_stack([true["x"], true["y"]]), MATCH_DIST_A[species])
        matched.append({int(j): (int(cols["depth"][sel[i]]), int(cols["track"][sel[i]]))
                        for i, j in zip(pi, ti, strict=True)})
    ev = [(int(f), int(k), str(kind), int(b), int(a)) for f, k, kind, b, a in zip(
        events["frame"], events["track"], events["kind"], events["depth_before"],
        events["depth_after"], strict=True)]
    ev_species = [str(sp) for sp in events["species"]]
    steady = flickers = changes = reported = 0
    for t in range(n - 1):
        a, b = truth[t][species], truth[t + 1][species]
        xa = np.column_stack([a["x"], a["y"]]) - drift_A[t]
        xb = np.column_stack([b["x"], b["y"]]) - drift_A[t + 1]
        dist, j = cKDTree(xb).query(xa, distance_upper_bound=0.5) if len(xb) else (
            np.full(len(xa), np.inf), np.zeros(len(xa), int))
        for i in range(len(xa)):
            depth_a = int(a["depth"][i])
            depth_b = int(b["depth"][j[i]]) if np.isfinite(dist[i]) else 0
            if depth_a == depth_b:
                if i in matched[t] and int(j[i]) in matched[t + 1]:
                    steady += 1
                    flickers += matched[t][i][0] != matched[t + 1][int(j[i])][0]
                continue
            changes += 1
            if i not in matched[t]:
                continue
            track = matched[t][i][1]
            down = depth_b < depth_a
            reported += any(
                k == track and sp == species and kind in ("depth_change", "vanished")
                and t <= f <= t + 2 and ((after < before) == down)
                for (f, k, kind, before, after), sp in zip(ev, ev_species, strict=True))
    nan = float("nan")
    return {"flicker": flickers / steady if steady else nan, "steady_pairs": steady,
            "flickers": flickers, "changes_true": changes, "changes_reported": reported,
            "change_recall": reported / changes if changes else nan}


def _percent(v: float) -> str:
    return "  n/a" if not math.isfinite(v) else f"{100 * v:5.1f} %"


def _print_report(scores: dict, drift_true: np.ndarray, results: str | Path) -> None:
    from atom3d.io.results import read_results

    frames = read_results(results, load_maps=False)["frames"]
    print("\nHow the prediction compares with the simulated truth (all frames pooled):")
    print("  species  F1       precision recall    exact depth  depth within ±1")
    for species in ("Ce", "O"):
        s = scores[species]
        print(f"  {species:<7s}  {_percent(s['f1'])}  {_percent(s['precision'])}   "
              f"{_percent(s['recall'])}   {_percent(s['exact'])}      {_percent(s['within1'])}")
    if "Ce_time" in scores:
        tm = scores["Ce_time"]
        print(f"  Ce over time: flicker {_percent(tm['flicker'])} of {tm['steady_pairs']} steady "
              f"column-frame pairs; {tm['changes_reported']} of {tm['changes_true']} true depth "
              f"changes reported as events ({_percent(tm['change_recall'])})")
    print(f"  Ce atoms, true:      {scores['n_ce_true']}")
    print(f"  Ce atoms, predicted: {scores['n_ce_pred']}")
    d_pred = np.column_stack([frames["drift_x"], frames["drift_y"]])
    err = np.nanmax(np.hypot(*(d_pred - drift_true).T)) if len(d_pred) else math.nan
    print(f"  drift: true last frame ({drift_true[-1, 0]:+.2f}, {drift_true[-1, 1]:+.2f}) Å, "
          f"found ({d_pred[-1, 0]:+.2f}, {d_pred[-1, 1]:+.2f}) Å, largest error {err:.2f} Å")


DEMO_DESCRIPTION = (
    "Simulate (abTEM multislice, no downloads) a low-dose in situ HRTEM series of a "
    "~3 nm CeO2 particle along [110] that drifts by a few Å and loses surface Ce "
    "atoms, save it as an ImageJ TIFF (0.2 Å/px by default) with its true columns, run "
    "'atom3d predict' on it and print how the found columns and depths compare "
    "with the truth. Needs the 'simulate' extra (abTEM).")


def build_demo_parser() -> argparse.ArgumentParser:
    """A stand-alone parser for ``atom3d demo``."""
    return configure_demo_parser(argparse.ArgumentParser(prog="atom3d demo",
                                                         description=DEMO_DESCRIPTION))


def configure_demo_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``atom3d demo`` arguments to ``p`` (a parser or sub-parser)."""
    from atom3d.argtypes import add_tta_arguments
    from atom3d.models import DEFAULT_MODEL

    p.add_argument("--out", type=Path, default=Path("demo_out"), metavar="DIR",
                   help="output directory (default ./demo_out)")
    p.add_argument("--frames", type=int, default=12, metavar="N",
                   help="number of frames (default 12)")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME|DIR",
                   help=f"model to predict with (default the packaged {DEFAULT_MODEL})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=None, metavar="PX",
                   help="frame side [px] (default: 35 Å, i.e. 176 px at 0.2 Å/px)")
    p.add_argument("--pixel-size", type=float, default=0.2, metavar="A_PER_PX",
                   help="detector pixel size [Å/px] (default 0.2; the model's domain is "
                        "0.15 … 0.3)")
    p.add_argument("--defocus", type=float, default=DEMO_OPTICS_KW["defocus_A"] / 10.0,
                   metavar="NM", help="defocus [nm], positive = underfocus (default −6, "
                                      "overfocus; the model's domain is −10 … 10)")
    p.add_argument("--cs", type=float, default=DEMO_OPTICS_KW["cs_A"] / 1e4, metavar="UM",
                   help="spherical aberration Cs [µm] (default −13; the model's domain is "
                        "−25 … 5)")
    p.add_argument("--diameter-nm", type=float, default=3.0, metavar="NM",
                   help="particle diameter [nm] (default 3)")
    p.add_argument("--dose", type=float, default=1000.0, metavar="E_PER_A2",
                   help="electron dose per frame [e/Å²] (default 1000)")
    p.add_argument("--frozen-phonons", type=int, default=DEMO_FROZEN_PHONONS, metavar="N",
                   help="thermal (frozen-phonon) configurations averaged per frame, as a "
                        f"real exposure averages them (default {DEMO_FROZEN_PHONONS}, as "
                        "in training; the simulation time grows with N)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    add_tta_arguments(p, default=8)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def demo_main(argv: Sequence[str] | None = None) -> int:
    """``atom3d demo`` entry point (raises :class:`~atom3d.errors.UserError` on user errors)."""
    return run_demo(build_demo_parser().parse_args(None if argv is None else list(argv)))


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo for parsed arguments (see :func:`configure_demo_parser`)."""
    if args.frames < 1:
        raise UserError(f"--frames must be >= 1, got {args.frames}")
    if not 0.05 <= args.pixel_size <= 1.0:
        raise UserError(f"--pixel-size must be within 0.05 … 1 Å/px, got {args.pixel_size}")
    if not math.isfinite(args.defocus) or not math.isfinite(args.cs):
        raise UserError("--defocus and --cs must be finite numbers")
    if args.size is None:
        args.size = 2 * round(DEMO_FIELD_A / args.pixel_size / 2)
    if args.size < 32 or args.size % 2:
        raise UserError(f"--size must be an even number of pixels >= 32, got {args.size}")
    fov_nm = args.size * args.pixel_size / 10.0
    if not 0.5 <= args.diameter_nm <= 0.9 * fov_nm:
        raise UserError(f"--diameter-nm must be within 0.5 … {0.9 * fov_nm:.1f} nm "
                        f"for a {args.size} px frame of {args.pixel_size:g} Å/px")
    if not args.dose > 0:
        raise UserError(f"--dose must be > 0 e/Å², got {args.dose}")
    if args.frozen_phonons < 1:
        raise UserError(f"--frozen-phonons must be >= 1, got {args.frozen_phonons}")

    from atom3d.inference.export3d import export_xyz
    from atom3d.inference.figures import plot_results
    from atom3d.inference.lattice import lattice_attrs, series_lattice
    from atom3d.inference.predictor import Predictor
    from atom3d.inference.series import predict_series
    from atom3d.io.readers import open_series
    from atom3d.models.artifact import load_artifact
    from atom3d.models.summary import expected_at_dose, terminal_paragraph

    try:
        artifact = load_artifact(args.model)
    except UserError as error:
        raise UserError(f"the demo predicts with a trained model: {error}; pass --model DIR "
                        "to use another model") from None
    try:
        import abtem  # noqa: F401 - only checks that the simulation extra is installed
    except ImportError:
        raise UserError("the demo simulates its data with abTEM: install the simulation "
                        "extra (pip install 'atom3d[simulate]')") from None
    predictor = Predictor(artifact, device=args.device, tta=args.tta)

    out = Path(args.out)
    t0 = time.perf_counter()
    from atom3d.simulation.optics import Optics

    optics = Optics(**{**DEMO_OPTICS_KW, "defocus_A": 10.0 * args.defocus,
                       "cs_A": 1e4 * args.cs})
    print(f"simulating {args.frames} frames of a {args.diameter_nm:g} nm CeO2 particle "
          f"({args.size} px at {args.pixel_size:g} Å/px, {args.dose:g} e/Å² per frame; "
          f"defocus {args.defocus:g} nm, Cs {args.cs:g} µm) into {out}/")
    sim = simulate_demo_series(out, n_frames=args.frames, image_px=args.size,
                               pixel_size_A=args.pixel_size,
                               diameter_nm=args.diameter_nm, dose_e_per_A2=args.dose,
                               seed=args.seed, frozen_phonons=args.frozen_phonons,
                               optics=optics, progress=not args.quiet)
    t_sim = time.perf_counter() - t0
    results = out / "demo.h5"
    print(f"predicting with model {artifact.name!r} -> {results}")
    with open_series(sim.tif) as series:
        if abs(series.pixel_size_A - sim.pixel_size_A) > 1e-6 * sim.pixel_size_A:
            raise RuntimeError(f"TIFF calibration read back as {series.pixel_size_A} Å")
        check = series_lattice(series, series.pixel_size_A)
        print(f"pixel size check: the CeO2 [110] lattice in the frames gives "
              f"{check.pixel_size_A:.4f} Å/px, the TIFF says {series.pixel_size_A:.4f} "
              f"({100 * (check.ratio - 1):+.1f} %)" if check.found else
              f"pixel size check: no CeO2 [110] lattice found (score {check.z:.1f})")
        summary = predict_series(series, results, predictor, progress=not args.quiet,
                                 calibration=lattice_attrs(check, "file"))
    figures = plot_results(results, out / "figures")
    xyz = export_xyz(results, out / "xyz")
    scores = evaluate_against_truth(results, sim.truth, sim.drift_A)
    _print_report(scores, sim.drift_A, results)
    expected = expected_at_dose(artifact.config, summary["median_dose_e_per_A2"])
    if expected:
        print(terminal_paragraph(
            f"For comparison, {expected} (frames here: ≈ {summary['median_dose_e_per_A2']:.0f}"
            f" e/Å² from their shot noise, {args.dose:g} simulated; a series adds tracking "
            "over time).", indent="  "))
    report = {"model": artifact.name, "frames": args.frames, "seed": args.seed,
              "frozen_phonons": args.frozen_phonons, "pixel_size_A": args.pixel_size,
              "defocus_nm": args.defocus, "cs_um": args.cs,
              "dose_e_per_A2": args.dose, "lattice_pixel_size_A": check.pixel_size_A,
              "simulate_s": round(t_sim, 1),
              "total_s": round(time.perf_counter() - t0, 1), **scores,
              "n_events": summary["n_events"]}
    (out / "metrics.json").write_text(json.dumps(report, indent=1, allow_nan=True) + "\n")
    print(f"\nwrote {sim.tif.name}, truth_columns.csv, truth_drift.csv, {results.name}, "
          f"{len(figures)} figures, {len(xyz)} xyz files and metrics.json in {out}/ "
          f"({report['total_s']:.0f} s)")
    if artifact.config.get("metrics", {}).get("random_init"):
        print("note: this model has random weights; the scores above mean nothing",
              file=sys.stderr)
    return 0
