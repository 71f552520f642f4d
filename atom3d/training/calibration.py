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
