"""The model artifact: a directory with ``model.safetensors`` and ``config.json``.

``config.json`` (format ``"atom3d.model"``, format version 1) holds:

``format``, ``format_version``
    Always ``"atom3d.model"`` and ``1``.
``name``
    Model name, e.g. ``"ceo2-110"``.
``architecture``
    :meth:`atom3d.models.unet.UNet.config`.
``classes``
    Largest column depth [atoms] per species, ``{"Ce": K_ce, "O": K_o}``; head ``i``
    of the network has ``K + 1`` classes (0 = background).
``pixel_size_A``
    Pixel size [Å] the model was trained at; inputs are resampled to it.
``normalization``
    How an input image is normalised before the network (defined by training).
``training_domain``
    Ranges of the simulation parameters seen in training (thickness, defocus, ...).
``temperature``
    Calibration temperature per species, ``{"Ce": T, "O": T}`` of the depth given a
    column (see :func:`calibrated_softmax`).
``confidence_map`` (optional)
    Per species, knots of a monotone map applied to each column's pooled confidence
    (:meth:`ModelArtifact.map_confidence`).
``column_threshold`` (optional)
    Per species, the smallest pooled presence ``p_column`` of a reported column
    (:attr:`ModelArtifact.column_threshold`); fitted at export to maximise detection F1.
    Not the training task's ``column_threshold``, which is the peak presence at which
    :func:`~atom3d.inference.columns.find_columns` starts a column (0.5).
``pass_calibration`` (optional)
    Calibration for a number of test-time augmentation passes (``"1"``, ``"4"`` or
    ``"8"``, see :data:`atom3d.inference.predictor.TTA_TRANSFORMS`): per number, its own
    ``temperature``, ``confidence_map`` and ``column_threshold`` (same forms as above),
    fitted on the logits averaged over that many passes (``atom3d train recalibrate``),
    and the figures of the fit (``fit``). Averaged logits are less extreme than one
    pass's, so one pass's calibration under-states their confidence.
    :meth:`ModelArtifact.for_passes` picks it; a number without an entry uses the
    top-level calibration, which was fitted on one pass.
``atom3d_version``
    Version of atom3d that wrote the artifact.
``weights_sha256``
    SHA-256 (hex) of the bytes of ``model.safetensors``.
``metrics``
    Free-form evaluation figures.

Loading never unpickles: weights are read with :mod:`safetensors` only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import Tensor

from atom3d import __version__
from atom3d.errors import UserError
from atom3d.models import DEFAULT_MODEL
from atom3d.models.unet import UNet

FORMAT = "atom3d.model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: Species in head order of :class:`~atom3d.models.unet.UNet`.
SPECIES = ("Ce", "O")
#: Keys of one calibration (top level, or one ``pass_calibration`` entry).
CALIBRATION_KEYS = ("temperature", "confidence_map", "column_threshold")
#: Numbers of passes a ``pass_calibration`` entry may be for.
PASS_CALIBRATION_PASSES = ("1", "4", "8")


def calibrated_softmax(logits: Tensor, temperature: float, out: Tensor | None = None) -> Tensor:
    """Class probabilities with the depth calibrated and the column presence as trained.

    ``p(0) = softmax(z)_0`` (background: column detection is left as trained) and, for
    k >= 1, ``p(k) = (1 - p(0)) · softmax(z_1..K / T)_k``: temperature scaling of the
    depth *given a column*, which is the confidence atom3d reports and what the
    temperature is fitted for (:func:`atom3d.training.export.calibrate_temperature`).
    Scaling all classes with one temperature would also move the background
    probability and with it the columns found.

    Parameters
    ----------
    logits : Tensor
        ``(B, K + 1, H, W)``, class 0 = background.
    temperature : float
        T > 0.
    out : Tensor, optional
        Where to write the result (same shape as ``logits``); returned.
    """
    if out is None:
        out = torch.empty_like(logits)
    p0 = out[:, :1]
    torch.sub(logits[:, :1], torch.logsumexp(logits, dim=1, keepdim=True), out=p0)
    p0.exp_()
    torch.mul(torch.softmax(logits[:, 1:] / temperature, dim=1), 1.0 - p0, out=out[:, 1:])
    return out


@dataclass
class ModelArtifact:
    """A loaded model with its description.

    Attributes
    ----------
    model : UNet
        The network, in eval mode, on the device it was loaded to.
    config : dict
        Contents of ``config.json``.
    path : Path or None
        Directory it was loaded from (None for a packaged model inside a zip).
    """

    model: UNet
    config: dict[str, Any]
    path: Path | None

    @property
    def name(self) -> str:
        """Model name."""
        return str(self.config["name"])

    @property
    def classes(self) -> dict[str, int]:
        """Largest column depth [atoms] per species."""
        return {s: int(k) for s, k in self.config["classes"].items()}

    @property
    def pixel_size_A(self) -> float:
        """Pixel size [Å] the model expects."""
        return float(self.config["pixel_size_A"])

    @property
    def temperature(self) -> dict[str, float]:
        """Calibration temperature per species."""
        return {s: float(t) for s, t in self.config["temperature"].items()}

    def map_confidence(self, species: str, confidence: Any) -> np.ndarray:
        """Column confidences through the artifact's monotone confidence map, if any.

        ``config["confidence_map"][species]`` holds knots ``{"confidence": [...],
        "accuracy": [...]}`` (isotonic regression of correctness on the pooled column
        confidence, :func:`atom3d.training.calibration.fit_confidence_map`); values are
        joined linearly and held constant beyond the end knots. Without a map the
        confidence is returned unchanged (float32).
        """
        c = np.asarray(confidence, np.float32)
        knots = (self.config.get("confidence_map") or {}).get(species)
        if not knots:
            return c
        return np.interp(c, knots["confidence"], knots["accuracy"]).astype(np.float32)

    @property
    def column_threshold(self) -> dict[str, float]:
        """Smallest pooled presence ``p_column`` of a reported column, per species.

        ``config["column_threshold"]``; 0 for a species without one (every column found
        by :func:`~atom3d.inference.columns.find_columns` is kept).
        """
        stored = self.config.get("column_threshold") or {}
        return {s: float(stored.get(s, 0.0)) for s in self.config["classes"]}

    def for_passes(self, passes: int) -> ModelArtifact:
        """The artifact calibrated for ``passes`` network passes per frame.

        With a ``pass_calibration`` entry for ``passes``, a view (same network, no copy)
        whose ``temperature``, ``confidence_map`` and ``column_threshold`` are that
        entry's, and whose ``calibration_passes`` is ``passes``; else ``self`` (the
        top-level calibration, fitted on one pass).
        """
        entry = (self.config.get("pass_calibration") or {}).get(str(int(passes)))
        if not entry:
            return self
        config = {k: v for k, v in self.config.items()
                  if k not in ("confidence_map", "column_threshold")}
        config.update({k: entry[k] for k in CALIBRATION_KEYS if entry.get(k)})
        config["calibration_passes"] = int(passes)
        return ModelArtifact(model=self.model, config=config, path=self.path)

    @property
    def calibration_sha256(self) -> str:
        """SHA-256 (hex) of the calibration in use (temperature, confidence map, column
        threshold, and the passes it was fitted for), as canonical JSON: results files
        record it, so a run is never resumed under another calibration of the same weights."""
        calibration = {k: self.config.get(k) for k in CALIBRATION_KEYS}
        calibration["passes"] = self.calibration_passes
        text = json.dumps(calibration, sort_keys=True, separators=(",", ":"))
        return sha256_hex(text.encode("utf-8"))

    @property
    def calibration_passes(self) -> int:
        """Network passes per frame the calibration in use was fitted for (1 by default)."""
        return int(self.config.get("calibration_passes", 1))

    @property
    def weights_sha256(self) -> str:
        """SHA-256 (hex) of ``model.safetensors``."""
        return str(self.config["weights_sha256"])

    def predict_proba(self, x: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Calibrated class probabilities per species.

        Parameters
        ----------
        x : Tensor
            Normalised images ``(B, C, H, W)`` at :attr:`pixel_size_A`, H and W
            multiples of ``model.size_multiple``. Moved to the model's device.

        Returns
        -------
        tuple of Tensor
            :func:`calibrated_softmax` for Ce ``(B, K_ce + 1, H, W)`` and O
            ``(B, K_o + 1, H, W)``, in the model's dtype.
        """
        self.model.eval()
        parameter = next(self.model.parameters())
        x = x.to(device=parameter.device, dtype=parameter.dtype)
        temperature = self.temperature
        with torch.no_grad():
            logits = self.model(x)
            if out is None:
                ce, o = (calibrated_softmax(z, temperature[s])
                         for z, s in zip(logits, SPECIES, strict=True))
            else:  # Ce classes then O classes, written in place
                k = logits[0].shape[1]
                ce = calibrated_softmax(logits[0], temperature["Ce"], out=out[:, :k])
                o = calibrated_softmax(logits[1], temperature["O"], out=out[:, k:])
        return ce, o


#: float32 values per band of :func:`calibrated_maps` (1 MB of temporaries; session 15,
#: two species of a 512² frame: 18–19 ms against 22–26 ms with 512 kB bands).
_MAPS_BAND_VALUES = 1 << 18


def calibrated_maps(logits: np.ndarray,
                    temperature: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel maps of :func:`calibrated_softmax` without forming its probabilities.

    The same numbers as ``p = calibrated_softmax(logits, temperature)`` followed by
    ``1 - p[0]``, ``argmax(p, 0)`` and ``max(p, 0)`` (ties to the lower class), in
    one exponential pass over the depth logits (and a second one over the pixels where
    a column is more likely than not) instead of a full softmax, a second softmax and
    an argmax over all ``K + 1`` channels:
    with ``m = max_k z_k`` (k >= 1), ``S_1 = Σ_k exp(z_k - m)`` and
    ``S_T = Σ_k exp((z_k - m) / T)``, the presence is
    ``1 - p(0) = sigmoid(m + log S_1 - z_0)``, the most probable depth is
    ``argmax_k z_k`` with probability ``(1 - p(0)) / S_T``.

    NumPy, in the calling thread: the predictor runs it in its pool of column-finding
    threads (one per species and frame), where it is about twice as fast as the same
    steps in torch on one thread (8-9 against 17 ms for 21 classes of 512² px).

    Parameters
    ----------
    logits : numpy.ndarray
        float32 ``(K + 1, H, W)``, class 0 = background.
    temperature : float
        T > 0.

    Returns
    -------
    presence : numpy.ndarray
        float32 ``(H, W)``: ``1 - p(0)``, the probability that a column is there.
    depth : numpy.ndarray
        uint8 ``(H, W)``: most probable class (0 = no column, k = k atoms).
    confidence : numpy.ndarray
        float32 ``(H, W)``: its probability.
    """
    z = np.asarray(logits, dtype=np.float32)
    if z.ndim != 3 or z.shape[0] < 2:
        raise ValueError(f"logits must be (K + 1, H, W) with K >= 1, got {z.shape}")
    if z.shape[0] > 256:
        raise ValueError(f"at most 255 depth classes fit in uint8, got {z.shape[0] - 1}")
    k, height, width = z.shape[0] - 1, z.shape[1], z.shape[2]
    presence = np.empty((height, width), np.float32)
    depth = np.zeros((height, width), np.uint8)
    confidence = np.empty((height, width), np.float32)
    inverse_t = np.float32(1.0 / float(temperature))
    # Bands of rows whose (K, rows, W) temporaries are about 1 MB: reused from the heap
    # instead of fresh pages for every frame (the same numbers as one band).
    rows = max(1, min(height, _MAPS_BAND_VALUES // max(1, k * width)))
    e = np.empty((k, rows, width), np.float32)
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        z0, zk, ek = z[0, r0:r1], z[1:, r0:r1], e[:, : r1 - r0]
        m = zk.max(axis=0)
        np.subtract(zk, m, out=ek)
        np.exp(ek, out=ek)
        s1 = ek.sum(axis=0)
        with np.errstate(over="ignore"):  # exp(+large) = inf gives presence 0 exactly
            band = 1.0 / (1.0 + np.exp(z0 - m - np.log(s1)))
        presence[r0:r1] = band
        p0 = 1.0 - band
        confidence[r0:r1] = p0
        # Where presence <= 1/2, p(0) >= 1/2 >= every p(k): the label is 0 (ties go to
        # the lower class) with probability p(0). Only the other pixels need the
        # calibrated depth probabilities, computed on them alone.
        idx = np.flatnonzero(band > 0.5)
        if idx.size:
            zc = zk.reshape(k, -1)[:, idx]  # (K, P)
            s_t = np.exp((zc - m.ravel()[idx]) * inverse_t).sum(axis=0)
            best = zc.argmax(axis=0)  # first maximum: ties to the lower class
            p_best = band.ravel()[idx] / s_t
            p0_col = p0.ravel()[idx]
            depth[r0:r1].reshape(-1)[idx] = np.where(p0_col >= p_best, 0, best + 1)
            confidence[r0:r1].reshape(-1)[idx] = np.maximum(p0_col, p_best)
    return presence, depth, confidence


def calibrated_probs_numpy(logits: np.ndarray, temperature: float, axis: int = -1,
                           dtype: Any = np.float64) -> np.ndarray:
    """:func:`calibrated_softmax` in NumPy over the class ``axis`` of ``logits``.

    For the few pixels whose class probabilities are pooled into a column (see
    :func:`atom3d.inference.columns.find_columns_from`); tested equal to the torch
    function. Computed in ``dtype`` (float64 by default; the predictor uses float32 with
    the classes on axis 0, which is twice as fast).
    """
    z = np.moveaxis(np.asarray(logits, dtype=dtype), axis, 0)
    top = z.max(axis=0)
    e = np.exp(z - top)
    p0 = e[0] / e.sum(axis=0)
    zk = z[1:] * dtype(1.0 / float(temperature))
    ek = np.exp(zk - zk.max(axis=0))
    out = np.empty_like(z)
    out[0] = p0
    np.multiply(ek, (1.0 - p0) / ek.sum(axis=0), out=out[1:])
    return np.moveaxis(out, 0, axis)


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` as a hex string."""
    return hashlib.sha256(data).hexdigest()


def save_artifact(
    model: UNet,
    directory: str | os.PathLike[str],
    *,
    name: str,
    classes: Mapping[str, int],
    pixel_size_A: float,
    normalization: Mapping[str, Any],
    training_domain: Mapping[str, Any],
    temperature: Mapping[str, float] | None = None,
    metrics: Mapping[str, Any] | None = None,
    confidence_map: Mapping[str, Mapping[str, Any]] | None = None,
    column_threshold: Mapping[str, float] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory``.

    Both files are written to temporary names and renamed, weights first, so an
    interrupted save never leaves a config that matches no weights.

    Parameters
    ----------
    model : UNet
        Trained network (any device; weights are stored from CPU copies).
    directory : path
        Created if missing; existing artifact files are replaced.
    name : str
        Model name.
    classes : mapping
        Largest column depth [atoms] per species, ``{"Ce": K_ce, "O": K_o}``; must
        match the network heads (``n_classes == (K_ce + 1, K_o + 1)``).
    pixel_size_A : float
        Pixel size [Å] the model was trained at.
    normalization, training_domain : mapping
        Stored as given; must be JSON-serialisable.
    temperature : mapping, optional
        Calibration temperature per species; default 1.0 for each.
    metrics : mapping, optional
        Free-form, JSON-serialisable evaluation figures.
    confidence_map : mapping, optional
        Per species, knots ``{"confidence": [...], "accuracy": [...]}`` of a monotone
        map applied to column confidences (:meth:`ModelArtifact.map_confidence`).
    column_threshold : mapping, optional
        Per species, the smallest pooled presence of a reported column, in [0, 1)
        (:attr:`ModelArtifact.column_threshold`).

    Returns
    -------
    Path
        The artifact directory.

    Raises
    ------
    ValueError
        On inconsistent classes, a non-positive pixel size or temperature, or a
        value that is not strict JSON (NaN, infinity, arbitrary objects).
    """
    classes = _check_classes(classes, model.n_classes)
    temperature = _check_temperature(temperature)
    if not (math.isfinite(pixel_size_A) and pixel_size_A > 0):
        raise ValueError(f"pixel_size_A must be a positive number, got {pixel_size_A}")

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = save_safetensors_bytes(state, metadata={"format": FORMAT})
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": str(name),
        "architecture": model.config(),
        "classes": classes,
        "pixel_size_A": float(pixel_size_A),
        "normalization": dict(normalization),
        "training_domain": dict(training_domain),
        "temperature": temperature,
        "atom3d_version": __version__,
        "weights_sha256": sha256_hex(weights),
        "metrics": dict(metrics or {}),
    }
    if confidence_map:
        config["confidence_map"] = _check_confidence_map(confidence_map, classes)
    if column_threshold:
        config["column_threshold"] = _check_column_threshold(column_threshold, classes)
    try:
        text = json.dumps(config, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as error:
        raise ValueError(f"artifact config is not strict JSON: {error}") from error

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomic(directory / WEIGHTS_FILE, weights)
    _write_atomic(directory / CONFIG_FILE, text.encode("utf-8"))
    return directory


def _check_confidence_map(maps: Mapping[str, Mapping[str, Any]],
                          classes: Mapping[str, int]) -> dict[str, dict[str, list[float]]]:
    out = {}
    for species, knots in maps.items():
        if species not in classes:
            raise ValueError(f"confidence_map: unknown species {species!r}")
        x = [float(v) for v in knots["confidence"]]
        y = [float(v) for v in knots["accuracy"]]
        monotone = all(np.diff(x) >= 0) and all(np.diff(y) >= 0)
        if not x or len(x) != len(y) or not monotone or not all(0 <= v <= 1 for v in x + y):
            raise ValueError(f"confidence_map[{species!r}] must be non-decreasing knots in [0, 1]")
        out[species] = {"confidence": x, "accuracy": y}
    return out


def _check_pass_calibration(entries: Any, classes: Mapping[str, int]) -> dict[str, Any] | None:
    """Checked ``pass_calibration`` (None if absent); raises ValueError when malformed."""
    if entries is None:
        return None
    if not isinstance(entries, Mapping):
        raise ValueError("pass_calibration must be a mapping")
    out = {}
    for passes, entry in entries.items():
        if passes not in PASS_CALIBRATION_PASSES or not isinstance(entry, Mapping):
            raise ValueError(f"pass_calibration: entries must be for "
                             f"{'/'.join(PASS_CALIBRATION_PASSES)} passes, got {passes!r}")
        if "temperature" not in entry:
            raise ValueError(f"pass_calibration[{passes!r}] lacks its temperature")
        checked = dict(entry)
        checked["temperature"] = _check_temperature(entry["temperature"])
        if entry.get("confidence_map"):
            checked["confidence_map"] = _check_confidence_map(entry["confidence_map"], classes)
        if entry.get("column_threshold"):
            checked["column_threshold"] = _check_column_threshold(entry["column_threshold"],
                                                                  classes)
        out[passes] = checked
    return out


def save_pass_calibration(artifact: ModelArtifact, directory: str | os.PathLike[str],
                          passes: int, calibration: Mapping[str, Any]) -> Path:
    """Write ``artifact`` into ``directory`` with a ``pass_calibration`` entry for ``passes``.

    The weights are those of ``artifact`` (byte for byte; ``weights_sha256`` unchanged);
    the config is the artifact's with ``pass_calibration[str(passes)]`` set to
    ``calibration`` (``temperature`` and optionally ``confidence_map``,
    ``column_threshold`` and ``fit``; checked). ``directory`` may be the artifact's own.
    Files are written atomically, weights first.
    """
    key = str(int(passes))
    if key not in PASS_CALIBRATION_PASSES:
        raise ValueError(f"passes must be one of {PASS_CALIBRATION_PASSES}, got {passes}")
    config = {k: v for k, v in artifact.config.items() if k != "calibration_passes"}
    entries = dict(config.get("pass_calibration") or {})
    entries[key] = dict(calibration)
    config["pass_calibration"] = _check_pass_calibration(entries, config["classes"])
    try:
        text = json.dumps(config, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as error:
        raise ValueError(f"artifact config is not strict JSON: {error}") from error
    state = {k: v.detach().to("cpu").contiguous() for k, v in artifact.model.state_dict().items()}
    weights = save_safetensors_bytes(state, metadata={"format": FORMAT})
    if sha256_hex(weights) != config["weights_sha256"]:
        raise ValueError("the network's weights differ from the artifact's weights_sha256")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomic(directory / WEIGHTS_FILE, weights)
    _write_atomic(directory / CONFIG_FILE, text.encode("utf-8"))
    return directory


def _check_column_threshold(thresholds: Mapping[str, float],
                            classes: Mapping[str, int]) -> dict[str, float]:
    out = {}
    for species, value in thresholds.items():
        if species not in classes:
            raise ValueError(f"column_threshold: unknown species {species!r}")
        value = float(value)
        if not 0 <= value < 1:
            raise ValueError(f"column_threshold[{species!r}] must be in [0, 1), got {value}")
        out[species] = value
    return out


def packaged_models() -> list[str]:
    """Names of the models shipped inside the atom3d package."""
    root = resources.files("atom3d.models")
    return sorted(
        entry.name
        for entry in root.iterdir()
        if entry.is_dir() and entry.joinpath(CONFIG_FILE).is_file()
    )


def load_artifact(
    name_or_dir: str | os.PathLike[str] = DEFAULT_MODEL, device: str | torch.device = "cpu"
) -> ModelArtifact:
    """Load a model artifact and verify its weights.

    Parameters
    ----------
    name_or_dir : str or path
        An artifact directory, or the name of a packaged model (see
        :func:`packaged_models`). A packaged model's name always means the packaged
        model; a directory of the same name is reached as ``./NAME``.
    device : str or torch.device
        Device to put the network on.

    Returns
    -------
    ModelArtifact
        Network in eval mode, config and directory.

    Raises
    ------
    atom3d.errors.UserError
        Unknown name, missing directory or file, unreadable config, a format this
        version cannot read, or weights whose SHA-256 differs from the config.
    """
    source, path = _resolve(name_or_dir)
    label = str(path) if path is not None else f"packaged model {name_or_dir!r}"
    config = _read_config(source, label)
    weights_entry = source.joinpath(WEIGHTS_FILE)
    if not weights_entry.is_file():
        raise UserError(f"model {label}: {WEIGHTS_FILE} is missing")
    data = weights_entry.read_bytes()
    # Hash and parse the very same bytes, so what is verified is what is loaded.
    if sha256_hex(data) != config["weights_sha256"]:
        raise UserError(
            f"model {label}: {WEIGHTS_FILE} does not match weights_sha256 in "
            f"{CONFIG_FILE} (corrupted or replaced file)"
        )
    try:
        state = load_safetensors_bytes(data)
    except SafetensorError as error:
        raise UserError(f"model {label}: cannot read {WEIGHTS_FILE}: {error}") from error
    try:
        model = UNet.from_config(config["architecture"])
        _check_classes(config["classes"], model.n_classes)
        _check_temperature(config["temperature"])
        _check_pass_calibration(config.get("pass_calibration"), config["classes"])
    except (TypeError, ValueError, AttributeError, KeyError) as error:
        raise UserError(
            f"model {label}: invalid architecture, classes or calibration: {error}"
        ) from error
    problem = _state_mismatch(model.state_dict(), state)
    if problem:
        raise UserError(f"model {label}: weights do not fit the architecture: {problem}")
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    return ModelArtifact(model=model, config=config, path=path)


def _resolve(name_or_dir: str | os.PathLike[str]) -> tuple[Traversable, Path | None]:
    """The artifact location: (readable entry, filesystem path if there is one)."""
    path = Path(name_or_dir)
    name = str(name_or_dir)
    is_plain_name = name and os.sep not in name and "/" not in name and not name.startswith(".")
    if is_plain_name:
        # a packaged model's name means the packaged model, even if the working directory
        # holds a folder of that name (the default model must never be shadowed)
        entry = resources.files("atom3d.models").joinpath(name)
        if entry.is_dir() and entry.joinpath(CONFIG_FILE).is_file():
            return entry, entry if isinstance(entry, Path) else None
    if path.is_dir():
        return path, path
    if is_plain_name:
        available = ", ".join(packaged_models()) or "none installed"
        raise UserError(
            f"unknown model {name!r}: not a directory and not a packaged model "
            f"(packaged: {available})"
        )
    raise UserError(f"model directory not found: {path}")


def _read_config(source: Traversable, label: str) -> dict[str, Any]:
    entry = source.joinpath(CONFIG_FILE)
    if not entry.is_file():
        raise UserError(f"model {label}: {CONFIG_FILE} is missing")
    try:
        config = json.loads(entry.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"model {label}: {CONFIG_FILE} is not valid JSON: {error}") from error
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise UserError(f"model {label}: {CONFIG_FILE} is not an {FORMAT} config")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(
            f"model {label}: format_version {version!r} is not supported by atom3d "
            f"{__version__} (reads up to {FORMAT_VERSION}); upgrade atom3d"
        )
    required = ("architecture", "classes", "pixel_size_A", "temperature", "weights_sha256")
    missing = [key for key in required if key not in config]
    if missing:
        raise UserError(f"model {label}: {CONFIG_FILE} lacks {', '.join(missing)}")
    return config


def _state_mismatch(expected: Mapping[str, Tensor], found: Mapping[str, Tensor]) -> str:
    """A one-line description of how ``found`` differs from ``expected`` ('' if it fits)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        return f"{len(missing)} missing tensors {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}"
    for key, tensor in expected.items():
        if found[key].shape != tensor.shape:
            return f"{key} has shape {tuple(found[key].shape)}, expected {tuple(tensor.shape)}"
    return ""


def _check_classes(classes: Mapping[str, int], n_classes: tuple[int, ...]) -> dict[str, int]:
    if set(classes) != set(SPECIES):
        raise ValueError(f"classes must have keys {SPECIES}, got {sorted(classes)}")
    out = {s: int(classes[s]) for s in SPECIES}
    expected = tuple(out[s] + 1 for s in SPECIES)
    if expected != tuple(n_classes):
        raise ValueError(
            f"classes {out} need heads with {expected} classes, the network has {tuple(n_classes)}"
        )
    return out


def _check_temperature(temperature: Mapping[str, float] | None) -> dict[str, float]:
    if temperature is None:
        return {s: 1.0 for s in SPECIES}
    if set(temperature) != set(SPECIES):
        raise ValueError(f"temperature must have keys {SPECIES}, got {sorted(temperature)}")
    out = {s: float(temperature[s]) for s in SPECIES}
    if not all(math.isfinite(t) and t > 0 for t in out.values()):
        raise ValueError(f"temperatures must be positive, got {out}")
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory.

    The temporary file is opened normally (not with ``mkstemp``) so that the final
    file gets the usual umask permissions and stays readable by other users.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
