"""Results file (HDF5), format version 1: writer, reader and file hashing.

This module implements the contract "Results file (HDF5), format version 1" of
``DESIGN.md``::

    / attrs     format="atom3d.columns", format_version=1, atom3d_version,
                created (ISO 8601, UTC), source, source_sha256, model, model_sha256,
                pixel_size_A, frame_interval_s (NaN if unknown), complete=True
    /maps/ce_depth        uint8   (T, H, W)  0 = no Ce column, k = k Ce atoms
    /maps/ce_confidence   float16 (T, H, W)  calibrated probability of ce_depth
    /maps/o_depth         uint8   (T, H, W)
    /maps/o_confidence    float16 (T, H, W)
    /columns   table   one row per atomic column and frame
    /frames    table   one row per frame
    /events    table   one row per change of a tracked column

Maps are chunked one frame per chunk ``(1, H, W)`` and compressed (gzip + shuffle by
default, readable by any HDF5 library).

Tables
------
A *table* is a group holding one 1-D dataset per field, all of the same length (one
element per row), in a fixed order (the group tracks creation order). Rows are sorted
by ``frame`` (stable) in a finished file. Text fields are fixed-length ASCII bytes:
``species`` is ``S2`` (``b"Ce"`` or ``b"O"``), ``kind`` is ``S12`` (``b"depth_change"``,
``b"appeared"``, ``b"vanished"``); :func:`read_results` decodes them to ``str``.
Datasets carry a ``units`` attribute where a unit applies. Fields and dtypes:

- ``/columns``: frame int32, track int32 (-1 = not tracked), species S2,
  x, y float32 [Å], depth uint8 [atoms], confidence float32 (probability of that
  depth). Pixel ``(r, c)`` has its centre at ``x = c p, y = r p``.
- ``/frames``: frame int32, valid bool, drift_x, drift_y float32 [Å], n_ce, n_o int32
  [atoms], o_ce_ratio float32, area_A2 float32 [Å²], radius_A float32 [Å]; further
  numeric or boolean fields may follow (their dtype is that of the values given).
- ``/events``: frame int32, track int32, species S2, kind S12, depth_before,
  depth_after uint8 [atoms], confidence float32.

A field missing from a row is filled with NaN (float), -1 (signed int), 0 (unsigned
int) or False (bool).

Crash safety and resume
-----------------------
:class:`ResultsWriter` writes ``<path>.partial`` (e.g. ``out.h5.partial``), a file whose
root attribute ``complete`` is False. :meth:`ResultsWriter.finalize` sets
``complete=True`` and renames it to ``path`` with :func:`os.replace` (atomic), so a
file at ``path`` is always complete. After each frame, the numbers of committed rows
of ``/columns`` and ``/frames`` are stored in one root attribute
(``partial_committed_rows``, absent from a finished file); rows beyond it belong to a
frame that was cut off and are dropped on resume. A frame is done when its row of
``/frames`` is committed; its maps are written before that row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

try:  # ISA-L's deflate: the same zlib stream format, much faster at low levels
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover - isal is a dependency; zlib is the fallback
    _isal_zlib = None

from atom3d import __version__
from atom3d.errors import InputFileError

__all__ = [
    "COLUMN_FIELDS",
    "EVENT_FIELDS",
    "EVENT_KINDS",
    "FORMAT",
    "FORMAT_VERSION",
    "FRAME_FIELDS",
    "MAP_NAMES",
    "SPECIES",
    "ResultsWriter",
    "attr_equal",
    "open_results",
    "partial_path",
    "read_results",
    "sha256_file",
]

log = logging.getLogger(__name__)

FORMAT = "atom3d.columns"
FORMAT_VERSION = 1

MAP_DTYPES: dict[str, np.dtype] = {
    "ce_depth": np.dtype(np.uint8),
    "ce_confidence": np.dtype(np.float16),
    "o_depth": np.dtype(np.uint8),
    "o_confidence": np.dtype(np.float16),
}
MAP_NAMES = tuple(MAP_DTYPES)

SPECIES = ("Ce", "O")
EVENT_KINDS = ("depth_change", "appeared", "vanished")

COLUMN_FIELDS: dict[str, np.dtype] = {
    "frame": np.dtype(np.int32),
    "track": np.dtype(np.int32),
    "species": np.dtype("S2"),
    "x": np.dtype(np.float32),
    "y": np.dtype(np.float32),
    "depth": np.dtype(np.uint8),
    "confidence": np.dtype(np.float32),
}
FRAME_FIELDS: dict[str, np.dtype] = {
    "frame": np.dtype(np.int32),
    "valid": np.dtype(bool),
    "drift_x": np.dtype(np.float32),
    "drift_y": np.dtype(np.float32),
    "n_ce": np.dtype(np.int32),
    "n_o": np.dtype(np.int32),
    "o_ce_ratio": np.dtype(np.float32),
    "area_A2": np.dtype(np.float32),
    "radius_A": np.dtype(np.float32),
}
EVENT_FIELDS: dict[str, np.dtype] = {
    "frame": np.dtype(np.int32),
    "track": np.dtype(np.int32),
    "species": np.dtype("S2"),
    "kind": np.dtype("S12"),
    "depth_before": np.dtype(np.uint8),
    "depth_after": np.dtype(np.uint8),
    "confidence": np.dtype(np.float32),
}
TABLE_FIELDS = {"columns": COLUMN_FIELDS, "frames": FRAME_FIELDS, "events": EVENT_FIELDS}

_ALLOWED_TEXT = {"species": SPECIES, "kind": EVENT_KINDS}
_UNITS = {
    "x": "Å",
    "y": "Å",
    "drift_x": "Å",
    "drift_y": "Å",
    "area_A2": "Å^2",
    "radius_A": "Å",
    "depth": "atoms",
    "depth_before": "atoms",
    "depth_after": "atoms",
    "n_ce": "atoms",
    "n_o": "atoms",
    "confidence": "probability",
}
_MAP_UNITS = {"depth": "atoms", "confidence": "probability"}

_REQUIRED_ATTRS = ("source", "source_sha256", "model", "model_sha256", "pixel_size_A")
_RESERVED_ATTRS = ("format", "format_version", "created", "complete")
#: Root attributes that say which network ran and how (weights, passes, calibration);
#: ``atom3d.inference.series`` writes exactly these for a run.
NETWORK_ATTRS = ("model_sha256", "test_time_augmentation", "tta_passes",
                 "calibration_passes", "calibration_sha256")
#: ... and the column candidates a series' frames keep (``atom3d.inference.series``).
COLUMN_ATTRS = ("track_detection", "track_candidate_threshold")
#: ... and which frames and which rectangle of the input were predicted
#: (:func:`atom3d.io.selection.selection_attrs`).
SELECTION_ATTRS = ("source_frames", "roi_px")
_RESUME_KEYS = ("source_sha256", "pixel_size_A", *NETWORK_ATTRS, *COLUMN_ATTRS,
                *SELECTION_ATTRS)
_COMMITTED = "partial_committed_rows"  # [rows of /columns, rows of /frames]
_FRAME_TABLES = ("columns", "frames")  # tables appended to per frame, in _COMMITTED order
_SWAP = ".new"  # suffix of a table group being rewritten (finalize, write_events)
#: Attribute of a ``/columns`` group whose rows were filtered at the end of post-processing
#: (:meth:`ResultsWriter.keep_column_rows`): a JSON summary; its ``n_rows`` counts the rows.
_FILTERED = "filtered"

_TABLE_CHUNK_ROWS = 4096
#: HDF5 chunk cache of the file being written [bytes per dataset] (h5py's default is
#: 1 MiB). With the default, appending a frame's rows to the ~30 compressed column fields
#: grew the process's allocated memory by ~0.25 MB per frame without bound (session 17:
#: the frame loop of a 1000-frame run held ~190 MB more than that of a 100-frame one; an
#: h5py-only test appending 3400 rows x 32 gzip fields per frame grew by 43 MB per 100
#: frames with the default cache, 1 MB with this one, none with 1 slot or no cache). Big
#: enough for two uncompressed 4096-row chunks of 8-byte fields, so that a table's last,
#: partly written chunk stays cached between appends; maps bypass it
#: (``write_direct_chunk``).
_WRITE_CHUNK_CACHE_BYTES = 64 << 10
#: Rows read at a time when scanning a table (bounded memory).
_SCAN_ROWS = 1 << 18


# --------------------------------------------------------------------------- hashing


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in chunks (constant memory).

    Parameters
    ----------
    path : str or path-like
        File to hash.
    chunk_bytes : int
        Read size [bytes].

    Returns
    -------
    str
        64 lowercase hex digits.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def partial_path(path: str | os.PathLike) -> Path:
    """Where :class:`ResultsWriter` writes before finalising: ``<path>.partial``.

    Parameters
    ----------
    path : str or path-like
        Final results file, e.g. ``out.h5``.

    Returns
    -------
    Path
        ``out.h5.partial``.
    """
    path = Path(path)
    return path.with_name(path.name + ".partial")


# --------------------------------------------------------------------------- values


def _fill_value(dtype: np.dtype) -> Any:
    """Value of a field that a row does not give: NaN, -1, 0, False or b''."""
    if dtype.kind == "f":
        return np.nan
    if dtype.kind == "i":
        return -1
    if dtype.kind == "b":
        return False
    if dtype.kind == "S":
        return b""
    return 0


def _as_integers(name: str, values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast to an integer dtype, refusing fractions, NaN and out-of-range values."""
    if values.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected integers, got dtype {values.dtype}")
    if values.size:
        if values.dtype.kind == "f" and not np.all(np.isfinite(values) & (values % 1 == 0)):
            raise ValueError(f"{name}: expected whole numbers")
        info = np.iinfo(dtype)
        lo, hi = values.min(), values.max()
        if lo < info.min or hi > info.max:
            raise ValueError(f"{name}: values [{lo}, {hi}] outside [{info.min}, {info.max}]")
    return values.astype(dtype)


def _as_text(name: str, values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast text to fixed-length ASCII bytes, refusing values not in the allowed set."""
    if values.dtype.kind == "S":
        values = values.astype(str)
    if values.dtype.kind != "U":
        raise TypeError(f"{name}: expected strings, got dtype {values.dtype}")
    allowed = _ALLOWED_TEXT.get(name)
    if allowed is not None and values.size and not np.all(np.isin(values, allowed)):
        bad = sorted(set(values[~np.isin(values, allowed)].tolist()))
        raise ValueError(f"{name}: unknown values {bad}; allowed: {list(allowed)}")
    return values.astype(dtype)


def _as_dtype(name: str, values: Any, dtype: np.dtype) -> np.ndarray:
    """Cast ``values`` to ``dtype`` with the checks that dtype calls for."""
    values = np.asarray(values)
    if dtype.kind == "S":
        return _as_text(name, values, dtype)
    if dtype.kind in "iu":
        return _as_integers(name, values, dtype)
    if dtype.kind == "b" and values.dtype.kind != "b":
        raise TypeError(f"{name}: expected booleans, got dtype {values.dtype}")
    return values.astype(dtype)


def _infer_dtype(name: str, values: np.ndarray) -> np.dtype:
    """Dtype of a field that is not part of the schema: that of its values."""
    if values.dtype.kind not in "biuf":
        raise TypeError(f"{name}: only numbers and booleans can be stored, got {values.dtype}")
    return values.dtype


def _to_str(values: np.ndarray) -> np.ndarray:
    """Decode fixed-length bytes to ``str``; other arrays unchanged."""
    return values.astype(str) if values.dtype.kind == "S" else values


def _same(a: Any, b: Any) -> bool:
    """Equality of attribute values, with NaN equal to NaN."""
    if isinstance(a, float | np.floating) and isinstance(b, float | np.floating):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return a == b


def attr_equal(a: Any, b: Any) -> bool:
    """Whether two attribute values are the same, as written or as read back (arrays and
    lists alike, numpy scalars as Python ones, NaN equal to NaN)."""
    return _same(_plain(a), _plain(b))


def _plain(value: Any) -> Any:
    """HDF5 attribute value as a plain Python object."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _now() -> str:
    """Current time, ISO 8601 with UTC offset, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- tables


class _Table:
    """A group of equal-length 1-D datasets (one per field), appended to row-wise.

    Parameters
    ----------
    group : h5py.Group
        The table's group.
    schema : dict
        Dtypes of the known fields, in their order.
    compression : dict
        Keyword arguments of ``create_dataset`` for compression.
    n_rows : int
        Number of valid rows (datasets may be longer after a crash: see ``truncate``).
    """

    def __init__(self, group: h5py.Group, schema: Mapping[str, np.dtype],
                 compression: Mapping[str, Any], n_rows: int) -> None:
        self.group = group
        self.schema = schema
        self.compression = compression
        self.n_rows = n_rows
        self._fields: dict[str, h5py.Dataset] | None = None

    @property
    def fields(self) -> dict[str, h5py.Dataset]:
        """The field datasets by name, in stored order.

        Cached: an h5py lookup by name costs tens of µs, and the tables are touched
        for every frame. Fields are only added through :meth:`create`, which refreshes
        the cache; a table whose group is replaced gets a new ``_Table``.
        """
        if self._fields is None:
            self._fields = dict(self.group.items())
        return self._fields

    def dtype(self, name: str, values: np.ndarray) -> np.dtype:
        """Dtype of field ``name``: from the schema, the dataset, or the values."""
        if name in self.schema:
            return self.schema[name]
        if name in self.fields:
            return self.fields[name].dtype
        return _infer_dtype(name, values)

    def cast(self, data: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Cast every field of ``data`` to its dtype, in schema order, and check lengths."""
        order = [k for k in self.schema if k in data] + [k for k in data if k not in self.schema]
        out = {}
        for name in order:
            values = np.asarray(data[name])
            if values.ndim != 1:
                raise ValueError(f"{name}: expected a 1-D array, got shape {values.shape}")
            out[name] = _as_dtype(name, values, self.dtype(name, values))
        lengths = {len(v) for v in out.values()}
        if len(lengths) > 1:
            sizes = {k: len(v) for k, v in out.items()}
            raise ValueError(f"fields differ in length: {sizes}")
        return out

    def create(self, name: str, dtype: np.dtype, length: int) -> h5py.Dataset:
        """A resizable field filled with its fill value."""
        ds = self.group.create_dataset(
            name, shape=(length,), maxshape=(None,), dtype=dtype,
            chunks=(_TABLE_CHUNK_ROWS,), fillvalue=_fill_value(dtype), **self.compression,
        )
        self._fields = None  # the group changed
        if length:
            ds[:] = np.full(length, _fill_value(dtype), dtype)
        if name in _UNITS:
            ds.attrs["units"] = _UNITS[name]
        return ds

    def append(self, rows: Mapping[str, np.ndarray]) -> None:
        """Append rows already cast with :meth:`cast`; absent fields get fill values."""
        n = len(next(iter(rows.values()))) if rows else 0
        start = self.n_rows
        for name, values in rows.items():
            if name not in self.fields:
                self.create(name, values.dtype, start)
        for name, ds in self.fields.items():
            ds.resize((start + n,))
            ds[start:] = rows[name] if name in rows else np.full(n, _fill_value(ds.dtype), ds.dtype)
        self.n_rows = start + n

    def truncate(self) -> None:
        """Make every field exactly ``n_rows`` long (drops rows of a cut-off frame)."""
        for ds in self.fields.values():
            length = ds.shape[0]
            ds.resize((self.n_rows,))
            if length < self.n_rows:
                ds[length:] = np.full(self.n_rows - length, _fill_value(ds.dtype), ds.dtype)

    def read(self) -> dict[str, np.ndarray]:
        """All fields, first ``n_rows`` rows, as stored (text as bytes)."""
        return {name: ds[: self.n_rows] for name, ds in self.fields.items()}

    def set_field(self, name: str, values: Any) -> None:
        """Overwrite (or add) one field with ``n_rows`` values in stored row order."""
        values = np.asarray(values)
        if values.shape != (self.n_rows,):
            raise ValueError(f"{name}: expected {self.n_rows} values, got shape {values.shape}")
        values = _as_dtype(name, values, self.dtype(name, values))
        ds = self.fields[name] if name in self.fields else self.create(name, values.dtype, 0)
        ds.resize((self.n_rows,))
        ds[:] = values


def deflate_chunk(values: np.ndarray, level: int) -> bytes:
    """One chunk as HDF5's shuffle + deflate filters store it (for ``write_direct_chunk``).

    The shuffle filter writes byte ``j`` of every element before byte ``j + 1`` of any
    (a no-op for 1-byte types); deflate is a zlib stream of that. Levels 1-3 use
    ISA-L (``isal``, when installed: a standard zlib stream that any zlib inflates,
    about as small as zlib's level 1 and five times faster to make), others ``zlib``
    (level 0 stays zlib's stored, uncompressed stream: ISA-L's level 0 compresses).
    """
    values = np.ascontiguousarray(values)
    size = values.dtype.itemsize
    raw = values.view(np.uint8).reshape(-1, size).T.tobytes() if size > 1 else values.tobytes()
    if _isal_zlib is not None and 1 <= level <= 3:
        return bytes(_isal_zlib.compress(raw, level))
    return zlib.compress(raw, level)


def _concat_rows(frames: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Rows of several frames as one block (fields missing in a frame get fill values)."""
    if len(frames) == 1:
        return frames[0]
    names: dict[str, np.dtype] = {}
    for rows in frames:
        for name, values in rows.items():
            names.setdefault(name, values.dtype)
    out = {}
    for name, dtype in names.items():
        parts = []
        for rows in frames:
            n = len(next(iter(rows.values()))) if rows else 0
            parts.append(rows[name] if name in rows else np.full(n, _fill_value(dtype), dtype))
        out[name] = np.concatenate(parts)
    return out


def _is_frame_sorted(table: _Table) -> bool:
    """Whether a table's stored rows are in frame order (checked in chunks)."""
    if "frame" not in table.fields:
        return True
    ds = table.fields["frame"]
    last = None
    for start in range(0, table.n_rows, _SCAN_ROWS):
        chunk = ds[start:min(start + _SCAN_ROWS, table.n_rows)]
        if len(chunk) and ((last is not None and chunk[0] < last) or np.any(np.diff(chunk) < 0)):
            return False
        if len(chunk):
            last = chunk[-1]
    return True


def _frame_order(table: _Table) -> np.ndarray:
    """Row order that sorts a table by frame (stable)."""
    if "frame" not in table.fields:
        return np.arange(table.n_rows)
    return np.argsort(table.fields["frame"][: table.n_rows], kind="stable")


# --------------------------------------------------------------------------- writer


class ResultsWriter:
    """Write a results file frame by frame, crash-safe and resumable.

    Data go to ``<path>.partial``; :meth:`finalize` marks the file complete and renames
    it to ``path``. Use as a context manager: leaving the block closes the file but
    never finalises it (an exception leaves a partial file to resume from).

    Typical use::

        with ResultsWriter(out, shape=(H, W), n_frames=T, attrs=attrs, resume=True) as w:
            for i in range(T):
                if i in w.done_frames:
                    continue
                w.write_frame(i, ce_depth=..., ..., columns=cols, frame_row=row)
            cols = w.read_columns()              # all frames, sorted by frame
            w.set_tracks(link(cols))             # after all frames
            w.update_frames({"drift_x": dx, "drift_y": dy})
            w.write_events(events)
            w.finalize()

    Tracks, frame updates and events are post-processing over the whole series: after
    a resume, the caller redoes them (:meth:`read_columns` returns the columns of the
    frames written before the interruption too).

    Parameters
    ----------
    path : str or path-like
        Final results file, e.g. ``out.h5``.
    shape : tuple of int
        ``(H, W)`` of the maps [px], the input pixel grid.
    n_frames : int
        Number of frames ``T`` in the series.
    attrs : dict
        Root attributes: ``source``, ``source_sha256``, ``model``, ``model_sha256``,
        ``pixel_size_A`` [Å] are required; ``atom3d_version`` defaults to the running
        version, ``frame_interval_s`` [s] to NaN (unknown). Extra attributes are stored
        too. ``format``, ``format_version``, ``created`` and ``complete`` are set here.
    resume : bool
        Reopen an existing ``<path>.partial`` and keep its committed frames (see
        :attr:`done_frames`). Its ``source_sha256``, ``model_sha256``, ``pixel_size_A``
        and map shape must match, else :class:`~atom3d.errors.InputFileError`. Without
        a partial file (or with one too damaged to open) the run starts afresh.
    compression : {"gzip", "lzf"}
        Compression of maps and tables. gzip (level 1, with shuffle: half the time of
        level 4 on 512² maps) is readable by every HDF5 library; lzf is faster but needs
        h5py. gzip map chunks are compressed in a pool of threads (zlib releases the
        GIL) and stored with ``write_direct_chunk``: the same bytes HDF5's shuffle and
        deflate filters make, read back by any HDF5 library (tested).
    commit_every : int
        Commit the table rows every this many frames (1 = after each frame). Rows of
        uncommitted frames are held in memory; :meth:`close` (also on an exception)
        commits them, and a hard kill loses at most that many frames, which a resumed
        run predicts again. Appending and flushing once per frame costs more than a
        typical frame's columns are worth writing.
    """

    def __init__(self, path: str | os.PathLike, *, shape: tuple[int, int], n_frames: int,
                 attrs: Mapping[str, Any], resume: bool = False,
                 compression: str = "gzip", commit_every: int = 1) -> None:
        self.path = Path(path)
        self.partial_path = partial_path(self.path)
        self.shape = _check_shape(shape)
        self.n_frames = _check_positive("n_frames", n_frames)
        self._attrs = _caller_attrs(attrs)
        self._compression = _compression_options(compression)
        self._direct_chunks = compression == "gzip"
        self.commit_every = _check_positive("commit_every", commit_every)
        self._pending: list[tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._maps: dict[str, h5py.Dataset] | None = None  # _write_maps's datasets
        self._finalized = False
        self._file: h5py.File | None = None
        if resume and self.partial_path.exists():
            self._file = self._reopen()
        if self._file is None:
            self._file = self._create()
        self._tables = self._load_tables()
        self._done = self._committed_frames()

    # -- context manager -----------------------------------------------------------

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Commit pending frames and close the partial file without finalising it (it
        stays resumable)."""
        if self._file is not None:
            try:
                self._commit_pending()
            except Exception as error:  # the file keeps its last commit
                log.warning("could not commit the last frames of %s (%s); a resumed run "
                            "predicts them again", self.partial_path, error)
            finally:
                self._file.close()
                self._file = None
        self._maps = None
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    # -- state -----------------------------------------------------------------------

    @property
    def done_frames(self) -> set[int]:
        """Frames written: on opening, those committed (skip them on resume); then also
        the frames written since (committed at the latest by :meth:`close`)."""
        return set(self._done)

    def _settled(self) -> h5py.File:
        """The open file with every pending frame committed (before reading tables)."""
        f = self._require_open()
        self._commit_pending()
        return f

    def _require_open(self) -> h5py.File:
        if self._file is None:
            state = "finalized" if self._finalized else "closed"
            raise RuntimeError(f"ResultsWriter for {self.path} is {state}")
        return self._file

    def _committed_frames(self) -> set[int]:
        table = self._tables["frames"]
        if "frame" not in table.fields:
            return set()
        return {int(i) for i in table.fields["frame"][: table.n_rows]}

    # -- opening -------------------------------------------------------------------

    def _create(self) -> h5py.File:
        """A new partial file with the root attrs, empty maps and empty tables."""
        f = h5py.File(self.partial_path, "w", rdcc_nbytes=_WRITE_CHUNK_CACHE_BYTES)
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["created"] = _now()
        f.attrs["complete"] = False
        f.attrs.update(self._attrs)
        maps = f.create_group("maps", track_order=True)
        for name, dtype in MAP_DTYPES.items():
            ds = maps.create_dataset(
                name, shape=(self.n_frames, *self.shape), dtype=dtype,
                chunks=(1, *self.shape), fillvalue=0, **self._compression,
            )
            ds.attrs["units"] = _MAP_UNITS[name.split("_", 1)[1]]
        for name, schema in TABLE_FIELDS.items():  # every field of the format, 0 rows
            table = _Table(f.create_group(name, track_order=True), schema, self._compression, 0)
            for field, dtype in schema.items():
                table.create(field, dtype, 0)
        f.attrs[_COMMITTED] = np.zeros(len(_FRAME_TABLES), np.int64)
        f.flush()
        return f

    def _reopen(self) -> h5py.File | None:
        """The partial file opened for appending, or None if it is too damaged to use."""
        try:
            f = h5py.File(self.partial_path, "r+", rdcc_nbytes=_WRITE_CHUNK_CACHE_BYTES)
        except OSError as error:
            log.warning("cannot reopen %s (%s); starting from frame 0", self.partial_path, error)
            return None
        if not _looks_resumable(f):
            log.warning("%s is incomplete or damaged; starting from frame 0", self.partial_path)
            f.close()
            return None
        try:
            self._check_resume_matches(f)
        except InputFileError:
            f.close()
            raise
        f.attrs.update(self._attrs)
        _recover_swapped_tables(f)
        return f

    def _check_resume_matches(self, f: h5py.File) -> None:
        """Refuse to resume a partial file written for another input, model or shape."""
        for key in _RESUME_KEYS:
            old, new = _plain(f.attrs.get(key)), _plain(self._attrs.get(key))
            if not attr_equal(old, new):
                raise InputFileError(
                    f"cannot resume {self.partial_path}: {key} is {old!r} there but {new!r} "
                    "now; delete it or run without --resume"
                )
        old_shape = f["maps/ce_depth"].shape
        new_shape = (self.n_frames, *self.shape)
        if old_shape != new_shape:
            raise InputFileError(
                f"cannot resume {self.partial_path}: maps are {old_shape} there but "
                f"{new_shape} now; delete it or run without --resume"
            )

    def _load_tables(self) -> dict[str, _Table]:
        """Table handles, cut back to the committed rows."""
        f = self._require_open()
        committed = [int(n) for n in f.attrs[_COMMITTED]]
        tables = {}
        for name, schema in TABLE_FIELDS.items():
            n_rows = committed[_FRAME_TABLES.index(name)] if name in _FRAME_TABLES else None
            group = f[name]
            if n_rows is None:  # /events is replaced whole: all its rows are valid
                n_rows = group["frame"].shape[0] if "frame" in group else 0
            if _FILTERED in group.attrs:  # swapped in after the last commit: its own count
                n_rows = int(json.loads(group.attrs[_FILTERED])["n_rows"])
            tables[name] = _Table(group, schema, self._compression, n_rows)
            tables[name].truncate()
        f.flush()
        return tables

    # -- writing frames --------------------------------------------------------------

    def write_frame(self, i: int, *, ce_depth: Any, ce_confidence: Any, o_depth: Any,
                    o_confidence: Any, columns: Mapping[str, Any],
                    frame_row: Mapping[str, Any] | None = None) -> None:
        """Write the maps, columns and summary row of frame ``i`` and commit them.

        Parameters
        ----------
        i : int
            Frame index, ``0 <= i < n_frames``; each frame is written once.
        ce_depth, o_depth : array_like
            ``(H, W)`` integer depth maps [atoms], 0 = no column, values 0..255.
        ce_confidence, o_confidence : array_like
            ``(H, W)`` probability of the label in the depth map, in [0, 1] or NaN.
        columns : dict of array_like
            One entry per column found in this frame: ``x``, ``y`` [Å], ``depth``
            [atoms], ``confidence`` (probability), ``species`` (``"Ce"``/``"O"``), and
            optionally ``track`` (default -1) and extra numeric fields. ``frame`` is set
            here.
        frame_row : dict, optional
            Scalars for ``/frames``: ``valid``, ``drift_x``, ``drift_y`` [Å], ``n_ce``,
            ``n_o`` [atoms], ``o_ce_ratio``, ``area_A2`` [Å²], ``radius_A`` [Å], and
            extra numeric fields. Missing fields are filled (NaN, -1, False), so every
            field of the format is always present.

        Raises
        ------
        ValueError, TypeError
            Bad index, frame already written, wrong shapes, dtypes or values. Nothing
            is written then.
        """
        f = self._require_open()
        i = self._check_new_frame(i)
        maps = self._prepare_maps(ce_depth=ce_depth, ce_confidence=ce_confidence,
                                  o_depth=o_depth, o_confidence=o_confidence)
        column_rows = self._prepare_columns(columns, i)
        frame_rows = self._prepare_frame_row(frame_row or {}, i)
        self._write_maps(f, i, maps)
        self._pending.append((i, column_rows, frame_rows))
        self._done.add(i)
        if len(self._pending) >= self.commit_every:
            self._commit_pending()

    def _write_maps(self, f: h5py.File, i: int, maps: Mapping[str, np.ndarray]) -> None:
        """Store the maps of frame ``i`` (chunk ``i`` of each map dataset)."""
        level = int(self._compression.get("compression_opts", 0))
        if self._maps is None:  # h5py lookups cost tens of µs; cleared when f closes
            self._maps = dict(f["maps"].items())
        datasets = self._maps
        if self._direct_chunks is True:  # once: the stored filters must be ours exactly
            self._direct_chunks = all(
                ds.compression == "gzip" and ds.compression_opts == level and ds.shuffle
                and ds.chunks == (1, *self.shape) and not ds.fletcher32 and not ds.scaleoffset
                for ds in datasets.values())
        if not self._direct_chunks:
            for name, values in maps.items():
                datasets[name][i] = values
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=2)
        chunks = self._pool.map(lambda a: deflate_chunk(a, level), maps.values())
        for name, chunk in zip(maps, chunks, strict=True):
            datasets[name].id.write_direct_chunk((i, 0, 0), chunk)

    def _commit_pending(self) -> None:
        """Append the rows of the pending frames to the tables and commit them."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        try:
            for t, table in ((1, "columns"), (2, "frames")):
                self._tables[table].append(_concat_rows([p[t] for p in pending]))
            self._commit()
        except BaseException:
            self._rollback()
            self._done.difference_update(p[0] for p in pending)
            raise

    def _check_new_frame(self, i: int) -> int:
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise TypeError(f"frame index must be an int, got {type(i).__name__}")
        if not 0 <= i < self.n_frames:
            raise ValueError(f"frame index {i} outside [0, {self.n_frames})")
        if i in self._done:
            raise ValueError(f"frame {i} is already written")
        return int(i)

    def _prepare_maps(self, **maps: Any) -> dict[str, np.ndarray]:
        """Check shapes and cast the four maps to their stored dtypes."""
        out = {}
        for name, values in maps.items():
            values = np.asarray(values)
            if values.shape != self.shape:
                raise ValueError(f"{name}: expected shape {self.shape}, got {values.shape}")
            if name.endswith("_depth"):
                out[name] = _as_integers(name, values, MAP_DTYPES[name])
            else:
                out[name] = _as_confidence(name, values)
        return out

    def _prepare_columns(self, columns: Mapping[str, Any], i: int) -> dict[str, np.ndarray]:
        missing = [k for k in ("x", "y", "depth", "confidence", "species") if k not in columns]
        if missing:
            raise ValueError(f"columns: missing fields {missing}")
        if "frame" in columns:
            raise ValueError("columns: 'frame' is set by the writer")
        n = np.asarray(columns["x"]).size
        data = {"frame": np.full(n, i), "track": np.full(n, -1), **columns}
        return self._tables["columns"].cast(data)

    def _prepare_frame_row(self, frame_row: Mapping[str, Any], i: int) -> dict[str, np.ndarray]:
        if "frame" in frame_row and frame_row["frame"] != i:
            raise ValueError(f"frame_row['frame'] is {frame_row['frame']}, expected {i}")
        for key, value in frame_row.items():
            if np.ndim(value) != 0:
                raise ValueError(f"frame_row[{key!r}]: expected a scalar, got {value!r}")
        data = {key: [value] for key, value in frame_row.items()}
        data["frame"] = [i]
        return self._tables["frames"].cast(data)

    def _commit(self) -> None:
        """Record the table lengths as committed (one attribute write) and flush."""
        f = self._require_open()
        f.attrs[_COMMITTED] = np.array([self._tables[t].n_rows for t in _FRAME_TABLES], np.int64)
        f.flush()

    def _rollback(self) -> None:
        """Cut the tables back to the last committed rows after a failed write."""
        f = self._require_open()
        committed = f.attrs[_COMMITTED]
        for name, n_rows in zip(_FRAME_TABLES, committed, strict=True):
            self._tables[name].n_rows = int(n_rows)
            self._tables[name].truncate()

    # -- post-processing over the whole series ---------------------------------------

    def read_columns(self) -> dict[str, np.ndarray]:
        """The columns of all frames written so far, sorted by frame (stable).

        Returns
        -------
        dict of ndarray
            One array per field; ``species`` as ``str``. Row order is the order that
            :meth:`set_tracks` expects.
        """
        self._settled()
        return _sorted_rows(self._tables["columns"])

    def read_frames(self) -> dict[str, np.ndarray]:
        """The ``/frames`` rows written so far, sorted by frame (the order of
        :meth:`update_frames`)."""
        self._settled()
        return _sorted_rows(self._tables["frames"])

    def set_tracks(self, track: Any) -> None:
        """Set the track id of every column (after linking over all frames).

        Parameters
        ----------
        track : array_like of int
            One id per row of :meth:`read_columns`, in that order; -1 = not tracked.
        """
        self._set_sorted_field("columns", "track", track)

    @property
    def n_columns(self) -> int:
        """Number of ``/columns`` rows written so far."""
        self._settled()
        return int(self._tables["columns"].n_rows)

    def sort_by_frame(self) -> None:
        """Store the rows of ``/columns`` and ``/frames`` in frame order.

        A no-op when frames were written in order (as ``atom3d predict`` does); needed
        before the row-range methods :meth:`column_frame_bounds`,
        :meth:`read_column_rows` and :meth:`write_column_rows`.
        """
        self._settled()
        for name in _FRAME_TABLES:
            table = self._tables[name]
            if not _is_frame_sorted(table):
                order = _frame_order(table)
                self._replace_table(name, {k: v[order] for k, v in table.read().items()})

    def column_frame_bounds(self) -> np.ndarray:
        """Row offsets ``b`` of the frames' columns: frame ``t`` holds rows ``b[t]:b[t+1]``.

        Reads the ``frame`` field in chunks (memory does not grow with the series).

        Raises
        ------
        ValueError
            If the rows are not stored in frame order (call :meth:`sort_by_frame`).
        """
        self._settled()
        table = self._tables["columns"]
        counts = np.zeros(self.n_frames, np.int64)
        if not _is_frame_sorted(table):
            raise ValueError("columns are not stored in frame order: call sort_by_frame()")
        if "frame" in table.fields:
            ds = table.fields["frame"]
            for start in range(0, table.n_rows, _SCAN_ROWS):
                chunk = ds[start:min(start + _SCAN_ROWS, table.n_rows)]
                counts += np.bincount(chunk, minlength=self.n_frames)[: self.n_frames]
        return np.concatenate([[0], np.cumsum(counts)])

    def read_column_rows(self, start: int, stop: int,
                         fields: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Stored ``/columns`` rows ``start:stop`` (``species`` as ``str``).

        With :meth:`column_frame_bounds` this reads one frame at a time.
        """
        self._settled()
        table = self._tables["columns"]
        names = list(table.fields) if fields is None else list(fields)
        return {name: _to_str(table.fields[name][start:stop]) for name in names}

    def write_column_rows(self, start: int, stop: int, values: Mapping[str, Any]) -> None:
        """Overwrite (or add) fields of the stored ``/columns`` rows ``start:stop``."""
        self._settled()
        table = self._tables["columns"]
        if not 0 <= start <= stop <= table.n_rows:
            raise ValueError(f"rows {start}:{stop} outside the {table.n_rows} columns")
        for name, field in values.items():
            if name in ("frame", "species"):
                raise ValueError(f"write_column_rows: {name!r} cannot be changed")
            field = np.asarray(field)
            if field.shape != (stop - start,):
                raise ValueError(f"{name}: expected {stop - start} values, got {field.shape}")
            field = _as_dtype(name, field, table.dtype(name, field))
            if name not in table.fields:
                table.create(name, field.dtype, table.n_rows)
            table.fields[name][start:stop] = field

    def update_frames(self, values: Mapping[str, Any]) -> None:
        """Overwrite or add ``/frames`` fields (e.g. drift, known only after tracking).

        Parameters
        ----------
        values : dict of array_like
            Field name -> one value per row of :meth:`read_frames`, in that order.
        """
        for name, field in values.items():
            if name == "frame":
                raise ValueError("update_frames: 'frame' cannot be changed")
            self._set_sorted_field("frames", name, field)

    def _set_sorted_field(self, table_name: str, name: str, values: Any) -> None:
        """Write a field given in frame-sorted row order into stored row order."""
        f = self._settled()
        table = self._tables[table_name]
        values = np.asarray(values)
        if values.shape != (table.n_rows,):
            raise ValueError(f"{name}: expected {table.n_rows} values, got shape {values.shape}")
        stored = np.empty_like(values)
        stored[_frame_order(table)] = values
        table.set_field(name, stored)
        f.flush()

    def keep_column_rows(self, keep: Any, summary: Mapping[str, Any]) -> None:
        """Drop the ``/columns`` rows where ``keep`` is False (the last step of
        post-processing; rows keep their order).

        The kept rows are copied (a block at a time: memory does not grow with the
        series) into a new table that is swapped in with ``summary`` (JSON) as its
        attribute; :attr:`columns_filtered` returns it, also after a crash and reopen, so
        that a resumed run does not post-process the filtered rows again.
        """
        f = self._settled()
        table = self._tables["columns"]
        keep = np.asarray(keep, bool).reshape(-1)
        if keep.shape != (table.n_rows,):
            raise ValueError(f"keep: expected {table.n_rows} values, got {keep.shape[0]}")
        new_name = "columns" + _SWAP
        if new_name in f:
            del f[new_name]
        group = f.create_group(new_name, track_order=True)
        new = _Table(group, TABLE_FIELDS["columns"], self._compression, 0)
        for name, ds in table.fields.items():  # same fields, dtypes and order
            new.create(name, ds.dtype, 0)
        for start in range(0, table.n_rows, _SCAN_ROWS):
            stop = min(start + _SCAN_ROWS, table.n_rows)
            sel = keep[start:stop]
            new.append({name: ds[start:stop][sel] for name, ds in table.fields.items()})
        group.attrs[_FILTERED] = json.dumps({**dict(summary), "n_rows": new.n_rows})
        f.flush()
        del f["columns"]
        f.move(new_name, "columns")
        self._tables["columns"] = _Table(f["columns"], TABLE_FIELDS["columns"],
                                         self._compression, new.n_rows)
        self._commit()

    @property
    def columns_filtered(self) -> dict[str, Any] | None:
        """The ``summary`` of :meth:`keep_column_rows` if it ran, else None."""
        f = self._settled()
        raw = f["columns"].attrs.get(_FILTERED)
        return None if raw is None else json.loads(raw)

    def write_events(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Replace the ``/events`` table (call once the series is tracked).

        Parameters
        ----------
        events : iterable of dict
            One dict per event with ``frame``, ``track``, ``species`` (``"Ce"``/``"O"``),
            ``kind`` (``"depth_change"``, ``"appeared"``, ``"vanished"``),
            ``depth_before``, ``depth_after`` [atoms] and ``confidence``. Calling
            again replaces the previous events, so a resumed run may simply redo it.
        """
        events = list(events)
        keys = list(EVENT_FIELDS)
        for event in events:
            if set(event) != set(keys):
                raise ValueError(f"event {dict(event)}: expected exactly the fields {keys}")
        data = {k: np.array([e[k] for e in events]) if events else np.zeros(0, EVENT_FIELDS[k])
                for k in keys}
        table = self._tables["events"]
        self._replace_table("events", table.cast(data))

    def _replace_table(self, name: str, rows: Mapping[str, np.ndarray]) -> None:
        """Swap in a new version of a table: build ``name.new``, then delete and rename.

        A crash at any point leaves either the old or the new table in place (see
        :func:`_recover_swapped_tables`).
        """
        f = self._settled()
        new_name = name + _SWAP
        if new_name in f:
            del f[new_name]
        group = f.create_group(new_name, track_order=True)
        table = _Table(group, TABLE_FIELDS[name], self._compression, 0)
        table.append(rows)
        f.flush()
        del f[name]
        f.move(new_name, name)
        f.flush()
        self._tables[name] = _Table(f[name], TABLE_FIELDS[name], self._compression, table.n_rows)

    # -- finishing ---------------------------------------------------------------------

    def finalize(self) -> Path:
        """Sort the tables by frame, mark the file complete and move it to ``path``.

        Returns
        -------
        Path
            The finished results file.

        Raises
        ------
        ValueError
            If some frames were not written (the partial file stays resumable).
        """
        f = self._settled()
        missing = sorted(set(range(self.n_frames)) - self._done)
        if missing:
            raise ValueError(
                f"cannot finalize {self.path}: {len(missing)} of {self.n_frames} frames not "
                f"written (first: {missing[0]})"
            )
        for name, table in list(self._tables.items()):
            if not _is_frame_sorted(table):
                order = _frame_order(table)
                self._replace_table(name, {k: v[order] for k, v in table.read().items()})
        f.attrs["created"] = _now()
        del f.attrs[_COMMITTED]
        f.attrs["complete"] = True
        f.close()
        self._file = None
        self._maps = None
        _fsync(self.partial_path)
        os.replace(self.partial_path, self.path)
        self._finalized = True
        return self.path


def _sorted_rows(table: _Table) -> dict[str, np.ndarray]:
    """A table's rows sorted by frame (stable), text decoded to ``str``."""
    order = _frame_order(table)
    return {name: _to_str(values[order]) for name, values in table.read().items()}


def _as_confidence(name: str, values: np.ndarray) -> np.ndarray:
    """Cast a confidence map to float16, refusing values outside [0, 1] (NaN allowed)."""
    if values.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected probabilities, got dtype {values.dtype}")
    if values.size and not 0 <= values.min() <= values.max() <= 1:  # else NaN, inf or out
        finite = values[np.isfinite(values)]
        if finite.size and (finite.min() < 0 or finite.max() > 1):
            raise ValueError(f"{name}: values must be in [0, 1]")
    return to_float16(values)


def to_float16(values: np.ndarray) -> np.ndarray:
    """``values.astype(np.float16)``, the same bits, 4× faster for float32 maps.

    NumPy converts float32 to float16 in software (about 1.2 ms for 512²); torch uses the
    CPU's conversion instructions (0.3 ms). Both round to nearest, ties to even (tested bit
    for bit with ties, subnormals, overflow and infinities; NaN stays NaN). Other dtypes go
    through NumPy: torch
    turns float64 into float16 through float32, which can round twice. The copy runs in
    pieces below torch's parallel grain size, in the calling thread: a parallel copy
    wakes torch's OpenMP threads, whose spinning afterwards costs 2 ms of CPU per map.
    """
    values = np.asarray(values)
    if values.dtype != np.float32 or values.size < _FLOAT16_PIECE:
        return values.astype(np.float16)
    import torch  # noqa: PLC0415 (an optional speed-up; torch is loaded by the predictor)

    out = np.empty(values.shape, np.float16)
    source = torch.from_numpy(np.ascontiguousarray(values).reshape(-1))
    target = torch.from_numpy(out.reshape(-1))
    for start in range(0, source.numel(), _FLOAT16_PIECE):
        target[start : start + _FLOAT16_PIECE].copy_(source[start : start + _FLOAT16_PIECE])
    return out


#: Elements per piece of :func:`to_float16` (torch's ``at::internal::GRAIN_SIZE``).
_FLOAT16_PIECE = 32768


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2:
        raise ValueError(f"shape must be (H, W), got {shape}")
    return (_check_positive("H", shape[0]), _check_positive("W", shape[1]))


def _check_positive(name: str, value: int) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def _caller_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Root attributes given by the caller, checked and completed with defaults."""
    reserved = [k for k in _RESERVED_ATTRS if k in attrs]
    if reserved:
        raise ValueError(f"attrs: {reserved} are set by the writer")
    missing = [k for k in _REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise ValueError(f"attrs: missing {missing}")
    out = {"atom3d_version": __version__, **attrs}
    if out.get("frame_interval_s") is None:
        out["frame_interval_s"] = math.nan
    empty = [k for k, v in out.items() if v is None]
    if empty:
        raise ValueError(f"attrs: {empty} are None (use '' or NaN)")
    out["pixel_size_A"] = float(out["pixel_size_A"])
    out["frame_interval_s"] = float(out["frame_interval_s"])
    return out


def _compression_options(compression: str) -> dict[str, Any]:
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 1, "shuffle": True}
    if compression == "lzf":
        return {"compression": "lzf", "shuffle": True}
    raise ValueError(f"compression must be 'gzip' or 'lzf', got {compression!r}")


def _looks_resumable(f: h5py.File) -> bool:
    """Whether a partial file has the structure this writer creates."""
    return (
        f.attrs.get("format") == FORMAT
        and _COMMITTED in f.attrs
        and all(f"maps/{name}" in f for name in MAP_NAMES)
        and all(name in f or name + _SWAP in f for name in TABLE_FIELDS)
    )


def _recover_swapped_tables(f: h5py.File) -> None:
    """Finish or undo a table swap cut off by a crash (see ``_replace_table``)."""
    for name in TABLE_FIELDS:
        new_name = name + _SWAP
        if new_name not in f:
            continue
        if name in f:  # crashed while building the new table: keep the old one
            del f[new_name]
        else:  # crashed between delete and rename: the new table is complete
            f.move(new_name, name)


def _fsync(path: Path) -> None:
    """Flush a closed file's data to disk before it is renamed."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


# --------------------------------------------------------------------------- reader


def _open_checked(path: str | os.PathLike) -> h5py.File:
    """Open a results file read-only, refusing anything but a complete version-1 file."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: no such results file")
    if not h5py.is_hdf5(path):
        raise InputFileError(f"{path}: not an HDF5 file")
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        raise InputFileError(f"{path}: cannot open HDF5 file ({error})") from None
    try:
        _check_results(f, path)
    except InputFileError:
        f.close()
        raise
    return f


def _check_results(f: h5py.File, path: Path) -> None:
    """Raise InputFileError unless ``f`` is a complete atom3d results file, version 1."""
    fmt = _plain(f.attrs.get("format"))
    if fmt != FORMAT:
        raise InputFileError(f"{path}: not an atom3d results file (format attribute {fmt!r})")
    version = _plain(f.attrs.get("format_version"))
    if version != FORMAT_VERSION:
        raise InputFileError(
            f"{path}: results format_version {version!r} is not supported (this atom3d "
            f"reads {FORMAT_VERSION}); upgrade atom3d"
        )
    if not _plain(f.attrs.get("complete", False)):
        raise InputFileError(
            f"{path}: incomplete results file (the run was interrupted); rerun with --resume"
        )
    missing = [f"/maps/{n}" for n in MAP_NAMES if f"maps/{n}" not in f]
    missing += [f"/{n}" for n in TABLE_FIELDS if n not in f]
    if missing:
        raise InputFileError(f"{path}: damaged results file, missing {', '.join(missing)}")


def _read_contents(f: h5py.File, *, load_maps: bool) -> dict[str, Any]:
    """Attributes, maps (datasets or arrays) and tables of an open results file."""
    maps = {name: f["maps"][name] for name in MAP_NAMES}
    if load_maps:
        maps = {name: ds[()] for name, ds in maps.items()}
    out: dict[str, Any] = {"attrs": {k: _plain(v) for k, v in f.attrs.items()}, "maps": maps}
    for name in TABLE_FIELDS:
        out[name] = {field: _to_str(ds[()]) for field, ds in f[name].items()}
    return out


def read_results(path: str | os.PathLike, *, load_maps: bool = True) -> dict[str, Any]:
    """Read a complete results file into memory.

    Parameters
    ----------
    path : str or path-like
        A results file written by :class:`ResultsWriter`.
    load_maps : bool
        Load the ``(T, H, W)`` maps too. With False, ``"maps"`` is empty (use
        :func:`open_results` to read maps of long series lazily).

    Returns
    -------
    dict
        ``"attrs"`` (root attributes as Python values), ``"maps"`` (name -> ndarray),
        ``"columns"``, ``"frames"``, ``"events"`` (field -> 1-D ndarray; ``species``
        and ``kind`` as ``str``).

    Raises
    ------
    atom3d.errors.InputFileError
        Not an HDF5 file, not an atom3d results file, an unsupported
        ``format_version``, or an incomplete (partial) file.
    """
    with _open_checked(path) as f:
        out = _read_contents(f, load_maps=load_maps)
    if not load_maps:
        out["maps"] = {}
    return out


@contextmanager
def open_results(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Open a complete results file with lazy maps; the file closes when the block ends.

    Parameters
    ----------
    path : str or path-like
        A results file written by :class:`ResultsWriter`.

    Yields
    ------
    dict
        As :func:`read_results`, but ``"maps"`` holds ``h5py.Dataset`` objects
        (index them, e.g. ``maps["ce_depth"][t]``, to read frame ``t``).

    Raises
    ------
    atom3d.errors.InputFileError
        As :func:`read_results`.
    """
    with _open_checked(path) as f:
        yield _read_contents(f, load_maps=False)
