"""Vendor metadata the generic parsers leave unread: the FEI/Thermo Fisher XML of a
TIFF's ``FEI_TITAN`` tag, and when a file was acquired.

Conventions, stated once here:

* An acquisition time is a :class:`Stamp`: POSIX seconds and the resolution [s] of the
  source. Wall-clock strings without a time zone are read as UTC: only differences
  between files of one series are used (:func:`sequence_interval`), never the absolute
  time.
* Gatan DigitalMicrograph writes ``DataBar/Acquisition Time (OS)``, a Windows FILETIME
  (100 ns ticks since 1601-01-01 UTC; read as a float64, so to about 2 µs). Its
  ``Acquisition Date`` / ``Acquisition Time`` strings follow the Windows locale of the
  acquiring PC (``8/8/2016``, ``03-Jul-16``) and are not read: a DM file without the
  FILETIME has no acquisition time.
* The FEI/Thermo Fisher XML (TIFF tag 34683, written by Phenom, MAPS and other xT-based
  software as ``<FeiImage>``) gives the pixel size as ``pixelWidth``/``pixelHeight``
  with a ``unit`` attribute (metres when absent); a Velox-style ``PixelSize`` element
  with ``width``/``height`` (or ``X``/``Y``) children is read the same way.

Every function here returns None for what it cannot read; none raises on bad metadata.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any, NamedTuple

__all__ = [
    "FEI_XML_TAG",
    "INTERVAL_TOLERANCE",
    "Stamp",
    "dm_filetime_stamp",
    "fei_xml_calibration",
    "fei_xml_stamp",
    "parse_fei_xml",
    "rsciio_stamp",
    "sequence_interval",
    "tiff_datetime_stamp",
]

#: TIFF tag of the FEI/Thermo Fisher XML metadata (tifffile's name: ``FEI_TITAN``).
FEI_XML_TAG = 34683

#: Seconds from the FILETIME epoch (1601-01-01) to the POSIX epoch (1970-01-01).
_FILETIME_TO_POSIX_S = 11_644_473_600.0

#: Largest error of a frame interval from timestamps, relative to it: the resolution of
#: the timestamps over the time the series spans must not exceed this.
INTERVAL_TOLERANCE = 0.02


class Stamp(NamedTuple):
    """When a file was acquired: ``time_s`` [POSIX s] to within ``resolution_s`` [s]."""

    time_s: float
    resolution_s: float


# --------------------------------------------------------------------------- FEI XML


def parse_fei_xml(text: Any) -> ET.Element | None:
    """The root element of an FEI XML tag value (str or bytes), None if not XML."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str) or "<" not in text:
        return None
    text = text[text.index("<"):].rstrip("\x00 \r\n\t")
    try:
        return ET.fromstring(text)
    except ET.ParseError:
        return None


def _local(tag: str) -> str:
    """Element name without namespace, lower case."""
    return tag.rsplit("}", 1)[-1].lower()


def _find(root: ET.Element, *names: str) -> ET.Element | None:
    """First element (depth first) whose local name is one of ``names`` (lower case)."""
    for element in root.iter():
        if _local(element.tag) in names:
            return element
    return None


def _number(element: ET.Element | None) -> float | None:
    """The element's text as a finite number, None otherwise."""
    if element is None or element.text is None:
        return None
    try:
        value = float(element.text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _unit(element: ET.Element, default: str = "m") -> str:
    """The element's ``unit`` attribute (any case), ``default`` without one."""
    for key, value in element.attrib.items():
        if _local(key) == "unit" and value.strip():
            return value.strip()
    return default


def fei_xml_calibration(root: ET.Element) -> tuple[float, str, float, str] | None:
    """``(y, y_unit, x, x_unit)`` pixel size from FEI XML metadata, None if absent.

    A file that gives only the width is taken to have square pixels.
    """
    width = _find(root, "pixelwidth")
    if _number(width) is not None:
        height = _find(root, "pixelheight")
        if _number(height) is None:
            height = width
        return _number(height), _unit(height), _number(width), _unit(width)  # type: ignore[return-value]
    size = _find(root, "pixelsize")
    if size is None:
        return None
    children = {_local(child.tag): child for child in size}
    x = children.get("width", children.get("x"))
    y = children.get("height", children.get("y"))
    if _number(x) is None:
        return None
    if _number(y) is None:
        y = x
    unit_x = _find(root, "pixelunitx")
    unit_y = _find(root, "pixelunity")
    default_x = unit_x.text.strip() if unit_x is not None and unit_x.text else "m"
    default_y = unit_y.text.strip() if unit_y is not None and unit_y.text else default_x
    return _number(y), _unit(y, default_y), _number(x), _unit(x, default_x)  # type: ignore[return-value]


def fei_xml_stamp(root: ET.Element) -> Stamp | None:
    """Acquisition time from FEI XML: ``time`` (ISO 8601) or a Velox-style
    ``AcquisitionStartDatetime/DateTime`` (POSIX seconds)."""
    start = _find(root, "acquisitionstartdatetime")
    if start is not None:
        value = _number(_find(start, "datetime"))
        if value is not None and value > 0:
            return Stamp(value, 1.0)
    element = _find(root, "time")
    if element is not None and element.text:
        return _iso_stamp(element.text.strip())
    return None


def _iso_stamp(text: str) -> Stamp | None:
    """A Stamp from an ISO 8601 date-time, its resolution from its decimals."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    decimals = re.search(r":\d\d\.(\d+)", text)
    resolution = 10.0 ** -len(decimals.group(1)) if decimals else 1.0
    return Stamp(moment.timestamp(), resolution)


# --------------------------------------------------------------------------- TIFF, DM, rsciio


def tiff_datetime_stamp(page: Any) -> Stamp | None:
    """The baseline TIFF ``DateTime`` tag (``YYYY:MM:DD HH:MM:SS``, 1 s) of a page."""
    tag = page.tags.get(306)
    value = getattr(tag, "value", None)
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.strptime(value.strip("\x00 "), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    return Stamp(moment.replace(tzinfo=UTC).timestamp(), 1.0)


def dm_filetime_stamp(original_metadata: dict) -> Stamp | None:
    """``Acquisition Time (OS)`` of a DigitalMicrograph image's DataBar (FILETIME)."""
    images = original_metadata.get("ImageList")
    if not isinstance(images, dict):
        return None
    for group in images.values():
        if not isinstance(group, dict):
            continue
        bar = (group.get("ImageTags") or {}).get("DataBar")
        if not isinstance(bar, dict):
            continue
        ticks = bar.get("Acquisition Time (OS)")
        if isinstance(ticks, int | float) and math.isfinite(ticks) and ticks > 0:
            return Stamp(float(ticks) * 1e-7 - _FILETIME_TO_POSIX_S, 1e-6)
    return None


def rsciio_stamp(signal: dict) -> Stamp | None:
    """Acquisition time of a RosettaSciIO signal dict: the DigitalMicrograph FILETIME,
    else ``metadata.General.date`` and ``time`` (ISO date, time to the second or finer)."""
    stamp = dm_filetime_stamp(signal.get("original_metadata") or {})
    if stamp is not None:
        return stamp
    general = (signal.get("metadata") or {}).get("General") or {}
    date, clock = general.get("date"), general.get("time")
    if not (isinstance(date, str) and isinstance(clock, str)):
        return None
    return _iso_stamp(f"{date.strip()}T{clock.strip()}")


# --------------------------------------------------------------------------- series


def sequence_interval(first: Stamp | None, last: Stamp | None, n_files: int) -> float:
    """Frame interval [s] of an image sequence from its first and last file's acquisition
    times, NaN when either is unknown, they are not in order, or their resolution is
    too coarse for the time spanned (more than :data:`INTERVAL_TOLERANCE` of it)."""
    if first is None or last is None or n_files < 2:
        return math.nan
    span = last.time_s - first.time_s
    resolution = max(first.resolution_s, last.resolution_s)
    if not span > 0 or resolution > INTERVAL_TOLERANCE * span:
        return math.nan
    return span / (n_files - 1)
