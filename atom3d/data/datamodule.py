"""LightningDataModule over a dataset store: split by structure, training and validation loaders.

Constructor arguments are the config schema of ``data:`` in ``configs/train/*.yaml``.
The store is read once at construction (its ``max_depth`` and ``class_frequencies`` set
the network heads and class weights, see :mod:`atom3d.training.main`); items are made by
:class:`atom3d.data.dataset.ColumnDataset`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from atom3d.data.dataset import (
    ColumnDataset,
    StoreInfo,
    explicit_split,
    image_indices,
    read_store_info,
    split_structures,
)
from atom3d.errors import ConfigError

__all__ = ["ColumnDataModule"]


class ColumnDataModule(pl.LightningDataModule):
    """Training and validation data from ``atom3d simulate`` stores.

    Parameters
    ----------
    path : str
        The dataset store (``*.zarr``): split by structure into training and validation.
    extra_train_paths : list of str, optional
        More stores whose finished structures all train (none validates): the same
        campaign config as ``path`` simulated with other seeds (checked; only the store
        size and the mix of structure kinds, the ``p_*`` keys of ``structure``, may
        differ, e.g. ``configs/simulate/ceo2_110_particles.yaml`` beside
        ``ceo2_110.yaml``). Validation,
        the split saved in checkpoints and the calibration at export stay on ``path``
        alone. The class frequencies (class weights) are those of all training stores
        together, weighted by images.
    batch_size : int
        Training crops per batch (per device under DDP).
    num_workers : int
        DataLoader worker processes (0 = load in the training process).
    crop_px : int
        Side of the square training crop [px at ``pixel_size_A``]; a multiple of
        ``size_multiple``. A 256 px image at 0.15 Å/px is ~192 px at 0.2 Å/px: crops up
        to 192 px never need padding.
    val_crop_px : int, optional
        Side of the centred validation crop [px]; None = the whole image (reflected up to
        one common size).
    val_batch_size : int, optional
        Validation batch size (default ``batch_size``).
    val_fraction : float
        Fraction of the *structures* held out for validation (all images of a structure
        go to the same side).
    split_seed : int
        Seed of the structure split.
    val_structures : list of int, optional
        Explicit validation structures (indices into the store); overrides
        ``val_fraction``/``split_seed``, and every other finished structure trains. Keeps
        a fine-tuning run's validation (and the calibration fitted on it) free of the
        structures an earlier run trained on when the store has grown.
    pixel_size_A : float
        Model pixel size [Å] the images are resampled to.
    pixel_jitter : float
        Training: relative error ε of the pixel size (U(−ε, +ε)), labels on the same grid.
    dose_range_e_per_A2 : tuple of float, optional
        Training: draw each item's dose log-uniformly from this range [e/Å²]; None =
        the image's stored dose. Validation always uses the stored dose.
    gain_range : tuple of float
        Training: counts multiplied by U(low, high).
    augment : bool
        Training: random 90° rotations and flips.
    seed : int
        Mixed into the noise of every item (validation noise: only this and the index).
    size_multiple : int
        Crops must be multiples of it; the CLI sets it to ``2 ** model.depth``.
    persistent_workers : bool
        Keep workers alive between epochs (faster start of an epoch).
    cache_images : bool
        Keep the noise-free images in each worker's memory once read (1 GB per worker
        for 4000 images of 256²); with ``persistent_workers`` later epochs read no zarr.
    """

    def __init__(
        self,
        path: str = "data/train.zarr",
        extra_train_paths: list[str] | None = None,
        batch_size: int = 8,
        num_workers: int = 1,
        crop_px: int = 128,
        val_crop_px: int | None = None,
        val_batch_size: int | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        val_structures: list[int] | None = None,
        pixel_size_A: float = 0.2,
        pixel_jitter: float = 0.03,
        dose_range_e_per_A2: tuple[float, float] | None = None,
        gain_range: tuple[float, float] = (0.8, 1.25),
        augment: bool = True,
        seed: int = 0,
        size_multiple: int = 16,
        persistent_workers: bool = False,
        cache_images: bool = False,
    ) -> None:
        super().__init__()
        for name, crop in (("crop_px", crop_px), ("val_crop_px", val_crop_px)):
            if crop is not None and (crop < 1 or crop % size_multiple):
                raise ConfigError(f"data.{name}={crop} must be a positive multiple of "
                                  f"{size_multiple} (2 ** model.depth)")
        if batch_size < 1 or num_workers < 0:
            raise ConfigError("data.batch_size must be >= 1 and data.num_workers >= 0")
        self.save_hyperparameters()
        self.path = str(path)
        self.info = read_store_info(self.path)
        if val_structures is None:
            self.train_structures, self.val_structures = split_structures(
                self.info.n_structures, val_fraction, split_seed, self.info.done)
        else:
            self.train_structures, self.val_structures = explicit_split(
                self.info.n_structures, val_structures, self.info.done)
        self.extra_infos: list[StoreInfo] = []
        for extra in extra_train_paths or []:
            self.extra_infos.append(_matching_info(self.info, extra, self.extra_infos))
        self.train_dataset: ColumnDataset | None = None
        self.val_dataset: ColumnDataset | None = None

    @property
    def max_depth(self) -> int:
        """Largest column depth K [atoms] of the store."""
        return self.info.max_depth

    @property
    def class_frequencies(self) -> dict[str, list[float]]:
        """Class frequencies per species of the training stores (image-weighted mean)."""
        if not self.extra_infos:
            return self.info.class_frequencies
        infos = [self.info, *self.extra_infos]
        images = np.array([_finished_images(info) for info in infos], float)
        out = {}
        for species in self.info.class_frequencies:
            freq = np.array([info.class_frequencies[species] for info in infos])
            mean = images @ freq / images.sum()
            out[species] = (mean / mean.sum()).tolist()
        return out

    def _store_dataset(self, info: StoreInfo, structures: np.ndarray, train: bool) -> ColumnDataset:
        hp = self.hparams
        indices = image_indices(structures, info.n_images, info.images_per_structure)
        return ColumnDataset(
            info.path, indices, train=train, pixel_size_A=hp.pixel_size_A,
            crop_px=hp.crop_px if train else hp.val_crop_px, size_multiple=hp.size_multiple,
            pixel_jitter=hp.pixel_jitter, dose_range_e_per_A2=hp.dose_range_e_per_A2,
            gain_range=hp.gain_range, augment=hp.augment, seed=hp.seed, info=info,
            cache_images=hp.cache_images)

    def _dataset(self, train: bool) -> Dataset:
        if not train:
            return self._store_dataset(self.info, self.val_structures, train=False)
        main = self._store_dataset(self.info, self.train_structures, train=True)
        if not self.extra_infos:
            return main
        return ConcatDataset([main, *(self._store_dataset(info, np.flatnonzero(info.done), True)
                                      for info in self.extra_infos)])

    def state_dict(self) -> dict[str, list[int]]:
        """The structure split, saved in every checkpoint: an export of the checkpoint
        calibrates on these validation structures even after the store has grown (a
        fractional split of a grown store would hold structures the model trained on)."""
        return {"train_structures": self.train_structures.tolist(),
                "val_structures": self.val_structures.tolist()}

    def load_state_dict(self, state_dict: dict[str, list[int]]) -> None:
        """Keep a resumed run on the split it started with (see :meth:`state_dict`)."""
        if "val_structures" not in state_dict:
            return
        val = np.asarray(state_dict["val_structures"], np.int64)
        train = np.asarray(state_dict["train_structures"], np.int64)
        if not (np.array_equal(val, self.val_structures)
                and np.array_equal(train, self.train_structures)):
            warnings.warn("the checkpoint's train/validation split differs from the one of "
                          "the store now; resuming on the checkpoint's split", stacklevel=2)
            self.train_structures, self.val_structures = train, val
            self.train_dataset = self.val_dataset = None

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._dataset(train=True)
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            self.val_dataset = self._dataset(train=False)

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                          drop_last=shuffle and len(dataset) > batch_size,
                          persistent_workers=self.hparams.persistent_workers and workers > 0)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_dataset, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        return self._loader(self.val_dataset, self.hparams.val_batch_size or self.hparams.batch_size,
                            shuffle=False)


def _finished_images(info: StoreInfo) -> int:
    """Number of images of the finished structures of a store."""
    return len(image_indices(np.flatnonzero(info.done), info.n_images, info.images_per_structure))


_SIZE_KEYS = ("n_images", "images_per_structure")


def structure_mix(structure: dict) -> dict[str, float]:
    """The structure-kind probabilities (the ``p_*`` keys) of a campaign's ``structure``."""
    return {k: float(v) for k, v in structure.items() if k.startswith("p_")}


def _domain(key: str, value):
    """A campaign config section as far as it defines the training domain (see
    :func:`_matching_info`): store sizes and the structure-kind probabilities dropped."""
    if key in _SIZE_KEYS:
        return None
    if key == "structure" and isinstance(value, dict):
        mix = structure_mix(value)
        return {k: v for k, v in value.items() if k not in mix}
    return value


def _matching_info(main: StoreInfo, path: str, others: list[StoreInfo]) -> StoreInfo:
    """Read an extra training store; it must be new and label like ``main`` (else ConfigError)."""
    info = read_store_info(str(path))
    if Path(info.path).resolve() == Path(main.path).resolve():
        raise ConfigError(f"data.extra_train_paths repeats data.path {path}: its validation "
                          "structures would train")
    if any(Path(info.path).resolve() == Path(o.path).resolve() for o in others):
        raise ConfigError(f"data.extra_train_paths lists {path} twice")
    # the same campaign config (hence labels, depths and the training domain recorded
    # at export), another seed (else the same structures twice). Allowed to differ: the
    # store's size and the mix of structure kinds (the ``p_*`` probabilities of
    # ``structure``, e.g. a particles-only store beside the default mix), never a range.
    differ = sorted(k for k in set(info.config) | set(main.config)
                    if _domain(k, info.config.get(k)) != _domain(k, main.config.get(k)))
    if differ or info.max_depth != main.max_depth:
        raise ConfigError(f"data.extra_train_paths: {path} was simulated with another campaign "
                          f"config than {main.path} (differs in: "
                          f"{', '.join(differ) or 'max_depth'}); use one config, other seeds")
    if info.seed == main.seed:
        raise ConfigError(f"data.extra_train_paths: {path} has the seed of {main.path} "
                          f"({main.seed}): the same structures twice")
    return info
