"""Arguments of ``atom3d predict`` (light: importing this module does not import torch).

:mod:`atom3d.cli` builds every sub-command's parser at start-up; keeping the predict
arguments here keeps ``atom3d --help`` and the other commands fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from atom3d.argtypes import add_tta_arguments, pixel_size_or_lattice, positive_float
from atom3d.argtypes import non_negative_int as _non_negative_int
from atom3d.argtypes import positive_int as _positive_int
from atom3d.io.selection import frame_range, roi
from atom3d.models import DEFAULT_MODEL

__all__ = ["PREDICT_DESCRIPTION", "build_predict_parser", "configure_predict_parser"]


PREDICT_DESCRIPTION = (
    "Predict the atomic columns of CeO2 in HRTEM images or series: for every frame, the "
    "Ce and O columns (positions x, y in Å, pixel (r, c) at x = c·p, y = r·p), their depth "
    "(atoms per column) and its calibrated probability, per-pixel depth and confidence "
    "maps on the input pixel grid, and over time: drift [Å], column tracks, smoothed "
    "depths and events (columns appearing, vanishing, changing depth). Inputs: dm3/dm4, "
    "emd, ser/emi, mrc, tif (ImageJ calibration), hspy/h5, zarr, npy, or a directory of "
    "single-image files read as one series (an image sequence). Output: an HDF5 "
    "results file (format atom3d.columns v1), written atomically."
)


def configure_predict_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``atom3d predict`` arguments to ``p`` (a parser or sub-parser)."""
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                   help="image or series file(s), zarr directory, or a directory of "
                        "single-image files (an image sequence: one frame per file, in "
                        "natural order of their names, sub-directories included)")
    p.add_argument("-o", "--out", required=True, type=Path, metavar="OUT.h5|OUTDIR",
                   help="results file (*.h5) for one input; a directory for several inputs "
                        "(one INPUT-stem.h5 each)")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME|DIR",
                   help=f"packaged model name or model directory (default {DEFAULT_MODEL})")
    p.add_argument("--pixel-size", type=pixel_size_or_lattice, default=None,
                   metavar="A|lattice",
                   help="input pixel size [Å/px], overriding the file's calibration "
                        "(required for files without one, e.g. .npy; square pixels); 'lattice': "
                        "measure it from the CeO2 [110] lattice in the frames (searched within "
                        "±25 %% of the file's calibration, then over 0.05–0.66 Å/px). Every "
                        "run checks the calibration against the lattice and warns when they "
                        "differ by more than the model tolerates (±5 %%)")
    p.add_argument("--frame-interval", type=positive_float, default=None, metavar="S",
                   help="time between the file's frames [s], overriding the file's (image "
                        "sequences, .npy and many TIFF files record none); times in the "
                        "results and figures use it")
    p.add_argument("--frames", type=frame_range, default=None, metavar="START:STOP[:STEP]",
                   help="predict only these frames of each input, numbered from 0 as in the "
                        "file, STOP excluded (a Python slice): '100:200' is 100 frames, "
                        "'::10' one frame in ten, '7' frame 7 alone (default: all). /frames "
                        "keeps each frame's number in the file (source_frame)")
    p.add_argument("--roi", type=roi, default=None, metavar="X,Y,W,H",
                   help="predict only this rectangle of each frame [px]: top-left column X "
                        "and row Y, width W and height H, as ImageJ's rectangle (default: "
                        "the whole frame). Maps and positions are then relative to its "
                        "top-left corner: add (X·p, Y·p) Å for the whole frame")
    p.add_argument("--device", default="cpu", metavar="cpu|cuda",
                   help="where the network runs (default cpu; 'cuda' or 'cuda:N')")
    p.add_argument("--half", action="store_true",
                   help="half-precision (float16) network on CUDA")
    p.add_argument("--batch-size", type=_positive_int, default=4, metavar="B",
                   help="tiles (or whole frames that fit in one tile) per batch (default "
                        "4); on a GPU one forward pass each, memory growing with batch × "
                        "tile²; on a CPU the network takes them one at a time, as fast")
    p.add_argument("--tile", type=_positive_int, default=512, metavar="PX",
                   help="largest tile side [px] on the model's pixel grid (default 512); "
                        "frames that fit are predicted whole, larger ones in the fewest "
                        "tiles that cover them")
    p.add_argument("--overlap", type=_non_negative_int, default=64, metavar="PX",
                   help="minimum overlap of neighbouring tiles [px] on the model grid "
                        "(default 64)")
    add_tta_arguments(p, default=8)
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from OUT.h5.partial (same input and "
                        "model); a complete OUT.h5 for the same input and model is kept")
    p.add_argument("--smoothing", choices=("changepoint", "changepoint-levels", "hmm", "none"),
                   default="changepoint",
                   help="depth smoothing along column tracks of a series: 'changepoint' "
                        "(default: constant depth between the changes that shot noise "
                        "cannot explain; Ce columns are cut where the image around them "
                        "changes, within 1.5 Å), 'changepoint-levels' (every column cut "
                        "where its expected depth changes, the rule before session 12), "
                        "'hmm' (hidden Markov model) or 'none'")
    p.add_argument("--no-smooth", action="store_true",
                   help="keep frame-by-frame column depths (same as --smoothing none)")
    p.add_argument("--frame-columns", action="store_true",
                   help="report the columns each frame finds on its own (the model's "
                        "column threshold) instead of deciding over time (default for "
                        "series of >= 3 frames: a faint column present in most frames is "
                        "reported, a one-frame ghost is not)")
    p.add_argument("--figures", type=Path, default=None, metavar="DIR",
                   help="also draw figures (PNG) into DIR")
    p.add_argument("--xyz", type=Path, default=None, metavar="DIR",
                   help="also write one extended-XYZ 3D model per frame into DIR "
                        "(positions in Å)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def build_predict_parser() -> argparse.ArgumentParser:
    """A stand-alone parser for ``atom3d predict``."""
    return configure_predict_parser(argparse.ArgumentParser(
        prog="atom3d predict", description=PREDICT_DESCRIPTION))
