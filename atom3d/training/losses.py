"""Training losses: spatially weighted cross-entropy against soft column targets.

A pixel near a column centre is a mixture of "column of depth k" (weight ``amp``)
and background (weight ``1 - amp``), where ``amp`` is the smoothed column
occupancy made by :mod:`atom3d.simulation.labels` (1 at the centre, decaying to 0).
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor
from torch.nn import functional as F

#: Guards the normalisation when every pixel has zero weight.
_TINY = 1e-12


def soft_targets(class_map: Tensor, amp: Tensor, n_classes: int) -> Tensor:
    """Soft targets ``amp * onehot(class) + (1 - amp) * onehot(0)``.

    Parameters
    ----------
    class_map : Tensor
        ``(B, H, W)`` integer class per pixel (0 = background, k = k atoms).
    amp : Tensor
        ``(B, H, W)`` float column occupancy in [0, 1]: 1 at a column centre,
        decaying to 0. Irrelevant where ``class_map == 0``.
    n_classes : int
        Number of classes ``C`` (largest depth + 1).

    Returns
    -------
    Tensor
        ``(B, C, H, W)`` probabilities summing to 1 over ``C``, dtype of ``amp``.

    Raises
    ------
    ValueError
        On mismatched shapes, a class outside ``[0, C)`` or ``amp`` outside [0, 1].
    """
    if class_map.shape != amp.shape or class_map.ndim != 3:
        raise ValueError(
            f"class_map and amp must both be (B, H, W), got {tuple(class_map.shape)} "
            f"and {tuple(amp.shape)}"
        )
    if class_map.numel() and (class_map.min() < 0 or class_map.max() >= n_classes):
        raise ValueError(
            f"class_map values must be in [0, {n_classes}), got "
            f"[{int(class_map.min())}, {int(class_map.max())}]"
        )
    if amp.numel() and (amp.min() < 0 or amp.max() > 1):
        raise ValueError("amp must be in [0, 1]")
    onehot = F.one_hot(class_map.long(), n_classes).permute(0, 3, 1, 2).to(amp.dtype)
    background = torch.zeros(1, n_classes, 1, 1, dtype=amp.dtype, device=amp.device)
    background[:, 0] = 1
    a = amp.unsqueeze(1)
    return a * onehot + (1 - a) * background


def weighted_soft_ce(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    class_weights: Tensor | None = None,
) -> Tensor:
    """Spatially and class-weighted cross-entropy against soft targets.

    With per-pixel loss ``l = -sum_c target_c log softmax(logits)_c`` and per-pixel
    weight ``w = weight * sum_c target_c class_weights_c``, the loss is
    ``sum(w l) / sum(w)``. For one-hot targets and unit pixel weights this equals
    ``F.cross_entropy(logits, labels, weight=class_weights)``. If every pixel has
    zero weight the loss is 0 (with a zero gradient).

    Parameters
    ----------
    logits : Tensor
        ``(B, C, H, W)`` raw scores. Computed in float32 at least.
    target : Tensor
        ``(B, C, H, W)`` probabilities summing to 1 over ``C`` (see :func:`soft_targets`).
    weight : Tensor, optional
        ``(B, H, W)`` non-negative pixel weights; default all ones.
    class_weights : Tensor, optional
        ``(C,)`` class weights (see :func:`class_weights_from_frequencies`); default
        all ones.

    Returns
    -------
    Tensor
        Scalar loss.
    """
    if logits.ndim != 4 or logits.shape != target.shape:
        raise ValueError(
            f"logits and target must both be (B, C, H, W), got {tuple(logits.shape)} "
            f"and {tuple(target.shape)}"
        )
    b, c, h, w = logits.shape
    dtype = torch.promote_types(logits.dtype, torch.float32)
    target = target.to(dtype)
    log_p = F.log_softmax(logits.to(dtype), dim=1)
    per_pixel = -(target * log_p).sum(dim=1)
    if weight is None:
        pixel_weight = torch.ones_like(per_pixel)
    else:
        if weight.shape != (b, h, w):
            raise ValueError(f"weight must be {(b, h, w)}, got {tuple(weight.shape)}")
        pixel_weight = weight.to(dtype)
    if class_weights is not None:
        if class_weights.shape != (c,):
            raise ValueError(f"class_weights must be ({c},), got {tuple(class_weights.shape)}")
        cw = class_weights.to(device=logits.device, dtype=dtype).view(1, c, 1, 1)
        pixel_weight = pixel_weight * (target * cw).sum(dim=1)
    return (pixel_weight * per_pixel).sum() / pixel_weight.sum().clamp_min(_TINY)


def class_weights_from_frequencies(
    freq: ArrayLike | Tensor, power: float = 0.5, max_ratio: float = 10.0
) -> Tensor:
    """Inverse-frequency class weights ``freq ** -power``, clipped and normalised to mean 1.

    Weights are first clipped to at most ``max_ratio`` times the smallest weight
    (classes never seen get that cap), then scaled to mean 1.

    Parameters
    ----------
    freq : array_like
        ``(C,)`` non-negative class counts or frequencies (need not sum to 1).
    power : float
        >= 0; 0 gives equal weights, 1 full inverse-frequency balancing.
    max_ratio : float
        Largest allowed ratio between two class weights (>= 1).

    Returns
    -------
    Tensor
        ``(C,)`` float32 weights with mean 1.

    Raises
    ------
    ValueError
        On negative or all-zero frequencies, ``power < 0`` or ``max_ratio < 1``.
    """
    if isinstance(freq, Tensor):
        freq = freq.detach().cpu().numpy()
    f = np.asarray(freq, dtype=np.float64)
    if f.ndim != 1 or f.size == 0:
        raise ValueError(f"freq must be a non-empty 1-D array, got shape {f.shape}")
    if not np.all(np.isfinite(f)) or np.any(f < 0) or not np.any(f > 0):
        raise ValueError("freq must be finite, non-negative and not all zero")
    if max_ratio < 1 or power < 0:
        raise ValueError(f"need max_ratio >= 1 and power >= 0, got {max_ratio}, {power}")
    f = f / f.sum()
    seen = f > 0
    w = np.ones_like(f)
    w[seen] = f[seen] ** -power
    cap = w[seen].min() * max_ratio
    if power > 0:
        w[~seen] = cap  # never seen: as rare as can be
    w = np.minimum(w, cap)
    return torch.as_tensor(w / w.mean(), dtype=torch.float32)
