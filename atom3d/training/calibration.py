"""Probability calibration: temperature scaling and reliability measures.

Temperature scaling divides the logits by one scalar ``T`` fitted on held-out
data by minimising the negative log-likelihood; it changes confidences but never
the predicted class.

References
----------
.. [1] C. Guo, G. Pleiss, Y. Sun and K. Q. Weinberger, "On Calibration of Modern
   Neural Networks", ICML 2017.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor
from torch.nn import functional as F

from atom3d.evaluation import metrics as _metrics
from atom3d.evaluation.metrics import ReliabilityCurve


def fit_temperature(
    logits: Tensor | ArrayLike,
    labels: Tensor | ArrayLike,
    max_iter: int = 100,
    bounds: tuple[float, float] = (0.05, 20.0),
) -> float:
    """Temperature ``T`` minimising the NLL of ``softmax(logits / T)``.

    Optimises ``log T`` (so ``T > 0``) with L-BFGS and a strong-Wolfe line search,
    in float64, starting from ``T = 1``. The result is clipped to ``bounds``: on a
    held-out set where every prediction is right the NLL keeps falling as
    ``T -> 0``, and such a set says nothing useful about the temperature.

    Parameters
    ----------
    logits : Tensor or array_like
        ``(N, C)`` held-out logits (for pixel maps: flatten and subsample first).
    labels : Tensor or array_like
        ``(N,)`` integer true classes.
    max_iter : int
        Maximum L-BFGS iterations.
    bounds : tuple of float
        Smallest and largest temperature returned.

    Returns
    -------
    float
        The fitted temperature; > 1 means the model was over-confident.
    """
    z = torch.as_tensor(logits).detach().to(device="cpu", dtype=torch.float64)
    y = torch.as_tensor(labels).detach().to(device="cpu", dtype=torch.long)
    if z.ndim != 2 or y.shape != (z.shape[0],) or z.shape[0] == 0:
        raise ValueError(
            f"need logits (N, C) and labels (N,) with N > 0, got {tuple(z.shape)}, {tuple(y.shape)}"
        )
    if not torch.isfinite(z).all():
        raise ValueError("logits must be finite")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z * torch.exp(-log_t), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(torch.exp(log_t.detach()))
    if not np.isfinite(temperature):  # diverged towards 0 or infinity
        temperature = bounds[0] if log_t.item() < 0 else bounds[1]
    return float(np.clip(temperature, *bounds))


def fit_pooled_temperature(
    logits: ArrayLike,
    weights: ArrayLike,
    labels: ArrayLike,
    bounds: tuple[float, float] = (0.05, 20.0),
) -> float:
    """Temperature ``T`` minimising the NLL of weighted means of ``softmax(logits / T)``.

    For the confidence of a *column*: :func:`atom3d.inference.columns.find_columns`
    reports the weighted mean of the per-pixel probabilities over the column's core, and
    the temperature that calibrates single pixels is not the one that calibrates their
    mean (averaging already softens). Item ``n`` has the probabilities
    ``q_n = Σ_m w_nm softmax(z_nm / T) / Σ_m w_nm`` and the NLL is ``−mean log q_n[y_n]``,
    minimised over ``log T`` within ``bounds`` (bounded Brent search, float64).

    Parameters
    ----------
    logits : array_like
        ``(N, M, C)`` logits of the M pooled pixels of each of N items.
    weights : array_like
        ``(N, M)`` non-negative pooling weights (each row with a positive sum).
    labels : array_like
        ``(N,)`` integer true classes in ``0 … C − 1``.
    bounds : tuple of float
        Smallest and largest temperature considered.

    Returns
    -------
    float
        The fitted temperature; > 1 means the pooled probabilities were over-confident.
    """
    from scipy.optimize import minimize_scalar

    z = torch.as_tensor(np.asarray(logits, np.float64))
    w = torch.as_tensor(np.asarray(weights, np.float64))
    y = torch.as_tensor(np.asarray(labels, np.int64))
    if z.ndim != 3 or w.shape != z.shape[:2] or y.shape != (z.shape[0],) or z.shape[0] == 0:
        raise ValueError(f"need logits (N, M, C), weights (N, M) and labels (N,) with N > 0, "
                         f"got {tuple(z.shape)}, {tuple(w.shape)}, {tuple(y.shape)}")
    if not (torch.isfinite(z).all() and torch.isfinite(w).all()) or (w < 0).any():
        raise ValueError("logits must be finite and weights finite and >= 0")
    total = w.sum(dim=1)
    if (total <= 0).any():
        raise ValueError("every item needs a positive total weight")
    if (y < 0).any() or (y >= z.shape[2]).any():
        raise ValueError(f"labels must be in 0 … {z.shape[2] - 1}")
    w = w / total[:, None]
    index = y[:, None, None].expand(-1, z.shape[1], 1)

    def nll(log_t: float) -> float:
        scaled = z / np.exp(log_t)
        p_true = torch.exp(scaled.gather(2, index)[..., 0] - torch.logsumexp(scaled, dim=2))
        return float(-torch.log((w * p_true).sum(dim=1).clamp_min(1e-300)).mean())

    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    result = minimize_scalar(nll, bounds=(lo, hi), method="bounded",
                             options={"xatol": 1e-4})
    return float(np.clip(np.exp(result.x), *bounds))


def _to_numpy(x: ArrayLike | Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def reliability_curve(confidence: ArrayLike | Tensor, correct: ArrayLike | Tensor,
                      n_bins: int = 10) -> ReliabilityCurve:
    """:func:`atom3d.evaluation.metrics.reliability_curve` for NumPy arrays or tensors."""
    return _metrics.reliability_curve(_to_numpy(confidence), _to_numpy(correct), n_bins)


def expected_calibration_error(confidence: ArrayLike | Tensor, correct: ArrayLike | Tensor,
                               n_bins: int = 10) -> float:
    """:func:`atom3d.evaluation.metrics.ece` (the one implementation) for arrays or tensors."""
    return _metrics.ece(_to_numpy(confidence), _to_numpy(correct), n_bins)


def fit_confidence_map(confidence: ArrayLike, correct: ArrayLike,
                       max_knots: int = 64) -> dict[str, list[float]]:
    """Monotone map from reported confidence to observed accuracy (isotonic regression).

    Pool-adjacent-violators on the items sorted by confidence gives the non-decreasing
    step function that best fits correctness (least squares); its blocks become knots
    ``(mean confidence, accuracy)`` joined by straight lines
    (:meth:`atom3d.models.artifact.ModelArtifact.map_confidence`). Adjacent blocks are merged (weighted) until at most
    ``max_knots`` remain. Where one temperature cannot calibrate every confidence level
    (over-confident in the middle, well calibrated at the ends), this can.

    Parameters
    ----------
    confidence : array_like
        ``(N,)`` reported confidences in [0, 1].
    correct : array_like
        ``(N,)`` bool or 0/1: was the reported label right.
    max_knots : int
        Largest number of knots kept.

    Returns
    -------
    dict
        ``{"confidence": [...], "accuracy": [...]}``, both non-decreasing.
    """
    x = np.asarray(confidence, np.float64).reshape(-1)
    y = np.asarray(correct, np.float64).reshape(-1)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"need equal, non-empty confidence and correct, got {x.shape}, {y.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("confidence must be finite")
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    # pool adjacent violators: blocks of (sum y, sum x, count)
    sy: list[float] = []
    sx: list[float] = []
    n: list[float] = []
    for xi, yi in zip(x.tolist(), y.tolist(), strict=True):
        sy.append(yi)
        sx.append(xi)
        n.append(1.0)
        while len(n) > 1 and sy[-2] / n[-2] >= sy[-1] / n[-1]:
            last_y, last_x, last_n = sy.pop(), sx.pop(), n.pop()
            sy[-1] += last_y
            sx[-1] += last_x
            n[-1] += last_n
    sy_a, sx_a, n_a = np.array(sy), np.array(sx), np.array(n)
    while len(n_a) > max_knots:  # merge the lightest adjacent pair (keeps monotonicity)
        pair = np.argmin(n_a[:-1] + n_a[1:])
        sy_a[pair] += sy_a[pair + 1]
        sx_a[pair] += sx_a[pair + 1]
        n_a[pair] += n_a[pair + 1]
        sy_a, sx_a, n_a = (np.delete(a, pair + 1) for a in (sy_a, sx_a, n_a))
    return {"confidence": (sx_a / n_a).tolist(), "accuracy": (sy_a / n_a).tolist()}


def compose_confidence_maps(inner: Mapping[str, Sequence[float]] | None,
                            outer: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    """The knots of ``outer(inner(c))``, exactly, for two confidence maps.

    Both are monotone maps as :meth:`~atom3d.models.artifact.ModelArtifact.map_confidence`
    applies them (knots joined linearly, constant beyond the end knots); ``inner`` None
    is the identity. The composition is linear between the knots of ``inner`` and the
    confidences where ``inner`` reaches a knot of ``outer``: those are its knots.
    """
    ox = np.asarray(outer["confidence"], np.float64)
    oy = np.asarray(outer["accuracy"], np.float64)
    if inner is None:
        return {"confidence": ox.tolist(), "accuracy": oy.tolist()}
    ix = np.asarray(inner["confidence"], np.float64)
    iy = np.asarray(inner["accuracy"], np.float64)
    points = [ix]
    for x0, x1, y0, y1 in zip(ix[:-1], ix[1:], iy[:-1], iy[1:], strict=True):
        if y1 > y0:  # where this segment of inner crosses a knot of outer
            v = ox[(ox > y0) & (ox < y1)]
            points.append(x0 + (v - y0) / (y1 - y0) * (x1 - x0))
    x = np.unique(np.concatenate(points))
    y = np.maximum.accumulate(np.interp(np.interp(x, ix, iy), ox, oy))  # exact; rounding-safe
    return {"confidence": x.tolist(), "accuracy": y.tolist()}


def fit_column_threshold(p_column: ArrayLike, matched: ArrayLike, n_true: int,
                         grid: ArrayLike | None = None) -> dict[str, float | int]:
    """Presence threshold of reported columns that maximises detection F1.

    A found column is kept when its pooled presence ``p_column`` (``1 - p0`` pooled
    over the column, :class:`~atom3d.inference.columns.ColumnTable`) is at least the
    threshold. With ``TP(t)`` the matched columns kept, ``FP(t)`` the unmatched ones kept
    and ``FN(t) = n_true - TP(t)``, ``F1(t) = 2 TP / (2 TP + FP + FN)``.

    Parameters
    ----------
    p_column : array_like
        ``(N,)`` pooled presence of every found column [probability].
    matched : array_like
        ``(N,)`` bool: the column was matched to a true column.
    n_true : int
        Number of true columns in the same images (matched or not).
    grid : array_like, optional
        Candidate thresholds; default 0.50, 0.51, ..., 0.95. The smallest threshold
        with the largest F1 wins.

    Returns
    -------
    dict
        ``threshold``, ``f1`` (at it), ``f1_lowest`` (at the smallest candidate, i.e.
        without the extra cut), ``n_found``, ``n_true``.
    """
    p = np.asarray(p_column, np.float64).reshape(-1)
    m = np.asarray(matched, bool).reshape(-1)
    if p.shape != m.shape:
        raise ValueError(f"p_column and matched must have the same length, got {p.shape}, {m.shape}")
    if n_true < int(m.sum()):
        raise ValueError(f"n_true ({n_true}) is smaller than the matched columns ({int(m.sum())})")
    t = np.round(np.arange(0.50, 0.951, 0.01), 2) if grid is None else np.sort(
        np.asarray(grid, np.float64).reshape(-1))
    if t.size == 0:
        raise ValueError("grid must not be empty")
    keep = p[None, :] >= t[:, None]
    tp = (keep & m[None, :]).sum(axis=1)
    fp = (keep & ~m[None, :]).sum(axis=1)
    denominator = 2 * tp + fp + (n_true - tp)
    f1 = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
    best = int(np.argmax(f1))  # first maximum: the smallest threshold
    return {"threshold": float(t[best]), "f1": float(f1[best]), "f1_lowest": float(f1[0]),
            "n_found": int(p.size), "n_true": int(n_true)}
