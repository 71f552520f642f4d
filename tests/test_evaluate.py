"""atom3d evaluate: metrics.json and plots for network and baseline; bad options; baseline sanity."""

import json

import numpy as np
import pytest

pytest.importorskip("abtem")

from atom3d.cli import main  # noqa: E402
from atom3d.data.noise import add_shot_noise  # noqa: E402
from atom3d.data.store import open_store, structure_columns  # noqa: E402
from atom3d.evaluation.baseline import run_baseline  # noqa: E402
from atom3d.evaluation.metrics import column_metrics  # noqa: E402
from atom3d.models.artifact import save_artifact  # noqa: E402
from atom3d.models.unet import UNet  # noqa: E402
from atom3d.simulation.library import contrast_library, thickness_series  # noqa: E402
from atom3d.simulation.optics import Optics  # noqa: E402


@pytest.fixture(scope="module")
def random_model(tmp_path_factory, tiny_store):
    import torch

    torch.manual_seed(0)
    k = int(open_store(tiny_store).attrs["max_depth"])
    net = UNet(base_width=8, depth=2, n_classes=(k + 1, k + 1))
    out = tmp_path_factory.mktemp("model") / "m"
    save_artifact(net, out, name="random", classes={"Ce": k, "O": k}, pixel_size_A=0.2,
                  normalization={"method": "frame_standardize"}, training_domain={})
    return out


def test_evaluate_writes_metrics_for_both_methods(tiny_store, random_model, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["evaluate", "--data", str(tiny_store), "--model", str(random_model), "-o", str(out),
                 "--baseline", "--quiet", "--limit", "4"])
    assert code == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["n_images"] == 4
    root = open_store(tiny_store)
    names = list(root.attrs["param_names"])
    kind_col = list(root.attrs["structure_param_names"]).index("kind")
    expected_kinds: dict[str, int] = {}
    for i in range(4):  # the first 4 images: --limit 4
        s = int(root["params"][i, names.index("structure_index")])
        kind = {0: "particle", 1: "profile_crystal"}[int(root["structure_params"][s, kind_col])]
        expected_kinds[kind] = expected_kinds.get(kind, 0) + 1
    assert set(doc["results"]) == {"network", "baseline"}
    for method in ("network", "baseline"):
        for sp in ("Ce", "O"):
            res = doc["results"][method][sp]
            o = res["overall"]
            assert o["tp"] + o["fn"] > 0  # true columns were counted
            assert len(res["by_dose_e_per_A2"]) == 5
            for key in ("by_thickness_A", "by_defocus_A", "by_tilt_mrad", "by_pixel_size_A"):
                assert key in res
            # by structure kind: the images of each kind, pooling to the overall figures
            kinds = res["by_structure_kind"]
            assert {k: v["all"]["n_images"] for k, v in kinds.items()} == expected_kinds
            assert sum(v["all"]["tp"] for v in kinds.values()) == o["tp"]
            assert sum(v["all"]["fn"] for v in kinds.values()) == o["fn"]
    for name in ("ce_conditions.png", "o_conditions.png", "ce_reliability.png",
                 "ce_confusion_network.png"):
        assert (out / name).stat().st_size > 5000
    assert "network" in capsys.readouterr().out
    table = (out / "dose_table.md").read_text()
    assert any(kind.replace("_", " ") in table for kind in expected_kinds)


def test_evaluate_bad_options_exit_2(tiny_store, random_model, tmp_path, capsys):
    assert main(["evaluate", "--data", str(tiny_store), "--model", str(random_model), "-o",
                 str(tmp_path / "r"), "--denoise", "median"]) == 2
    assert "unknown denoising" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(tmp_path / "none.zarr"), "-o", str(tmp_path / "r")]) == 2
    assert main(["evaluate", "--data", str(tiny_store), "--model", str(tmp_path / "nomodel"),
                 "-o", str(tmp_path / "r")]) == 2


def test_baseline_finds_ce_columns_at_high_dose(tiny_store):
    root = open_store(tiny_store)
    names = list(root.attrs["param_names"])
    keys = ("energy_eV", "defocus_A", "cs_A", "c5_A", "focal_spread_A", "astigmatism_A",
            "astigmatism_angle_rad", "aperture_mrad", "angular_spread_mrad")
    series = thickness_series(12, 300e3, 0.05, 1)
    recalls = []
    for i in range(root["image"].shape[0]):
        pr = dict(zip(names, root["params"][i], strict=True))
        lib = contrast_library(series, Optics(**{k: float(pr[k]) for k in keys}), pr["pixel_size_A"])
        counts = add_shot_noise(root["image"][i], 20000.0, pr["pixel_size_A"], np.random.default_rng(i))
        res = run_baseline(counts, pr["pixel_size_A"], 20000.0, lib)
        t = structure_columns(root, int(pr["structure_index"]))
        ce = t["species"] == 0
        m = column_metrics(res["Ce"], {"x": t["x"][ce], "y": t["y"][ce], "depth": t["depth"][ce]}, 1.0)
        recalls.append(m["recall"])
        assert np.all((res["Ce"]["confidence"] >= 0) & (res["Ce"]["confidence"] <= 1))
    assert np.mean(recalls) > 0.7


def test_dose_table_reads_the_right_bins():
    from atom3d.evaluation.evaluate import dose_table

    def entry(lo, hi, f1):
        return {"lo": lo, "hi": hi, "n_images": 3, "f1": f1, "exact": 0.5, "within1": 0.9,
                "ece": 0.01}

    bins = [entry(50, 173.2, 0.1), entry(173.2, 547.7, 0.3), entry(547.7, 1732.1, 0.5),
            entry(1732.1, 5477.2, 0.7), entry(5477.2, 20000, 0.9)]
    doc = {"results": {"network": {"Ce": {"by_dose_e_per_A2": bins},
                                   "O": {"by_dose_e_per_A2": bins}}}}
    rows = dose_table(doc).splitlines()[2:]
    assert len(rows) == 5
    assert [r.split("|")[4].strip() for r in rows] == ["0.100", "0.300", "0.500", "0.700",
                                                      "0.900"]
    assert rows[1].split("|")[2].strip() == "300 (173–548)"
    # a dose no bin holds gives no row
    assert len(dose_table(doc, doses=(30, 1000)).splitlines()[2:]) == 1


@pytest.mark.parametrize("method", ["gaussian", "nlmeans"])
def test_denoising_filters_reduce_shot_noise(method):
    """Both pre-filters of the noise study run (their packages are installed) and help."""
    from atom3d.data.noise import add_shot_noise
    from atom3d.evaluation.baseline import denoise

    rng = np.random.default_rng(0)
    p, dose = 0.2, 1000.0
    r, c = np.mgrid[:64, :64] * p
    clean = 1.0 - 0.5 * np.exp(-((r % 3.0 - 1.5) ** 2 + (c % 3.0 - 1.5) ** 2) / (2 * 0.4**2))
    noisy = add_shot_noise(clean, dose, p, rng) / (dose * p**2)
    out = denoise(noisy.astype(np.float32), p, method, 0.3, dose)
    assert out.shape == clean.shape
    assert np.mean((out - clean) ** 2) < 0.5 * np.mean((noisy - clean) ** 2)


def test_baseline_columns_are_cached_per_image(tiny_store, random_model, tmp_path,
                                               monkeypatch):
    import atom3d.evaluation.baseline as baseline_module

    cache = tmp_path / "cache"
    args = ["evaluate", "--data", str(tiny_store), "--model", str(random_model), "--baseline",
            "--quiet", "--limit", "3", "--baseline-cache", str(cache)]
    assert main(args + ["-o", str(tmp_path / "a")]) == 0
    assert len(list(cache.glob("*.npz"))) == 3

    def fail(*a, **k):
        raise AssertionError("the baseline ran although its columns were cached")

    monkeypatch.setattr(baseline_module, "run_baseline", fail)
    assert main(args + ["-o", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "ab")
    assert a["results"]["baseline"] == b["results"]["baseline"]
    # another noise seed is another image: recomputed (and here it fails loudly)
    with pytest.raises(AssertionError, match="baseline ran"):
        main(args + ["-o", str(tmp_path / "c"), "--noise-seed", "7"])
