"""Figures of a results file (PNG, matplotlib's Agg canvas; pyplot is not used).

:func:`plot_results` draws, into a directory:

``frame_NNNNN.png`` (a few selected frames)
    Left: the frame (when the input file is still readable; otherwise the Ce depth map)
    with the Ce columns (circles) and O columns (small squares) coloured by depth, one
    colour bar per species. Right: the confidence map (probability of the predicted Ce
    depth on Ce column pixels, of the O depth on O pixels elsewhere).
``tracks.png``
    Depth versus time of the tracks with events: depth changes first, then columns that
    appeared or vanished (drawn from or to depth 0); Ce before O; at most 12 tracks.
``summary.png``
    n_ce and n_o [atoms], the O/Ce ratio and the equivalent radius [Å] versus time
    (seconds when the frame interval is known, else frame number).

Callable from ``atom3d info OUT.h5 --plot DIR`` as ``plot_results(OUT.h5, DIR)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from atom3d.io.results import open_results
from atom3d.io.selection import FrameRange, Roi, SelectedSeries

__all__ = ["plot_results", "select_frames"]

#: Tracks drawn at most in ``tracks.png``.
MAX_TRACKS = 12


def select_frames(valid: np.ndarray, n: int = 3) -> list[int]:
    """Up to ``n`` valid frames spread evenly over the series (first and last included)."""
    good = np.flatnonzero(np.asarray(valid, bool))
    if good.size == 0:
        return []
    picks = np.unique(np.round(np.linspace(0, good.size - 1, min(n, good.size))).astype(int))
    return [int(good[i]) for i in picks]


def _canvas(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path


def _open_source(attrs: dict[str, Any]):
    """The input series named in the results file, or None if it cannot be opened."""
    source = attrs.get("source") or ""
    if not source or not Path(source).exists():
        return None
    try:
        from atom3d.io.readers import open_series

        series = open_series(source, pixel_size_A=float(attrs["pixel_size_A"]))
    except Exception:  # noqa: BLE001 - a figure without the raw frame is still useful
        return None
    if "source_frames" not in attrs:  # written before session 27: the whole file
        return series
    try:  # the part of the file the results cover (atom3d predict --frames / --roi)
        start, stop, step = (int(v) for v in attrs["source_frames"])
        return SelectedSeries(series, FrameRange(start, stop, step), Roi(*map(int, attrs["roi_px"])))
    except Exception:  # noqa: BLE001 - e.g. the file changed since: no raw frames
        series.close()
        return None


def plot_results(results: str | os.PathLike, out_dir: str | os.PathLike, *,
                 frames: Iterable[int] | None = None, series: Any = None) -> list[Path]:
    """Draw the figures of a results file into ``out_dir`` (see the module docstring).

    Parameters
    ----------
    results : path
        A complete results file.
    out_dir : path
        Created if missing.
    frames : iterable of int, optional
        Frames for the per-frame figures (default: 3 valid frames spread over the series).
    series : Series, optional
        The input series, for the frame images (default: the file named in the results'
        ``source`` attribute, if readable).

    Returns
    -------
    list of Path
        The PNG files written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with open_results(results) as r:
        attrs, cols, table, events = r["attrs"], r["columns"], r["frames"], r["events"]
        chosen = select_frames(table["valid"]) if frames is None else sorted(set(frames))
        own = series is None
        if own:
            series = _open_source(attrs)
        try:
            for t in chosen:
                image = None
                if series is not None and series.shape == r["maps"]["ce_depth"].shape[1:]:
                    image = series.frame(t)
                maps = {name: r["maps"][name][t] for name in
                        ("ce_depth", "ce_confidence", "o_depth", "o_confidence")}
                source = int(table["source_frame"][t]) if "source_frame" in table else t
                written.append(_plot_frame(out_dir / f"frame_{t:05d}.png", t, image, maps,
                                           cols, attrs, source))
        finally:
            if own and series is not None:
                series.close()
    written.append(_plot_tracks(out_dir / "tracks.png", cols, events, table, attrs))
    written.append(_plot_summary(out_dir / "summary.png", table, attrs))
    return written


def pixel_size_note(attrs: dict[str, Any]) -> str:
    """Where the pixel size came from and what the CeO2 lattice said, for figure labels,
    e.g. ``'0.2200 Å/px from the file; the CeO2 lattice gives 0.1998 (-9.2 %)'``."""
    p = float(attrs["pixel_size_A"])
    source = {"file": "from the file", "option": "from --pixel-size",
              "lattice": "from the CeO2 lattice"}.get(str(attrs.get("pixel_size_source", "")), "")
    note = f"{p:.4f} Å/px {source}".rstrip()
    lattice = float(attrs.get("lattice_pixel_size_A", math.nan))
    if attrs.get("pixel_size_source") == "lattice" or "lattice_pixel_size_A" not in attrs:
        return note
    if math.isfinite(lattice):
        return f"{note}; the CeO2 lattice gives {lattice:.4f} ({100 * (lattice / p - 1):+.1f} %)"
    return f"{note}; no CeO2 lattice found to check it"


def _rows_of(cols: dict[str, np.ndarray], t: int) -> np.ndarray:
    lo, hi = np.searchsorted(cols["frame"], [t, t + 1])
    return np.arange(lo, hi)


def _plot_frame(path: Path, t: int, image: np.ndarray | None, maps: dict[str, np.ndarray],
                cols: dict[str, np.ndarray], attrs: dict[str, Any],
                source_frame: int | None = None) -> Path:
    p = float(attrs["pixel_size_A"])
    h, w = maps["ce_depth"].shape
    extent = (-0.5 * p, (w - 0.5) * p, (h - 0.5) * p, -0.5 * p)  # pixel centres at c·p, r·p
    fig = _canvas(12.5, 5.4)
    ax_img, ax_conf = fig.subplots(1, 2)
    name = f"frame {t}" if source_frame in (None, t) else f"frame {t} (file frame {source_frame})"
    if image is not None:
        lo, hi = np.nanpercentile(image, [1, 99]) if np.isfinite(image).any() else (0, 1)
        ax_img.imshow(image, cmap="gray", extent=extent, vmin=lo, vmax=hi)
        ax_img.set_title(f"{name}: columns coloured by depth")
    else:
        ax_img.imshow(maps["ce_depth"], cmap="gray", extent=extent)
        ax_img.set_title(f"{name}: Ce depth map with columns")
    rows = _rows_of(cols, t)
    depth = cols["depth"][rows].astype(float)
    dmax = max(float(depth.max()) if depth.size else 1.0, 1.0)
    for species, marker, size, cmap in (("Ce", "o", 36, "viridis"), ("O", "s", 12, "cool")):
        sel = rows[cols["species"][rows] == species]
        sc = ax_img.scatter(cols["x"][sel], cols["y"][sel], c=cols["depth"][sel].astype(float),
                            cmap=cmap, vmin=1, vmax=dmax, s=size, marker=marker,
                            edgecolors="k", linewidths=0.3)
        fig.colorbar(sc, ax=ax_img, shrink=0.8, label=f"{species} depth [atoms]")
    ax_img.set_xlabel(f"x [Å]    ({pixel_size_note(attrs)})")
    ax_img.set_ylabel("y [Å]")
    conf = np.where(maps["ce_depth"] > 0, maps["ce_confidence"].astype(np.float32),
                    np.where(maps["o_depth"] > 0, maps["o_confidence"].astype(np.float32),
                             np.nan))
    im = ax_conf.imshow(conf, cmap="magma", vmin=0, vmax=1, extent=extent)
    ax_conf.set_title("confidence of the predicted depth (column pixels)")
    ax_conf.set_xlabel("x [Å]")
    fig.colorbar(im, ax=ax_conf, shrink=0.8, label="probability")
    return _save(fig, path)


def _time_axis(table: dict[str, np.ndarray], attrs: dict[str, Any]) -> tuple[np.ndarray, str]:
    """Time since the input file's first frame [s], or its frame number when the file
    gives no frame interval."""
    if "source_frame" in table:  # the frame's number in the input file (--frames)
        frame = table["source_frame"].astype(float)
        dt = float(attrs.get("source_frame_interval_s", math.nan))
    else:
        frame = table["frame"].astype(float)
        dt = float(attrs.get("frame_interval_s", math.nan))
    if math.isfinite(dt) and dt > 0:
        return frame * dt, "time [s]"
    return frame, "frame of the input file"


def _plot_tracks(path: Path, cols: dict[str, np.ndarray], events: dict[str, np.ndarray],
                 table: dict[str, np.ndarray], attrs: dict[str, Any]) -> Path:
    """Depth versus time of the tracks with events, Ce first, most events first.

    A column that appears (vanishes) is drawn from (to) depth 0 at the frame of the event.
    """
    fig = _canvas(8, 4.5)
    ax = fig.subplots()
    time, label = _time_axis(table, attrs)
    tracks, counts = np.unique(events["track"], return_counts=True)
    species_of = {int(t): sp for t, sp in zip(events["track"], events["species"], strict=True)}
    changes = {int(t): int(n) for t, n in zip(*np.unique(
        events["track"][events["kind"] == "depth_change"], return_counts=True), strict=True)}
    order = sorted(range(tracks.size), key=lambda i: (species_of[int(tracks[i])] != "Ce",
                                                      -changes.get(int(tracks[i]), 0),
                                                      -counts[i], int(tracks[i])))
    shown = [int(tracks[i]) for i in order[:MAX_TRACKS]]
    n_frames = len(time)
    for tr in shown:
        sel = np.flatnonzero(cols["track"] == tr)
        if not sel.size:
            continue
        frames = cols["frame"][sel].astype(int).tolist()
        depth = cols["depth"][sel].astype(float).tolist()
        mine = events["track"] == tr
        for kind, frame in zip(events["kind"][mine], events["frame"][mine], strict=True):
            if kind == "appeared" and frame > 0:
                frames.insert(0, int(frame) - 1)
                depth.insert(0, 0.0)
            elif kind == "vanished" and frame < n_frames:
                frames.append(int(frame))
                depth.append(0.0)
        species = species_of[tr]
        ax.step(time[frames], depth, where="post", ls="-" if species == "Ce" else "--",
                marker="o", ms=2, label=f"{species} track {tr}")
    if shown:
        ax.legend(fontsize=7, ncol=2)
        n_change = sum(1 for t in tracks if changes.get(int(t)))
        rest = tracks.size - n_change
        ax.set_title(f"{tracks.size} tracks with events: {n_change} changed depth"
                     + (f", {rest} only appeared or vanished" if rest else "")
                     + (f" ({len(shown)} shown)" if len(shown) < tracks.size else ""))
    else:
        ax.text(0.5, 0.5, "no events (no column changed, appeared or vanished)",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_title("tracks with events")
    ax.set_xlabel(label)
    ax.set_ylabel("depth [atoms]")
    return _save(fig, path)


def _plot_summary(path: Path, table: dict[str, np.ndarray], attrs: dict[str, Any]) -> Path:
    fig = _canvas(10, 6)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    time, label = _time_axis(table, attrs)
    valid = table["valid"].astype(bool)

    def series(name: str) -> np.ndarray:
        v = table[name].astype(float)
        return np.where(valid, v, np.nan)

    axes[0].plot(time, series("n_ce"), "o-", ms=3, label="Ce")
    axes[0].set_ylabel("n_ce [atoms]")
    axes[1].plot(time, series("n_o"), "s-", ms=3, color="C3")
    axes[1].set_ylabel("n_o [atoms]")
    axes[2].plot(time, series("o_ce_ratio"), "o-", ms=3, color="C2")
    axes[2].axhline(2.0, color="0.6", lw=0.8, ls=":")
    axes[2].set_ylabel("O/Ce (atoms)")
    axes[3].plot(time, series("radius_A"), "o-", ms=3, color="C4")
    axes[3].set_ylabel("equivalent radius [Å]")
    for ax in axes[2:]:
        ax.set_xlabel(label)
    title = f"{Path(str(attrs.get('source', ''))).name}  (model {attrs.get('model', '')})"
    dose = series("dose_e_per_A2") if "dose_e_per_A2" in table else np.full(len(valid), np.nan)
    if np.isfinite(dose).any():
        title += (f"\ndose per frame {np.nanmin(dose):.0f}–{np.nanmax(dose):.0f} e/Å² "
                  "(estimated from the shot noise)")
    fig.suptitle(title)
    return _save(fig, path)
