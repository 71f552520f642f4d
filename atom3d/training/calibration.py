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

from typing import NamedTuple

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor
from torch.nn import functional as F


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


def reliability_curve(
    confidence: ArrayLike | Tensor, correct: ArrayLike | Tensor, n_bins: int = 10
) -> ReliabilityCurve:
    """Mean confidence, accuracy and count per equal-width confidence bin.

    Parameters
    ----------
    confidence : array_like
        ``(N,)`` probability of the predicted class, in [0, 1].
    correct : array_like
        ``(N,)`` bool, whether the prediction was right.
    n_bins : int
        Number of equal-width bins on [0, 1].

    Returns
    -------
    ReliabilityCurve
    """
    conf, ok = _as_numpy(confidence, correct)
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


def expected_calibration_error(
    confidence: ArrayLike | Tensor, correct: ArrayLike | Tensor, n_bins: int = 10
) -> float:
    """Expected calibration error ``sum_b (n_b / N) |accuracy_b - confidence_b|``.

    Parameters
    ----------
    confidence : array_like
        ``(N,)`` probability of the predicted class, in [0, 1].
    correct : array_like
        ``(N,)`` bool, whether the prediction was right.
    n_bins : int
        Number of equal-width bins on [0, 1].

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


def _as_numpy(
    confidence: ArrayLike | Tensor, correct: ArrayLike | Tensor
) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(confidence, Tensor):
        confidence = confidence.detach().cpu().numpy()
    if isinstance(correct, Tensor):
        correct = correct.detach().cpu().numpy()
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    ok = np.asarray(correct, dtype=bool).ravel()
    if conf.shape != ok.shape:
        raise ValueError(f"confidence and correct differ in size: {conf.size} != {ok.size}")
    if conf.size and (np.nanmin(conf) < 0 or np.nanmax(conf) > 1 or np.isnan(conf).any()):
        raise ValueError("confidence must be in [0, 1] (and not NaN)")
    return conf, ok
