"""Training: dataset items, the Lightning task, the real CLI (fit, resume, DDP) and export."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")

from torch.utils.data import DataLoader, default_collate  # noqa: E402

from atom3d.data.dataset import (  # noqa: E402
    ColumnDataset,
    expected_frame_stats,
    image_indices,
    read_store_info,
    render_item,
    split_structures,
)
from atom3d.data.noise import expected_counts  # noqa: E402
from atom3d.data.store import open_store, structure_columns  # noqa: E402
from atom3d.data.transforms import (  # noqa: E402
    resample,
    resample_block,
    resampled_shape,
    source_window,
)
from atom3d.models.artifact import calibrated_softmax, load_artifact  # noqa: E402
from atom3d.training.task import ColumnSegmentationTask, hard_labels  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = REPO / "configs" / "train" / "tiny.yaml"
DEFAULT_TRAIN = REPO / "configs" / "train" / "ceo2_110.yaml"
LABELS = {"max_depth": 12, "sigma_A": 0.4, "core_weight": 4.0, "rim_weight": 2.0}


def _cli_args(store: Path, tmp: Path, *extra: str) -> list[str]:
    """``fit`` on the tiny config with every output under ``tmp``."""
    return ["fit", "--config", str(TINY_TRAIN), "--data.path", str(store),
            "--trainer.default_root_dir", str(tmp),
            "--trainer.logger.init_args.save_dir", str(tmp / "runs"),
            "--checkpoint.dirpath", str(tmp / "checkpoints"), *extra]


def _val_dataset(store: Path, **kwargs) -> ColumnDataset:
    info = read_store_info(store)
    _, val = split_structures(info.n_structures, 0.5, 0, info.done)
    indices = image_indices(val, info.n_images, info.images_per_structure)
    return ColumnDataset(store, indices, train=False, size_multiple=4, **kwargs)


# --------------------------------------------------------------------------- pure parts


def test_split_by_structure_is_disjoint_and_deterministic():
    train, val = split_structures(20, 0.25, seed=3)
    again = split_structures(20, 0.25, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert len(val) == 5 and not set(train) & set(val)
    assert sorted(set(train) | set(val)) == list(range(20))
    assert not np.array_equal(val, split_structures(20, 0.25, seed=4)[1])
    done = np.ones(20, bool)
    done[val[0]] = False
    train2, val2 = split_structures(20, 0.25, seed=3, done=done)
    assert val[0] not in set(train2) | set(val2)
    assert [len(s) for s in split_structures(2, 0.1)] == [1, 1]
    assert len(split_structures(5, 0.0)[1]) == 0
    # images follow their structure: no structure on both sides
    assert list(image_indices([1, 3], 14, 4)) == [4, 5, 6, 7, 12, 13]


def _columns(xy, depth, species):
    xy = np.asarray(xy, float)
    return {"x": xy[:, 0], "y": xy[:, 1], "depth": np.asarray(depth), "species": np.asarray(species)}


def test_render_item_labels_sit_on_the_columns_of_the_grid():
    p_det, grid = 0.3, 0.2 * 1.03  # a 3 % pixel-size jitter: labels follow the true grid
    columns = _columns([[3.0, 4.5], [6.6, 2.1], [5.0, 7.0]], [3, 5, 2], [0, 0, 1])
    counts = np.random.default_rng(0).poisson(10.0, (48, 48)).astype(np.float32)
    item = render_item(counts, p_det, columns, grid_pixel_A=grid, crop_px=(40, 40),
                       origin=(2, 3), with_columns=True, **LABELS)
    assert item["image"].shape == (40, 40) and abs(item["image"].mean()) < 0.3
    for (x, y), k, sp in zip(np.stack([columns["x"], columns["y"]], 1), columns["depth"],
                             columns["species"], strict=True):
        name = ("ce", "o")[sp]
        r, c = round(y / grid) - 2, round(x / grid) - 3
        assert item[f"{name}_class"][r, c] == k
        assert item[f"{name}_amp"][r, c] > 0.8
        assert item[f"{name}_amp"][r, c] == item[f"{name}_amp"][r - 1:r + 2, c - 1:c + 2].max()
    assert item["ce_class"][0, 0] == 0 and item["ce_weight"][0, 0] == 1.0
    # columns are returned in the crop frame
    assert np.allclose(item["columns"][0, :2], [3.0 - 3 * grid, 4.5 - 2 * grid], atol=1e-5)
    # rotations and flips move image and labels together
    turned = render_item(counts, p_det, columns, grid_pixel_A=grid, crop_px=(40, 40),
                         origin=(2, 3), rot90=1, flip=True, **LABELS)
    for key in ("image", "ce_class", "ce_amp", "o_weight"):
        assert np.array_equal(turned[key], np.rot90(item[key], 1)[:, ::-1])


def test_render_item_pads_by_reflection_with_zero_weight():
    counts = np.random.default_rng(1).poisson(5.0, (20, 20)).astype(np.float32)
    columns = _columns([[1.0, 1.0]], [2], [0])
    item = render_item(counts, 0.2, columns, grid_pixel_A=0.2, crop_px=(32, 32),
                       origin=(-6, -6), **LABELS)
    valid = item["valid"]
    assert valid.sum() == 400 and valid[6:26, 6:26].all()
    assert np.all(item["ce_weight"][~valid] == 0) and np.all(item["ce_class"][~valid] == 0)
    assert np.array_equal(item["image"][5], item["image"][7])  # reflected about row 6
    assert item["ce_class"][6 + 5, 6 + 5] == 2


@pytest.mark.parametrize("p_det, grid", [(0.15, 0.2 * 1.03), (0.3, 0.2 * 0.97), (0.2, 0.2)])
def test_resample_block_from_a_window_equals_the_crop_of_the_whole_resample(p_det, grid):
    image = np.random.default_rng(2).random((90, 70)).astype(np.float32)
    whole = resample(image, p_det, grid)
    for (r0, c0), (h, w) in [((0, 0), whole.shape), ((5, 9), (20, 16)),
                             ((whole.shape[0] - 12, whole.shape[1] - 8), (12, 8))]:
        a0, a1 = source_window(image.shape[0], p_det, grid, r0, r0 + h)
        b0, b1 = source_window(image.shape[1], p_det, grid, c0, c0 + w)
        block = resample_block(image[a0:a1, b0:b1], (a0, b0), p_det, grid, (r0, c0), (h, w))
        np.testing.assert_allclose(block, whole[r0:r0 + h, c0:c0 + w], atol=1e-5)
        if (h, w) != whole.shape:  # a real sub-window, not the whole image
            assert (a1 - a0) * (b1 - b0) < image.size


@pytest.mark.parametrize("dose, p_det, grid", [(50.0, 0.15, 0.206), (2000.0, 0.3, 0.194)])
def test_expected_frame_stats_match_the_statistics_of_noisy_frames(dose, p_det, grid):
    yy, xx = np.mgrid[0:96, 0:96] * p_det
    clean = (1 + 0.3 * np.cos(2 * np.pi * xx / 3.8) * np.cos(2 * np.pi * yy / 2.7)).astype(np.float32)
    lam = expected_counts(clean, dose, p_det)
    mean, std = expected_frame_stats(lam, p_det, grid)
    rng = np.random.default_rng(3)
    stats = np.array([(f.mean(), f.std()) for f in
                      (resample(rng.poisson(lam).astype(np.float32), p_det, grid)
                       for _ in range(60))])
    assert mean == pytest.approx(stats[:, 0].mean(), rel=2e-3)
    assert std == pytest.approx(stats[:, 1].mean(), rel=5e-3)
    # the noise term matters: without it the standard deviation would be far too small
    noiseless = resample(lam, p_det, grid).std()
    assert std > 1.05 * noiseless


class _MeanRng:
    """A generator whose Poisson draw is its mean: makes the noisy paths deterministic."""

    def poisson(self, lam):
        return np.asarray(lam, np.float64)


def test_training_window_equals_the_crop_of_the_whole_normalised_frame(tiny_store):
    ds = ColumnDataset(tiny_store, crop_px=32, size_multiple=4)
    index = 1
    p_det = float(ds._pixel[index])
    grid = 0.2 * 1.02
    clean = ds.clean_image(index)
    lam = expected_counts(clean, 700.0, p_det)
    shape = resampled_shape(clean.shape, p_det, grid)
    origin = (shape[0] - 32 - 3, 5)
    window = ds._train_window(index, 700.0, 1.2, grid, origin, _MeanRng())
    whole = resample(lam * np.float32(1.2), p_det, grid)
    mean, std = expected_frame_stats(lam, p_det, grid)
    ref = (whole - mean * 1.2) / (std * 1.2)
    np.testing.assert_allclose(window, ref[origin[0]:origin[0] + 32, origin[1]:origin[1] + 32],
                               atol=1e-4)
    assert ds._train_window(index, 700.0, 1.0, grid, (-1, 0), _MeanRng()) is None  # padding


def test_cached_images_are_the_stored_ones_and_do_not_pickle(tiny_store):
    ds = ColumnDataset(tiny_store, crop_px=32, size_multiple=4, cache_images=True)
    first = ds.clean_image(2)
    assert ds.clean_image(2) is first
    np.testing.assert_array_equal(first, open_store(tiny_store)["image"][2])
    assert pickle.loads(pickle.dumps(ds))._images == {}
    assert ColumnDataset(tiny_store, crop_px=32, size_multiple=4)._images == {}


# --------------------------------------------------------------------------- dataset


def test_dataset_items_shapes_and_pickling(tiny_store):
    info = read_store_info(tiny_store)
    train = ColumnDataset(tiny_store, crop_px=64, size_multiple=4,
                          dose_range_e_per_A2=(50.0, 20000.0))
    item = train[0]
    assert item["image"].shape == (1, 64, 64) and item["image"].dtype == torch.float32
    for name in ("ce", "o"):
        assert item[f"{name}_class"].shape == (64, 64)
        assert int(item[f"{name}_class"].max()) <= info.max_depth
        assert item[f"{name}_amp"].dtype == torch.float32
        assert item[f"{name}_weight"].min() >= 0
    assert "columns" not in item
    assert 0.2 * 0.97 <= float(item["pixel_size_A"]) <= 0.2 * 1.03
    assert not torch.equal(train[0]["image"], train[0]["image"])  # new noise every draw
    clone = pickle.loads(pickle.dumps(train))
    assert clone._root is None and len(clone) == info.n_images
    loader = DataLoader(train, batch_size=4, num_workers=2)
    batches = list(loader)
    assert batches[0]["image"].shape == (4, 1, 64, 64)
    assert not torch.equal(batches[0]["image"][0], batches[1]["image"][0])


def test_validation_items_are_deterministic_and_labelled(tiny_store):
    val = _val_dataset(tiny_store, crop_px=None)
    assert val.crop_px % 4 == 0
    a, b = val[1], _val_dataset(tiny_store, crop_px=None)[1]
    for key in a:
        assert torch.equal(a[key].nan_to_num(-1), b[key].nan_to_num(-1)), key
    assert float(a["pixel_size_A"]) == pytest.approx(0.2)
    # The true columns of the store, moved into the (centred, reflected) crop frame.
    root = open_store(tiny_store)
    index = int(a["index"])
    p_det = float(val._pixel[index])
    table = structure_columns(root, int(val._structure[index]))
    shape = resampled_shape(root["image"].shape[1:], p_det, 0.2)
    r0, c0 = ((n - val.crop_px) // 2 for n in shape)
    rows = a["columns"].numpy()
    rows = rows[np.isfinite(rows[:, 0])]
    assert len(rows) > 10
    expected = np.stack([table["x"] - c0 * 0.2, table["y"] - r0 * 0.2], 1)
    for x, y, sp, k in rows:
        d = np.hypot(*(expected - [x, y]).T)
        j = int(d.argmin())
        assert d[j] < 1e-4 and table["species"][j] == sp and table["depth"][j] == k
        name = ("ce", "o")[int(sp)]
        assert int(a[f"{name}_class"][round(y / 0.2), round(x / 0.2)]) == int(k)


def test_shot_noise_mean_is_dose_times_pixel_area_times_image(tiny_store):
    ds = ColumnDataset(tiny_store, crop_px=64, size_multiple=4)
    index = 2
    rng = np.random.default_rng(5)
    n = 300
    draws = np.stack([ds.noisy_counts(index, rng)[0] for _ in range(n)])
    image = np.asarray(open_store(tiny_store)["image"][index])
    mean = expected_counts(image, float(ds._dose[index]), float(ds._pixel[index]))
    assert draws.sum() / (n * mean.sum()) == pytest.approx(1.0, abs=0.005)
    z = (draws.mean(axis=0) - mean) / np.sqrt(mean / n)
    assert abs(z.mean()) < 0.1 and 0.9 < z.std() < 1.1
    counts, dose = ds.noisy_counts(index, rng, dose_e_per_A2=1000.0)
    assert dose == 1000.0 and np.all(counts == np.round(counts))


# --------------------------------------------------------------------------- task


def test_tiny_model_overfits_a_tiny_set(tiny_store):
    info = read_store_info(tiny_store)
    val = _val_dataset(tiny_store, crop_px=64)
    batch = default_collate([val[i] for i in range(len(val))])
    torch.manual_seed(0)
    task = ColumnSegmentationTask(max_depth=info.max_depth,
                                  class_frequencies=info.class_frequencies,
                                  base_width=8, depth=2)
    optimizer = torch.optim.AdamW(task.parameters(), lr=3e-3)

    def column_pixel_accuracy() -> float:
        task.eval()
        with torch.no_grad():
            logits = task(batch["image"])
        task.train()
        hard = hard_labels(batch["ce_class"], batch["ce_amp"])
        return float((logits[0].argmax(1) == hard)[hard > 0].float().mean())

    acc0 = column_pixel_accuracy()
    losses = []
    for _ in range(50):
        loss, _ = task.losses(batch, task(batch["image"]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    assert column_pixel_accuracy() > max(acc0 + 0.3, 0.5)


def test_cosine_schedule_warms_up_and_decays():
    task = ColumnSegmentationTask(max_depth=3, base_width=4, depth=1, lr=1.0,
                                  warmup_fraction=0.1, min_lr_ratio=0.01)
    scheduler = task.configure_optimizers()["lr_scheduler"]["scheduler"]
    factor = scheduler.lr_lambdas[0]  # without a trainer: one step in total
    assert factor(0) == pytest.approx(1.0) and factor(10) == pytest.approx(0.01)


# --------------------------------------------------------------------------- CLI + export


def test_cli_fast_dev_run_exports_a_loadable_artifact(tiny_store, tmp_path, monkeypatch):
    from atom3d.training.main import train_main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "model"
    assert train_main(_cli_args(tiny_store, tmp_path, "--trainer.fast_dev_run", "true",
                                "--export", str(out))) == 0
    artifact = load_artifact(out)
    assert artifact.pixel_size_A == pytest.approx(0.2)
    assert artifact.classes == {"Ce": 12, "O": 12}
    config = artifact.config
    assert config["normalization"]["method"] == "frame_standardize"
    domain = config["training_domain"]
    for key in ("thickness_A", "defocus_A", "cs_A", "dose_e_per_A2", "tilt_mrad",
                "detector_pixel_size_A"):
        assert len(domain[key]) == 2 and domain[key][0] <= domain[key][1]
    assert all(t > 0 for t in artifact.temperature.values())
    assert config["metrics"]["validation"]["n_images"] == 4


def test_cli_fit_writes_checkpoints_and_metrics_resumes_and_exports(tiny_store, tmp_path,
                                                                     monkeypatch):
    from atom3d.training.main import train_main

    monkeypatch.chdir(tmp_path)
    args = _cli_args(tiny_store, tmp_path)  # 4 training images: 2 steps per epoch
    assert train_main(args + ["--trainer.max_epochs", "1"]) == 0
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert len(list(last.parent.glob("epoch000-step2*.ckpt"))) == 1  # the best one
    runs = tmp_path / "runs" / "tiny"
    header = (runs / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    for name in ("train/loss_step", "val/loss", "val/ce_pixel_acc", "val/ce_f1", "val/ce_exact",
                 "val/ce_within1", "val/o_f1", "val/o_exact"):
        assert name in header
    assert train_main(args + ["--trainer.max_epochs", "2", "--ckpt_path", "last"]) == 0
    resumed = (runs / "version_1" / "metrics.csv").read_text().splitlines()[1:]
    epochs = {row.split(",")[0] for row in resumed} - {""}
    assert epochs == {"1"}  # resumed after epoch 0, not restarted
    assert torch.load(last, weights_only=True)["global_step"] == 4
    # last.ckpt follows every epoch even when the monitored value never improves
    # (the smallest epoch is the first one: it stays "best" for good)
    worse = _cli_args(tiny_store, tmp_path / "worse", "--checkpoint.monitor", "epoch",
                      "--checkpoint.mode", "min")
    assert train_main(worse + ["--trainer.max_epochs", "3"]) == 0
    assert torch.load(tmp_path / "worse" / "checkpoints" / "last.ckpt",
                      weights_only=True)["global_step"] == 6

    from atom3d.training.main import export_main

    out = tmp_path / "exported"
    assert export_main([str(last), "-o", str(out)]) == 0
    config = load_artifact(out).config
    assert config["metrics"]["checkpoint"]["global_step"] == 4
    calibration = config["metrics"]["calibration"]
    assert calibration["n_pixels"]["Ce"] > 0 and set(calibration["n_columns"]) == {"Ce", "O"}
    # too few matched columns in the tiny set: the pixel temperature is shipped
    for species in ("Ce", "O"):
        if calibration["n_columns"][species] < 100:
            assert config["temperature"][species] == calibration["temperature_pixels"][species]


def test_cli_user_errors_are_one_line(tiny_store, tmp_path, monkeypatch, capsys):
    from atom3d.training.main import train_main

    monkeypatch.chdir(tmp_path)
    assert train_main(_cli_args(tmp_path / "missing.zarr", tmp_path)) == 2
    assert train_main(_cli_args(tiny_store, tmp_path, "--data.bogus", "1")) == 2
    assert train_main(_cli_args(tiny_store, tmp_path, "--data.crop_px", "66")) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("atom3d")]
    assert len(errors) == 3 and "missing.zarr" in errors[0] and "crop_px" in errors[2]


def test_default_config_parses(capsys):
    from atom3d.training.main import train_main

    assert train_main(["fit", "--config", str(DEFAULT_TRAIN), "--print_config"]) == 0
    printed = capsys.readouterr().out
    assert "path: data/train.zarr" in printed and "size_multiple" not in printed


def test_export_round_trip_gives_identical_outputs(tiny_store, tmp_path):
    from atom3d.data.datamodule import ColumnDataModule
    from atom3d.training.export import export_model

    datamodule = ColumnDataModule(str(tiny_store), batch_size=2, num_workers=0, crop_px=64,
                                  val_crop_px=64, val_fraction=0.5, size_multiple=4)
    torch.manual_seed(1)
    task = ColumnSegmentationTask(max_depth=datamodule.max_depth,
                                  class_frequencies=datamodule.class_frequencies,
                                  base_width=8, depth=2)
    task.train()
    with torch.no_grad():  # move BatchNorm statistics away from their initial values
        for batch in datamodule.train_dataloader():
            task(batch["image"])
    path = export_model(task, datamodule, tmp_path / "m", name="tiny", max_batches=1)
    artifact = load_artifact(path)
    assert artifact.name == "tiny" and artifact.model.config() == task.net.config()
    x = next(iter(datamodule.val_dataloader()))["image"]
    task.eval()
    with torch.no_grad():
        expected = task(x)
        got = artifact.model(x)
    for e, g in zip(expected, got, strict=True):
        assert torch.equal(e, g)
    probs = artifact.predict_proba(x)
    for e, p, species in zip(expected, probs, ("Ce", "O"), strict=True):
        T = artifact.temperature[species]
        assert torch.allclose(calibrated_softmax(e, T), p, atol=1e-6)


def test_fit_trains_channels_last_and_leaves_contiguous_weights(tiny_store, tmp_path):
    import lightning.pytorch as pl

    from atom3d.data.datamodule import ColumnDataModule
    from atom3d.training.task import TRAIN_MEMORY_FORMAT

    def channels_last(net) -> bool:
        convs = [p for p in net.parameters() if p.ndim == 4 and p.shape[-1] > 1]
        return all(p.is_contiguous(memory_format=TRAIN_MEMORY_FORMAT) for p in convs)

    class Record(pl.Callback):
        seen: list[bool] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.seen.append(channels_last(module.net))

    datamodule = ColumnDataModule(str(tiny_store), batch_size=2, num_workers=0, crop_px=64,
                                  val_crop_px=64, val_fraction=0.5, size_multiple=4)
    task = ColumnSegmentationTask(max_depth=datamodule.max_depth, base_width=8, depth=2)
    assert not channels_last(task.net)
    record = Record()
    trainer = pl.Trainer(max_steps=2, limit_val_batches=0, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, callbacks=[record],
                         default_root_dir=tmp_path, enable_model_summary=False)
    trainer.fit(task, datamodule=datamodule)
    assert record.seen == [True, True]
    assert not channels_last(task.net)  # export and prediction see contiguous weights
    assert all(p.is_contiguous() for p in task.net.parameters())


@pytest.mark.slow
def test_ddp_two_cpu_processes(tiny_store, tmp_path):
    """``trainer.strategy: ddp`` with two CPU processes (gloo), no code change."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    args = _cli_args(tiny_store, tmp_path, "--trainer.strategy", "ddp", "--trainer.devices", "2",
                     "--trainer.max_epochs", "1", "--export", str(tmp_path / "model"))
    run = subprocess.run([sys.executable, "-m", "atom3d.training.main", *args], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "distributed_backend=gloo" in run.stderr + run.stdout
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert load_artifact(tmp_path / "model").classes == {"Ce": 12, "O": 12}


def test_pooled_depth_confidence_is_the_weighted_mean_calibrate_columns_fits():
    """find_columns' column confidence == Σ w·(1 − p0)·softmax(z_1..K / T) / Σ w·(1 − p0)
    over pool_support: the quantity calibrate_columns fits the temperature on."""
    from atom3d.inference.columns import find_columns, pool_support

    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 6, 40, 40, generator=g) * 0.5
    z[0, 0] += 5.0  # background everywhere but at the two columns
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    for r0, c0, k in [(10.3, 12.6, 2), (25.0, 28.4, 4)]:
        blob = torch.exp(-((yy - r0) ** 2 + (xx - c0) ** 2) / 8.0)
        z[0, 0] -= 11 * blob
        z[0, k] += 3 * blob + 0.3 * torch.randn(40, 40, generator=g)
    T = 1.7
    probs = calibrated_softmax(z, T)[0].numpy()
    table = find_columns(probs, 0.2, 1.6)
    assert len(table) == 2
    presence = 1.0 - probs[0].astype(np.float64)
    centres = np.stack([table.y_A, table.x_A], axis=1) / 0.2
    pix, w = pool_support(presence, centres, 0.4 / 0.2)
    r, c = pix[..., 0], pix[..., 1]
    q = torch.softmax(z[0, 1:, r, c].permute(1, 2, 0).double() / T, dim=2).numpy()
    weight = w * presence[r, c]
    given = (weight[..., None] * q).sum(axis=1) / weight.sum(axis=1)[:, None]
    np.testing.assert_allclose(given.max(axis=1), table.confidence, rtol=1e-4)
    np.testing.assert_array_equal(given.argmax(axis=1) + 1, table.depth)


def test_export_calibrates_on_a_separate_store(tiny_store, tmp_path, monkeypatch):
    from atom3d.training.main import export_main, train_main

    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    monkeypatch.chdir(tmp_path)
    assert train_main(_cli_args(tiny_store, tmp_path, "--trainer.max_epochs", "1")) == 0
    out = tmp_path / "calibrated"
    assert export_main([str(ckpt), "-o", str(out), "--calibration-data", str(tiny_store)]) == 0
    calibration = load_artifact(out).config["metrics"]["calibration"]
    assert "calibration store" in calibration["split"]
    # the validation half plus every image of the store (both structures)
    default = tmp_path / "default"
    assert export_main([str(ckpt), "-o", str(default)]) == 0
    half = load_artifact(default).config["metrics"]["calibration"]
    assert calibration["n_pixels"]["Ce"] > half["n_pixels"]["Ce"]
    # several stores: all of them calibrate (here the same store twice: twice its columns)
    twice = tmp_path / "twice"
    assert export_main([str(ckpt), "-o", str(twice), "--calibration-data", str(tiny_store),
                        str(tiny_store)]) == 0
    both = load_artifact(twice).config["metrics"]["calibration"]
    assert both["split"].count("calibration store") == 2
    extra = {sp: calibration["n_columns"][sp] - half["n_columns"][sp] for sp in ("Ce", "O")}
    assert all(n > 0 for n in extra.values())
    assert both["n_columns"] == {sp: half["n_columns"][sp] + 2 * extra[sp] for sp in extra}
    # the detection threshold is fitted on the same columns when there are enough
    threshold = calibration["column_threshold"]
    assert isinstance(threshold, dict) and threshold, threshold
    for sp, fit in threshold.items():
        assert fit["n_true"] >= 100 and fit["n_found"] > 0 and 0.5 <= fit["threshold"] <= 0.95
        assert load_artifact(out).column_threshold[sp] == fit["threshold"]


def test_export_records_the_extra_training_stores(tiny_store, tmp_path, monkeypatch):
    """A checkpoint trained with extra stores: the exported training domain describes
    those at hand and names the missing ones; the calibration is the main store's."""
    import shutil

    import zarr

    from atom3d.training.main import export_main, train_main

    monkeypatch.chdir(tmp_path)
    extra = tmp_path / "particles.zarr"
    shutil.copytree(tiny_store, extra)
    root = zarr.open_group(str(extra), mode="r+")
    root.attrs["seed"] = int(root.attrs["seed"]) + 1
    config = dict(root.attrs["config"])
    root.attrs["config"] = {**config, "structure": {**config["structure"], "p_particle": 1.0}}
    assert train_main(_cli_args(tiny_store, tmp_path, "--trainer.max_epochs", "1",
                                "--data.extra_train_paths", f"[{extra}]")) == 0
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert export_main([str(ckpt), "-o", str(tmp_path / "both")]) == 0
    domain = load_artifact(tmp_path / "both").config["training_domain"]
    assert [d["path"] for d in domain["extra_datasets"]] == [str(extra)]
    assert domain["extra_datasets"][0]["structure_mix"]["p_particle"] == 1.0
    assert domain["dataset"]["structure_mix"]["p_particle"] == config["structure"]["p_particle"]
    assert "extra_datasets_missing" not in domain
    # the extra store moved away: exported all the same, named as missing, warned of
    shutil.move(extra, tmp_path / "elsewhere.zarr")
    with pytest.warns(UserWarning, match="not found"):
        assert export_main([str(ckpt), "-o", str(tmp_path / "alone")]) == 0
    alone = load_artifact(tmp_path / "alone").config
    assert alone["training_domain"]["extra_datasets"] == []
    assert alone["training_domain"]["extra_datasets_missing"] == [str(extra)]
    # the extra stores take no part in the calibration
    assert alone["temperature"] == load_artifact(tmp_path / "both").config["temperature"]


def test_one_pass_calibration_equals_the_two_separate_fits(tiny_store):
    from atom3d.training.export import calibrate, calibrate_columns, calibrate_temperature

    info = read_store_info(tiny_store)
    torch.manual_seed(0)
    task = ColumnSegmentationTask(max_depth=info.max_depth,
                                  class_frequencies=info.class_frequencies,
                                  base_width=8, depth=2)
    loader = DataLoader(_val_dataset(tiny_store, crop_px=64), batch_size=2)
    fit = calibrate(task, loader, max_pixels=500, max_columns=50, seed=3)
    t_pix, n_pix = calibrate_temperature(task.net, loader, max_pixels=500, seed=3)
    t_col, n_col = calibrate_columns(task, loader, max_columns=50, seed=3)
    assert fit["pixel_temperature"] == t_pix and fit["n_pixels"] == n_pix
    assert fit["n_columns"] == n_col and n_pix["Ce"] > 0
    for sp in ("Ce", "O"):
        assert fit["column_temperature"][sp] == pytest.approx(t_col[sp], nan_ok=True)


def test_explicit_validation_structures():
    from atom3d.data.dataset import explicit_split
    from atom3d.errors import ConfigError

    done = np.ones(10, bool)
    done[7] = False
    train, val = explicit_split(10, [4, 2, 4], done)
    assert val.tolist() == [2, 4] and train.tolist() == [0, 1, 3, 5, 6, 8, 9]
    for bad in ([], [10], [7], list(range(10))):
        with pytest.raises(ConfigError):
            explicit_split(10, bad, done if bad != list(range(10)) else None)


def test_fine_tuning_starts_from_checkpoint_weights_with_a_fresh_schedule(
        tiny_store, tmp_path, monkeypatch):
    from atom3d.errors import UserError
    from atom3d.training.main import export_main, train_main
    from atom3d.training.task import ColumnSegmentationTask

    monkeypatch.chdir(tmp_path)
    assert train_main(_cli_args(tiny_store, tmp_path / "a", "--trainer.max_epochs", "1")) == 0
    first = tmp_path / "a" / "checkpoints" / "last.ckpt"
    saved = torch.load(first, weights_only=True)
    hp = {k: v for k, v in saved["hyper_parameters"].items() if not k.startswith("_")}
    task = ColumnSegmentationTask(**{**hp, "init_weights": str(first)})
    for name, value in task.net.state_dict().items():
        assert torch.equal(value, saved["state_dict"][f"net.{name}"])
    # a wider network starts from the narrow one's weights, computing the same output
    wide = ColumnSegmentationTask(**{**hp, "base_width": hp["base_width"] + 4,
                                     "init_weights": str(first)}).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        for a, b in zip(task.eval().net(x), wide.net(x), strict=True):
            assert a.shape == b.shape
            assert (a.argmax(1) == b.argmax(1)).float().mean() > 0.99
            assert torch.allclose(a, b, atol=0.05 * float(a.abs().max()))
    for other in ({"base_width": hp["base_width"] - 2}, {"depth": hp["depth"] + 1}):
        with pytest.raises(UserError, match="another architecture"):
            ColumnSegmentationTask(**{**hp, **other, "init_weights": str(first)})
    with pytest.raises(UserError, match="cannot read"):
        ColumnSegmentationTask(**{**hp, "init_weights": str(tmp_path / "missing.ckpt")})

    # the validation split given explicitly; the fine-tuned run counts its own steps
    args = _cli_args(tiny_store, tmp_path / "b", "--trainer.max_epochs", "1",
                     "--model.init_weights", str(first), "--data.val_structures", "[1]")
    assert train_main(args) == 0
    tuned = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert tuned["global_step"] == saved["global_step"] == 2
    assert tuned["datamodule_hyper_parameters"]["val_structures"] == [1]
    # every checkpoint records the split it trained on (export calibrates on it)
    assert saved["ColumnDataModule"]["val_structures"] == [1 - saved["ColumnDataModule"][
        "train_structures"][0]]
    assert tuned["ColumnDataModule"] == {"train_structures": [0], "val_structures": [1]}
    assert export_main([str(tmp_path / "b" / "checkpoints" / "last.ckpt"), "-o",
                        str(tmp_path / "x"), "--val-structures", "[1, 'a']"]) == 2
    first.unlink()  # export needs only the fine-tuned checkpoint
    assert export_main([str(tmp_path / "b" / "checkpoints" / "last.ckpt"), "-o",
                        str(tmp_path / "model")]) == 0


def test_extra_training_stores_train_but_never_validate(tiny_store, tmp_path):
    import shutil

    import zarr

    from atom3d.data.datamodule import ColumnDataModule
    from atom3d.errors import ConfigError

    # a second store: a copy with one of its two structures unfinished
    extra = tmp_path / "extra.zarr"
    shutil.copytree(tiny_store, extra)
    root = zarr.open_group(str(extra), mode="r+")
    done = np.asarray(root["done"][:], bool)
    done[1] = False
    root["done"][:] = done
    root.attrs["complete"] = False
    root.attrs["seed"] = int(root.attrs["seed"]) + 1

    kwargs = dict(batch_size=2, num_workers=0, crop_px=32, val_crop_px=64, size_multiple=16,
                  val_structures=[1])
    with pytest.warns(UserWarning, match="incomplete"):
        dm = ColumnDataModule(str(tiny_store), extra_train_paths=[str(extra)], **kwargs)
    alone = ColumnDataModule(str(tiny_store), **kwargs)
    dm.setup("fit")
    alone.setup("fit")
    info = read_store_info(tiny_store)
    n_extra = len(image_indices([0], info.n_images, info.images_per_structure))
    assert len(dm.train_dataset) == len(alone.train_dataset) + n_extra
    assert len(dm.val_dataset) == len(alone.val_dataset)  # validation: the main store only
    assert dm.state_dict() == alone.state_dict()
    # class weights: the image-weighted mean over the training stores
    extra_info = dm.extra_infos[0]
    n_main = len(image_indices(np.flatnonzero(info.done), info.n_images,
                               info.images_per_structure))
    for species in ("Ce", "O"):
        expect = (n_main * np.array(info.class_frequencies[species])
                  + n_extra * np.array(extra_info.class_frequencies[species]))
        np.testing.assert_allclose(dm.class_frequencies[species], expect / expect.sum())
    assert not np.allclose(extra_info.class_frequencies["Ce"], info.class_frequencies["Ce"])
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, 32, 32)

    with pytest.raises(ConfigError, match="repeats data.path"):
        ColumnDataModule(str(tiny_store), extra_train_paths=[str(tiny_store)], **kwargs)
    with pytest.raises(ConfigError, match="twice"), pytest.warns(UserWarning):
        ColumnDataModule(str(tiny_store), extra_train_paths=[str(extra), str(extra)], **kwargs)
    root.attrs["seed"] = int(root.attrs["seed"]) - 1
    with pytest.raises(ConfigError, match="same structures twice"), pytest.warns(UserWarning):
        ColumnDataModule(str(tiny_store), extra_train_paths=[str(extra)], **kwargs)
    root.attrs["seed"] = int(root.attrs["seed"]) + 1
    # another mix of structure kinds and another size: the same domain, accepted
    config = dict(root.attrs["config"])
    root.attrs["config"] = {**config, "n_images": config["n_images"] + 1,
                            "structure": {**config["structure"], "p_particle": 1.0}}
    with pytest.warns(UserWarning):
        mixed = ColumnDataModule(str(tiny_store), extra_train_paths=[str(extra)], **kwargs)
    assert len(mixed.extra_infos) == 1
    # the training domain recorded at export covers both stores: each store's mix of
    # kinds, and the thickness range found in the images of either
    from atom3d.data.store import param
    from atom3d.training.export import training_domain

    names = list(root.attrs["param_names"])
    params = np.asarray(root["params"][:])
    thick = params[:, names.index("thickness_A")]
    main_thick = param(zarr.open_group(str(tiny_store), mode="r"), "thickness_A")
    params[np.flatnonzero(np.isfinite(thick))[0], names.index("thickness_A")] = (
        np.nanmax(main_thick) + 100.0)
    root["params"][:] = params
    mixed = ColumnDataModule(str(tiny_store), extra_train_paths=[str(extra)], **kwargs)
    domain = training_domain(mixed.info, dict(mixed.hparams), mixed.extra_infos)
    alone_domain = training_domain(alone.info, dict(alone.hparams))
    assert domain["dataset"]["structure_mix"]["p_particle"] == pytest.approx(
        config["structure"]["p_particle"])
    assert [d["structure_mix"]["p_particle"] for d in domain["extra_datasets"]] == [1.0]
    assert alone_domain["extra_datasets"] == []
    assert domain["thickness_A"][1] == pytest.approx(np.nanmax(main_thick) + 100.0)
    assert alone_domain["thickness_A"][1] == pytest.approx(np.nanmax(main_thick))
    # another range of structures is another domain: refused
    root.attrs["config"] = {**config, "structure": {**config["structure"],
                                                    "tilt_mrad": [0.0, 50.0]}}
    with pytest.raises(ConfigError, match="differs in: structure"), pytest.warns(UserWarning):
        ColumnDataModule(str(tiny_store), extra_train_paths=[str(extra)], **kwargs)
    config["labels"] = {**config["labels"], "sigma_A": config["labels"]["sigma_A"] * 2}
    root.attrs["config"] = config
    with pytest.raises(ConfigError, match="differs in: labels"), pytest.warns(UserWarning):
        ColumnDataModule(str(tiny_store), extra_train_paths=[str(extra)], **kwargs)


def test_recalibrate_map_only_changes_only_the_reported_confidence(tiny_store, tmp_path,
                                                                    monkeypatch, capsys):
    """``--map-only``: a map fitted on the columns evaluate scores, composed with the one in
    use; same weights, temperature, threshold, depths and columns; better in-sample ECE."""
    from atom3d.evaluation.evaluate import evaluate_store, network_method
    from atom3d.evaluation.metrics import ece
    from atom3d.models.artifact import save_artifact
    from atom3d.models.unet import UNet
    from atom3d.training import export
    from atom3d.training.calibration import fit_confidence_map
    from atom3d.training.main import train_main

    info = read_store_info(tiny_store)
    torch.manual_seed(0)
    net = UNet(base_width=8, depth=2, n_classes=(info.max_depth + 1,) * 2)
    with torch.no_grad():
        for head in net.heads:
            head.weight.mul_(30.0)
        for head in net.heads:  # columns everywhere: matched columns to fit on
            head.bias[0] = -50.0
    classes = {"Ce": info.max_depth, "O": info.max_depth}
    inner = {"Ce": {"confidence": [0.0, 1.0], "accuracy": [0.0, 0.9]}}
    save_artifact(net, tmp_path / "m", name="m", classes=classes, pixel_size_A=0.2,
                  normalization={}, training_domain={}, temperature={"Ce": 1.3, "O": 1.4},
                  confidence_map=inner, column_threshold={"Ce": 0.2, "O": 0.3},
                  metrics={"evaluation": {"min_separation_A": [2.6, 1.6],
                                          "match_distance_A": [1.0, 0.7],
                                          "edge_margin_A": 1.0}})
    monkeypatch.setattr(export, "MIN_MAP_COLUMNS", 1)
    out = tmp_path / "m8"
    assert train_main(["recalibrate", str(tmp_path / "m"), "-o", str(out), "--data",
                       str(tiny_store), "--map-only", "--tta-passes", "4", "--quiet"]) == 0
    art = load_artifact(out).for_passes(4)
    assert art.weights_sha256 == load_artifact(tmp_path / "m").weights_sha256
    assert art.temperature == {"Ce": 1.3, "O": 1.4}
    assert art.column_threshold == {"Ce": 0.2, "O": 0.3}
    fit = art.config["pass_calibration"]["4"]["fit"]
    assert fit["map_only"] and fit["passes"] == 4
    before = evaluate_store(tiny_store, {"n": network_method(str(tmp_path / "m"), tta=4)[0]},
                            noise_seed=0, progress=False)["per_image"]["n"]
    after = evaluate_store(tiny_store, {"n": network_method(str(out), tta=4)[0]},
                           noise_seed=0, progress=False)["per_image"]["n"]
    # a loaded artifact (what refit_confidence_map passes) runs as its directory does
    loaded, info = network_method(load_artifact(out), tta=4)
    assert info["model"] == str(out)
    again = evaluate_store(tiny_store, {"n": loaded}, noise_seed=0, progress=False)
    for sp in ("Ce", "O"):
        for a, b in zip(after[sp], again["per_image"]["n"][sp], strict=True):
            np.testing.assert_array_equal(a["confidence"], b["confidence"])
    for sp in ("Ce", "O"):
        assert fit["confidence_map"][sp]["n_columns"] > 0
        old = np.concatenate([r["confidence"] for r in before[sp]])
        new = np.concatenate([r["confidence"] for r in after[sp]])
        ok = np.concatenate([r["correct"] for r in after[sp]])
        for b, a in zip(before[sp], after[sp], strict=True):  # same columns, same depths
            np.testing.assert_array_equal(b["pred_depth"], a["pred_depth"])
            np.testing.assert_array_equal(b["true_idx"], a["true_idx"])
        # what is reported now is the isotonic fit of these very columns on top of the old
        outer = fit_confidence_map(old, ok)
        np.testing.assert_allclose(new, np.interp(old, outer["confidence"], outer["accuracy"]),
                                   atol=1e-6)
        assert fit["confidence_map"][sp]["ece_before"] == pytest.approx(ece(old, ok), abs=1e-6)
        assert fit["confidence_map"][sp]["ece_after"] == pytest.approx(ece(new, ok), abs=1e-6)
    capsys.readouterr()
    assert train_main(["recalibrate", str(tmp_path / "m"), "-o", str(tmp_path / "bad"),
                       "--data", str(tiny_store), "--map-only", "--max-batches", "1",
                       "--quiet"]) == 2
    assert "--map-only" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_recalibrate_fits_the_averaged_network_and_keeps_the_weights(tiny_store, tmp_path,
                                                                      capsys):
    from atom3d.inference.predictor import TTANetwork
    from atom3d.models.artifact import save_artifact
    from atom3d.models.unet import UNet
    from atom3d.training.export import _ArtifactCalibration, _store_loader, calibrate
    from atom3d.training.main import train_main

    info = read_store_info(tiny_store)
    torch.manual_seed(0)
    net = UNet(base_width=8, depth=2, n_classes=(info.max_depth + 1,) * 2)
    with torch.no_grad():  # an untrained but confident network: finite temperatures
        for head in net.heads:
            head.weight.mul_(30.0)
    classes = {"Ce": info.max_depth, "O": info.max_depth}
    save_artifact(net, tmp_path / "m", name="m", classes=classes, pixel_size_A=0.2,
                  normalization={}, training_domain={}, temperature={"Ce": 1.3, "O": 1.4},
                  metrics={"evaluation": {"min_separation_A": [2.6, 1.6],
                                          "match_distance_A": [1.0, 0.7],
                                          "edge_margin_A": 1.0}})
    out = tmp_path / "m8"
    assert train_main(["recalibrate", str(tmp_path / "m"), "-o", str(out), "--data",
                       str(tiny_store), "--tta-passes", "8", "--quiet"]) == 0
    art = load_artifact(out)
    assert art.weights_sha256 == load_artifact(tmp_path / "m").weights_sha256
    assert art.temperature == {"Ce": 1.3, "O": 1.4}  # the one-pass calibration is kept
    entry = art.config["pass_calibration"]["8"]
    assert entry["fit"]["passes"] == 8 and entry["fit"]["n_pixels"]["Ce"] > 0
    assert "seed 1" in entry["fit"]["stores"][0]
    assert art.for_passes(8).temperature == entry["temperature"]
    # the fit is that of the network averaged over 8 passes, on every image of the store
    loader = _store_loader(tiny_store, info.max_depth, pixel_size_A=0.2, crop_px=None,
                           size_multiple=4, seed=0, batch_size=2)
    assert len(loader.dataset) == info.n_images
    reference = load_artifact(tmp_path / "m")
    evaluation = reference.config["metrics"]["evaluation"]
    eight = calibrate(_ArtifactCalibration(TTANetwork(reference.model, 8), evaluation), loader)
    one = calibrate(_ArtifactCalibration(TTANetwork(reference.model, 1), evaluation), loader)
    for sp in ("Ce", "O"):
        assert entry["fit"]["temperature_pixels"][sp] == pytest.approx(
            eight["pixel_temperature"][sp])
    # (an untrained network's temperature may sit at the fit's bound for one species)
    assert any(eight["pixel_temperature"][sp] != pytest.approx(one["pixel_temperature"][sp])
               for sp in ("Ce", "O"))
    # bad input: one line, exit 2, nothing written
    capsys.readouterr()
    for argv in (["--data", str(tmp_path / "missing.zarr")],
                 ["--data", str(tiny_store), "--tta-passes", "3"],
                 ["--data", str(tiny_store), "--batch-size", "0"]):
        assert train_main(["recalibrate", str(tmp_path / "m"), "-o", str(tmp_path / "bad"),
                           "--quiet", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("atom3d: error:") and "\n" not in err, err
        assert not (tmp_path / "bad").exists()
