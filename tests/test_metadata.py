"""Vendor metadata beyond the generic parsers: the FEI/Thermo Fisher XML of TIFF tag 34683
(pixel size, acquisition time) and the acquisition times that time an image sequence."""

import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import tifffile

from atom3d.errors import InputFileError
from atom3d.io.metadata import (
    Stamp,
    dm_filetime_stamp,
    fei_xml_calibration,
    parse_fei_xml,
    rsciio_stamp,
    sequence_interval,
)
from atom3d.io.readers import open_series

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


def _fei_xml(width="1.5E-11", height="1.5E-11", unit='unit="m"', time="2019-05-14T10:22:03.125"):
    height_element = "" if height is None else f"<pixelHeight {unit}>{height}</pixelHeight>"
    return ('<?xml version="1.0" encoding="utf-8"?>'
            '<FeiImage xmlns:xsd="http://www.w3.org/2001/XMLSchema">'
            f"<time>{time}</time><instrument><uniqueID>9950001</uniqueID></instrument>"
            f"<pixelWidth {unit}>{width}</pixelWidth>{height_element}</FeiImage>")


def _write(path, xml=None, shape=(48, 40), datetime_tag=None, seed=0):
    data = np.random.default_rng(seed).poisson(50, shape).astype(np.uint16)
    extratags = [] if xml is None else [(34683, "s", 0, xml, True)]
    tifffile.imwrite(path, data, extratags=extratags, datetime=datetime_tag)
    return data


def test_fei_xml_tiff_reads_its_pixel_size(tmp_path):
    data = _write(tmp_path / "a.tif", _fei_xml())
    with open_series(tmp_path / "a.tif") as s:
        assert s.format == "tiff-fei"
        assert s.pixel_size_A == pytest.approx(0.15)
        np.testing.assert_array_equal(s.frame(0), data)
        expected = datetime(2019, 5, 14, 10, 22, 3, 125000, tzinfo=UTC).timestamp()
        assert s.acquired.time_s == pytest.approx(expected)
        assert s.acquired.resolution_s == pytest.approx(1e-3)


@pytest.mark.parametrize(("width", "unit", "angstrom"), [
    ("0.021", 'unit="nm"', 0.21), ("21", 'unit="pm"', 0.21), ("2.5E-11", "", 0.25)])
def test_fei_xml_units(tmp_path, width, unit, angstrom):
    _write(tmp_path / "a.tif", _fei_xml(width=width, height=None, unit=unit))
    with open_series(tmp_path / "a.tif") as s:  # width only: square pixels
        assert s.pixel_size_A == pytest.approx(angstrom)


def test_velox_style_pixel_size_element():
    root = parse_fei_xml(
        b"<Metadata><BinaryResult><PixelSize><width>1.8e-11</width><height>1.9e-11</height>"
        b"</PixelSize><PixelUnitX>m</PixelUnitX><PixelUnitY>m</PixelUnitY></BinaryResult>"
        b"</Metadata>\x00")
    assert fei_xml_calibration(root) == (1.9e-11, "m", 1.8e-11, "m")


def test_fei_xml_that_cannot_calibrate_falls_back(tmp_path):
    _write(tmp_path / "a.tif", _fei_xml(width="1.5E-11", height="3.0E-11"))
    with pytest.raises(InputFileError, match="non-square pixels"):
        open_series(tmp_path / "a.tif")
    for k, xml in enumerate(("<FeiImage><pixelWidth>", "<FeiImage><other>1</other></FeiImage>",
                             "not xml at all")):
        _write(tmp_path / f"b{k}.tif", xml)
        with pytest.raises(InputFileError, match="no pixel calibration; pass --pixel-size"):
            open_series(tmp_path / f"b{k}.tif")
        with open_series(tmp_path / f"b{k}.tif", pixel_size_A=0.2) as s:
            assert s.format == "tiff" and s.pixel_size_A == 0.2


def test_sequence_interval_needs_fine_enough_times():
    first = Stamp(1000.0, 1e-3)
    assert sequence_interval(first, Stamp(1005.5, 1e-3), 12) == pytest.approx(0.5)
    assert math.isnan(sequence_interval(first, Stamp(1005.5, 1.0), 12))  # 1 s of 5.5 s
    assert sequence_interval(Stamp(0.0, 1.0), Stamp(60.0, 1.0), 31) == pytest.approx(2.0)
    assert math.isnan(sequence_interval(first, Stamp(999.0, 1e-3), 12))  # out of order
    assert math.isnan(sequence_interval(first, first, 12))
    assert math.isnan(sequence_interval(first, None, 12))
    assert math.isnan(sequence_interval(first, Stamp(1005.5, 1e-3), 1))


def test_a_sequence_is_timed_by_its_files(tmp_path):
    d = tmp_path / "movie"
    d.mkdir()
    for t in range(12):
        seconds = 3 + 0.4 * t
        _write(d / f"img_{t + 1}.tif", _fei_xml(time=f"2020-01-01T23:59:{seconds:06.3f}"),
               seed=t)
    with open_series(d) as s:
        assert s.format == "sequence-tiff-fei" and s.n_frames == 12
        assert s.frame_interval_s == pytest.approx(0.4)
        assert "frame interval 0.4 s from the first and last file's acquisition times" \
            in s.signal_note
    # TIFF DateTime (1 s): 31 files over 60 s time the series, 12 over 11 s do not
    for n, step, expected in ((31, 2, 2.0), (12, 1, math.nan)):
        e = tmp_path / f"dt{n}"
        e.mkdir()
        for t in range(n):
            _write(e / f"f{t}.tif", _fei_xml(time=""), datetime_tag=datetime(
                2021, 3, 4, 12, 0, 0).replace(minute=t * step // 60, second=t * step % 60))
        with open_series(e) as s:
            assert (math.isnan(s.frame_interval_s) if math.isnan(expected)
                    else s.frame_interval_s == pytest.approx(expected))


def test_dm_filetime_and_general_date():
    ticks = 131120400543850850  # 2016-07-03 17:20:54.385085 UTC
    meta = {"ImageList": {"TagGroup0": {"ImageTags": {"DataBar": {
        "Acquisition Date": "03-Jul-16", "Acquisition Time": "6:20:54 PM",
        "Acquisition Time (OS)": float(ticks)}}}}}
    stamp = dm_filetime_stamp(meta)
    moment = datetime.fromtimestamp(stamp.time_s, UTC)
    assert (moment.year, moment.month, moment.day, moment.hour, moment.minute,
            moment.second) == (2016, 7, 3, 17, 20, 54)
    assert moment.microsecond == pytest.approx(385085, abs=2)
    general = {"metadata": {"General": {"date": "2019-12-05", "time": "10:03:44"}}}
    assert rsciio_stamp(general) == Stamp(
        datetime(2019, 12, 5, 10, 3, 44, tzinfo=UTC).timestamp(), 1.0)
    assert rsciio_stamp({"metadata": {"General": {"date": "2019-12-05"}}}) is None
    assert dm_filetime_stamp({"ImageList": {"TagGroup0": {"ImageTags": {}}}}) is None


@pytest.mark.skipif(not REALDATA.is_dir(), reason="../shared/realdata not present")
def test_real_files_say_when_they_were_acquired():
    dm = REALDATA / "TEMUL/temul/example_data/experimental/example_Se_implanted_MoS2.dm3"
    with open_series(dm) as s:  # DataBar: 03-Jul-16, 6:20:54 PM local time, FILETIME UTC
        moment = datetime.fromtimestamp(s.acquired.time_s, UTC)
        assert (moment.date().isoformat(), moment.minute, moment.second) == ("2016-07-03", 20, 54)
        assert s.acquired.resolution_s < 1e-3
    no_filetime = REALDATA / "rosettasciio/rsciio/tests/data/tiff/test_dm_image_um_unit.dm3"
    with open_series(no_filetime, pixel_size_A=0.2) as s:  # date strings only: not read
        assert s.acquired is None
    emd = REALDATA / "rosettasciio/rsciio/tests/data/emd/fei_example_tem_stack.emd"
    with open_series(emd) as s:  # AcquisitionStartDatetime 1575540224 = 2019-12-05 10:03:44 UTC
        assert s.acquired.time_s == pytest.approx(1575540224.0)
