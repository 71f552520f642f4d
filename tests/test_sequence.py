"""Image sequences: a directory of image files, one frame each, read as one series.

In situ cameras often save a movie as one file per frame (Gatan's in situ capture writes
nested folders of DM4 files); ``atom3d predict DIR`` must read it as the series it is.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from atom3d.errors import InputFileError
from atom3d.io.readers import open_series
from atom3d.io.results import read_results
from tests.test_predict import _lattice_frame, _write_tif
from tests.test_selection import _run

PIXEL_A = 0.2
SHAPE = (64, 80)
REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


def _frames(n=12, seed=3):
    rng = np.random.default_rng(seed)
    return np.stack([_lattice_frame(rng, (0.05 * t, 0.03 * t), shape=SHAPE) for t in range(n)])


def _sequence(directory: Path, frames, nested=True) -> Path:
    """Frames as single-image ImageJ TIFFs named without zero padding (frame_2 before
    frame_10 only in natural order), half of them in a sub-folder, beside a text file and
    a hidden file."""
    directory.mkdir(parents=True)
    for t, frame in enumerate(frames):
        sub = directory / ("b" if nested and t >= 6 else "a")
        sub.mkdir(exist_ok=True)
        _write_tif(sub / f"frame_{t + 1}.tif", frame[None])
    (directory / "notes.txt").write_text("acquired on Monday")
    (directory / ".DS_Store").write_bytes(b"\0\1")
    return directory


def test_a_directory_of_images_is_one_series_in_natural_order(tmp_path):
    frames = _frames()
    d = _sequence(tmp_path / "movie", frames)
    with open_series(d) as s:
        assert s.n_frames == 12 and s.shape == SHAPE
        assert s.format == "sequence-tiff-imagej"
        assert abs(s.pixel_size_A - PIXEL_A) < 1e-6
        assert np.isnan(s.frame_interval_s)
        assert "read 12 .tif files as frames" in s.signal_note
        assert "2 other files skipped" in s.signal_note
        for t in (0, 1, 9, 11):
            np.testing.assert_array_equal(s.frame(t), frames[t])


def test_a_frame_unlike_the_first_is_refused_when_read(tmp_path):
    frames = _frames(4)
    d = _sequence(tmp_path / "movie", frames, nested=False)
    _write_tif(d / "a" / "frame_3.tif", frames[2:3, :48, :48])  # another shape
    _write_tif(d / "a" / "frame_4.tif", frames[3:4], pixel=0.1)  # another pixel size
    with open_series(d) as s:
        np.testing.assert_array_equal(s.frame(1), frames[1])
        with pytest.raises(InputFileError, match="frame_3.tif is 48 × 48 px, the first file "
                                                 "80 × 64"):
            s.frame(2)
        with pytest.raises(InputFileError, match="frame_4.tif has a pixel size of 0.1 Å"):
            s.frame(3)
    with open_series(d, pixel_size_A=0.2) as s:  # an override is the pixel size of all
        s.frame(3)


def test_directories_that_are_not_sequences_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="no image files"):
        open_series(tmp_path / "empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("x")
    with pytest.raises(InputFileError, match="no image files"):
        open_series(tmp_path / "text")
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    _write_tif(stacks / "s1.tif", _frames(2))
    with pytest.raises(InputFileError, match="holds 2 frames; predict stack files one by one"):
        open_series(stacks)


def test_predicting_a_sequence_equals_predicting_its_stack(tmp_path, model_dir):
    frames = _frames(6)
    d = _sequence(tmp_path / "movie", frames)
    stack = _write_tif(tmp_path / "stack.tif", frames)
    assert _run(d, tmp_path / "seq.h5", model_dir) == 0
    assert _run(stack, tmp_path / "stack.h5", model_dir) == 0
    seq, ref = (read_results(tmp_path / n) for n in ("seq.h5", "stack.h5"))
    assert seq["attrs"]["source_signal"].startswith("read 6 .tif files as frames")
    for name in ref["maps"]:
        np.testing.assert_array_equal(seq["maps"][name], ref["maps"][name])
    for table in ("columns", "frames", "events"):
        for field, values in ref[table].items():
            np.testing.assert_array_equal(seq[table][field], values, err_msg=field)


@pytest.mark.skipif(not REALDATA.is_dir(), reason="../shared/realdata not present")
def test_a_sequence_of_real_dm_images(tmp_path):
    source = next((p for p in sorted(REALDATA.rglob("*.dm[34]"))
                   if _single_image(p)), None)
    if source is None:
        pytest.skip("no calibrated single-image DM file in ../shared/realdata")
    d = tmp_path / "insitu" / "Hour_00" / "Minute_00"
    d.mkdir(parents=True)
    for k in range(3):
        shutil.copy(source, d / f"Frame_{k:04d}{source.suffix}")
    with open_series(source) as one:
        expected, pixel = one.frame(0), one.pixel_size_A
    with open_series(tmp_path / "insitu") as s:
        assert s.n_frames == 3 and s.format == f"sequence-{source.suffix[1:]}"
        assert s.pixel_size_A == pytest.approx(pixel, rel=1e-9)
        np.testing.assert_array_equal(s.frame(2), expected)


def _single_image(path: Path) -> bool:
    try:
        with open_series(path) as s:
            return s.n_frames == 1
    except InputFileError:
        return False


def test_tifffile_writes_what_the_sequence_reads(tmp_path):
    # the fixture's files are what they claim: one ImageJ page each
    d = _sequence(tmp_path / "m", _frames(2), nested=False)
    with tifffile.TiffFile(d / "a" / "frame_1.tif") as tif:
        assert len(tif.pages) == 1 and tif.is_imagej


def test_an_unreadable_frame_is_invalid_and_the_run_goes_on(tmp_path, model_dir,
                                                            capsys):
    frames = _frames(5)
    d = _sequence(tmp_path / "movie", frames, nested=False)
    (d / "a" / "frame_5.tif").write_bytes((d / "a" / "frame_5.tif").read_bytes()[:300])
    _write_tif(d / "a" / "frame_2.tif", frames[1:2, :40, :40])
    capsys.readouterr()
    assert _run(d, tmp_path / "o.h5", model_dir) == 0
    err = capsys.readouterr().err
    assert "frame 1 is invalid (unreadable:" in err and "frame_2.tif is 40 × 40 px" in err
    assert "frame 4 is invalid (unreadable:" in err and "frame_5.tif" in err
    res = read_results(tmp_path / "o.h5", load_maps=False)
    assert list(res["frames"]["valid"]) == [True, False, True, True, False]
    assert not np.isin(res["columns"]["frame"], [1, 4]).any()
    assert np.isin(res["columns"]["frame"], [0, 2, 3]).all() and len(res["columns"]["frame"])


def test_frame_interval_option_times_a_sequence(tmp_path, model_dir):
    d = _sequence(tmp_path / "movie", _frames(4), nested=False)
    assert _run(d, tmp_path / "o.h5", model_dir, "--frame-interval", "0.25",
                "--frames", "::2") == 0
    attrs = read_results(tmp_path / "o.h5", load_maps=False)["attrs"]
    assert attrs["source_frame_interval_s"] == pytest.approx(0.25)
    assert attrs["frame_interval_s"] == pytest.approx(0.5)
    assert _run(d, tmp_path / "n.h5", model_dir) == 0
    assert np.isnan(read_results(tmp_path / "n.h5", load_maps=False)["attrs"]["frame_interval_s"])
