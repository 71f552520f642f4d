"""U-Net shapes and the model artifact (safetensors + config.json)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from atom3d.errors import UserError
from atom3d.models.artifact import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ModelArtifact,
    calibrated_softmax,
    load_artifact,
    packaged_models,
    save_artifact,
    sha256_hex,
)
from atom3d.models.unet import UNet

torch.set_num_threads(1)

CLASSES = {"Ce": 3, "O": 2}


def tiny_unet(**kwargs) -> UNet:
    torch.manual_seed(0)
    args = {"base_width": 4, "depth": 2, "n_classes": (CLASSES["Ce"] + 1, CLASSES["O"] + 1)}
    return UNet(**{**args, **kwargs})


def save_tiny(directory: Path, model: UNet | None = None, **kwargs) -> Path:
    args = {
        "name": "tiny",
        "classes": CLASSES,
        "pixel_size_A": 0.12,
        "normalization": {"method": "zscore", "clip_sigma": 5.0},
        "training_domain": {"thickness_A": [10.0, 80.0], "defocus_A": [-200.0, 200.0]},
    }
    return save_artifact(model or tiny_unet(), directory, **{**args, **kwargs})


# --------------------------------------------------------------------------- UNet


@pytest.mark.parametrize(
    ("depth", "height", "width"),
    [(1, 8, 14), (2, 16, 32), (3, 24, 40), (4, 32, 16)],
)
@pytest.mark.parametrize("norm", ["batch", "group"])
def test_unet_output_shapes(depth: int, height: int, width: int, norm: str) -> None:
    net = UNet(in_channels=2, base_width=4, depth=depth, n_classes=(5, 3), norm=norm)
    assert net.size_multiple == 2**depth
    ce, o = net(torch.randn(2, 2, height, width))
    assert ce.shape == (2, 5, height, width)
    assert o.shape == (2, 3, height, width)
    assert torch.isfinite(ce).all() and torch.isfinite(o).all()


def test_unet_rejects_size_not_multiple() -> None:
    net = tiny_unet()
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.zeros(1, 1, 16, 18))


@pytest.mark.parametrize("kwargs", [{"norm": "layer"}, {"n_classes": (1, 3)}, {"depth": 0}])
def test_unet_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        tiny_unet(**kwargs)


def test_unet_config_round_trip() -> None:
    net = UNet(base_width=8, depth=3, n_classes=(6, 4), norm="group", dropout=0.1)
    config = net.config()
    assert json.loads(json.dumps(config)) == config
    rebuilt = UNet.from_config(json.loads(json.dumps(config)))
    assert rebuilt.config() == config
    rebuilt.load_state_dict(net.state_dict())  # same architecture, same parameter shapes


def test_default_size_fits_the_artifact_cap() -> None:
    net = UNet(base_width=32, depth=4, n_classes=(16, 16))
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params < 2.5e6  # 10 MB in float32, half the 20 MB cap



def test_channels_last_weights_give_the_logits_of_contiguous_ones() -> None:
    torch.manual_seed(0)
    net = UNet(base_width=8, depth=3, n_classes=(5, 4)).eval()
    fast = UNet(base_width=8, depth=3, n_classes=(5, 4)).eval()
    fast.load_state_dict(net.state_dict())
    fast.to(memory_format=torch.channels_last)  # as training runs it
    assert all(p.is_contiguous(memory_format=torch.channels_last)
               for p in fast.parameters() if p.ndim == 4)
    assert not all(p.is_contiguous(memory_format=torch.channels_last)
                   for p in net.parameters() if p.ndim == 4)
    x = torch.randn(2, 1, 48, 64)
    with torch.no_grad():
        for a, b in zip(fast(x), net(x), strict=True):
            assert a.is_contiguous()  # ordinary NCHW logits for every caller
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_receptive_field_bounds_the_true_one(depth: int) -> None:
    torch.manual_seed(depth)
    net = UNet(base_width=2, depth=depth, n_classes=(2, 2), norm="batch").double().eval()
    rf = net.receptive_field_px
    size = (2 * rf // net.size_multiple + 2) * net.size_multiple
    x = torch.randn(1, 1, size, size, dtype=torch.float64, requires_grad=True)
    ce, _ = net(x)
    for r, c in [(size // 2, size // 2), (size // 2 + 1, size // 2 + 1)]:  # both parities
        x.grad = None
        ce[0, 0, r, c].backward(retain_graph=True)
        seen = x.grad[0, 0] != 0
        rows = torch.nonzero(seen.any(dim=1)).flatten()
        extent = int(rows.max() - rows.min() + 1)
        assert extent <= rf
        assert extent >= 0.75 * rf


# ----------------------------------------------------------------------- artifact


def test_artifact_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model = tiny_unet(norm="batch", dropout=0.2)
    with torch.no_grad():  # non-trivial running statistics must be saved too
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    model.eval()
    directory = save_tiny(tmp_path / "model", model, temperature={"Ce": 1.5, "O": 0.8})
    artifact = load_artifact(directory)

    assert isinstance(artifact, ModelArtifact)
    assert artifact.path == directory
    assert not artifact.model.training
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        for a, b in zip(model(x), artifact.model(x), strict=True):
            assert torch.equal(a, b)
        ce_logits, o_logits = model(x)
    ce, o = artifact.predict_proba(x)
    for p, z, t in ((ce, ce_logits, 1.5), (o, o_logits, 0.8)):
        # background as trained; the depth given a column scaled by the temperature
        torch.testing.assert_close(p[:, 0], torch.softmax(z, dim=1)[:, 0])
        torch.testing.assert_close(p[:, 1:] / p[:, 1:].sum(dim=1, keepdim=True),
                                   torch.softmax(z[:, 1:] / t, dim=1))
        torch.testing.assert_close(p.sum(dim=1), torch.ones(2, 16, 16))
    buffer = torch.full((2, ce.shape[1] + o.shape[1], 16, 16), float("nan"))
    artifact.predict_proba(x, out=buffer)  # written in place, as predict does
    torch.testing.assert_close(buffer, torch.cat([ce, o], dim=1))


def test_config_json_holds_every_field(tmp_path: Path) -> None:
    model = tiny_unet()
    directory = save_tiny(tmp_path / "model", model, metrics={"ce_accuracy": 0.93})
    assert sorted(p.name for p in directory.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    config = json.loads((directory / CONFIG_FILE).read_text())
    assert config["format"] == "atom3d.model"
    assert config["format_version"] == 1
    assert config["name"] == "tiny"
    assert config["architecture"] == model.config()
    assert config["classes"] == CLASSES
    assert config["pixel_size_A"] == 0.12
    assert config["normalization"] == {"method": "zscore", "clip_sigma": 5.0}
    assert config["training_domain"]["thickness_A"] == [10.0, 80.0]
    assert config["temperature"] == {"Ce": 1.0, "O": 1.0}
    assert isinstance(config["atom3d_version"], str)
    assert config["weights_sha256"] == sha256_hex((directory / WEIGHTS_FILE).read_bytes())
    assert config["metrics"] == {"ce_accuracy": 0.93}
    artifact = load_artifact(directory)
    assert artifact.classes == CLASSES
    assert artifact.pixel_size_A == 0.12
    assert artifact.weights_sha256 == config["weights_sha256"]


def test_loading_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = save_tiny(tmp_path / "model")
    assert not list(directory.glob("*.pt")) and not list(directory.glob("*.ckpt"))

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling during load_artifact")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    load_artifact(directory)


def test_sha256_mismatch_is_a_user_error(tmp_path: Path) -> None:
    directory = save_tiny(tmp_path / "model")
    other = save_tiny(tmp_path / "other", tiny_unet(base_width=5))
    (directory / WEIGHTS_FILE).write_bytes((other / WEIGHTS_FILE).read_bytes())
    with pytest.raises(UserError, match="weights_sha256") as info:
        load_artifact(directory)
    assert "\n" not in str(info.value)


def test_weights_that_do_not_fit_are_a_user_error(tmp_path: Path) -> None:
    directory = save_tiny(tmp_path / "model")
    other = save_tiny(tmp_path / "other", tiny_unet(base_width=5))
    config = json.loads((directory / CONFIG_FILE).read_text())
    config["weights_sha256"] = sha256_hex((other / WEIGHTS_FILE).read_bytes())
    (directory / CONFIG_FILE).write_text(json.dumps(config))
    (directory / WEIGHTS_FILE).write_bytes((other / WEIGHTS_FILE).read_bytes())
    with pytest.raises(UserError, match="do not fit") as info:
        load_artifact(directory)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("missing", [CONFIG_FILE, WEIGHTS_FILE])
def test_missing_file_is_a_user_error(tmp_path: Path, missing: str) -> None:
    directory = save_tiny(tmp_path / "model")
    (directory / missing).unlink()
    with pytest.raises(UserError, match=missing):
        load_artifact(directory)


def test_missing_directory_and_unknown_name_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_artifact(tmp_path / "nowhere")
    with pytest.raises(UserError, match="unknown model 'no-such-model'"):
        load_artifact("no-such-model")


def test_newer_format_version_is_a_user_error(tmp_path: Path) -> None:
    directory = save_tiny(tmp_path / "model")
    config = json.loads((directory / CONFIG_FILE).read_text())
    config["format_version"] = 2
    (directory / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(UserError, match="format_version 2"):
        load_artifact(directory)


def test_save_rejects_inconsistent_description(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="classes"):
        save_tiny(tmp_path / "a", classes={"Ce": 4, "O": 2})
    with pytest.raises(ValueError, match="temperature"):
        save_tiny(tmp_path / "b", temperature={"Ce": 0.0, "O": 1.0})
    with pytest.raises(ValueError, match="strict JSON"):
        save_tiny(tmp_path / "c", metrics={"loss": float("nan")})


def test_packaged_models_lists_only_artifact_directories() -> None:
    names = packaged_models()
    assert "__pycache__" not in names
    assert all(isinstance(name, str) for name in names)


def test_packaged_name_resolves_through_package_resources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import atom3d.models.artifact as artifact_module

    package = tmp_path / "package"
    save_tiny(package / "ceo2-test")
    (package / "__pycache__").mkdir()
    monkeypatch.setattr(artifact_module.resources, "files", lambda anchor: package)
    monkeypatch.chdir(tmp_path)  # no directory of that name in the working directory
    assert packaged_models() == ["ceo2-test"]
    artifact = load_artifact("ceo2-test")
    assert artifact.name == "tiny"
    assert artifact.path == package / "ceo2-test"
    with pytest.raises(UserError, match=r"packaged: ceo2-test\)"):
        load_artifact("ceo2-110")


def test_a_folder_named_like_a_packaged_model_does_not_shadow_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import atom3d.models.artifact as artifact_module

    package = tmp_path / "package"
    save_tiny(package / "ceo2-test")
    monkeypatch.setattr(artifact_module.resources, "files", lambda anchor: package)
    work = tmp_path / "work"
    save_tiny(work / "ceo2-test", name="local")
    save_tiny(work / "other", name="other")
    monkeypatch.chdir(work)
    assert load_artifact("ceo2-test").path == package / "ceo2-test"  # the packaged one
    assert load_artifact("./ceo2-test").name == "local"  # a path reaches the folder
    assert load_artifact("other").name == "other"  # a plain name that is not packaged


@pytest.mark.parametrize("temperature", [1.0, 1.26, 0.7])
def test_calibrated_maps_equal_argmax_of_calibrated_softmax(temperature: float) -> None:
    from atom3d.inference.columns import maps_from_probs
    from atom3d.models.artifact import calibrated_maps, calibrated_probs_numpy

    torch.manual_seed(1)
    z = torch.randn(2, 9, 24, 20) * 3
    z[0, 3, :4] = z[0, 5, :4] = 50.0  # exact ties between depth classes: lower one wins
    z[1, 0, :3] = 80.0  # certain background
    p = calibrated_softmax(z, temperature)
    maps = [calibrated_maps(z[b].numpy(), temperature) for b in range(2)]
    for b, (presence, depth, confidence) in enumerate(maps):
        ref_depth, ref_conf = maps_from_probs(p[b].numpy())
        np.testing.assert_array_equal(depth, ref_depth)
        np.testing.assert_allclose(confidence, ref_conf, atol=2e-6)
        np.testing.assert_allclose(presence, 1 - p[b, 0].numpy(), atol=2e-6)
        assert depth.dtype == np.uint8 and presence.dtype == confidence.dtype == np.float32
    assert (maps[0][1][:4] == 3).all() and (maps[1][1][:3] == 0).all()
    # the NumPy version over the last axis is the same function
    numpy_p = calibrated_probs_numpy(np.moveaxis(z.numpy(), 1, -1), temperature)
    np.testing.assert_allclose(numpy_p, np.moveaxis(p.numpy(), 1, -1), atol=1e-6)
    # ... also in float32 with the classes first (the predictor's pooling)
    single = calibrated_probs_numpy(z.numpy()[0], temperature, axis=0, dtype=np.float32)
    assert single.dtype == np.float32
    np.testing.assert_allclose(single, p.numpy()[0], atol=2e-6)


def test_calibrated_maps_in_bands_equal_one_band(monkeypatch) -> None:
    """The maps are computed in bands of rows (bounded temporaries); any band height,
    including a last band that is shorter, gives exactly the numbers of one band."""
    import atom3d.models.artifact as artifact_module

    rng = np.random.default_rng(3)
    z = (rng.normal(0, 3, (9, 23, 20))).astype(np.float32)
    z[0, :5] -= 8.0  # rows where columns are likely: the depth branch runs there too
    whole = artifact_module.calibrated_maps(z, 1.1)
    for rows in (1, 5, 7, 22):
        monkeypatch.setattr(artifact_module, "_MAPS_BAND_VALUES", rows * 8 * 20)
        banded = artifact_module.calibrated_maps(z, 1.1)
        for a, b in zip(banded, whole, strict=True):
            np.testing.assert_array_equal(a, b)
    assert (whole[1] > 0).any() and (whole[1] == 0).any()
