"""The training dataset on disk: a zarr store, schema version 1.

Root attributes
    ``schema = "atom3d.dataset"``, ``schema_version = 1``, ``atom3d_version``, ``config``
    (the full campaign config), ``seed``, ``n_images``, ``n_structures``,
    ``images_per_structure``, ``param_names``, ``structure_param_names``, ``species``
    (``["Ce", "O"]``), ``max_depth``, ``complete`` (true once every structure is written),
    ``class_frequencies`` ({"Ce": [...], "O": [...]}, soft-target mass per class over all
    images, set on completion), ``conventions`` (a short text).

Arrays (one chunk per image or per structure)
    ``image``          (N, H, W) float32   noise-free image, vacuum = 1 (shot noise is drawn
                                           on the fly: counts ~ Poisson(dose·p²·image))
    ``params``         (N, P) float64      per-image draws, names in ``param_names``
    ``label_class``    (S, 2, H, W) uint8  class map per species (0 = background, k atoms)
    ``label_amp``      (S, 2, H, W) uint8  target amplitude ×255 (see simulation.labels)
    ``label_weight``   (S, 2, H, W) float16 spatial loss weights
    ``class_mass``     (S, 2, K+1) float64 soft-target mass per class of one image
    ``columns_xy``     (S, C, 2) float32   column positions [Å] (pixel (r, c) at (c·p, r·p))
    ``columns_species`` (S, C) uint8, ``columns_depth`` (S, C) uint8, ``n_columns`` (S,) int32
    ``structure_params`` (S, Q) float64    per-structure draws, names in ``structure_param_names``
    ``done``           (S,) bool           written last for each structure (resume marker)

Image i belongs to structure ``int(params[i, "structure_index"])``; all images of one
structure share its detector pixel size and labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from atom3d import __version__
from atom3d.errors import InputFileError

SCHEMA = "atom3d.dataset"
SCHEMA_VERSION = 1
MAX_COLUMNS = 4096

#: Names of the per-image parameters (columns of ``params``).
PARAM_NAMES = (
    "structure_index", "pixel_size_A", "dose_e_per_A2", "energy_eV", "defocus_A", "cs_A",
    "c5_A", "focal_spread_A", "astigmatism_A", "astigmatism_angle_rad", "aperture_mrad",
    "angular_spread_mrad", "tilt_mrad", "thickness_A", "max_ce_depth", "max_o_depth",
)

CONVENTIONS = (
    "image: intensity in units of the incident beam (vacuum = 1), noise-free; "
    "pixel (r, c) centred at (x, y) = (c*p, r*p) A; defocus positive = underfocus "
    "(C10 = -defocus); focal_spread_A is a standard deviation; aperture_mrad inf = none"
)


def create_store(path: str | Path, *, config: dict, seed: int, n_images: int,
                 images_per_structure: int, image_px: int, max_depth: int,
                 structure_param_names: tuple[str, ...]) -> zarr.Group:
    """Create an empty dataset store with every array allocated (fill values only)."""
    n_struct = -(-n_images // images_per_structure)
    root = zarr.open_group(str(path), mode="w-")
    h = w = image_px
    k1 = max_depth + 1

    def arr(name, shape, chunks, dtype, fill=0):
        root.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill)

    arr("image", (n_images, h, w), (1, h, w), "float32", 0.0)
    arr("params", (n_images, len(PARAM_NAMES)), (1, len(PARAM_NAMES)), "float64", np.nan)
    arr("label_class", (n_struct, 2, h, w), (1, 2, h, w), "uint8")
    arr("label_amp", (n_struct, 2, h, w), (1, 2, h, w), "uint8")
    arr("label_weight", (n_struct, 2, h, w), (1, 2, h, w), "float16", 1.0)
    arr("class_mass", (n_struct, 2, k1), (1, 2, k1), "float64", 0.0)
    arr("columns_xy", (n_struct, MAX_COLUMNS, 2), (1, MAX_COLUMNS, 2), "float32", np.nan)
    arr("columns_species", (n_struct, MAX_COLUMNS), (1, MAX_COLUMNS), "uint8", 255)
    arr("columns_depth", (n_struct, MAX_COLUMNS), (1, MAX_COLUMNS), "uint8", 0)
    arr("n_columns", (n_struct,), (1,), "int32", 0)
    arr("structure_params", (n_struct, len(structure_param_names)),
        (1, len(structure_param_names)), "float64", np.nan)
    arr("done", (n_struct,), (1,), "bool", False)
    root.attrs.update({
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "atom3d_version": __version__,
        "config": config, "seed": int(seed), "n_images": int(n_images),
        "n_structures": int(n_struct), "images_per_structure": int(images_per_structure),
        "param_names": list(PARAM_NAMES), "structure_param_names": list(structure_param_names),
        "species": ["Ce", "O"], "max_depth": int(max_depth), "complete": False,
        "conventions": CONVENTIONS,
    })
    return root


def open_store(path: str | Path, mode: str = "r") -> zarr.Group:
    """Open a dataset store, checking that it is one (one clear error line otherwise)."""
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"dataset not found: {p}")
    try:
        root = zarr.open_group(str(p), mode=mode)
        attrs = dict(root.attrs)
    except Exception as exc:  # zarr raises many kinds of errors on foreign directories
        raise InputFileError(f"{p} is not a zarr dataset ({type(exc).__name__})") from None
    if attrs.get("schema") != SCHEMA:
        raise InputFileError(f"{p} is not an atom3d dataset (no schema='{SCHEMA}' attribute)")
    if attrs.get("schema_version") != SCHEMA_VERSION:
        raise InputFileError(f"{p} has dataset schema version {attrs.get('schema_version')}; "
                             f"this atom3d reads version {SCHEMA_VERSION}")
    return root


def images_of_structure(s: int, n_images: int, images_per_structure: int) -> range:
    """Indices of the images that belong to structure ``s``."""
    return range(s * images_per_structure, min((s + 1) * images_per_structure, n_images))


def structure_columns(root: zarr.Group, s: int) -> dict[str, np.ndarray]:
    """Column table of structure ``s``: x, y [Å], species (0 Ce, 1 O), depth."""
    n = int(root["n_columns"][s])
    xy = root["columns_xy"][s, :n]
    return {"x": xy[:, 0], "y": xy[:, 1], "species": root["columns_species"][s, :n],
            "depth": root["columns_depth"][s, :n]}


def param(root: zarr.Group, name: str) -> np.ndarray:
    """One per-image parameter for all images."""
    names = list(root.attrs["param_names"])
    return root["params"][:, names.index(name)]


def class_frequencies(root: zarr.Group) -> dict[str, list[float]]:
    """Soft-target mass per class over all images of the finished structures (normalised)."""
    done = np.asarray(root["done"][:], bool)
    mass = np.asarray(root["class_mass"][:])[done]  # (S', 2, K+1), per image of a structure
    n_images = int(root.attrs["n_images"])
    per = int(root.attrs["images_per_structure"])
    counts = np.array([len(images_of_structure(int(s), n_images, per))
                       for s in np.flatnonzero(done)], float)
    total = np.einsum("s,sck->ck", counts, mass)
    freq = total / np.maximum(total.sum(axis=1, keepdims=True), 1e-12)
    return {"Ce": freq[0].tolist(), "O": freq[1].tolist()}
