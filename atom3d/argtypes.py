"""argparse value types shared by every sub-command (one clear line on bad values)."""

from __future__ import annotations

import argparse
import math


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


#: The value of ``--pixel-size`` that measures the pixel size from the CeO2 lattice.
LATTICE = "lattice"


def pixel_size_or_lattice(text: str) -> float | str:
    """A pixel size > 0 [Å/px], or ``'lattice'`` (measure it from the frames)."""
    if text.strip().lower() == LATTICE:
        return LATTICE
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a pixel size in Å/px or 'lattice', got {text!r}") from None


def _integer(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _integer(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An integer >= 0 (counts, seeds)."""
    return _integer(text, 0, "an integer >= 0")


#: Allowed numbers of network passes of test-time augmentation: 1 (off), 4 (mirrors) or
#: 8 (mirrors and transposes); :mod:`atom3d.inference.predictor` runs them.
TTA_PASSES = (1, 4, 8)


def tta_passes(text: str) -> int:
    """Network passes of test-time augmentation, one of :data:`TTA_PASSES`."""
    value = _integer(text, 1, "1, 4 or 8")
    if value not in TTA_PASSES:
        raise argparse.ArgumentTypeError(f"expected 1, 4 or 8 passes, got {value}")
    return value


def add_tta_arguments(p: argparse.ArgumentParser, default: int = 1) -> None:
    """``--tta`` (8 passes), ``--no-tta`` (1) and ``--tta-passes N``, all into ``args.tta``."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--tta", dest="tta", action="store_const", const=8,
                       help="test-time augmentation: average the network over the 8 "
                            "orientations of each frame (the frame, its mirror images and "
                            "their transposes); 8x the network time, more exact depths and "
                            "less depth noise between frames, so more real changes are found"
                            + (" (default)" if default == 8 else ""))
    group.add_argument("--no-tta", dest="tta", action="store_const", const=1,
                       help="one network pass per frame" + (" (default)" if default == 1 else
                                                            ": 8x faster, for long series on "
                                                            "a CPU"))
    group.add_argument("--tta-passes", dest="tta", type=tta_passes, metavar="N",
                       help="test-time augmentation with N = 1, 4 (the frame and its three "
                            "mirror images) or 8 passes")
    p.set_defaults(tta=default)
