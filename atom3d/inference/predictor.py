"""One frame in, columns and depth maps out: the model applied exactly as in training.

:class:`Predictor` wraps a loaded :class:`~atom3d.models.artifact.ModelArtifact` and turns
an HRTEM frame ``(H, W)`` of pixel size ``p_in`` [Å] into a :class:`FramePrediction`:

1. **Resample** to the model's pixel size ``p_model`` (:func:`atom3d.data.transforms.resample`,
   bilinear; physical coordinates are kept: pixel ``(r, c)`` is at ``(c·p, r·p)`` Å on both
   grids) and **normalise** by the frame's own mean and standard deviation
   (:func:`atom3d.data.transforms.normalize`): the same preprocessing as training.
2. **Tiled prediction** (:func:`atom3d.inference.tiling.predict_tiled`) of the network's
   logits on the model grid. The U-Net uses BatchNorm in eval mode (a fixed per-channel
   affine map), so a tile's prediction does not depend on the other tiles or on the
   batch. The discarded ``margin`` next to inner tile edges is the model's
   receptive-field radius ``(receptive_field_px - 1) // 2`` when ``2 × radius <= overlap``
   (then tiling is exact: the stitched result equals the whole-frame prediction);
   otherwise (the default ``base_width=32, depth=4`` network has a 275 px bound, far
   beyond any sensible overlap) it is the fixed ``overlap // 4`` of the tiler: 16 px of
   the default 64 px overlap are dropped on each side and 32 px are cross-faded (the
   logits are blended, then calibrated). The receptive-field *bound* grossly overstates
   the effective receptive field of a trained U-Net, and the cross-fade hides what
   remains; ``seam_error`` style checks live in ``tests/test_predict.py``. Frames that
   fit into one tile are batched across frames (identical results: a single tile is
   never blended). With ``tta`` (``--tta``, the CLI default: 8 passes) each batch also
   passes through the network in the other orientations of :data:`TTA_TRANSFORMS`
   (mirrored left-right, up-down and both; with 8 passes also the transposed frame and
   its mirrors), and the logits, brought back, are averaged (:func:`tta_forward`).
   The calibration of step 3 is the artifact's for that number of passes when it has
   one (:meth:`~atom3d.models.artifact.ModelArtifact.for_passes`, fitted by ``atom3d
   train recalibrate``), else the one-pass calibration of the export.
3. **Calibrated maps and columns** per species. The calibrated class probabilities are
   ``softmax`` with the depth temperature (:func:`atom3d.models.artifact.calibrated_softmax`).
   Their per-pixel presence ``1 - p0``, most probable class and its probability come
   straight from the logits (:func:`atom3d.models.artifact.calibrated_maps`, the same
   numbers without forming the ``(K + 1, H, W)`` probabilities), and
   :func:`atom3d.inference.columns.find_columns_from` finds the columns on the presence
   map (minimum separation 2.6 Å for Ce and 1.6 Å for O; CeO2 [110] has projected
   nearest Ce–Ce and O–O distances of 3.31 and 1.91 Å), pooling the calibrated
   probabilities of the few pixels around each column (computed from their logits).
   Positions are in Å, which is the same physical frame on the input grid. Columns
   whose centre lies within ``edge_margin_A`` (default 1.0 Å, as in ``atom3d
   evaluate``) of the frame border are dropped: half of such a column is outside the
   field of view and the network sees reflected padding there, so border detections
   are mostly spurious. A column's confidence is its pooled probability of the
   reported depth, passed through the artifact's monotone confidence map when it has
   one (:meth:`atom3d.models.artifact.ModelArtifact.map_confidence`, fitted on
   held-out data at export); its ``probs`` stay the pooled probabilities. The column
   work of the frames of a batch runs in a pool of threads (NumPy and SciPy release
   the GIL), one per torch thread.
4. **Maps on the input grid**: when the input pixel size is the model's, the maps of
   step 3 are the result. Otherwise every calibrated class-probability channel is
   resampled back to the input pixel grid *bilinearly* (``order=1``; a convex
   combination, so the channels still sum to one) and *then* the per-pixel argmax and
   its probability are taken (as :func:`atom3d.inference.columns.maps_from_probs`).
   This avoids the blocky look and the half-pixel bias of taking the argmax first and
   resampling labels by nearest neighbour.

A frame holding NaN or Inf, or without signal (standard deviation 0), is *invalid*: its
depth maps are 0, its confidence maps NaN and its column tables empty.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from atom3d.argtypes import TTA_PASSES
from atom3d.data.transforms import normalize, resample, resampled_shape
from atom3d.errors import UserError
from atom3d.inference.columns import ColumnTable, find_columns_from
from atom3d.inference.dose import estimate_dose
from atom3d.inference.memory import limit_malloc_arenas, network_allocations
from atom3d.inference.tiling import predict_tiled
from atom3d.models.artifact import (
    SPECIES,
    ModelArtifact,
    calibrated_maps,
    calibrated_probs_numpy,
    calibrated_softmax,
)

__all__ = ["MIN_SEPARATION_A", "FramePrediction", "PendingBatch", "Predictor", "resolve_device"]

# before torch's and our worker threads first allocate (see atom3d.inference.memory)
limit_malloc_arenas()

#: Smallest distance between two columns of one species [Å] (peak thinning).
MIN_SEPARATION_A = {"Ce": 2.6, "O": 1.6}

#: Test-time augmentation: the network passes of ``tta=4`` (``--tta-passes 4``;
#: ``tta=True`` too) are the frame and its three mirror images (image axes flipped), those
#: of ``tta=8`` (``--tta``, the CLI default) the eight images of the square's symmetry group
#: (the four mirrors and the four mirrors of the transposed frame). Training augments
#: every image with random 90° rotations and flips (:mod:`atom3d.data.dataset`), so
#: each is an input of the kind the network was trained on; the logits, brought back to
#: the frame's orientation, are averaged, which averages out part of the network's
#: response to the shot noise. Measured on the eight 12-frame demo series (session 9,
#: run 8 model, 4 passes): the frame-to-frame noise of a Ce column's expected depth fell
#: from 0.23-0.30 to 0.20-0.27 atoms, and the share of true depth steps whose two sides
#: differ by more than 2.5 noise widths rose from 63 to 71 %.
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))
#: ``(transpose, flipped axes)`` of each pass, in order; ``tta=N`` runs the first N.
TTA_TRANSFORMS: tuple[tuple[bool, tuple[int, ...]], ...] = (
    tuple((False, dims) for dims in TTA_FLIPS) + tuple((True, dims) for dims in TTA_FLIPS))


def tta_passes(tta: bool | int) -> int:
    """Network passes per frame for a ``tta`` setting: False/0/1 → 1, True/4 → 4, 8 → 8."""
    if isinstance(tta, bool | np.bool_):
        return 4 if tta else 1
    n = int(tta)
    n = 1 if n == 0 else n
    if n not in TTA_PASSES:
        raise UserError(f"test-time augmentation takes 1, 4 or 8 passes, got {tta}")
    return n


def tta_forward(model: torch.nn.Module, x: torch.Tensor, passes: int) -> list[torch.Tensor]:
    """Logits of ``model`` on ``x`` ``(B, 1, H, W)`` averaged over the first ``passes``
    orientations of :data:`TTA_TRANSFORMS` (each brought back to ``x``'s orientation);
    ``passes = 1`` is the bare network. One list entry per head, as ``model`` returns.
    """
    passes = tta_passes(passes)
    if passes == 1:
        return list(model(x))
    logits = None
    for transpose, dims in TTA_TRANSFORMS[:passes]:
        xt = x.transpose(-2, -1) if transpose else x
        out = model(torch.flip(xt, dims) if dims else xt)
        out = [torch.flip(z, dims) if dims else z for z in out]
        out = [z.transpose(-2, -1) for z in out] if transpose else out
        logits = out if logits is None else [a + b for a, b in zip(logits, out, strict=True)]
    return [z / passes for z in logits]


class TTANetwork(torch.nn.Module):
    """A network averaged over ``passes`` test-time augmentation passes (:func:`tta_forward`),
    as :class:`Predictor` runs it; used to calibrate a model for that many passes."""

    def __init__(self, net: torch.nn.Module, passes: int) -> None:
        super().__init__()
        self.net = net
        self.passes = tta_passes(passes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return tta_forward(self.net, x, self.passes)


#: Images the network runs on at once on a CPU; a batch (``--batch-size``) is passed in
#: slices of this many (None: all at once). On a CPU the network is no faster on four
#: 512² frames at once than on one at a time (session 24, shipped model, 2 threads: 2.25–2.31
#: frames/s at 1 against 1.84–2.28 at 4), while the activations it keeps in the heap
#: (:mod:`atom3d.inference.memory`) grow with the slice.
CPU_NETWORK_IMAGES: int | None = 1
#: Smallest frame side [px] on the model grid that is still predicted.
MIN_SIDE_PX = 8


@dataclass
class FramePrediction:
    """Everything predicted for one frame.

    Attributes
    ----------
    valid : bool
        False for a frame with NaN/Inf or without signal; then nothing was predicted.
    reason : str
        Why the frame is invalid ('' when valid).
    columns : dict of ColumnTable
        ``{"Ce": table, "O": table}``: column positions [Å] in the frame's own
        coordinates, depth [atoms], confidence, presence and pooled probabilities.
    ce_depth, o_depth : numpy.ndarray
        uint8 ``(H, W)`` on the input grid: 0 = no column, k = k atoms.
    ce_confidence, o_confidence : numpy.ndarray
        float32 ``(H, W)``: probability of the label in the depth map (NaN if invalid).
    dose_e_per_A2 : float
        Electron dose of the frame estimated from its shot noise [e/Å²]
        (:func:`~atom3d.inference.dose.estimate_dose`; NaN if invalid).
    """

    valid: bool
    reason: str
    columns: dict[str, ColumnTable]
    ce_depth: np.ndarray
    ce_confidence: np.ndarray
    o_depth: np.ndarray
    o_confidence: np.ndarray
    dose_e_per_A2: float = math.nan


@dataclass
class PendingBatch:
    """A batch of frames after the network (:meth:`Predictor.network_stage`).

    ``frames`` as float32, their ``pixel_size_A`` [Å], ``results`` with the invalid
    frames already filled in (None for the others), ``todo`` the indices of the valid
    frames and ``logits`` their ``(Ce, O)`` logits on the model grid, in that order.
    """

    frames: list[np.ndarray]
    pixel_size_A: float
    results: list[FramePrediction | None]
    todo: list[int]
    logits: list[tuple[np.ndarray, np.ndarray]]


def resolve_device(device: str) -> torch.device:
    """A torch device from a ``--device`` value, refusing unavailable ones.

    Parameters
    ----------
    device : str
        ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.

    Raises
    ------
    atom3d.errors.UserError
        Unknown device string, or CUDA requested but not available.
    """
    text = str(device).strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {device}: no CUDA device is available to this torch "
                f"({torch.__version__}); use --device cpu"
            )
        index = int(text[5:]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA devices")
        return torch.device(text)
    raise UserError(f"--device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


class Predictor:
    """Apply a model artifact to HRTEM frames (see the module docstring for the steps).

    Parameters
    ----------
    artifact : ModelArtifact
        Loaded model; its network is moved to ``device`` (and to float16 with ``half``).
    device : str
        ``'cpu'`` (default), ``'cuda'`` or ``'cuda:N'``.
    batch_size : int
        Tiles (or whole small frames) per forward pass.
    tile : int
        Tile side on the model grid [px]; rounded up to a multiple of the network's
        ``size_multiple``. Frames smaller than a tile use one tile of their own size
        (rounded up likewise).
    overlap : int
        Minimum overlap of neighbouring tiles [px] on the model grid.
    half : bool
        Half precision (float16) weights and inputs; CUDA only.
    edge_margin_A : float
        Columns whose centre is closer than this to the frame border are dropped [Å]
        (the maps are kept whole).
    tta : bool or int
        Test-time augmentation: the number of network passes per frame whose logits are
        averaged (:data:`TTA_TRANSFORMS`): 1 (or False) none, 4 (or True) the frame and its
        three mirror images, 8 also the four of its transpose (``atom3d predict``'s
        default). :attr:`tta_passes` holds the number, :attr:`tta` whether it is > 1.

    Attributes
    ----------
    margin : int
        Pixels dropped next to inner tile edges [px] (see module docstring).
    exact_tiling : bool
        Whether ``margin`` covers the receptive-field bound (tiling then exact).
    """

    def __init__(self, artifact: ModelArtifact, device: str = "cpu", batch_size: int = 4,
                 tile: int = 512, overlap: int = 64, half: bool = False,
                 edge_margin_A: float = 1.0, tta: bool | int = False) -> None:
        self.tta_passes = tta_passes(tta)
        # the calibration fitted for this many passes, if the artifact has one
        self.artifact = artifact.for_passes(self.tta_passes)
        self.tta = self.tta_passes > 1
        if not (math.isfinite(edge_margin_A) and edge_margin_A >= 0):
            raise ValueError(f"edge_margin_A must be >= 0, got {edge_margin_A}")
        self.edge_margin_A = float(edge_margin_A)
        #: Per species, a lower cut of the pooled presence than the artifact's
        #: ``column_threshold`` for the columns returned (None: the artifact's). Series
        #: keep these *candidates* and decide per track (:func:`atom3d.inference.series.postprocess`).
        self.column_floor: dict[str, float] | None = None
        self.device = resolve_device(device)
        if half and self.device.type != "cuda":
            raise UserError("--half needs a CUDA device (--device cuda)")
        if int(batch_size) < 1:
            raise UserError(f"--batch-size must be >= 1, got {batch_size}")
        model = artifact.model
        multiple = int(model.size_multiple)
        tile = int(tile)
        if tile < multiple:
            raise UserError(f"--tile must be >= {multiple} px for this model, got {tile}")
        self.tile = -(-tile // multiple) * multiple
        self.overlap = int(overlap)
        if not 0 <= self.overlap < self.tile // 2:
            raise UserError(
                f"--overlap must be in [0, tile/2 = {self.tile // 2}) px, got {overlap}")
        radius = (int(model.receptive_field_px) - 1) // 2
        self.exact_tiling = 2 * radius <= self.overlap
        self.margin = radius if self.exact_tiling else self.overlap // 4
        self.batch_size = int(batch_size)
        self.half = bool(half)
        model.to(self.device)
        if self.half:
            model.half()
        model.eval()
        self.model = model
        self.size_multiple = multiple
        self.pixel_size_A = float(artifact.pixel_size_A)
        self.classes = artifact.classes
        self.n_classes = tuple(self.classes[s] + 1 for s in SPECIES)

    # -- the network on the model grid -------------------------------------------------

    def _network(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Network logits of a normalised batch: Ce ``(B, K_ce + 1, h, w)`` and O
        ``(B, K_o + 1, h, w)``, float32. On a CPU the network runs on slices of
        :data:`CPU_NETWORK_IMAGES` images, whose logits are copied into the batch's.

        With :attr:`tta` the logits are the mean over the first :attr:`tta_passes`
        orientations of the batch (:data:`TTA_TRANSFORMS`: as is, mirrored left-right,
        up-down, both, then the same of the transposed batch), each brought back.
        """
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        parameter = next(self.model.parameters())
        x = x.to(device=parameter.device, dtype=parameter.dtype)
        # on a CPU the activations come from the heap, kept from batch to batch (see
        # atom3d.inference.memory); a GPU's live in its own memory
        cpu = x.device.type == "cpu"
        heap = network_allocations if cpu else contextlib.nullcontext  # one per forward
        step = CPU_NETWORK_IMAGES if cpu and CPU_NETWORK_IMAGES else len(x)
        if step >= len(x):
            with torch.no_grad(), heap():
                logits = tta_forward(self.model, x, self.tta_passes)
            return tuple(z.float().cpu().numpy() for z in logits)  # type: ignore[return-value]
        out: list[np.ndarray] = []
        for start in range(0, len(x), step):
            with torch.no_grad(), heap():
                part = tta_forward(self.model, x[start:start + step], self.tta_passes)
            if not out:
                out = [np.empty((len(x), *z.shape[1:]), np.float32) for z in part]
            for o, z in zip(out, part, strict=True):
                o[start:start + step] = z.float().numpy()
            del part  # before the next slice's activations
        return tuple(out)  # type: ignore[return-value]

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Logits ``(B, K_ce + 1 + K_o + 1, h, w)`` of a normalised batch (for tiling)."""
        return np.concatenate(self._network(batch), axis=1)

    def _tile_for(self, shape: tuple[int, int]) -> int:
        """Tile side for a model-grid image of ``shape``: at most :attr:`tile`.

        An image that fits gets one tile of its own size; a larger one gets the fewest
        tiles of at most :attr:`tile` per axis, each as small as that count allows (a
        512 px frame with 384 px tiles would otherwise take 2 × 2 tiles of 384² = 2.25×
        its area; here it takes 2 × 2 tiles of 288²). Sides are multiples of the
        network's ``size_multiple``.
        """
        m = self.size_multiple
        longest = max(shape)
        if longest <= self.tile:
            return -(-longest // m) * m
        o = self.overlap
        n = -(-(longest - o) // (self.tile - o))  # tiles along the longest axis
        side = max(-(-(longest + (n - 1) * o) // n), 2 * o + 1)
        return min(self.tile, -(-side // m) * m)

    def logits(self, image: np.ndarray) -> np.ndarray:
        """Tiled network logits of one *normalised* image on the model grid.

        Parameters
        ----------
        image : numpy.ndarray
            ``(h, w)`` image already resampled to :attr:`pixel_size_A` and normalised.

        Returns
        -------
        numpy.ndarray
            float32 ``(K_ce + 1 + K_o + 1, h, w)``: Ce classes first, then O classes.
        """
        image = np.asarray(image, dtype=np.float32)
        tile = self._tile_for(image.shape)
        overlap = min(self.overlap, tile - 1)
        margin = min(self.margin, overlap // 2)
        return predict_tiled(image, self._forward, tile=tile, overlap=overlap,
                             batch_size=self.batch_size, n_out=sum(self.n_classes),
                             margin=margin)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities of one *normalised* image on the model grid.

        :func:`~atom3d.models.artifact.calibrated_softmax` of :meth:`logits`, float32
        ``(K_ce + 1 + K_o + 1, h, w)``: Ce classes first, then O classes.
        """
        return self._calibrated(self.logits(image))

    def _calibrated(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of model-grid logits (Ce classes, then O classes)."""
        k_ce = self.n_classes[0]
        temperature = self.artifact.temperature
        z = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))[None]
        with torch.no_grad():
            p = [calibrated_softmax(z[:, :k_ce], temperature["Ce"]),
                 calibrated_softmax(z[:, k_ce:], temperature["O"])]
        return torch.cat(p, dim=1)[0].numpy()

    def _logits_single_tiles(self, images: Sequence[np.ndarray]
                             ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Logits ``(Ce, O)`` of images that each fit in one tile, batched across images.

        Each image is reflect-padded symmetrically to the tile as
        :func:`~atom3d.inference.tiling.predict_tiled` does for a single tile, so the
        result equals :meth:`logits` image by image.
        """
        out: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            tile = self._tile_for(chunk[0].shape)
            padded, crops = [], []
            for image in chunk:
                pads = []
                for n in image.shape:
                    extra = tile - n
                    pads.append((extra // 2, extra - extra // 2))
                padded.append(np.pad(image, pads, mode="reflect") if any(map(any, pads))
                              else image)
                crops.append(tuple(slice(b, b + n) for (b, _), n in zip(pads, image.shape,
                                                                       strict=True)))
            z_ce, z_o = self._network(np.stack(padded)[:, None])
            out.extend((a[(slice(None), *crop)], b[(slice(None), *crop)])
                       for a, b, crop in zip(z_ce, z_o, crops, strict=True))
        return out

    # -- frames -----------------------------------------------------------------------

    def model_grid(self, frame: np.ndarray, pixel_size_A: float) -> np.ndarray:
        """A frame resampled to the model pixel size and normalised (training's preprocessing)."""
        self.check_frame_shape(frame.shape, pixel_size_A)
        return normalize(resample(frame, pixel_size_A, self.pixel_size_A, order=1))

    def check_frame_shape(self, shape: tuple[int, ...], pixel_size_A: float) -> None:
        """Raise :class:`UserError` if frames of ``shape`` at ``pixel_size_A`` [Å/px] are
        too small for the network (fewer than ``MIN_SIDE_PX`` px a side on its grid)."""
        grid = self.model_grid_shape(tuple(shape), pixel_size_A)
        if min(grid) < MIN_SIDE_PX:
            raise UserError(
                f"frame of {tuple(shape)} px at {pixel_size_A:g} Å/px is only {grid} px "
                f"at the model's {self.pixel_size_A:g} Å/px (need >= {MIN_SIDE_PX} px a side)")

    def predict(self, frame: np.ndarray, pixel_size_A: float) -> FramePrediction:
        """Predict one frame (see :meth:`predict_many`)."""
        return self.predict_many([frame], pixel_size_A)[0]

    def predict_many(self, frames: Sequence[np.ndarray],
                     pixel_size_A: float) -> list[FramePrediction]:
        """Predict frames of one series (same shape and pixel size), batching small frames.

        The same as ``finish(network_stage(frames, pixel_size_A))``: see
        :meth:`network_stage` and :meth:`finish`, which
        :func:`~atom3d.inference.series.predict_series` runs in two threads on a GPU, so
        that one batch's maps, columns and writing overlap the next batch's network.

        Parameters
        ----------
        frames : sequence of numpy.ndarray
            Frames ``(H, W)`` [any intensity unit: normalisation removes gain and offset].
        pixel_size_A : float
            Input pixel size [Å/px].

        Returns
        -------
        list of FramePrediction
            One per frame, maps on the input grid.
        """
        return self.finish(self.network_stage(frames, pixel_size_A))

    def network_stage(self, frames: Sequence[np.ndarray], pixel_size_A: float) -> PendingBatch:
        """Steps 1-2 of the module docstring: validity, resampling, normalisation, network.

        Returns a :class:`PendingBatch` holding the logits; :meth:`finish` turns it into
        :class:`FramePrediction` objects.
        """
        if not (math.isfinite(pixel_size_A) and pixel_size_A > 0):
            raise UserError(f"pixel size must be a positive number of Å, got {pixel_size_A}")
        frames = [np.asarray(f, dtype=np.float32) for f in frames]
        results: list[FramePrediction | None] = [None] * len(frames)
        todo: list[int] = []
        images: list[np.ndarray] = []
        for i, frame in enumerate(frames):
            if frame.ndim != 2:
                raise ValueError(f"a frame must be 2-D, got shape {frame.shape}")
            reason = _invalid_reason(frame)
            if reason:
                results[i] = self._invalid(frame.shape, reason)
                continue
            todo.append(i)
            images.append(self.model_grid(frame, pixel_size_A))
        logits: list[tuple[np.ndarray, np.ndarray]] = []
        if images:
            single = all(max(im.shape) <= self._tile_for(im.shape) for im in images)
            if single and len({im.shape for im in images}) == 1:
                logits = self._logits_single_tiles(images)
            else:
                k_ce = self.n_classes[0]
                logits = [(z[:k_ce], z[k_ce:]) for z in map(self.logits, images)]
        return PendingBatch(frames, float(pixel_size_A), results, todo, logits)

    def finish(self, pending: PendingBatch) -> list[FramePrediction]:
        """Steps 3-4 of the module docstring for a batch from :meth:`network_stage`."""
        results = list(pending.results)
        if pending.todo:
            frames = pending.frames
            finished = self._finish_many(pending.logits, [frames[i].shape for i in pending.todo],
                                         pending.pixel_size_A)
            for i, prediction in zip(pending.todo, finished, strict=True):
                results[i] = dataclasses.replace(
                    prediction, dose_e_per_A2=estimate_dose(frames[i], pending.pixel_size_A))
        return results  # type: ignore[return-value]

    def _finish_many(self, logits: Sequence[tuple[np.ndarray, np.ndarray]],
                     shapes: Sequence[tuple[int, int]],
                     pixel_size_A: float) -> list[FramePrediction]:
        """Maps and columns of model-grid logits; maps on each frame's input grid.

        The calibrated maps, the column finding and any resampling of every
        (frame, species) run in a thread pool (NumPy and SciPy release the GIL).
        """
        temperature = self.artifact.temperature
        same = abs(pixel_size_A - self.pixel_size_A) < 1e-9 * self.pixel_size_A
        jobs = [(f, species, np.ascontiguousarray(zs, dtype=np.float32))
                for f, z in enumerate(logits) for species, zs in zip(SPECIES, z, strict=True)]

        def finish(job):
            f, species, zs = job
            t = temperature[species]
            presence, depth, confidence = calibrated_maps(zs, t)

            def class_probs(pixels: np.ndarray) -> np.ndarray:
                values = zs[:, pixels[..., 0], pixels[..., 1]]  # (K + 1, ...)
                return np.moveaxis(calibrated_probs_numpy(values, t, axis=0, dtype=np.float32),
                                   0, -1)

            table = find_columns_from(presence, class_probs, zs.shape[0], self.pixel_size_A,
                                      MIN_SEPARATION_A[species])
            table = self._inside(table, shapes[f], pixel_size_A)
            table = _present(table, self.column_cut(species))
            if len(table):
                table = dataclasses.replace(
                    table, confidence=self.artifact.map_confidence(species, table.confidence))
            if same and depth.shape == tuple(shapes[f]):
                maps = (depth, confidence)
            else:
                probs = calibrated_softmax(torch.from_numpy(zs)[None], t)[0].numpy()
                maps = self._maps_on_input_grid(probs, shapes[f], pixel_size_A)
            return table, maps

        workers = max(1, min(torch.get_num_threads(), len(jobs)))
        if workers == 1:
            done = [finish(job) for job in jobs]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                done = list(pool.map(finish, jobs))
        out = []
        for f in range(len(logits)):
            (ce_table, ce_maps), (o_table, o_maps) = done[2 * f], done[2 * f + 1]
            out.append(FramePrediction(True, "", {"Ce": ce_table, "O": o_table},
                                       ce_maps[0], ce_maps[1], o_maps[0], o_maps[1]))
        return out

    def column_cut(self, species: str) -> float:
        """Smallest pooled presence of a column returned for ``species`` (see
        :attr:`column_floor`)."""
        cut = self.artifact.column_threshold[species]
        if self.column_floor is not None and species in self.column_floor:
            cut = min(cut, float(self.column_floor[species]))
        return cut

    def _inside(self, table: ColumnTable, shape: tuple[int, int],
                pixel_size_A: float) -> ColumnTable:
        """The columns of ``table`` at least :attr:`edge_margin_A` inside the frame."""
        if self.edge_margin_A == 0 or len(table) == 0:
            return table
        m = self.edge_margin_A
        x_max = (shape[1] - 1) * pixel_size_A - m
        y_max = (shape[0] - 1) * pixel_size_A - m
        keep = ((table.x_A >= m) & (table.x_A <= x_max) & (table.y_A >= m)
                & (table.y_A <= y_max))
        return table if keep.all() else table.select(keep)

    def _maps_on_input_grid(self, probs: np.ndarray, shape: tuple[int, int],
                            pixel_size_A: float) -> tuple[np.ndarray, np.ndarray]:
        """Depth and confidence maps on the input grid ``shape``.

        Each class channel is resampled bilinearly to the input grid and the argmax is
        taken over the resampled channels, one channel at a time (the same result as
        :func:`~atom3d.inference.columns.maps_from_probs` on the resampled stack, ties going to the lower class,
        without holding the whole stack on the input grid).
        """
        depth = np.zeros(shape, np.uint8)
        best = np.full(shape, -np.inf, np.float32)
        for k, channel in enumerate(probs):
            p = resample(channel, self.pixel_size_A, pixel_size_A, order=1, shape=shape)
            better = p > best
            depth[better] = k
            best[better] = p[better]
        return depth, best

    def _invalid(self, shape: tuple[int, int], reason: str) -> FramePrediction:
        zeros = np.zeros(shape, np.uint8)
        nan = np.full(shape, np.nan, np.float32)
        columns = {s: ColumnTable.empty(n) for s, n in zip(SPECIES, self.n_classes, strict=True)}
        return FramePrediction(False, reason, columns, zeros, nan, zeros.copy(), nan.copy())

    def model_grid_shape(self, shape: tuple[int, int], pixel_size_A: float) -> tuple[int, int]:
        """Shape [px] of a frame of ``shape`` at ``pixel_size_A`` on the model grid."""
        return resampled_shape(shape, pixel_size_A, self.pixel_size_A)


def _present(table: ColumnTable, threshold: float) -> ColumnTable:
    """The columns of ``table`` whose pooled presence ``p_column`` is >= ``threshold``."""
    if threshold <= 0 or len(table) == 0:
        return table
    keep = table.p_column >= threshold
    return table if keep.all() else table.select(keep)


def _invalid_reason(frame: np.ndarray) -> str:
    """Why a frame cannot be predicted ('' if it can)."""
    if frame.size == 0:
        return "empty frame"
    if not np.all(np.isfinite(frame)):
        return "NaN or Inf values"
    if float(frame.std(dtype=np.float64)) == 0.0:
        return "no signal (constant frame)"
    return ""
