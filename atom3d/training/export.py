"""From a trained task to a model artifact: temperature calibration, validation figures, export.

Calibration
    One temperature per species (:func:`atom3d.training.calibration.fit_temperature`) is
    fitted on the *validation split* (structures never trained on), on the pooled logits
    of the **column-core pixels**: pixels whose target amplitude is >= 0.5 (within
    ~0.47 Å of a column centre for ``sigma_A`` = 0.4 Å), labelled with their column's
    depth. Why not all labelled pixels: ~95 % of pixels are vacuum or far from a column
    and are classified as background with near certainty, so they would dominate the NLL
    and fit the temperature of an easy question; the confidences atom3d reports (the
    depth confidence of each column, pooled over the column core by
    :func:`atom3d.inference.columns.find_columns`, and the depth maps' confidence on
    columns) are made of column-core pixels, so that is where the probabilities must be
    right. At most ``max_pixels`` pixels per species are used (a seeded subsample).

    That pixel temperature is then refined where it matters
    (:func:`calibrate_columns`): a column's reported confidence is the presence-weighted
    mean of its core pixels' probabilities, and the temperature that calibrates single
    pixels need not calibrate their mean. With at least ``MIN_CALIBRATION_COLUMNS``
    columns found and matched to the truth, the shipped temperature minimises the NLL of
    the pooled depth-given-column distribution of those columns; both temperatures are
    stored in the artifact's ``metrics.calibration``. :func:`calibrate` collects both
    in one pass of the network.

Validation figures
    With the fitted temperature, every validation image is run through
    :func:`atom3d.training.task.score_columns` and the results pooled with
    :func:`atom3d.evaluation.metrics.aggregate` (F1, exact, within1, MAE, ECE, ...).

Export
    :func:`atom3d.models.artifact.save_artifact` with the classes, model pixel size,
    normalisation, training domain (ranges of the store's config), temperatures and
    figures.

Entry points: :func:`export_model` (an in-memory task and data module),
:func:`export_checkpoint` (a Lightning checkpoint) and :func:`export_main` (its command
line: ``python -m atom3d.training.export CKPT --data STORE -o DIR``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atom3d.data.datamodule import ColumnDataModule, structure_mix
from atom3d.data.dataset import StoreInfo
from atom3d.data.store import open_store, param
from atom3d.errors import UserError
from atom3d.evaluation.metrics import aggregate, match_columns
from atom3d.inference.columns import POOL_RADIUS_A, find_columns, pool_support
from atom3d.models.artifact import calibrated_softmax, save_artifact
from atom3d.training.calibration import (
    expected_calibration_error,
    fit_column_threshold,
    fit_confidence_map,
    fit_pooled_temperature,
    fit_temperature,
)
from atom3d.training.task import (
    SPECIES,
    ColumnSegmentationTask,
    hard_labels,
    score_columns,
    scored_region,
)

__all__ = ["calibrate", "calibrate_columns", "calibrate_temperature", "evaluate_columns",
           "export_checkpoint", "export_main", "export_model", "training_domain"]

#: How the network input is normalised (stored in the artifact; see atom3d.data.transforms).
NORMALIZATION = {
    "method": "frame_standardize",
    "function": "atom3d.data.transforms.normalize",
    "description": "resample the frame to pixel_size_A (atom3d.data.transforms.resample, "
                   "bilinear, Gaussian pre-smoothing when shrinking > 1.5x), then "
                   "x = (I - mean(I)) / std(I) over the whole resampled frame",
    "eps": 1e-6,
    "pad": "reflect",
}


#: Fewest matched validation columns for the column-level temperature fit.
#: Fewest matched columns for fitting a confidence map (isotonic regression).
MIN_MAP_COLUMNS = 2000
MIN_CALIBRATION_COLUMNS = 100


def _batches(net: torch.nn.Module, loader, max_batches: int | None):
    """(batch, logits) over a loader, the network in eval mode without gradients."""
    net.eval()
    device = next(net.parameters()).device
    with torch.no_grad():
        for b, batch in enumerate(loader):
            if max_batches is not None and b >= max_batches:
                break
            yield batch, net(batch["image"].to(device))


def _pixel_samples(batch: Mapping[str, Any], logits, rng: np.random.Generator,
                   per_batch: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Column-core pixel logits ``(N, K + 1)`` and depths ``(N,)`` of one batch, per species."""
    out = {}
    for (species, name), z in zip(SPECIES, logits, strict=True):
        hard = hard_labels(batch[f"{name}_class"], batch[f"{name}_amp"])
        mask = (hard > 0) & (batch[f"{name}_weight"] > 0)
        b, r, c = (t.numpy() for t in torch.nonzero(mask, as_tuple=True))
        if b.size > per_batch:
            pick = np.sort(rng.choice(b.size, per_batch, replace=False))
            b, r, c = b[pick], r[pick], c[pick]
        z = z.float().cpu().numpy()
        out[species] = (z[b, :, r, c], hard.numpy()[b, r, c])
    return out


def _fit_pixels(chunks: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator,
                max_pixels: int) -> tuple[float, int]:
    if sum(len(y) for _, y in chunks) == 0:
        return 1.0, 0
    logits = np.concatenate([z for z, _ in chunks])
    labels = np.concatenate([y for _, y in chunks])
    if len(labels) > max_pixels:
        pick = rng.choice(len(labels), max_pixels, replace=False)
        logits, labels = logits[pick], labels[pick]
    # the depth given a column: classes 1..K (see calibrated_softmax)
    return fit_temperature(logits[:, 1:], labels - 1), int(len(labels))


def _column_samples(hp: Mapping[str, Any], batch: Mapping[str, Any], logits,
                    detections: dict[str, list] | None = None
                    ) -> dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Pooled-pixel depth logits, pooling weights and true depths of the matched columns
    of one batch, per species (see :func:`calibrate_columns`).

    With ``detections``, every found column inside the scored region is also appended,
    per image, to ``detections[species]`` as ``(p_column, matched, n_true)`` (for
    :func:`~atom3d.training.calibration.fit_column_threshold`).
    """
    radius_A = POOL_RADIUS_A
    columns = batch["columns"].numpy()
    pixel = batch["pixel_size_A"].numpy()
    out: dict[str, list] = {sp: [] for sp, _ in SPECIES}
    for s, ((species, name), z) in enumerate(zip(SPECIES, logits, strict=True)):
        z = z.float().cpu()
        probs = calibrated_softmax(z, 1.0).numpy()
        z = z.numpy()
        valid = (batch[f"{name}_weight"] > 0).numpy()
        for i in range(len(pixel)):
            p = float(pixel[i])
            table = find_columns(probs[i], p, hp.min_separation_A[s],
                                 threshold=hp.column_threshold, pool_radius_A=radius_A)
            rows = columns[i]
            rows = rows[np.isfinite(rows[:, 0]) & (rows[:, 2] == s)]
            inside = scored_region(valid[i], p, hp.eval_margin_A)
            keep = inside(table.x_A, table.y_A)
            rows = rows[inside(rows[:, 0], rows[:, 1])]
            xy = np.stack([table.x_A[keep], table.y_A[keep]], axis=1).astype(np.float64)
            pred_idx, true_idx = match_columns(xy, rows[:, :2].astype(np.float64),
                                               hp.match_distance_A[s])
            if detections is not None:
                matched = np.zeros(len(xy), bool)
                matched[pred_idx] = True
                detections[species].append((table.p_column[keep].astype(np.float64), matched,
                                            int(len(rows))))
            if pred_idx.size == 0:
                continue
            centres = xy[pred_idx][:, ::-1] / p  # (r, c) [px]
            presence = 1.0 - probs[i][0].astype(np.float64)
            pix, w = pool_support(presence, centres, radius_A / p)
            r, c = pix[..., 0], pix[..., 1]
            # pooled p(k) = Σ w·(1 − p0)·q_k / Σ w over the disc (calibrated_softmax):
            # the depth given a column weighs each pixel's q by w·(1 − p0)
            out[species].append((z[i][1:, r, c].transpose(1, 2, 0), w * presence[r, c],
                                 rows[true_idx, 3].astype(np.int64) - 1))
    return out


def _fit_columns(chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                 rng: np.random.Generator, max_columns: int
                 ) -> tuple[float, int, dict[str, Any] | None]:
    """Pooled temperature, number of columns and the confidence map fitted after it."""
    if not chunks:
        return float("nan"), 0, None
    z, w, y = (np.concatenate(parts) for parts in zip(*chunks, strict=True))
    if len(y) > max_columns:
        pick = np.sort(rng.choice(len(y), max_columns, replace=False))
        z, w, y = z[pick], w[pick], y[pick]
    temperature = fit_pooled_temperature(z, w, y)
    confidence_map = None
    if len(y) >= MIN_MAP_COLUMNS:
        q = torch.softmax(torch.as_tensor(z, dtype=torch.float64) / temperature, dim=2)
        weights = torch.as_tensor(w, dtype=torch.float64)
        pooled = ((q * weights[..., None]).sum(dim=1) / weights.sum(dim=1)[:, None]).numpy()
        confidence, correct = pooled.max(axis=1), pooled.argmax(axis=1) == y
        knots = fit_confidence_map(confidence, correct)
        mapped = np.interp(confidence, knots["confidence"], knots["accuracy"])
        confidence_map = {**knots, "n_columns": int(len(y)),
                          "ece_before": float(expected_calibration_error(confidence, correct)),
                          "ece_after": float(expected_calibration_error(mapped, correct))}
    return temperature, int(len(y)), confidence_map


def _per_batch(loader, max_pixels: int, max_batches: int | None) -> int:
    n_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
    return max(2 * max_pixels // max(n_batches, 1), 1)  # pooled: <= 2 * max_pixels


def calibrate_temperature(net: torch.nn.Module, loader, *, max_pixels: int = 200_000,
                          max_batches: int | None = None,
                          seed: int = 0) -> tuple[dict[str, float], dict[str, int]]:
    """Temperature per species fitted on the column-core pixels of a validation loader.

    Returns the temperatures ``{"Ce": T, "O": T}`` and the number of pixels used; a
    species without column pixels keeps T = 1.
    """
    rng = np.random.default_rng(seed)
    per_batch = _per_batch(loader, max_pixels, max_batches)
    pooled: dict[str, list] = {sp: [] for sp, _ in SPECIES}
    for batch, logits in _batches(net, loader, max_batches):
        for species, sample in _pixel_samples(batch, logits, rng, per_batch).items():
            pooled[species].append(sample)
    fits = {sp: _fit_pixels(chunks, rng, max_pixels) for sp, chunks in pooled.items()}
    return {sp: f[0] for sp, f in fits.items()}, {sp: f[1] for sp, f in fits.items()}


def calibrate_columns(task: ColumnSegmentationTask, loader, *, max_columns: int = 20_000,
                      max_batches: int | None = None,
                      seed: int = 0) -> tuple[dict[str, float], dict[str, int]]:
    """Temperature per species fitted on the pooled depth confidence of validation columns.

    The columns are found as prediction finds them (:func:`find_columns` with the task's
    separation and threshold; the background probability, hence the columns found, do
    not depend on the temperature) and matched to the true columns (the task's match
    distance, the evaluation edge margin). For every matched column the depth logits
    of the pixels :func:`find_columns` pools over, and their weights, are kept; the
    temperature then minimises the NLL of the pooled depth-given-column distribution
    (:func:`~atom3d.training.calibration.fit_pooled_temperature`): the very confidence
    atom3d reports per column. At most ``max_columns`` columns per species (seeded).

    Returns the temperatures and the number of columns used per species; a species with
    no matched column gets ``nan``.
    """
    found: dict[str, list] = {sp: [] for sp, _ in SPECIES}
    for batch, logits in _batches(task.net, loader, max_batches):
        for species, samples in _column_samples(task.hparams, batch, logits).items():
            found[species].extend(samples)
    rng = np.random.default_rng(seed)
    fits = {sp: _fit_columns(chunks, rng, max_columns) for sp, chunks in found.items()}
    return {sp: f[0] for sp, f in fits.items()}, {sp: f[1] for sp, f in fits.items()}


def calibrate(task: ColumnSegmentationTask, loader, *, max_pixels: int = 200_000,
              max_columns: int = 20_000, max_batches: int | None = None,
              seed: int = 0) -> dict[str, dict[str, Any]]:
    """:func:`calibrate_temperature` and :func:`calibrate_columns` in one pass of the network.

    Same results as calling both (same seeds); returns ``{"pixel_temperature",
    "n_pixels", "column_temperature", "n_columns", "confidence_map",
    "column_threshold"}``, each a per-species dict. The confidence map (None below
    ``MIN_MAP_COLUMNS`` columns) is the isotonic fit of correctness on the pooled
    confidence at the column temperature
    (:func:`~atom3d.training.calibration.fit_confidence_map`), with its in-sample ECE
    before and after. The column threshold (None without found columns) is the
    presence cut that maximises the detection F1 of the same images
    (:func:`~atom3d.training.calibration.fit_column_threshold`).
    """
    pixel_rng, column_rng = np.random.default_rng(seed), np.random.default_rng(seed)
    per_batch = _per_batch(loader, max_pixels, max_batches)
    pixels: dict[str, list] = {sp: [] for sp, _ in SPECIES}
    columns: dict[str, list] = {sp: [] for sp, _ in SPECIES}
    detections: dict[str, list] = {sp: [] for sp, _ in SPECIES}
    for batch, logits in _batches(task.net, loader, max_batches):
        for species, sample in _pixel_samples(batch, logits, pixel_rng, per_batch).items():
            pixels[species].append(sample)
        for species, samples in _column_samples(task.hparams, batch, logits,
                                                detections).items():
            columns[species].extend(samples)
    pixel_fits = {sp: _fit_pixels(c, pixel_rng, max_pixels) for sp, c in pixels.items()}
    column_fits = {sp: _fit_columns(c, column_rng, max_columns) for sp, c in columns.items()}
    return {"pixel_temperature": {sp: f[0] for sp, f in pixel_fits.items()},
            "n_pixels": {sp: f[1] for sp, f in pixel_fits.items()},
            "column_temperature": {sp: f[0] for sp, f in column_fits.items()},
            "n_columns": {sp: f[1] for sp, f in column_fits.items()},
            "confidence_map": {sp: f[2] for sp, f in column_fits.items()},
            "column_threshold": {sp: _fit_threshold(d) for sp, d in detections.items()}}


def _calibration_of(fit: Mapping[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
    """What goes into an artifact from a :func:`calibrate` result, per species.

    Returns ``(temperature, confidence_map, map_figures, column_threshold,
    threshold_figures)``: the column temperature where at least
    ``MIN_CALIBRATION_COLUMNS`` columns were matched, else the pixel one; the confidence
    map's knots and its in-sample figures, and the column threshold and its figures, for
    the species with enough columns (others are absent).
    """
    n_columns = fit["n_columns"]
    enough = {sp for sp, _ in SPECIES if n_columns[sp] >= MIN_CALIBRATION_COLUMNS}
    temperature = {sp: fit["column_temperature"][sp] if sp in enough
                   else fit["pixel_temperature"][sp] for sp, _ in SPECIES}
    maps = {sp: fit["confidence_map"][sp] for sp, _ in SPECIES
            if sp in enough and fit["confidence_map"][sp]}
    confidence_map = {sp: {k: m[k] for k in ("confidence", "accuracy")}
                      for sp, m in maps.items()}
    map_figures = {sp: {k: m[k] for k in ("n_columns", "ece_before", "ece_after")}
                   for sp, m in maps.items()}
    threshold_figures = {sp: f for sp, f in fit["column_threshold"].items()
                         if f is not None and f["n_true"] >= MIN_CALIBRATION_COLUMNS}
    column_threshold = {sp: f["threshold"] for sp, f in threshold_figures.items()}
    return temperature, confidence_map, map_figures, column_threshold, threshold_figures


def _fit_threshold(detections: list[tuple[np.ndarray, np.ndarray, int]]) -> dict[str, Any] | None:
    """:func:`fit_column_threshold` of per-image ``(p_column, matched, n_true)``."""
    if not detections or not any(len(p) for p, _, _ in detections):
        return None
    p, matched, n_true = zip(*detections, strict=True)
    return fit_column_threshold(np.concatenate(p), np.concatenate(matched), int(sum(n_true)))


def evaluate_columns(task: ColumnSegmentationTask, loader, temperature: Mapping[str, float], *,
                     max_batches: int | None = None) -> dict[str, Any]:
    """Column and pixel figures of the validation loader with calibrated probabilities."""
    hp = task.hparams
    results: dict[str, list[dict[str, Any]]] = {sp: [] for sp, _ in SPECIES}
    pixels = {sp: np.zeros(2) for sp, _ in SPECIES}
    n_images = 0
    for batch, logits in _batches(task.net, loader, max_batches):
        columns = batch["columns"].numpy()
        pixel = batch["pixel_size_A"].numpy()
        n_images += len(pixel)
        for s, ((species, name), z) in enumerate(zip(SPECIES, logits, strict=True)):
            valid = (batch[f"{name}_weight"] > 0).numpy()
            hard = hard_labels(batch[f"{name}_class"], batch[f"{name}_amp"]).numpy()
            probs = calibrated_softmax(z.float(), temperature[species]).cpu().numpy()
            pixels[species] += [valid.sum(), ((probs.argmax(axis=1) == hard) & valid).sum()]
            for i in range(len(pixel)):
                rows = columns[i]
                rows = rows[np.isfinite(rows[:, 0]) & (rows[:, 2] == s)]
                result = score_columns(probs[i], rows[:, [0, 1, 3]], valid[i], float(pixel[i]),
                                       min_separation_A=hp.min_separation_A[s],
                                       match_distance_A=hp.match_distance_A[s],
                                       threshold=hp.column_threshold,
                                       margin_A=hp.eval_margin_A)
                results[species].append(result)
    out: dict[str, Any] = {"n_images": n_images}
    for species, _ in SPECIES:
        summary = aggregate(results[species])
        keep = ("tp", "fp", "fn", "precision", "recall", "f1", "exact", "within1", "mae",
                "mean_distance_A", "ece")
        out[species] = {k: summary[k] for k in keep}
        total, ok = pixels[species]
        out[species]["pixel_acc"] = float(ok / total) if total else float("nan")
    return out


def _describe_dataset(info: StoreInfo, root) -> dict[str, Any]:
    return {"path": info.path, "n_images": info.n_images, "n_structures": info.n_structures,
            "seed": int(root.attrs["seed"]), "atom3d_version": str(root.attrs["atom3d_version"]),
            "structure_mix": structure_mix(info.config["structure"])}


def training_domain(info: StoreInfo, data_hparams: Mapping[str, Any],
                    extra_infos: Sequence[StoreInfo] = ()) -> dict[str, Any]:
    """Ranges of the simulation parameters seen in training (from the stores' configs).

    Units are in the key names; defocus positive = underfocus (C10 = −defocus). Ranges
    read from the config are the *drawn* ranges (the same in every training store: the
    data module refuses an extra store with other ranges); ``thickness_A`` and
    ``max_column_depth`` are found in the images of all training stores (they follow from
    the structures, not from one config key). The stores may differ in their mix of
    structure kinds (the ``p_*`` keys of ``structure``, which are not exclusive: e.g.
    ``p_wedge`` applies to profile crystals, drawn with 1 − ``p_particle``): each store's
    mix is recorded (``dataset`` and ``extra_datasets``, key ``structure_mix``).
    """
    cfg = info.config
    optics, detector, structure = cfg["optics"], cfg["detector"], cfg["structure"]

    def scaled(values, factor):
        return [float(v) * factor for v in values]

    stores = [info, *extra_infos]
    roots = [open_store(s.path) for s in stores]
    thickness = np.concatenate([param(r, "thickness_A") for r in roots])
    thickness = thickness[np.isfinite(thickness)]
    depth_ce = np.concatenate([param(r, "max_ce_depth") for r in roots])
    depth_o = np.concatenate([param(r, "max_o_depth") for r in roots])
    dose = [float(v) for v in detector["dose_e_per_A2"]]
    train_dose = data_hparams.get("dose_range_e_per_A2")
    return {
        "zone_axis": list(structure["zone_axis"]),
        "energy_keV": float(optics["energy_keV"]),
        "defocus_A": scaled(optics["defocus_nm"], 10.0),
        "defocus_convention": "positive = underfocus (C10 = -defocus)",
        "cs_A": scaled(optics["cs_um"], 1e4),
        "c5_A": scaled(optics["c5_mm"], 1e7),
        "focal_spread_A": scaled(optics["focal_spread_nm"], 10.0),
        "astigmatism_A": scaled(optics["astigmatism_nm"], 10.0),
        "aperture_mrad": [float(v) for v in optics["aperture_mrad"]],
        "p_no_aperture": float(optics["p_no_aperture"]),
        "angular_spread_mrad": [float(v) for v in optics["angular_spread_mrad"]],
        "tilt_mrad": [float(v) for v in structure["tilt_mrad"]],
        "dose_e_per_A2": ([min(dose[0], train_dose[0]), max(dose[1], train_dose[1])]
                          if train_dose else dose),
        "detector_pixel_size_A": [float(v) for v in detector["pixel_size_A"]],
        "pixel_size_jitter": float(data_hparams.get("pixel_jitter", 0.0)),
        "thickness_A": ([float(thickness.min()), float(thickness.max())]
                        if thickness.size else None),
        "max_column_depth": {"Ce": int(np.nanmax(depth_ce)) if depth_ce.size else None,
                             "O": int(np.nanmax(depth_o)) if depth_o.size else None},
        "particle_diameter_nm": [float(v) for v in structure["particle_diameter_nm"]],
        "slab_thickness_layers": [float(v) for v in structure["slab_thickness_layers"]],
        "label_sigma_A": info.sigma_A,
        "dataset": {**_describe_dataset(info, roots[0]),
                    "val_fraction": float(data_hparams.get("val_fraction", 0.0)),
                    "split_seed": int(data_hparams.get("split_seed", 0))},
        "extra_datasets": [_describe_dataset(s, r)
                           for s, r in zip(extra_infos, roots[1:], strict=True)],
    }


def _strict_json(value: Any) -> Any:
    """NaN and infinities → None, NumPy scalars → Python numbers, tuples → lists."""
    if isinstance(value, Mapping):
        return {str(k): _strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def export_model(task: ColumnSegmentationTask, datamodule: ColumnDataModule,
                 out_dir: str | Path, *, name: str = "ceo2-110", max_batches: int | None = None,
                 max_pixels: int = 200_000, extra_metrics: Mapping[str, Any] | None = None,
                 calibration_store: str | Path | Sequence[str | Path] | None = None,
                 missing_extra_stores: Sequence[str] = ()) -> Path:
    """Calibrate on the validation split, evaluate, and write the model artifact.

    Parameters
    ----------
    task : ColumnSegmentationTask
        The trained task (its ``net`` is exported; it is left in eval mode on its device).
    datamodule : ColumnDataModule
        Gives the validation split, the model pixel size and the store.
    out_dir : path
        Artifact directory (created; existing artifact files are replaced).
    name : str
        Model name in ``config.json``.
    max_batches : int, optional
        Use at most this many validation batches (quick exports).
    max_pixels : int
        Most column-core pixels per species used for the temperature fit.
    extra_metrics : mapping, optional
        Merged into the artifact's ``metrics`` (e.g. the checkpoint's epoch).
    calibration_store : path or sequence of paths, optional
        Separate stores (each simulated with its own seed, never trained on) whose every
        finished image calibrates the temperature together with the validation split
        (validation items: stored dose, seeded noise, centred crop). More structures
        than the validation split holds give a temperature that carries over to new
        data; the validation figures are still computed on the validation split.
    missing_extra_stores : sequence of str
        Extra training stores the run used that are not at hand (recorded in the
        training domain as ``extra_datasets_missing``; see :func:`export_checkpoint`).

    Returns
    -------
    Path
        The artifact directory.
    """
    stores = _store_list(calibration_store)
    datamodule.setup("validate")
    loader = datamodule.val_dataloader()
    hp = datamodule.hparams
    if datamodule.val_dataset is None or len(datamodule.val_dataset) == 0:
        temperature = {sp: 1.0 for sp, _ in SPECIES}
        confidence_map, map_figures = {}, {}
        column_threshold, threshold_figures = {}, {}
        pixel_temperature = dict(temperature)
        used = n_columns = {sp: 0 for sp, _ in SPECIES}
        figures: dict[str, Any] = {"n_images": 0}
    else:
        calibration_loader = loader
        if stores:
            calibration_loader = _Chained(loader, *(_calibration_loader(
                store, datamodule, task.n_classes - 1) for store in stores))
        fit = calibrate(task, calibration_loader, max_pixels=max_pixels,
                        max_batches=max_batches, seed=int(hp.seed))
        pixel_temperature, used = fit["pixel_temperature"], fit["n_pixels"]
        n_columns = fit["n_columns"]
        (temperature, confidence_map, map_figures, column_threshold,
         threshold_figures) = _calibration_of(fit)
        figures = evaluate_columns(task, loader, temperature, max_batches=max_batches)
    metrics = {
        "validation": figures,
        "calibration": {"split": " + ".join(["validation (held-out structures)",
                                              *map(_describe_store, stores)]),
                        "method": f"pooled column confidence (calibrate_columns) when >= "
                                  f"{MIN_CALIBRATION_COLUMNS} matched columns, else "
                                  "column-core pixels (calibrate_temperature)",
                        "n_columns": n_columns,
                        "pixels": "column cores (target amplitude >= 0.5), true depth as label",
                        "n_pixels": used,
                        "temperature_pixels": pixel_temperature,
                        "confidence_map": map_figures or "none (too few matched columns)",
                        "column_threshold": threshold_figures or "none (too few columns)",
                        "note": "validation figures are before the confidence map and "
                                "the column threshold"},
        "evaluation": {"min_separation_A": list(task.hparams.min_separation_A),
                       "match_distance_A": list(task.hparams.match_distance_A),
                       "edge_margin_A": float(task.hparams.eval_margin_A),
                       "noise": "Poisson at the stored dose, seeded by image index",
                       "val_crop_px": datamodule.val_dataset.crop_px
                       if datamodule.val_dataset is not None else None},
        **dict(extra_metrics or {}),
    }
    k = task.n_classes - 1
    domain = training_domain(datamodule.info, dict(hp), datamodule.extra_infos)
    if missing_extra_stores:
        domain["extra_datasets_missing"] = [str(p) for p in missing_extra_stores]
    return save_artifact(
        task.net, out_dir, name=name, classes={"Ce": k, "O": k},
        pixel_size_A=float(hp.pixel_size_A), normalization=NORMALIZATION,
        training_domain=_strict_json(domain),
        temperature=temperature, metrics=_strict_json(metrics),
        confidence_map=confidence_map or None, column_threshold=column_threshold or None)


class _Chained:
    """Batches of several loaders one after the other (``len`` is the total)."""

    def __init__(self, *loaders) -> None:
        self.loaders = loaders

    def __len__(self) -> int:
        return sum(len(loader) for loader in self.loaders)

    def __iter__(self):
        for loader in self.loaders:
            yield from loader


def _calibration_loader(store: str | Path, datamodule: ColumnDataModule, max_depth: int):
    """Validation-style items of every finished image of a separate calibration store."""
    hp = datamodule.hparams
    return _store_loader(store, max_depth, pixel_size_A=hp.pixel_size_A,
                         crop_px=hp.val_crop_px, size_multiple=hp.size_multiple, seed=hp.seed,
                         batch_size=hp.val_batch_size or hp.batch_size)


def _store_loader(store: str | Path, max_depth: int, *, pixel_size_A: float,
                  crop_px: int | None, size_multiple: int, seed: int, batch_size: int):
    """A loader of validation items (stored dose, seeded noise, no augmentation) of every
    finished image of ``store``, which must have ``max_depth``."""
    from torch.utils.data import DataLoader

    from atom3d.data.dataset import ColumnDataset, image_indices, read_store_info

    info = read_store_info(store)
    if info.max_depth != max_depth:
        raise UserError(f"calibration store {store} has max_depth {info.max_depth}, "
                        f"the model has {max_depth}")
    indices = image_indices(np.flatnonzero(info.done), info.n_images, info.images_per_structure)
    if len(indices) == 0:
        raise UserError(f"calibration store {store} has no finished images")
    dataset = ColumnDataset(store, indices, train=False, pixel_size_A=pixel_size_A,
                            crop_px=crop_px, size_multiple=size_multiple, seed=seed, info=info)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)


def _store_list(stores: str | Path | Sequence[str | Path] | None) -> list[str | Path]:
    """One calibration store, several, or none, as a list."""
    if stores is None:
        return []
    if isinstance(stores, (str, Path)):
        return [stores]
    return list(stores)


def _describe_store(store: str | Path) -> str:
    from atom3d.data.dataset import read_store_info

    info = read_store_info(store)
    return (f"calibration store {Path(store).name} ({int(info.done.sum())} structures, "
            f"seed {'?' if info.seed is None else info.seed}), never trained on")


def _read_checkpoint(ckpt_path: str | Path) -> dict[str, Any]:
    path = Path(ckpt_path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a foreign or corrupt file
        raise UserError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}") from None


def _arguments_of(cls: type, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of saved hyper-parameters that are constructor arguments of ``cls``."""
    names = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return {k: v for k, v in hparams.items() if k in names}


def export_checkpoint(ckpt_path: str | Path, store_path: str | Path | None, out_dir: str | Path,
                      *, name: str = "ceo2-110", max_batches: int | None = None,
                      num_workers: int = 0, batch_size: int | None = None,
                      max_pixels: int = 200_000,
                      calibration_store: str | Path | Sequence[str | Path] | None = None,
                      val_structures: list[int] | None = None) -> Path:
    """Calibrate and export the network of a Lightning checkpoint of :class:`ColumnSegmentationTask`.

    Parameters
    ----------
    ckpt_path : path
        A checkpoint written by ``atom3d train fit`` (e.g. ``.../checkpoints/last.ckpt``).
    store_path : path, optional
        The dataset store whose validation split calibrates the model; default the
        store the checkpoint was trained on (its ``data.path``). The split is the same
        as in training (same ``val_fraction`` and ``split_seed``).
    out_dir : path
        Artifact directory.
    name, max_batches, max_pixels, calibration_store
        See :func:`export_model`.
    val_structures : list of int, optional
        The validation structures; default those the checkpoint records (checkpoints
        of this version save the split), else the training run's fractional split of
        the store as it is now, which is only right if the store has not grown.
    num_workers, batch_size : int
        DataLoader settings for the calibration pass (default: 0 workers, the training
        batch size).

    Returns
    -------
    Path
        The artifact directory.
    """
    checkpoint = _read_checkpoint(ckpt_path)
    if "hyper_parameters" not in checkpoint or "state_dict" not in checkpoint:
        raise UserError(f"{ckpt_path} is not a checkpoint of atom3d train fit")
    task_args = _arguments_of(ColumnSegmentationTask, checkpoint["hyper_parameters"])
    task_args.pop("init_weights", None)  # the weights come from this checkpoint
    task = ColumnSegmentationTask(**task_args)
    task.load_state_dict(checkpoint["state_dict"])
    data_hparams = _arguments_of(ColumnDataModule,
                                 checkpoint.get("datamodule_hyper_parameters", {}))
    if store_path is not None:
        data_hparams["path"] = str(store_path)
    if "path" not in data_hparams:
        raise UserError(f"{ckpt_path} does not record its dataset; pass the store path")
    data_hparams["num_workers"] = int(num_workers)
    data_hparams["persistent_workers"] = False
    # calibration uses the main store's validation split only; the extra training
    # stores (``data.extra_train_paths``) are read for the training domain the artifact
    # records, and need not exist where the checkpoint is exported: a missing one is
    # named in the artifact (``training_domain.extra_datasets_missing``) and warned of
    extras = [str(p) for p in data_hparams.pop("extra_train_paths", None) or []]
    missing = [p for p in extras if not Path(p).exists()]
    if missing:
        warnings.warn(f"extra training stores not found, left out of the training domain "
                      f"the artifact records (named there as missing): {', '.join(missing)}",
                      stacklevel=2)
    data_hparams["extra_train_paths"] = [p for p in extras if p not in missing] or None
    # calibrate and validate on whole images, as atom3d predict and evaluate see them:
    # a centred crop (training's val_crop_px) leaves out the particle's rim, where the
    # network is more sure than right, and a confidence map fitted without the rim does
    # not calibrate whole frames
    data_hparams["val_crop_px"] = None
    if batch_size is not None:
        data_hparams["batch_size"] = data_hparams["val_batch_size"] = int(batch_size)
    if val_structures is not None:
        data_hparams["val_structures"] = [int(v) for v in val_structures]
    else:
        state = checkpoint.get(ColumnDataModule.__qualname__) or {}
        if "val_structures" in state and data_hparams.get("val_structures") is None:
            data_hparams["val_structures"] = list(state["val_structures"])
    datamodule = ColumnDataModule(**data_hparams)
    if datamodule.max_depth + 1 != task.n_classes:
        raise UserError(f"dataset {data_hparams['path']} has max_depth {datamodule.max_depth}, "
                        f"the checkpoint was trained with {task.n_classes - 1}")
    extra = {"checkpoint": {"file": Path(ckpt_path).name, "epoch": checkpoint.get("epoch"),
                            "global_step": checkpoint.get("global_step")}}
    return export_model(task, datamodule, out_dir, name=name, max_batches=max_batches,
                        max_pixels=max_pixels, extra_metrics=extra,
                        calibration_store=calibration_store, missing_extra_stores=missing)


class _ArtifactCalibration:
    """What :func:`calibrate` needs of a task, from a model artifact: the network (here
    averaged over test-time augmentation passes) and the column-finding settings."""

    def __init__(self, net: torch.nn.Module, evaluation: Mapping[str, Any]) -> None:
        from types import SimpleNamespace

        self.net = net
        defaults = inspect.signature(ColumnSegmentationTask.__init__).parameters
        self.hparams = SimpleNamespace(
            min_separation_A=tuple(evaluation.get(
                "min_separation_A", defaults["min_separation_A"].default)),
            match_distance_A=tuple(evaluation.get(
                "match_distance_A", defaults["match_distance_A"].default)),
            eval_margin_A=float(evaluation.get("edge_margin_A",
                                               defaults["eval_margin_A"].default)),
            column_threshold=float(defaults["column_threshold"].default))


def recalibrate_artifact(model: str | Path, stores: Sequence[str | Path], out_dir: str | Path,
                         *, passes: int = 8, batch_size: int = 2,
                         max_batches: int | None = None, max_pixels: int = 200_000,
                         seed: int = 0, progress: bool = True) -> Path:
    """Fit a model's calibration for ``passes`` network passes per frame and save it.

    ``atom3d predict`` averages the logits of ``passes`` orientations of every frame
    (:func:`~atom3d.inference.predictor.tta_forward`); the averaged logits are less
    extreme than one pass's, so the calibration fitted at export (one pass) under-states
    their confidence. This runs the averaged network on every finished image of
    ``stores`` (separate stores, simulated with seeds never trained on; validation items:
    the stored dose with noise seeded by image index and ``seed``, whole images) and fits,
    as :func:`export_model` does, the column temperature, the confidence map and the
    column threshold (:func:`calibrate`). The result goes into the artifact's
    ``pass_calibration[str(passes)]`` (with the figures of the fit), written to
    ``out_dir`` (may be the model's own directory) with the same weights; predictions
    with that many passes then use it (:meth:`ModelArtifact.for_passes`).
    """
    from atom3d.inference.predictor import TTANetwork, tta_passes
    from atom3d.models.artifact import load_artifact, save_pass_calibration

    passes = tta_passes(passes)
    artifact = load_artifact(model)
    stores = _store_list(stores)
    if not stores:
        raise UserError("recalibration needs at least one calibration store (--data)")
    k_max = max(artifact.classes.values())
    size_multiple = 2 ** int(artifact.config["architecture"].get("depth", 4))
    loader = _Chained(*(_store_loader(store, k_max, pixel_size_A=artifact.pixel_size_A,
                                      crop_px=None, size_multiple=size_multiple, seed=seed,
                                      batch_size=int(batch_size)) for store in stores))
    if progress:
        from tqdm.auto import tqdm

        total = len(loader) if max_batches is None else min(len(loader), max_batches)
        loader = tqdm(loader, total=total, desc=f"calibrating ({passes} passes)",
                      unit="batch", file=sys.stderr)
    evaluation = (artifact.config.get("metrics") or {}).get("evaluation") or {}
    subject = _ArtifactCalibration(TTANetwork(artifact.model, passes), evaluation)
    fit = calibrate(subject, loader, max_pixels=max_pixels, max_batches=max_batches, seed=seed)
    (temperature, confidence_map, map_figures, column_threshold,
     threshold_figures) = _calibration_of(fit)
    entry = {
        "temperature": temperature,
        "confidence_map": confidence_map or None,
        "column_threshold": column_threshold or None,
        "fit": _strict_json({
            "passes": passes,
            "stores": [_describe_store(store) for store in stores],
            "seed": int(seed),
            "n_columns": fit["n_columns"], "n_pixels": fit["n_pixels"],
            "temperature_pixels": fit["pixel_temperature"],
            "confidence_map": map_figures,
            "column_threshold": threshold_figures}),
    }
    return save_pass_calibration(artifact, out_dir, passes, entry)


def refit_confidence_map(model: str | Path, stores: Sequence[str | Path], out_dir: str | Path,
                         *, passes: int = 8, batch_size: int = 8, seed: int = 0,
                         progress: bool = True) -> Path:
    """Fit a second confidence map on top of a model's, on the columns it reports.

    The model runs on every finished image of ``stores`` exactly as ``atom3d evaluate``
    runs it with ``passes`` passes (shot noise at each image's stored dose, seeded by
    ``seed`` and the image index; the same column finding, thresholds and border
    margin); for every matched column the confidence it reports (through the map in use
    for ``passes``) and whether its depth is right are pooled per species, and an
    isotonic map of correctness on that confidence is fitted
    (:func:`~atom3d.training.calibration.fit_confidence_map`) and composed with the
    map in use (:func:`~atom3d.training.calibration.compose_confidence_maps`). The
    temperature and column threshold stay those in use, so depths, expected depths and
    the columns found do not change; only the reported confidences do. The result goes
    into ``pass_calibration[str(passes)]`` (with the figures of the fit) of the model
    written to ``out_dir``. Species with fewer than ``MIN_MAP_COLUMNS`` matched columns
    keep their map.
    """
    from atom3d.evaluation.evaluate import SPECIES as EVAL_SPECIES
    from atom3d.evaluation.evaluate import evaluate_store, network_method
    from atom3d.evaluation.metrics import ece
    from atom3d.inference.predictor import tta_passes
    from atom3d.models.artifact import load_artifact, save_pass_calibration
    from atom3d.training.calibration import compose_confidence_maps, fit_confidence_map

    passes = tta_passes(passes)
    artifact = load_artifact(model)
    in_use = artifact.for_passes(passes)
    stores = _store_list(stores)
    if not stores:
        raise UserError("the confidence map needs at least one calibration store (--data)")
    run, _ = network_method(artifact, batch_size=batch_size, tta=passes)
    conf: dict[str, list] = {sp: [] for sp in EVAL_SPECIES}
    right: dict[str, list] = {sp: [] for sp in EVAL_SPECIES}
    for store in stores:
        result = evaluate_store(store, {"network": run}, noise_seed=seed, progress=progress)
        for sp in EVAL_SPECIES:
            for image in result["per_image"]["network"][sp]:
                conf[sp].append(np.asarray(image["confidence"], np.float64))
                right[sp].append(np.asarray(image["correct"], bool))
    maps = dict(in_use.config.get("confidence_map") or {})
    figures = {}
    for sp in EVAL_SPECIES:
        c, ok = np.concatenate(conf[sp]), np.concatenate(right[sp])
        if len(c) < MIN_MAP_COLUMNS:
            continue
        outer = fit_confidence_map(c, ok)
        maps[sp] = compose_confidence_maps(maps.get(sp), outer)
        remapped = np.interp(c, outer["confidence"], outer["accuracy"])
        figures[sp] = {"n_columns": int(len(c)), "accuracy": float(ok.mean()),
                       "ece_before": float(ece(c, ok)), "ece_after": float(ece(remapped, ok))}
    entry = {
        "temperature": dict(in_use.temperature),
        "confidence_map": maps or None,
        "column_threshold": in_use.config.get("column_threshold") or None,
        "fit": _strict_json({
            "passes": passes, "map_only": True,
            "stores": [_describe_store(store) for store in stores],
            "seed": int(seed), "confidence_map": figures}),
    }
    return save_pass_calibration(artifact, out_dir, passes, entry)


def recalibrate_main(argv: list[str] | None = None) -> int:
    """Command line of :func:`recalibrate_artifact`; returns the exit code (2 on a user error)."""
    parser = argparse.ArgumentParser(
        prog="atom3d train recalibrate",
        description="Fit a model's calibration (column temperature, confidence map, column "
                    "threshold) for the logits averaged over N test-time augmentation passes, "
                    "as 'atom3d predict --tta-passes N' computes them, on separate simulated "
                    "stores never trained on, and write the model with it. Predictions with N "
                    "passes then use it; other numbers of passes keep theirs.")
    parser.add_argument("model", help="model artifact directory or packaged model name")
    parser.add_argument("-o", "--out", required=True, type=Path,
                        help="artifact directory to write (may be the model's own directory)")
    parser.add_argument("--data", required=True, type=Path, nargs="+", metavar="STORE",
                        help="calibration stores (atom3d simulate, seeds never trained on)")
    parser.add_argument("--tta-passes", type=int, default=8, metavar="N",
                        help="network passes per frame to calibrate for: 1, 4 or 8 (default 8)")
    parser.add_argument("--batch-size", type=int, default=2, help="images per batch (default 2)")
    parser.add_argument("--max-batches", type=int, default=None,
                        help="use at most this many batches (quick runs)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the shot noise drawn at each image's stored dose (default 0)")
    parser.add_argument("--map-only", action="store_true",
                        help="keep the temperature and column threshold in use and fit only a "
                             "confidence map on top of the current one, on the columns the "
                             "model reports as 'atom3d evaluate' finds and scores them: depths "
                             "and columns do not change, only the reported confidences")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        if args.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
        if args.map_only and args.max_batches is not None:
            raise UserError("--max-batches does not apply to --map-only")
        if args.map_only:
            out = refit_confidence_map(args.model, args.data, args.out, passes=args.tta_passes,
                                       batch_size=args.batch_size, seed=args.seed,
                                       progress=not args.quiet)
        else:
            out = recalibrate_artifact(args.model, args.data, args.out, passes=args.tta_passes,
                                       batch_size=args.batch_size,
                                       max_batches=args.max_batches, seed=args.seed,
                                       progress=not args.quiet)
    except UserError as error:
        print(f"atom3d: error: {error}", file=sys.stderr)
        return 2
    print(out)
    return 0


def export_main(argv: list[str] | None = None) -> int:
    """Command line of :func:`export_checkpoint`; returns the exit code (2 on a user error)."""
    parser = argparse.ArgumentParser(
        prog="atom3d train export",
        description="Fit the calibration temperature on the validation split of the dataset "
                    "and write a model artifact (model.safetensors + config.json) from a "
                    "training checkpoint.")
    parser.add_argument("checkpoint", type=Path, help="checkpoint (*.ckpt) of atom3d train fit")
    parser.add_argument("-o", "--out", required=True, type=Path, help="artifact directory")
    parser.add_argument("--data", type=Path, default=None,
                        help="dataset store (default: the one the checkpoint was trained on)")
    parser.add_argument("--name", default="ceo2-110", help="model name (default ceo2-110)")
    parser.add_argument("--max-batches", type=int, default=None,
                        help="use at most this many validation batches")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0)")
    parser.add_argument("--calibration-data", type=Path, nargs="+", default=None,
                        metavar="STORE",
                        help="also calibrate on every image of these separate stores (each "
                             "with its own seed, never trained on), with the validation split")
    parser.add_argument("--val-structures", default=None, metavar="JSON",
                        help="validation structures as a JSON list, e.g. '[8, 37]' (default: "
                             "the split the checkpoint records)")
    args = parser.parse_args(argv)
    try:
        val = None
        if args.val_structures is not None:
            try:
                val = json.loads(args.val_structures)
                if not isinstance(val, list) or not all(isinstance(v, int) for v in val):
                    raise ValueError
            except ValueError:
                raise UserError(f"--val-structures must be a JSON list of integers, got "
                                f"{args.val_structures!r}") from None
        out = export_checkpoint(args.checkpoint, args.data, args.out, name=args.name,
                                max_batches=args.max_batches, num_workers=args.workers,
                                calibration_store=args.calibration_data, val_structures=val)
    except UserError as error:
        print(f"atom3d: error: {error}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(export_main())
