"""atom3d info on a model directory, a results file and bad paths."""

import json

import numpy as np

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
    assert main(["info", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == 1 and summary["columns"] == 1
    assert summary["attrs"]["changepoint_ring_radii_A"] == [0.0, 0.3, 0.6]
    assert summary["attrs"]["pixel_size_A"] == 0.2


def test_info_bad_paths(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.h5")]) == 2
    (tmp_path / "junk.h5").write_text("not hdf5")
    assert main(["info", str(tmp_path / "junk.h5")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("atom3d: error:") for line in err)
