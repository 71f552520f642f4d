"""Campaign → zarr store: round trip, determinism, resume after a kill, CLI errors."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

pytest.importorskip("abtem")

from atom3d.cli import main  # noqa: E402
from atom3d.data.store import open_store, param, structure_columns  # noqa: E402
from atom3d.simulation.campaign import load_campaign_config, run_campaign  # noqa: E402
from atom3d.simulation.labels import column_targets  # noqa: E402

from .conftest import TINY_CONFIG  # noqa: E402

ARRAYS = ("image", "params", "label_class", "label_amp", "label_weight", "columns_xy",
          "columns_depth", "columns_species", "n_columns", "structure_params", "done")


def assert_same_store(a, b):
    ra, rb = open_store(a), open_store(b)
    for name in ARRAYS:
        np.testing.assert_array_equal(ra[name][:], rb[name][:], err_msg=name)
    assert dict(ra.attrs) == dict(rb.attrs)


def test_store_round_trip(tiny_store):
    root = open_store(tiny_store)
    a = root.attrs
    assert a["schema"] == "atom3d.dataset" and a["complete"] is True
    assert root["image"].shape == (8, 64, 64) and root["image"].chunks == (1, 64, 64)
    img = root["image"][:]
    assert np.isfinite(img).all() and 0.2 < img.mean() < 1.5
    freq = a["class_frequencies"]
    assert np.isclose(sum(freq["Ce"]), 1) and freq["Ce"][0] > 0.5
    # Labels stored for a structure equal labels recomputed from its column table.
    for s in range(a["n_structures"]):
        t = structure_columns(root, s)
        p = param(root, "pixel_size_A")[s * a["images_per_structure"]]
        ce = t["species"] == 0
        cls, amp = column_targets(np.column_stack([t["x"][ce], t["y"][ce]]), t["depth"][ce],
                                  (64, 64), p, a["config"]["labels"]["sigma_A"])
        assert np.array_equal(root["label_class"][s, 0], cls)
        assert np.abs(root["label_amp"][s, 0] / 255.0 - amp).max() <= 0.5 / 255 + 1e-6
        assert t["depth"].min() >= 1 and len(t["x"]) == root["n_columns"][s]
    pixel = param(root, "pixel_size_A")
    assert np.all((pixel >= 0.3) & (pixel <= 0.35))
    dose = param(root, "dose_e_per_A2")
    assert np.all((dose >= 50) & (dose <= 20000))


def test_same_seed_same_store_with_any_number_of_workers(tiny_store, tmp_path):
    cfg = load_campaign_config(TINY_CONFIG)
    run_campaign(cfg, tmp_path / "w2.zarr", seed=1, workers=2, progress=False)
    assert_same_store(tiny_store, tmp_path / "w2.zarr")


def test_different_seed_differs(tiny_store, tmp_path):
    cfg = load_campaign_config(TINY_CONFIG)
    run_campaign(cfg, tmp_path / "s2.zarr", seed=2, progress=False)
    assert not np.array_equal(open_store(tiny_store)["image"][:], open_store(tmp_path / "s2.zarr")["image"][:])


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    """Kill `atom3d simulate` with SIGKILL after its first structure, resume, compare."""
    args = ["--config", str(TINY_CONFIG), "--n", "16", "--seed", "5", "--quiet"]
    ref, killed = tmp_path / "ref.zarr", tmp_path / "killed.zarr"
    assert main(["simulate", *args, "--out", str(ref)]) == 0
    cmd = [sys.executable, "-m", "atom3d.cli", "simulate", *args, "--out", str(killed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (killed / "done").exists():
            try:
                if open_store(killed)["done"][:].any():
                    break
            except Exception:
                pass
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    root = open_store(killed)
    assert root.attrs["complete"] is False
    assert not root["done"][:].all(), "the run finished before it could be killed"
    assert main(["simulate", *args, "--out", str(killed), "--resume"]) == 0
    assert_same_store(ref, killed)


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, words", [
    ("n_images: 4\nstructure:\n  particle_diameter_nm: [6, 1.5]\n", "reversed range"),
    ("n_images: 4\noptics:\n  defocus: [1, 2]\n", "unknown config key 'optics.defocus'"),
    ("detector:\n  image_px: 100001\n", "image_px"),
    ("n_images: 4\nlabels:\n  max_depth: 3\n", "max_depth"),
    ("n_images: [\n", "not valid YAML"),
    ("optics:\n  cs_um: fast\n", "pair of numbers"),
])
def test_bad_config_exits_2_with_one_line(tmp_path, capsys, text, words):
    cfg = _write(tmp_path, text)
    code = main(["simulate", "--config", str(cfg), "--out", str(tmp_path / "x.zarr")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and words in err
    assert not (tmp_path / "x.zarr").exists()


def test_cli_user_errors(tmp_path, capsys, tiny_store):
    assert main(["simulate", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "a.zarr")]) == 2
    assert "not found" in capsys.readouterr().err
    # Existing store without --resume, and resume with another seed.
    assert main(["simulate", "--config", str(TINY_CONFIG), "--out", str(tiny_store)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["simulate", "--config", str(TINY_CONFIG), "--out", str(tiny_store), "--resume",
                 "--seed", "9"]) == 2
    assert "different" in capsys.readouterr().err
    assert main(["simulate", "--config", str(TINY_CONFIG), "--out", "x.zarr", "--n", "-3"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_images_per_structure_override(tmp_path, capsys):
    """--images-per-structure changes how many particles a store of --n images holds."""
    out = tmp_path / "few.zarr"
    args = ["simulate", "--config", str(TINY_CONFIG), "--n", "4", "--seed", "3", "--quiet"]
    assert main([*args, "--images-per-structure", "2", "--out", str(out)]) == 0
    root = open_store(out)
    assert root.attrs["images_per_structure"] == 2
    assert root.attrs["n_structures"] == 2 and root["done"][:].all()
    assert root.attrs["config"]["images_per_structure"] == 2
    # Resuming with the config's own value is a different campaign: refused.
    assert main([*args, "--out", str(out), "--resume"]) == 2
    assert "different" in capsys.readouterr().err
    assert main([*args, "--images-per-structure", "2000", "--out", str(tmp_path / "x.zarr")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "x.zarr").exists()


def test_info_plot(tiny_store, tmp_path, capsys):
    png = tmp_path / "grid.png"
    assert main(["info", str(tiny_store), "--plot", str(png), "--samples", "4"]) == 0
    assert png.stat().st_size > 10_000
    assert '"complete": true' in capsys.readouterr().out


def test_shipped_configs_load():
    from pathlib import Path

    for p in sorted((Path(__file__).parents[1] / "configs" / "simulate").glob("*.yaml")):
        cfg = load_campaign_config(p)
        assert cfg.images_per_structure >= 1
        assert yaml.safe_load(p.read_text())
