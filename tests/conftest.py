"""Shared fixtures: tiny seeded inputs made by code."""

from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run: CI is reproducible (a random seed
# once found a legitimately ambiguous case in test_tracking and failed one run in many).
settings.register_profile("atom3d", derandomize=True)
settings.load_profile("atom3d")

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "simulate" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """A complete tiny dataset (2 structures × 4 images, 64 px), simulated once per session."""
    pytest.importorskip("abtem")
    from atom3d.simulation.campaign import load_campaign_config, run_campaign

    out = tmp_path_factory.mktemp("tiny") / "tiny.zarr"
    run_campaign(load_campaign_config(TINY_CONFIG), out, seed=1, progress=False)
    return out


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A random-weight artifact (U-Net of base width 8, depth 2, depth classes 0…4) at
    0.25 Å/px (inputs at 0.2 Å/px are resampled): the numbers it predicts are
    meaningless, the plumbing of predict is not."""
    import torch

    from atom3d.models.artifact import save_artifact
    from atom3d.models.unet import UNet

    k = 4
    torch.manual_seed(0)
    net = UNet(base_width=8, depth=2, n_classes=(k + 1, k + 1))
    directory = tmp_path_factory.mktemp("model") / "tiny"
    save_artifact(net, directory, name="tiny-random", classes={"Ce": k, "O": k},
                  pixel_size_A=0.25, normalization={"kind": "frame-standardise"},
                  training_domain={}, metrics={"random_init": True})
    return directory


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """Caches (e.g. evaluate's baseline cache) go to a temporary directory, not ~/.cache."""
    import os

    old = os.environ.get("ATOM3D_CACHE_DIR")
    os.environ["ATOM3D_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("ATOM3D_CACHE_DIR", None)
    else:
        os.environ["ATOM3D_CACHE_DIR"] = old
