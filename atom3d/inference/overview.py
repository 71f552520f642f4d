"""A results file in a few lines a microscopist reads (``atom3d info OUT.h5``).

``atom3d info OUT.h5 --json`` prints everything (root attributes and table sizes) as
JSON instead. Light: imports neither torch nor h5py beyond what reading needs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from atom3d.inference.figures import pixel_size_note
from atom3d.io.selection import selection_note

__all__ = ["results_overview"]


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
