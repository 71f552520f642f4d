"""Widen a trained :class:`~atom3d.models.unet.UNet` without changing what it computes.

A wider network (more channels per level) is started from a narrower trained one by
Net2WiderNet (Chen, Goodfellow & Shlens, ICLR 2016): every new channel is a copy of an
old channel of the same layer, and the next layer's weights from the copies of one old
channel are split among them (random fractions summing to one), so the wide network
gives the narrow one's output. The copies then start a little apart (a small noise on
their incoming weights) so that training can tell them apart; the output changes by
about that noise.

Works on state dicts (``UNet.state_dict()`` layout): the old widths are read from the
tensor shapes, the new ones from the template of the wider network, which must have the
same depth, classes and normalisation (BatchNorm) and at least as many channels on every
layer.

    >>> import torch
    >>> from atom3d.models.unet import UNet
    >>> old, new = UNet(base_width=4, depth=2, n_classes=(3, 3)), UNet(base_width=6, depth=2, n_classes=(3, 3))
    >>> _ = old.eval(), new.eval()
    >>> new.load_state_dict(widen_state_dict(old.state_dict(), new.state_dict(), noise=0.0))
    <All keys matched successfully>
    >>> x = torch.randn(1, 1, 16, 16)
    >>> bool(torch.allclose(old(x)[0], new(x)[0], atol=1e-5))
    True
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

#: Layers of a ConvBlock: (conv index, norm index) of its two ``conv -> norm -> ReLU``.
_BLOCK_LAYERS = ((0, 1), (3, 4))


def _mapping(old: int, new: int, rng: np.random.Generator) -> np.ndarray:
    """New channel -> old channel: the old ones first, then random copies."""
    if new < old:
        raise ValueError(f"cannot narrow a layer from {old} to {new} channels")
    return np.concatenate([np.arange(old), rng.integers(0, old, new - old)]).astype(int)


def _split(g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fraction of the old channel's outgoing weight each new channel carries (sum 1 per old channel)."""
    w = rng.uniform(0.5, 1.5, len(g))
    total = np.bincount(g, weights=w)
    return w / total[g]


def _depth(state: Mapping[str, Tensor]) -> int:
    """Number of encoder levels of a U-Net state dict."""
    return 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.(\d+)\.", k)))


def widen_state_dict(old: Mapping[str, Tensor], template: Mapping[str, Tensor], *,
                     noise: float = 0.01, seed: int = 0) -> dict[str, Tensor]:
    """State dict for the wider network of ``template``'s shapes that computes ``old``'s output.

    Parameters
    ----------
    old : mapping
        State dict of the trained (narrower) U-Net.
    template : mapping
        State dict of the wider U-Net (any weights; only shapes are used).
    noise : float
        Standard deviation of the noise added to the copies' incoming weights, relative
        to the standard deviation of that layer's trained weights (0: exact copy).
    seed : int
        Seed of the channel choice, the split fractions and the noise.

    Raises
    ------
    ValueError
        If the two networks differ in depth, classes or layers, or the template is
        narrower somewhere.
    """
    depth = _depth(old)
    if _depth(template) != depth:
        raise ValueError(f"depth differs: {depth} against {_depth(template)}")
    if set(old) != set(template):
        raise ValueError("the two networks have different layers (norm or heads differ)")
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}

    def conv(key: str, gin: list[tuple[np.ndarray, np.ndarray]] | None, gout: np.ndarray | None) -> None:
        w_old, w_new = old[key], template[key]
        if gin is None:  # the image: no mapping
            w = w_old
        else:
            parts, start = [], 0
            for g, frac in gin:  # one segment per concatenated input
                n_old = int(g.max()) + 1 if len(g) else 0
                seg = w_old[:, start:start + n_old]
                parts.append(seg[:, torch.as_tensor(g)] * torch.as_tensor(frac, dtype=w_old.dtype).view(1, -1, *[1] * (w_old.ndim - 2)))
                start += n_old
            if start != w_old.shape[1]:
                raise ValueError(f"{key}: input channels do not add up ({start} for {w_old.shape[1]})")
            w = torch.cat(parts, dim=1)
        if gout is not None:
            w = w[torch.as_tensor(gout)].clone()
            n_old = w_old.shape[0]
            if noise > 0 and len(gout) > n_old:
                scale = float(w_old.std()) * noise
                w[n_old:] += torch.randn(w[n_old:].shape, generator=gen, dtype=w.dtype) * scale
        if tuple(w.shape) != tuple(w_new.shape):
            raise ValueError(f"{key}: widened to {tuple(w.shape)}, the template has {tuple(w_new.shape)}")
        out[key] = w.contiguous()

    def norm(prefix: str, gout: np.ndarray) -> None:
        if f"{prefix}.running_mean" not in old:  # GroupNorm's statistics span the channels
            raise ValueError("only BatchNorm networks can be widened")
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            out[f"{prefix}.{suffix}"] = old[f"{prefix}.{suffix}"][torch.as_tensor(gout)].clone()
        out[f"{prefix}.num_batches_tracked"] = old[f"{prefix}.num_batches_tracked"].clone()

    def block(name: str, gin) -> tuple[np.ndarray, np.ndarray]:
        for conv_i, norm_i in _BLOCK_LAYERS:
            key = f"{name}.{conv_i}.weight"
            g = _mapping(old[key].shape[0], template[key].shape[0], rng)
            conv(key, gin, g)
            norm(f"{name}.{norm_i}", g)
            gin = [(g, _split(g, rng))]
        return gin[0]

    skips = []
    gin = None
    for i in range(depth):
        gin = [block(f"encoder.{i}", gin)]
        skips.append(gin[0])
    up = block("bottleneck", gin)
    for j in reversed(range(depth)):
        up = block(f"decoder.{j}", [up, skips[j]])
    heads = sorted({k.rsplit(".", 1)[0] for k in old if k.startswith("heads.")})
    for h in heads:
        conv(f"{h}.weight", [up], None)
        out[f"{h}.bias"] = old[f"{h}.bias"].clone()
    missing = set(template) - set(out)
    if missing:
        raise ValueError(f"layers not widened: {sorted(missing)[:3]}")
    return out
