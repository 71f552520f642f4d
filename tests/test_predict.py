"""Tests of ``atom3d predict``: Predictor, streaming series pipeline, resume, 3D export, demo.

Every test uses a tiny random-weight model artifact (UNet base_width=8, depth=2) saved into
a temporary directory; the numbers it predicts are meaningless, the plumbing is not.
"""

import json
import math
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import tifffile

from atom3d.errors import UserError
from atom3d.inference import series as series_mod
from atom3d.inference.export3d import C_110_A, column_atoms, export_xyz, sublattice_phase
from atom3d.inference.predictor import Predictor
from atom3d.inference.series import (
    area_and_radius,
    count_surface_columns,
    predict_main,
    series_drift,
)
from atom3d.io.results import (
    COLUMN_FIELDS,
    EVENT_FIELDS,
    FRAME_FIELDS,
    MAP_NAMES,
    ResultsWriter,
    attr_equal,
    partial_path,
    read_results,
    sha256_file,
)
from atom3d.models.artifact import load_artifact
from atom3d.models.unet import UNet

K = 4  # largest depth class of the tiny model (``model_dir`` of conftest.py)
PIXEL_A = 0.2  # input pixel size of the synthetic series [Å]
SHAPE = (64, 80)


# --------------------------------------------------------------------------- fixtures


def _lattice_frame(rng, shift_A, shape=SHAPE, pixel=PIXEL_A, dose=500.0):
    """Noisy image of Gaussian blobs on the projected [110] Ce lattice, shifted by shift_A."""
    r, c = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    x, y = c * pixel, r * pixel
    img = np.ones(shape)
    for i in range(-4, 8):
        for j in range(-6, 12):
            if (i + j) % 2:
                continue
            cx, cy = 2.0 + 2.705 * i + shift_A[0], 1.5 + 1.913 * j + shift_A[1]
            img += 1.5 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 0.35**2))
    return rng.poisson(img * dose * pixel**2).astype(np.float32)


def _write_tif(path, frames, pixel=PIXEL_A, interval_s=0.5):
    tifffile.imwrite(path, np.asarray(frames, np.float32), imagej=True,
                     resolution=(1 / (pixel / 10), 1 / (pixel / 10)),
                     metadata={"axes": "TYX", "unit": "nm", "finterval": interval_s})
    return path


@pytest.fixture(scope="module")
def series_tif(tmp_path_factory):
    """5 frames, 64x80 px at 0.2 Å (ImageJ calibration), frame 2 all NaN."""
    rng = np.random.default_rng(1)
    frames = [_lattice_frame(rng, (0.1 * t, -0.07 * t)) for t in range(5)]
    frames[2][:] = np.nan
    return _write_tif(tmp_path_factory.mktemp("series") / "series.tif", frames)


def _predict(tif, out, model_dir, *extra, inputs=()):
    return predict_main([str(tif), *map(str, inputs), "-o", str(out), "--model",
                         str(model_dir), "--quiet", *map(str, extra)])


@pytest.fixture(scope="module")
def reference_run(series_tif, model_dir, tmp_path_factory):
    """An uninterrupted run (with figures and xyz files)."""
    out_dir = tmp_path_factory.mktemp("ref")
    out = out_dir / "ref.h5"
    assert _predict(series_tif, out, model_dir, "--figures", out_dir / "fig",
                    "--xyz", out_dir / "xyz") == 0
    return out


# --------------------------------------------------------------------------- results file


def test_results_file_schema(reference_run, series_tif, model_dir):
    r = read_results(reference_run)
    attrs = r["attrs"]
    assert attrs["format"] == "atom3d.columns" and attrs["format_version"] == 1
    assert attrs["complete"] is True
    assert attrs["source"] == str(series_tif)
    assert attrs["source_sha256"] == sha256_file(series_tif)
    artifact = load_artifact(model_dir)
    assert attrs["model"] == "tiny-random"
    assert attrs["model_sha256"] == artifact.weights_sha256
    assert attrs["pixel_size_A"] == pytest.approx(PIXEL_A)
    assert attrs["frame_interval_s"] == pytest.approx(0.5)
    assert attrs["depth_smoothing"] == "changepoint"
    expected = {"ce_depth": np.uint8, "ce_confidence": np.float16,
                "o_depth": np.uint8, "o_confidence": np.float16}
    for name in MAP_NAMES:
        assert r["maps"][name].dtype == expected[name]
        assert r["maps"][name].shape == (5, *SHAPE)  # the input pixel grid
    for table, fields in (("columns", COLUMN_FIELDS), ("frames", FRAME_FIELDS),
                          ("events", EVENT_FIELDS)):
        assert set(fields) <= set(r[table])
    cols, frames = r["columns"], r["frames"]
    assert {"n_surface_columns", "n_ce_columns", "n_o_columns"} <= set(frames)
    # the frames were drawn at 500 e/Å² of an image whose mean intensity is m: the shot
    # noise says 500·m electrons per Å² were detected
    m = np.mean(_lattice_frame(np.random.default_rng(0), (0, 0), dose=1e9)) / (1e9 * PIXEL_A**2)
    valid = frames["valid"].astype(bool)
    np.testing.assert_allclose(frames["dose_e_per_A2"][valid], 500 * m, rtol=0.15)
    assert np.isnan(frames["dose_e_per_A2"][~valid]).all() and (~valid).any()
    assert {"p_column", "depth_frame", "confidence_frame", f"p_depth_{K}"} <= set(cols)
    assert len(cols["x"]) > 0
    assert np.all(cols["depth"] >= 1) and np.all(cols["depth"] <= K)
    assert np.all((cols["confidence"] >= 0) & (cols["confidence"] <= 1))
    assert np.all(np.diff(cols["frame"]) >= 0)
    # columns within 1 Å of the frame border are dropped (edge_margin_A)
    assert cols["x"].min() >= 1.0 and cols["x"].max() <= (SHAPE[1] - 1) * PIXEL_A - 1.0
    assert cols["y"].min() >= 1.0 and cols["y"].max() <= (SHAPE[0] - 1) * PIXEL_A - 1.0
    # every column is tracked; Ce and O track ids never collide
    assert np.all(cols["track"] >= 0)
    ce_ids = set(cols["track"][cols["species"] == "Ce"])
    o_ids = set(cols["track"][cols["species"] == "O"])
    assert not ce_ids & o_ids
    # frame sums follow the (smoothed) column depths
    for t in range(5):
        sel = cols["frame"] == t
        assert frames["n_ce"][t] == cols["depth"][sel & (cols["species"] == "Ce")].sum()
        assert frames["n_o"][t] == cols["depth"][sel & (cols["species"] == "O")].sum()
    valid = frames["valid"]
    assert np.all(frames["radius_A"][valid] == pytest.approx(
        np.sqrt(frames["area_A2"][valid] / np.pi), rel=1e-5))
    assert frames["drift_x"][0] == 0 and frames["drift_y"][0] == 0
    assert set(r["events"]["kind"]) <= {"depth_change", "appeared", "vanished"}
    figures = reference_run.parent / "fig"
    assert (figures / "summary.png").is_file() and (figures / "tracks.png").is_file()
    assert len(list(figures.glob("frame_*.png"))) == 3


def test_series_of_invalid_frames_still_finishes(model_dir, tmp_path):
    tif = _write_tif(tmp_path / "blank.tif", np.zeros((3, *SHAPE), np.float32))
    out = tmp_path / "blank.h5"
    assert _predict(tif, out, model_dir, "--figures", tmp_path / "fig") == 0
    r = read_results(out, load_maps=False)
    assert not r["frames"]["valid"].any()
    assert r["columns"]["x"].size == 0 and r["events"]["frame"].size == 0


def test_nan_frame_invalid_and_skipped(reference_run):
    r = read_results(reference_run)
    frames, cols = r["frames"], r["columns"]
    assert frames["valid"].tolist() == [True, True, False, True, True]
    assert not np.any(cols["frame"] == 2)
    assert np.all(r["maps"]["ce_depth"][2] == 0) and np.all(r["maps"]["o_depth"][2] == 0)
    assert np.all(np.isnan(r["maps"]["ce_confidence"][2]))
    assert math.isnan(frames["drift_x"][2]) and math.isnan(frames["o_ce_ratio"][2])
    assert np.all(np.isfinite(frames["drift_x"][frames["valid"]]))


def test_constant_frame_invalid_and_batching_consistent(model_dir):
    predictor = Predictor(load_artifact(model_dir))
    rng = np.random.default_rng(3)
    frames = [_lattice_frame(rng, (0.3 * t, 0.0)) for t in range(3)]
    frames.append(np.full(SHAPE, 7.0, np.float32))
    batched = predictor.predict_many(frames, PIXEL_A)
    assert [p.valid for p in batched] == [True, True, True, False]
    assert "no signal" in batched[3].reason
    for frame, together in zip(frames[:3], batched[:3], strict=True):
        alone = predictor.predict(frame, PIXEL_A)
        assert alone.ce_depth.shape == SHAPE
        np.testing.assert_array_equal(alone.ce_depth, together.ce_depth)
        np.testing.assert_allclose(alone.o_confidence, together.o_confidence, atol=1e-5)
        np.testing.assert_allclose(alone.columns["Ce"].x_A, together.columns["Ce"].x_A,
                                   atol=1e-4)
    # maps: channels resampled to the input grid one by one, then argmax
    from atom3d.data.transforms import resample
    from atom3d.inference.columns import maps_from_probs

    probs = predictor.probabilities(predictor.model_grid(frames[0], PIXEL_A))[: K + 1]
    stack = np.stack([resample(p, 0.25, PIXEL_A, order=1, shape=SHAPE) for p in probs])
    depth, confidence = maps_from_probs(stack)
    np.testing.assert_array_equal(batched[0].ce_depth, depth)
    np.testing.assert_allclose(batched[0].ce_confidence, confidence, atol=1e-5)


def test_tta_averages_the_mirror_images(model_dir):
    """--tta: the logits are the mean of the four mirrored passes, mirrored back, so a
    mirrored frame gives the mirrored logits; without it they are the single pass."""
    plain = Predictor(load_artifact(model_dir))
    tta = Predictor(load_artifact(model_dir), tta=True)
    rng = np.random.default_rng(5)
    m = plain.size_multiple  # no padding: a padded tile would not mirror onto itself
    image = plain.model_grid(_lattice_frame(rng, (0.1, 0.2)), PIXEL_A)
    image = np.ascontiguousarray(image[: image.shape[0] // m * m, : image.shape[1] // m * m])
    z = tta.logits(image)
    passes = []
    for axes in ((), (1,), (0,), (0, 1)):  # image axes (r, c) are logits axes (1, 2)
        flipped = np.flip(image, axes).copy() if axes else image
        passes.append(np.flip(plain.logits(flipped), tuple(a + 1 for a in axes)))
    manual = np.mean(passes, axis=0)
    np.testing.assert_allclose(z, manual, atol=1e-4)
    assert np.abs(z - plain.logits(image)).max() > 1e-3  # it does change the logits
    np.testing.assert_allclose(tta.logits(image[:, ::-1].copy()), z[:, :, ::-1], atol=1e-4)


def test_tta8_averages_the_square_symmetries(model_dir):
    """8 passes: the mean over the frame's 8 orientations (mirrors of the frame and of its
    transpose), each brought back; so a transposed or mirrored square frame gives the
    transposed or mirrored logits."""
    plain = Predictor(load_artifact(model_dir))
    tta = Predictor(load_artifact(model_dir), tta=8)
    assert (tta.tta, tta.tta_passes, Predictor(load_artifact(model_dir), tta=True).tta_passes,
            plain.tta_passes) == (True, 8, 4, 1)
    rng = np.random.default_rng(6)
    m = plain.size_multiple
    image = plain.model_grid(_lattice_frame(rng, (0.1, 0.2)), PIXEL_A)
    side = min(image.shape) // m * m
    image = np.ascontiguousarray(image[:side, :side])
    z = tta.logits(image)
    passes = []
    for transposed in (image, image.T.copy()):
        for axes in ((), (1,), (0,), (0, 1)):
            flipped = np.flip(transposed, axes).copy() if axes else transposed
            out = np.flip(plain.logits(flipped), tuple(a + 1 for a in axes))
            passes.append(np.swapaxes(out, 1, 2) if transposed is not image else out)
    np.testing.assert_allclose(z, np.mean(passes, axis=0), atol=1e-4)
    np.testing.assert_allclose(tta.logits(image.T.copy()), np.swapaxes(z, 1, 2), atol=1e-4)
    np.testing.assert_allclose(tta.logits(image[::-1].copy()), z[:, ::-1], atol=1e-4)
    assert np.abs(tta.logits(image.T.copy()) - np.swapaxes(Predictor(
        load_artifact(model_dir), tta=4).logits(image), 1, 2)).max() > 1e-3  # 4 passes are not
    with pytest.raises(UserError, match="1, 4 or 8"):
        Predictor(load_artifact(model_dir), tta=3)


def test_tta_is_recorded_and_guards_resume(series_tif, model_dir, tmp_path, capsys):
    out = tmp_path / "tta.h5"
    assert _predict(series_tif, out, model_dir, "--tta") == 0
    attrs = read_results(out, load_maps=False)["attrs"]
    assert (attrs["test_time_augmentation"], attrs["tta_passes"]) == (1, 8)
    before = out.stat().st_mtime_ns
    assert _predict(series_tif, out, model_dir, "--tta", "--resume") == 0  # kept
    assert out.stat().st_mtime_ns == before
    assert _predict(series_tif, out, model_dir, "--tta-passes", "4", "--resume") == 0  # redone
    assert read_results(out, load_maps=False)["attrs"]["tta_passes"] == 4
    assert _predict(series_tif, out, model_dir, "--no-tta", "--resume") == 0  # redone
    attrs = read_results(out, load_maps=False)["attrs"]
    assert (attrs["test_time_augmentation"], attrs["tta_passes"]) == (0, 1)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage line + one error line
        _predict(series_tif, tmp_path / "bad.h5", model_dir, "--tta-passes", "3")
    assert exit_info.value.code == 2
    assert "1, 4 or 8" in capsys.readouterr().err.strip().splitlines()[-1]


def test_column_detection_over_time_is_recorded_and_guards_resume(series_tif, model_dir,
                                                                  tmp_path):
    out = tmp_path / "c.h5"
    assert _predict(series_tif, out, model_dir) == 0
    attrs = read_results(out, load_maps=False)["attrs"]
    assert attrs["track_detection"] is True
    assert list(attrs["track_candidate_threshold"]) == [
        series_mod.TRACK_CANDIDATE_THRESHOLD[sp] for sp in ("Ce", "O")]
    before = out.stat().st_mtime_ns
    assert _predict(series_tif, out, model_dir, "--resume") == 0  # the same run: kept
    assert out.stat().st_mtime_ns == before
    assert _predict(series_tif, out, model_dir, "--frame-columns", "--resume") == 0  # redone
    assert read_results(out, load_maps=False)["attrs"]["track_detection"] is False


def test_calibration_is_recorded_and_a_new_calibration_is_not_resumed_into(
        series_tif, model_dir, tmp_path):
    from atom3d.models.artifact import save_pass_calibration

    out = tmp_path / "cal.h5"
    assert _predict(series_tif, out, model_dir, "--tta") == 0
    plain = load_artifact(model_dir)
    attrs = read_results(out, load_maps=False)["attrs"]
    assert attrs["calibration_passes"] == 1
    assert attrs["calibration_sha256"] == plain.for_passes(8).calibration_sha256
    # the same weights with an 8-pass calibration: another fingerprint, so the complete
    # file is redone, not kept, and a partial file would not be continued
    recal = tmp_path / "recal"
    save_pass_calibration(plain, recal, 8, {"temperature": {"Ce": 0.5, "O": 0.5}})
    eight = load_artifact(recal).for_passes(8)
    assert eight.weights_sha256 == plain.weights_sha256
    assert eight.calibration_sha256 != plain.calibration_sha256
    assert load_artifact(recal).for_passes(1).calibration_sha256 == plain.calibration_sha256
    before = out.stat().st_mtime_ns
    assert _predict(series_tif, out, recal, "--tta", "--resume") == 0
    attrs = read_results(out, load_maps=False)["attrs"]
    assert out.stat().st_mtime_ns != before
    assert (attrs["calibration_passes"], attrs["calibration_sha256"]) == (
        8, eight.calibration_sha256)
    # the resume check compares exactly the network attributes a run writes
    from atom3d.inference.series import _predictor_attrs
    from atom3d.io.results import NETWORK_ATTRS

    written = _predictor_attrs(Predictor(load_artifact(recal), tta=8))
    assert tuple(written) == NETWORK_ATTRS
    assert {k: attrs[k] for k in NETWORK_ATTRS} == written


def test_smoothed_confidence_stays_calibrated(reference_run):
    """Change points: where the smoothed depth is the frame's own, so is the confidence."""
    cols = read_results(reference_run, load_maps=False)["columns"]
    same = cols["depth"] == cols["depth_frame"]
    assert same.any()
    np.testing.assert_array_equal(cols["confidence"][same], cols["confidence_frame"][same])
    assert np.all((cols["confidence"] >= 0) & (cols["confidence"] <= 1))


def test_no_smooth_keeps_frame_depths(series_tif, model_dir, tmp_path):
    out = tmp_path / "raw.h5"
    _predict(series_tif, out, model_dir, "--no-smooth")
    r = read_results(out, load_maps=False)
    assert r["attrs"]["depth_smoothing"] == "none"
    np.testing.assert_array_equal(r["columns"]["depth"], r["columns"]["depth_frame"])


def test_smoothing_choice(series_tif, model_dir, tmp_path, capsys):
    out = tmp_path / "hmm.h5"
    _predict(series_tif, out, model_dir, "--smoothing", "hmm")
    assert read_results(out, load_maps=False)["attrs"]["depth_smoothing"] == "hmm"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage line + one error line
        _predict(series_tif, tmp_path / "x.h5", model_dir, "--smoothing", "kalman")
    assert exit_info.value.code == 2
    assert "invalid choice: 'kalman'" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "x.h5").exists()


def test_several_inputs_write_one_file_each(series_tif, model_dir, tmp_path):
    rng = np.random.default_rng(5)
    single = _write_tif(tmp_path / "single.tif", [_lattice_frame(rng, (0, 0))])
    out_dir = tmp_path / "outdir"
    assert _predict(series_tif, out_dir, model_dir, inputs=[single]) == 0
    assert read_results(out_dir / "series.h5", load_maps=False)["frames"]["frame"].size == 5
    one = read_results(out_dir / "single.h5", load_maps=False)
    assert one["frames"]["frame"].size == 1
    assert one["attrs"]["depth_smoothing"] == "none"  # a single frame is not smoothed


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("overlap", [False, True])
def test_interrupted_run_resumes_to_the_same_file(series_tif, model_dir, reference_run,
                                                  tmp_path, monkeypatch, overlap):
    """A crash while writing (in the worker thread when the frame loop is pipelined)."""
    monkeypatch.setattr(series_mod, "OVERLAP_FINISH", overlap)
    out = tmp_path / "run.h5"
    original = series_mod._write_prediction
    calls = []

    def crash_after_two(writer, i, pred, k_max, *rest):
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        calls.append(i)
        original(writer, i, pred, k_max, *rest)

    monkeypatch.setattr(series_mod, "_write_prediction", crash_after_two)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _predict(series_tif, out, model_dir)
    assert not out.exists()
    assert partial_path(out).exists()
    monkeypatch.setattr(series_mod, "_write_prediction", original)

    resumed = []
    monkeypatch.setattr(series_mod, "_write_prediction",
                        lambda w, i, p, k, *r: (resumed.append(i), original(w, i, p, k, *r)))
    assert _predict(series_tif, out, model_dir, "--resume") == 0
    assert resumed == [2, 3, 4]  # the two committed frames were not predicted again
    assert out.exists() and not partial_path(out).exists()

    a, b = read_results(reference_run), read_results(out)
    skip = {"created"}
    assert set(a["attrs"]) == set(b["attrs"])
    assert all(attr_equal(a["attrs"][k], b["attrs"][k]) for k in a["attrs"] if k not in skip)
    for name in MAP_NAMES:
        np.testing.assert_array_equal(a["maps"][name], b["maps"][name])
    for table in ("columns", "frames", "events"):
        assert list(a[table]) == list(b[table])
        for field in a[table]:
            np.testing.assert_array_equal(a[table][field], b[table][field], err_msg=field)

    # resuming a finished file keeps it
    before = out.stat().st_mtime_ns
    assert _predict(series_tif, out, model_dir, "--resume") == 0
    assert out.stat().st_mtime_ns == before


def test_network_crash_waits_for_the_batch_being_written(series_tif, model_dir,
                                                        reference_run, tmp_path, monkeypatch):
    """Pipelined frame loop (as on a GPU): the network of batch 2 fails while batch 1
    (frames 0-3) is finished and written in the worker thread. The run stops with that
    error only after batch 1 is committed, and a resumed run predicts frame 4 alone and
    ends with the uninterrupted file (made without the pipeline)."""
    out = tmp_path / "run.h5"
    original_stage = Predictor.network_stage
    original_write = series_mod._write_prediction
    calls = []

    def slow_write(writer, i, pred, k_max, *rest):
        time.sleep(0.05)  # still writing batch 1 when batch 2's network fails
        original_write(writer, i, pred, k_max, *rest)

    def crash_on_second(self, frames, pixel_size_A):
        calls.append(len(frames))
        if len(calls) == 2:
            raise RuntimeError("network failed")
        return original_stage(self, frames, pixel_size_A)

    monkeypatch.setattr(series_mod, "OVERLAP_FINISH", True)  # the GPU pipeline, on a CPU
    monkeypatch.setattr(series_mod, "_write_prediction", slow_write)
    monkeypatch.setattr(Predictor, "network_stage", crash_on_second)
    with pytest.raises(RuntimeError, match="network failed"):
        _predict(series_tif, out, model_dir)
    assert calls == [4, 1] and not out.exists() and partial_path(out).exists()
    monkeypatch.setattr(Predictor, "network_stage", original_stage)

    resumed = []
    monkeypatch.setattr(series_mod, "_write_prediction",
                        lambda w, i, p, k, *r: (resumed.append(i), original_write(w, i, p, k, *r)))
    assert _predict(series_tif, out, model_dir, "--resume") == 0
    assert resumed == [4]
    a, b = read_results(reference_run), read_results(out)
    for name in MAP_NAMES:
        np.testing.assert_array_equal(a["maps"][name], b["maps"][name])
    for table in ("columns", "frames", "events"):
        for field in a[table]:
            np.testing.assert_array_equal(a[table][field], b[table][field], err_msg=field)


def test_cpu_frame_loop_frees_each_batch_and_trims_the_heap(series_tif, model_dir,
                                                           reference_run, tmp_path,
                                                           monkeypatch):
    """On a CPU a batch's logits are freed before the next forward pass (held through
    it they pin a block inside the network's working set, and the heap grows with the
    series), and the heaps' free memory is handed back every TRIM_EVERY_FRAMES frames, each
    time after the batch is written and freed, and after the loop; the results are those
    of the reference run."""
    import weakref

    monkeypatch.setattr(series_mod, "OVERLAP_FINISH", False)
    monkeypatch.setattr(series_mod, "TRIM_EVERY_FRAMES", 4)
    trims = []  # at each hand-back: the batches still alive (their logits)
    monkeypatch.setattr(series_mod, "release_free_memory",
                        lambda: trims.append(sum(ref() is not None for ref in batches)) or True)
    original_stage = Predictor.network_stage
    batches, alive_at_entry = [], []

    def tracked(self, frames, pixel_size_A):
        alive_at_entry.append(sum(ref() is not None for ref in batches))
        batch = original_stage(self, frames, pixel_size_A)
        batches.append(weakref.ref(batch))
        return batch

    monkeypatch.setattr(Predictor, "network_stage", tracked)
    out = tmp_path / "run.h5"
    assert _predict(series_tif, out, model_dir) == 0
    assert alive_at_entry == [0, 0]  # batches of 4 and 1 frames; none held over
    # after the first 4 frames, once they are written, and after the loop: a hand-back
    # while a batch's logits are alive could not return their pages
    assert trims == [0, 0]
    a, b = read_results(reference_run), read_results(out)
    for name in MAP_NAMES:
        np.testing.assert_array_equal(a["maps"][name], b["maps"][name])
    for field in a["columns"]:
        np.testing.assert_array_equal(a["columns"][field], b["columns"][field], err_msg=field)


@pytest.mark.parametrize("passes", [1, 4])
def test_cpu_network_runs_a_batch_in_slices_with_the_same_logits(model_dir, monkeypatch,
                                                                  passes):
    """On a CPU a batch goes through the network CPU_NETWORK_IMAGES images at a time (the
    heap then keeps one image's activations, not the batch's), with the logits of the
    whole batch at once."""
    import atom3d.inference.predictor as predictor_mod

    predictor = Predictor(load_artifact(model_dir), batch_size=4, tta=passes)
    rng = np.random.default_rng(3)
    batch = rng.normal(size=(3, 1, 64, 64)).astype(np.float32)
    seen = []
    hook = predictor.model.register_forward_pre_hook(lambda m, a: seen.append(len(a[0])))
    try:
        monkeypatch.setattr(predictor_mod, "CPU_NETWORK_IMAGES", None)
        whole = predictor._network(batch)
        assert seen == [3] * passes
        seen.clear()
        monkeypatch.setattr(predictor_mod, "CPU_NETWORK_IMAGES", 2)
        sliced = predictor._network(batch)
        assert seen == [2] * passes + [1] * passes
    finally:
        hook.remove()
    assert len(sliced) == len(whole) == 2
    for a, b in zip(whole, sliced, strict=True):
        assert a.shape == b.shape and b.dtype == np.float32
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- tiling


def test_tiled_prediction_has_no_seams(model_dir):
    predictor = Predictor(load_artifact(model_dir), tile=128, overlap=60, batch_size=4)
    radius = (predictor.model.receptive_field_px - 1) // 2
    assert predictor.exact_tiling and predictor.margin == radius
    rng = np.random.default_rng(7)
    from scipy import ndimage

    image = ndimage.gaussian_filter(rng.normal(size=(300, 260)), 1.5).astype(np.float32)
    image = (image - image.mean()) / image.std()
    full = predictor.probabilities(image)  # 3 x 3 tiles
    assert full.shape == (2 * (K + 1), 300, 260)
    np.testing.assert_allclose(full.reshape(2, K + 1, 300, 260).sum(axis=1), 1.0, atol=1e-5)
    y0, y1, x0, x1 = 50, 250, 40, 200
    crop = predictor.probabilities(image[y0:y1, x0:x1])
    r = radius
    np.testing.assert_allclose(full[:, y0 + r:y1 - r, x0 + r:x1 - r], crop[:, r:-r, r:-r],
                               atol=1e-4)
    whole = Predictor(load_artifact(model_dir), tile=320).probabilities(image)  # one tile
    np.testing.assert_allclose(full[:, r:-r, r:-r], whole[:, r:-r, r:-r], atol=1e-4)


def test_default_architecture_uses_fixed_margin():
    net = UNet(base_width=4, depth=4, n_classes=(3, 3))
    from atom3d.models.artifact import ModelArtifact

    artifact = ModelArtifact(net.eval(), {"name": "x", "classes": {"Ce": 2, "O": 2},
                                          "pixel_size_A": 0.2,
                                          "temperature": {"Ce": 1.0, "O": 1.0}}, None)
    predictor = Predictor(artifact)
    assert not predictor.exact_tiling and predictor.margin == 64 // 4


# --------------------------------------------------------------------------- user errors


def _exit_code(argv):
    """Exit code of ``atom3d predict ARGV`` (through the CLI once it is wired)."""
    from atom3d import cli

    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    if "predict" in commands:
        return cli.main(["predict", *argv])
    try:
        return predict_main(argv)
    except UserError:
        return 2
    except SystemExit as exc:
        return exc.code


def test_bad_inputs_exit_2(tmp_path, model_dir, series_tif, capsys):
    junk = tmp_path / "junk.tif"
    junk.write_text("not a tiff")
    out = str(tmp_path / "o.h5")
    model = ["--model", str(model_dir)]
    assert _exit_code([str(tmp_path / "missing.tif"), "-o", out, *model]) == 2
    assert _exit_code([str(junk), "-o", out, *model]) == 2
    assert _exit_code([str(series_tif), "-o", out, "--model", "no-such-model"]) == 2
    assert _exit_code([str(series_tif), "-o", out, *model, "--batch-size", "0"]) == 2
    assert _exit_code([str(series_tif), "-o", out, *model, "--device", "tpu"]) == 2
    assert _exit_code([str(series_tif), str(series_tif), "-o", out, *model]) == 2
    np.save(tmp_path / "raw.npy", np.zeros((2, 16, 16), np.float32))  # no calibration
    assert _exit_code([str(tmp_path / "raw.npy"), "-o", out, *model]) == 2
    # frames too small for the network: refused before any file is written (no .partial
    # left behind either)
    np.save(tmp_path / "tiny.npy", np.ones((2, 4, 16), np.float32))
    capsys.readouterr()
    assert _exit_code([str(tmp_path / "tiny.npy"), "--pixel-size", "0.2", "-o", out,
                       *model]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "px a side" in err[0]
    assert not (tmp_path / "o.h5").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.tif", "raw.npy", "tiny.npy"]
    with pytest.raises(UserError, match="unknown model"):
        predict_main([str(series_tif), "-o", out, "--model", "no-such-model"])


def test_predict_imports_neither_abtem_nor_lightning():
    code = ("import sys, atom3d.inference.series, atom3d.inference.export3d, "
            "atom3d.inference.figures; "
            "bad = [m for m in ('abtem', 'lightning', 'ase') if m in sys.modules]; "
            "sys.exit(repr(bad) if bad else 0)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_parser_does_not_import_torch():
    """`atom3d --help` and the light commands start without importing torch."""
    code = ("import sys, atom3d.cli; atom3d.cli.build_parser(); "
            "sys.exit('torch imported' if 'torch' in sys.modules else 0)")
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- geometry, drift


def test_area_radius_and_surface_columns():
    r = 5.411 / (2 * math.sqrt(2))
    area, radius = area_and_radius([10.0], [10.0])
    assert area == pytest.approx(math.pi * r**2, rel=0.02)
    assert radius == pytest.approx(r, rel=0.01)
    assert area_and_radius([0.0, 50.0], [0.0, 0.0])[0] == pytest.approx(2 * area, rel=1e-3)
    assert area_and_radius([], []) == (0.0, 0.0)
    # a 9 x 9 block of the projected [110] Ce lattice: only the rim is surface
    i, j = np.meshgrid(np.arange(9), np.arange(9), indexing="ij")
    keep = (i + j) % 2 == 0
    x, y = 2.705 * i[keep], 1.913 * j[keep]
    interior = keep & (i > 0) & (i < 8) & (j > 1) & (j < 7)
    assert count_surface_columns(x, y) == keep.sum() - interior.sum()


@pytest.mark.parametrize("seed", range(6))
def test_area_merges_overlapping_discs_like_a_raster(seed):
    """area_and_radius merges each raster row's runs of covered pixels; it must count
    what marking every pixel centre inside any disc on a raster counts."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 120))
    x, y = rng.uniform(0, 30, n), rng.uniform(0, 30, n)  # dense: discs overlap a lot
    if seed == 0:
        x, y = np.array([5.0, 5.0, 5.05]), np.array([5.0, 5.0, 5.0])  # duplicates
    radius, step = 1.913, 0.1
    gx = np.arange(x.min() - 3, x.max() + 3, step)
    gy = np.arange(y.min() - 3, y.max() + 3, step)
    covered = np.zeros((len(gy), len(gx)), bool)
    for cx, cy in zip(x, y, strict=True):
        covered |= (gx[None, :] - cx) ** 2 + (gy[:, None] - cy) ** 2 <= radius**2
    expected = covered.sum() * step**2  # another raster origin: equal within a boundary
    area, r = area_and_radius(x, y, disc_radius_A=radius, raster_A=step)
    assert area == pytest.approx(expected, rel=0.01)
    assert r == pytest.approx(math.sqrt(area / math.pi))
    single = area_and_radius(x[:1], y[:1], disc_radius_A=radius, raster_A=step)[0]
    assert single <= area <= n * single + 1e-9


def test_area_of_discs_smaller_than_the_raster_counts_only_covered_centres():
    """The raster starts one disc radius and one raster step below the lowest column: a
    lone column with a 0.02 Å disc on a 0.1 Å raster sits 0.2 px from the nearest pixel
    centre in x and y (0.28 px away), so no centre is covered (area 0, not an error); with
    a 0.12 Å disc it sits at (2.2, 2.2) px and covers the 4 centres (2|3, 2|3)."""
    none = area_and_radius(np.array([1.0]), np.array([1.0]), disc_radius_A=0.02, raster_A=0.1)
    four = area_and_radius(np.array([1.0]), np.array([1.0]), disc_radius_A=0.12, raster_A=0.1)
    assert none == (0.0, 0.0)
    assert four == (pytest.approx(0.04), pytest.approx(math.sqrt(0.04 / math.pi)))


def test_drift_from_rendered_columns():
    rng = np.random.default_rng(0)
    base = rng.uniform(2, 18, (60, 2))
    true = np.array([[0, 0], [0.13, -0.05], [0.3, 0.02], [0.0, 0.0], [0.52, -0.21]])
    valid = np.array([True, True, True, False, True])
    xs, ys, sp, fr = [], [], [], []
    for t in range(5):
        if not valid[t]:
            continue
        xs.append(base[:, 0] + true[t, 0])
        ys.append(base[:, 1] + true[t, 1])
        sp.append(np.where(np.arange(60) % 3, "Ce", "O"))
        fr.append(np.full(60, t))
    cols = {"x": np.concatenate(xs), "y": np.concatenate(ys), "species": np.concatenate(sp),
            "frame": np.concatenate(fr)}

    def columns_of(t):
        sel = cols["frame"] == t
        return {k: v[sel] for k, v in cols.items()}

    drift = series_drift(columns_of, valid, (100, 100), 0.2)
    assert np.all(np.isnan(drift[3]))
    np.testing.assert_allclose(drift[valid], true[valid], atol=0.03)


# --------------------------------------------------------------------------- 3D export


def test_extxyz_files_are_read_by_ase(reference_run):
    ase_io = pytest.importorskip("ase.io")
    r = read_results(reference_run, load_maps=False)
    xyz_dir = reference_run.parent / "xyz"
    files = sorted(xyz_dir.glob("frame_*.xyz"))
    assert len(files) == 5
    cols = r["columns"]
    for t in (0, 2):
        atoms = ase_io.read(xyz_dir / f"frame_{t:05d}.xyz", format="extxyz")
        sel = cols["frame"] == t
        assert len(atoms) == int(cols["depth"][sel].sum())
        assert atoms.info["frame"] == t
        n_ce = int(cols["depth"][sel & (cols["species"] == "Ce")].sum())
        assert atoms.get_chemical_symbols().count("Ce") == n_ce
        if len(atoms):
            assert np.all(np.abs(atoms.positions[:, 2]) <= (K / 2 + 0.5) * C_110_A)
            assert set(atoms.arrays["track"]) <= set(cols["track"][sel])
    # all frames, bottom aligned, without interleaving: z = 0, c, 2c, ...
    out = export_xyz(reference_run, reference_run.parent / "xyz_bottom", frames=[0],
                     align="bottom", interleave=False)
    atoms = ase_io.read(out[0], format="extxyz")
    z = atoms.positions[:, 2] / C_110_A
    np.testing.assert_allclose(z, np.round(z), atol=1e-4)
    assert z.min() == pytest.approx(0.0)


def test_column_atoms_centred_and_interleaved():
    pos, column = column_atoms([0.0, 3.0], [0.0, 0.0], [3, 2], phase=None)
    assert column.tolist() == [0, 0, 0, 1, 1]
    np.testing.assert_allclose(pos[:3, 2], [-C_110_A, 0.0, C_110_A])
    np.testing.assert_allclose(pos[3:, 2], [-C_110_A / 2, C_110_A / 2])
    pos, _ = column_atoms([0.0, 3.0], [0.0, 0.0], [1, 1], phase=[0, 1])
    assert pos[1, 2] - pos[0, 2] == pytest.approx(C_110_A / 2)


def test_sublattice_phase_matches_the_crystal():
    from atom3d.structures.ceria import lattice_sites, repeat_along_beam

    sites = lattice_sites((1, 1, 0), (9.0, 9.0, 6.0))
    c = repeat_along_beam((1, 1, 0))
    true_phase = np.zeros(len(sites.column_xy), np.int8)
    for col in range(len(sites.column_xy)):
        z = sites.xyz[sites.column == col, 2]
        true_phase[col] = int(round((z[0] % c) / c * 2)) % 2
    ce = sites.column_species == 0
    ce_phase, o_phase = sublattice_phase(sites.column_xy[ce], sites.column_xy[~ce])
    flip = ce_phase[0] != true_phase[ce][0]  # the global phase is arbitrary
    np.testing.assert_array_equal(ce_phase ^ flip, true_phase[ce])
    np.testing.assert_array_equal(o_phase ^ flip, true_phase[~ce])


# --------------------------------------------------------------------------- demo


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, model_dir, capsys):
    pytest.importorskip("abtem")
    from atom3d.demo import demo_main
    from atom3d.io.readers import open_series

    out = tmp_path / "demo_out"
    model = _with_test_figures(model_dir, tmp_path)  # the demo compares with them
    assert demo_main(["--out", str(out), "--frames", "3", "--size", "96",
                      "--diameter-nm", "1.5", "--model", str(model), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "F1" in text and "within ±1" in text
    flat = " ".join(text.split())
    assert "For comparison, on its test set (hand-made; 1 pass)" in flat
    assert "exact depth 0.250" in flat and "simulated; a series adds tracking" in flat
    for name in ("demo_series.tif", "truth_columns.csv", "demo.h5", "metrics.json",
                 "figures/summary.png", "figures/tracks.png", "xyz/frame_00002.xyz"):
        assert (out / name).exists(), name
    with open_series(out / "demo_series.tif") as s:
        assert s.n_frames == 3 and s.shape == (96, 96)
        assert s.pixel_size_A == pytest.approx(0.2, rel=1e-6)
        assert s.frame_interval_s == pytest.approx(1.0)
    r = read_results(out / "demo.h5", load_maps=False)
    assert r["frames"]["frame"].tolist() == [0, 1, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"Ce", "O", "n_ce_true", "n_ce_pred"} <= set(metrics)
    assert metrics["n_ce_true"][0] > metrics["n_ce_true"][-1]  # the particle loses Ce


def test_demo_refuses_missing_default_model(tmp_path):
    from atom3d.demo import demo_main

    with pytest.raises(UserError, match="trained model"):
        demo_main(["--out", str(tmp_path / "d"), "--model", "no-such-model"])


# --------------------------------------------------------------------------- streaming post-processing


def _whole_series_reference(cols, frames, n_frames, classes, pixel_size_A, shape, smoothing,
                            images=None):
    """Post-processing of DESIGN's first version: the whole column table in memory."""
    from atom3d.inference.tracking import (
        changepoint_track_depths,
        detect_events,
        link_tracks,
        ring_means,
        smooth_track_depths,
    )

    valid = frames["valid"].astype(bool)
    rows = [np.flatnonzero(cols["frame"] == t) for t in range(n_frames)]

    def columns_of(t):
        return {k: cols[k][rows[t]] for k in ("x", "y", "species")}

    drift = series_drift(columns_of, valid, shape, pixel_size_A)
    link_drift = series_mod._filled(drift)
    track = np.full(len(cols["x"]), -1, np.int64)
    depth = cols["depth_frame"].astype(np.int64).copy()
    events, next_id = [], 0
    for species in ("Ce", "O"):
        per_frame = [r[cols["species"][r] == species] for r in rows]
        ids = link_tracks([(cols["x"][r], cols["y"][r]) for r in per_frame], link_drift,
                          series_mod.LINK_MAX_DIST_A[species], max_gap=series_mod.LINK_MAX_GAP,
                          first_id=next_id)
        all_ids = np.concatenate(ids)
        next_id = int(all_ids.max()) + 1 if all_ids.size else next_id
        probs = [series_mod._depth_posteriors(cols, r, classes[species]) for r in per_frame]
        rings = None
        if smoothing == "changepoint" and images is not None and species == "Ce":
            # each track's mean drift-corrected position, summed in frame order
            seen = {}
            for t, (r, t_ids) in enumerate(zip(per_frame, ids, strict=True)):
                for i, x, y in zip(t_ids, cols["x"][r], cols["y"][r], strict=True):
                    sx, sy, n = seen.get(int(i), (0.0, 0.0, 0))
                    seen[int(i)] = (sx + (x - link_drift[t, 0]), sy + (y - link_drift[t, 1]),
                                    n + 1)
            rings = []
            for t, t_ids in enumerate(ids):
                ref = np.array([[seen[int(i)][0] / seen[int(i)][2],
                                 seen[int(i)][1] / seen[int(i)][2]] for i in t_ids]).reshape(-1, 2)
                rings.append(ring_means(images[t], ref[:, 0] + link_drift[t, 0],
                                        ref[:, 1] + link_drift[t, 1], pixel_size_A))
        if smoothing == "hmm":
            d_list, c_list = smooth_track_depths(ids, probs, switch_prob=series_mod.SWITCH_PROB,
                                                 max_step=series_mod.MAX_STEP, first_depth=1)
        else:
            d_list, c_list = changepoint_track_depths(
                ids, probs, series_mod.CHANGEPOINT_PENALTY,
                min_step=series_mod.CHANGEPOINT_MIN_STEP, rings=rings,
                ring_penalty=series_mod.CHANGEPOINT_RING_PENALTY,
                ring_min_step=series_mod.CHANGEPOINT_RING_MIN_STEP,
                ring_min_step_sigma=series_mod.CHANGEPOINT_RING_MIN_STEP_SIGMA,
                signature_z=series_mod.CHANGEPOINT_SIGNATURE_Z,
                level_weight=series_mod.CHANGEPOINT_LEVEL_WEIGHT,
                signature_bandwidth=series_mod.CHANGEPOINT_SIGNATURE_BANDWIDTH)
        for r, t_ids, d in zip(per_frame, ids, d_list, strict=True):
            track[r] = t_ids
            depth[r] = d
        events += detect_events(ids, d_list, c_list, species=species,
                                min_track_length=series_mod.MIN_TRACK_LENGTH)
    events.sort(key=lambda e: (e["frame"], e["track"]))
    return drift, track, depth, events


def _synthetic_series(w, n_frames, k, shape, p, rng, faint=None):
    """Write a drifting synthetic series of column rows (and return its frames).

    40 Ce and 50 O columns, each missing from a frame now and then, five Ce columns
    losing an atom at frame 9, frame 4 invalid. ``faint`` (column index -> pooled
    presence) sets the ``p_column`` of those Ce columns (1 for the others); frame 6 also
    holds a one-frame ghost Ce column at presence 0.5.
    """
    base_ce = rng.uniform(1, 15, (40, 2))
    base_o = rng.uniform(1, 15, (50, 2))
    truth_ce = rng.integers(1, k + 1, 40)
    zeros = np.zeros(shape)
    rr, cc = np.mgrid[:shape[0], :shape[1]] * p
    images = []
    for t in range(n_frames):
        shift = 0.05 * t
        keep_ce = rng.random(40) > 0.15
        keep_o = rng.random(50) > 0.3
        if t == 9:
            truth_ce[:5] -= 1  # cations leave
        clean = np.ones(shape)
        for (x, y), depth in zip(base_ce + shift, truth_ce, strict=True):
            clean += 0.1 * depth * np.exp(-((cc - x) ** 2 + (rr - y) ** 2) / 0.18)
        images.append(rng.poisson(400 * clean).astype(np.float32))
        xy = np.concatenate([base_ce[keep_ce], base_o[keep_o]]) + shift
        xy += rng.normal(0, 0.05, xy.shape)
        n_ce, n = int(keep_ce.sum()), len(xy)
        presence = np.ones(n)
        if faint:
            ce_index = np.flatnonzero(keep_ce)
            for i, value in faint.items():
                presence[np.flatnonzero(ce_index == i)] = value
        species = ["Ce"] * n_ce + ["O"] * (n - n_ce)
        if faint and t == 6:  # a ghost, far from every column
            xy = np.concatenate([xy, [[17.5, 17.5]]])
            presence = np.concatenate([presence, [0.5]])
            species.append("Ce")
            n += 1
        p_depth = rng.dirichlet(np.full(k, 0.5), n)
        p_depth[np.arange(n_ce), np.clip(truth_ce[keep_ce], 1, k) - 1] += 1.5
        p_depth /= p_depth.sum(axis=1, keepdims=True)
        d = np.argmax(p_depth, axis=1) + 1
        cols = {"x": xy[:, 0], "y": xy[:, 1], "depth": d, "confidence": p_depth.max(axis=1),
                "species": np.array(species), "depth_frame": d,
                "confidence_frame": p_depth.max(axis=1), "p_column": presence}
        for j in range(k):
            cols[f"p_depth_{j + 1}"] = p_depth[:, j].astype(np.float16)
        w.write_frame(t, ce_depth=zeros, ce_confidence=zeros, o_depth=zeros,
                      o_confidence=zeros, columns=cols, frame_row={"valid": t != 4})
    return images


_SYNTHETIC_ATTRS = {"source": "x", "source_sha256": "a" * 64, "model": "m",
                    "model_sha256": "b" * 64, "pixel_size_A": 0.2}


@pytest.mark.parametrize("smoothing", ["changepoint", "changepoint-levels", "hmm",
                                       "changepoint+signature"])
def test_streaming_postprocess_equals_whole_series(tmp_path, smoothing, monkeypatch):
    """The frame-by-frame post-processing gives what the whole-table version gives
    (``changepoint``: with the frames, so that Ce tracks are cut on the image rings;
    ``+signature``: also with the loss signature and E[k] as a channel)."""
    if smoothing.endswith("+signature"):
        smoothing = "changepoint"
        monkeypatch.setattr(series_mod, "CHANGEPOINT_SIGNATURE_Z", 2.0)
        monkeypatch.setattr(series_mod, "CHANGEPOINT_LEVEL_WEIGHT", 1.0)
    rng = np.random.default_rng(5)
    n_frames, k, shape, p = 14, 6, (80, 80), 0.2
    with ResultsWriter(tmp_path / "s.h5", shape=shape, n_frames=n_frames,
                       attrs=_SYNTHETIC_ATTRS) as w:
        images = _synthetic_series(w, n_frames, k, shape, p, rng)
        reference = _whole_series_reference(w.read_columns(), w.read_frames(), n_frames,
                                            {"Ce": k, "O": k}, p, shape, smoothing, images)
        stats = series_mod.postprocess(w, {"Ce": k, "O": k}, p, smoothing,
                                       image=images.__getitem__)
        w.finalize()
    drift, track, depth, events = reference
    r = read_results(tmp_path / "s.h5", load_maps=False)
    np.testing.assert_array_equal(r["columns"]["track"], track)
    np.testing.assert_array_equal(r["columns"]["depth"], depth)
    np.testing.assert_allclose(r["frames"]["drift_x"], drift[:, 0].astype(np.float32))
    assert stats["n_events"] == len(events) > 0
    got = r["events"]
    assert [int(f) for f in got["frame"]] == [e["frame"] for e in events]
    assert [int(f) for f in got["track"]] == [e["track"] for e in events]
    assert [str(s) for s in got["kind"]] == [e["kind"] for e in events]
    assert any(e["kind"] == "depth_change" and e["frame"] == 9 for e in events)
    sel = r["columns"]["species"] == "Ce"
    n_ce = np.bincount(r["columns"]["frame"][sel], weights=depth[sel], minlength=n_frames)
    np.testing.assert_array_equal(r["frames"]["n_ce"], n_ce)


def test_track_detection_reports_persistent_faint_columns(tmp_path):
    """Tracks whose mean presence passes the track threshold are reported, whole; faint
    one-frame or weak tracks are dropped, and nothing else changes (the kept rows equal
    the whole-series post-processing of all rows); a resumed run keeps the result."""
    rng = np.random.default_rng(5)
    n_frames, k, shape, p = 14, 6, (80, 80), 0.2
    faint = {0: 0.6, 1: 0.5, 2: 0.45}  # mean 0.6: reported; 0.5 and 0.45: not
    rule = {"Ce": (0.64, 0.56), "O": (0.66, 0.6)}
    out = tmp_path / "s.h5"
    with ResultsWriter(out, shape=shape, n_frames=n_frames, attrs=_SYNTHETIC_ATTRS) as w:
        images = _synthetic_series(w, n_frames, k, shape, p, rng, faint=faint)
        cols = w.read_columns()
        drift, track, depth, events = _whole_series_reference(
            cols, w.read_frames(), n_frames, {"Ce": k, "O": k}, p, shape, "changepoint",
            images)
        stats = series_mod.postprocess(w, {"Ce": k, "O": k}, p, "changepoint",
                                       image=images.__getitem__, track_detection=rule)
        w.close()  # a crash after post-processing, before finalize
    keep = np.ones(len(track), bool)
    for t_id in np.unique(track):
        rows = track == t_id
        pres = cols["p_column"][rows]
        cut, mean_cut = rule[str(cols["species"][rows][0])]
        keep[rows] = pres.min() >= cut or (pres.mean() >= mean_cut and rows.sum() >= 3)
    dropped = set(np.unique(track[~keep]).tolist())
    assert len(dropped) == 3  # columns 1 and 2 and the ghost
    assert np.any((cols["p_column"] == 0.6) & keep)  # column 0 is reported
    assert stats["n_events"] == sum(e["track"] not in dropped for e in events)

    with ResultsWriter(out, shape=shape, n_frames=n_frames, attrs=_SYNTHETIC_ATTRS,
                       resume=True) as w:
        filtered = w.columns_filtered
        assert filtered is not None and filtered["n_dropped_rows"] == int((~keep).sum())
        assert w.n_columns == int(keep.sum())
        w.finalize()
    r = read_results(out, load_maps=False)
    np.testing.assert_array_equal(r["columns"]["track"], track[keep])
    np.testing.assert_array_equal(r["columns"]["depth"], depth[keep])
    np.testing.assert_array_equal(r["columns"]["x"], cols["x"][keep])
    assert [int(f) for f in r["events"]["track"]] == [
        e["track"] for e in events if e["track"] not in dropped]
    ce = r["columns"]["species"] == "Ce"
    np.testing.assert_array_equal(
        r["frames"]["n_ce_columns"],
        np.bincount(r["columns"]["frame"][ce], minlength=n_frames))
    np.testing.assert_array_equal(
        r["frames"]["n_ce"],
        np.bincount(r["columns"]["frame"][ce], weights=r["columns"]["depth"][ce],
                    minlength=n_frames))


def test_tiles_are_as_few_and_small_as_the_frame_allows(model_dir):
    from atom3d.inference.tiling import tile_starts

    predictor = Predictor(load_artifact(model_dir), tile=384, overlap=64)
    m = predictor.size_multiple
    assert predictor._tile_for((300, 200)) == -(-300 // m) * m  # fits: one tile
    for length in (385, 512, 700, 1000, 2048):
        tile = predictor._tile_for((length, length))
        assert tile <= 384 and tile % m == 0 and tile > 2 * 64
        n = len(tile_starts(length, tile, 64))
        assert n == len(tile_starts(length, 384, 64))  # no more tiles than the largest size
        assert len(tile_starts(length, tile - m, 64)) > n or tile - m <= 2 * 64  # minimal
    assert predictor._tile_for((512, 512)) == 288


def test_temporal_scores_count_flicker_and_reported_changes():
    from atom3d.demo import temporal_scores

    drift = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    base = np.array([[5.0, 5.0], [10.0, 5.0], [15.0, 5.0]])
    true_depth = [[4, 6, 3], [4, 6, 3], [4, 5, 0]]  # column 1 loses an atom, 2 vanishes
    truth = []
    for t in range(3):
        keep = np.array(true_depth[t]) > 0
        xy = base[keep] + drift[t]
        truth.append({"Ce": {"x": xy[:, 0], "y": xy[:, 1],
                             "depth": np.array(true_depth[t])[keep]},
                      "O": {"x": np.zeros(0), "y": np.zeros(0), "depth": np.zeros(0, int)}})
    pred_depth = [[4, 6, 3], [5, 6, 3], [4, 5, 3]]  # column 0 flickers; 2 is still seen
    rows = {"frame": [], "species": [], "x": [], "y": [], "depth": [], "track": []}
    for t in range(3):
        for i in range(3):
            rows["frame"].append(t)
            rows["species"].append("Ce")
            rows["x"].append(base[i, 0] + drift[t, 0] + 0.1)
            rows["y"].append(base[i, 1])
            rows["depth"].append(pred_depth[t][i])
            rows["track"].append(i)
    r = {"columns": {k: np.array(v) for k, v in rows.items()},
         "events": {"frame": np.array([2]), "track": np.array([1]),
                    "kind": np.array(["depth_change"]), "species": np.array(["Ce"]),
                    "depth_before": np.array([6]), "depth_after": np.array([5])}}
    s = temporal_scores(r, truth, drift)
    # steady pairs: frame 0->1 all three; 1->2 column 0 only (1 changes, 2 vanishes)
    assert s["steady_pairs"] == 4 and s["flickers"] == 2  # column 0: 4->5 and 5->4
    assert s["changes_true"] == 2 and s["changes_reported"] == 1
    assert s["flicker"] == 0.5 and s["change_recall"] == 0.5


def test_fused_maps_and_columns_equal_the_probability_path(model_dir):
    """Predictor's maps/columns from logits equal find_columns/maps_from_probs on the
    calibrated probabilities (the definition), at the model's own pixel size."""
    from atom3d.inference.columns import find_columns, maps_from_probs
    from atom3d.inference.predictor import MIN_SEPARATION_A

    predictor = Predictor(load_artifact(model_dir))
    p_model = predictor.pixel_size_A
    rng = np.random.default_rng(11)
    frame = _lattice_frame(rng, (0.0, 0.0))
    pred = predictor.predict(frame, p_model)
    probs = predictor.probabilities(predictor.model_grid(frame, p_model))
    k = predictor.n_classes[0]
    for species, p, depth_map, conf_map in (("Ce", probs[:k], pred.ce_depth, pred.ce_confidence),
                                            ("O", probs[k:], pred.o_depth, pred.o_confidence)):
        depth, confidence = maps_from_probs(p)
        assert np.mean(depth == depth_map) > 0.9999
        np.testing.assert_allclose(conf_map, confidence, atol=1e-5)
        ref = predictor._inside(find_columns(p, p_model, MIN_SEPARATION_A[species]),
                                frame.shape, p_model)
        got = pred.columns[species]
        assert len(got) == len(ref) > 0
        np.testing.assert_allclose(got.x_A, ref.x_A, atol=1e-4)
        np.testing.assert_allclose(got.y_A, ref.y_A, atol=1e-4)
        np.testing.assert_array_equal(got.depth, ref.depth)
        np.testing.assert_allclose(got.probs, ref.probs, atol=1e-5)


def test_malloc_arenas_are_capped_on_linux():
    import sys

    from atom3d.inference.memory import limit_malloc_arenas

    result = limit_malloc_arenas()
    assert result is (True if sys.platform.startswith("linux") else False)
    assert limit_malloc_arenas() is result  # idempotent


def _anonymous_mappings_of(size: int) -> int:
    """Anonymous mappings of this process at least ``size`` bytes long (not the heap)."""
    n = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            lo, hi = (int(v, 16) for v in fields[0].split("-"))
            if len(fields) < 6 and hi - lo >= size:  # no path: anonymous (not [heap])
                n += 1
    return n


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_network_allocations_come_from_the_heap_only_inside_the_window():
    """Outside the window a 96 MB array is a fresh mapping (unmapped when freed, memory
    flat) unless the heap has that much free; inside it comes from the heap, where the
    next batch finds it again."""
    from atom3d.inference import memory

    if not memory.limit_malloc_arenas():
        pytest.skip("not glibc")
    size = 96 << 20
    memory.release_free_memory()  # what earlier networks left in the heap

    def new_mappings() -> int:
        before = _anonymous_mappings_of(size)
        a = np.ones(size // 8)
        after = _anonymous_mappings_of(size)
        del a
        return after - before

    assert new_mappings() == 1
    with memory.network_allocations():
        assert new_mappings() == 0
        with memory.network_allocations():  # re-entrant
            assert new_mappings() == 0
        assert new_mappings() == 0
    assert new_mappings() == 0  # the heap still holds what the window freed ...
    memory.release_free_memory()
    assert new_mappings() == 1  # ... and once that is released, mmap is back


def _anonymous_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024.0
    raise AssertionError("no RssAnon in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_release_free_memory_hands_back_what_the_network_window_kept():
    """A 96 MB array freed inside the window stays resident (the next batch reuses it)
    until :func:`release_free_memory` gives it back."""
    from atom3d.inference import memory

    if not memory.limit_malloc_arenas():
        pytest.skip("not glibc")
    memory.release_free_memory()
    base = _anonymous_rss_mb()
    with memory.network_allocations():
        a = np.ones((96 << 20) // 8)
        del a
    kept = _anonymous_rss_mb()
    assert kept - base > 80  # freed, but still resident in the heap
    assert memory.release_free_memory()
    assert kept - _anonymous_rss_mb() > 80


def test_malloc_settings_fit_in_a_c_int():
    """mallopt takes a C int; ctypes would silently wrap a larger value (4 GiB is 0)."""
    from atom3d.inference import memory

    for value in (memory.MMAP_THRESHOLD_BYTES, memory.TOP_PAD_BYTES,
                  memory.TRIM_THRESHOLD_BYTES):
        assert 0 < value < 1 << 31
    with pytest.raises(ValueError, match="C int"):
        memory._mallopt(-1, 4 << 30)


def _with_test_figures(model_dir, directory):
    """A copy of the tiny model that carries (hand-made) test figures by dose."""
    import shutil

    from atom3d.models.summary import TEST_BY_DOSE

    model = directory / "with_figures"
    shutil.copytree(model_dir, model)
    cfg = json.loads((model / "config.json").read_text())
    row = {"f1": 0.5, "exact": 0.25, "within1": 0.75}
    cfg["metrics"][TEST_BY_DOSE] = {
        "test_set": "hand-made", "source": "-", "passes": 1,
        "bins": [{"lo": 1.0, "hi": 1e6, "n_images": 1, "Ce": row, "O": row}]}
    (model / "config.json").write_text(json.dumps(cfg))
    return model


def test_predict_prints_the_test_figures_at_the_frames_dose(tmp_path, model_dir, series_tif,
                                                            capsys):
    """A model that carries test figures by dose: predict says, after its summary, what
    they were at the median dose of the frames (estimated from their shot noise); one
    without them (the tiny model) says nothing of the kind."""
    model = _with_test_figures(model_dir, tmp_path)
    capsys.readouterr()
    assert predict_main([str(series_tif), "-o", str(tmp_path / "a.h5"), "--model", str(model),
                         "--no-tta"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    first = [i for i, s in enumerate(lines) if s.startswith("dose ≈")]
    assert len(first) == 1
    paragraph = [lines[first[0]]]
    for s in lines[first[0] + 1:]:
        if not s.startswith("  "):
            break
        paragraph.append(s)
    assert len(paragraph) > 1 and max(map(len, paragraph)) <= 100  # wrapped for a terminal
    text = " ".join(" ".join(paragraph).split())  # the paragraph as one line
    assert "hand-made; 1 pass)" in text and "Ce F1 0.500, exact depth 0.250" in text
    dose = float(text.split("dose ≈")[1].split()[0])
    with h5py.File(tmp_path / "a.h5", "r") as f:
        valid = f["frames/valid"][:].astype(bool)
        doses = f["frames/dose_e_per_A2"][:][valid]
    assert valid.sum() == 4 and dose == pytest.approx(np.median(doses), abs=0.5)
    assert predict_main([str(series_tif), "-o", str(tmp_path / "b.h5"), "--model",
                         str(model_dir), "--no-tta"]) == 0
    assert "dose ≈" not in capsys.readouterr().out


# --------------------------------------------------------------------------- lattice check


@pytest.fixture(scope="module")
def lattice_frames():
    """3 frames of Ce columns on the [110] lattice at 0.2 Å/px (128 px, 400 e/Å²)."""
    from tests.test_lattice import ce_columns_image

    rng = np.random.default_rng(11)
    return [ce_columns_image(rng, (128, 128), 0.2, 25.0, 400.0) for _ in range(3)]


def test_a_calibration_off_by_10_percent_is_warned_about_and_recorded(
        lattice_frames, model_dir, tmp_path, capsys):
    tif = _write_tif(tmp_path / "off.tif", lattice_frames, pixel=0.22)  # truly 0.2 Å/px
    capsys.readouterr()
    assert _predict(tif, tmp_path / "off.h5", model_dir) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "lattice" in line]
    assert warning and "warning" in warning[0] and "-9." in err and "--pixel-size lattice" in err
    attrs = read_results(tmp_path / "off.h5", load_maps=False)["attrs"]
    assert attrs["pixel_size_A"] == pytest.approx(0.22)  # the file's value is still used
    assert attrs["pixel_size_source"] == "file"
    assert attrs["lattice_pixel_size_A"] == pytest.approx(0.2, rel=0.005)
    # a binning slip (the file says half the pixel size): found by the wide search
    binned = _write_tif(tmp_path / "binned.tif", lattice_frames, pixel=0.1)
    capsys.readouterr()
    assert _predict(binned, tmp_path / "binned.h5", model_dir) == 0
    err = capsys.readouterr().err
    assert "warning" in err and ("+99." in err or "+100." in err)
    attrs = read_results(tmp_path / "binned.h5", load_maps=False)["attrs"]
    assert attrs["lattice_pixel_size_A"] == pytest.approx(0.2, rel=0.005)
    assert _predict(binned, tmp_path / "binned2.h5", model_dir, "--pixel-size", "lattice") == 0
    attrs = read_results(tmp_path / "binned2.h5", load_maps=False)["attrs"]
    assert attrs["pixel_size_A"] == pytest.approx(0.2, rel=0.005)
    # within the model's tolerance: no warning
    ok = _write_tif(tmp_path / "ok.tif", lattice_frames, pixel=0.204)
    capsys.readouterr()
    assert _predict(ok, tmp_path / "ok.h5", model_dir) == 0
    assert "lattice" not in capsys.readouterr().err


def test_pixel_size_lattice_measures_it_and_guards_resume(lattice_frames, model_dir, tmp_path,
                                                          capsys):
    tif = _write_tif(tmp_path / "off.tif", lattice_frames, pixel=0.22)
    out = tmp_path / "lat.h5"
    assert predict_main([str(tif), "-o", str(out), "--model", str(model_dir),
                         "--pixel-size", "lattice"]) == 0
    err = capsys.readouterr().err
    measured = float(err.split("pixel size from the CeO2 [110] lattice: ")[1].split()[0])
    assert measured == pytest.approx(0.2, rel=0.005) and "(file: 0.2200 Å/px, -9." in err
    attrs = read_results(out, load_maps=False)["attrs"]
    assert attrs["pixel_size_source"] == "lattice"
    assert attrs["pixel_size_A"] == pytest.approx(0.2, rel=0.005)
    assert attrs["pixel_size_A"] == attrs["lattice_pixel_size_A"]
    before = out.stat().st_mtime_ns
    assert _predict(tif, out, model_dir, "--pixel-size", "lattice", "--resume") == 0  # kept
    assert out.stat().st_mtime_ns == before
    # another pixel size is another result: a complete file is not kept for it
    assert _predict(tif, out, model_dir, "--resume") == 0
    assert read_results(out, load_maps=False)["attrs"]["pixel_size_A"] == pytest.approx(0.22)
    # no calibration at all: a wide search
    np.save(tmp_path / "raw.npy", np.asarray(lattice_frames))
    assert _predict(tmp_path / "raw.npy", tmp_path / "raw.h5", model_dir,
                    "--pixel-size", "lattice") == 0
    attrs = read_results(tmp_path / "raw.h5", load_maps=False)["attrs"]
    assert attrs["pixel_size_A"] == pytest.approx(0.2, rel=0.005)


def test_pixel_size_lattice_without_a_lattice_exits_2(model_dir, tmp_path, capsys):
    rng = np.random.default_rng(12)
    noise = [rng.poisson(np.full((128, 128), 30.0)).astype(np.float32) for _ in range(3)]
    tif = _write_tif(tmp_path / "noise.tif", noise, pixel=0.2)
    capsys.readouterr()
    code = _exit_code([str(tif), "-o", str(tmp_path / "n.h5"), "--model", str(model_dir),
                       "--pixel-size", "lattice"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert ("no CeO2 [110] lattice found in the frames (searched within ±25 % of 0.2 Å/px, "
            "then 0.05–0.66 Å/px" in err[0])
    assert not list(tmp_path.glob("n.h5*"))
    # without the option: predicted, with a note that the pixel size was not checked
    assert predict_main([str(tif), "-o", str(tmp_path / "n.h5"), "--model", str(model_dir)]) == 0
    assert "no CeO2 [110] lattice found in the frames" in capsys.readouterr().err
    assert math.isnan(read_results(tmp_path / "n.h5", load_maps=False)["attrs"][
        "lattice_pixel_size_A"])


def test_collective_depth_changes_are_flagged():
    """Most Ce columns changing depth the same way at one frame is flagged (a tilt or a
    focus jump), a few columns changing (atoms leaving) is not, nor mixed changes."""
    from atom3d.inference.series import collective_change_frames, collective_warning

    def ev(frame, before, after, species="Ce", kind="depth_change"):
        return {"frame": frame, "species": species, "kind": kind,
                "depth_before": before, "depth_after": after}

    n_cols = np.array([40, 40, 40, 40, 40, 8])
    events = ([ev(1, 8, 7)] * 3  # three surface atoms leave: not collective
              + [ev(2, 9, 6)] * 12 + [ev(2, 4, 5)]  # 13 of 40, 12 down: collective
              + [ev(3, 9, 6)] * 6 + [ev(3, 4, 5)] * 6  # 12 of 40, mixed: not
              + [ev(4, 9, 6, species="O")] * 20  # O columns: not counted
              + [ev(4, 5, 0, kind="vanished")] * 20
              + [ev(5, 3, 2)] * 7)  # 7 of 8, but fewer than COLLECTIVE_MIN_COLUMNS
    flags = collective_change_frames(events, n_cols)
    assert flags.tolist() == [False, False, True, False, False, False]
    assert "frame 2 " in collective_warning([2]) and "frames 2, 7" in collective_warning([2, 7])


def test_results_record_collective_changes(reference_run):
    res = read_results(reference_run, load_maps=False)
    flags = np.asarray(res["frames"]["collective_change"], bool)
    assert flags.shape == (5,) and not flags.any()
