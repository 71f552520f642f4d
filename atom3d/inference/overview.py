"""A results file, or an input file, in a few lines a microscopist reads.

``atom3d info OUT.h5`` summarises a results file (``--json`` prints its root attributes
and table sizes as JSON instead); ``atom3d info MOVIE`` (any file or image sequence
``atom3d predict`` reads) says how it is read: frames, size, pixel size and what the
CeO2 lattice says of it, frame interval, dose per frame, which signal was taken, and what
the network will see. Light: imports neither torch nor h5py beyond what reading needs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from atom3d.inference.figures import pixel_size_note
from atom3d.io.selection import selection_note

__all__ = ["input_overview", "results_overview"]


def _first_last(values: np.ndarray, valid: np.ndarray, fmt: str) -> str:
    v = np.asarray(values, float)[valid]
    v = v[np.isfinite(v)]
    if not v.size:
        return "–"
    return format(v[0], fmt) if v.size == 1 else f"{format(v[0], fmt)} → {format(v[-1], fmt)}"


def results_overview(res: dict[str, Any], path: str | Path) -> str:
    """Human-readable summary of a results file read by :func:`atom3d.io.results.read_results`.

    Parameters
    ----------
    res : dict
        ``read_results(path, load_maps=False)``.
    path : str or Path
        The file (its name heads the summary).

    Returns
    -------
    str
        A few labelled lines: input, pixel size and its lattice check, model and
        settings, frames and dose, the particle's first and last valid frame, columns,
        tracks and events.
    """
    a, frames, cols, events = res["attrs"], res["frames"], res["columns"], res["events"]
    n = int(len(frames.get("frame", [])))
    valid = np.asarray(frames.get("valid", np.zeros(n, bool)), bool)
    lines = [f"{Path(path).name}  ({a.get('format', '?')} v{a.get('format_version', '?')}, "
             f"complete; written {a.get('created', '?')} by atom3d {a.get('atom3d_version', '?')})"]

    def row(label: str, text: str) -> None:
        lines.append(f"{label:<10s}{text}")

    interval = float(a.get("frame_interval_s", math.nan))
    row("input", f"{Path(str(a.get('source', '?'))).name}  (sha256 "
                 f"{str(a.get('source_sha256', ''))[:12]}…)")
    row("", f"{n} frame{'s' if n != 1 else ''}"
            + (f", {interval:g} s apart" if math.isfinite(interval) else ""))
    for note in (str(a.get("source_signal", "")), selection_note(a)):
        if note:
            row("", note)
    row("pixel", pixel_size_note(a))
    passes = a.get("tta_passes", 1)
    row("model", f"{a.get('model', '?')} (sha256 {str(a.get('model_sha256', ''))[:12]}…), "
                 f"{passes} network pass{'es' if passes != 1 else ''} per frame")
    if n > 1:
        decided = "per track" if a.get("track_detection") else "per frame"
        row("", f"columns decided {decided}; depth smoothing {a.get('depth_smoothing', '?')}")
    dose = np.asarray(frames.get("dose_e_per_A2", np.full(n, np.nan)), float)[valid]
    dose = dose[np.isfinite(dose)]
    text = f"{int(valid.sum())} valid of {n}"
    if dose.size:
        text += f"; dose ≈ {np.median(dose):.0f} e/Å² per frame (median, from the shot noise)"
    row("frames", text)
    if n > 1 and valid.any() and "drift_x" in frames:
        d = np.hypot(np.asarray(frames["drift_x"], float), np.asarray(frames["drift_y"], float))
        row("", f"drift up to {np.nanmax(np.where(valid, d, np.nan)):.2f} Å from the first frame")
    if valid.any() and "n_ce" in frames:
        first = int(np.flatnonzero(valid)[0])
        last = int(np.flatnonzero(valid)[-1])
        head = f"frame {first}" if first == last else f"frame {first} → {last}"
        row("particle", f"{head}: Ce atoms {_first_last(frames['n_ce'], valid, '.0f')}, "
                        f"O atoms {_first_last(frames['n_o'], valid, '.0f')}, "
                        f"O/Ce {_first_last(frames['o_ce_ratio'], valid, '.2f')}")
        row("", f"equivalent radius {_first_last(frames['radius_A'], valid, '.1f')} Å, "
                f"surface columns {_first_last(frames.get('n_surface_columns', []), valid, '.0f')}"
            if "n_surface_columns" in frames else
                f"equivalent radius {_first_last(frames['radius_A'], valid, '.1f')} Å")
    if "collective_change" in frames and np.any(frames["collective_change"]):
        from atom3d.inference.series import COLLECTIVE_FRACTION

        flagged = np.flatnonzero(np.asarray(frames["collective_change"], bool)).tolist()
        row("warning", f"frame{'s' if len(flagged) > 1 else ''} "
                       f"{', '.join(map(str, flagged[:8]))}{' …' if len(flagged) > 8 else ''}: "
                       f"{COLLECTIVE_FRACTION:.0%} or more of the Ce columns changed depth "
                       "together (a tilt or focus change, not atoms leaving?)")
    species = np.asarray(cols.get("species", []))
    tracks = np.asarray(cols.get("track", []))
    n_tracks = int(np.unique(tracks[tracks >= 0]).size)
    row("columns", f"{species.size} rows (Ce {int(np.sum(species == 'Ce'))}, "
                   f"O {int(np.sum(species == 'O'))})"
                   + (f" in {n_tracks} tracks" if n_tracks else ""))
    kinds = np.asarray(events.get("kind", []))
    ev_species = np.asarray(events.get("species", []))
    if kinds.size:
        parts = []
        for kind, label in (("depth_change", "depth changes"), ("appeared", "appeared"),
                            ("vanished", "vanished")):
            sel = kinds == kind
            if sel.any():
                by = ", ".join(f"{sp} {int(np.sum(ev_species[sel] == sp))}" for sp in ("Ce", "O")
                               if np.any(ev_species[sel] == sp))
                parts.append(f"{int(sel.sum())} {label} ({by})")
        row("events", "; ".join(parts))
    else:
        row("events", "none")
    return "\n".join(lines)


def input_overview(series: Any, model_pixel_size_A: float = 0.2, tile_px: int = 512) -> str:
    """How ``atom3d predict`` would read ``series`` (an open
    :class:`~atom3d.io.readers.Series`), in a few lines: format and signal, frames and
    size, frame interval, pixel size with its CeO2 lattice check (the check predict runs),
    dose per frame (median of up to 8 frames, from the shot noise) and the size of a
    frame on the network's grid (``model_pixel_size_A``, tiles of ``tile_px``)."""
    from atom3d.inference.dose import estimate_dose
    from atom3d.inference.lattice import LATTICE_TOLERANCE, frames_lattice, sample_frames

    h, w = series.shape
    n = int(series.n_frames)
    lines = [f"{Path(str(series.path)).name}  ({series.format})"]

    def row(label: str, text: str) -> None:
        lines.append(f"{label:<10s}{text}")

    if series.signal_note:
        row("", series.signal_note)
    interval = float(series.frame_interval_s)
    row("frames", f"{n} of {w} × {h} px (width × height)"
                  + (f", {interval:g} s apart" if math.isfinite(interval) else
                     ("" if n == 1 else ", frame interval not recorded (--frame-interval)")))
    p = float(series.pixel_size_A)
    if not math.isfinite(p):
        row("pixel", "no usable calibration in the file (pass --pixel-size A, or "
                     "--pixel-size lattice)")
    frames = sample_frames(series)  # read once: the lattice check and the dose
    check = frames_lattice(frames, p if math.isfinite(p) else None)
    if math.isfinite(p):
        text = f"{p:.4f} Å/px from the file ({w * p / 10:.1f} × {h * p / 10:.1f} nm)"
        row("pixel", text)
    if check.found:
        off = (f", {100 * (check.ratio - 1):+.1f} % from the file"
               if math.isfinite(p) else "")
        warn = ("  ← beyond the model's ±5 %: predict with --pixel-size lattice if the "
                "calibration is wrong" if math.isfinite(p)
                and abs(check.ratio - 1) > LATTICE_TOLERANCE else "")
        row("lattice", f"CeO2 [110] found: {check.pixel_size_A:.4f} Å/px{off} "
                       f"(score {check.z:.0f}, [001] at {check.angle_deg:.1f}° from x){warn}")
    else:
        row("lattice", f"no CeO2 [110] lattice found ({check.reason})")
    if math.isfinite(p) or check.found:
        p_use = p if math.isfinite(p) else check.pixel_size_A
        doses = [d for d in (estimate_dose(f, p_use) for f in frames) if math.isfinite(d)]
        if doses:
            of = f"median of {len(doses)} frames, " if len(doses) > 1 else ""
            row("dose", f"≈ {np.median(doses):.0f} e/Å² per frame ({of}from the shot noise; "
                        "needs counts without a dark offset)")
        grid = (round(h * p_use / model_pixel_size_A), round(w * p_use / model_pixel_size_A))
        fits = max(grid) <= tile_px
        row("network", f"a frame is {grid[1]} × {grid[0]} px at the model's "
                       f"{model_pixel_size_A:g} Å/px"
                       + (", predicted whole" if fits else
                          f", predicted in overlapping tiles of ≤ {tile_px} px (or crop "
                          "to the particle with --roi)"))
    return "\n".join(lines)
