"""atom3d info on a model directory, a results file and bad paths."""

import json
from pathlib import Path

import numpy as np
import pytest

from atom3d.cli import main
from atom3d.io.results import ResultsWriter


def test_info_model_directory(capsys):
    from importlib.resources import files

    model = files("atom3d") / "models" / "ceo2-110"
    assert main(["info", str(model), "--json"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["format"] == "atom3d.model" and cfg["pixel_size_A"] > 0


def test_info_model_summary_in_microscope_units(tmp_path, capsys):
    """By name or directory, a model is described in the units people use: the domain's
    defocus in nm, Cs in µm, C5 in mm (the config holds Å), its stores, calibration and
    validation figures."""
    import shutil
    from importlib.resources import files

    model = tmp_path / "m"
    shutil.copytree(str(files("atom3d") / "models" / "ceo2-110"), model)
    cfg = json.loads((model / "config.json").read_text())
    dom = cfg["training_domain"]
    dom.update(defocus_A=[-120.0, 80.0], cs_A=[-150000.0, 30000.0], c5_A=[0.0, 20000000.0],
               extra_datasets_missing=["/gone/particles.zarr"])
    cfg["metrics"]["validation"]["Ce"]["exact"] = 0.4321
    (model / "config.json").write_text(json.dumps(cfg))
    assert main(["info", str(model)]) == 0
    text = capsys.readouterr().out
    assert "defocus -12 to 8 nm" in text
    assert "Cs (C3) -15 to 3 µm" in text and "C5 0 to 2 mm" in text
    assert "exact 0.432" in text and "/gone/particles.zarr" in text
    assert f"temperature Ce {cfg['temperature']['Ce']:.2f}" in text
    # a packaged model by its name; a name that is none: one line, exit 2
    assert main(["info", "ceo2-110"]) == 0
    assert capsys.readouterr().out.startswith("model ceo2-110 ")
    assert main(["info", "no-such-model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ceo2-110" in err[0]


def test_info_results_file(tmp_path, capsys):
    out = tmp_path / "r.h5"
    attrs = {"source": "x.tif", "source_sha256": "0" * 64, "model": "m", "model_sha256": "1" * 64,
             "pixel_size_A": 0.2,
             # an array attribute, as atom3d predict writes the ring radii
             "changepoint_ring_radii_A": np.array([0.0, 0.3, 0.6])}
    with ResultsWriter(out, shape=(8, 8), n_frames=1, attrs=attrs) as w:
        z = np.zeros((8, 8), np.uint8)
        c = np.zeros((8, 8), np.float32)
        w.write_frame(0, ce_depth=z, ce_confidence=c, o_depth=z, o_confidence=c,
                      columns={"x": np.array([1.0], np.float32), "y": np.array([1.0], np.float32),
                               "depth": np.array([3], np.uint8),
                               "confidence": np.array([0.9], np.float32),
                               "species": np.array(["Ce"]), "track": np.array([-1], np.int32)},
                      frame_row={"valid": True})
        w.finalize()
    assert main(["info", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == 1 and summary["columns"] == 1
    assert summary["attrs"]["changepoint_ring_radii_A"] == [0.0, 0.3, 0.6]
    assert summary["attrs"]["pixel_size_A"] == 0.2


    # without --json: a summary to read
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("r.h5  (atom3d.columns v1, complete;")
    assert "input     x.tif" in text and "1 frame\n" in text
    assert "pixel     0.2000 Å/px\n" in text  # a file from before the lattice check
    assert "columns   1 rows (Ce 1, O 0)" in text and "events    none" in text


def test_info_results_overview_of_a_series():
    from atom3d.inference.lattice import LatticeCheck, lattice_attrs
    from atom3d.inference.overview import results_overview

    attrs = {"format": "atom3d.columns", "format_version": 1, "created": "2026-12-04T19:00:00",
             "atom3d_version": "0.1.0", "source": "/data/movie.dm4", "source_sha256": "ab" * 32,
             "model": "ceo2-110", "model_sha256": "cd" * 32, "pixel_size_A": 0.22,
             "frame_interval_s": 0.5, "tta_passes": 8, "track_detection": True,
             "depth_smoothing": "changepoint",
             **lattice_attrs(LatticeCheck(0.2, 40.0, 10.0, 0.22), "file")}
    frames = {"frame": np.arange(3), "valid": np.array([True, False, True]),
              "drift_x": np.array([0.0, np.nan, 3.0]), "drift_y": np.array([0.0, np.nan, 4.0]),
              "n_ce": np.array([300, 0, 290]), "n_o": np.array([600, 0, 570]),
              "o_ce_ratio": np.array([2.0, np.nan, 570 / 290]),
              "radius_A": np.array([14.0, np.nan, 13.5]),
              "n_surface_columns": np.array([30, 0, 28]),
              "dose_e_per_A2": np.array([900.0, np.nan, 1100.0])}
    columns = {"species": np.array(["Ce", "Ce", "O"]), "track": np.array([0, 0, 1])}
    events = {"kind": np.array(["depth_change", "depth_change", "vanished"]),
              "species": np.array(["Ce", "O", "Ce"])}
    text = results_overview({"attrs": attrs, "frames": frames, "columns": columns,
                             "events": events}, "/out/movie.h5")
    lines = text.splitlines()
    assert lines[0].startswith("movie.h5  (atom3d.columns v1, complete; written 2026-12-04")
    assert "movie.dm4  (sha256 abababababab…)" in text and "3 frames, 0.5 s apart" in text
    assert "0.2200 Å/px from the file; the CeO2 lattice gives 0.2000 (-9.1 %)" in text
    assert "8 network passes per frame" in text and "columns decided per track" in text
    assert "2 valid of 3; dose ≈ 1000 e/Å² per frame" in text
    assert "drift up to 5.00 Å" in text
    assert "frame 0 → 2: Ce atoms 300 → 290, O atoms 600 → 570, O/Ce 2.00 → 1.97" in text
    assert "equivalent radius 14.0 → 13.5 Å, surface columns 30 → 28" in text
    assert "3 rows (Ce 2, O 1) in 2 tracks" in text
    assert "2 depth changes (Ce 1, O 1); 1 vanished (Ce 1)" in text
    assert "warning" not in text
    frames["collective_change"] = np.array([False, False, True])
    text = results_overview({"attrs": attrs, "frames": frames, "columns": columns,
                             "events": events}, "/out/movie.h5")
    assert "frame 2: 25% or more of the Ce columns changed depth together" in text


def test_info_bad_paths(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.h5")]) == 2
    (tmp_path / "junk.h5").write_text("not hdf5")
    assert main(["info", str(tmp_path / "junk.h5")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("atom3d: error:") for line in err)


def _metrics_doc(sha="abc"):
    """An ``atom3d evaluate`` metrics.json document with two dose bins."""
    def bins(scale):
        return [{"lo": 50.0, "hi": 500.0, "n_images": 3, "f1": 0.9 * scale, "exact": 0.4 * scale,
                 "within1": 0.8 * scale},
                {"lo": 500.0, "hi": 20000.0, "n_images": 5, "f1": 0.99 * scale,
                 "exact": 0.7 * scale, "within1": 0.97 * scale}]
    return {"methods": {"network": {"tta_passes": 8, "model_sha256": sha}},
            "results": {"network": {"Ce": {"by_dose_e_per_A2": bins(1.0)},
                                    "O": {"by_dose_e_per_A2": bins(0.9)}}}}


def test_expected_accuracy_at_a_dose_is_read_from_the_test_figures():
    """The row of the test set at the frames' dose; beyond the bins the nearest, said so;
    no figures, or no usable dose: nothing."""
    from atom3d.models.summary import TEST_BY_DOSE, dose_figures_entry, expected_at_dose

    entry = dose_figures_entry(_metrics_doc(), "8 particles", "m.json")
    assert entry["passes"] == 8 and [b["lo"] for b in entry["bins"]] == [50.0, 500.0]
    assert entry["bins"][1]["O"]["exact"] == pytest.approx(0.63)
    config = {"metrics": {TEST_BY_DOSE: entry}}
    low = expected_at_dose(config, 120.0)
    assert "50–500 e/Å²" in low and "Ce F1 0.900, exact depth 0.400, within ±1 0.800" in low
    assert "O F1 0.810" in low and "tested" not in low
    high = expected_at_dose(config, 1000.0)
    assert "exact depth 0.700" in high and "8 particles; 8 passes" in high
    assert "highest dose tested" in expected_at_dose(config, 50000.0)
    assert "lowest dose tested" in expected_at_dose(config, 10.0)
    for dose in (float("nan"), 0.0, -5.0, float("inf"), None):
        assert expected_at_dose(config, dose) is None
    assert expected_at_dose({"metrics": {}}, 1000.0) is None
    assert expected_at_dose({}, 1000.0) is None


def test_shipped_model_carries_its_particle_test_figures(capsys):
    """The packaged model's test figures by dose are those of the model card's particle
    test set, measured with these very weights, and `atom3d info` lists them."""
    from importlib.resources import files

    cfg = json.loads((files("atom3d") / "models" / "ceo2-110" / "config.json").read_text())
    entry = cfg["metrics"]["test_by_dose"]
    assert entry["passes"] == 8 and len(entry["bins"]) == 5
    source = Path(__file__).resolve().parents[1] / entry["source"]
    if source.exists():  # a source checkout: the figures are the report's, unchanged
        doc = json.loads(source.read_text())
        assert doc["methods"]["network"]["model_sha256"] == cfg["weights_sha256"]
        for sp in ("Ce", "O"):
            rows = doc["results"]["network"][sp]["by_dose_e_per_A2"]
            for key in ("f1", "exact", "within1"):
                assert [b[sp][key] for b in entry["bins"]] == [r[key] for r in rows]
    assert main(["info", "ceo2-110"]) == 0
    text = capsys.readouterr().out
    bin1000 = entry["bins"][2]["Ce"]
    assert f"exact {bin1000['exact']:.3f}, ±1 {bin1000['within1']:.3f}" in text


def test_write_test_figures_refuses_metrics_of_other_weights(tmp_path):
    import shutil
    import subprocess
    import sys
    from importlib.resources import files

    model = tmp_path / "m"
    shutil.copytree(str(files("atom3d") / "models" / "ceo2-110"), model)
    before = (model / "config.json").read_text()
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(_metrics_doc(sha="0" * 64)))
    script = Path(__file__).resolve().parents[1] / "training" / "write_test_figures.py"
    if not script.exists():
        pytest.skip("training/ is not in this checkout")
    run = subprocess.run([sys.executable, str(script), str(model), str(metrics),
                          "--test-set", "x"], capture_output=True, text=True)
    assert run.returncode != 0 and "other weights" in run.stderr
    assert (model / "config.json").read_text() == before
    cfg = json.loads(before)
    metrics.write_text(json.dumps(_metrics_doc(sha=cfg["weights_sha256"])))
    run = subprocess.run([sys.executable, str(script), str(model), str(metrics),
                          "--test-set", "x"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    after = json.loads((model / "config.json").read_text())
    assert after["metrics"]["test_by_dose"]["bins"][0]["Ce"]["exact"] == 0.4
    after["metrics"].pop("test_by_dose")
    cfg["metrics"].pop("test_by_dose")
    assert after == cfg  # nothing else moved


def test_info_on_an_input_file_says_how_predict_reads_it(tmp_path, capsys):
    """A microscope file (or image sequence) is described as predict would read it:
    frames, size, calibration checked against the CeO2 lattice, dose, network grid."""
    from tests.test_lattice import ce_columns_image
    from tests.test_predict import _write_tif

    rng = np.random.default_rng(5)
    frames = [ce_columns_image(rng, (128, 128), 0.2, 25.0, 400.0) for _ in range(3)]
    tif = _write_tif(tmp_path / "movie.tif", frames, pixel=0.22, interval_s=0.25)
    assert main(["info", str(tif)]) == 0
    text = capsys.readouterr().out
    assert "movie.tif  (tiff-imagej)" in text
    assert "3 of 128 × 128 px (width × height), 0.25 s apart" in text
    assert "0.2200 Å/px from the file" in text
    lattice = next(line for line in text.splitlines() if line.startswith("lattice"))
    found = float(lattice.split("found: ")[1].split()[0])
    assert found == pytest.approx(0.2, rel=0.005) and "-9." in lattice and "beyond" in lattice
    dose = next(line for line in text.splitlines() if line.startswith("dose"))
    assert 300 < float(dose.split("≈")[1].split()[0]) < 500  # simulated at 400 e/Å²
    assert "141 × 141 px at the model's 0.2 Å/px, predicted whole" in text
    np.save(tmp_path / "raw.npy", np.stack(frames))
    assert main(["info", str(tmp_path / "raw.npy")]) == 0
    text = capsys.readouterr().out
    assert "no usable calibration" in text and "CeO2 [110] found:" in text
    (tmp_path / "junk.dm4").write_bytes(b"\0" * 100)
    assert main(["info", str(tmp_path / "junk.dm4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "junk.dm4" in err[0]
