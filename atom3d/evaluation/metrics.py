"""Column-level evaluation: matching, detection and depth scores, calibration, breakdowns.

Predicted columns are matched one-to-one to true columns within a distance
``max_dist_A`` [Å] (maximum number of matches, then least total distance). A matched
predicted column is a true positive; an unmatched prediction is a false positive; an
unmatched true column a false negative. Depth scores use matched columns only.

Per-image results (:func:`column_metrics`) keep the per-match arrays, so that
:func:`aggregate` can pool images (micro average: counts and matches summed over
images) and :func:`breakdown` can pool them per bin of a parameter (dose, thickness,
defocus, tilt, pixel size, ...).

Pure NumPy/SciPy. This module holds the single implementation of the expected
calibration error (:func:`ece`) and the reliability curve.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

__all__ = [
    "ReliabilityCurve",
    "aggregate",
    "breakdown",
    "column_metrics",
    "confusion_matrix",
    "ece",
    "expected_calibration_error",
    "match_columns",
    "reliability_curve",
]

#: Per-match arrays of a result, pooled by :func:`aggregate`.
MATCH_ARRAYS = ("true_depth", "pred_depth", "confidence", "correct", "distance_A")


# --------------------------------------------------------------------------- matching


def _as_points(xy: ArrayLike, name: str) -> np.ndarray:
    """``(N, 2)`` float64 coordinates, refusing other shapes and non-finite values."""
    xy = np.asarray(xy, dtype=np.float64)
    if xy.size == 0:
        return np.zeros((0, 2))
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"{name}: expected shape (N, 2), got {xy.shape}")
    if not np.all(np.isfinite(xy)):
        raise ValueError(f"{name}: coordinates must be finite")
    return xy


def _candidate_pairs(pred_xy: np.ndarray, true_xy: np.ndarray,
                     max_dist_A: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (pred, true) index pairs at distance <= ``max_dist_A``, with the distances."""
    pairs = cKDTree(pred_xy).sparse_distance_matrix(
        cKDTree(true_xy), max_dist_A, output_type="ndarray"
    )
    return pairs["i"].astype(np.int64), pairs["j"].astype(np.int64), pairs["v"]


def _pair_components(i: np.ndarray, j: np.ndarray, n_pred: int, n_true: int) -> np.ndarray:
    """Connected component of each candidate pair in the bipartite pred/true graph."""
    n = n_pred + n_true
    graph = coo_matrix((np.ones(i.size), (i, j + n_pred)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels[i]


def _match_component(i: np.ndarray, j: np.ndarray,
                     d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Optimal matching of one connected component given as candidate pairs.

    Pairs beyond the cut are given a cost larger than any sum of allowed distances,
    so the assignment first maximises the number of allowed pairs, then minimises
    their total distance; forbidden pairs are dropped from the result.
    """
    if i.size == 1:
        return i, j
    pred_ids, pi = np.unique(i, return_inverse=True)
    true_ids, tj = np.unique(j, return_inverse=True)
    forbidden = (min(pred_ids.size, true_ids.size) + 1) * (d.max() + 1.0)
    cost = np.full((pred_ids.size, true_ids.size), forbidden)
    cost[pi, tj] = d
    rows, cols = linear_sum_assignment(cost)
    keep = cost[rows, cols] < forbidden
    return pred_ids[rows[keep]], true_ids[cols[keep]]


def match_columns(pred_xy: ArrayLike, true_xy: ArrayLike,
                  max_dist_A: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of predicted to true columns within a distance cut.

    Among all matchings that pair columns at most ``max_dist_A`` apart, returns one
    with the most pairs and, among those, the least total distance (Hungarian
    algorithm, run separately on each connected group of nearby columns, so ~1000
    columns take milliseconds). Ties between equally good matchings are broken
    arbitrarily.

    Parameters
    ----------
    pred_xy : array_like
        ``(N, 2)`` predicted positions ``(x, y)`` [Å].
    true_xy : array_like
        ``(M, 2)`` true positions ``(x, y)`` [Å].
    max_dist_A : float
        Largest distance of a matched pair [Å] (inclusive), > 0.

    Returns
    -------
    pred_idx, true_idx : ndarray of int
        ``(K,)`` indices of matched pairs: ``pred_xy[pred_idx[k]]`` matches
        ``true_xy[true_idx[k]]``; sorted by ``pred_idx``.
    """
    pred_xy = _as_points(pred_xy, "pred_xy")
    true_xy = _as_points(true_xy, "true_xy")
    if not np.isfinite(max_dist_A) or max_dist_A <= 0:
        raise ValueError(f"max_dist_A must be a positive number, got {max_dist_A}")
    empty = np.zeros(0, np.int64)
    if len(pred_xy) == 0 or len(true_xy) == 0:
        return empty, empty
    i, j, d = _candidate_pairs(pred_xy, true_xy, max_dist_A)
    if i.size == 0:
        return empty, empty
    labels = _pair_components(i, j, len(pred_xy), len(true_xy))
    order = np.argsort(labels, kind="stable")
    splits = np.flatnonzero(np.diff(labels[order])) + 1
    matched = [_match_component(i[g], j[g], d[g]) for g in np.split(order, splits)]
    pred_idx = np.concatenate([m[0] for m in matched])
    true_idx = np.concatenate([m[1] for m in matched])
    by_pred = np.argsort(pred_idx)
    return pred_idx[by_pred], true_idx[by_pred]


# --------------------------------------------------------------------------- calibration


class ReliabilityCurve(NamedTuple):
    """Per-bin calibration statistics (equal-width confidence bins on [0, 1]).

    Attributes
    ----------
    bin_edges : ndarray
        ``(n_bins + 1,)`` edges; bin ``i`` is ``(edges[i], edges[i + 1]]`` (the first
        also holds 0).
    confidence : ndarray
        ``(n_bins,)`` mean confidence per bin (NaN if empty).
    accuracy : ndarray
        ``(n_bins,)`` fraction correct per bin (NaN if empty).
    count : ndarray
        ``(n_bins,)`` number of predictions per bin.
    """

    bin_edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray


def _calibration_inputs(confidence: ArrayLike,
                        correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    ok = np.asarray(correct, dtype=bool).ravel()
    if conf.shape != ok.shape:
        raise ValueError(f"confidence and correct differ in size: {conf.size} != {ok.size}")
    if conf.size and not np.all((conf >= 0) & (conf <= 1)):
        raise ValueError("confidence must be in [0, 1] (and not NaN)")
    return conf, ok


def reliability_curve(confidence: ArrayLike, correct: ArrayLike,
                      n_bins: int = 10) -> ReliabilityCurve:
    """Mean confidence, accuracy and count per equal-width confidence bin.

    Parameters
    ----------
    confidence : array_like
        ``(N,)`` probability of the predicted class, in [0, 1].
    correct : array_like
        ``(N,)`` bool, whether the prediction was right.
    n_bins : int
        Number of equal-width bins on [0, 1]; bin ``i`` is ``(i/n, (i+1)/n]``, the
        first also holds 0.

    Returns
    -------
    ReliabilityCurve
    """
    conf, ok = _calibration_inputs(confidence, correct)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    index = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    conf_sum = np.bincount(index, weights=conf, minlength=n_bins)
    ok_sum = np.bincount(index, weights=ok.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        accuracy = np.where(count > 0, ok_sum / count, np.nan)
    return ReliabilityCurve(np.linspace(0.0, 1.0, n_bins + 1), mean_conf, accuracy, count)


def ece(confidence: ArrayLike, correct: ArrayLike, n_bins: int = 10) -> float:
    """Expected calibration error ``sum_b (n_b / N) |accuracy_b - confidence_b|``.

    Parameters
    ----------
    confidence : array_like
        ``(N,)`` probability of the predicted class, in [0, 1].
    correct : array_like
        ``(N,)`` bool, whether the prediction was right.
    n_bins : int
        Number of equal-width bins on [0, 1] (see :func:`reliability_curve`).

    Returns
    -------
    float
        ECE in [0, 1]; 0 for an empty input.
    """
    curve = reliability_curve(confidence, correct, n_bins)
    total = curve.count.sum()
    if total == 0:
        return 0.0
    filled = curve.count > 0
    gap = np.abs(curve.accuracy[filled] - curve.confidence[filled])
    return float(np.sum(curve.count[filled] * gap) / total)


#: Same function under its long name (as imported by ``atom3d.training.calibration``).
expected_calibration_error = ece


# --------------------------------------------------------------------------- scores


def _ratio(num: float, den: float) -> float:
    """``num / den``, NaN when ``den`` is 0 (score undefined)."""
    return float(num / den) if den else float("nan")


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else float("nan")


def _summarise(tp: int, fp: int, fn: int, arrays: Mapping[str, np.ndarray],
               n_bins: int) -> dict[str, Any]:
    """Counts, detection and depth scores from counts and per-match arrays."""
    error = np.abs(arrays["pred_depth"].astype(np.int64) - arrays["true_depth"].astype(np.int64))
    conf = arrays["confidence"]
    calibrated = conf.size > 0 and bool(np.all(np.isfinite(conf)))
    return {
        "tp": int(tp), "fp": int(fp), "fn": int(fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "n_matched": int(tp),
        "exact": _mean(error == 0),
        "within1": _mean(error <= 1),
        "mae": _mean(error),
        "mean_distance_A": _mean(arrays["distance_A"]),
        "ece": ece(conf, arrays["correct"], n_bins) if calibrated else float("nan"),
        **arrays,
    }


def _table_xy(table: Mapping[str, ArrayLike], name: str) -> np.ndarray:
    x = np.asarray(table["x"], dtype=np.float64).ravel()
    y = np.asarray(table["y"], dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"{name}: x and y differ in length")
    return _as_points(np.stack([x, y], axis=1), name)


def _field(table: Mapping[str, ArrayLike], key: str, n: int, name: str) -> np.ndarray:
    values = np.asarray(table[key]).ravel()
    if values.size != n:
        raise ValueError(f"{name}: '{key}' has {values.size} values, expected {n}")
    return values


def column_metrics(pred: Mapping[str, ArrayLike], true: Mapping[str, ArrayLike],
                   max_dist_A: float, *, n_bins: int = 10) -> dict[str, Any]:
    """Detection, depth and calibration scores of one image (one species).

    Parameters
    ----------
    pred : dict of array_like
        Predicted columns: ``x``, ``y`` [Å], ``depth`` [atoms] and optionally
        ``confidence`` (probability of the predicted depth; without it ``ece`` is NaN).
    true : dict of array_like
        True columns: ``x``, ``y`` [Å], ``depth`` [atoms].
    max_dist_A : float
        Matching distance cut [Å] (see :func:`match_columns`).
    n_bins : int
        Confidence bins of the ECE.

    Returns
    -------
    dict
        ``tp``, ``fp``, ``fn``, ``n_matched`` (= tp); ``precision``, ``recall``,
        ``f1`` (NaN when undefined); over matched columns: ``exact`` (fraction with
        the right depth), ``within1`` (fraction off by at most one atom), ``mae``
        [atoms], ``mean_distance_A`` [Å], ``ece`` (NaN without matches); the per-match
        arrays ``true_depth``, ``pred_depth``, ``confidence``, ``correct``,
        ``distance_A`` [Å] used by :func:`aggregate`; and ``pred_idx``, ``true_idx``
        (row indices of the matched pairs).
    """
    pred_xy, true_xy = _table_xy(pred, "pred"), _table_xy(true, "true")
    pred_depth = _field(pred, "depth", len(pred_xy), "pred")
    true_depth = _field(true, "depth", len(true_xy), "true")
    conf = (_field(pred, "confidence", len(pred_xy), "pred").astype(np.float64)
            if "confidence" in pred else np.full(len(pred_xy), np.nan))
    pi, ti = match_columns(pred_xy, true_xy, max_dist_A)
    arrays = {
        "true_depth": true_depth[ti].astype(np.int64),
        "pred_depth": pred_depth[pi].astype(np.int64),
        "confidence": conf[pi],
        "correct": pred_depth[pi].astype(np.int64) == true_depth[ti].astype(np.int64),
        "distance_A": np.hypot(*(pred_xy[pi] - true_xy[ti]).T),
    }
    tp = len(pi)
    result = _summarise(tp, len(pred_xy) - tp, len(true_xy) - tp, arrays, n_bins)
    result.update(pred_idx=pi, true_idx=ti)
    return result


def aggregate(results: Sequence[Mapping[str, Any]], *, n_bins: int = 10) -> dict[str, Any]:
    """Pool per-image results: counts and matches summed over images (micro average).

    Parameters
    ----------
    results : sequence of dict
        Outputs of :func:`column_metrics` (or of this function).
    n_bins : int
        Confidence bins of the ECE.

    Returns
    -------
    dict
        The keys of :func:`column_metrics` (without ``pred_idx``/``true_idx``)
        computed over the pooled counts and matches, plus ``n_images``.
    """
    tp, fp, fn = (sum(int(r[k]) for r in results) for k in ("tp", "fp", "fn"))
    dtypes = {"true_depth": np.int64, "pred_depth": np.int64, "correct": bool}
    arrays = {
        k: np.concatenate([np.asarray(r[k]) for r in results]).astype(dtypes.get(k, np.float64))
        if results else np.zeros(0, dtypes.get(k, np.float64))
        for k in MATCH_ARRAYS
    }
    out = _summarise(tp, fp, fn, arrays, n_bins)
    out["n_images"] = sum(int(r.get("n_images", 1)) for r in results)
    return out


def confusion_matrix(true_depth: ArrayLike, pred_depth: ArrayLike, K: int) -> np.ndarray:
    """Counts of (true depth, predicted depth) pairs.

    Parameters
    ----------
    true_depth, pred_depth : array_like of int
        ``(N,)`` depths [atoms] in ``0..K`` (0 can stand for "no column", e.g. to
        count missed and spurious columns).
    K : int
        Largest depth [atoms].

    Returns
    -------
    ndarray
        ``(K + 1, K + 1)`` int64; entry ``[t, p]`` counts columns of true depth ``t``
        predicted as ``p``.
    """
    t = np.asarray(true_depth).ravel()
    p = np.asarray(pred_depth).ravel()
    if t.shape != p.shape:
        raise ValueError(f"true_depth and pred_depth differ in size: {t.size} != {p.size}")
    for name, d in (("true_depth", t), ("pred_depth", p)):
        if d.size and (d.min() < 0 or d.max() > K or np.any(d % 1 != 0)):
            raise ValueError(f"{name} must hold whole numbers in [0, {K}]")
    flat = t.astype(np.int64) * (K + 1) + p.astype(np.int64)
    return np.bincount(flat, minlength=(K + 1) ** 2).reshape(K + 1, K + 1)


def breakdown(results: Sequence[Mapping[str, Any]], key_values: ArrayLike,
              bins: int | ArrayLike, *, n_bins: int = 10) -> list[dict[str, Any]]:
    """Aggregate per-image results within bins of one parameter.

    Parameters
    ----------
    results : sequence of dict
        ``(N,)`` outputs of :func:`column_metrics`, one per image.
    key_values : array_like
        ``(N,)`` the parameter of each image, in its own unit (dose [e/Å²],
        thickness [Å], defocus [Å], tilt [mrad], pixel size [Å], ...).
    bins : int or array_like
        Number of equal-width bins over the range of ``key_values``, or bin edges
        (increasing). Bins are half-open ``[lo, hi)`` except the last, ``[lo, hi]``,
        as in :func:`numpy.histogram`; images outside the edges or with a NaN value
        are left out.
    n_bins : int
        Confidence bins of the ECE.

    Returns
    -------
    list of dict
        One per bin, in order: ``lo``, ``hi`` and the keys of :func:`aggregate`
        (``n_images`` 0 and NaN scores for an empty bin).
    """
    values = np.asarray(key_values, dtype=np.float64).ravel()
    if values.size != len(results):
        raise ValueError(f"{len(results)} results but {values.size} key values")
    finite = np.isfinite(values)
    edges = np.histogram_bin_edges(values[finite], bins)
    index = np.searchsorted(edges, values, side="right") - 1
    index[values == edges[-1]] = len(edges) - 2
    index[~finite] = -1
    out = []
    for b in range(len(edges) - 1):
        members = [r for r, k in zip(results, index, strict=True) if k == b]
        out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]),
                    **aggregate(members, n_bins=n_bins)})
    return out
