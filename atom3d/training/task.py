"""The LightningModule that trains the column-depth U-Net.

One :class:`~atom3d.models.unet.UNet` with one head per species (Ce, O) labels every
pixel with a class 0 (background) … K (a column of K atoms). The loss is, per species,
the spatially and class-weighted cross-entropy against soft targets
(:func:`atom3d.training.losses.weighted_soft_ce`), summed with ``species_weights``.
Class weights come from the store's ``class_frequencies``
(:func:`~atom3d.training.losses.class_weights_from_frequencies`).

Each validation epoch logs, per species (``ce_`` / ``o_``):

``val/loss``
    The training loss on the validation items.
``val/{sp}_pixel_acc``, ``val/{sp}_column_pixel_acc``
    Fraction of pixels whose argmax equals the hard target (the class if the target
    amplitude is >= 0.5, else background), over all pixels and over column-core pixels
    (hard target != 0). Padding is left out.
``val/{sp}_f1``, ``val/{sp}_exact``, ``val/{sp}_within1``, ``val/{sp}_mae``
    Column-level scores: :func:`atom3d.inference.columns.find_columns` on the predicted
    probabilities, matched to the true columns with
    :func:`atom3d.evaluation.metrics.column_metrics` (F1 of detection; fraction of
    matched columns with the exact depth / within one atom; mean absolute depth error
    [atoms]). Pooled over the epoch (micro average) and over DDP ranks. Columns within
    ``eval_margin_A`` of the edge of the image region are ignored (half-cut columns at
    the crop edge are not a detection problem).

Constructor arguments are the config schema of ``model:`` in ``configs/train/*.yaml``;
``max_depth`` and ``class_frequencies`` are filled in from the dataset by the CLI.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

from atom3d.evaluation.metrics import column_metrics
from atom3d.inference.columns import find_columns
from atom3d.models.unet import UNet
from atom3d.training.losses import class_weights_from_frequencies, soft_targets, weighted_soft_ce

__all__ = ["SPECIES", "ColumnSegmentationTask", "hard_labels", "score_columns"]

#: Species in head order; ``name`` is the prefix of batch keys and logged metrics.
SPECIES = (("Ce", "ce"), ("O", "o"))

#: Memory format of the network's weights while it trains (``fit``; set in :meth:`setup`,
#: before a data-parallel strategy wraps the model, and undone in :meth:`teardown`, so
#: calibration, export and prediction see ordinary contiguous weights). On 2 CPU cores
#: (session 29, base width 24, depth 4, batch 8 of 128² px, forward + backward + AdamW)
#: a step takes 0.57 s channels-last against 0.75 s contiguous; the logits agree to 1e-4.
#: (Prediction stays contiguous: channels-last made its network about 1.7× faster on one
#: pass of a 512² frame, measured beside a simulation, which would raise the share of
#: its time spent outside the network above the 0.15 that ``benchmarks/predict.py``
#: holds it to; ``training/README.md``, session 29.)
TRAIN_MEMORY_FORMAT = torch.channels_last

#: Counters accumulated per species over a validation epoch.
_COUNTS = ("pixels", "pixels_ok", "column_pixels", "column_pixels_ok",
           "tp", "fp", "fn", "exact", "within1", "abs_error")


def hard_labels(class_map: Tensor, amp: Tensor) -> Tensor:
    """The argmax of the soft target: the class where ``amp >= 0.5``, else 0 (int64)."""
    return torch.where(amp >= 0.5, class_map.long(), torch.zeros_like(class_map, dtype=torch.long))


def scored_region(valid: np.ndarray, pixel_size_A: float, margin_A: float):
    """``inside(x, y)``: whether positions [Å] lie ``margin_A`` within the valid pixels' box."""
    rows, cols = np.nonzero(valid)
    if rows.size == 0:
        lo = hi = np.zeros(2)
    else:
        lo = np.array([cols.min(), rows.min()]) * pixel_size_A + margin_A
        hi = np.array([cols.max(), rows.max()]) * pixel_size_A - margin_A

    def inside(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (x >= lo[0]) & (x <= hi[0]) & (y >= lo[1]) & (y <= hi[1])

    return inside


def score_columns(probs: np.ndarray, true_columns: np.ndarray, valid: np.ndarray,
                  pixel_size_A: float, *, min_separation_A: float, match_distance_A: float,
                  threshold: float = 0.5, margin_A: float = 1.0) -> dict[str, Any]:
    """Find the columns of one species in one image and score them against the truth.

    Parameters
    ----------
    probs : numpy.ndarray
        ``(K + 1, H, W)`` class probabilities.
    true_columns : numpy.ndarray
        ``(N, 2 + 1)`` rows ``(x [Å], y [Å], depth)`` of this species, pixel (r, c) at
        (c·p, r·p).
    valid : numpy.ndarray
        ``(H, W)`` bool, the pixels that show the image (not padding).
    pixel_size_A : float
        Pixel size p [Å].
    min_separation_A, match_distance_A, threshold : float
        Passed to :func:`~atom3d.inference.columns.find_columns` and
        :func:`~atom3d.evaluation.metrics.column_metrics`.
    margin_A : float
        Predicted and true columns closer than this to the edge of the valid region
        [Å] are left out of the scores.

    Returns
    -------
    dict
        The output of :func:`~atom3d.evaluation.metrics.column_metrics`.
    """
    table = find_columns(probs, pixel_size_A, min_separation_A, threshold=threshold)
    inside = scored_region(valid, pixel_size_A, margin_A)
    keep = inside(table.x_A, table.y_A)
    true_columns = np.asarray(true_columns, np.float64).reshape(-1, 3)
    keep_true = inside(true_columns[:, 0], true_columns[:, 1])
    pred = {"x": table.x_A[keep], "y": table.y_A[keep], "depth": table.depth[keep],
            "confidence": table.confidence[keep]}
    true = {"x": true_columns[keep_true, 0], "y": true_columns[keep_true, 1],
            "depth": true_columns[keep_true, 2].astype(np.int64)}
    return column_metrics(pred, true, match_distance_A)


class ColumnSegmentationTask(pl.LightningModule):
    """U-Net training on soft column targets, with column-level validation.

    Parameters
    ----------
    max_depth : int
        Largest column depth K [atoms]; each head has K + 1 classes. Set from the
        dataset (``max_depth`` attr) by the CLI.
    class_frequencies : dict, optional
        ``{"Ce": [K + 1 floats], "O": [...]}`` class frequencies of the dataset (set by
        the CLI); None = equal class weights.
    base_width, depth, norm, dropout, max_width_factor
        U-Net architecture (:class:`atom3d.models.unet.UNet`); crops must be multiples
        of ``2 ** depth`` pixels.
    species_weights : tuple of float
        Weights of the Ce and O losses in the total loss.
    class_weight_power, class_weight_max_ratio : float
        Inverse-frequency class weights ``freq ** -power`` capped at ``max_ratio``
        (:func:`~atom3d.training.losses.class_weights_from_frequencies`).
    lr : float
        Peak learning rate of AdamW.
    weight_decay : float
        AdamW weight decay.
    schedule : {'cosine', 'onecycle', 'constant'}
        Learning-rate schedule per optimizer step over the whole fit: ``cosine`` = linear
        warm-up over ``warmup_fraction`` then cosine decay to ``min_lr_ratio · lr``
        (robust to resuming with more epochs: it stays at the floor past the end);
        ``onecycle`` = :class:`torch.optim.lr_scheduler.OneCycleLR`; ``constant``.
    warmup_fraction : float
        Fraction of all steps used for warm-up.
    min_lr_ratio : float
        Final learning rate of ``cosine`` relative to ``lr``.
    min_separation_A : tuple of float
        Smallest distance between two columns [Å] for Ce and O in validation column
        finding (CeO2 [110]: nearest Ce–Ce 3.31 Å, O–O 1.91 Å).
    match_distance_A : tuple of float
        Matching distance [Å] of predicted to true columns for Ce and O.
    column_threshold : float
        Minimum presence ``1 − p0`` of a column peak.
    eval_margin_A : float
        Columns nearer than this to the image edge [Å] are not scored.
    init_weights : str, optional
        A Lightning checkpoint (``.ckpt``) whose network weights start this fit:
        fine-tuning with a fresh optimizer and learning-rate schedule (e.g. on a larger
        dataset), unlike ``--ckpt_path``, which resumes the whole training state. The
        architecture must match, or be narrower with the same depth and classes: a
        narrower network is widened to this one's ``base_width`` / ``max_width_factor``
        so that it computes the same output (Net2WiderNet, :mod:`atom3d.models.widen`:
        new channels copy old ones, 1 % noise on the copies' weights). The class-weight
        buffers are this dataset's own. Loaded with ``torch.load(weights_only=True)``
        (no arbitrary unpickling).
    """

    def __init__(
        self,
        max_depth: int = 22,
        class_frequencies: dict[str, list[float]] | None = None,
        base_width: int = 32,
        depth: int = 4,
        norm: Literal["batch", "group"] = "batch",
        dropout: float = 0.0,
        max_width_factor: int = 4,
        species_weights: tuple[float, float] = (1.0, 1.0),
        class_weight_power: float = 0.5,
        class_weight_max_ratio: float = 10.0,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        schedule: Literal["cosine", "onecycle", "constant"] = "cosine",
        warmup_fraction: float = 0.03,
        min_lr_ratio: float = 0.01,
        min_separation_A: tuple[float, float] = (2.6, 1.6),
        match_distance_A: tuple[float, float] = (1.0, 0.7),
        column_threshold: float = 0.5,
        eval_margin_A: float = 1.0,
        init_weights: str | None = None,
    ) -> None:
        super().__init__()
        if max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {max_depth}")
        if not 0 <= warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
        self.save_hyperparameters()
        self.n_classes = int(max_depth) + 1
        self.configure_models()
        self.configure_losses()
        self._val_counts: Tensor | None = None
        if init_weights:
            self.load_network_weights(init_weights)

    def load_network_weights(self, path: str) -> None:
        """Copy the U-Net weights of checkpoint ``path`` into :attr:`net` (see ``init_weights``)."""
        from atom3d.errors import UserError

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        except (OSError, KeyError, RuntimeError, pickle.UnpicklingError) as error:
            raise UserError(f"model.init_weights: cannot read a checkpoint from {path} "
                            f"({error})") from None
        net = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
        try:
            self.net.load_state_dict(net, strict=True)
            return
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0]
        from atom3d.models.widen import widen_state_dict

        try:
            wide = widen_state_dict(net, self.net.state_dict(), noise=0.01, seed=0)
        except (ValueError, KeyError, RuntimeError):
            raise UserError(f"model.init_weights: {path} holds another architecture "
                            f"({first})") from None
        self.net.load_state_dict(wide, strict=True)
        from lightning.pytorch.utilities import rank_zero_info

        rank_zero_info(f"model.init_weights: {path} widened to base width "
                       f"{self.hparams.base_width}, max width factor "
                       f"{self.hparams.max_width_factor} (Net2WiderNet)")

    # -- set-up -------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Put the weights in :data:`TRAIN_MEMORY_FORMAT` for ``fit``."""
        if stage == "fit":
            self.net.to(memory_format=TRAIN_MEMORY_FORMAT)

    def teardown(self, stage: str) -> None:
        """Contiguous weights again after ``fit`` (what export and prediction use)."""
        if stage == "fit":
            self.net.to(memory_format=torch.contiguous_format)

    def configure_models(self) -> None:
        """Build the U-Net (heads in species order Ce, O)."""
        hp = self.hparams
        self.net = UNet(in_channels=1, base_width=hp.base_width, depth=hp.depth,
                        n_classes=(self.n_classes, self.n_classes), norm=hp.norm,
                        dropout=hp.dropout, max_width_factor=hp.max_width_factor)

    def configure_losses(self) -> None:
        """Class weights per species, as (persistent) buffers ``class_weights_{ce,o}``."""
        hp = self.hparams
        for species, name in SPECIES:
            freq = None if hp.class_frequencies is None else hp.class_frequencies.get(species)
            if freq is None:
                weights = torch.ones(self.n_classes)
            else:
                if len(freq) != self.n_classes:
                    raise ValueError(f"class_frequencies[{species!r}] has {len(freq)} entries, "
                                     f"expected max_depth + 1 = {self.n_classes}")
                weights = class_weights_from_frequencies(freq, hp.class_weight_power,
                                                         hp.class_weight_max_ratio)
            self.register_buffer(f"class_weights_{name}", weights)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.schedule == "constant":
            return {"optimizer": optimizer}
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1
        total = max(int(total) if math.isfinite(total) else 0, 1)
        if hp.schedule == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=hp.lr, total_steps=total + 1,
                pct_start=max(hp.warmup_fraction, 1e-3))
        else:
            warmup = max(int(round(hp.warmup_fraction * total)), 0)
            floor = float(hp.min_lr_ratio)

            def factor(step: int) -> float:
                if step < warmup:
                    return (step + 1) / (warmup + 1)
                progress = min((step - warmup) / max(total - warmup, 1), 1.0)
                return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- steps --------------------------------------------------------------------------
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits ``(B, K + 1, H, W)`` for Ce and O."""
        return self.net(x)

    def losses(self, batch: Mapping[str, Tensor],
               logits: Sequence[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and the loss per species (key = species prefix)."""
        per_species = {}
        total = logits[0].new_zeros((), dtype=torch.float32)
        for (_, name), z, w in zip(SPECIES, logits, self.hparams.species_weights, strict=True):
            target = soft_targets(batch[f"{name}_class"].long(), batch[f"{name}_amp"],
                                  self.n_classes)
            loss = weighted_soft_ce(z, target, batch[f"{name}_weight"],
                                    getattr(self, f"class_weights_{name}"))
            per_species[name] = loss
            total = total + w * loss
        return total, per_species

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        logits = self(batch["image"])
        loss, per_species = self.losses(batch, logits)
        b = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=b,
                 sync_dist=True)
        for name, value in per_species.items():
            self.log(f"train/loss_{name}", value, on_step=False, on_epoch=True, batch_size=b,
                     sync_dist=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_counts = torch.zeros(len(SPECIES), len(_COUNTS), dtype=torch.float64,
                                       device=self.device)

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        logits = self(batch["image"])
        loss, per_species = self.losses(batch, logits)
        b = batch["image"].shape[0]
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, sync_dist=True, batch_size=b)
        for name, value in per_species.items():
            self.log(f"val/loss_{name}", value, on_epoch=True, sync_dist=True, batch_size=b)
        if self._val_counts is None:
            self.on_validation_epoch_start()
        hp = self.hparams
        columns = batch["columns"].detach().cpu().numpy()
        pixel = batch["pixel_size_A"].detach().cpu().numpy()
        for s, ((_, name), z) in enumerate(zip(SPECIES, logits, strict=True)):
            valid = batch[f"{name}_weight"] > 0
            hard = hard_labels(batch[f"{name}_class"], batch[f"{name}_amp"])
            ok = (z.argmax(dim=1) == hard) & valid
            core = valid & (hard > 0)
            counts = self._val_counts[s]
            counts[0] += valid.sum()
            counts[1] += ok.sum()
            counts[2] += core.sum()
            counts[3] += (ok & core).sum()
            probs = torch.softmax(z.float(), dim=1).detach().cpu().numpy()
            valid_np = valid.detach().cpu().numpy()
            for i in range(b):
                rows = columns[i]
                rows = rows[np.isfinite(rows[:, 0]) & (rows[:, 2] == s)]
                result = score_columns(probs[i], rows[:, [0, 1, 3]], valid_np[i], float(pixel[i]),
                                       min_separation_A=hp.min_separation_A[s],
                                       match_distance_A=hp.match_distance_A[s],
                                       threshold=hp.column_threshold, margin_A=hp.eval_margin_A)
                error = np.abs(result["pred_depth"] - result["true_depth"])
                counts[4:] += torch.tensor(
                    [result["tp"], result["fp"], result["fn"], np.sum(error == 0),
                     np.sum(error <= 1), np.sum(error)], dtype=torch.float64, device=counts.device)

    def on_validation_epoch_end(self) -> None:
        if self._val_counts is None:
            return
        counts = self.trainer.strategy.reduce(self._val_counts, reduce_op="sum")
        counts = counts.detach().cpu().numpy()
        self._val_counts = None
        for s, (_, name) in enumerate(SPECIES):
            c = dict(zip(_COUNTS, counts[s], strict=True))
            scores = {
                "pixel_acc": _ratio(c["pixels_ok"], c["pixels"]),
                "column_pixel_acc": _ratio(c["column_pixels_ok"], c["column_pixels"]),
                "f1": _ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"]),
                "exact": _ratio(c["exact"], c["tp"]),
                "within1": _ratio(c["within1"], c["tp"]),
                "mae": _ratio(c["abs_error"], c["tp"]),
            }
            for key, value in scores.items():
                # Already pooled over ranks: the sync is a mean of equal values.
                self.log(f"val/{name}_{key}", value, on_epoch=True, sync_dist=True)


def _ratio(num: float, den: float) -> float:
    """``num / den``, 0 when ``den`` is 0 (a logged metric must be finite)."""
    return float(num) / float(den) if den > 0 else 0.0
