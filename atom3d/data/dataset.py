"""Training and validation items from a dataset store (torch ``Dataset``, no Lightning).

One item is made from one noise-free image of the store (see :mod:`atom3d.data.store`):

1. **Shot noise**, drawn on the fly: counts ~ Poisson(dose · p_det² · image) at the
   image's detector pixel size ``p_det`` [Å] (``params[:, "pixel_size_A"]``) and its
   stored dose [e/Å²], or (training, optional) a dose drawn log-uniformly from
   ``dose_range_e_per_A2``. Every epoch therefore sees new noise.
2. **Gain** (training): counts × U(gain_range), undone by the normalisation; it checks
   that nothing downstream depends on the detector gain.
3. **Resampling** to the model pixel size ``pixel_size_A`` [Å] with
   :func:`atom3d.data.transforms.resample`. In training the grid pixel is
   ``pixel_size_A · (1 + ε)``, ε ~ U(−pixel_jitter, +pixel_jitter), and the labels are
   computed on that same grid: the network is told the pixel is ``pixel_size_A`` while
   it really is ``(1 + ε)`` times that, i.e. it learns to tolerate a mis-calibrated
   pixel size of a few %.
4. **Normalisation** of the whole resampled frame with
   :func:`atom3d.data.transforms.normalize` (the very function prediction uses).

   Training items take a shortcut with the same result up to about a per cent: only the
   detector pixels under the crop are drawn and resampled, and the frame's mean and
   standard deviation are their expectations over the Poisson noise, computed from the
   noise-free image (:func:`expected_frame_stats`). A real noisy frame's own statistics
   scatter around these (measured on 60 frames of the default set at 58–20 000 e/Å²:
   mean within 0.011 standard deviations, standard deviation within 0.7 %); the
   shortcut draws 4–10× fewer Poisson numbers.
5. **Crop** of ``crop_px`` × ``crop_px`` pixels: random (training) or centred
   (validation). A crop larger than the image is filled by reflection, as the
   inference tiler does, and those pixels get class 0 and loss weight 0.
6. **Labels** on the crop's grid from the structure's column table
   (:func:`atom3d.data.store.structure_columns`) with
   :func:`atom3d.simulation.labels.column_targets` (``sigma_A``, ``core_weight`` and
   ``rim_weight`` from the store's own ``labels`` config), then
   :func:`~atom3d.simulation.labels.weight_map`.
7. **Random 90° rotation and flip** (training), applied to image and labels alike.

Validation items are deterministic: noise seeded by the image index, the stored dose,
no gain, no jitter, no rotation, a centred crop (or the whole image padded to a fixed
size), and they also carry the true column table in crop coordinates.

Item keys (torch tensors; ``H = W = crop``)
    ``image`` (1, H, W) float32 — the normalised network input;
    ``ce_class``, ``o_class`` (H, W) uint8 — class map (0 background, k atoms);
    ``ce_amp``, ``o_amp`` (H, W) float32 — target amplitude in [0, 1];
    ``ce_weight``, ``o_weight`` (H, W) float32 — spatial loss weights (0 in padding);
    ``index`` int64 — image index in the store; ``pixel_size_A`` float32 — the true
    pixel size of the item's grid [Å]; ``dose_e_per_A2`` float32 — the dose drawn;
    validation only: ``columns`` (MAX_COLUMNS, 4) float32, rows ``(x [Å], y [Å],
    species (0 Ce, 1 O), depth)`` in the crop's coordinates (pixel (r, c) at
    (c·p, r·p)), columns inside the un-padded region only, NaN rows after the last.

Soft targets are built on the batch by :func:`atom3d.training.losses.soft_targets`
(class and amplitude maps collate far cheaper than ``(K + 1, H, W)`` targets).

Random numbers: no global seeds. Training items draw from one generator per process
(per DataLoader worker), seeded from ``seed``, torch's worker seed (or
``torch.initial_seed()`` without workers) and the distributed rank, so every worker,
rank and epoch sees different noise, reproducibly under ``seed_everything``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from atom3d.data.noise import add_shot_noise, expected_counts
from atom3d.data.store import (
    MAX_COLUMNS,
    class_frequencies,
    images_of_structure,
    open_store,
    structure_columns,
)
from atom3d.data.transforms import (
    normalize,
    resample,
    resample_block,
    resampled_shape,
    source_window,
)
from atom3d.errors import ConfigError, InputFileError
from atom3d.simulation.labels import column_targets, weight_map

__all__ = [
    "SPECIES",
    "ColumnDataset",
    "StoreInfo",
    "expected_frame_stats",
    "image_indices",
    "label_window",
    "read_store_info",
    "render_item",
    "split_structures",
]

#: Species in head order of the network, and their code in the column table.
SPECIES = ("Ce", "O")
#: Seed-sequence tag separating validation noise from training noise.
_VAL_TAG = 0x7A1


@dataclass(frozen=True)
class StoreInfo:
    """What training needs to know about a dataset store (read once from its attrs).

    Attributes
    ----------
    path : str
        The store.
    n_images, n_structures, images_per_structure : int
        Sizes (see :mod:`atom3d.data.store`).
    image_shape : tuple of int
        ``(H, W)`` of the stored images [px].
    max_depth : int
        Largest class K [atoms] of both species.
    class_frequencies : dict
        ``{"Ce": [K + 1 floats], "O": [...]}`` soft-target mass per class.
    sigma_A, core_weight, rim_weight : float
        Label parameters of the store (``config["labels"]``).
    config : dict
        The full campaign config of the store.
    done : numpy.ndarray
        ``(S,)`` bool, structures written.
    pixel_size_A, dose_e_per_A2 : numpy.ndarray
        ``(N,)`` detector pixel size [Å] and dose [e/Å²] of every image.
    structure_index : numpy.ndarray
        ``(N,)`` int64, the structure of every image.
    seed : int or None
        The campaign seed (``atom3d simulate --seed``).
    """

    path: str
    n_images: int
    n_structures: int
    images_per_structure: int
    image_shape: tuple[int, int]
    max_depth: int
    class_frequencies: dict[str, list[float]]
    sigma_A: float
    core_weight: float
    rim_weight: float
    config: dict[str, Any]
    done: np.ndarray
    pixel_size_A: np.ndarray
    dose_e_per_A2: np.ndarray
    structure_index: np.ndarray
    seed: int | None = None


def read_store_info(path: str | os.PathLike[str]) -> StoreInfo:
    """Read :class:`StoreInfo` of a store; a missing or incomplete store is a user error."""
    root = open_store(path)
    attrs = dict(root.attrs)
    done = np.asarray(root["done"][:], bool)
    if not done.any():
        raise InputFileError(f"dataset {path} has no finished structure yet")
    if attrs.get("complete", False) and "class_frequencies" in attrs:
        freqs = attrs["class_frequencies"]
    else:  # a store still being simulated: use the structures finished so far
        warnings.warn(f"dataset {path} is incomplete: using its {int(done.sum())} finished "
                      f"structures of {done.size}", stacklevel=2)
        freqs = class_frequencies(root)
    labels = attrs["config"]["labels"]
    names = list(attrs["param_names"])
    params = np.asarray(root["params"][:])
    structure = params[:, names.index("structure_index")]
    return StoreInfo(
        path=str(path),
        n_images=int(attrs["n_images"]),
        n_structures=int(attrs["n_structures"]),
        images_per_structure=int(attrs["images_per_structure"]),
        image_shape=tuple(int(n) for n in root["image"].shape[1:]),
        max_depth=int(attrs["max_depth"]),
        class_frequencies={s: [float(f) for f in freqs[s]] for s in SPECIES},
        sigma_A=float(labels["sigma_A"]),
        core_weight=float(labels["core_weight"]),
        rim_weight=float(labels["rim_weight"]),
        config=attrs["config"],
        done=done,
        pixel_size_A=params[:, names.index("pixel_size_A")],
        dose_e_per_A2=params[:, names.index("dose_e_per_A2")],
        structure_index=np.where(np.isfinite(structure), structure, -1).astype(np.int64),
        seed=None if attrs.get("seed") is None else int(attrs["seed"]),
    )


def split_structures(n_structures: int, val_fraction: float, seed: int = 0,
                     done: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/validation split by structure (never one structure in both).

    Parameters
    ----------
    n_structures : int
        Number of structures S.
    val_fraction : float
        Fraction of structures for validation, in [0, 1). When > 0 at least one
        structure goes to validation and at least one stays for training.
    seed : int
        Seed of the permutation (the split depends on nothing else).
    done : numpy.ndarray, optional
        ``(S,)`` bool; structures not done are left out of both.

    Returns
    -------
    train, val : numpy.ndarray
        Sorted structure indices (int64).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5B17])).permutation(
        n_structures)
    if done is not None:
        order = order[np.asarray(done, bool)[order]]
    n = len(order)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    train, val = order[:n - n_val], order[n - n_val:]
    return np.sort(train).astype(np.int64), np.sort(val).astype(np.int64)


def explicit_split(n_structures: int, val_structures: Sequence[int],
                   done: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation split with the validation structures given explicitly.

    Every finished structure not in ``val_structures`` trains. Raises ConfigError for
    an index outside the store, a validation structure not finished, or no training
    structure left.
    """
    val = np.unique(np.asarray(list(val_structures), np.int64))
    if val.size == 0:
        raise ConfigError("data.val_structures is empty (use null for the fractional split)")
    if val.min() < 0 or val.max() >= n_structures:
        raise ConfigError(f"data.val_structures must lie in [0, {n_structures}), got "
                          f"{val.min()}..{val.max()}")
    finished = np.ones(n_structures, bool) if done is None else np.asarray(done, bool)
    if not finished[val].all():
        missing = val[~finished[val]].tolist()
        raise ConfigError(f"data.val_structures {missing[:5]} are not simulated in the store yet")
    train = np.setdiff1d(np.flatnonzero(finished), val)
    if train.size == 0:
        raise ConfigError("data.val_structures leaves no finished structure for training")
    return train.astype(np.int64), val


def image_indices(structures: Sequence[int], n_images: int, images_per_structure: int) -> np.ndarray:
    """Indices of all images of the given structures (int64, in structure order)."""
    out = [i for s in structures for i in images_of_structure(int(s), n_images, images_per_structure)]
    return np.asarray(out, np.int64)


def _reflect_window(image: np.ndarray, origin: tuple[int, int],
                    size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The window ``[r0, r0 + h) × [c0, c0 + w)`` of ``image``, reflected beyond its edges.

    Returns the window and a bool mask of the pixels that lie inside the image.
    """
    (r0, c0), (h, w) = origin, size
    big_h, big_w = image.shape
    pads = [(max(-r0, 0), max(r0 + h - big_h, 0)), (max(-c0, 0), max(c0 + w - big_w, 0))]
    padded = np.pad(image, pads, mode="reflect") if any(p != (0, 0) for p in pads) else image
    rs, cs = r0 + pads[0][0], c0 + pads[1][0]
    window = padded[rs:rs + h, cs:cs + w]
    valid = np.zeros((h, w), bool)
    valid[max(-r0, 0):min(big_h - r0, h), max(-c0, 0):min(big_w - c0, w)] = True
    return np.ascontiguousarray(window, np.float32), valid


def expected_frame_stats(mean_counts: np.ndarray, detector_pixel_A: float,
                         grid_pixel_A: float) -> tuple[float, float]:
    """Expected mean and standard deviation of a Poisson frame after :func:`resample`.

    ``mean_counts`` (H, W) are the Poisson means λ at the detector pixel size; the frame
    is resampled bilinearly to ``grid_pixel_A`` (no anti-alias smoothing, i.e.
    ``grid_pixel_A ≤ 1.5 · detector_pixel_A``). With R the interpolation, the resampled
    frame is Rλ + Rε (ε the shot noise, Var ε = λ), so the mean over the frame is
    mean(Rλ) and its variance var(Rλ) + mean(R²λ), R² interpolating with squared
    weights. These are what :func:`~atom3d.data.transforms.normalize` computes on a
    real noisy frame, up to relative fluctuations of order 1/sqrt(Σλ).
    """
    lam = np.asarray(mean_counts, np.float32)
    shape = resampled_shape(lam.shape, detector_pixel_A, grid_pixel_A)
    whole = ((0, 0), shape)
    lam_r = resample_block(lam, (0, 0), detector_pixel_A, grid_pixel_A, *whole)
    noise = resample_block(lam, (0, 0), detector_pixel_A, grid_pixel_A, *whole,
                           squared_weights=True)
    mean = float(lam_r.mean(dtype=np.float64))
    var = float(lam_r.var(dtype=np.float64)) + float(noise.mean(dtype=np.float64))
    return mean, float(np.sqrt(max(var, 0.0)))


def render_item(counts: np.ndarray, detector_pixel_A: float, columns: dict[str, np.ndarray], *,
                grid_pixel_A: float, crop_px: tuple[int, int], origin: tuple[int, int],
                max_depth: int, sigma_A: float, core_weight: float, rim_weight: float,
                rot90: int = 0, flip: bool = False,
                with_columns: bool = False) -> dict[str, np.ndarray]:
    """Resample, normalise, crop, label and orient one noisy frame (pure NumPy).

    Parameters
    ----------
    counts : numpy.ndarray
        ``(H, W)`` noisy frame at the detector pixel size (any gain).
    detector_pixel_A : float
        Detector pixel size p_det [Å].
    columns : dict
        Column table of the structure: ``x``, ``y`` [Å] (detector frame, pixel (r, c)
        at (c·p_det, r·p_det)), ``species`` (0 Ce, 1 O), ``depth`` [atoms].
    grid_pixel_A : float
        True pixel size of the output grid [Å] (the model pixel size, times 1 + ε).
    crop_px : tuple of int
        ``(h, w)`` of the crop [px].
    origin : tuple of int
        Grid pixel ``(r0, c0)`` of the crop's top-left pixel; may be negative or run
        past the resampled image (filled by reflection, weight 0).
    max_depth : int
        Largest class K (a deeper column is an error).
    sigma_A, core_weight, rim_weight : float
        Label parameters (see :mod:`atom3d.simulation.labels`).
    rot90, flip : int, bool
        ``numpy.rot90`` turns (counter-clockwise) and a left-right flip applied after
        labelling, to the image and every label map alike.
    with_columns : bool
        Also return ``columns`` (N, 4): ``(x, y, species, depth)`` in the crop's frame
        [Å], only columns inside the un-padded region (requires ``rot90 == 0`` and
        ``not flip``).

    Returns
    -------
    dict of numpy.ndarray
        ``image`` (h, w) float32, ``{ce,o}_class`` uint8, ``{ce,o}_amp`` and
        ``{ce,o}_weight`` float32, ``valid`` bool, and ``columns`` if asked.
    """
    image = normalize(resample(counts, detector_pixel_A, grid_pixel_A))
    window, valid = _reflect_window(image, origin, crop_px)
    return label_window(window, valid, columns, grid_pixel_A=grid_pixel_A, origin=origin,
                        max_depth=max_depth, sigma_A=sigma_A, core_weight=core_weight,
                        rim_weight=rim_weight, rot90=rot90, flip=flip,
                        with_columns=with_columns)


def label_window(window: np.ndarray, valid: np.ndarray, columns: dict[str, np.ndarray], *,
                 grid_pixel_A: float, origin: tuple[int, int], max_depth: int,
                 sigma_A: float, core_weight: float, rim_weight: float, rot90: int = 0,
                 flip: bool = False, with_columns: bool = False) -> dict[str, np.ndarray]:
    """Label and orient a normalised crop whose top-left pixel is grid pixel ``origin``.

    ``window`` (h, w) is the network input, ``valid`` (h, w) bool marks the pixels inside
    the image; every other argument and the result are those of :func:`render_item`.
    """
    crop_px = window.shape
    r0, c0 = origin
    h, w = crop_px
    # Column positions in the crop's frame [Å]: grid pixel (r0, c0) becomes (0, 0).
    x = np.asarray(columns["x"], np.float64) - c0 * grid_pixel_A
    y = np.asarray(columns["y"], np.float64) - r0 * grid_pixel_A
    species = np.asarray(columns["species"])
    depth = np.asarray(columns["depth"])
    if depth.size and int(depth.max()) > max_depth:
        raise ValueError(f"a column of {int(depth.max())} atoms exceeds max_depth={max_depth}")
    reach = 4.0 * sigma_A
    near = (x > -reach) & (x < (w - 1) * grid_pixel_A + reach) & \
           (y > -reach) & (y < (h - 1) * grid_pixel_A + reach) & (depth > 0)
    out: dict[str, np.ndarray] = {"image": window, "valid": valid}
    for code, name in enumerate(("ce", "o")):
        sel = near & (species == code)
        cls, amp = column_targets(np.stack([x[sel], y[sel]], axis=1), depth[sel], (h, w),
                                  grid_pixel_A, sigma_A)
        cls[~valid] = 0
        amp[~valid] = 0.0
        weight = weight_map(amp, core_weight, rim_weight)
        weight[~valid] = 0.0
        out[f"{name}_class"], out[f"{name}_amp"], out[f"{name}_weight"] = cls, amp, weight
    if rot90 % 4 or flip:
        if with_columns:
            raise ValueError("with_columns needs an un-rotated, un-flipped item")
        for key, value in out.items():
            value = np.rot90(value, rot90 % 4)
            out[key] = np.ascontiguousarray(value[:, ::-1] if flip else value)
    if with_columns:
        rows, cols = np.nonzero(valid)
        inside = (depth > 0) & (species < len(SPECIES))
        if rows.size:
            lo_x, hi_x = cols.min() * grid_pixel_A, cols.max() * grid_pixel_A
            lo_y, hi_y = rows.min() * grid_pixel_A, rows.max() * grid_pixel_A
            inside &= (x >= lo_x) & (x <= hi_x) & (y >= lo_y) & (y <= hi_y)
        else:
            inside &= False
        out["columns"] = np.stack([x[inside], y[inside], species[inside].astype(np.float64),
                                   depth[inside].astype(np.float64)], axis=1).astype(np.float32)
    return out


class ColumnDataset(Dataset):
    """Noisy, resampled, normalised, labelled crops from a dataset store.

    The store is opened lazily in each process (DataLoader workers included), so the
    dataset pickles without any zarr handle. See the module docstring for the steps.

    Parameters
    ----------
    path : path
        The zarr store (``atom3d simulate`` output).
    indices : sequence of int, optional
        Image indices to serve (default all); see :func:`split_structures` and
        :func:`image_indices`.
    train : bool
        True: random noise, dose, gain, jitter, crop and orientation. False: the
        deterministic validation item (see module docstring).
    pixel_size_A : float
        Model pixel size [Å] the images are resampled to.
    crop_px : int, optional
        Side of the square crop [px]. ``None``: the whole resampled image, reflected
        up to the smallest multiple of ``size_multiple`` that holds the largest image
        of the store, so every item has the same shape.
    size_multiple : int
        The crop must be a multiple of this (``2 ** depth`` of the U-Net).
    pixel_jitter : float
        Training: relative pixel-size error ε ~ U(−jitter, +jitter) (0.03 = ±3 %).
    dose_range_e_per_A2 : tuple of float, optional
        Training: draw the dose log-uniformly from ``[low, high]`` [e/Å²] instead of
        using each image's stored dose.
    gain_range : tuple of float
        Training: counts are multiplied by U(low, high).
    augment : bool
        Training: random 90° rotations and flips.
    seed : int
        Mixed into every random draw (validation noise depends only on it and the index).
    cache_images : bool
        Keep every noise-free image this process has read in memory (float32, 256 KB
        per 256² image: 1 GB for the 4000-image default set, per DataLoader worker), so
        epochs after the first read no zarr chunk.
    """

    def __init__(self, path: str | os.PathLike[str], indices: Sequence[int] | None = None, *,
                 train: bool = True, pixel_size_A: float = 0.2, crop_px: int | None = 128,
                 size_multiple: int = 16, pixel_jitter: float = 0.03,
                 dose_range_e_per_A2: tuple[float, float] | None = None,
                 gain_range: tuple[float, float] = (0.8, 1.25), augment: bool = True,
                 seed: int = 0, info: StoreInfo | None = None,
                 cache_images: bool = False) -> None:
        if pixel_size_A <= 0:
            raise ConfigError(f"pixel_size_A must be > 0, got {pixel_size_A}")
        if not 0 <= pixel_jitter < 0.5:
            raise ConfigError(f"pixel_jitter must be in [0, 0.5), got {pixel_jitter}")
        if size_multiple < 1 or (crop_px is not None and (crop_px < 1 or crop_px % size_multiple)):
            raise ConfigError(f"crop_px={crop_px} must be a positive multiple of {size_multiple} "
                              "(2 ** depth of the U-Net)")
        for name, rng in (("dose_range_e_per_A2", dose_range_e_per_A2), ("gain_range", gain_range)):
            if rng is not None and not (0 < rng[0] <= rng[1]):
                raise ConfigError(f"{name} must be a range 0 < low <= high, got {rng}")
        self.path = str(Path(path))
        self.info = info if info is not None else read_store_info(path)
        self.indices = np.arange(self.info.n_images, dtype=np.int64) if indices is None \
            else np.asarray(indices, np.int64)
        self.train = bool(train)
        self.pixel_size_A = float(pixel_size_A)
        self.size_multiple = int(size_multiple)
        self.pixel_jitter = float(pixel_jitter) if train else 0.0
        self.dose_range = tuple(map(float, dose_range_e_per_A2)) if dose_range_e_per_A2 else None
        self.gain_range = tuple(map(float, gain_range))
        self.augment = bool(augment)
        self.seed = int(seed)
        self._pixel = self.info.pixel_size_A
        self._dose = self.info.dose_e_per_A2
        self._structure = self.info.structure_index
        if self.indices.size and not np.all(np.isfinite(self._pixel[self.indices])):
            raise InputFileError(f"dataset {path}: some requested images were never written")
        if crop_px is None:
            largest = max((resampled_shape(self.info.image_shape, float(p),
                                           self.pixel_size_A * (1 - self.pixel_jitter))
                           for p in np.unique(self._pixel[self.indices])), default=(1, 1))
            side = max(largest)
            crop_px = -(-side // self.size_multiple) * self.size_multiple
        self.crop_px = int(crop_px)
        self.cache_images = bool(cache_images)
        self._root = None
        self._images: dict[int, np.ndarray] = {}
        self._columns: dict[int, dict[str, np.ndarray]] = {}
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple[int, int] | None = None

    # -- pickling: no zarr handle or generator crosses a process boundary -------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_root=None, _images={}, _columns={}, _rng=None, _rng_key=None)
        return state

    def __len__(self) -> int:
        return int(self.indices.size)

    @property
    def root(self):
        """The store, opened on first use in this process."""
        if self._root is None:
            self._root = open_store(self.path)
        return self._root

    def columns(self, structure: int) -> dict[str, np.ndarray]:
        """Column table of a structure (cached per process)."""
        if structure not in self._columns:
            self._columns[structure] = structure_columns(self.root, structure)
        return self._columns[structure]

    def _train_rng(self) -> np.random.Generator:
        """One generator per process, re-seeded when the process or worker seed changes."""
        worker = torch.utils.data.get_worker_info()
        worker_seed = worker.seed if worker is not None else torch.initial_seed()
        key = (os.getpid(), int(worker_seed))
        if self._rng is None or self._rng_key != key:
            rank = torch.distributed.get_rank() if (torch.distributed.is_available()
                                                    and torch.distributed.is_initialized()) else 0
            self._rng = np.random.default_rng(
                np.random.SeedSequence([self.seed, int(worker_seed) % 2**64, rank]))
            self._rng_key = key
        return self._rng

    def item_rng(self, i: int) -> np.random.Generator:
        """The generator item ``i`` draws from: per index (validation) or per process (training)."""
        if self.train:
            return self._train_rng()
        return np.random.default_rng(np.random.SeedSequence([self.seed, _VAL_TAG,
                                                             int(self.indices[i])]))

    def noisy_counts(self, index: int, rng: np.random.Generator,
                     dose_e_per_A2: float | None = None) -> tuple[np.ndarray, float]:
        """Poisson counts [e/px] of store image ``index`` at the detector pixel size.

        Returns the counts and the dose used [e/Å²] (the stored one unless given).
        """
        dose = float(self._dose[index]) if dose_e_per_A2 is None else float(dose_e_per_A2)
        return add_shot_noise(self.clean_image(index), dose, float(self._pixel[index]), rng), dose

    def clean_image(self, index: int) -> np.ndarray:
        """Noise-free store image ``index`` (float32, vacuum = 1; see ``cache_images``)."""
        image = self._images.get(index)
        if image is None:
            image = np.asarray(self.root["image"][index], np.float32)
            if self.cache_images:
                self._images[index] = image
        return image

    def _train_window(self, index: int, dose: float, gain: float, grid: float,
                      origin: tuple[int, int], rng: np.random.Generator) -> np.ndarray | None:
        """Normalised training crop drawn from the detector pixels under it only.

        Equivalent to the crop of ``normalize(resample(noisy frame))`` with the frame's
        statistics replaced by their expectations (module docstring, step 4). ``None``
        when the shortcut does not apply (crop beyond the image, or anti-alias smoothing).
        """
        p_det = float(self._pixel[index])
        clean = self.clean_image(index)
        shape = resampled_shape(clean.shape, p_det, grid)
        crop = self.crop_px
        r0, c0 = origin
        if grid > 1.5 * p_det or r0 < 0 or c0 < 0 or r0 + crop > shape[0] or c0 + crop > shape[1]:
            return None
        lam = expected_counts(clean, dose, p_det)
        mean, std = expected_frame_stats(lam, p_det, grid)
        a0, a1 = source_window(clean.shape[0], p_det, grid, r0, r0 + crop)
        b0, b1 = source_window(clean.shape[1], p_det, grid, c0, c0 + crop)
        counts = rng.poisson(lam[a0:a1, b0:b1]).astype(np.float32) * np.float32(gain)
        block = resample_block(counts, (a0, b0), p_det, grid, origin, (crop, crop))
        return ((block - mean * gain) / max(std * gain, 1e-6)).astype(np.float32)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        index = int(self.indices[i])
        rng = self.item_rng(i)
        p_det = float(self._pixel[index])
        info = self.info
        labels = dict(max_depth=info.max_depth, sigma_A=info.sigma_A,
                      core_weight=info.core_weight, rim_weight=info.rim_weight)
        columns = self.columns(int(self._structure[index]))
        crop = self.crop_px
        if self.train:
            dose = float(self._dose[index])
            if self.dose_range is not None:
                dose = float(np.exp(rng.uniform(*np.log(self.dose_range))))
            gain = float(rng.uniform(*self.gain_range))
            grid = self.pixel_size_A * (1.0 + rng.uniform(-self.pixel_jitter, self.pixel_jitter))
            shape = resampled_shape(self.clean_image(index).shape, p_det, grid)
            origin = tuple(int(rng.integers(min(0, n - crop), max(0, n - crop) + 1))
                           for n in shape)
            rot, flip = (int(rng.integers(4)), bool(rng.integers(2))) if self.augment else (0, False)
            window = self._train_window(index, dose, gain, grid, origin, rng)
            if window is not None:
                item = label_window(window, np.ones(window.shape, bool), columns,
                                    grid_pixel_A=grid, origin=origin, rot90=rot, flip=flip,
                                    **labels)
            else:
                counts, dose = self.noisy_counts(index, rng, dose)
                item = render_item(counts * np.float32(gain), p_det, columns, grid_pixel_A=grid,
                                   crop_px=(crop, crop), origin=origin, rot90=rot, flip=flip,
                                   **labels)
        else:
            counts, dose = self.noisy_counts(index, rng)
            grid = self.pixel_size_A
            shape = resampled_shape(counts.shape, p_det, grid)
            origin = tuple((n - crop) // 2 for n in shape)
            item = render_item(counts, p_det, columns, grid_pixel_A=grid, crop_px=(crop, crop),
                               origin=origin, with_columns=True, **labels)
        out = {
            "image": torch.from_numpy(item["image"][None]),
            "index": torch.tensor(index, dtype=torch.int64),
            "pixel_size_A": torch.tensor(grid, dtype=torch.float32),
            "dose_e_per_A2": torch.tensor(dose, dtype=torch.float32),
        }
        for name in ("ce", "o"):
            out[f"{name}_class"] = torch.from_numpy(item[f"{name}_class"])
            out[f"{name}_amp"] = torch.from_numpy(item[f"{name}_amp"])
            out[f"{name}_weight"] = torch.from_numpy(item[f"{name}_weight"])
        if not self.train:
            table = np.full((MAX_COLUMNS, 4), np.nan, np.float32)
            n = min(len(item["columns"]), MAX_COLUMNS)
            table[:n] = item["columns"][:n]
            out["columns"] = torch.from_numpy(table)
        return out
