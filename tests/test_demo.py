"""`atom3d demo` end to end on a small series, and the series' reproducibility."""
import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

pytest.importorskip("abtem")

from atom3d.cli import main  # noqa: E402
from atom3d.io.results import read_results  # noqa: E402

SMALL = ["--frames", "3", "--size", "96", "--diameter-nm", "1.5", "--quiet"]


def test_demo_runs_and_scores_against_the_truth(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", *SMALL, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "How the prediction compares with the simulated truth" in printed
    r = read_results(out / "demo.h5", load_maps=False)
    assert r["attrs"]["complete"] is True and r["attrs"]["depth_smoothing"] == "changepoint"
    assert r["frames"]["frame"].size == 3
    np.testing.assert_allclose(r["frames"]["dose_e_per_A2"], 1000, rtol=0.2)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["frames"] == 3
    assert metrics["Ce"]["f1"] > 0.9  # the shipped model finds the columns of a small particle
    assert (out / "demo_series.tif").exists() and (out / "truth_columns.csv").exists()
    # atom3d info reads what atom3d predict wrote (every attribute, figures)
    assert main(["info", str(out / "demo.h5"), "--json", "--plot", str(tmp_path / "fig")]) == 0
    summary = json.loads(capsys.readouterr().out.split("\nwrote ")[0])
    assert summary["frames"] == 3 and summary["attrs"]["depth_smoothing"] == "changepoint"
    assert summary["attrs"]["pixel_size_source"] == "file"
    assert summary["attrs"]["lattice_pixel_size_A"] == pytest.approx(0.2, rel=0.01)
    assert (tmp_path / "fig" / "summary.png").exists()
    assert main(["info", str(out / "demo.h5")]) == 0  # the summary to read
    text = capsys.readouterr().out
    assert "3 frames" in text and "the CeO2 lattice gives 0.2" in text


def test_demo_series_is_the_same_in_every_process(tmp_path):
    """FFTW plans chosen by measurement differ between processes; the demo must not."""
    code = ("import sys; from atom3d.demo import simulate_demo_series; "
            "simulate_demo_series(sys.argv[1], n_frames=2, image_px=96, diameter_nm=1.5, "
            "frozen_phonons=2, progress=False)")
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], check=True)
    a = tifffile.imread(tmp_path / "a" / "demo_series.tif")
    b = tifffile.imread(tmp_path / "b" / "demo_series.tif")
    np.testing.assert_array_equal(a, b)
    assert (tmp_path / "a" / "truth_columns.csv").read_text() == \
        (tmp_path / "b" / "truth_columns.csv").read_text()


def test_demo_series_other_pixel_size_and_optics(tmp_path):
    """The series is written at the pixel size asked for, with its true drift."""
    from atom3d.demo import DEMO_OPTICS_KW, simulate_demo_series
    from atom3d.io.readers import open_series
    from atom3d.simulation.optics import Optics

    optics = Optics(**{**DEMO_OPTICS_KW, "defocus_A": 40.0, "cs_A": -2e4})
    sim = simulate_demo_series(tmp_path, n_frames=2, image_px=64, pixel_size_A=0.25,
                               diameter_nm=1.2, frozen_phonons=1, optics=optics,
                               tilt_mrad=5.0, progress=False)
    with open_series(sim.tif) as series:
        assert series.pixel_size_A == pytest.approx(0.25, rel=1e-6)
        assert series.n_frames == 2
    rows = np.loadtxt(tmp_path / "truth_drift.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(rows[:, 1:], sim.drift_A, atol=1e-5)
    assert np.all(rows[0, 1:] == 0) and np.any(rows[1, 1:] != 0)


@pytest.mark.parametrize("argv", [["--frozen-phonons", "0"], ["--frames", "0"],
                                  ["--dose", "-5"], ["--size", "33"],
                                  ["--pixel-size", "0"], ["--defocus", "nan"],
                                  ["--diameter-nm", "9"]])
def test_demo_bad_arguments_are_one_line_and_exit_2(tmp_path, capsys, argv):
    assert main(["demo", "--quiet", "--out", str(tmp_path / "d"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("atom3d: error:") and "\n" not in err, err
    assert not (tmp_path / "d").exists()
