"""Streaming prediction of an HRTEM series into a results file, then tracking over time.

``atom3d predict`` (:func:`predict_main`) runs :func:`predict_series` for every input.

Streaming
    Frames are read, predicted and written one at a time (small frames in batches of
    ``--batch-size``), so memory does not grow with the number of frames; the
    post-processing after the loop reads and writes the file one frame at a time too
    (see :func:`postprocess`). When the network runs on a GPU, each batch's maps,
    columns and writing run in a worker thread while the network works on the next
    batch (on a CPU they share the cores, so they alternate). The results file is
    written by :class:`~atom3d.io.results.ResultsWriter`: into ``OUT.h5.partial`` until the
    last step, which renames it, so a file at ``OUT.h5`` is always complete. ``--resume``
    continues an interrupted run from the frames already committed; everything after the
    frame loop (tracking, smoothing, events, per-frame summaries) is recomputed from what
    the file holds, so a resumed run gives the same file as an uninterrupted one.

Per frame (``/frames``)
    ``valid``; ``n_ce``, ``n_o`` = sum of the column depths [atoms] (after smoothing when
    it is on); ``o_ce_ratio`` = n_o / n_ce (NaN without Ce); ``area_A2`` = projected
    particle area [Å²], the area of the union of discs of radius a/(2√2) = 1.913 Å around
    the Ce columns, rasterised at 0.1 Å (that radius is the covering radius of the
    projected [110] Ce lattice, so a compact particle is covered without holes; an
    isolated false detection adds only π·1.913² = 11.5 Å²); ``radius_A`` = √(area/π);
    ``n_surface_columns`` = Ce columns with fewer than 6 Ce columns within 4.6 Å (in the
    [110] projection a bulk Ce column has 4 neighbours at 3.31 Å and 2 at 3.83 Å, the next
    ones are at 5.41 Å); ``n_ce_columns``, ``n_o_columns`` = numbers of columns;
    ``dose_e_per_A2`` = the frame's electron dose estimated from its own shot noise
    [e/Å²] (:func:`~atom3d.inference.dose.estimate_dose`; gain-free, needs counts
    without a dark offset; NaN for invalid frames);
    ``drift_x``, ``drift_y`` [Å] (NaN for invalid frames); ``collective_change`` = a
    quarter or more of the frame's Ce columns changed depth together there
    (:func:`collective_change_frames`: a tilt or focus change, not atoms leaving);
    ``source_frame`` = the
    frame's number in the input file (``--frames``; :mod:`atom3d.io.selection` states
    the conventions of ``--frames`` and ``--roi`` and the root attributes that record
    them).

Drift
    :func:`~atom3d.inference.tracking.cumulative_drift` (frame to frame, ``'previous'``)
    on *presence images* rendered from the detected columns (a Gaussian of σ = 0.5 Å per
    column, Ce weight 1, O weight 0.5, on a grid of max(p, 0.25 Å)): much cleaner than
    the raw low-dose frames and computed from the file alone (resume-safe). Invalid frames
    are skipped (the chain jumps over them).

Tracks, smoothing, events
    :func:`~atom3d.inference.tracking.link_tracks` per species (Ce within 1.2 Å, O within
    0.8 Å after drift correction, gaps up to 2 frames; O ids start after the last Ce id).
    For series (more than one frame) the depth of each track is smoothed (``--smoothing``):
    by default with change points (:func:`~atom3d.inference.tracking.changepoint_depths`:
    the track's expected depth E[k] over time is cut into constant segments at the
    changes that noise cannot explain, each segment gets one depth, and consecutive
    segments step the way their levels step), or with the HMM of
    :func:`~atom3d.inference.tracking.smooth_track_depths` (``hmm``), or not at all
    (``none``, also ``--no-smooth``). ``depth`` and ``confidence`` of ``/columns`` then
    hold the smoothed depth and its per-frame probability, while the extra fields
    ``depth_frame``/``confidence_frame`` keep the frame-by-frame values; the method is
    the ``depth_smoothing`` attribute. :func:`~atom3d.inference.tracking.detect_events`
    (tracks seen in at least 2 frames) fills ``/events``.

Extra ``/columns`` fields
    ``p_column`` (probability that a column is there), ``depth_frame``,
    ``confidence_frame``, and ``p_depth_1 … p_depth_K`` (float16: pooled probability of
    each depth given a column, K = the larger of the model's two class counts; 0 beyond a
    species' own K). The depth posteriors make the smoothing reproducible on resume and
    let users re-analyse a series without rerunning the network.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from atom3d.argtypes import LATTICE
from atom3d.errors import InputFileError, UserError
from atom3d.inference.lattice import (
    LATTICE_SEARCH,
    LATTICE_TOLERANCE,
    LATTICE_WIDE_A,
    lattice_attrs,
    series_lattice,
)
from atom3d.inference.memory import limit_malloc_arenas, release_free_memory
from atom3d.inference.options import (  # noqa: F401 - re-exported
    PREDICT_DESCRIPTION,
    build_predict_parser,
    configure_predict_parser,
)
from atom3d.inference.predictor import FramePrediction, PendingBatch, Predictor
from atom3d.inference.tracking import (
    RING_COUNT,
    TrackLinker,
    TrackPacker,
    ViterbiBackward,
    ViterbiForward,
    cumulative_drift,
    ring_means,
    ring_radii_A,
    segment_packed,
)
from atom3d.io.results import (
    ResultsWriter,
    attr_equal,
    partial_path,
    read_results,
    sha256_file,
)
from atom3d.io.selection import SelectedSeries, selection_attrs, selection_note
from atom3d.models import DEFAULT_MODEL  # model used when --model is not given
from atom3d.models.summary import expected_at_dose, terminal_paragraph

__all__ = [
    "DEFAULT_MODEL",
    "area_and_radius",
    "build_predict_parser",
    "configure_predict_parser",
    "count_surface_columns",
    "predict_main",
    "predict_series",
    "run_predict",
]

log = logging.getLogger(__name__)


#: Half the [110] repeat: covering radius of the projected Ce lattice, a/(2√2) [Å].
CE_DISC_RADIUS_A = 5.411 / (2 * math.sqrt(2))
#: Raster spacing of the area computation [Å].
AREA_RASTER_A = 0.1
#: Ce columns within this distance count as neighbours [Å]; bulk columns have 6.
SURFACE_NEIGHBOUR_CUTOFF_A = 4.6
SURFACE_MIN_NEIGHBOURS = 6
#: Tracking: largest drift-corrected step of one column between frames [Å].
LINK_MAX_DIST_A = {"Ce": 1.2, "O": 0.8}
LINK_MAX_GAP = 2
#: Depth smoothing along tracks: ``changepoint`` (default; Ce tracks cut on the image
#: rings, O tracks on E[k]), ``changepoint-levels`` (every track cut on E[k], the rule of
#: sessions 7-11), ``hmm`` or ``none``.
SMOOTHING_METHODS = ("changepoint", "changepoint-levels", "hmm", "none")
#: Change-point smoothing (:func:`~atom3d.inference.tracking.changepoint_depths`):
#: threshold ``CHANGEPOINT_PENALTY · σ² · ln L`` on the drop of squared error of a split
#: (2 would be the Schwarz criterion). Chosen in session 7 from 1.6 / 2.0 / 2.4 / 2.8 as
#: the smallest that keeps every one of four `atom3d demo` series (seeds 0-3, 12 frames,
#: 1000 e/Å², the ceo2-110 model run 7) at <= 4 % flicker: 3.5 / 1.7 / 3.1 / 3.9 %, with
#: 81 of 130 true changes reported (the HMM below: 63). Checked afterwards on four other
#: seeds (4-7): flicker 1.3 / 1.2 / 3.8 / 3.7 %, 87 of 129 changes (the HMM: 2.9 / 4.9 /
#: 4.4 / 3.8 %, 74 of 129). Kept for run 8 (session 8; by the same rule 2.2 reaches 4.2 %
#: on one series): seeds 0-7 flicker 1.5-3.5 %, 163 of 259 changes.
CHANGEPOINT_PENALTY = 2.4
#: Smallest change of a track's level that counts as a change point [atoms of E[k]]
#: (session 10, run 8): a leaving atom moves E[k] by 0.5-0.6 on average, while at high
#: dose (small σ) steps of a few tenths pass the penalty without being real. On the demo
#: series (seeds 0-3 and 4-7 at 1000 e/Å², 0-3 at 300 and 3000) with 8 network passes
#: (``--tta``, the default) and penalty 2.4 (by session 7's rule: 2.4 keeps seeds 0-3 at
#: 1.0 / 1.2 / 2.0 / 3.8 % flicker), 0.4 gives 58/130, 182/259 and 105/129 true changes
#: at flicker <= 3.8, 4.4 and 5.5 %, against 58, 188 and 109 at <= 3.8, 5.4 and 7.6 %
#: without it; with one pass it leaves the changes at 1000 e/Å² as they were (163/259)
#: and lowers the flicker at 3000 e/Å² from <= 6.1 to <= 4.9 %.
CHANGEPOINT_MIN_STEP = 0.4
#: Change points of Ce tracks from the image (``changepoint``, session 12): the frame's
#: radial profile (:func:`~atom3d.inference.tracking.ring_means`, hard rings until
#: session 16, hat-weighted radii 0-1.2 Å since session 17) around the track's position
#: (its mean drift-corrected position plus the frame's drift), each ring in units of its
#: frame-to-frame noise over the series, cut by binary segmentation at a drop of squared
#: error of ``CHANGEPOINT_RING_PENALTY · ln L``; a cut is kept where the mean E[k] of the two
#: sides differs by at least ``CHANGEPOINT_RING_MIN_STEP`` [atoms]. An ideal observer sees a
#: lost surface Ce atom with d' 4-8 per frame at 1000 e/Å², while it moves E[k] by only about
#: 2σ. Session 7's rule (the smallest penalty with every tuning series <= 4 % flicker) gave
#: 4.0 on the demo series seeds 0 and 2 (1000 e/Å², 8 passes); on seeds 3-6 it reached
#: 4.7 % flicker on one series, so 4.5 is used, for margin to the 5 % of issue 4: seeds 0
#: and 2-6 then report 165/194 true changes (85 %, every series >= 81 %) at 3.0 % flicker
#: (worst series 3.8 %; with the 0.2-atom step alone, before the σ step below), against
#: 130/194 (67 %) at 2.8 % for E[k] alone (changepoint-levels). With the final rule, seeds
#: 0-7: 220/259 (85 %) at 1.8-3.7 % flicker per series. See report/change_detection_s12/.
#: Session 17 (report/domain_series_s17/): with the hat-weighted profile 5.5 is kept, the
#: smallest of 5.0 / 5.5 / 6.0 / 6.5 with every one of 20 series (16 domain series and the
#: demo seeds 0-3) under 4 % flicker (5.0: 4.0 %): 573 of 647 true changes (89 %) at 2.2 %
#: flicker, worst series 3.3 % (hard rings at 5.5: 548 at 2.0 %, worst 4.3 %; at 5.0: 553
#: at 2.6 %, worst 5.1 %).
CHANGEPOINT_RING_PENALTY = 5.5  # 4.5 with the rings alone (session 12); see below
CHANGEPOINT_RING_MIN_STEP = 0.2
#: ... and by at least this many σ of the series' frame-to-frame E[k] noise (σ is 0.20-0.22
#: on the demo series at 0.2 Å/px, 0.30-0.33 on the same resampled to 0.3 Å/px, where the
#: 0.2-atom step alone let one series reach 5.3 % flicker; with it: 0.2 Å/px seeds 0 and
#: 2-6 164/194 changes at 2.9 % flicker (worst 3.7 %), 0.3 Å/px seeds 3-6 86/130 at 3.5 %
#: (worst 4.2 %), 0.15 Å/px 116/130 at 2.4 % (worst 2.8 %)).
CHANGEPOINT_RING_MIN_STEP_SIGMA = 1.0
#: ... or, whatever E[k] does, where the ring change along the series' loss signature is
#: at least this significant (session 13; :func:`~atom3d.inference.tracking.ring_signature`
#: learns the signature from the series' confident cuts, :func:`~atom3d.inference.tracking.segment_track`
#: uses it; inf: off).
CHANGEPOINT_SIGNATURE_Z = 3.0
#: ... with the signature of columns of the track's thickness (session 17): the confident
#: cuts of tracks whose mean E[k] is near the track's count with Gaussian weights of this
#: width [atoms] (:func:`~atom3d.inference.tracking.local_signature`; the series' signature
#: where they sum below 3; inf: one signature for every track). A lost atom changes the
#: image of a thin and of a thick column differently. On 26 series (the 20 of session 16
#: and seeds 130-135, report/domain_series_s17/): 741 against 729 of 837 true changes at
#: 2.31 against 2.23 % flicker (worst series 3.6 against 3.5 %), no series losing a
#: change; widths 1.5 / 3 gave 740 / 736.
CHANGEPOINT_SIGNATURE_BANDWIDTH = 2.0
#: Weight of the track's E[k] (in units of its noise σ) as one more channel beside the
#: rings when cutting Ce tracks (0: rings alone). Session 13 tuned these three (penalty,
#: signature z, level weight) on 8 demo-like series over the model's domain (random
#: optics, 0.17-0.28 Å/px, tilt <= 10 mrad, 1000 e/Å²; report/domain_series_s13/) and the
#: demo series seeds 0-3, all with the column detection over time: rings alone at 4.5
#: report 182/251 (73 %) and 105/128 (82 %) true changes at 2.0 % and 3.1 % flicker (worst
#: series 3.2 and 4.1 %); with 5.5 / 3 / 0.7, 194/251 (77 %) and 108/128 (84 %) at 2.0 and
#: 2.5 % (worst 3.2 and 3.9 %). Weights 0.5 / 0.85 and penalty 5.0 move along the same
#: curve (190-196/251 at worst 3.0-3.9 %). Session 16 (report/domain_series_s16/): on 16
#: domain series (seeds 110-117 and 120-127) and the demo seeds 0-3, 0.6 instead of 0.7
#: reports 548 against 549 of 647 true changes and lowers the flicker in 16 of the 20
#: series (3 equal, demo seed 0 1.5 -> 1.7 %; worst series 5.3 -> 4.3 %, seed 120 at
#: 0.296 Å/px); on seeds 124-127, drawn after the choice, 113/132 at <= 2.0 % against
#: 112/132 at <= 2.5 %.
CHANGEPOINT_LEVEL_WEIGHT = 0.6
#: Level noise used when a series has too few within-track differences to measure it:
#: σ of the expected Ce depth between frames of those demo series (0.22-0.26).
DEFAULT_LEVEL_NOISE = 0.25
#: Series of at least this many frames predicted with test-time augmentation on a CPU
#: get a note that ``--no-tta`` is faster.
LONG_SERIES_FRAMES = 100
#: HMM smoothing: probability per frame that a column's depth changes; largest step.
SWITCH_PROB = 0.45
MAX_STEP = 1
# Tuned on four `atom3d demo` series (seeds 0-3: 12 frames, 1000 e/Å², 3 Ce atoms leave
# per frame) with the session-5 ceo2-110 model (run 6): steady-column flicker
# 1.7 / 2.4 / 2.1 / 3.2 % and 50 / 44 / 42 / 39 % of the true depth changes reported as
# events. 0.4: at most 2.0 % flicker, 41 % of the changes; 0.5: up to 4.0 % flicker,
# 50 %; 0.55: up to 6.2 %, 56 %. Kept for run 7 (session 6): flicker 3.4 / 2.0 / 2.8 /
# 3.8 %, 49 % of the changes on the same series.
#: Events of tracks seen in fewer frames are ignored (isolated false detections).
MIN_TRACK_LENGTH = 2
#: Column detection over time (session 13). In a series of at least
#: ``TRACK_DETECTION_MIN_FRAMES`` frames every frame keeps the found columns whose pooled
#: presence reaches ``TRACK_CANDIDATE_THRESHOLD`` (below the model's ``column_threshold``
#: of 0.64 Ce / 0.66 O); after linking, a track is reported if every detection of it
#: reaches the model's threshold (what a single image reports), or if its mean presence
#: reaches ``TRACK_PRESENCE_THRESHOLD`` over at least ``TRACK_DETECTION_MIN_LENGTH``
#: detections; the other tracks are dropped. A thin surface column that one frame shows
#: at presence 0.5-0.6 is thereby found from its persistence. On 8 demo-like series over
#: the model's domain (random optics, 0.17-0.28 Å/px, tilt <= 10 mrad, 1000 e/Å²,
#: report/domain_series_s13/, seeds 100-107, on which the rule was chosen), Ce: 288 -> 86
#: missed columns, 7 -> 7 false ones (F1 0.978 -> 0.993; the worst series 0.882 -> 0.952);
#: O: F1 0.951 -> 0.962. On 8 other series (seeds 110-117) Ce F1 0.999.
#: Session 17 (report/domain_series_s17/): Ce 0.56 -> 0.60. In images with almost no phase
#: contrast (defocus and Cs both near 0) the network sees thin columns on empty lattice
#: sites just outside the particle, with presence 0.47-0.68, persistently: two of 32
#: series (seed 137 at 1000 e/Å², 113 at 300 e/Å²) had 43 false Ce columns each (F1 0.959
#: and 0.961). Over the 32 series 0.60 gives 30 false and 81 missed Ce columns against
#: 140 and 62 (pooled F1 0.9979 against 0.9962, worst series 0.984 against 0.959; 0.58:
#: 69 / 69, 0.62: 22 / 96) and the same change recall (876 against 877 of 1031).
TRACK_CANDIDATE_THRESHOLD = {"Ce": 0.4, "O": 0.4}
TRACK_PRESENCE_THRESHOLD = {"Ce": 0.60, "O": 0.60}
TRACK_DETECTION_MIN_LENGTH = 3
TRACK_DETECTION_MIN_FRAMES = 3
#: Presence images for drift: Gaussian width [Å], grid spacing floor [Å], O weight.
DRIFT_SIGMA_A = 0.5
DRIFT_GRID_A = 0.25
DRIFT_O_WEIGHT = 0.5
#: Finish and write each batch in a worker thread while the network runs on the next
#: (None: only when the network is not on the CPU; see :func:`predict_series`).
OVERLAP_FINISH: bool | None = None
#: Frames per commit of the results tables (a hard kill loses at most these; see
#: ResultsWriter's ``commit_every``).
COMMIT_EVERY = 16
#: Frames between hand-backs of the heaps' free memory (:func:`release_free_memory`)
#: during the frame loop (each time after a batch is written and freed), and once after
#: it (0: only after it). Without them the heap's layout drifts over a long series
#: (session 23, shipped model, 512² frames: peak 2056 MB for 100 frames, 2578 MB for
#: 1000); see :mod:`atom3d.inference.memory`.
TRIM_EVERY_FRAMES = 64
#: Frames whose column rows post-processing reads at once (memory: ~1 MB per frame).
ROW_BLOCK = 16
#: Invalid frames reported one by one on stderr (the rest are only counted).
MAX_INVALID_MESSAGES = 5

#: A frame at which at least ``COLLECTIVE_FRACTION`` of its Ce columns (and at least
#: ``COLLECTIVE_MIN_COLUMNS``) change depth, ``COLLECTIVE_SAME_SIGN`` of them the same way,
#: is flagged ``collective_change`` in ``/frames`` and warned about: the contrast of the
#: whole particle changed (a tilt off the zone axis, a jump of focus), which atoms leaving
#: one by one do not do. ``report/tilt_s27/``: the demo particle tilting by 20 mrad
#: between two frames, no atom lost, made 45 of its 58 Ce columns drop together (n_ce
#: 312 → 253); the same series without the tilt changed at most a few per frame.
COLLECTIVE_FRACTION = 0.25
COLLECTIVE_MIN_COLUMNS = 8
COLLECTIVE_SAME_SIGN = 0.8


def collective_change_frames(events: Sequence[Mapping[str, Any]],
                             n_ce_columns: np.ndarray) -> np.ndarray:
    """Which frames hold a collective Ce depth change (see :data:`COLLECTIVE_FRACTION`).

    Parameters
    ----------
    events : sequence of mappings
        Event rows (``frame``, ``species``, ``kind``, ``depth_before``, ``depth_after``).
    n_ce_columns : numpy.ndarray
        Ce columns reported in each frame, ``(T,)``.

    Returns
    -------
    numpy.ndarray
        bool ``(T,)``.
    """
    n_ce_columns = np.asarray(n_ce_columns, float)
    down = np.zeros(len(n_ce_columns), int)
    up = np.zeros(len(n_ce_columns), int)
    for e in events:
        if e["species"] != "Ce" or e["kind"] != "depth_change":
            continue
        t = int(e["frame"])
        if int(e["depth_after"]) < int(e["depth_before"]):
            down[t] += 1
        else:
            up[t] += 1
    changed = down + up
    need = np.maximum(COLLECTIVE_MIN_COLUMNS, COLLECTIVE_FRACTION * n_ce_columns)
    return (changed >= need) & (np.maximum(down, up) >= COLLECTIVE_SAME_SIGN * changed)


_SPECIES = ("Ce", "O")


# --------------------------------------------------------------------------- geometry


def area_and_radius(x_A: np.ndarray, y_A: np.ndarray,
                    disc_radius_A: float = CE_DISC_RADIUS_A,
                    raster_A: float = AREA_RASTER_A) -> tuple[float, float]:
    """Projected particle area [Å²] and equivalent radius [Å] from Ce column positions.

    The area is that of the union of discs of ``disc_radius_A`` around the columns,
    counted on a raster of ``raster_A`` (pixel centres inside a disc); the radius is
    ``sqrt(area / π)``. No columns give (0, 0).

    Counted row by row without drawing the raster: each disc covers one run of pixel
    centres per raster row, and the runs of all discs are merged after sorting them
    (the same count as marking every covered pixel of a raster, five times faster for
    a few hundred columns).
    """
    xy = np.column_stack([np.asarray(x_A, np.float64), np.asarray(y_A, np.float64)])
    if len(xy) == 0:
        return 0.0, 0.0
    lo = xy.min(axis=0) - disc_radius_A - raster_A
    width = int(np.ceil((xy.max(axis=0)[0] + disc_radius_A + raster_A - lo[0]) / raster_A)) + 1
    r_px = disc_radius_A / raster_A
    r2 = np.float32(r_px**2)
    k = int(np.ceil(r_px)) + 1
    centre = (xy - lo) / raster_A  # raster coordinates (x, y)
    base = np.rint(centre).astype(np.int64)  # the pixel holding each centre
    fx, fy = (base - centre).astype(np.float32).T  # (N,) offsets of those pixels
    dy = np.arange(-k, k + 1)
    ry2 = (fy[:, None] + dy.astype(np.float32)) ** 2  # (N, 2k + 1): one per raster row

    def inside(dx: np.ndarray) -> np.ndarray:  # pixel (row, base + dx) inside its disc
        return (fx[:, None] + dx.astype(np.float32)) ** 2 + ry2 <= r2

    half = np.sqrt(np.maximum(r2 - ry2, 0)).astype(np.float64)
    first_guess = np.ceil(-fx[:, None] - half).astype(np.int64)
    last_guess = np.floor(-fx[:, None] + half).astype(np.int64)
    first = np.full(first_guess.shape, np.iinfo(np.int64).max)
    last = np.full(last_guess.shape, np.iinfo(np.int64).min)
    for step in (1, 0, -1):  # the float32 rule decides pixels within one of the guess
        first = np.where(inside(first_guess - step), np.minimum(first, first_guess - step), first)
        last = np.where(inside(last_guess + step), np.maximum(last, last_guess + step), last)
    run = first <= last  # rows the disc does not reach have no inside pixel at all
    row = (base[:, 1, None] + dy[None]) * (width + 2 * k + 2)  # rows never touch
    start = (row + base[:, 0, None] + first)[run]
    stop = (row + base[:, 0, None] + last)[run]
    if start.size == 0:  # discs smaller than a raster pixel may cover no pixel centre
        return 0.0, 0.0
    order = np.argsort(start, kind="stable")
    start, stop = start[order], stop[order]
    covered = np.maximum.accumulate(stop)  # the furthest pixel covered so far
    before = np.concatenate([[start[0] - 1], covered[:-1]])
    count = int(np.maximum(0, stop - np.maximum(start, before + 1) + 1).sum())
    area = float(count) * raster_A**2
    return area, math.sqrt(area / math.pi)


def count_surface_columns(x_A: np.ndarray, y_A: np.ndarray,
                          cutoff_A: float = SURFACE_NEIGHBOUR_CUTOFF_A,
                          min_neighbours: int = SURFACE_MIN_NEIGHBOURS) -> int:
    """Number of Ce columns with fewer than ``min_neighbours`` Ce columns within ``cutoff_A``."""
    xy = np.column_stack([np.asarray(x_A, np.float64), np.asarray(y_A, np.float64)])
    if len(xy) == 0:
        return 0
    counts = cKDTree(xy).query_ball_point(xy, cutoff_A, return_length=True) - 1
    return int(np.sum(counts < min_neighbours))


# --------------------------------------------------------------------------- per frame


def _column_rows(pred: FramePrediction, k_max: int) -> dict[str, np.ndarray]:
    """The ``/columns`` rows of one frame (Ce first, then O) with the extra fields."""
    parts: dict[str, list[np.ndarray]] = {}

    def add(name: str, values: np.ndarray) -> None:
        parts.setdefault(name, []).append(values)

    for species in _SPECIES:
        t = pred.columns[species]
        n = len(t)
        given = np.zeros((n, k_max), np.float64)
        if n:
            p = t.probs[:, 1:].astype(np.float64)
            given[:, : p.shape[1]] = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-12)
        given = given.astype(np.float16).T  # (k_max, n): one conversion, rows as views
        add("x", t.x_A)
        add("y", t.y_A)
        add("depth", t.depth)
        add("confidence", t.confidence)
        add("species", np.full(n, species))
        add("p_column", t.p_column)
        add("depth_frame", t.depth)
        add("confidence_frame", t.confidence)
        for k in range(k_max):
            add(f"p_depth_{k + 1}", given[k])
    return {name: np.concatenate(v) for name, v in parts.items()}


def _frame_row(pred: FramePrediction, source_frame: int) -> dict[str, Any]:
    """The ``/frames`` row of one frame, frame ``source_frame`` of the input file (drift is
    filled in after the loop)."""
    ce, o = pred.columns["Ce"], pred.columns["O"]
    n_ce = int(ce.depth.astype(np.int64).sum())
    n_o = int(o.depth.astype(np.int64).sum())
    area, radius = area_and_radius(ce.x_A, ce.y_A)
    return {
        "valid": bool(pred.valid),
        "drift_x": math.nan,
        "drift_y": math.nan,
        "n_ce": n_ce,
        "n_o": n_o,
        "o_ce_ratio": np.float32(n_o / n_ce) if n_ce else np.float32(np.nan),
        "area_A2": np.float32(area),
        "radius_A": np.float32(radius),
        "n_surface_columns": np.int32(count_surface_columns(ce.x_A, ce.y_A)),
        "n_ce_columns": np.int32(len(ce)),
        "n_o_columns": np.int32(len(o)),
        "dose_e_per_A2": np.float32(pred.dose_e_per_A2),
        "source_frame": np.int32(source_frame),
    }


def _write_prediction(writer: ResultsWriter, i: int, pred: FramePrediction, k_max: int,
                      source_frame: int | None = None) -> None:
    """Write frame ``i`` (maps, columns, frame row) and commit it; ``source_frame``: its
    index in the input file (``i`` when None)."""
    writer.write_frame(
        i, ce_depth=pred.ce_depth, ce_confidence=pred.ce_confidence,
        o_depth=pred.o_depth, o_confidence=pred.o_confidence,
        columns=_column_rows(pred, k_max),
        frame_row=_frame_row(pred, i if source_frame is None else source_frame),
    )


# --------------------------------------------------------------------------- after the loop


def _presence_images(columns_of: Any, frames: Sequence[int], shape: tuple[int, int],
                     pixel_size_A: float, grid_A: float) -> Iterator[np.ndarray]:
    """Rendered column-presence images of ``frames`` (one at a time).

    ``columns_of(t)`` returns the ``x``, ``y`` [Å] and ``species`` of frame ``t``'s columns.
    """
    h = int(math.ceil(shape[0] * pixel_size_A / grid_A))
    w = int(math.ceil(shape[1] * pixel_size_A / grid_A))
    sigma = DRIFT_SIGMA_A / grid_A
    k = int(math.ceil(3 * sigma))
    d = np.arange(-k, k + 1)
    for t in frames:
        c = columns_of(t)
        image = np.zeros((h, w), np.float64)
        if len(c["x"]):
            cx = c["x"].astype(np.float64) / grid_A
            cy = c["y"].astype(np.float64) / grid_A
            weight = np.where(c["species"] == "Ce", 1.0, DRIFT_O_WEIGHT)
            bx, by = np.rint(cx).astype(int), np.rint(cy).astype(int)
            px = bx[:, None] + d[None]  # (N, 2k+1)
            py = by[:, None] + d[None]
            gx = np.exp(-0.5 * ((px - cx[:, None]) / sigma) ** 2)
            gy = np.exp(-0.5 * ((py - cy[:, None]) / sigma) ** 2)
            values = weight[:, None, None] * gy[:, :, None] * gx[:, None, :]
            flat = py[:, :, None] * w + px[:, None, :]
            if px.min() < 0 or px.max() >= w or py.min() < 0 or py.max() >= h:
                ok = (((py >= 0) & (py < h))[:, :, None] & ((px >= 0) & (px < w))[:, None, :])
                flat, values = flat[ok], values[ok]
            image += np.bincount(flat.ravel(), weights=values.ravel(),
                                 minlength=h * w).reshape(h, w)
        yield image


def series_drift(columns_of: Any, valid: np.ndarray, shape: tuple[int, int],
                 pixel_size_A: float) -> np.ndarray:
    """Drift ``[dx, dy]`` [Å] of every frame relative to the first valid one (NaN if invalid).

    ``columns_of(t)`` returns the ``x``, ``y`` [Å] and ``species`` of frame ``t``'s
    columns; frames are visited once, in order. See the module docstring (presence
    images rendered from the columns).
    """
    n = len(valid)
    drift = np.full((n, 2), np.nan)
    good = [t for t in range(n) if valid[t]]
    if not good:
        return drift
    grid = max(float(pixel_size_A), DRIFT_GRID_A)
    images = _presence_images(columns_of, good, shape, pixel_size_A, grid)
    drift[good] = cumulative_drift(images, grid, reference="previous")
    return drift


def _filled(drift: np.ndarray) -> np.ndarray:
    """Drift with NaN rows replaced by the last known value (0 before the first)."""
    out = np.array(drift, dtype=np.float64)
    last = np.zeros(2)
    for t in range(len(out)):
        if np.all(np.isfinite(out[t])):
            last = out[t]
        else:
            out[t] = last
    return out


def _depth_posteriors(cols: dict[str, np.ndarray], idx: np.ndarray, k: int) -> np.ndarray:
    """``(N, k)`` stored depth probabilities (classes 1..k) of rows ``idx``, renormalised."""
    p = np.stack([cols[f"p_depth_{j + 1}"][idx].astype(np.float64) for j in range(k)], axis=1)
    p = p.reshape(-1, k)
    total = p.sum(axis=1, keepdims=True)
    return np.where(total > 0, p / np.maximum(total, 1e-300), 1.0 / k)


class _TrackMeans:
    """Running mean of the drift-corrected position [Å] of every track id."""

    def __init__(self) -> None:
        self.sums = np.zeros((0, 2))
        self.counts = np.zeros(0)

    def add(self, ids: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64).reshape(-1)
        if not ids.size:
            return
        if ids.max() >= len(self.counts):
            n = max(int(ids.max()) + 1, 2 * len(self.counts))
            self.sums = np.concatenate([self.sums, np.zeros((n - len(self.sums), 2))])
            self.counts = np.concatenate([self.counts, np.zeros(n - len(self.counts))])
        np.add.at(self.sums, ids, np.column_stack([x, y]))
        np.add.at(self.counts, ids, 1.0)

    def mean(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64).reshape(-1)
        return self.sums[ids] / self.counts[ids][:, None]


def postprocess(writer: ResultsWriter, classes: dict[str, int], pixel_size_A: float,
                smoothing: str = "changepoint",
                map_confidence: Callable[[str, np.ndarray], np.ndarray] | None = None,
                image: Callable[[int], np.ndarray] | None = None,
                track_detection: dict[str, tuple[float, float]] | None = None,
                ) -> dict[str, Any]:
    """Drift, tracks, depth smoothing, events and frame summaries of a fully written series.

    Everything is computed from the rows stored in the (partial) results file, so that a
    resumed run finishes into the same file as an uninterrupted one. The file is read
    and written one frame at a time, so memory does not grow with the series: a pass
    over the frames for the drift, one for linking and the forward half of the HMM of
    both species (:class:`~atom3d.inference.tracking.ViterbiForward`; the per-column
    back-pointers go to anonymous scratch files beside the output), and one in reverse
    for the smoothed depths and the events
    (:class:`~atom3d.inference.tracking.ViterbiBackward`). The result equals that of
    :func:`~atom3d.inference.tracking.link_tracks`,
    :func:`~atom3d.inference.tracking.smooth_track_depths` and
    :func:`~atom3d.inference.tracking.detect_events` on the whole series (tested).

    ``smoothing="changepoint"`` (the default) replaces the HMM's depths by those of
    :func:`~atom3d.inference.tracking.changepoint_depths`, which needs each track's whole
    sequence: the forward pass writes each detection's expected and most probable depth
    to the scratch file, a second pass packs them track by track in memory (5 bytes per
    detection, plus 1 for the result: 20 MB for 1000 frames of 3400 columns), and the result
    equals :func:`~atom3d.inference.tracking.changepoint_track_depths` on the whole
    series (tested; threshold ``CHANGEPOINT_PENALTY · σ² · ln L``, steps of at least
    ``CHANGEPOINT_MIN_STEP``; both are recorded in the file's attributes).
    Its confidence is the frame's calibrated ``confidence_frame`` where
    the smoothed depth is the frame's own most probable one, else the frame's probability
    of the smoothed depth through ``map_confidence(species, p)`` (the model's confidence
    map; identity if None). With ``image`` (frame index → the input frame, on the grid of
    ``pixel_size_A``) the Ce tracks are cut on the image instead
    (:func:`~atom3d.inference.tracking.ring_means` at each detection's track position, one
    more pass over the input frames, 20 bytes per Ce detection; ``CHANGEPOINT_RING_*``).
    ``"changepoint-levels"`` cuts every track on E[k]; ``"none"`` keeps the
    frame-by-frame depths.

    With ``track_detection`` (species → (frame threshold, track threshold); the rows hold
    candidates below the frame threshold) a track is reported if every detection of it
    reaches the frame threshold, or if its mean pooled presence reaches the track
    threshold over at least ``TRACK_DETECTION_MIN_LENGTH`` detections; the rows of the
    other tracks are dropped at the end (:meth:`~atom3d.io.results.ResultsWriter.keep_column_rows`,
    one more pass; 1 byte per row meanwhile), after their depths took part in nothing but
    their own tracks. The per-frame summaries of ``/frames`` are recomputed from the
    reported columns.

    Returns
    -------
    dict
        ``n_events``, ``n_tracks`` and ``smoothing`` (the method applied: ``"none"`` for
        a single frame).
    """
    if smoothing not in SMOOTHING_METHODS:
        raise ValueError(f"smoothing must be one of {SMOOTHING_METHODS}, got {smoothing!r}")
    frames = writer.read_frames()
    n_frames = writer.n_frames
    valid = frames["valid"].astype(bool)
    writer.sort_by_frame()
    bounds = writer.column_frame_bounds()
    if n_frames < 2:
        smoothing = "none"
    changepoints = smoothing.startswith("changepoint")
    use_rings = smoothing == "changepoint" and image is not None
    track_means = _TrackMeans()  # Ce: where the rings are read
    k_max = max(classes.values())
    p_fields = [f"p_depth_{j + 1}" for j in range(k_max)]

    blocks: dict[tuple[str, ...], tuple[int, int, dict[str, np.ndarray]]] = {}

    def rows(t: int, fields: Sequence[str]) -> dict[str, np.ndarray]:
        """Frame t's rows, read ROW_BLOCK frames at a time (forward or backward)."""
        key = tuple(fields)
        lo, hi, block = blocks.get(key, (0, 0, {}))
        if not lo <= t < hi:
            lo = t if t >= hi else max(t + 1 - ROW_BLOCK, 0)
            hi = min(lo + ROW_BLOCK, n_frames)
            block = writer.read_column_rows(int(bounds[lo]), int(bounds[hi]), fields)
            blocks[key] = (lo, hi, block)
        a, b = int(bounds[t] - bounds[lo]), int(bounds[t + 1] - bounds[lo])
        return {name: values[a:b] for name, values in block.items()}

    drift = series_drift(lambda t: rows(t, ("x", "y", "species")), valid, writer.shape,
                         pixel_size_A)
    link_drift = _filled(drift)

    scratch_dir = writer.partial_path.parent
    records = {sp: np.dtype([("id", "<i4"), ("best", "u1"), ("first", "?"),
                             ("chain", "u1", (classes[sp],)), ("level", "<f4"),
                             ("frame_depth", "u1")]) for sp in _SPECIES}
    with contextlib.ExitStack() as stack:
        scratch = {sp: stack.enter_context(tempfile.TemporaryFile(
            prefix=".atom3d-scratch-", dir=scratch_dir)) for sp in _SPECIES}
        # forward, one read of every frame: link and run the HMM forward per species.
        # Ids are numbered per species here; O ids move past the Ce ids below.
        linkers = {sp: TrackLinker(LINK_MAX_DIST_A[sp], max_gap=LINK_MAX_GAP) for sp in _SPECIES}
        forwards = {sp: ViterbiForward(classes[sp], SWITCH_PROB, MAX_STEP, max_gap=LINK_MAX_GAP,
                                       scores=smoothing == "hmm")  # else `first` alone
                    for sp in _SPECIES}
        offsets = {sp: np.zeros(n_frames + 1, np.int64) for sp in _SPECIES}
        packers = {sp: TrackPacker() for sp in _SPECIES}  # change points: tracks laid out
        presence = {sp: _TrackPresence() for sp in _SPECIES}
        forward_fields = ("x", "y", "species", *p_fields,
                          *(("p_column",) if track_detection is not None else ()))
        for t in range(n_frames):
            r = rows(t, forward_fields)
            for species in _SPECIES:
                sel = r["species"] == species
                ids = linkers[species].step(r["x"][sel], r["y"][sel], link_drift[t])
                if track_detection is not None:
                    presence[species].add(ids, r["p_column"][sel])
                if use_rings and species == "Ce":
                    track_means.add(ids, r["x"][sel] - link_drift[t, 0],
                                    r["y"][sel] - link_drift[t, 1])
                posterior = _depth_posteriors(r, sel, classes[species])
                out = np.empty(len(ids), records[species])
                out["id"] = ids
                out["best"], out["first"], out["chain"] = forwards[species].step(ids, posterior)
                out["level"] = posterior @ np.arange(1, classes[species] + 1)
                out["frame_depth"] = np.argmax(posterior, axis=1) + 1
                if changepoints:
                    packers[species].count(ids)
                scratch[species].write(out.tobytes())
                offsets[species][t + 1] = offsets[species][t] + len(ids)
        first_id = {"Ce": 0, "O": linkers["Ce"].next_id}
        next_id = linkers["Ce"].next_id + linkers["O"].next_id
        reported = None
        if track_detection is not None:
            reported = {sp: presence[sp].reported(*track_detection[sp],
                                                  TRACK_DETECTION_MIN_LENGTH,
                                                  linkers[sp].next_id) for sp in _SPECIES}
        del presence

        def read_records(species: str, t: int) -> np.ndarray:
            record, (lo, hi) = records[species], offsets[species][t:t + 2]
            scratch[species].seek(int(lo) * record.itemsize)
            return np.frombuffer(scratch[species].read(int(hi - lo) * record.itemsize), record)

        # change points: each track's levels packed together (6 bytes per detection),
        # segmented, and read back frame by frame in the backward pass
        changepoint = {}
        if changepoints:
            for species in _SPECIES:
                packer = packers[species]
                levels = np.empty(packer.allocate(), np.float32)
                frame_depths = np.empty(len(levels), np.uint8)
                with_rings = use_rings and species == "Ce"
                rings = (np.full((len(levels), RING_COUNT), np.nan, np.float32)
                         if with_rings else None)
                for t in range(n_frames):
                    rec = read_records(species, t)
                    pos = packer.positions(rec["id"])
                    levels[pos], frame_depths[pos] = rec["level"], rec["frame_depth"]
                    if with_rings and len(rec):
                        centre = track_means.mean(rec["id"]) + link_drift[t]
                        rings[pos] = ring_means(image(t), centre[:, 0], centre[:, 1],
                                                pixel_size_A)
                changepoint[species] = segment_packed(
                    levels, frame_depths, packer, 1, classes[species], CHANGEPOINT_PENALTY,
                    default_noise=DEFAULT_LEVEL_NOISE, min_step=CHANGEPOINT_MIN_STEP,
                    rings=rings, ring_penalty=CHANGEPOINT_RING_PENALTY,
                    ring_min_step=CHANGEPOINT_RING_MIN_STEP,
                    ring_min_step_sigma=CHANGEPOINT_RING_MIN_STEP_SIGMA,
                    signature_z=CHANGEPOINT_SIGNATURE_Z,
                    level_weight=CHANGEPOINT_LEVEL_WEIGHT,
                    signature_bandwidth=CHANGEPOINT_SIGNATURE_BANDWIDTH)
                del levels, frame_depths, rings
                packer.rewind()

        # backward: smoothed depths, events, per-frame atom counts
        backward = {sp: ViterbiBackward(n_frames, first_depth=1, species=sp,
                                        smooth=smoothing == "hmm",
                                        min_track_length=MIN_TRACK_LENGTH)
                    for sp in _SPECIES}
        n_ce = np.zeros(n_frames, np.int64)
        n_o = np.zeros(n_frames, np.int64)
        summaries: dict[str, np.ndarray] = {}
        keep_rows = np.ones(int(bounds[-1]), bool) if reported is not None else None
        own_rows_lack_summaries = not all(name in frames for name in _SUMMARY_DTYPES)
        backward_fields = ("species", "depth_frame", "confidence_frame", *p_fields,
                           *(("x", "y") if reported is not None else ()))
        for t in reversed(range(n_frames)):
            r = rows(t, backward_fields)
            n = len(r["species"])
            track = np.full(n, -1, np.int64)
            depth = r["depth_frame"].astype(np.int64)
            confidence = r["confidence_frame"].astype(np.float64)
            kept = np.ones(n, bool)
            for species in _SPECIES:
                sel = r["species"] == species
                rec = read_records(species, t)
                if reported is not None:
                    kept[sel] = reported[species][rec["id"]]
                ids = rec["id"].astype(np.int64) + first_id[species]
                posterior = _depth_posteriors(r, sel, classes[species])
                if changepoints:
                    d = changepoint[species][packers[species].positions_reverse(rec["id"])]
                    p = posterior[np.arange(len(posterior)), d.astype(np.int64) - 1]
                    if map_confidence is not None:
                        p = map_confidence(species, p)
                    confidence[sel] = np.where(d == depth[sel], confidence[sel], p)
                    depth[sel] = d
                on = kept[sel]  # reported tracks: whole tracks in or out
                rows_on = np.flatnonzero(sel)[on]
                d, c = backward[species].step(ids[on], posterior[on], rec["best"][on],
                                              rec["first"][on], rec["chain"][on],
                                              depth[rows_on], confidence[rows_on])
                track[sel] = ids
                depth[rows_on] = d
                confidence[rows_on] = c
            if n:
                writer.write_column_rows(int(bounds[t]), int(bounds[t + 1]), {
                    "track": track, "depth": depth.astype(np.uint8),
                    "confidence": confidence.astype(np.float32)})
            is_ce = r["species"] == "Ce"
            n_ce[t] = depth[is_ce & kept].sum()
            n_o[t] = depth[~is_ce & kept].sum()
            if keep_rows is not None:
                keep_rows[int(bounds[t]):int(bounds[t + 1])] = kept
            if keep_rows is not None and (own_rows_lack_summaries or not kept.all()):
                # (else the frame's own row, written at prediction, holds)
                ce = is_ce & kept
                area, radius = area_and_radius(r["x"][ce], r["y"][ce])
                for name, value in (("area_A2", area), ("radius_A", radius),
                                    ("n_surface_columns",
                                     count_surface_columns(r["x"][ce], r["y"][ce])),
                                    ("n_ce_columns", ce.sum()),
                                    ("n_o_columns", (~is_ce & kept).sum())):
                    if name not in summaries:  # rows sorted by frame: index = frame
                        summaries[name] = (np.zeros(n_frames) if own_rows_lack_summaries
                                           else np.asarray(frames[name], np.float64).copy())
                    summaries[name][t] = value
    events = backward["Ce"].sorted_events() + backward["O"].sorted_events()
    events.sort(key=lambda e: (e["frame"], e["track"]))

    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(n_ce > 0, n_o / np.maximum(n_ce, 1), np.nan)
    order = frames["frame"]  # rows of read_frames are sorted by frame: 0 .. T-1
    if "n_ce_columns" in summaries:
        ce_columns = summaries["n_ce_columns"]
    elif "n_ce_columns" in frames:
        ce_columns = np.asarray(frames["n_ce_columns"], np.float64)
    else:  # no frame with columns: only COLLECTIVE_MIN_COLUMNS applies
        ce_columns = np.zeros(n_frames)
    collective = collective_change_frames(events, ce_columns)
    writer.update_frames({
        "collective_change": collective[order],
        "drift_x": drift[order, 0].astype(np.float32),
        "drift_y": drift[order, 1].astype(np.float32),
        "n_ce": n_ce[order].astype(np.int32),
        "n_o": n_o[order].astype(np.int32),
        "o_ce_ratio": ratio[order].astype(np.float32),
        **{name: v[order].astype(_SUMMARY_DTYPES[name]) for name, v in summaries.items()},
    })
    writer.write_events(events)
    stats = {"n_events": len(events), "n_tracks": next_id, "smoothing": smoothing}
    if keep_rows is not None:  # last: a resumed run finds the filtered rows and stops
        writer.keep_column_rows(keep_rows, {
            **stats, "n_dropped_rows": int(np.sum(~keep_rows)),
            "n_reported_tracks": int(sum(int(v.sum()) for v in reported.values()))})
    return stats


#: The per-frame summaries of ``/frames`` that the column detection over time recomputes.
_SUMMARY_DTYPES = {"area_A2": np.float32, "radius_A": np.float32,
                   "n_surface_columns": np.int32, "n_ce_columns": np.int32,
                   "n_o_columns": np.int32}


class _TrackPresence:
    """Per track id: count, sum and minimum of the pooled presence of its detections."""

    def __init__(self) -> None:
        self.count = np.zeros(0, np.int64)
        self.total = np.zeros(0, np.float64)
        self.low = np.zeros(0, np.float64)

    def add(self, ids: np.ndarray, p: np.ndarray) -> None:
        """One frame's detections (ids unique within the frame)."""
        ids = np.asarray(ids, np.int64)
        if not len(ids):
            return
        self._grow(int(ids.max()) + 1)
        p = np.asarray(p, np.float64)
        self.count[ids] += 1
        self.total[ids] += p
        self.low[ids] = np.minimum(self.low[ids], p)

    def _grow(self, n: int) -> None:
        if n > len(self.count):
            size = max(n, 2 * len(self.count))
            extra = size - len(self.count)
            self.count = np.concatenate([self.count, np.zeros(extra, np.int64)])
            self.total = np.concatenate([self.total, np.zeros(extra)])
            self.low = np.concatenate([self.low, np.full(extra, np.inf)])

    def reported(self, frame_threshold: float, track_threshold: float, min_length: int,
                 n_ids: int) -> np.ndarray:
        """Whether each track id ``0 .. n_ids - 1`` is reported (see :func:`postprocess`)."""
        self._grow(n_ids)
        count, total, low = self.count[:n_ids], self.total[:n_ids], self.low[:n_ids]
        mean = total / np.maximum(count, 1)
        return (low >= frame_threshold) | ((mean >= track_threshold) & (count >= min_length))


# --------------------------------------------------------------------------- one series


def source_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of an input: the file's bytes, or for a directory (zarr) of its files.

    For a directory the digest covers every file's relative path and bytes, in sorted
    order.
    """
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def predict_series(series: Any, out: str | os.PathLike, predictor: Predictor, *,
                   resume: bool = False, smoothing: str = "changepoint", progress: bool = True,
                   source_hash: str | None = None, track_columns: bool = True,
                   calibration: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Predict every frame of a series into a results file, then track and finalise it.

    Parameters
    ----------
    series : atom3d.io.readers.Series
        The input (``n_frames``, ``shape``, ``pixel_size_A`` [Å], ``frame_interval_s``
        [s], ``frame(i)``, ``path``).
    out : path
        Results file to write (``OUT.h5``; ``OUT.h5.partial`` while running).
    predictor : Predictor
        The model and its tiling settings.
    resume : bool
        Continue an interrupted run from ``OUT.h5.partial`` (see the module docstring).
    smoothing : str
        Depth smoothing along tracks, one of ``SMOOTHING_METHODS`` (see
        :func:`postprocess`; only applied to series of more than one frame).
    progress : bool
        Show a progress bar over frames (on a terminal).
    source_hash : str, optional
        SHA-256 of the input if already known (computed otherwise).
    track_columns : bool
        Decide which columns to report per track (series of at least
        ``TRACK_DETECTION_MIN_FRAMES`` frames; see :func:`postprocess`); False: each
        frame's own columns above the model's threshold.
    calibration : mapping, optional
        Root attributes saying where the pixel size came from and what the lattice said
        (:func:`atom3d.inference.lattice.lattice_attrs`).

    Returns
    -------
    dict
        Summary: ``out``, ``n_frames``, ``n_invalid``, ``n_columns``, ``n_events``, ...
    """
    if smoothing not in SMOOTHING_METHODS:
        raise UserError(f"--smoothing must be one of {', '.join(SMOOTHING_METHODS)}, "
                        f"got {smoothing!r}")
    limit_malloc_arenas()  # before any worker thread allocates: flat memory over long series
    out = Path(out)
    source = str(getattr(series, "path", ""))
    attrs = {
        "source": source,
        "source_sha256": source_hash or (source_sha256(source) if source else ""),
        "model": predictor.artifact.name,
        **_predictor_attrs(predictor),
        "pixel_size_A": float(series.pixel_size_A),
        "frame_interval_s": float(series.frame_interval_s),
        "model_pixel_size_A": float(predictor.pixel_size_A),
        "tile_px": int(predictor.tile),
        "tile_overlap_px": int(predictor.overlap),
        "tile_margin_px": int(predictor.margin),
        "depth_smoothing": smoothing if series.n_frames > 1 else "none",
        "changepoint_penalty": CHANGEPOINT_PENALTY,
        "changepoint_min_step": CHANGEPOINT_MIN_STEP,
        "changepoint_ring_radii_A": ring_radii_A(),
        "changepoint_ring_penalty": CHANGEPOINT_RING_PENALTY,
        "changepoint_ring_min_step": CHANGEPOINT_RING_MIN_STEP,
        "changepoint_ring_min_step_sigma": CHANGEPOINT_RING_MIN_STEP_SIGMA,
        "changepoint_signature_z": CHANGEPOINT_SIGNATURE_Z,
        "changepoint_level_weight": CHANGEPOINT_LEVEL_WEIGHT,
        "changepoint_signature_bandwidth": CHANGEPOINT_SIGNATURE_BANDWIDTH,
    }
    attrs.update(selection_attrs(series))
    attrs["source_signal"] = str(getattr(series, "signal_note", ""))  # '' : the only one
    attrs.update(calibration or {})
    n = int(series.n_frames)
    attrs.update(_column_attrs(n, track_columns))
    track_detection = None
    if attrs["track_detection"]:
        track_detection = {sp: (predictor.artifact.column_threshold[sp],
                                TRACK_PRESENCE_THRESHOLD[sp]) for sp in _SPECIES}
    predictor.check_frame_shape(tuple(series.shape), float(series.pixel_size_A))  # before any file
    out.parent.mkdir(parents=True, exist_ok=True)
    floor_before = predictor.column_floor
    if track_detection is not None:  # frames keep candidates; postprocess decides per track
        predictor.column_floor = dict(TRACK_CANDIDATE_THRESHOLD)
    try:
        return _predict_into(series, out, predictor, attrs, resume, smoothing, progress,
                             track_detection)
    finally:
        predictor.column_floor = floor_before


def _predict_into(series: Any, out: Path, predictor: Predictor, attrs: dict[str, Any],
                  resume: bool, smoothing: str, progress: bool,
                  track_detection: dict[str, tuple[float, float]] | None) -> dict[str, Any]:
    """The frame loop, post-processing and finalisation of :func:`predict_series`."""
    from tqdm import tqdm

    n = int(series.n_frames)
    k_max = max(predictor.classes.values())
    with ResultsWriter(out, shape=tuple(series.shape), n_frames=n, attrs=attrs,
                       resume=resume, commit_every=COMMIT_EVERY) as writer:
        done = writer.done_frames
        # Small frames are predicted in fixed blocks [k·B, (k+1)·B): a resumed run
        # repredicts the done frames of a partly written block, so that every frame is
        # always computed in the same batch as in an uninterrupted run.
        chunk = predictor.batch_size if _fits_one_tile(predictor, series) else 1
        n_invalid = 0
        source_frame = getattr(series, "source_frame", lambda i: i)
        bar = tqdm(total=n, initial=len(done), unit="frame", desc=out.name,
                   disable=None if progress else True, dynamic_ncols=True)

        unreadable: dict[int, str] = {}

        def read(i: int) -> np.ndarray:
            """Frame ``i``; one that cannot be read (a truncated file, a bad file of an
            image sequence) is predicted as invalid, like a frame of NaN, and the run
            goes on."""
            try:
                return series.frame(i)
            except InputFileError as exc:
                unreadable[i] = str(exc)
                return np.full(tuple(series.shape), np.nan, np.float32)

        def finish_and_write(indices: list[int], batch: PendingBatch) -> None:
            nonlocal n_invalid
            for i, pred in zip(indices, predictor.finish(batch), strict=True):
                if i in unreadable:
                    pred = dataclasses.replace(pred, reason=f"unreadable: {unreadable.pop(i)}")
                if i in done:
                    continue
                if not pred.valid:
                    n_invalid += 1
                    if n_invalid <= MAX_INVALID_MESSAGES:
                        tqdm.write(f"{out.name}: frame {i} is invalid ({pred.reason}); "
                                   "no columns predicted", file=sys.stderr)
                _write_prediction(writer, i, pred, k_max, source_frame(i))
                bar.update(1)

        # On a GPU the frame loop is a two-stage pipeline: while the network runs on
        # batch b (this thread), batch b - 1 is finished (maps, columns) and written by
        # one worker thread, in order. At most one batch waits; the worker's errors
        # surface here at the next batch. Leaving the pool's block (also on an error)
        # waits for the worker, so the writer is never closed under it. On a CPU the
        # two stages would share the same cores (measured: no faster, and one more
        # batch of logits in memory), so they alternate in this thread.
        overlap = OVERLAP_FINISH if OVERLAP_FINISH is not None else (
            predictor.device.type != "cpu")
        writing: Future[None] | None = None
        since_trim = 0
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="atom3d-finish") as pool:
                for start in range(0, n, chunk):
                    indices = list(range(start, min(start + chunk, n)))
                    if all(i in done for i in indices):
                        continue
                    frames = [read(i) for i in indices]
                    batch = predictor.network_stage(frames, series.pixel_size_A)
                    if not overlap:
                        finish_and_write(indices, batch)
                        # free this batch's logits before the next forward pass: held
                        # through it, they pin a block of the heap in the middle of the
                        # network's working set, which then fragments and grows
                        del batch
                    else:
                        if writing is not None:
                            writing.result()
                        writing = pool.submit(finish_and_write, indices, batch)
                    since_trim += len(indices)
                    if TRIM_EVERY_FRAMES and since_trim >= TRIM_EVERY_FRAMES:
                        since_trim = 0
                        release_free_memory()  # on a CPU: nothing of this batch is live
                if writing is not None:
                    writing.result()
        finally:
            bar.close()
        release_free_memory()  # the network's working set, kept for the frame loop
        stats = writer.columns_filtered  # a resumed run whose post-processing finished
        if stats is None:
            stats = postprocess(writer, predictor.classes, float(series.pixel_size_A),
                                smoothing, predictor.artifact.map_confidence,
                                image=series.frame, track_detection=track_detection)
        stats = {k: stats[k] for k in ("n_events", "n_tracks", "smoothing")}
        frames_table = writer.read_frames()
        n_columns = writer.n_columns
        writer.finalize()
    collective = np.asarray(frames_table.get("collective_change", np.zeros(n, bool)), bool)
    return {
        "out": str(out),
        "n_frames": n,
        "collective_change_frames": [int(t) for t in np.flatnonzero(collective)],
        "n_invalid": int(np.sum(~frames_table["valid"].astype(bool))),
        "n_columns": n_columns,
        "resumed_frames": len(done),
        "median_dose_e_per_A2": _median_dose(frames_table),
        **stats,
    }


def _median_dose(frames: Mapping[str, np.ndarray]) -> float:
    """Median estimated dose [e/Å²] of the valid frames (NaN when there is none)."""
    dose = np.asarray(frames["dose_e_per_A2"], float)[np.asarray(frames["valid"], bool)]
    dose = dose[np.isfinite(dose)]
    return float(np.median(dose)) if dose.size else math.nan


def _fits_one_tile(predictor: Predictor, series: Any) -> bool:
    shape = predictor.model_grid_shape(tuple(series.shape), float(series.pixel_size_A))
    return max(shape) <= predictor.tile


def _predictor_attrs(predictor: Predictor) -> dict[str, Any]:
    """The results-file attributes that say which network ran and how (weights, passes,
    calibration; the keys are :data:`~atom3d.io.results.NETWORK_ATTRS`): a file with other
    values is another run (see :func:`_complete_matches` and the resume check of
    :class:`~atom3d.io.results.ResultsWriter`)."""
    return {
        "model_sha256": predictor.artifact.weights_sha256,
        "test_time_augmentation": int(predictor.tta),  # 1: several passes averaged
        "tta_passes": int(predictor.tta_passes),  # network passes per frame: 1, 4 or 8
        # passes the calibration in use was fitted for (artifact pass_calibration, else 1)
        "calibration_passes": int(predictor.artifact.calibration_passes),
        "calibration_sha256": predictor.artifact.calibration_sha256,
    }


def _column_attrs(n_frames: int, track_columns: bool) -> dict[str, Any]:
    """The results-file attributes of the column detection over time (the keys of
    :data:`~atom3d.io.results.COLUMN_ATTRS` and the rule's settings)."""
    on = bool(track_columns) and n_frames >= TRACK_DETECTION_MIN_FRAMES
    if not on:
        return {"track_detection": False}
    return {
        "track_detection": True,
        "track_candidate_threshold": [TRACK_CANDIDATE_THRESHOLD[sp] for sp in _SPECIES],
        "track_presence_threshold": [TRACK_PRESENCE_THRESHOLD[sp] for sp in _SPECIES],
        "track_detection_min_length": TRACK_DETECTION_MIN_LENGTH,
    }


def _complete_matches(out: Path, source_hash: str, predictor: Predictor,
                      column_attrs: dict[str, Any] | None = None,
                      pixel_size_A: float | None = None,
                      selection: Mapping[str, Any] | None = None) -> bool:
    """Whether ``out`` is a complete results file for this input, model, calibration,
    ``--tta``, column detection (``column_attrs``, see :func:`_column_attrs`), input
    pixel size [Å/px] (when given) and part of the input (``selection``: the
    ``source_frames`` and ``roi_px`` of :func:`~atom3d.io.selection.selection_attrs`,
    when given)."""
    try:
        attrs = read_results(out, load_maps=False)["attrs"]
    except UserError:
        return False
    wanted = {**_predictor_attrs(predictor), **(column_attrs or {})}
    if pixel_size_A is not None:
        wanted["pixel_size_A"] = float(pixel_size_A)
    if selection is not None:
        wanted.update({key: selection[key] for key in ("source_frames", "roi_px")})
    return attrs.get("source_sha256") == source_hash and all(
        attr_equal(attrs.get(key), value) for key, value in wanted.items())


# --------------------------------------------------------------------------- CLI


def _outputs(inputs: Sequence[Path], out: Path) -> list[Path]:
    """Results path of every input (refusing ambiguous or clashing outputs)."""
    is_file = out.suffix.lower() in (".h5", ".hdf5")
    if len(inputs) > 1:
        if is_file:
            raise UserError(f"-o {out}: several inputs need an output directory, not a file")
        is_file = False
    elif not is_file and out.suffix and not out.is_dir():
        raise UserError(f"-o {out}: expected a results file ending in .h5 or a directory")
    if out.is_dir() and is_file:
        raise UserError(f"-o {out}: is a directory; name a file ending in .h5")
    if is_file:
        return [out]
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out}: exists and is not a directory")
    paths = [out / (_stem(p) + ".h5") for p in inputs]
    seen: dict[Path, Path] = {}
    for src, dst in zip(inputs, paths, strict=True):
        if dst in seen:
            raise UserError(f"inputs {seen[dst]} and {src} would both write {dst}; "
                            "predict them into separate directories")
        seen[dst] = src
    return paths


def _stem(path: Path) -> str:
    name = path.name.rstrip("/")
    return name[: -len(path.suffix)] if path.suffix else name


def run_predict(args: argparse.Namespace) -> int:
    """Run ``atom3d predict`` for parsed arguments (see :func:`configure_predict_parser`).

    Raises
    ------
    atom3d.errors.UserError
        Bad options or input files, an unknown model, or a failed input (after the other
        inputs were processed).
    """
    from atom3d.io.readers import open_series
    from atom3d.models.artifact import load_artifact

    inputs = [Path(p) for p in args.inputs]
    outputs = _outputs(inputs, Path(args.out))
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise UserError(f"input not found: {', '.join(missing)}")
    artifact = load_artifact(args.model)
    predictor = Predictor(artifact, device=args.device, batch_size=args.batch_size,
                          tile=args.tile, overlap=args.overlap, half=args.half,
                          tta=args.tta)
    several = len(inputs) > 1
    failures: list[str] = []
    for src, dst in zip(inputs, outputs, strict=True):
        try:
            _predict_one(src, dst, predictor, args, open_series, several)
        except UserError as error:
            if not several:
                raise
            failures.append(f"{src}: {error}")
            print(f"atom3d: skipped {src}: {error}", file=sys.stderr)
    if failures:
        raise UserError(f"{len(failures)} of {len(inputs)} inputs failed (first: {failures[0]})")
    return 0


def _predict_one(src: Path, dst: Path, predictor: Predictor, args: argparse.Namespace,
                 open_series: Any, several: bool) -> None:
    measure = args.pixel_size == LATTICE
    with open_series(src, pixel_size_A=None if measure else args.pixel_size,
                     uncalibrated_ok=measure) as whole:
        if getattr(args, "frame_interval", None) is not None:
            whole.frame_interval_s = float(args.frame_interval)
        series = SelectedSeries(whole, getattr(args, "frames", None), getattr(args, "roi", None))
        if series.signal_note:  # a file of several signals: say which one is predicted
            print(f"atom3d: {src.name}: {series.signal_note}", file=sys.stderr)
        if not args.quiet and not series.whole:
            print(f"atom3d: predicting {selection_note(selection_attrs(series))}",
                  file=sys.stderr)
        digest = source_sha256(src)
        if measure:
            calibration = _lattice_pixel_size(series, src, args.quiet)
        if (args.resume and dst.exists() and not partial_path(dst).exists()
                and _complete_matches(dst, digest, predictor,
                                      _column_attrs(series.n_frames, not args.frame_columns),
                                      series.pixel_size_A, selection_attrs(series))):
            print(f"{dst}: already complete for this input, model, calibration and passes (kept)")
            summary = None
        else:
            if not measure:
                predictor.check_frame_shape(tuple(series.shape), float(series.pixel_size_A))
                calibration = _check_calibration(
                    series, "file" if args.pixel_size is None else "option", args.quiet)
            _warn_pixel_size(series.pixel_size_A, predictor.pixel_size_A)
            if (predictor.tta and predictor.device.type == "cpu"
                    and series.n_frames >= LONG_SERIES_FRAMES and not args.quiet):
                print(f"atom3d: note: {predictor.tta_passes} network passes per frame (--tta, "
                      f"the default); --no-tta is {predictor.tta_passes}x faster for long "
                      "series on a CPU", file=sys.stderr)
            summary = predict_series(series, dst, predictor, resume=args.resume,
                                     smoothing="none" if args.no_smooth else args.smoothing,
                                     track_columns=not args.frame_columns,
                                     progress=not args.quiet,
                                     source_hash=digest, calibration=calibration)
    if summary is not None:
        print(f"{dst}: {summary['n_frames']} frames ({summary['n_invalid']} invalid), "
              f"{summary['n_columns']} columns, {summary['n_tracks']} tracks, "
              f"{summary['n_events']} events")
        if summary["collective_change_frames"]:
            print(terminal_paragraph(collective_warning(summary["collective_change_frames"])),
                  file=sys.stderr)
        expected = expected_at_dose(predictor.artifact.config, summary["median_dose_e_per_A2"])
        if expected and not args.quiet:
            print(terminal_paragraph(f"dose ≈ {summary['median_dose_e_per_A2']:.0f} e/Å² per "
                                     f"frame (median, from the frames' shot noise); {expected}"))
    sub = _stem(src) if several else ""
    if args.figures is not None:
        from atom3d.inference.figures import plot_results

        written = plot_results(dst, Path(args.figures) / sub)
        print(f"figures: {len(written)} files in {Path(args.figures) / sub}")
    if args.xyz is not None:
        from atom3d.inference.export3d import export_xyz

        written = export_xyz(dst, Path(args.xyz) / sub)
        print(f"xyz: {len(written)} files in {Path(args.xyz) / sub}")


def collective_warning(frames: Sequence[int]) -> str:
    """The warning for frames with a collective Ce depth change."""
    listed = ", ".join(str(t) for t in frames[:8]) + (" …" if len(frames) > 8 else "")
    return (f"atom3d: warning: at frame{'s' if len(frames) > 1 else ''} {listed} "
            f"{COLLECTIVE_FRACTION:.0%} or more of the Ce columns changed depth together "
            "(/frames collective_change): "
            "a tilt off the zone axis or a jump of focus does this, atoms leaving do not; "
            "20 mrad of tilt reads thick columns about half as deep, with unchanged "
            "confidence. Check those frames before reading their events as cation loss")


def _lattice_pixel_size(series: Any, src: Path, quiet: bool) -> dict[str, Any]:
    """``--pixel-size lattice``: set ``series.pixel_size_A`` from the CeO2 lattice."""
    nominal = series.pixel_size_A if math.isfinite(series.pixel_size_A) else None
    check = series_lattice(series, nominal)
    if not check.found:
        raise UserError(f"{src}: no CeO2 [110] lattice found in the frames (searched "
                        f"{_searched(nominal)}; best fit: {check.reason}); pass "
                        "--pixel-size in Å")
    series.pixel_size_A = check.pixel_size_A
    if not quiet:
        told = (f"file: {nominal:.4f} Å/px, {100 * (check.ratio - 1):+.1f} %"
                if nominal is not None else "the file has no usable calibration")
        print(f"atom3d: pixel size from the CeO2 [110] lattice: {check.pixel_size_A:.4f} Å/px "
              f"({told})", file=sys.stderr)
    return lattice_attrs(check, "lattice")


def _searched(nominal: float | None) -> str:
    wide = f"{LATTICE_WIDE_A[0]:g}–{LATTICE_WIDE_A[1]:g} Å/px"
    if nominal is None:
        return wide
    return f"within ±{100 * LATTICE_SEARCH:.0f} % of {nominal:.4g} Å/px, then {wide}"


def _check_calibration(series: Any, source: str, quiet: bool) -> dict[str, Any]:
    """Measure the lattice (near the given pixel size, else anywhere: :func:`series_lattice`);
    warn when they disagree."""
    check = series_lattice(series, float(series.pixel_size_A))
    given = "the file's calibration" if source == "file" else "--pixel-size"
    if check.found and abs(check.ratio - 1) > LATTICE_TOLERANCE:
        print(terminal_paragraph(
            f"atom3d: warning: the CeO2 [110] lattice in the frames gives "
            f"{check.pixel_size_A:.4f} Å/px, {100 * (check.ratio - 1):+.1f} % from {given} "
            f"({series.pixel_size_A:.4f} Å/px); the model's depths degrade beyond "
            f"±{100 * LATTICE_TOLERANCE:.0f} %: rerun with --pixel-size lattice (or the "
            "right value) if the calibration is wrong"), file=sys.stderr)
    elif not check.found and not quiet:
        print(terminal_paragraph(
            f"atom3d: note: no CeO2 [110] lattice found in the frames (best fit: "
            f"{check.reason}): the pixel size is not checked, and the images may not be "
            "CeO2 along [110]"), file=sys.stderr)
    return lattice_attrs(check, source)


def _warn_pixel_size(p_in: float, p_model: float) -> None:
    ratio = p_in / p_model
    if ratio > 2.5:
        print(f"atom3d: warning: input pixels ({p_in:.4g} Å) are {ratio:.1f}x coarser than "
              f"the model's ({p_model:.4g} Å): columns may be unresolved", file=sys.stderr)
    elif ratio < 0.25:
        print(f"atom3d: warning: input pixels ({p_in:.4g} Å) are {1 / ratio:.1f}x finer than "
              f"the model's ({p_model:.4g} Å); check the calibration", file=sys.stderr)


def predict_main(argv: Sequence[str] | None = None) -> int:
    """``atom3d predict`` entry point.

    Returns 0 on success; raises :class:`atom3d.errors.UserError` on a user error (the CLI
    prints it as one line and exits with 2). Bad options exit with 2 through argparse.
    """
    parser = build_predict_parser()
    args = parser.parse_intermixed_args(None if argv is None else list(argv))
    return run_predict(args)
