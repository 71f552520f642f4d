"""``atom3d predict --frames START:STOP[:STEP] --roi X,Y,W,H``: part of a series.

A run on a selection must equal a run on a file that holds only the selected frames,
cropped: the same maps, columns, tracks and events; the results file says which part of
the input it covers, and a complete file for another part is not kept by ``--resume``.
"""

import argparse
import math

import numpy as np
import pytest

from atom3d.errors import UserError
from atom3d.inference.series import predict_main
from atom3d.io.readers import open_series
from atom3d.io.results import read_results
from atom3d.io.selection import FrameRange, Roi, SelectedSeries, frame_range, roi
from tests.test_predict import _exit_code, _lattice_frame, _write_tif

PIXEL_A = 0.2
FULL = (96, 120)  # (H, W) of the file's frames [px]
N_FRAMES = 9
INTERVAL_S = 0.5
FRAMES = "1:8:3"  # frames 1, 4, 7 of the file
ROI = Roi(x=24, y=10, width=80, height=64)


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    """The whole file, and a second file holding only the selected frames, cropped."""
    rng = np.random.default_rng(7)
    frames = np.stack([_lattice_frame(rng, (0.08 * t, -0.05 * t), shape=FULL)
                       for t in range(N_FRAMES)])
    d = tmp_path_factory.mktemp("movie")
    whole = _write_tif(d / "whole.tif", frames, interval_s=INTERVAL_S)
    picked = frames[1:8:3, ROI.y:ROI.y + ROI.height, ROI.x:ROI.x + ROI.width]
    cropped = _write_tif(d / "cropped.tif", picked, interval_s=3 * INTERVAL_S)
    return whole, cropped, frames


def _run(src, out, model_dir, *extra):
    return predict_main([str(src), "-o", str(out), "--model", str(model_dir), "--quiet",
                         "--no-tta", *map(str, extra)])


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(("text", "expected"), [
    ("100:200", FrameRange(100, 200, 1)), ("::5", FrameRange(0, None, 5)),
    ("7", FrameRange(7, 8, 1)), ("3:", FrameRange(3, None, 1)),
    (":10", FrameRange(0, 10, 1)), (" 2:9:2 ", FrameRange(2, 9, 2)), (":", FrameRange()),
])
def test_frame_ranges_parse_as_python_slices(text, expected):
    assert frame_range(text) == expected
    picked = expected.indices(300)
    assert list(picked) == list(range(300))[slice(expected.start, expected.stop,
                                                     expected.step)]


@pytest.mark.parametrize("text", ["5:3", "4:4", "a:b", "1:2:0", "-1", "1:2:3:4", ""])
def test_bad_frame_ranges_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        frame_range(text)


def test_a_range_beyond_the_file_is_refused_with_its_length():
    assert list(FrameRange(5, 100, 2).indices(9)) == [5, 7]  # STOP past the end: clipped
    with pytest.raises(UserError, match="no frame selected; the file has 9 frames"):
        FrameRange(9, None, 1).indices(9)


@pytest.mark.parametrize(("text", "expected"), [
    ("24,10,80,64", Roi(24, 10, 80, 64)), (" 0, 0, 512, 256", Roi(0, 0, 512, 256))])
def test_rectangles_parse(text, expected):
    assert roi(text) == expected


@pytest.mark.parametrize("text", ["1,2,3", "1,2,3,4,5", "-1,0,10,10", "0,0,0,10", "a,b,c,d",
                                  "1.5,2,3,4"])
def test_bad_rectangles_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        roi(text)


# --------------------------------------------------------------------------- the view


def test_selected_series_maps_frames_and_crops(movie):
    whole, _, frames = movie
    with open_series(whole) as s:
        view = SelectedSeries(s, frame_range(FRAMES), ROI)
        assert view.n_frames == 3 and view.shape == (ROI.height, ROI.width)
        assert [view.source_frame(i) for i in range(3)] == [1, 4, 7]
        assert math.isclose(view.frame_interval_s, 3 * INTERVAL_S, rel_tol=1e-6)
        assert math.isclose(view.pixel_size_A, PIXEL_A, rel_tol=1e-5)
        for i, t in enumerate((1, 4, 7)):
            np.testing.assert_array_equal(
                view.frame(i), frames[t, ROI.y:ROI.y + ROI.height, ROI.x:ROI.x + ROI.width])
        with pytest.raises(IndexError):
            view.frame(3)
        assert not view.whole
        assert SelectedSeries(s).whole
        with pytest.raises(UserError, match="reaches outside the frames of 120 × 96 px"):
            SelectedSeries(s, None, Roi(50, 40, 80, 64))


# --------------------------------------------------------------------------- end to end


def test_a_selection_predicts_as_the_cropped_frames_alone(movie, model_dir, tmp_path):
    whole, cropped, _ = movie
    assert _run(whole, tmp_path / "sel.h5", model_dir, "--frames", FRAMES, "--roi",
                str(ROI)) == 0
    assert _run(cropped, tmp_path / "crop.h5", model_dir) == 0
    sel, ref = (read_results(tmp_path / name) for name in ("sel.h5", "crop.h5"))
    a = sel["attrs"]
    assert list(a["source_frames"]) == [1, 8, 3]
    assert list(a["roi_px"]) == [ROI.x, ROI.y, ROI.width, ROI.height]
    assert list(a["source_frame_shape_px"]) == list(FULL) and a["source_n_frames"] == N_FRAMES
    assert math.isclose(a["frame_interval_s"], 3 * INTERVAL_S, rel_tol=1e-6)
    assert math.isclose(a["source_frame_interval_s"], INTERVAL_S, rel_tol=1e-6)
    assert list(sel["frames"]["source_frame"]) == [1, 4, 7]
    assert list(ref["frames"]["source_frame"]) == [0, 1, 2]  # a whole file: its own index
    for name in ref["maps"]:
        np.testing.assert_array_equal(sel["maps"][name], ref["maps"][name])
    assert len(ref["columns"]["x"]) > 0
    for table in ("columns", "events"):
        assert set(sel[table]) == set(ref[table])
        for field, values in ref[table].items():
            np.testing.assert_array_equal(sel[table][field], values, err_msg=field)
    for field, values in ref["frames"].items():
        if field != "source_frame":
            np.testing.assert_array_equal(sel["frames"][field], values, err_msg=field)


def test_resume_keeps_a_complete_file_only_for_the_same_selection(movie, model_dir, tmp_path,
                                                                  capsys):
    whole, _, _ = movie
    out = tmp_path / "r.h5"
    assert _run(whole, out, model_dir, "--frames", "0:4") == 0
    capsys.readouterr()
    assert _run(whole, out, model_dir, "--frames", "0:4", "--resume") == 0
    assert "already complete" in capsys.readouterr().out
    assert _run(whole, out, model_dir, "--frames", "2:6", "--resume") == 0
    assert "already complete" not in capsys.readouterr().out
    assert list(read_results(out, load_maps=False)["frames"]["source_frame"]) == [2, 3, 4, 5]
    assert _run(whole, out, model_dir, "--frames", "2:6", "--roi", str(ROI), "--resume") == 0
    assert "already complete" not in capsys.readouterr().out
    res = read_results(out, load_maps=False)
    assert list(res["attrs"]["roi_px"]) == [ROI.x, ROI.y, ROI.width, ROI.height]


def test_a_whole_file_records_itself_as_its_selection(movie, model_dir, tmp_path):
    whole, _, _ = movie
    assert _run(whole, tmp_path / "w.h5", model_dir) == 0
    res = read_results(tmp_path / "w.h5", load_maps=False)
    assert list(res["attrs"]["source_frames"]) == [0, N_FRAMES, 1]
    assert list(res["attrs"]["roi_px"]) == [0, 0, FULL[1], FULL[0]]
    assert list(res["frames"]["source_frame"]) == list(range(N_FRAMES))


def test_bad_selections_exit_2_with_one_line(movie, model_dir, tmp_path, capsys):
    whole, _, _ = movie
    base = [str(whole), "-o", str(tmp_path / "b.h5"), "--model", str(model_dir), "--quiet"]
    for extra, words in ((["--frames", "9:"], "no frame selected; the file has 9 frames"),
                         (["--roi", "100,0,64,64"], "reaches outside"),
                         (["--roi", "0,0,8,8"], "px a side"),
                         (["--frames", "3:1"], "STOP must be after START")):
        capsys.readouterr()
        assert _exit_code([*base, *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert not list(tmp_path.iterdir())  # nothing written, not even a partial file


def test_info_figures_and_xyz_say_which_part(movie, model_dir, tmp_path):
    import h5py
    import matplotlib.image

    from atom3d.inference.export3d import export_xyz
    from atom3d.inference.figures import _open_source
    from atom3d.inference.overview import results_overview

    whole, _, frames = movie
    out = tmp_path / "s.h5"
    assert _run(whole, out, model_dir, "--frames", FRAMES, "--roi", str(ROI),
                "--figures", tmp_path / "fig") == 0
    res = read_results(out, load_maps=False)
    text = results_overview(res, out)
    assert "frames 1–7, one in 3 of the file's 9" in text
    assert "rectangle x 24–103, y 10–73 px of its 120 × 96" in text
    # the figures draw the selected, cropped frames of the source file
    view = _open_source(res["attrs"])
    try:
        np.testing.assert_array_equal(view.frame(1), frames[4, 10:74, 24:104])
    finally:
        view.close()
    assert matplotlib.image.imread(tmp_path / "fig" / "tracks.png").ndim == 3
    xyz = export_xyz(out, tmp_path / "xyz")
    assert "source_frame=4" in xyz[1].read_text().splitlines()[1]
    with h5py.File(out) as f:
        assert "source_frame" in f["frames"]


def test_the_signal_taken_from_a_file_of_several_is_said_and_recorded(movie, model_dir,
                                                                      tmp_path, capsys):
    import zarr

    _, _, frames = movie
    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    group.attrs.update(pixel_size_A=PIXEL_A, frame_interval_s=INTERVAL_S)
    group.create_array("movie/frames", shape=frames[:3].shape, dtype="f4")[:] = frames[:3]
    group.create_array("overview", shape=(32, 32), dtype="f4")[:] = 1.0
    capsys.readouterr()
    assert _run(tmp_path / "g.zarr", tmp_path / "g.h5", model_dir) == 0
    err = capsys.readouterr().err
    assert any("g.zarr:" in line and "movie/frames" in line for line in err.splitlines())
    note = read_results(tmp_path / "g.h5", load_maps=False)["attrs"]["source_signal"]
    assert "movie/frames" in note
    assert _run(movie[0], tmp_path / "w.h5", model_dir, "--frames", "0") == 0
    assert read_results(tmp_path / "w.h5", load_maps=False)["attrs"]["source_signal"] == ""
