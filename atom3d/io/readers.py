"""Read HRTEM images and image series from microscope files.

Every supported file becomes a :class:`Series`: a lazily readable stack of
frames of ``(H, W)`` pixels with one square pixel size in Å and, when the file
records it, the time between frames in seconds. Frames are read one at a time
(memory maps, HDF5/zarr datasets, TIFF pages or dask arrays), so memory does not
grow with the length of the series.

Supported formats, chosen from the file extension (and checked against the first
bytes of the file where that is cheap):

============================  ============================  ========================
extension                     format label                  read with
============================  ============================  ========================
``.dm3`` ``.dm4``             ``dm3`` ``dm4``               ``rsciio.digitalmicrograph``
``.emd``                      ``emd-velox`` ``emd-berkeley``  ``rsciio.emd``
                              ``emd-prismatic``
``.emi`` ``.ser``             ``tia-emi`` ``tia-ser``       ``rsciio.tia``
``.mrc`` ``.mrcs``            ``mrc``                       ``mrcfile``
``.tif`` ``.tiff``            ``tiff-imagej`` ``tiff-dm``   ``tifffile`` (+ ``rsciio.tiff``
                              ``tiff``                      for vendor calibration)
``.hspy`` ``.h5`` ``.hdf5``   ``hspy`` (or ``emd-*``,       ``rsciio.hspy`` / ``h5py``
                              ``hdf5``)
``.zarr`` (directory)         ``zarr``                      ``zarr``
``.npy``                      ``npy``                       ``numpy.load(mmap_mode='r')``
other directory               ``sequence-<format>``         one of the above per file
============================  ============================  ========================

Policy, decided once here:

* A 2-D array is one image; a 3-D array is ``(frames, H, W)``; extra axes of
  length 1 are ignored. Anything else (1-D data, 4-D data, spectra, colour
  images, complex data) is refused with :class:`~atom3d.errors.InputFileError`.
* Non-square pixels are **refused**, not resampled: resampling would silently
  change the noise statistics the model was trained on. The message gives both
  sizes. ``pixel_size_A`` overrides the file's calibration, including this check.
* A calibration coarser than :data:`MAX_PIXEL_SIZE_A` is refused: such a file is
  not an atomic-resolution HRTEM image (or its calibration is wrong).
* When a file holds several signals, the largest 2-D image or 3-D image stack is
  taken and :attr:`Series.signal_note` says which.
* A directory that is not a zarr store is an **image sequence**: its image files (in
  sub-directories too, as Gatan's in situ capture writes them; hidden files and other
  extensions skipped), one frame each, in natural order of their paths
  (``frame_2`` before ``frame_10``). When it holds several kinds of image file, the most
  numerous kind is taken and :attr:`Series.signal_note` says so. Every file must hold
  one image of the first file's shape and pixel size; a file that does not is an
  :class:`~atom3d.errors.InputFileError` when its frame is read (``atom3d predict``
  then marks that frame invalid and goes on). The frame interval is the time from the
  first file's acquisition to the last one's over the number of intervals, when both
  files record it finely enough (:func:`atom3d.io.metadata.sequence_interval`: Gatan's
  FILETIME, a vendor's date and time, FEI XML ``time``, the TIFF ``DateTime`` tag); NaN
  otherwise.
* A TIFF with FEI/Thermo Fisher XML metadata (tag 34683, ``FEI_TITAN``) takes its pixel
  size from it (format label ``tiff-fei``; :mod:`atom3d.io.metadata`).
* Every exception raised by an underlying parser is re-raised as
  :class:`~atom3d.errors.InputFileError` with one line naming the file.
* HDF5-based files (EMD, HyperSpy, HDF5) are first parsed once in a forked child
  (POSIX only): libhdf5 can loop forever or crash on a corrupt file, which no
  ``except`` clause can catch. A hang (see :data:`ISOLATED_PARSE_TIMEOUT_S`) or a
  crash of the child becomes an InputFileError.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from atom3d.errors import ConfigError, InputFileError
from atom3d.io.metadata import (
    FEI_XML_TAG,
    Stamp,
    fei_xml_calibration,
    fei_xml_stamp,
    parse_fei_xml,
    rsciio_stamp,
    sequence_interval,
    tiff_datetime_stamp,
)

__all__ = ["MAX_PIXEL_SIZE_A", "Series", "is_image_input", "open_series", "to_angstrom"]

#: Coarsest pixel size accepted [Å/px]; coarser files are refused.
MAX_PIXEL_SIZE_A = 1.0

#: Longest a forked trial parse of an HDF5-based file may take [s].
ISOLATED_PARSE_TIMEOUT_S = 30.0

#: Largest relative difference between y and x pixel sizes still called square.
SQUARE_TOLERANCE = 1e-3

_LENGTH_UNITS_A = {
    **dict.fromkeys(("m", "meter", "meters", "metre", "metres"), 1e10),
    **dict.fromkeys(("cm", "centimeter", "centimeters", "centimetre", "centimetres"), 1e8),
    **dict.fromkeys(("mm", "millimeter", "millimeters", "millimetre", "millimetres"), 1e7),
    **dict.fromkeys(
        ("µm", "um", "micron", "microns", "micrometer", "micrometers", "micrometre", "micrometres"),
        1e4,
    ),
    **dict.fromkeys(("nm", "n_m", "nanometer", "nanometers", "nanometre", "nanometres"), 10.0),
    **dict.fromkeys(("å", "a", "ang", "angstrom", "angstroms", "ångström"), 1.0),
    **dict.fromkeys(("pm", "picometer", "picometers", "picometre", "picometres"), 1e-2),
}

_TIME_UNITS_S = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("ms", "msec", "millisecond", "milliseconds"), 1e-3),
    **dict.fromkeys(("µs", "us", "usec", "microsecond", "microseconds"), 1e-6),
    **dict.fromkeys(("ns", "nanosecond", "nanoseconds"), 1e-9),
    **dict.fromkeys(("min", "mins", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hour", "hours"), 3600.0),
}

# Units that mean "not calibrated" rather than "unknown unit".
_UNCALIBRATED_UNITS = {"", "px", "pixel", "pixels", "<undefined>", "undefined", "none"}

# Loggers of the parsers, silenced while a file is parsed.
_PARSER_LOGGERS = ("tifffile", "rsciio", "mrcfile", "h5py", "zarr")

# Signal types (HyperSpy/RosettaSciIO metadata) that are spectra, never images.
_SPECTRAL_SIGNAL_TYPES = {"EELS", "EDS", "EDS_TEM", "EDS_SEM", "CL", "CL_SEM", "CL_STEM"}

# First bytes of formats that are cheap to recognise: (prefix, kind).
_MAGIC = (
    (b"\x89HDF\r\n\x1a\n", "HDF5"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"\x93NUMPY", "NumPy"),
    (b"\x00\x00\x00\x03", "DM"),
    (b"\x00\x00\x00\x04", "DM"),
    (b"II\x97\x01", "TIA SER"),
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF8", "GIF image"),
    (b"%PDF", "PDF"),
    (b"PK\x03\x04", "ZIP archive"),
)


def to_angstrom(value: float, unit: str | None) -> float:
    """Convert a length to Å.

    Parameters
    ----------
    value : float
        Length in ``unit``.
    unit : str or None
        One of m, cm, mm, µm (also ``um``, ``micron``), nm (also ``n_m``),
        Å (also ``A``, ``angstrom``) or pm; case and surrounding spaces are
        ignored, and ImageJ's escaped form (``\\u00B5m``) is understood.

    Returns
    -------
    float
        The length [Å].

    Raises
    ------
    InputFileError
        If ``unit`` is missing or not a length unit.
    """
    factor = _LENGTH_UNITS_A.get(_normalize_unit(unit))
    if factor is None:
        raise InputFileError(f"unknown length unit {unit!r} (expected m, mm, µm, nm, Å or pm)")
    return float(value) * factor


def _normalize_unit(unit: object) -> str:
    """Return a unit string folded to the keys of the unit tables."""
    if unit is None:
        return ""
    text = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), str(unit))
    text = text.replace("\u212b", "\u00c5").replace("\u03bc", "\u00b5")  # Å sign, Greek mu
    text = text.strip().replace(" ", "").lower()
    if len(text) >= 2 and text[0] + text[-1] in ("[]", "()"):  # Berkeley EMD: "[n_m]", "[]"
        text = text[1:-1]
    return text


def _time_to_seconds(value: float, unit: str | None) -> float:
    """Return ``value`` [``unit``] in seconds, NaN if it is not a valid time."""
    factor = _TIME_UNITS_S.get(_normalize_unit(unit))
    if factor is None or value is None:
        return math.nan
    seconds = float(value) * factor
    return seconds if math.isfinite(seconds) and seconds > 0 else math.nan


# --------------------------------------------------------------------------- Series


@dataclass(frozen=True)
class _Axis:
    """Calibration of one axis as stored in the file.

    Attributes
    ----------
    scale : float or None
        Step between pixels [``units``]; None if the file has none.
    units : str or None
        Unit of ``scale`` as written in the file.
    """

    scale: float | None = None
    units: str | None = None


@dataclass(frozen=True)
class _FrameView:
    """Lazy ``(frames, H, W)`` view of an array whose other axes have length 1.

    Attributes
    ----------
    array : array-like
        Any array with ``shape``, ``dtype`` and NumPy-style indexing (NumPy
        memmap, h5py dataset, zarr array, dask array); its last two axes are
        (y, x).
    frame_axis : int or None
        Axis of ``array`` that counts frames; None for a single image.
    """

    array: Any
    frame_axis: int | None

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return 1 if self.frame_axis is None else int(self.array.shape[self.frame_axis])

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W) of one frame [px]."""
        height, width = self.array.shape[-2:]
        return int(height), int(width)

    def read(self, i: int) -> np.ndarray:
        """Read frame ``i`` only, as float32 (H, W)."""
        index = [0] * (len(self.array.shape) - 2)
        if self.frame_axis is not None:
            index[self.frame_axis] = i
        block = self.array[(*index, Ellipsis)]
        if hasattr(block, "compute"):
            block = block.compute(scheduler="synchronous")
        return np.ascontiguousarray(block, dtype=np.float32)


class Series:
    """A lazily readable HRTEM image series (a single image is a series of one).

    Attributes
    ----------
    path : str
        The file (or zarr directory) read.
    format : str
        Format label, e.g. ``'dm4'``, ``'emd-velox'``, ``'tiff-imagej'``.
    n_frames : int
        Number of frames.
    shape : tuple of int
        (H, W) of one frame [px].
    pixel_size_A : float
        Square pixel size [Å/px].
    frame_interval_s : float
        Time between frames [s]; NaN if the file does not record it.
    signal_note : str
        Which signal was taken when the file held several, '' otherwise.
    acquired : Stamp or None
        When the file (its first frame) was acquired, if it says so
        (:class:`atom3d.io.metadata.Stamp`).
    """

    def __init__(
        self,
        *,
        path: str,
        format: str,  # noqa: A002 - public attribute name of the contract
        view: _FrameView,
        pixel_size_A: float,
        frame_interval_s: float = math.nan,
        signal_note: str = "",
        closers: tuple[Callable[[], Any], ...] = (),
        acquired: Stamp | None = None,
    ) -> None:
        self.path = path
        self.format = format
        self.n_frames = view.n_frames
        self.shape = view.frame_shape
        self.pixel_size_A = float(pixel_size_A)
        self.frame_interval_s = float(frame_interval_s)
        self.signal_note = signal_note
        self.acquired = acquired
        self._view = view
        self._closers = closers

    def frame(self, i: int) -> np.ndarray:
        """Read one frame.

        Parameters
        ----------
        i : int
            Frame index; negative values count from the end.

        Returns
        -------
        numpy.ndarray
            float32 (H, W) intensities [counts, as stored].

        Raises
        ------
        IndexError
            If ``i`` is out of range.
        InputFileError
            If the frame's bytes cannot be read (truncated or corrupt file).
        """
        if not -self.n_frames <= i < self.n_frames:
            raise IndexError(f"frame {i} out of range for {self.n_frames} frames")
        i %= self.n_frames
        try:
            image = self._view.read(i)
        except Exception as exc:  # any parser failure is a bad file for the user
            raise InputFileError(f"{self.path}: cannot read frame {i}: {_reason(exc)}") from exc
        if image.shape != self.shape:
            raise InputFileError(
                f"{self.path}: frame {i} has shape {image.shape}, expected {self.shape}"
            )
        return image

    def __iter__(self) -> Iterator[np.ndarray]:
        """Yield frames one at a time (float32 (H, W))."""
        for i in range(self.n_frames):
            yield self.frame(i)

    def __len__(self) -> int:
        """Number of frames."""
        return self.n_frames

    def close(self) -> None:
        """Release the file handles this series opened (safe to call twice)."""
        closers, self._closers = self._closers, ()
        for close in closers:
            try:
                close()
            except Exception:  # noqa: S110 - a failing close must not mask anything
                pass

    def __enter__(self) -> Series:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Series({self.path!r}, format={self.format!r}, n_frames={self.n_frames}, "
            f"shape={self.shape}, pixel_size_A={self.pixel_size_A:.5g}, "
            f"frame_interval_s={self.frame_interval_s:.5g})"
        )


# --------------------------------------------------------------------------- entry point


@dataclass
class _Raw:
    """What a format reader found, before validation.

    Attributes
    ----------
    array : array-like
        Lazily indexable data; the last two axes are (y, x).
    format : str
        Format label.
    y, x : _Axis
        Pixel calibration as stored.
    frame_interval_s : float
        Time between frames [s]; NaN if unknown.
    signal_note : str
        Which signal was taken when there were several.
    closers : list of callables
        Called by :meth:`Series.close`.
    acquired : Stamp or None
        When the file was acquired, if it says so.
    """

    array: Any
    format: str
    y: _Axis = field(default_factory=_Axis)
    x: _Axis = field(default_factory=_Axis)
    frame_interval_s: float = math.nan
    signal_note: str = ""
    closers: list[Callable[[], Any]] = field(default_factory=list)
    acquired: Stamp | None = None


def open_series(path: str | os.PathLike[str], pixel_size_A: float | None = None, *,
                uncalibrated_ok: bool = False) -> Series:
    """Open an HRTEM image or image series without reading its frames.

    Parameters
    ----------
    path : str or os.PathLike
        Image file, or zarr directory.
    pixel_size_A : float, optional
        Pixel size [Å/px] that overrides the file's calibration (needed for
        files without one, such as ``.npy``).
    uncalibrated_ok : bool
        Without ``pixel_size_A``, a missing or unusable calibration (none, not a length,
        non-square, too coarse) gives ``pixel_size_A`` NaN instead of an error: the
        caller measures it (``atom3d predict --pixel-size lattice``).

    Returns
    -------
    Series
        The lazily readable series.

    Raises
    ------
    InputFileError
        If the file is missing, unreadable, empty, of unknown type, corrupt,
        not an image or image stack, or has no usable calibration.
    ConfigError
        If ``pixel_size_A`` is not a positive number or is too coarse.
    """
    override = _check_override(pixel_size_A)
    p = _check_path(Path(path))
    if p.is_dir() and not _is_zarr_dir(p):
        return _open_sequence(p, override, uncalibrated_ok)
    fmt = _pick_format(p)
    if fmt.isolate:
        _parse_in_child(fmt, p)
    raw = _run_reader(fmt, p)
    try:
        return _build_series(p, raw, override, uncalibrated_ok)
    except Exception:
        for close in raw.closers:
            close()
        raise


def _run_reader(fmt: _Format, path: Path) -> _Raw:
    """Call a format reader, turning any parser failure into InputFileError."""
    try:
        with _quiet_parsers():
            return fmt.reader(path)
    except InputFileError:
        raise
    except Exception as exc:  # any parser failure is a bad file for the user
        raise InputFileError(
            f"{path}: not a readable {fmt.label} file (corrupt or truncated?): {_reason(exc)}"
        ) from exc


def _parse_in_child(fmt: _Format, path: Path) -> None:
    """Parse ``path`` (and read its first and last frame) in a forked child first.

    A parser that hangs or crashes in the child becomes an InputFileError here;
    an ordinary parser error is left for the in-process read to report. Where
    ``os.fork`` does not exist (Windows) this guard is skipped.

    Raises
    ------
    InputFileError
        If the child did not finish within :data:`ISOLATED_PARSE_TIMEOUT_S` or
        was killed by a signal.
    """
    if not hasattr(os, "fork"):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, 3.12+
        pid = os.fork()
    if pid == 0:  # child: never returns
        os._exit(_child_parse(fmt, path))
    status = _wait_child(pid, ISOLATED_PARSE_TIMEOUT_S)
    if status is None:
        raise InputFileError(
            f"{path}: reading this {fmt.label} file did not finish within "
            f"{ISOLATED_PARSE_TIMEOUT_S:g} s (corrupt file?)"
        )
    if os.WIFSIGNALED(status):
        raise InputFileError(f"{path}: the {fmt.label} parser crashed on this file (corrupt?)")


def _child_parse(fmt: _Format, path: Path) -> int:
    """Exit code of a trial read in the forked child: 0 read, 1 failed."""
    try:
        with _quiet_parsers():
            view = _frame_view(path, fmt.reader(path).array)
            view.read(0)
            view.read(view.n_frames - 1)
    except BaseException:  # the parent reports ordinary errors itself
        return 1
    return 0


def _wait_child(pid: int, timeout_s: float) -> int | None:
    """Wait status of child ``pid``, or None after killing it at ``timeout_s`` [s]."""
    deadline = time.monotonic() + timeout_s
    delay = 0.001
    try:
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            time.sleep(delay)
            delay = min(2 * delay, 0.05)
    except BaseException:  # e.g. Ctrl-C: never leave a spinning child behind
        _kill_child(pid)
        raise
    _kill_child(pid)
    return None


def _kill_child(pid: int) -> None:
    """Kill and reap child ``pid`` if it still exists."""
    with suppress(ProcessLookupError, ChildProcessError):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


@contextmanager
def _quiet_parsers() -> Iterator[None]:
    """Silence the parsers' warnings and log chatter about file quirks.

    Whatever matters reaches the user as the one line of an InputFileError.
    """
    loggers = [logging.getLogger(name) for name in _PARSER_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _reason(exc: BaseException) -> str:
    """One short line describing ``exc``."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _check_override(pixel_size_A: float | None) -> float | None:
    """Validate the ``--pixel-size`` override [Å/px]."""
    if pixel_size_A is None:
        return None
    try:
        value = float(pixel_size_A)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"--pixel-size must be a positive number of Å, got {pixel_size_A!r}")
    if value > MAX_PIXEL_SIZE_A:
        raise ConfigError(
            f"--pixel-size {value:.4g} Å is too coarse for atomic-resolution HRTEM "
            f"(needs ≤ {MAX_PIXEL_SIZE_A:g} Å/px)"
        )
    return value


def _check_path(path: Path) -> Path:
    """Refuse paths that cannot be an input file before any parser sees them."""
    if not path.exists():
        raise InputFileError(f"{path}: file does not exist")
    if path.is_dir():  # a zarr store, or an image sequence (:func:`_open_sequence`)
        return path
    if not os.access(path, os.R_OK):
        raise InputFileError(f"{path}: cannot be read (permission denied)")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputFileError(f"{path}: cannot be read: {_reason(exc)}") from exc
    if size == 0:
        raise InputFileError(f"{path}: file is empty")
    return path


def _is_zarr_dir(path: Path) -> bool:
    """True if ``path`` is a directory that looks like a zarr store."""
    markers = ("zarr.json", ".zgroup", ".zarray")
    return path.suffix.lower() == ".zarr" or any((path / m).exists() for m in markers)


def _sniff(path: Path) -> str | None:
    """Return the kind of file its first bytes announce, or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise InputFileError(f"{path}: cannot be read: {_reason(exc)}") from exc
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)


# --------------------------------------------------------------------------- validation


def _build_series(path: Path, raw: _Raw, override: float | None,
                  uncalibrated_ok: bool = False) -> Series:
    """Validate what a reader found and wrap it in a Series."""
    view = _frame_view(path, raw.array)
    _check_dtype(path, view.array.dtype)
    if override is not None:
        pixel = override
    else:
        try:
            pixel = _file_pixel_size_A(path, raw.y, raw.x)
        except InputFileError:
            if not uncalibrated_ok:
                raise
            pixel = math.nan
    return Series(
        path=str(path),
        format=raw.format,
        view=view,
        pixel_size_A=pixel,
        frame_interval_s=raw.frame_interval_s if view.n_frames > 1 else math.nan,
        signal_note=raw.signal_note,
        closers=tuple(raw.closers),
        acquired=raw.acquired,
    )


def _frame_view(path: Path, array: Any) -> _FrameView:
    """Interpret ``array`` as one image or a stack of images, or refuse it."""
    shape = tuple(int(n) for n in array.shape)
    if any(n == 0 for n in shape):
        raise InputFileError(f"{path}: holds an empty array (shape {shape})")
    if len(shape) < 2 or min(shape[-2:]) < 2:
        raise InputFileError(
            f"{path}: holds {_meaningful_ndim(shape)}-D data (shape {shape}), "
            "not an image or a stack of images"
        )
    long_axes = [k for k, n in enumerate(shape[:-2]) if n > 1]
    if len(long_axes) > 1:
        raise InputFileError(
            f"{path}: holds {len(long_axes) + 2}-D data (shape {shape}), "
            "not an image or a stack of images"
        )
    return _FrameView(array, long_axes[0] if long_axes else None)


def _meaningful_ndim(shape: tuple[int, ...]) -> int:
    """Number of axes longer than 1 (at least 1)."""
    return max(1, sum(n > 1 for n in shape))


def _check_dtype(path: Path, dtype: Any) -> None:
    """Refuse data that is not real-valued intensities."""
    dtype = np.dtype(dtype)
    if dtype.fields is not None:
        raise InputFileError(
            f"{path}: holds a colour (RGB) image; convert it to a greyscale intensity image"
        )
    if dtype.kind == "c":
        raise InputFileError(
            f"{path}: holds complex data (an exit wave or FFT?), not an intensity image"
        )
    if dtype.kind not in "biuf":
        raise InputFileError(f"{path}: holds data of type {dtype}, not image intensities")


def _file_pixel_size_A(path: Path, y: _Axis, x: _Axis) -> float:
    """Square pixel size [Å/px] from the file's calibration, or refuse it."""
    size_y, size_x = _axis_size_A(path, y), _axis_size_A(path, x)
    if size_y is None or size_x is None:
        raise InputFileError(f"{path}: has no pixel calibration; pass --pixel-size in Å")
    if abs(size_y - size_x) > SQUARE_TOLERANCE * max(size_y, size_x):
        raise InputFileError(
            f"{path}: non-square pixels ({size_y:.5g} Å along y, {size_x:.5g} Å along x) "
            "are not supported; resample to square pixels or pass --pixel-size in Å"
        )
    pixel = 0.5 * (size_y + size_x)
    if pixel > MAX_PIXEL_SIZE_A:
        raise InputFileError(
            f"{path}: pixel size {pixel:.5g} Å is too coarse for atomic-resolution HRTEM "
            f"(needs ≤ {MAX_PIXEL_SIZE_A:g} Å/px); pass --pixel-size if the file's "
            "calibration is wrong"
        )
    return pixel


def _axis_size_A(path: Path, axis: _Axis) -> float | None:
    """Pixel size of one axis [Å], None if the axis is not calibrated."""
    if axis.scale is None or _normalize_unit(axis.units) in _UNCALIBRATED_UNITS:
        return None
    try:
        size = to_angstrom(float(axis.scale), axis.units)
    except InputFileError:
        unit = _normalize_unit(axis.units)
        guess = ("a diffraction pattern or FFT?" if "/" in unit or "-1" in unit
                 else "not an image in real space?")
        raise InputFileError(
            f"{path}: pixel calibration unit {axis.units!r} is not a length "
            f"({guess}); pass --pixel-size in Å"
        ) from None
    if not (math.isfinite(size) and size > 0):
        raise InputFileError(
            f"{path}: invalid pixel calibration ({axis.scale!r} {axis.units}); "
            "pass --pixel-size in Å"
        )
    return size


def is_image_input(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like an input :func:`open_series` reads as images: a file
    with a supported extension, or a directory of image files (not a zarr store)."""
    p = Path(path)
    if p.is_dir():
        return not _is_zarr_dir(p) and bool(_sequence_files(p)[0])
    return p.suffix.lower() in _FORMATS


# --------------------------------------------------------------------------- sequences


def _natural_key(path: Path) -> list[Any]:
    """Sort key of a relative path with its numbers compared as numbers."""
    return [int(t) if t.isdigit() else t.lower()
            for t in re.split(r"(\d+)", path.as_posix())]


def _sequence_files(directory: Path) -> tuple[list[Path], int]:
    """The image files of an image-sequence directory, in natural order of their paths
    relative to it (the most numerous kind of image file; [] if none), and the number of
    other files skipped."""
    kinds: dict[str, list[Path]] = {}
    n_files = 0
    try:
        found = [f for f in directory.rglob("*") if f.is_file()]
    except OSError:
        return [], 0
    for file in found:
        n_files += 1
        rel = file.relative_to(directory)
        if any(part.startswith(".") for part in rel.parts):
            continue
        suffix = file.suffix.lower()
        if suffix in _FORMATS and suffix != ".emi":  # a TIA series is read from its .ser
            kinds.setdefault(suffix.replace(".tiff", ".tif"), []).append(rel)
    if not kinds:
        return [], n_files
    files = max(kinds.values(), key=len)
    return [directory / rel for rel in sorted(files, key=_natural_key)], n_files - len(files)


class _SequenceView:
    """Frames of an image sequence, one file each, opened only when read (the interface
    of :class:`_FrameView`)."""

    def __init__(self, files: list[Path], frame_shape: tuple[int, int],
                 pixel_size_A: float, override: float | None) -> None:
        self.files = files
        self.frame_shape = frame_shape
        self.pixel_size_A = pixel_size_A
        self.override = override

    @property
    def n_frames(self) -> int:
        """Number of frames (files)."""
        return len(self.files)

    def read(self, i: int) -> np.ndarray:
        """Read frame ``i`` from its file; refuse a file unlike the first."""
        file = self.files[i]
        with open_series(file, pixel_size_A=self.override, uncalibrated_ok=True) as one:
            if one.n_frames != 1:
                raise InputFileError(f"{file.name} holds {one.n_frames} frames, not one image")
            if one.shape != self.frame_shape:
                raise InputFileError(f"{file.name} is {one.shape[1]} × {one.shape[0]} px, the "
                                     f"first file {self.frame_shape[1]} × {self.frame_shape[0]}")
            p, p0 = one.pixel_size_A, self.pixel_size_A
            if (self.override is None and math.isfinite(p0)
                    and not abs(p - p0) <= SQUARE_TOLERANCE * p0):  # NaN: uncalibrated
                raise InputFileError(f"{file.name} has a pixel size of {p:.5g} Å, the first "
                                     f"file {p0:.5g} Å")
            return one.frame(0)


def _open_sequence(directory: Path, override: float | None, uncalibrated_ok: bool) -> Series:
    """An image-sequence directory as a Series (see the module docstring)."""
    files, others = _sequence_files(directory)
    if not files:
        known = " ".join(sorted(set(_FORMATS) - {".emi"}))
        raise InputFileError(f"{directory}: is a directory with no image files ({known}) "
                             "and not a zarr store")
    with open_series(files[0], pixel_size_A=override, uncalibrated_ok=uncalibrated_ok) as first:
        if first.n_frames != 1:
            raise InputFileError(
                f"{directory}: read as an image sequence, but its first file "
                f"{files[0].relative_to(directory)} holds {first.n_frames} frames; predict "
                "stack files one by one")
        shape, pixel, fmt = first.shape, first.pixel_size_A, first.format
        acquired = first.acquired
    note = f"read {len(files)} {files[0].suffix.lower()} files as frames, in natural order"
    if others:
        note += f" ({others} other file{'s' if others != 1 else ''} skipped)"
    last = _acquired(files[-1], override) if len(files) > 1 else None
    interval = sequence_interval(acquired, last, len(files))
    if math.isfinite(interval):
        note += f"; frame interval {interval:.4g} s from the first and last file's acquisition times"
    return Series(path=str(directory), format=f"sequence-{fmt}",
                  view=_SequenceView(files, shape, pixel, override),  # type: ignore[arg-type]
                  pixel_size_A=pixel, frame_interval_s=interval, signal_note=note,
                  acquired=acquired)


def _acquired(file: Path, override: float | None) -> Stamp | None:
    """When ``file`` was acquired, None if it does not say or cannot be read (its frame
    is then reported when it is read)."""
    try:
        with open_series(file, pixel_size_A=override, uncalibrated_ok=True) as one:
            return one.acquired
    except (InputFileError, ConfigError):
        return None


# --------------------------------------------------------------------------- dispatch


class _Format(NamedTuple):
    """How to read one file extension.

    Attributes
    ----------
    reader : callable
        Format reader: path → _Raw.
    label : str
        Name used in messages.
    magic : str or None
        Kind of first bytes the file must not contradict (see ``_MAGIC``);
        None for formats without a signature at offset 0.
    isolate : bool
        Parse once in a forked child first: the HDF5 C library can loop
        forever or crash on corrupt files, which no ``except`` can catch.
    """

    reader: Callable[[Path], _Raw]
    label: str
    magic: str | None
    isolate: bool = False


def _pick_format(path: Path) -> _Format:
    """Choose the format from the extension; refuse contradicting magic bytes."""
    if path.is_dir():
        return _Format(_read_zarr, "zarr", None)
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        known = " ".join(sorted(_FORMATS))
        raise InputFileError(f"{path}: unknown file extension {suffix!r} (supported: {known}, "
                             "and zarr directories)")
    fmt = _FORMATS[suffix]
    kind = _sniff(path)
    if kind is not None and kind != fmt.magic:
        raise InputFileError(f"{path}: content looks like a {kind} file, not {fmt.label}")
    return fmt


# --------------------------------------------------------------------------- RosettaSciIO


def _read_dm(path: Path) -> _Raw:
    """Read a Gatan DigitalMicrograph DM3/DM4 file with RosettaSciIO."""
    from rsciio import digitalmicrograph

    try:
        signals = digitalmicrograph.file_reader(str(path), lazy=True)
    except ValueError as exc:  # rsciio reads RGB(A) images only eagerly
        if "RGB" in str(exc):
            raise InputFileError(f"{path}: holds a colour (RGB) image; convert it to a "
                                 "greyscale intensity image") from exc
        raise
    return _from_rsciio(path, signals, path.suffix.lower().lstrip("."))


def _read_tia(path: Path) -> _Raw:
    """Read a FEI/Thermo Fisher TIA .emi/.ser pair with RosettaSciIO."""
    from rsciio import tia

    signals = tia.file_reader(str(path), lazy=True)
    if not signals and path.suffix.lower() == ".emi":
        if not any(path.parent.glob(f"{glob.escape(path.stem)}_*.ser")):
            raise InputFileError(
                f"{path}: its data file {path.stem}_1.ser is missing "
                "(keep the .ser files next to the .emi)"
            )
    return _from_rsciio(path, signals, "tia-" + path.suffix.lower().lstrip("."))


def _read_emd(path: Path) -> _Raw:
    """Read a Velox or Berkeley (NCEM) EMD file with RosettaSciIO."""
    from rsciio import emd

    flavour = _hdf5_flavour(path)
    if flavour == "emd-velox":
        try:
            signals = emd.file_reader(str(path), lazy=True, select_type="images")
        except ModuleNotFoundError as exc:  # RosettaSciIO wants `sparse` for EDS files
            if exc.name != "sparse" and "'sparse'" not in str(exc):
                raise InputFileError(f"{path}: needs a package that is not installed: "
                                     f"{_reason(exc)}") from exc
            raise InputFileError(
                f"{path}: a Velox file with an EDS spectrum image; RosettaSciIO needs the "
                "'sparse' package to open it, even for its images (pip install sparse)"
            ) from exc
        if not signals:
            raise InputFileError(f"{path}: holds no image or image stack (only spectra?)")
    elif flavour in ("emd-berkeley", "emd-prismatic"):
        signals = emd.file_reader(str(path), lazy=True)
    else:
        raise InputFileError(f"{path}: HDF5 file is neither a Velox nor a Berkeley EMD file")
    return _from_rsciio(path, signals, flavour)


def _read_hspy(path: Path) -> _Raw:
    """Read a HyperSpy .hspy file with RosettaSciIO."""
    from rsciio import hspy

    return _from_rsciio(path, hspy.file_reader(str(path), lazy=True), "hspy")


def _read_hdf5(path: Path) -> _Raw:
    """Read a .h5/.hdf5 file: HyperSpy, EMD, or a plain file holding one image array."""
    flavour = _hdf5_flavour(path)
    if flavour == "hspy":
        return _read_hspy(path)
    if flavour.startswith("emd"):
        return _read_emd(path)
    return _read_plain_hdf5(path)


def _hdf5_flavour(path: Path) -> str:
    """Return 'hspy', 'emd-velox', 'emd-berkeley', 'emd-prismatic' or 'hdf5' for an HDF5
    file."""
    import h5py

    with h5py.File(path, "r") as f:
        file_format = f.attrs.get("file_format", b"")
        if isinstance(file_format, bytes):
            file_format = file_format.decode(errors="replace")
        if str(file_format).lower() == "hyperspy":
            return "hspy"
        if "Version" in f and "Data" in f:
            return "emd-velox"
        if "version_major" in f.attrs:
            return "emd-berkeley"
        if "4DSTEM_simulation" in f:  # Prismatic's EMD (simulated HRTEM/STEM)
            return "emd-prismatic"
    return "hdf5"


def _from_rsciio(path: Path, signals: list[dict], label: str) -> _Raw:
    """Take the largest 2-D image or image stack from RosettaSciIO signal dicts."""
    signals = [_with_navigation(s) for s in signals]
    candidates = [(k, s) for k, s in enumerate(signals) if _is_rsciio_image(s)]
    if not candidates:
        raise InputFileError(f"{path}: {_describe_rsciio(signals)}, not an image or image stack")
    k, signal = max(candidates, key=lambda item: _size(item[1]["data"].shape))
    array, axes = _signal_axes_last(signal)
    nav = [ax for ax in axes if ax.get("navigate")]
    y_axis, x_axis = axes[-2:]
    note = ""
    if len(signals) > 1:
        title = signal.get("metadata", {}).get("General", {}).get("title") or "untitled"
        note = (
            f"took signal {k + 1} of {len(signals)} ('{title}', shape "
            f"{tuple(int(n) for n in array.shape)}): the largest image or image stack"
        )
    return _Raw(
        array=array,
        format=label,
        y=_Axis(y_axis.get("scale"), y_axis.get("units")),
        x=_Axis(x_axis.get("scale"), x_axis.get("units")),
        frame_interval_s=_interval_from_axes(nav),
        signal_note=note,
        acquired=rsciio_stamp(signal),
    )


def _with_navigation(signal: dict) -> dict:
    """Mark leading axes as navigation when a reader marked no axis at all.

    The Berkeley EMD reader marks every axis of a ``(frames, H, W)`` array as a
    signal axis; the convention of this module (3-D = frames, H, W) then applies.
    """
    axes = signal.get("axes", [])
    if len(axes) <= 2 or any(ax.get("navigate") for ax in axes):
        return signal
    axes = [{**ax, "navigate": k < len(axes) - 2} for k, ax in enumerate(axes)]
    return {**signal, "axes": axes}


def _is_rsciio_image(signal: dict) -> bool:
    """True for a signal with two signal axes and at most one long navigation axis."""
    axes = signal.get("axes", [])
    signal_type = signal.get("metadata", {}).get("Signal", {}).get("signal_type", "")
    if str(signal_type) in _SPECTRAL_SIGNAL_TYPES:
        return False
    long_nav = [ax for ax in axes if ax.get("navigate") and int(ax.get("size", 1)) > 1]
    n_signal = sum(not ax.get("navigate") for ax in axes)
    return n_signal == 2 and len(long_nav) <= 1 and len(axes) == len(signal["data"].shape)


def _describe_rsciio(signals: list[dict]) -> str:
    """Say in a few words what a file without a usable image holds."""
    if not signals:
        return "holds no data"
    parts = []
    for s in signals[:3]:
        shape = tuple(int(n) for n in s["data"].shape)
        n_signal = sum(not ax.get("navigate") for ax in s.get("axes", []))
        parts.append(f"{_meaningful_ndim(shape)}-D data (shape {shape}, {n_signal} signal axes)")
    more = f" and {len(signals) - 3} more" if len(signals) > 3 else ""
    return "holds " + ", ".join(parts) + more


def _signal_axes_last(signal: dict) -> tuple[Any, list[dict]]:
    """Return the data and axes with the two signal axes moved to the end."""
    axes = list(signal["axes"])
    order = [i for i, ax in enumerate(axes) if ax.get("navigate")]
    order += [i for i, ax in enumerate(axes) if not ax.get("navigate")]
    data = signal["data"]
    if order != list(range(len(axes))):
        data = data.transpose(order)
    return data, [axes[i] for i in order]


def _interval_from_axes(nav_axes: list[dict]) -> float:
    """Frame interval [s] from the long navigation axis, NaN if not a time axis."""
    long_axes = [ax for ax in nav_axes if int(ax.get("size", 1)) > 1]
    if len(long_axes) != 1:
        return math.nan
    return _time_to_seconds(long_axes[0].get("scale"), long_axes[0].get("units"))


def _size(shape: tuple[int, ...]) -> int:
    """Number of elements of an array of ``shape``."""
    return math.prod(int(n) for n in shape)


# --------------------------------------------------------------------------- MRC


def _read_mrc(path: Path) -> _Raw:
    """Read an MRC/MRCS file (image, stack or volume) with mrcfile's memory map."""
    import mrcfile

    # permissive: tolerate files without the 'MAP ' ID (older writers, e.g. temp.mrc)
    mrc = mrcfile.mmap(path, mode="r", permissive=True)
    if mrc.data is None:
        mrc.close()
        raise InputFileError(f"{path}: MRC header does not match the file (truncated or corrupt)")
    voxel = mrc.voxel_size  # Å per the MRC2014 standard; 0 when unset
    return _Raw(
        array=mrc.data,
        format="mrc",
        y=_Axis(float(voxel.y) or None, "Å"),
        x=_Axis(float(voxel.x) or None, "Å"),
        closers=[mrc.close],
    )


# --------------------------------------------------------------------------- TIFF


def _read_tiff(path: Path) -> _Raw:
    """Read a TIFF (ImageJ, DM-exported, vendor or plain) page by page with tifffile."""
    import tifffile

    tif = tifffile.TiffFile(path)
    try:
        return _tiff_raw(path, tif)
    except Exception:
        tif.close()
        raise


def _tiff_raw(path: Path, tif: Any) -> _Raw:
    """Build the raw record of an open TiffFile."""
    import zarr

    index, note = _pick_tiff_series(path, tif)
    series = tif.series[index]
    axes = series.axes
    if "S" in axes and series.shape[axes.index("S")] > 1:
        raise InputFileError(
            f"{path}: holds a colour (RGB) image; convert it to a greyscale intensity image"
        )
    array = zarr.open(series.aszarr(), mode="r")
    page = series.pages[0]
    fei = parse_fei_xml(getattr(page.tags.get(FEI_XML_TAG), "value", None))
    fei_size = fei_xml_calibration(fei) if fei is not None else None
    acquired = None
    if tif.is_imagej:
        y, x, interval = _imagej_calibration(tif)
        label = "tiff-imagej"
    elif fei_size is not None:
        y, x, interval = _Axis(*fei_size[:2]), _Axis(*fei_size[2:]), math.nan
        label = "tiff-fei"
    else:
        y, x, interval, acquired = _rsciio_tiff_calibration(path, index)
        label = "tiff-dm" if _has_dm_tags(page) else "tiff"
    if fei is not None:
        acquired = fei_xml_stamp(fei) or acquired
    acquired = acquired or tiff_datetime_stamp(page)
    return _Raw(array, label, y, x, interval, note, [tif.close], acquired)


def _pick_tiff_series(path: Path, tif: Any) -> tuple[int, str]:
    """Index of the largest image series of a TIFF and a note if there were several."""
    series = list(tif.series)
    if not series:
        raise InputFileError(f"{path}: TIFF holds no image")
    index = max(range(len(series)), key=lambda k: _size(series[k].shape))
    note = ""
    if len(series) > 1:
        note = (
            f"took TIFF series {index + 1} of {len(series)} (shape "
            f"{tuple(series[index].shape)}): the largest"
        )
    return index, note


def _imagej_calibration(tif: Any) -> tuple[_Axis, _Axis, float]:
    """Pixel calibration and frame interval of an ImageJ TIFF.

    ImageJ stores the pixel size as X/YResolution = pixels per ``unit`` (the
    ``unit=`` line of the image description, non-ASCII characters escaped as
    ``\\uXXXX``; ``yunit=`` when y differs), and the frame interval as
    ``finterval=`` in ``tunit=`` (default seconds). Without ``unit`` the image
    is uncalibrated.
    """
    meta = tif.imagej_metadata or {}
    unit = meta.get("unit")
    page = tif.pages.first
    x = _Axis(_inverse_resolution(page, "XResolution"), unit)
    y = _Axis(_inverse_resolution(page, "YResolution"), meta.get("yunit", unit))
    interval = _time_to_seconds(meta.get("finterval"), meta.get("tunit", "sec"))
    fps = meta.get("fps")
    if math.isnan(interval) and isinstance(fps, int | float) and fps > 0:
        interval = 1.0 / fps
    return y, x, interval


def _inverse_resolution(page: Any, tag_name: str) -> float | None:
    """Length of one pixel [resolution unit] from an X/YResolution tag."""
    tag = page.tags.get(tag_name)
    if tag is None:
        return None
    numerator, denominator = tag.value
    return denominator / numerator if numerator else None


def _rsciio_tiff_calibration(path: Path, index: int
                             ) -> tuple[_Axis, _Axis, float, Stamp | None]:
    """Pixel calibration, frame interval and acquisition time of a non-ImageJ TIFF (DM
    tags, FEI SEM, Zeiss, ...) via RosettaSciIO.

    RosettaSciIO is asked for metadata only: its lazy data is never computed.
    """
    from rsciio import tiff

    signals = tiff.file_reader(str(path), lazy=True)
    signal = signals[index] if index < len(signals) else {}
    axes = signal.get("axes", [])
    if len(axes) < 2:
        return _Axis(), _Axis(), math.nan, None
    y_axis, x_axis = axes[-2:]
    interval = _interval_from_axes([ax for ax in axes[:-2] if ax.get("navigate")])
    return (
        _Axis(y_axis.get("scale"), y_axis.get("units")),
        _Axis(x_axis.get("scale"), x_axis.get("units")),
        interval,
        rsciio_stamp(signal),
    )


def _has_dm_tags(page: Any) -> bool:
    """True if a TIFF page carries Gatan DigitalMicrograph calibration tags."""
    return any(code in page.tags for code in (65003, 65004, 65009, 65010))


# --------------------------------------------------------------------------- containers


def _read_zarr(path: Path) -> _Raw:
    """Read a zarr array, or a zarr group holding one 2-D/3-D array.

    The pixel size [Å] is taken from the attribute ``pixel_size_A`` of the
    array or of the root group, the frame interval [s] from ``frame_interval_s``.
    """
    import zarr

    node = zarr.open(path, mode="r")
    if isinstance(node, zarr.Array):
        arrays = {"": node}
    else:
        arrays = {name: a for name, a in node.members(max_depth=None) if isinstance(a, zarr.Array)}
    name, array, note = _pick_array(path, arrays)
    return _container_raw(array, "zarr", [dict(array.attrs), dict(node.attrs)], note, [])


def _read_plain_hdf5(path: Path) -> _Raw:
    """Read a plain HDF5 file holding one 2-D/3-D dataset (attrs as for zarr)."""
    import h5py

    f = h5py.File(path, "r")
    try:
        arrays: dict[str, Any] = {}
        f.visititems(lambda name, obj: _collect_dataset(arrays, name, obj))
        name, array, note = _pick_array(path, arrays)
        attrs = [dict(array.attrs), dict(f.attrs)]
        return _container_raw(array, "hdf5", attrs, note, [f.close])
    except Exception:
        f.close()
        raise


def _collect_dataset(arrays: dict[str, Any], name: str, obj: Any) -> None:
    """h5py visitor: keep numeric datasets."""
    import h5py

    if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "biufc":
        arrays[name] = obj


def _pick_array(path: Path, arrays: dict[str, Any]) -> tuple[str, Any, str]:
    """Choose the largest image-like array of a container; note the choice."""
    if not arrays:
        raise InputFileError(f"{path}: holds no numeric array")
    images = {n: a for n, a in arrays.items() if _looks_like_image(a.shape)}
    if not images:
        if len(arrays) == 1:
            return next(iter(arrays.items())) + ("",)  # refused later with its shape
        raise InputFileError(f"{path}: none of its {len(arrays)} arrays is an image or image stack")
    name = max(images, key=lambda n: _size(images[n].shape))
    note = ""
    if len(arrays) > 1:
        note = f"took array '{name}' (shape {tuple(images[name].shape)}) of {len(arrays)} arrays"
    return name, images[name], note


def _looks_like_image(shape: tuple[int, ...]) -> bool:
    """True if ``shape`` is one image or a stack of images (axes of length 1 aside)."""
    return len(shape) >= 2 and min(shape[-2:]) >= 2 and sum(n > 1 for n in shape[:-2]) <= 1


def _container_raw(
    array: Any, label: str, attr_dicts: list[dict], note: str, closers: list
) -> _Raw:
    """Raw record of an array whose calibration lives in ``pixel_size_A`` attributes."""
    pixel = _first_attr(attr_dicts, "pixel_size_A")
    interval = _first_attr(attr_dicts, "frame_interval_s")
    axis = _Axis(float(pixel), "Å") if pixel is not None else _Axis()
    seconds = _time_to_seconds(interval, "s") if interval is not None else math.nan
    return _Raw(array, label, axis, axis, seconds, note, closers)


def _first_attr(attr_dicts: list[dict], key: str) -> Any:
    """Value of ``key`` in the first dict that has it, or None."""
    return next((d[key] for d in attr_dicts if key in d), None)


def _read_npy(path: Path) -> _Raw:
    """Read a NumPy .npy file as a memory map (it never holds a calibration)."""
    return _Raw(np.load(path, mmap_mode="r", allow_pickle=False), "npy")


_FORMATS: dict[str, _Format] = {
    ".dm3": _Format(_read_dm, "DM3", "DM"),
    ".dm4": _Format(_read_dm, "DM4", "DM"),
    ".emd": _Format(_read_emd, "EMD", "HDF5", isolate=True),
    ".emi": _Format(_read_tia, "TIA EMI", None),
    ".ser": _Format(_read_tia, "TIA SER", "TIA SER"),
    ".mrc": _Format(_read_mrc, "MRC", None),
    ".mrcs": _Format(_read_mrc, "MRC", None),
    ".tif": _Format(_read_tiff, "TIFF", "TIFF"),
    ".tiff": _Format(_read_tiff, "TIFF", "TIFF"),
    ".hspy": _Format(_read_hspy, "HyperSpy", "HDF5", isolate=True),
    ".h5": _Format(_read_hdf5, "HDF5", "HDF5", isolate=True),
    ".hdf5": _Format(_read_hdf5, "HDF5", "HDF5", isolate=True),
    ".npy": _Format(_read_npy, "NumPy", "NumPy"),
}
