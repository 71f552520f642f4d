"""atom3d info on a model directory, a results file and bad paths."""

import json

import numpy as np

from atom3d.cli import main
from atom3d.io.results import ResultsWriter


def test_info_model_directory(capsys):
    from importlib.resources import files

    model = files("atom3d") / "models" / "ceo2-110"
    assert main(["info", str(model)]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["format"] == "atom3d.model" and cfg["pixel_size_A"] > 0


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
