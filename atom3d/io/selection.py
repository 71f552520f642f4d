"""Part of a series: a range of its frames and a rectangle of each frame.

``atom3d predict --frames START:STOP[:STEP] --roi X,Y,W,H`` predicts only these: a long
in situ movie is often thousands of frames of 4096² px around a particle of a few
hundred pixels, and the network's time grows with both.

Conventions (stated once, here)
    Frames are numbered from 0 as in the file, and ``START:STOP:STEP`` is a Python
    slice: STOP is excluded (``100:200`` is 100 frames), STEP ≥ 1, and a single number
    is one frame. The rectangle is ImageJ's: X is the column and Y the row of its
    top-left pixel, W × H its size [px], all in the file's pixel grid. Every output of a
    run on a selection (maps, column positions x = c·p, y = r·p, drift, 3D models) is in
    the selection's own grid, whose pixel (0, 0) is the file's pixel (Y, X): add
    (X·p, Y·p) to a column's (x, y) to place it on the whole frame. Frame ``i`` of the
    results is frame ``START + i·STEP`` of the file (the ``source_frame`` field of
    ``/frames``), and ``frame_interval_s`` of the results is STEP times the file's.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from atom3d.errors import UserError

__all__ = ["FrameRange", "Roi", "SelectedSeries", "frame_range", "roi", "selection_attrs",
           "selection_note"]


@dataclass(frozen=True)
class FrameRange:
    """``START:STOP:STEP`` of a file's frames (STOP excluded; None: to the end)."""

    start: int = 0
    stop: int | None = None
    step: int = 1

    def __str__(self) -> str:
        stop = "" if self.stop is None else str(self.stop)
        return f"{self.start}:{stop}" + (f":{self.step}" if self.step != 1 else "")

    def indices(self, n_frames: int) -> range:
        """The file's frame indices selected from a file of ``n_frames`` frames.

        Raises
        ------
        UserError
            If the range selects no frame of the file.
        """
        stop = n_frames if self.stop is None else min(self.stop, n_frames)
        picked = range(self.start, stop, self.step)
        if not len(picked):
            last = f"0–{n_frames - 1}" if n_frames > 1 else "0"
            raise UserError(f"--frames {self}: no frame selected; the file has {n_frames} "
                            f"frame{'s' if n_frames != 1 else ''} ({last})")
        return picked


@dataclass(frozen=True)
class Roi:
    """A rectangle of a frame: top-left pixel (column X, row Y) and size W × H [px]."""

    x: int
    y: int
    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.x},{self.y},{self.width},{self.height}"

    def check(self, shape: tuple[int, int]) -> None:
        """Raise :class:`UserError` unless the rectangle lies inside frames of ``shape``
        (H, W)."""
        h, w = shape
        if self.x + self.width > w or self.y + self.height > h:
            raise UserError(
                f"--roi {self}: the rectangle (columns {self.x}–{self.x + self.width - 1}, "
                f"rows {self.y}–{self.y + self.height - 1}) reaches outside the frames of "
                f"{w} × {h} px (width × height)")


def frame_range(text: str) -> FrameRange:
    """argparse type of ``--frames``: ``START:STOP[:STEP]``, ``START:``, ``:STOP``,
    ``::STEP`` or one frame ``N`` (0-based, STOP excluded)."""
    parts = text.strip().split(":")
    bad = argparse.ArgumentTypeError(
        f"expected frames as START:STOP[:STEP] (0-based, STOP excluded, e.g. 100:200 or "
        f"::5) or one frame number, got {text!r}")
    if not 1 <= len(parts) <= 3:
        raise bad
    try:
        values = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        raise bad from None
    if any(v is not None and v < 0 for v in values):
        raise argparse.ArgumentTypeError(
            f"{text!r}: frame numbers count from 0 and the step from 1")
    if len(values) == 1:
        if values[0] is None:
            raise bad
        return FrameRange(values[0], values[0] + 1, 1)
    start = values[0] or 0
    stop = values[1]
    step = values[2] if len(values) == 3 and values[2] is not None else 1
    if step < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the step must be >= 1")
    if stop is not None and stop <= start:
        raise argparse.ArgumentTypeError(
            f"{text!r}: STOP must be after START (STOP is excluded: {start}:"
            f"{start + 1} is frame {start} alone)")
    return FrameRange(start, stop, step)


def roi(text: str) -> Roi:
    """argparse type of ``--roi``: ``X,Y,W,H`` [px] (ImageJ's rectangle)."""
    parts = text.replace(" ", "").split(",")
    bad = argparse.ArgumentTypeError(
        f"expected a rectangle X,Y,W,H in pixels (top-left column and row, width, height; "
        f"e.g. 1024,800,512,512), got {text!r}")
    if len(parts) != 4:
        raise bad
    try:
        x, y, w, h = (int(p) for p in parts)
    except ValueError:
        raise bad from None
    if x < 0 or y < 0 or w < 1 or h < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: X and Y must be >= 0, the width and height >= 1 px")
    return Roi(x, y, w, h)


class SelectedSeries:
    """A series seen through a frame range and a rectangle (the interface of
    :class:`atom3d.io.readers.Series` that prediction uses).

    Frame ``i`` is frame :meth:`source_frame` (i) of the file, cropped to the rectangle.
    ``pixel_size_A`` is the file's and may be set (``--pixel-size lattice``);
    ``frame_interval_s`` [s] is the step times the file's.
    """

    def __init__(self, series: Any, frames: FrameRange | None = None,
                 region: Roi | None = None) -> None:
        n, shape = int(series.n_frames), tuple(int(s) for s in series.shape)
        self.series = series
        self.frames = frames or FrameRange()
        self._indices = self.frames.indices(n)
        self.roi = region or Roi(0, 0, shape[1], shape[0])
        self.roi.check(shape)
        self.path = series.path
        self.format = getattr(series, "format", "")
        self.signal_note = getattr(series, "signal_note", "")
        self.n_frames = len(self._indices)
        self.shape = (self.roi.height, self.roi.width)
        self.pixel_size_A = float(series.pixel_size_A)
        self.source_n_frames = n
        self.source_shape = shape
        self.source_frame_interval_s = float(series.frame_interval_s)
        self.frame_interval_s = self.frames.step * self.source_frame_interval_s

    @property
    def whole(self) -> bool:
        """True when every frame and every pixel of the file is selected."""
        return (self.n_frames == self.source_n_frames and self.frames.step == 1
                and self.shape == self.source_shape)

    def source_frame(self, i: int) -> int:
        """Index in the file of frame ``i`` of the selection."""
        return self._indices[i]

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` of the selection (float32 (H, W), the rectangle only).

        Raises
        ------
        IndexError
            If ``i`` is out of range.
        """
        if not -self.n_frames <= i < self.n_frames:
            raise IndexError(f"frame {i} out of range for {self.n_frames} frames")
        image = self.series.frame(self._indices[i])
        r = self.roi
        if self.shape == tuple(image.shape):
            return image
        return np.ascontiguousarray(image[r.y:r.y + r.height, r.x:r.x + r.width])

    def __iter__(self):
        for i in range(self.n_frames):
            yield self.frame(i)

    def __len__(self) -> int:
        return self.n_frames

    def close(self) -> None:
        """Close the underlying series."""
        self.series.close()

    def __enter__(self) -> SelectedSeries:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def selection_attrs(series: Any) -> dict[str, Any]:
    """Results-file root attributes that say which part of the file was predicted:
    ``source_frames`` [start, stop, step] (stop excluded), ``source_n_frames``,
    ``roi_px`` [X, Y, W, H] of the file's frames, ``source_frame_shape_px`` [H, W] and
    ``source_frame_interval_s`` [s] (NaN if unknown). A plain series is all of its file.
    """
    if isinstance(series, SelectedSeries):
        idx, r = series._indices, series.roi
        return {
            "source_frames": [int(idx.start), int(idx.stop), int(idx.step)],
            "source_n_frames": int(series.source_n_frames),
            "roi_px": [r.x, r.y, r.width, r.height],
            "source_frame_shape_px": list(series.source_shape),
            "source_frame_interval_s": float(series.source_frame_interval_s),
        }
    n = int(series.n_frames)
    h, w = (int(s) for s in series.shape)
    interval = float(getattr(series, "frame_interval_s", math.nan))
    return {"source_frames": [0, n, 1], "source_n_frames": n, "roi_px": [0, 0, w, h],
            "source_frame_shape_px": [h, w], "source_frame_interval_s": interval}


def selection_note(attrs: Any) -> str:
    """Which frames and which rectangle of the input file ``attrs`` (the keys of
    :func:`selection_attrs`) cover, in words; '' for the whole file (or attributes written
    before selections existed)."""
    try:
        start, stop, step = (int(v) for v in attrs["source_frames"])
        x, y, w, h = (int(v) for v in attrs["roi_px"])
        n_source = int(attrs["source_n_frames"])
        full_h, full_w = (int(v) for v in attrs["source_frame_shape_px"])
    except (KeyError, TypeError, ValueError):
        return ""
    picked = range(start, stop, step)
    parts = []
    if len(picked) != n_source:
        every = f", one in {step}" if step > 1 else ""
        span = f"frame {picked[0]}" if len(picked) == 1 else (
            f"frames {picked[0]}–{picked[-1]}{every}")
        parts.append(f"{span} of the file's {n_source}")
    if (w, h) != (full_w, full_h):
        parts.append(f"the rectangle x {x}–{x + w - 1}, y {y}–{y + h - 1} px of its "
                     f"{full_w} × {full_h} (positions relative to its corner)")
    return "; ".join(parts)
